"""The AWS adapter: a request signed for AWS (SigV4 in its Authorization header or its query), or
sent to an AWS host, becomes an Action with the service and region of its credential scope, the
operation its protocol names (resolved against botocore's service models, so every service is
covered), the resources it touches and the operation's effect.

An operation can make a request count as less than its method (a POST GetItem reads) only on an
endpoint that reads requests as AWS does: AWS's own endpoint for that service, or a host the rules
name under `aws: endpoints`. Anywhere else a request whose headers merely look like AWS's could do
whatever its method says, so its effect is never below the method's. Every other reading an
upstream could make (a second `Action=`, a less specific REST route, an S3 bucket named by the
host instead of the path) rides along in `Action.others`, and is decided too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from urllib.parse import parse_qsl

from rules import Action, Effect, readings_of

from .effects import effect_of
from .errors import AwsError, aws_error
from .hosts import bucket_of_host, endpoint_prefix_of, may_name_bucket, own_endpoint
from .models import Model, index
from .operations import Call, json_calls, query_calls, rest_calls
from .signature import scope_of
from .targets import Touched, Unreadable, copy_source, deleted_keys, from_documents, from_fields, from_labels

PROTOCOL = "aws"
FORM = "application/x-www-form-urlencoded"

_STRICTEST_FIRST = {Effect.DESTRUCTIVE: 0, Effect.WRITE: 1, Effect.READ: 2}
Declared = Callable[[str, int], bool]  # does the rule set name host:port as an AWS endpoint?

__all__ = ["PROTOCOL", "AwsError", "Declared", "aws_error", "classified", "protocol_of"]


def classified(action: Action, *, declared: Declared) -> Action:
    """The action as an AWS call when it is one (unchanged otherwise): the first reading as the
    action, every other reading in its `others`."""
    scope = scope_of(action.headers, action.query)
    if scope is not None:
        service, region = scope.service, scope.region
        models = index().signed(service)
    elif (prefix := endpoint_prefix_of(action.host)) is not None:
        service, region = prefix, None  # unsigned, to an AWS host: anonymous S3 reads, say
        models = index().hosted(prefix)
    else:
        return action
    calls = _calls(action, models, declared)
    if not calls:
        return dataclasses.replace(action, protocol=PROTOCOL, service=service, region=region)
    readings = [_reading(action, service, region, call, touched, declared) for call, touched in calls]
    # The log records the first reading: the strictest one, so that it names what could happen.
    readings.sort(key=lambda r: _STRICTEST_FIRST[r.effect])
    first, *others = readings
    return dataclasses.replace(first, others=tuple(others)) if others else first


def protocol_of(service: str | None) -> str | None:
    """The wire protocol of a service's model (rest-xml, rest-json, json, query, ec2), if known."""
    models = index().signed(service) if service else ()
    return models[0].protocol if models else None


def _reading(
    action: Action, service: str, region: str | None, call: Call, touched: Touched | str, declared: Declared
) -> Action:
    """One reading as an Action (one copy of the action: each copy costs all its fields)."""
    operation_effect = effect_of(call.operation)
    prefix = call.model.endpoint_prefix if call.model is not None else service
    if own_endpoint(action.host, prefix) or declared(action.host, action.port):
        effect = operation_effect
    else:
        effect = action.effect.stricter(operation_effect)
    problem = action.body_problem
    if isinstance(touched, str):  # the request names its targets in a body that cannot be read
        effect, problem, touched = effect.stricter(Effect.WRITE), touched, Touched(())
    if touched.destroys:
        effect = effect.stricter(Effect.DESTRUCTIVE)
    return dataclasses.replace(
        action,
        protocol=PROTOCOL,
        service=service,
        region=region,
        operation=call.operation,
        effect=effect,
        targets=touched.targets,
        count=touched.count,
        body_problem=problem,
        secret_fields=call.model.sensitive(call.operation) if call.model is not None else frozenset(),
    )


def _calls(action: Action, models: tuple[Model, ...], declared: Declared) -> list[tuple[Call, Touched | str]]:
    """Every reading of the request: its operation and what it touches."""
    found: list[tuple[Call, Touched | str]] = []
    if target := action.headers.get("x-amz-target"):
        for call in json_calls(target, models):
            found.append((call, _body_targets(action, call)))
    fields = _fields(action)
    if actions := fields.get("Action"):
        version = fields["Version"][0] if fields.get("Version") else None
        for call in query_calls(actions, version, models):
            found.append((call, _field_targets(call, fields)))
    rest = tuple(m for m in models if m.protocol.startswith("rest-"))
    if rest and not found:
        found = _rest(action, rest, declared, [action.path])
        if not found:  # a path no route takes as sent (`//bucket/key`): as servers resolve it
            found = _rest(action, rest, declared, list(readings_of(action).paths))
    return found


def _rest(
    action: Action, models: tuple[Model, ...], declared: Declared, paths: list[str]
) -> list[tuple[Call, Touched | str]]:
    """The REST readings of the request on these paths, under the method as sent and any a
    method-override header names."""
    found: list[tuple[Call, Touched | str]] = []
    for method in readings_of(action).methods:
        for sent in paths:
            for path in _paths(action, sent, models, declared):
                for call in rest_calls(method, path, action.query, action.headers, models):
                    found.append((call, _rest_targets(action, call)))
    return found


def _paths(action: Action, path: str, models: tuple[Model, ...], declared: Declared) -> list[str]:
    """The paths to match REST routes against: the path as sent, with an S3 bucket that the host
    names put in front. A declared endpoint reads as AWS does: the bucket is in the path when the
    host is the endpoint, in the host's first label when the rest of it is (`bucket.minio.test`).
    Any other host may be read each way, the bucket in the path first (in the host first under
    localhost: `bucket.localhost`, as SDKs address a local emulator)."""
    if not any(m.name == "s3" for m in models):
        return [path]
    if (bucket := bucket_of_host(action.host)) is not None:
        return [f"/{bucket}{path}"]
    if endpoint_prefix_of(action.host) is not None or not may_name_bucket(action.host):
        return [path]
    host = action.host.lower().rstrip(".")
    first, _, rest = host.partition(".")
    if declared(rest, action.port):
        return [f"/{first}{path}"]
    if declared(host, action.port):
        return [path]
    hosted = [f"/{first}{path}", f"/{host}{path}"]
    return [*hosted, path] if rest == "localhost" else [path, *hosted]


def _fields(action: Action) -> dict[str, list[str]]:
    """The query's fields and a form body's (the query protocols read both)."""
    fields: dict[str, list[str]] = {}
    pairs = parse_qsl(action.query, keep_blank_values=True)
    body = action.body or b""
    if body and (FORM in action.headers.get("content-type", "") or body.startswith(b"Action=")):
        pairs += parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
    for name, value in pairs:
        fields.setdefault(name, []).append(value)
    return fields


def _body_targets(action: Action, call: Call) -> Touched | str:
    if call.model is None:
        return Touched(())
    readings = readings_of(action)
    if readings.problem is not None:
        return readings.problem
    return from_documents(call.model.members(call.operation), readings.documents)


def _field_targets(call: Call, fields: dict[str, list[str]]) -> Touched:
    if call.model is None:
        return Touched(())
    return from_fields(call.model.members(call.operation), fields)


def _rest_targets(action: Action, call: Call) -> Touched | str:
    assert call.model is not None
    if call.model.name == "s3" and call.operation == "DeleteObjects":
        try:
            return deleted_keys(call.labels.get("Bucket", ""), action.body)
        except Unreadable as e:
            return str(e)
    targets = from_labels(call)
    if call.model.name == "s3":
        targets += copy_source(action.headers.get("x-amz-copy-source"))
    elif call.model.protocol == "rest-json" and action.body:
        members = [m for m in call.model.members(call.operation) if m.location is None]
        readings = readings_of(action)
        if readings.problem is not None and members:
            return readings.problem
        targets += from_documents(members, readings.documents).targets
    return Touched(tuple(dict.fromkeys(targets)))

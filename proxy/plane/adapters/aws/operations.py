"""Which operation a request to AWS asks for, as its protocol names it: `X-Amz-Target` for the
JSON protocols, `Action=` for the query protocols, method and path against the models' URI
templates for the REST protocols.

Each reading an AWS server (or one that speaks its APIs) could make is returned, the likeliest
first: a second `Action=`, a less specific REST route that a server ignoring a query flag would
take.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote

from .models import Model


@dataclass(frozen=True)
class Call:
    """One reading of a request: the model and operation, and the values of the URI template's
    labels (REST) or of the form's and query's fields (query protocols)."""

    model: Model | None
    operation: str
    labels: dict[str, str] = field(default_factory=dict)


def json_calls(target: str, models: tuple[Model, ...]) -> list[Call]:
    """`X-Amz-Target: DynamoDB_20120810.GetItem` (each value, if the header repeats)."""
    calls = []
    for value in (v.strip() for v in target.split(",")):
        prefix, _, operation = value.rpartition(".")
        if not operation:
            continue
        model = next((m for m in models if m.target_prefix == prefix and m.has(operation)), None)
        model = model or next((m for m in models if m.has(operation)), None)
        calls.append(Call(model, operation))
    return calls


def query_calls(actions: list[str], version: str | None, models: tuple[Model, ...]) -> list[Call]:
    """`Action=TerminateInstances` (each value, from the query and the form body); `Version=`
    picks among models that share a signing name (elb and elbv2)."""
    calls = []
    for operation in dict.fromkeys(a.strip() for a in actions if a.strip()):
        fitting = [m for m in models if m.has(operation)]
        model = next((m for m in fitting if m.version == version), fitting[0] if fitting else None)
        calls.append(Call(model, operation))
    return calls


def rest_calls(
    method: str, path: str, query: str, headers: Mapping[str, str], models: tuple[Model, ...]
) -> list[Call]:
    """The REST operations whose method and URI template the request fits, and whose required
    query fields and headers it carries, the most specific first. A route that needs fewer query
    flags than another that fits is a reading too: a server that ignores `?tagging` reads
    `DELETE /b/k?tagging` as DeleteObject."""
    keys: dict[str, list[str]] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        keys.setdefault(name, []).append(value)
    present, sent = keys.keys(), headers.keys()
    calls: list[Call] = []
    for model in models:
        for route in model.routes(method, present):
            if not route.headers <= sent:
                continue
            if route.values and not all(v in keys[k] for k, v in route.values):
                continue
            m = route.path.fullmatch(path)
            if m is None:
                continue
            labels = {name: unquote(value) for name, value in zip(route.labels, m.groups(), strict=True)}
            calls.append(Call(model, route.name, labels))
    return calls

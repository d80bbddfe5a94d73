"""Compiling a rule's `match` into a predicate over an Action.

Every field given must hold; `all`, `any` and `not` combine nested matches. Globs are
shell-style (`*`, `?`, `[...]`); host, method, protocol and header names compare without case.

A match compiles *widened* for deny and hold rules: a field that has several readings of the
action (method, path, agent, body, text; see rules.readings) holds if any reading matches, paths
also without case, and an unreadable body of a mutating action counts as matching. Otherwise a
field holds only if every reading matches. `not` turns one into the other.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from fnmatch import translate
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl

import jsonschema

from .action import Action, Kube
from .readings import Readings, carries_body, readings_of, unseen_body

Predicate = Callable[[Action], bool]

GLOB_CHARS = frozenset("*?[")


def strings(value: str | list[str]) -> list[str]:
    """One string or a list of them, as a list."""
    return [value] if isinstance(value, str) else list(value)


def is_literal(pattern: str) -> bool:
    """True when a glob has no wildcard: it matches only itself."""
    return not GLOB_CHARS & set(pattern)


def globs(patterns: Iterable[str], *, fold: bool) -> Callable[[str | None], bool]:
    """A test that a value matches any of the globs (case-insensitively with `fold`)."""
    pats = [p.lower() for p in patterns] if fold else list(patterns)
    literal = frozenset(p for p in pats if is_literal(p))
    wild = [p for p in pats if not is_literal(p)]
    # All wildcard patterns as one compiled regex: one call per value, however many globs.
    combined = re.compile("|".join(f"(?:{translate(p)})" for p in wild)).match if wild else None

    def test(value: str | None) -> bool:
        if value is None:
            return False
        v = value.lower() if fold else value
        return v in literal or (combined is not None and combined(v) is not None)

    return test


def _path(spec: Any, *, fold: bool) -> Callable[[str | None], bool]:
    if isinstance(spec, dict):
        pattern = re.compile(spec["regex"], re.IGNORECASE if fold else 0)
        return lambda v: v is not None and pattern.search(v) is not None
    return globs(strings(spec), fold=fold)


def _schema(schema: dict[str, Any]) -> Callable[[Any], bool]:
    valid: Callable[[Any], bool] = jsonschema.Draft202012Validator(schema).is_valid
    return valid


@lru_cache(maxsize=64)
def _parsed_query(query: str) -> dict[str, list[str]]:
    # Every value of a repeated parameter: servers differ in which one they read.
    params: dict[str, list[str]] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        params.setdefault(name, []).append(value)
    return params


def _pairs(spec: dict[str, Any], *, fold_keys: bool) -> dict[str, Callable[[str | None], bool]]:
    return {(k.lower() if fold_keys else k): globs(strings(v), fold=False) for k, v in spec.items()}


def _any_value(test: Callable[[str | None], bool], values: list[str] | None) -> bool:
    return values is not None and any(test(v) for v in values)


def compile_match(spec: dict[str, Any], *, widen: bool = False) -> Predicate:
    """The predicate for one `match` mapping (already validated against the schema); `widen` for
    deny and hold rules (see the module docstring)."""
    tests: list[Predicate] = []
    for field, compile_field in _FIELDS.items():
        if field in spec:
            tests.append(compile_field(spec[field], widen))
    if not tests:
        return lambda a: True
    if len(tests) == 1:
        return tests[0]
    return lambda a: all(t(a) for t in tests)


def _agent(v: Any, widen: bool) -> Predicate:
    t = globs(strings(v), fold=False)

    def widened(a: Action) -> bool:
        if a.configured_agent is None:
            return t(a.agent)  # one reading: the name is not a claim
        return any(t(name) for name in readings_of(a).agents)

    def strict(a: Action) -> bool:
        return t(a.agent) and (a.configured_agent is None or t(a.configured_agent))

    return widened if widen else strict


def _agent_claimed(v: Any, widen: bool) -> Predicate:
    wanted = bool(v)
    return lambda a: a.agent_claimed is wanted


def protocol_in(action: Action, wanted: frozenset[str]) -> bool:
    """True when the action's protocol is wanted; `http` also covers the actions an adapter read
    more into (aws, k8s), which are HTTP requests all the same."""
    return action.protocol in wanted or ("http" in wanted and action.over_http)


def _protocol(v: Any, widen: bool) -> Predicate:
    wanted = frozenset(p.lower() for p in strings(v))
    return lambda a: protocol_in(a, wanted)


def _host(v: Any, widen: bool) -> Predicate:
    t = globs(strings(v), fold=True)
    return lambda a: t(a.host)


def _port(v: Any, widen: bool) -> Predicate:
    ports = {v} if isinstance(v, int) else set(v)
    return lambda a: a.port in ports


def _method(v: Any, widen: bool) -> Predicate:
    methods = frozenset(m.upper() for m in strings(v))
    return method_test(methods, widen)


def method_test(methods: frozenset[str], widen: bool) -> Predicate:
    """A test that the action's methods (every reading of them) are among `methods`."""
    if widen:
        return lambda a: any(m in methods for m in readings_of(a).methods)
    return lambda a: all(m in methods for m in readings_of(a).methods)


def _path_field(v: Any, widen: bool) -> Predicate:
    exact = _path(v, fold=False)
    folded = _path(v, fold=True)  # matches whatever `exact` matches, and more

    def widened(a: Action) -> bool:
        r = readings_of(a)
        test = folded if r.fold_paths else exact
        paths = r.paths
        return test(paths[0]) or any(test(p) for p in paths[1:])

    def strict(a: Action) -> bool:
        paths = readings_of(a).paths
        return exact(paths[0]) and all(exact(p) for p in paths[1:])

    return widened if widen else strict


def _query(v: Any, widen: bool) -> Predicate:
    tests = _pairs(v, fold_keys=False)

    def test(a: Action) -> bool:
        params = _parsed_query(a.query)
        return all(_any_value(t, params.get(k)) for k, t in tests.items())

    return test


def _header_values(value: str | None) -> list[str] | None:
    # A repeated header arrives joined with ", ": test the whole and each part.
    if value is None:
        return None
    parts = [p.strip() for p in value.split(",")]
    return [value, *parts] if len(parts) > 1 else [value]


def _headers(v: Any, widen: bool) -> Predicate:
    tests = _pairs(v, fold_keys=True)
    return lambda a: all(_any_value(t, _header_values(a.headers.get(k))) for k, t in tests.items())


def _service(v: Any, widen: bool) -> Predicate:
    t = globs(strings(v), fold=True)
    return lambda a: t(a.service)


def _operation(v: Any, widen: bool) -> Predicate:
    # `DeleteObject` or, as IAM writes it, `s3:DeleteObject` (the service without case).
    t = globs(strings(v), fold=False)

    def test(a: Action) -> bool:
        if a.operation is None:
            return False
        return t(a.operation) or (a.service is not None and t(f"{a.service.lower()}:{a.operation}"))

    return test


def _region(v: Any, widen: bool) -> Predicate:
    t = globs(strings(v), fold=True)
    return lambda a: t(a.region)


def _target(v: Any, widen: bool) -> Predicate:
    """A batch matches a deny or hold rule if any of its targets does (in any case: `*-prod`
    stops `Orders-Prod`), an allow rule only if all of them do, in the case given; a batch whose
    targets cannot be read matches a deny or hold rule. Targets read from the request line of a
    request whose body streamed unread (an S3 PutObject's `bucket/key`) are read in full."""
    t = globs(strings(v), fold=widen)

    def unreadable(a: Action) -> bool:
        return a.body_problem is not None and not (a.targets and unseen_body(a))

    def widened(a: Action) -> bool:
        return any(t(x) for x in a.targets) or (unreadable(a) and a.effect.mutating)

    def strict(a: Action) -> bool:
        return bool(a.targets) and not unreadable(a) and all(t(x) for x in a.targets)

    return widened if widen else strict


def _kube(pick: Callable[[Kube], str | None]) -> Callable[[Any, bool], Predicate]:
    """A field of a Kubernetes request (none matches an action that is not one)."""

    def compile_field(v: Any, widen: bool) -> Predicate:
        t = globs(strings(v), fold=False)
        return lambda a: a.kube is not None and t(pick(a.kube))

    return compile_field


def _provider(v: Any, widen: bool) -> Predicate:
    t = globs(strings(v), fold=True)
    return lambda a: a.inference is not None and t(a.inference.provider)


def _model(v: Any, widen: bool) -> Predicate:
    """A model call's model, without case; a call whose model cannot be read matches a deny or
    hold rule (the provider may pick any)."""
    t = globs(strings(v), fold=True)
    if widen:
        return lambda a: a.inference is not None and (a.inference.model is None or t(a.inference.model))
    return lambda a: a.inference is not None and a.inference.model is not None and t(a.inference.model)


def _unknown_args(a: Action) -> bool:
    if not carries_body(a):
        return False
    r = readings_of(a)
    return r.unknown() and r.args_problem is not None


def _tool(v: Any, widen: bool) -> Predicate:
    t = globs(strings(v), fold=False)
    if widen:
        return lambda a: t(a.tool) or _unknown_args(a)
    return lambda a: t(a.tool) and (not carries_body(a) or readings_of(a).args_problem is None)


def _effect(v: Any, widen: bool) -> Predicate:
    effects = set(strings(v))
    return lambda a: a.effect.value in effects


def _over_body(
    pick: Callable[[Readings], Iterable[Any]], test: Callable[[Any], bool], widen: bool
) -> Predicate:
    """A test of the body's readings (its documents, or its texts): widened, any reading that
    passes, or a body that cannot be read unambiguously, matches; strict, every reading must."""

    def widened(a: Action) -> bool:
        if not carries_body(a):
            return False
        r = readings_of(a)
        if r.problem is not None:
            return r.unknown()
        return any(test(x) for x in pick(r))

    def strict(a: Action) -> bool:
        if not carries_body(a):
            return False
        r = readings_of(a)
        seen = list(pick(r))
        return r.problem is None and bool(seen) and all(test(x) for x in seen)

    return widened if widen else strict


def _body(v: Any, widen: bool) -> Predicate:
    return _over_body(lambda r: r.documents, _schema(v), widen)


def _args(v: Any, widen: bool) -> Predicate:
    valid = _schema(v)
    if widen:
        return lambda a: (a.args is not None and valid(a.args)) or _unknown_args(a)
    return lambda a: (
        a.args is not None and valid(a.args) and (not carries_body(a) or readings_of(a).args_problem is None)
    )


def _text(v: Any, widen: bool) -> Predicate:
    search = re.compile(v).search
    return _over_body(lambda r: r.texts, lambda t: search(t) is not None, widen)


def _all(v: Any, widen: bool) -> Predicate:
    parts = [compile_match(m, widen=widen) for m in v]
    return lambda a: all(p(a) for p in parts)


def _any(v: Any, widen: bool) -> Predicate:
    parts = [compile_match(m, widen=widen) for m in v]
    return lambda a: any(p(a) for p in parts)


def _not(v: Any, widen: bool) -> Predicate:
    inner = compile_match(v, widen=not widen)
    return lambda a: not inner(a)


_FIELDS: dict[str, Callable[[Any, bool], Predicate]] = {
    "protocol": _protocol,
    "method": _method,
    "host": _host,
    "port": _port,
    "agent": _agent,
    "agent_claimed": _agent_claimed,
    "effect": _effect,
    "path": _path_field,
    "query": _query,
    "headers": _headers,
    "service": _service,
    "operation": _operation,
    "region": _region,
    "target": _target,
    "verb": _kube(lambda k: k.verb),
    "namespace": _kube(lambda k: k.namespace),
    "resource": _kube(lambda k: k.resources),
    "name": _kube(lambda k: k.name),
    "tool": _tool,
    "provider": _provider,
    "model": _model,
    "text": _text,
    "body": _body,
    "args": _args,
    "all": _all,
    "any": _any,
    "not": _not,
}

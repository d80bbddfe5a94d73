"""Compiling a rule's `match` into a predicate over an Action.

Every field given must hold; `all`, `any` and `not` combine nested matches. Globs are
shell-style (`*`, `?`, `[...]`); host, method, protocol and header names compare without case.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from fnmatch import translate
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, unquote

import jsonschema

from .action import Action

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


def _path(spec: Any) -> Callable[[str | None], bool]:
    if isinstance(spec, dict):
        pattern = re.compile(spec["regex"])
        return lambda v: v is not None and pattern.search(v) is not None
    return globs(strings(spec), fold=False)


def _schema(schema: dict[str, Any]) -> Callable[[Any], bool]:
    valid: Callable[[Any], bool] = jsonschema.Draft202012Validator(schema).is_valid
    return valid


_MISSING = object()


# Several rules may look at one action's body or query: parse each once. The caches are small,
# keyed by the exact bytes, and their results are only read.
@lru_cache(maxsize=8)
def _parsed_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return _MISSING


@lru_cache(maxsize=64)
def _parsed_query(query: str) -> dict[str, list[str]]:
    # Every value of a repeated parameter: servers differ in which one they read.
    params: dict[str, list[str]] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        params.setdefault(name, []).append(value)
    return params


@lru_cache(maxsize=64)
def normalized_path(path: str) -> str:
    """The path as a server resolves it: percent-escapes decoded, dot segments removed and
    repeated slashes collapsed, so an encoded or padded path cannot slip past a path rule."""
    decoded = unquote(path)
    segments: list[str] = []
    for segment in decoded.split("/"):
        if segment == "..":
            if segments:
                segments.pop()
        elif segment not in ("", "."):
            segments.append(segment)
    trailing = "/" if decoded.endswith("/") and segments else ""
    return "/" + "/".join(segments) + trailing


def json_of(body: bytes) -> Any:
    """The body parsed as JSON (cached), or None when it is not JSON."""
    parsed = _parsed_json(body)
    return None if parsed is _MISSING else parsed


def _json_body(action: Action) -> Any:
    return _parsed_json(action.body) if action.body else _MISSING


def _pairs(spec: dict[str, Any], *, fold_keys: bool) -> dict[str, Callable[[str | None], bool]]:
    return {(k.lower() if fold_keys else k): globs(strings(v), fold=False) for k, v in spec.items()}


def _any_value(test: Callable[[str | None], bool], values: list[str] | None) -> bool:
    return values is not None and any(test(v) for v in values)


def compile_match(spec: dict[str, Any]) -> Predicate:
    """The predicate for one `match` mapping (already validated against the schema)."""
    tests: list[Predicate] = []
    for field, compile_field in _FIELDS.items():
        if field in spec:
            tests.append(compile_field(spec[field]))
    if not tests:
        return lambda a: True
    if len(tests) == 1:
        return tests[0]
    return lambda a: all(t(a) for t in tests)


def _agent(v: Any) -> Predicate:
    t = globs(strings(v), fold=False)
    return lambda a: t(a.agent)


def _protocol(v: Any) -> Predicate:
    wanted = {p.lower() for p in strings(v)}
    return lambda a: a.protocol in wanted


def _host(v: Any) -> Predicate:
    t = globs(strings(v), fold=True)
    return lambda a: t(a.host)


def _port(v: Any) -> Predicate:
    ports = {v} if isinstance(v, int) else set(v)
    return lambda a: a.port in ports


def _method(v: Any) -> Predicate:
    methods = {m.upper() for m in strings(v)}
    return lambda a: a.method.upper() in methods


def _path_field(v: Any) -> Predicate:
    t = _path(v)
    return lambda a: t(normalized_path(a.path))


def _query(v: Any) -> Predicate:
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


def _headers(v: Any) -> Predicate:
    tests = _pairs(v, fold_keys=True)
    return lambda a: all(_any_value(t, _header_values(a.headers.get(k))) for k, t in tests.items())


def _service(v: Any) -> Predicate:
    t = globs(strings(v), fold=True)
    return lambda a: t(a.service)


def _operation(v: Any) -> Predicate:
    t = globs(strings(v), fold=False)
    return lambda a: t(a.operation)


def _tool(v: Any) -> Predicate:
    t = globs(strings(v), fold=False)
    return lambda a: t(a.tool)


def _effect(v: Any) -> Predicate:
    effects = set(strings(v))
    return lambda a: a.effect.value in effects


def _body(v: Any) -> Predicate:
    valid = _schema(v)

    def test(a: Action) -> bool:
        doc = _json_body(a)
        return doc is not _MISSING and valid(doc)

    return test


def _args(v: Any) -> Predicate:
    valid = _schema(v)
    return lambda a: a.args is not None and valid(a.args)


def _text(v: Any) -> Predicate:
    pattern = re.compile(v)
    return lambda a: a.body is not None and pattern.search(a.body.decode("utf-8", "replace")) is not None


def _all(v: Any) -> Predicate:
    parts = [compile_match(m) for m in v]
    return lambda a: all(p(a) for p in parts)


def _any(v: Any) -> Predicate:
    parts = [compile_match(m) for m in v]
    return lambda a: any(p(a) for p in parts)


def _not(v: Any) -> Predicate:
    inner = compile_match(v)
    return lambda a: not inner(a)


_FIELDS: dict[str, Callable[[Any], Predicate]] = {
    "protocol": _protocol,
    "method": _method,
    "host": _host,
    "port": _port,
    "agent": _agent,
    "effect": _effect,
    "path": _path_field,
    "query": _query,
    "headers": _headers,
    "service": _service,
    "operation": _operation,
    "tool": _tool,
    "text": _text,
    "body": _body,
    "args": _args,
    "all": _all,
    "any": _any,
    "not": _not,
}

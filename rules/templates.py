"""Templates over an Action's fields: the key of a rule's `dedup`, and the URL of its verify
read, each encoding every value for the place it fills.

A key template names fields of the Action in braces: `{method} {host}{path} {body.ClientToken}`,
`{tool} {args.to}`. A template whose fields are missing from an action gives no key: that
action is not deduplicated.
"""

from __future__ import annotations

import json
import re
import string
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlsplit

from .action import Action
from .parsed import json_of

# Fields a template may name; dotted names reach into the body, args, query and headers.
_PLAIN = (
    "method",
    "scheme",
    "host",
    "port",
    "path",
    "query",
    "url",
    "agent",
    "tool",
    "service",
    "operation",
    "region",
    "target",
)
_NESTED = ("body", "args", "query", "headers")


def canonical(value: Any) -> str:
    """A value as compact JSON with sorted keys: the same text for the same data."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else canonical(value)


def _dig(value: Any, steps: list[str]) -> Any:
    for step in steps:
        if isinstance(value, dict) and step in value:
            value = value[step]
        elif isinstance(value, list) and step.isdigit() and int(step) < len(value):
            value = value[int(step)]
        else:
            return None
    return value


def field_value(action: Action, name: str) -> str | None:
    """The value of a template field for an action, as text; None when the action has none."""
    head, _, rest = name.partition(".")
    if not rest:
        if head == "body":
            return canonical_body(action.body).decode(errors="replace") if action.body else None
        if head == "args":
            return canonical(action.args) if action.args is not None else None
        if head == "target":  # a batch: all of its targets, in order, as one value
            return ",".join(sorted(action.targets)) or None
        value = action.url if head == "url" else getattr(action, head)
        return None if value is None or value == "" else str(value)
    if head == "body":
        found = _dig(json_of(action.body), rest.split(".")) if action.body else None
    elif head == "args":
        found = _dig(action.args, rest.split("."))
    elif head == "headers":
        found = action.headers.get(rest.lower())
    else:  # query
        values = [v for k, v in parse_qsl(action.query, keep_blank_values=True) if k == rest]
        found = values[0] if values else None
    return None if found is None else _text(found)


class KeyTemplate:
    """A key template, parsed and checked when the rules load."""

    def __init__(self, text: str):
        self.text = text
        self.parts: list[tuple[str, str | None]] = []
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as e:
            raise ValueError(f"{text!r} is not a key template: {e}") from e
        for literal, name, spec, conversion in parsed:
            if spec or conversion:
                raise ValueError(f"{{{name}}}: format specs and conversions are not supported")
            if name is not None:
                head, dot, rest = name.partition(".")
                bare_ok = not dot and (head in _PLAIN or head in ("body", "args"))
                if not bare_ok and not (head in _NESTED and rest):
                    fields = ", ".join([*_PLAIN, *(f"{n}.NAME" for n in _NESTED)])
                    raise ValueError(f"{{{name}}} is not a field of an action (fields: {fields})")
            self.parts.append((literal, name))
        if not any(name for _, name in self.parts):
            raise ValueError(f"{text!r} names no field of the action, so every action would share one key")

    def render(self, action: Action) -> str | None:
        """The key for an action, or None when a field it names is missing."""
        out = []
        for literal, name in self.parts:
            out.append(literal)
            if name is not None:
                value = field_value(action, name)
                if value is None:
                    return None
                out.append(value)
        return "".join(out)


def canonical_body(body: bytes | None) -> bytes:
    """A JSON body in canonical form (sorted keys, compact); any other body as it is."""
    if not body:
        return b""
    parsed = json_of(body)
    return body if parsed is None else canonical(parsed).encode()


class UnsafeRead(ValueError):
    """A verify read that cannot be made safely for one action: a value cannot be put in its
    place of the URL without changing which resource the URL names."""


# The parts of a URL a template field can fill, in the order they come.
_SCHEME, _AUTHORITY, _PATH, _QUERY = "scheme", "authority", "path", "query"
_HOSTNAME = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*\.?"
)
_IPV6 = re.compile(r"[0-9A-Fa-f:.]+")
# Fields that are the action's own URL pieces, put in as they are (the action went there already).
_OWN = {"url": _PATH, "path": _PATH, "query": _QUERY}


class UrlTemplate:
    """A verify read's URL template. Each field is encoded as the part of the URL it fills (a path
    segment, a query value, the host or port), so no value can move the read to another path,
    query or host; only `{scheme}`, `{host}` and `{port}` (the action's own) may fill the origin.
    A template starting with `/` is relative to the action's origin."""

    def __init__(self, text: str):
        self.template = KeyTemplate(text)
        self.text = text
        self.relative = text.startswith("/")
        self.places: list[str | None] = []
        place = _PATH if self.relative else _SCHEME
        for i, (literal, name) in enumerate(self.template.parts):
            place = _advance(place, literal, text)
            if name is None:
                self.places.append(None)
                continue
            head = name.partition(".")[0]
            if name == "url":
                if i != 0 or literal:
                    raise ValueError(f"verify url {text!r}: {{url}} can only begin the URL")
                place = _PATH
            elif place == _SCHEME and name != "scheme":
                raise ValueError(
                    f"verify url {text!r}: {{{name}}} cannot make the scheme; begin the URL with a scheme "
                    "({scheme}:// or https://), {url}, or / (the action's own origin)"
                )
            elif place == _AUTHORITY and name not in ("host", "port"):
                raise ValueError(
                    f"verify url {text!r}: {{{name}}} cannot be part of the host: only {{host}} and {{port}} "
                    "(the action's own) may, so the read stays on the action's origin"
                )
            elif head == "query" and name == "query" and place != _QUERY:
                raise ValueError(f"verify url {text!r}: {{query}} belongs after `?`")
            self.places.append(place)

    def render(self, action: Action) -> str | None:
        """The read's URL for one action (None when a field it names is missing); UnsafeRead when
        a value cannot be encoded for its place."""
        out = [f"{action.scheme}://{netloc(action)}"] if self.relative else []
        for (literal, name), place in zip(self.template.parts, self.places, strict=True):
            out.append(literal)
            if name is None or place is None:
                continue
            value = field_value(action, name)
            if value is None:
                return None
            out.append(_encode(name, value, place))
        return "".join(out)


def _advance(place: str, literal: str, text: str) -> str:
    """The part of the URL that follows `literal`, which begins in `place`."""
    if "#" in literal:
        raise ValueError(f"verify url {text!r}: a read has no fragment (`#`)")
    if place == _SCHEME and "://" in literal:
        place, literal = _AUTHORITY, literal.partition("://")[2]
    if place == _AUTHORITY:
        cut = min((i for i in (literal.find("/"), literal.find("?")) if i >= 0), default=-1)
        authority = literal if cut < 0 else literal[:cut]
        if "@" in authority:
            raise ValueError(f"verify url {text!r}: user information (`@`) is not allowed in the host")
        if cut < 0:
            return place
        place, literal = (_PATH if literal[cut] == "/" else _QUERY), literal[cut:]
    if place == _PATH and "?" in literal:
        place = _QUERY
    return place


def netloc(action: Action) -> str:
    """The action's `host:port`, an IPv6 host in brackets."""
    host = f"[{action.host}]" if ":" in action.host else action.host
    return f"{host}:{action.port}"


def _encode(name: str, value: str, place: str) -> str:
    if _OWN.get(name) == place:  # the action's own URL, path or query, in its own place
        if place == _PATH:
            _no_dot_segments(name, value)
        return value
    if place == _SCHEME:
        if value not in ("http", "https"):
            raise UnsafeRead(f"{{{name}}} is {value!r}, not http or https")
        return value
    if place == _AUTHORITY:
        if name == "port":
            if not value.isdigit():
                raise UnsafeRead(f"{{port}} is {value!r}, not a port number")
            return value
        if _HOSTNAME.fullmatch(value):
            return value
        if ":" in value and _IPV6.fullmatch(value):
            return f"[{value}]"
        raise UnsafeRead(f"{{{name}}} is {value!r}, not a host name")
    if place == _QUERY:
        return quote_plus(value, safe="")
    # A path segment: every reserved character is escaped, and a value that any server could
    # read as a different path (a slash or backslash, once or twice decoded, or a dot segment)
    # is refused rather than sent.
    decoded = unquote(unquote(value))
    if decoded in ("", ".", "..") or "/" in decoded or "\\" in decoded:
        raise UnsafeRead(f"{{{name}}} is {value!r}, which would not stay one path segment")
    return quote(value, safe="")


def _no_dot_segments(name: str, value: str) -> None:
    path = value.partition("?")[0].partition("://")[2].partition("/")[2] if name == "url" else value
    for segment in unquote(unquote(path)).replace("\\", "/").split("/"):
        if segment in (".", ".."):
            raise UnsafeRead(f"{{{name}}} has a dot segment ({value!r}): the read would leave its path")


def origin(url: str) -> tuple[str, str, int] | None:
    """Scheme, host and port of an absolute http(s) URL without user information; None otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or "@" in parts.netloc or not parts.hostname or port is None:
        return None
    return parts.scheme, parts.hostname.lower(), port

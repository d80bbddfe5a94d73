"""What a rule says about repeated actions: how to key them, how long a key lives, what a
duplicate in flight does, which answers are final, the read that settles doubt after a crash,
and when repeated failures of one action are a retry storm.

A key template names fields of the Action in braces: `{method} {host}{path} {body.ClientToken}`,
`{tool} {args.to}`. A template whose fields are missing from an action gives no key: that
action is not deduplicated. `auto` keys an action by its fingerprint, a digest of its
canonical form (method, normalized URL with sorted query, JSON body with sorted keys).
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlencode, urlsplit

from .action import Action
from .match import json_of, normalized_path

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)?")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_STATUS_CLASS = re.compile(r"([1-5])xx")
ERROR = "error"  # in a status set: the action got no response at all (connection error, timeout)

# Fields a template may name; dotted names reach into the body, args, query and headers.
_PLAIN = ("method", "scheme", "host", "port", "path", "query", "url", "agent", "tool", "service", "operation")
_NESTED = ("body", "args", "query", "headers")


def seconds(value: float | str) -> float:
    """A duration from a rule file: a number of seconds, or `500ms`, `30s`, `5m`, `24h`, `7d`."""
    if isinstance(value, int | float):
        return float(value)
    m = _DURATION.fullmatch(value.strip())
    if m is None:
        raise ValueError(f"{value!r} is not a duration (e.g. 30, 30s, 5m, 24h)")
    return float(m[1]) * _UNITS[m[2]]


class StatusSet:
    """HTTP statuses given as codes (`404`) and classes (`2xx`), plus `error` for no response."""

    def __init__(self, items: Iterable[int | str]):
        self.items = [str(i) for i in items]
        self._codes = {int(i) for i in self.items if i.isdigit()}
        self._classes = {int(m[1]) for i in self.items if (m := _STATUS_CLASS.fullmatch(i))}
        self._error = ERROR in self.items

    def __contains__(self, status: int | None) -> bool:
        if status is None:
            return self._error
        return status in self._codes or status // 100 in self._classes

    def __repr__(self) -> str:
        return f"StatusSet({self.items!r})"


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else _canonical(value)


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
            return _canonical_body(action.body).decode(errors="replace") if action.body else None
        if head == "args":
            return _canonical(action.args) if action.args is not None else None
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


def _canonical_body(body: bytes | None) -> bytes:
    if not body:
        return b""
    parsed = json_of(body)
    return body if parsed is None else _canonical(parsed).encode()


def fingerprint(action: Action) -> str:
    """A digest of what the action does, the same for retries of it: method and normalized URL
    with sorted query and JSON body with sorted keys (for a tool call: server, tool, args)."""
    h = hashlib.sha256()
    if action.tool is not None:
        h.update(f"{action.protocol} {action.host}:{action.port} {action.tool}\n".encode())
        h.update(_canonical(action.args).encode())
    else:
        query = urlencode(sorted(parse_qsl(action.query, keep_blank_values=True)))
        target = f"{action.host}:{action.port}{normalized_path(action.path)}?{query}"
        h.update(f"{action.method.upper()} {action.scheme}://{target}\n".encode())
        h.update(_canonical_body(action.body))
    return h.hexdigest()


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
        out = [f"{action.scheme}://{_netloc(action)}"] if self.relative else []
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


def _netloc(action: Action) -> str:
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


@dataclass(frozen=True)
class VerifyRead:
    """The read that tells whether an in-doubt action took effect: which statuses say it ran,
    which say it did not; anything else leaves it in doubt. `url` is a template ({url}: the
    action's own URL; each field is encoded for its place, and the read may only go to the
    action's own origin); header values may name environment variables as ${NAME}."""

    method: str
    url: UrlTemplate
    headers: dict[str, str]
    executed: StatusSet
    not_executed: StatusSet
    delay: float

    def request(self, action: Action) -> dict[str, Any] | None:
        """The read for one action, as stored with its intent (None if the URL cannot be made
        because a field is missing). A read that cannot be made safely, or that would leave the
        action's origin, is stored with `refused` (why) and is never sent."""
        own = (action.scheme, action.host.lower(), action.port)
        read: dict[str, Any] = {
            "method": self.method,
            "origin": f"{action.scheme}://{_netloc(action)}",
            "headers": self.headers,
            "executed": self.executed.items,
            "not_executed": self.not_executed.items,
            "delay": self.delay,
        }
        try:
            url = self.url.render(action)
        except UnsafeRead as e:
            return read | {"url": None, "refused": str(e)}
        if url is None:
            return None
        if origin(url) != own:
            return read | {"url": url, "refused": f"{url} is not on the action's origin {read['origin']}"}
        return read | {"url": url}


@dataclass(frozen=True)
class Dedup:
    """A rule's `dedup`: the key (None: the fingerprint), whose it is, and how duplicates fare."""

    rule: str
    key: KeyTemplate | None = None
    shared: bool = False  # scope: all agents share the key (else each agent has its own)
    ttl: float | None = None
    wait: float | None = None
    reject: bool = False  # on_conflict: reject answers 409 at once instead of waiting
    final: StatusSet | None = None
    verify: VerifyRead | None = None

    def key_of(self, action: Action) -> str | None:
        """The action's key under this rule, or None when the template's fields are missing."""
        return fingerprint(action) if self.key is None else self.key.render(action)


@dataclass(frozen=True)
class Storm:
    """The retry-storm breaker: `failures` failed attempts of one action within `window` seconds
    stop further attempts until the oldest ages out; 0 failures turns it off."""

    rule: str | None
    failures: int = 5
    window: float = 60.0


def parse_dedup(rule: str, spec: str | dict[str, Any]) -> Dedup:
    """A rule's `dedup` value (schema-checked); ValueError names the bad field."""
    if spec == "auto":
        return Dedup(rule)
    assert isinstance(spec, dict)
    key = spec.get("key", "auto")
    verify = spec.get("verify")
    return Dedup(
        rule=rule,
        key=None if key == "auto" else KeyTemplate(key),
        shared=spec.get("scope", "agent") == "all",
        ttl=seconds(spec["ttl"]) if "ttl" in spec else None,
        wait=seconds(spec["wait"]) if "wait" in spec else None,
        reject=spec.get("on_conflict", "wait") == "reject",
        final=StatusSet(spec["final"]) if "final" in spec else None,
        verify=None if verify is None else _verify(verify),
    )


# A verify read is logged with its intent, so its credentials come from the environment.
_CREDENTIAL_HEADER = re.compile(r"auth|token|key|secret|cookie|passw|session|signature", re.I)


def _verify(spec: dict[str, Any]) -> VerifyRead:
    headers = {str(k): str(v) for k, v in spec.get("headers", {}).items()}
    for name, value in headers.items():
        if _CREDENTIAL_HEADER.search(name) and "${" not in value:
            raise ValueError(
                f"verify header {name}: a credential is written into the log with the read; "
                f'take it from the environment instead, e.g. {name}: "Bearer ${{ORDERS_TOKEN}}"'
            )
    return VerifyRead(
        method=spec.get("method", "GET").upper(),
        url=UrlTemplate(spec.get("url", "{url}")),
        headers=headers,
        executed=StatusSet(spec.get("executed", ["2xx"])),
        not_executed=StatusSet(spec.get("not_executed", ["404", "410"])),
        delay=seconds(spec.get("delay", 2)),
    )


def parse_storm(rule: str, spec: dict[str, Any]) -> Storm:
    """A rule's `storm` value (schema-checked)."""
    return Storm(rule, int(spec.get("failures", 5)), seconds(spec.get("window", 60)))

"""What a rule says about repeated actions: how to key them, how long a key lives, what a
duplicate in flight does, which answers are final, the read that settles doubt after a crash,
and when repeated failures of one action are a retry storm.

`auto` keys an action by its fingerprint, a digest of its canonical form (method, normalized
URL with sorted query, JSON body with sorted keys); a key template (rules.templates) names the
fields that make the key instead.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

from .action import Action
from .paths import normalized_path
from .templates import KeyTemplate, UnsafeRead, UrlTemplate, canonical, canonical_body, netloc, origin

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)?")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_STATUS_CLASS = re.compile(r"([1-5])xx")
ERROR = "error"  # in a status set: the action got no response at all (connection error, timeout)


def seconds(value: float | str) -> float:
    """A duration from a rule file: a number of seconds, or `500ms`, `30s`, `5m`, `24h`, `7d`."""
    if isinstance(value, int | float):
        return float(value)
    m = _DURATION.fullmatch(value.strip())
    if m is None:
        raise ValueError(f"{value!r} is not a duration (e.g. 30, 30s, 5m, 24h)")
    return float(m[1]) * _UNITS[m[2]]


def duration_text(value: float) -> str:
    """A number of seconds as a rule file would write it: `1h`, `5m`, `90s`."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if value >= size and value % size == 0:
            return f"{int(value // size)}{unit}"
    return f"{value:g}s"


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


# A presigned AWS URL's per-signing parameters: each signing of one request makes new ones.
_SIGNING = frozenset({"x-amz-signature", "x-amz-date", "x-amz-expires"})
_SIGNING_V2 = frozenset({"signature", "expires"})


def unsigned(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Query parameters without what changes each time the same request is signed again: a
    presigned URL's signature, date and expiry, and the date in its credential (the key id and
    any session token stay: they say whose request it is)."""
    names = {k.lower() for k, _ in pairs}
    if "x-amz-signature" in names:
        kept = [(k, v) for k, v in pairs if k.lower() not in _SIGNING]
        return [(k, _undated(v) if k.lower() == "x-amz-credential" else v) for k, v in kept]
    if "signature" in names and "awsaccesskeyid" in names:
        return [(k, v) for k, v in pairs if k.lower() not in _SIGNING_V2]
    return pairs


def _undated(credential: str) -> str:
    """`KEY/DATE/REGION/SERVICE/aws4_request` without its DATE."""
    parts = credential.split("/")
    return "/".join(parts[:1] + parts[2:]) if len(parts) >= 4 else credential


def signed_stably(authorization: str) -> str:
    """An AWS Authorization header without what each signing changes (its signature and the
    date in its credential): the same for every attempt of one request by one key."""
    value = authorization.strip()
    if value[:5].upper() == "AWS4-":
        scheme, _, rest = value.partition(" ")
        kept = []
        for part in (p.strip() for p in rest.split(",")):
            name, _, text = part.partition("=")
            if name.strip().lower() == "signature":
                continue
            kept.append(
                f"{name.strip()}={_undated(text.strip())}" if name.strip().lower() == "credential" else part
            )
        return f"{scheme} {', '.join(kept)}"
    if value[:4].upper() == "AWS ":
        return value.partition(":")[0]  # S3's version 2: `AWS KEY:SIGNATURE`
    return authorization


def fingerprint(action: Action) -> str:
    """A digest of what the action does, the same for retries of it: method and normalized URL
    with sorted query and JSON body with sorted keys (for a tool call: server, tool, args)."""
    h = hashlib.sha256()
    if action.tool is not None:
        h.update(f"{action.protocol} {action.host}:{action.port} {action.tool}\n".encode())
        h.update(canonical(action.args).encode())
    else:
        query = urlencode(sorted(unsigned(parse_qsl(action.query, keep_blank_values=True))))
        target = f"{action.host}:{action.port}{normalized_path(action.path)}?{query}"
        h.update(f"{action.method.upper()} {action.scheme}://{target}\n".encode())
        h.update(canonical_body(action.body))
    return h.hexdigest()


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
            "origin": f"{action.scheme}://{netloc(action)}",
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

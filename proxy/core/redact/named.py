"""Fields that a service says hold secrets, whatever they are called: an AWS model marks SSM's
parameter `Value`, Lambda's `Environment` and Cognito's `Password` sensitive. Their values are
replaced in a JSON body at any depth, in a form body (`Value=`, `Parameters.member.1.Value=`)
and in XML (`<Value>...</Value>`). In a body that cannot be parsed whole (one cut at the log's
limit), everything from the first such field on is dropped."""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any
from urllib.parse import unquote_plus

from .names import REDACTED

_INDEX = re.compile(r"^(?:\d+|member|entry|key|value)$")


def named(data: bytes, names: frozenset[str], content_type: str) -> bytes:
    """The body with the values of the fields in `names` replaced (itself when none occurs)."""
    if not names or not data:
        return data
    try:
        raw = data.decode()
    except UnicodeDecodeError:
        return data  # binary: the fields of a text protocol cannot be in it as such
    if not any(name in raw for name in names):
        return data
    if raw.lstrip()[:1] in ("{", "["):
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError):
            return _cut(raw, names).encode()
        return json.dumps(_walk(value, names), ensure_ascii=False, separators=(",", ":")).encode()
    if "x-www-form-urlencoded" in content_type.lower() or ("=" in raw and "<" not in raw):
        return _form(raw, names).encode()
    return _xml(names).sub(rf"<\1>{REDACTED}</\1>", raw).encode()


def _walk(value: Any, names: frozenset[str]) -> Any:
    if isinstance(value, dict):
        return {k: REDACTED if k in names else _walk(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, names) for v in value]
    return value


def _form(raw: str, names: frozenset[str]) -> str:
    pieces = raw.split("&")
    for i, piece in enumerate(pieces):
        name, eq, _ = piece.partition("=")
        parts = [p for p in unquote_plus(name).split(".") if not _INDEX.match(p)]
        if eq and parts and parts[-1] in names:
            pieces[i] = f"{name}={REDACTED}"
    return "&".join(pieces)


@lru_cache(maxsize=256)
def _xml(names: frozenset[str]) -> re.Pattern[str]:
    alternatives = "|".join(re.escape(n) for n in sorted(names))
    return re.compile(rf"<({alternatives})>.*?(?:</\1>|$)", re.S)


def _cut(raw: str, names: frozenset[str]) -> str:
    """JSON that does not parse (cut short): kept up to the first sensitive field's value."""
    found = [m.end() for n in names if (m := re.search(rf'"{re.escape(n)}"\s*:\s*', raw))]
    return raw[: min(found)] + json.dumps(REDACTED) if found else raw

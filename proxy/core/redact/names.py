"""Names that carry a credential: headers, query parameters, form and JSON fields, tool
arguments; and what a credential is replaced with."""

from __future__ import annotations

import re
from functools import lru_cache

REDACTED = "[redacted]"

# Headers that are credentials whatever the name test says (kept for rules that name them).
SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-amz-security-token", "x-api-key"}
)

# Words that make a name a credential's, wherever they stand in it.
_SECRET_WORDS = frozenset(
    {
        "auth",
        "authorization",
        "authentication",
        "apikey",
        "bearer",
        "cookie",
        "cookies",
        "credential",
        "credentials",
        "jwt",
        "otp",
        "passphrase",
        "passwd",
        "password",
        "passwords",
        "pwd",
        "secret",
        "secrets",
        "session",
        "sig",
        "signature",
        "token",
        "verifier",
    }
)
# Run-together names (`accesstoken`, `clientsecret`) end in one of these.
_SECRET_ENDINGS = (
    "token",
    "secret",
    "password",
    "passwd",
    "apikey",
    "privatekey",
    "secretkey",
    "accesskey",
    "credential",
    "credentials",
    "signature",
    "cookie",
    "sessionid",
    "sessionkey",
)
# `key` is a credential unless the word before it says what kind of non-secret key it is.
_KEY_WORDS = frozenset({"key", "keys"})
_PLAIN_KEYS = frozenset(
    {"idempotency", "idempotent", "public", "socket", "websocket", "partition", "sort", "primary"}
    | {"foreign", "cache", "dedup", "deduplication", "routing", "object", "hash", "row", "range"}
)
# Names that are credentials only in query strings, forms and headers (see the module's note).
_LOOSE = frozenset({"key", "code", "device_code"})

_PARTS = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")
_SEPARATORS = re.compile(r"[^A-Za-z0-9]+")


@lru_cache(maxsize=4096)
def _words(name: str) -> tuple[str, ...]:
    return tuple(w.lower() for piece in _SEPARATORS.split(name) for w in _PARTS.findall(piece))


def secret_name(name: str, *, field: bool = True) -> bool:
    """True for a name that carries a credential. `field`: the name is a JSON field or tool
    argument, where a bare `key` or `code` is not one (in a query, form or header it is)."""
    return secret_field(name) if field else secret_param(name)


@lru_cache(maxsize=4096)
def secret_field(name: str) -> bool:
    words = _words(name)
    for i, word in enumerate(words):
        if word in _SECRET_WORDS or word.endswith(_SECRET_ENDINGS):
            return True
        if word in _KEY_WORDS and i > 0 and words[i - 1] not in _PLAIN_KEYS:
            return True
    return False


@lru_cache(maxsize=4096)
def secret_param(name: str) -> bool:
    return "_".join(_words(name)) in _LOOSE or secret_field(name)

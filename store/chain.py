"""The hash chain: each entry's hash covers its stored bytes and the hash of the entry before it.

An entry is stored as `prev hash (64 hex) + own hash (64 hex) + canonical JSON body`, and the
hash is taken over exactly those body bytes, so verifying never depends on re-encoding JSON.
"""

import hashlib
from typing import Any

import orjson

GENESIS = "0" * 64
_HEX = 64


def canonical(obj: Any) -> bytes:
    """The one byte form of a JSON value: compact, keys sorted, UTF-8."""
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


def link(prev: str, body: bytes) -> str:
    """Hash of an entry's body bytes chained to the previous entry's hash."""
    return hashlib.sha256(prev.encode() + body).hexdigest()


def seal(prev: str, body: bytes) -> tuple[str, bytes]:
    """The hash of a body and the bytes to store for it."""
    digest = link(prev, body)
    return digest, prev.encode() + digest.encode() + body


def unseal(raw: bytes) -> tuple[str, str, bytes]:
    """Split stored bytes into the previous hash, the entry's own hash and its body bytes."""
    return raw[:_HEX].decode(), raw[_HEX : 2 * _HEX].decode(), raw[2 * _HEX :]

"""The hash chain: each entry's hash covers its content and the hash of the entry before it."""

import hashlib
import json
from typing import Any

GENESIS = "0" * 64


def canonical(obj: Any) -> bytes:
    """The one byte form of a JSON value that hashing and storage use."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def link(prev: str, body: dict[str, Any]) -> str:
    """Hash of an entry body (everything but its own hash) chained to the previous hash."""
    h = hashlib.sha256(prev.encode())
    h.update(canonical(body))
    return h.hexdigest()

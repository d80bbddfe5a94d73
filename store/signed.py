"""What a signed entry's signature covers, in bytes (store/signing.py holds the key).

Kept apart from the key so that the writer can sign through a Record's hook without every
reader of the log loading the cryptography package.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .chain import canonical

SIGNATURE = "signature"  # the data field a signed entry carries its signature in
_DOMAIN = "airlock signed entry v1"  # so a signature over an entry can mean nothing else


def signed_payload(seq: int, prev: str, kind: str, data: Mapping[str, Any]) -> bytes:
    """The bytes a signed entry's signature covers: its seq, the hash of the entry before it,
    its kind, and its data without the signature field."""
    unsigned = {k: v for k, v in data.items() if k != SIGNATURE}
    return canonical({"domain": _DOMAIN, "seq": seq, "prev": prev, "kind": kind, "data": unsigned})

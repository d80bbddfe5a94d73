"""Idempotency keys in the log: claimed with an action's first entry, settled with its outcome.

A key is claimed in the same transaction that writes the intent, so two requests with one key,
in one process or several, can never both become actions. The outcome keeps the key (with
the reply to replay) or releases it for the next attempt; a key expires after its TTL.

The chain records each claim and settlement (with the SHA-256 of any stored reply) in the
entries themselves, so the keys database is derivable from the chain, and a reply is only
replayed once it matches the digest its hashed entry recorded.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from .chain import canonical
from .entry import Entry
from .errors import StoreError


@dataclass(frozen=True)
class Claim:
    """An idempotency key an opening record claims, the payload digest it stands for, its TTL."""

    key: str
    payload: str
    ttl: float


@dataclass(frozen=True)
class Settle:
    """What an action's outcome does to its key: keep it (final, with the reply) or release it."""

    keep: bool
    reply: dict[str, Any] | None = None


class KeyTaken(StoreError):
    """The key belongs to another action; says which, in what state, and what it stood for."""

    def __init__(self, key: str, holder: dict[str, Any], state: str, *, legacy: bool = False):
        super().__init__(f"idempotency key is held by action {holder['action']} ({state})")
        self.key = key
        self.holder_id: int = holder["action"]
        self.payload: str = holder["payload"]
        self.reply: dict[str, Any] | None = holder.get("reply")
        self.final: bool = bool(holder.get("final"))
        self.state = state
        self.legacy = legacy  # claimed by an older airlock: no hashed entry backs its reply


# The largest key LMDB can store (its default maximum key size).
MAX_KEY_BYTES = 511


def reply_digest(reply: dict[str, Any]) -> str:
    """The SHA-256 of a stored reply's canonical JSON, as the chain records it."""
    return hashlib.sha256(canonical(reply)).hexdigest()


def claimed(entry: Entry) -> dict[str, Any]:
    """The key record an opening entry's claim writes (without any reply)."""
    assert entry.claim is not None
    return {
        "action": entry.action,
        "payload": entry.claim["payload"],
        "expires": entry.claim["expires"],
        "final": False,
        "claimed": entry.seq,
    }


def settled(held: dict[str, Any] | None, entry: Entry) -> dict[str, Any] | None:
    """The key record after `entry` settles it: unchanged if another action holds the key now,
    None if released, final (with the digest of its reply, if one is kept) if kept."""
    assert entry.settle is not None
    if held is None or held.get("action") != entry.action:
        return held
    if not entry.settle["keep"]:
        return None
    after = {k: v for k, v in held.items() if k not in ("reply", "reply_sha256")}
    after |= {"final": True, "settled": entry.seq}
    if entry.settle.get("reply") is not None:
        after["reply_sha256"] = entry.settle["reply"]
    return after


def without_reply(held: dict[str, Any]) -> dict[str, Any]:
    """A stored key record minus the reply body (which the chain holds only as a digest)."""
    return {k: v for k, v in held.items() if k != "reply"}

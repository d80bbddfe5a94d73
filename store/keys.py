"""Idempotency keys in the log: claimed with an action's first entry, kept or released with
its outcome.

A key is claimed in the same transaction that writes the intent, so two requests with one key,
in one process or several, can never both become actions. The outcome keeps the key (with
the reply to replay) or releases it for the next attempt; a key expires after its TTL.

The chain records each claim, and each keep or release as the entry's `settle` field (with the
SHA-256 of any stored reply), so the keys database is derivable from the chain, and a reply is
only replayed once it matches the digest its hashed entry recorded.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

import lmdb
import orjson

from .chain import canonical
from .entry import Entry
from .errors import Altered, StoreError
from .stored import as_bytes, in_range, key_record
from .view import View


@dataclass(frozen=True)
class Claim:
    """An idempotency key an opening record claims, the payload digest it stands for, its TTL."""

    key: str
    payload: str
    ttl: float


@dataclass(frozen=True)
class KeyOutcome:
    """What an action's outcome does to its idempotency key: keep it (final, with the reply to
    replay) or release it for the next attempt."""

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
    """The key record after `entry` keeps or releases it: unchanged if another action holds the key now,
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


# ---- the keys database, inside a transaction -------------------------------------------------


def live_record(view: View, key: str) -> dict[str, Any] | None:
    """The live record of an idempotency key (holder action, payload, reply), if any."""
    raw = view.txn.get(key.encode(), db=view.dbs[b"keys"])
    if raw is None:
        return None
    record = key_record(key, as_bytes(raw))
    return record if record["expires"] > time.time() else None


def check_claim(view: View, claim: Claim, tip: tuple[int, str]) -> None:
    """Refuse a claim on a live key (KeyTaken, with what the holder stood for), or on a key
    record the chain does not back (Altered); `tip` is the last entry written so far."""
    raw = view.txn.get(claim.key.encode(), db=view.dbs[b"keys"])
    if raw is None:
        return
    record = key_record(claim.key, as_bytes(raw))
    if record["expires"] <= time.time():
        return  # expired: the key is free again
    holder = view.index(record["action"])
    state = holder["state"] if holder is not None else "unknown"
    if "claimed" not in record and view.legacy_action(record["action"]):
        # An older airlock's key: no hashed entry backs its stored reply, so it is never
        # replayed, and the request is refused (409) rather than run a second time.
        raise KeyTaken(claim.key, without_reply(record) | {"final": True}, state, legacy=True)
    _check_backed(view, claim.key, record, tip)
    raise KeyTaken(claim.key, record, state)


def _check_backed(view: View, key: str, record: dict[str, Any], tip: tuple[int, str]) -> None:
    """Refuse to act on a key record the chain does not back: its claim, its keep and the
    digest of its stored reply must be in intact entries (a few reads, not a scan)."""
    claim = _intact(view, record.get("claimed"), f"idempotency key {key!r}", tip)
    expected = claimed(claim) if claim.claim is not None else {}
    fields = ("action", "payload", "expires", "claimed")
    if claim.claim is None or claim.claim["key"] != key or any(record.get(f) != expected[f] for f in fields):
        raise Altered(f"idempotency key {key!r} does not match the claim in entry {claim.seq}")
    if not record.get("final") and "reply" not in record:
        return
    kept = _intact(view, record.get("settled"), f"idempotency key {key!r}", tip)
    if (
        kept.settle is None
        or kept.action != record["action"]
        or not kept.settle["keep"]
        or kept.settle.get("reply") != record.get("reply_sha256")
        or ("reply" in record) != (kept.settle.get("reply") is not None)
        or ("reply" in record and reply_digest(record["reply"]) != kept.settle["reply"])
    ):
        raise Altered(f"the stored reply of idempotency key {key!r} does not match entry {kept.seq}")


def _intact(view: View, seq: Any, what: str, tip: tuple[int, str]) -> Entry:
    """An entry whose bytes match its hash and whose successor (or the tip) links to it."""
    if not isinstance(seq, int) or not in_range(seq):
        raise Altered(f"{what} names no entry of the chain")
    entry = view.entry(seq)
    if entry is None:
        raise Altered(f"{what} names entry {seq}, which is missing")
    after = view.entry(seq + 1)
    if after is not None:
        linked = after.prev == entry.hash
    else:
        # The last entry, or one a prune kept (its entry vouches for its hash) with the next gone.
        linked = tip == (seq, entry.hash) or view.pruned().islands.get(seq) == entry.hash
    if not linked:
        raise Altered(f"entry {seq} no longer links into the chain")
    return entry


def put_claim(txn: lmdb.Transaction, dbs: dict[bytes, Any], entry: Entry) -> None:
    """Record the key an opening entry claims as held by its action."""
    assert entry.claim is not None
    txn.put(entry.claim["key"].encode(), orjson.dumps(claimed(entry)), db=dbs[b"keys"])


def keep_or_release(
    txn: lmdb.Transaction, dbs: dict[bytes, Any], key: str, entry: Entry, reply: dict[str, Any] | None
) -> None:
    """Apply an outcome entry to its action's key: keep it final with `reply`, or release it."""
    keys = dbs[b"keys"]
    raw = txn.get(key.encode(), db=keys)
    record = key_record(key, as_bytes(raw)) if raw is not None else None
    after = settled(record, entry)
    if after is record:
        return  # released already, or the key has moved on (expired and claimed again)
    if after is None:
        txn.delete(key.encode(), db=keys)
        return
    if reply is not None and entry.settle is not None and entry.settle.get("reply") is not None:
        after["reply"] = reply
    txn.put(key.encode(), orjson.dumps(after), db=keys)

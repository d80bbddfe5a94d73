"""Sliding-window limit counters, shared by every process appending to the log: counted in the
transaction that writes an intent, so concurrent actions can never pass a limit together.

The `limits` database holds one row per counted intent: the limit's key and window, the time
and entry of the intent, and its weight; and per limit, the total of its rows. A check drops
the rows older than its window (taking them off the total) and compares the total, so it reads
only the rows that left the window since the last check (weight 0 adds no row). The database
is kept out of `verify`: what counts depends on the clock, and retention may remove the intents
long before or after their rows go. Each intent's entry records the checks it passed (its
`limits`).
"""

from __future__ import annotations

import struct
from typing import Any

import lmdb

from .coordinated import LimitCheck, LimitReached
from .stored import as_bytes, seq_key

LIMITS = b"limits"


def _prefix(key: str, window: float) -> bytes:
    """The rows of one limit: its key (length first, so no key is a prefix of another's rows)
    and its window in milliseconds (a key counted over two windows keeps two sets of rows)."""
    raw = key.encode()
    return struct.pack(">H", len(raw)) + raw + seq_key(round(window * 1000))


def _micros(ts: float) -> bytes:
    return seq_key(max(round(ts * 1_000_000), 0))


def counted(txn: lmdb.Transaction, dbs: dict[bytes, Any], key: str, window: float, now: float) -> int:
    """The weight counted on `key` in the `window` seconds before `now` (read only)."""
    if LIMITS not in dbs:
        return 0
    prefix = _prefix(key, window)
    total = 0
    cur = txn.cursor(db=dbs[LIMITS])
    if cur.set_range(prefix + _micros(now - window)):
        for raw_key, raw in cur:
            if not as_bytes(raw_key).startswith(prefix):
                break
            total += int.from_bytes(as_bytes(raw), "big")
    return total


def _total(txn: lmdb.Transaction, db: Any, prefix: bytes) -> int:
    raw = txn.get(prefix, db=db)
    return int.from_bytes(as_bytes(raw), "big") if raw is not None else 0


def _drop_older(txn: lmdb.Transaction, db: Any, prefix: bytes, cutoff: bytes) -> int:
    """Delete one limit's rows older than `cutoff`; return the weight they counted."""
    dropped = 0
    cur = txn.cursor(db=db)
    if not cur.set_range(prefix + bytes(8)):  # past the limit's total, to its oldest row
        return 0
    while True:
        key = as_bytes(cur.key())
        if not key.startswith(prefix) or key[len(prefix) : len(prefix) + 8] >= cutoff:
            return dropped
        dropped += int.from_bytes(as_bytes(cur.value()), "big")
        if not cur.delete():
            return dropped


def count(
    txn: lmdb.Transaction, dbs: dict[bytes, Any], checks: tuple[LimitCheck, ...], now: float, seq: int
) -> None:
    """Count entry `seq`'s weight against each check, in order, or raise LimitReached naming
    the first it would cross (the caller's transaction then keeps none of the counts).

    Each limit keeps its running total beside its rows (under its prefix alone), so a check
    reads the rows that left the window since the last one, not every row inside it."""
    db = dbs[LIMITS]
    for place, check in enumerate(checks):
        prefix = _prefix(check.key, check.window)
        passed = _total(txn, db, prefix) - _drop_older(txn, db, prefix, _micros(now - check.window))
        if passed + check.weight > check.maximum:
            raise LimitReached(check.key, passed, check.maximum, check.window, check.weight)
        if check.weight > 0:
            row = prefix + _micros(now) + seq_key(seq) + place.to_bytes(2, "big")
            txn.put(row, check.weight.to_bytes(8, "big"), db=db)
        txn.put(prefix, (passed + check.weight).to_bytes(8, "big"), db=db)


SEEN_PER_TXN = 5000  # rows a sweep looks at in one write transaction


def sweep_step(
    txn: lmdb.Transaction, dbs: dict[bytes, Any], start: bytes, now: float
) -> tuple[bytes | None, int]:
    """Delete rows older than their limit's window from `start` on (at most SEEN_PER_TXN
    looked at): rows of keys no intent counts against any more would otherwise stay. Return
    where to go on from (None at the end) and how many rows went."""
    if LIMITS not in dbs:
        return None, 0
    cur = txn.cursor(db=dbs[LIMITS])
    if not cur.set_range(start):
        return None, 0
    deleted = 0
    dropped: dict[bytes, int] = {}  # weight taken out of each limit's total
    going: bytes | None = None
    for _seen in range(SEEN_PER_TXN):
        key = as_bytes(cur.key())
        length = int.from_bytes(key[:2], "big")
        prefix = key[: 10 + length]
        window_ms = int.from_bytes(key[2 + length : 10 + length], "big")
        counted_at = int.from_bytes(key[10 + length : 18 + length], "big")
        if len(key) > len(prefix) and counted_at < (now - window_ms / 1000) * 1_000_000:
            deleted += 1
            dropped[prefix] = dropped.get(prefix, 0) + int.from_bytes(as_bytes(cur.value()), "big")
            if not cur.delete() or cur.key() == b"":
                break
        elif not cur.next():
            break
    else:
        going = as_bytes(cur.key())
    db = dbs[LIMITS]
    for prefix, weight in dropped.items():
        left = _total(txn, db, prefix) - weight
        if left > 0:
            txn.put(prefix, left.to_bytes(8, "big"), db=db)
        else:
            txn.delete(prefix, db=db)
    return going, deleted

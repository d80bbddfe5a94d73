"""Expired idempotency keys deleted with their stored replies, a few hundred per transaction.

A key past its TTL is already free (a new claim takes it), so deleting its record changes
nothing a request sees; it keeps the keys database to the keys of the last TTL, and with them
the replies they stored. Each transaction looks at a bounded run of keys and commits, so the
writer's appends wait for one short transaction at most, never for a whole sweep. Expiry is
checked inside the deleting transaction: a key claimed again meanwhile is live and stays.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import lmdb

from .errors import Altered
from .stored import as_bytes, key_record

DELETED_PER_TXN = 500  # expired keys deleted in one write transaction
SEEN_PER_TXN = 5000  # keys looked at in one write transaction, expired or not


@dataclass
class Swept:
    """What one run of the sweep did: keys deleted, and the bytes of their records (replies
    included) that went with them."""

    keys: int = 0
    bytes: int = 0

    def add(self, other: Swept) -> None:
        """Count what another run deleted too."""
        self.keys += other.keys
        self.bytes += other.bytes


def sweep_step(
    txn: lmdb.Transaction, dbs: dict[bytes, Any], start: bytes, *, now: float | None = None
) -> tuple[bytes | None, Swept]:
    """Delete expired key records from `start` on, in `txn`, within the per-transaction bounds;
    return the key to go on from (None at the end of the keys database) and what was deleted."""
    now = time.time() if now is None else now
    swept = Swept()
    cur = txn.cursor(db=dbs[b"keys"])
    if not cur.set_range(start):
        return None, swept
    seen = 0
    while True:
        key, raw = as_bytes(cur.key()), as_bytes(cur.value())
        if swept.keys >= DELETED_PER_TXN or seen >= SEEN_PER_TXN:
            return key, swept
        seen += 1
        if not _expired(key, raw, now):
            if not cur.next():
                return None, swept
            continue
        swept.keys += 1
        swept.bytes += len(key) + len(raw)
        # The cursor moves on to the next record, or off the end.
        if not cur.delete() or cur.key() == b"":
            return None, swept


def _expired(key: bytes, raw: bytes, now: float) -> bool:
    try:
        record = key_record(key.decode(errors="replace"), raw)
    except Altered:
        return False  # not the sweep's to judge: verify names a damaged record
    return bool(record["expires"] <= now)

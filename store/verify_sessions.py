"""Checking the session databases against the chain: the sessions and epochs are replayed
from the session entries the log holds (store/sessions.py `apply`, the writer's own step), and
every record must be what they say, or come from entries retention pruned.

Retention prunes session entries like any entry about no action, so a record whose entries
are gone is checked for its shape and for naming an entry below where the log starts; one
whose entries are still there must match them field for field. The lock and limit databases
are not checked here: see store/locks.py and store/limits.py for why.
"""

from __future__ import annotations

from typing import Any

import lmdb
import orjson

from .entry import Entry
from .sessions import EPOCHS, SESSIONS, apply
from .stored import as_bytes


class Replayed:
    """Session records as the chain's session entries imply them (store/sessions.py `Rows`)."""

    def __init__(self) -> None:
        self.rows: dict[tuple[bytes, bytes], dict[str, Any] | str | int] = {}
        self.partial: set[bytes] = set()  # sessions whose start was pruned: only their end is known

    def get(self, db: bytes, key: bytes) -> dict[str, Any] | str | int | None:
        """The replayed record under `key` in `db`, if any."""
        return self.rows.get((db, key))

    def put(self, db: bytes, key: bytes, value: dict[str, Any] | str | int) -> None:
        """Keep a replayed record."""
        if db == SESSIONS and isinstance(value, dict) and "agent" not in value:
            self.partial.add(key)
        self.rows[(db, key)] = value


def disagreement(
    txn: lmdb.Transaction, dbs: dict[bytes, Any], entries: list[Entry], start: int
) -> str | None:
    """The first session or epoch record that differs from what the chain's session `entries`
    imply (the log starts at entry `start`), said plainly; None when they agree."""
    replayed = Replayed()
    for entry in entries:
        apply(replayed, entry)
    for (db, key), derived in replayed.rows.items():
        if db not in dbs:
            return f"{db.decode()}: the chain has session entries but the log has no {db.decode()} database"
        raw = txn.get(key, db=dbs[db])
        stored = _parsed(raw)
        if stored is None:
            return f"{db.decode()}: the chain implies a record {key!r} that is missing"
        if key in replayed.partial and isinstance(stored, dict) and isinstance(derived, dict):
            stored = {name: stored.get(name) for name in derived}
        if stored != derived:
            return f"{db.decode()}: the record {key!r} says {stored!r}, the chain says {derived!r}"
    for db in (SESSIONS, EPOCHS):
        if db not in dbs:
            continue
        for raw_key, raw in txn.cursor(db=dbs[db]):
            key = as_bytes(raw_key)
            if (db, key) in replayed.rows:
                continue
            problem = _pruned_record(db, key, _parsed(raw), replayed, start)
            if problem is not None:
                return f"{db.decode()}: the record {key!r} {problem}"
    return None


def _parsed(raw: bytes | memoryview | None) -> Any:
    if raw is None:
        return None
    try:
        return orjson.loads(as_bytes(raw))
    except ValueError:
        return {"invalid": True}


def _pruned_record(db: bytes, key: bytes, record: Any, replayed: Replayed, start: int) -> str | None:
    """What is wrong with a record no entry in the log implies: it must come from a pruned one."""
    if db == SESSIONS and key.startswith(b"t"):
        session = replayed.get(SESSIONS, b"s" + record.encode()) if isinstance(record, str) else None
        if isinstance(session, dict) and session.get("token_sha256") != key[1:].decode(errors="replace"):
            return "names a session whose token is another"
        return None if isinstance(record, str) else "is not a session id"
    if not isinstance(record, dict) or not isinstance(seq := record.get("entry"), int):
        return "is not a valid record"
    if seq >= start:
        return f"names entry {seq}, which makes no such record (no session entry of the chain implies it)"
    return None

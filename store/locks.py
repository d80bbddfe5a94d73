"""Locks on keys, shared by every process appending to the log: taken in the transaction that
writes an intent, so two actions on one key never both go.

A lock is for one action's duration (released by the entry that moves the action out of
pending: its outcome) or held for some seconds across a holder's actions. A lock never outlives
its holder: it is free once it expired, its action is no longer pending, its session is stale
(superseded, ended, expired), or the writer process that took it is dead (the liveness test
recovery uses). Nothing is deleted for that: the next claim finds the lock dead and takes it.

The `locks` database (key -> holder) is kept out of `verify`: whether a lock is live depends
on the clock and on which processes run, not on the chain alone. The chain still records each
lock an intent took (its entry's `lock`) and each explicit release (a `lock_released` entry).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb
import orjson

from . import sessions
from .coordinated import LockClaim, Locked
from .errors import Altered, StateError
from .liveness import alive
from .record import Record
from .states import State
from .stored import as_bytes
from .view import View

LOCKS = b"locks"
RELEASED = "lock_released"


@dataclass(frozen=True)
class LockInfo:
    """A lock as the log holds it: its holder, the session and writer behind it, the action it
    is for (None for a lock held across actions), since and until when, and whether it is live."""

    key: str
    holder: str
    session: str | None
    writer: str
    action: int | None
    since: float
    expires: float | None
    live: bool

    def as_dict(self) -> dict[str, Any]:
        """The lock as a JSON-ready mapping."""
        return {
            "key": self.key,
            "holder": self.holder,
            "session": self.session,
            "writer": self.writer,
            "action": self.action,
            "since": self.since,
            "expires": self.expires,
            "live": self.live,
        }


def release(key: str, holder: str) -> Record:
    """An explicit release of the lock `holder` holds on `key` (StateError if it holds none)."""
    return Record(kind=RELEASED, data={"key": key, "holder": holder})


def _record(key: bytes, raw: bytes) -> dict[str, Any]:
    try:
        record = orjson.loads(raw)
        if not isinstance(record, dict) or not isinstance(record.get("holder"), str):
            raise ValueError
    except ValueError:
        raise Altered(f"the lock record {key!r} is not a valid record") from None
    return record


def _live(view: View, path: Path, own_writer: str, record: dict[str, Any], now: float) -> bool:
    """Whether a stored lock still binds: unexpired, its action pending, its session fresh, its
    writer alive (a file lock test, made last since it costs a system call or two)."""
    expires = record.get("expires")
    if isinstance(expires, int | float) and expires <= now:
        return False
    action = record.get("action")
    if isinstance(action, int):
        index = view.index(action)
        if index is None or index["state"] != State.PENDING:
            return False
    session = record.get("session")
    if isinstance(session, str) and sessions.stale(sessions.Stored(view.txn, view.dbs), session, now):
        return False
    writer = record.get("writer")
    return writer == own_writer or (isinstance(writer, str) and alive(path, writer))


def take(
    view: View,
    path: Path,
    writer: str,
    claim: LockClaim,
    *,
    action_id: int | None,
    session: str | None,
    now: float,
    seq: int,
) -> None:
    """Take `claim`'s lock for the intent being written (entry `seq`, action `action_id`), or
    raise Locked when another live holder has it. A holder's lock held across its actions
    covers its actions' claims on the key; a claim for longer renews it."""
    db, key = view.dbs[LOCKS], claim.key.encode()
    raw = view.txn.get(key, db=db)
    if raw is not None:
        held = _record(key, as_bytes(raw))
        if _live(view, path, writer, held, now):
            same = held["holder"] == claim.holder
            if same and held.get("action") is None and claim.hold is None:
                return  # the holder's standing lock covers this action
            if not (same and (claim.hold is not None or held.get("action") == action_id)):
                raise Locked(
                    claim.key,
                    held["holder"],
                    held.get("since", 0.0),
                    held.get("action"),
                    expires=held.get("expires"),
                )
    record = {
        "holder": claim.holder,
        "session": session,
        "writer": writer,
        "action": action_id if claim.hold is None else None,
        "since": now,
        "expires": now + claim.hold if claim.hold is not None else None,
        "entry": seq,
    }
    view.txn.put(key, orjson.dumps(record), db=db)


def release_action(txn: lmdb.Transaction, dbs: dict[bytes, Any], key: str, action_id: int) -> None:
    """The action's outcome: free its lock on `key` if it still holds it."""
    raw = txn.get(key.encode(), db=dbs[LOCKS])
    if raw is not None and _record(key.encode(), as_bytes(raw)).get("action") == action_id:
        txn.delete(key.encode(), db=dbs[LOCKS])


def release_held(txn: lmdb.Transaction, dbs: dict[bytes, Any], key: str, holder: str) -> None:
    """An explicit release: free `holder`'s lock on `key` (StateError if it holds none)."""
    raw = txn.get(key.encode(), db=dbs[LOCKS])
    if raw is None or _record(key.encode(), as_bytes(raw))["holder"] != holder:
        raise StateError(f"{holder} holds no lock on {key!r}: there is nothing to release")
    txn.delete(key.encode(), db=dbs[LOCKS])


def every(view: View, path: Path, writer: str, now: float | None = None) -> Iterator[LockInfo]:
    """Every lock record the log holds, in key order, each saying whether it is live now."""
    if LOCKS not in view.dbs:
        return
    now = time.time() if now is None else now
    for raw_key, raw in view.txn.cursor(db=view.dbs[LOCKS]):
        key = as_bytes(raw_key)
        record = _record(key, as_bytes(raw))
        yield LockInfo(
            key=key.decode(errors="replace"),
            holder=record["holder"],
            session=record.get("session"),
            writer=str(record.get("writer", "")),
            action=record.get("action"),
            since=float(record.get("since", 0.0)),
            expires=record.get("expires"),
            live=_live(view, path, writer, record, now),
        )


def sweep(view: View, path: Path, writer: str, now: float) -> int:
    """Delete the lock records that bind no more (expired, their action or session over, their
    writer dead); return how many went. Locks are few: one transaction sweeps them all."""
    if LOCKS not in view.dbs:
        return 0
    dead = [
        as_bytes(key)
        for key, raw in view.txn.cursor(db=view.dbs[LOCKS])
        if not _live(view, path, writer, _record(as_bytes(key), as_bytes(raw)), now)
    ]
    for key in dead:
        view.txn.delete(key, db=view.dbs[LOCKS])
    return len(dead)

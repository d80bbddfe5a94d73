"""The writer's coordination steps for one record, inside the transaction that writes it:
fencing, locks, limit counters and session changes (store/coordinated.py says what a record
asks; store/sessions.py, store/locks.py and store/limits.py keep the databases)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import limits, locks, sessions
from .entry import Entry
from .record import Record
from .states import State
from .view import View


def refuse_if_fenced(view: View, record: Record, now: float) -> None:
    """Raise Fenced when the record's session is stale (first: a fenced session learns nothing
    else, not even whether its idempotency key is taken)."""
    if record.fence is not None:
        sessions.refuse_if_fenced(sessions.Stored(view.txn, view.dbs), record.fence, now)


def before_seal(
    view: View, path: Path, writer: str, record: Record, body: dict[str, Any], action_id: int | None
) -> None:
    """Take the record's lock and count its limits (all or nothing: the caller's child
    transaction keeps none of it if any raises), give a session entry its epoch, and record in
    the entry's body what was checked."""
    now, seq, data = body["ts"], body["seq"], body["data"]
    if sessions.changes_sessions(body):
        sessions.prepare(sessions.Stored(view.txn, view.dbs), body)
    elif body["kind"] == locks.RELEASED and action_id is None:
        locks.release_held(view.txn, view.dbs, data["key"], data["holder"])
    if record.fence is not None:
        data["fence"] = record.fence.as_dict()
    if record.lock is not None:
        session = record.fence.session if record.fence is not None else None
        locks.take(view, path, writer, record.lock, action_id=action_id, session=session, now=now, seq=seq)
        data["lock"] = record.lock.as_dict()
        if record.lock.hold is None and action_id is not None:
            # On the action's index, so that its outcome knows which lock to release.
            body["summary"] = dict(body.get("summary", {})) | {"lock": record.lock.key}
    if record.limits:
        limits.count(view.txn, view.dbs, record.limits, now, seq)
        data["limits"] = [check.as_dict() for check in record.limits]


def after_write(view: View, entry: Entry, index: dict[str, Any] | None) -> None:
    """Once the entry is written: keep a session entry in the session databases; an entry that
    moves its action out of pending releases the action's lock."""
    if entry.action is None and entry.kind in sessions.KINDS:
        sessions.apply(sessions.Stored(view.txn, view.dbs), entry)
    if (
        index is not None
        and isinstance(key := index.get("lock"), str)
        and index.get("state") != State.PENDING
    ):
        locks.release_action(view.txn, view.dbs, key, index["id"])

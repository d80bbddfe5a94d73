"""The operator's freeze: while the log is frozen, no record marked `unless_frozen` is written.

A `freeze` entry freezes the log and a `thaw` entry lifts it; both are about no action and
record who did it and why. The meta record `freeze` names the entry the log is frozen by and is
absent while it is not: the writer keeps it in the same transaction as the entry, and checks it
in the same transaction as each record it guards, so a freeze that is durable holds for every
process writing the log at once. Readers take only the entry number from the record and show
what that entry says; `verify` checks the record against the chain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lmdb

from .entry import Entry
from .errors import Altered, StateError, StoreError
from .stored import as_bytes, name_entry, named_entry, parsed_entry, seq_key

FREEZE = "freeze"
THAW = "thaw"
META_KEY = b"freeze"


@dataclass(frozen=True)
class FreezeState:
    """A freeze in force: the entry that made it, when, by whom and why."""

    seq: int
    ts: float
    by: str
    reason: str

    @classmethod
    def of(cls, entry: Entry) -> FreezeState:
        """The freeze a `freeze` entry made."""
        by, reason = entry.data.get("by"), entry.data.get("reason")
        return cls(
            entry.seq, entry.ts, by if isinstance(by, str) else "", reason if isinstance(reason, str) else ""
        )

    def as_dict(self) -> dict[str, Any]:
        """The freeze as a JSON-ready mapping."""
        return {"entry": self.seq, "since": self.ts, "by": self.by, "reason": self.reason}


class Frozen(StoreError):
    """A record marked `unless_frozen` was refused: the log is frozen (`state` says by whom)."""

    def __init__(self, state: FreezeState):
        super().__init__(
            f"the log is frozen since entry {state.seq}, by {state.by or 'an unnamed operator'}"
            + (f" ({state.reason})" if state.reason else "")
            + ": nothing that writes or destroys goes out until someone thaws it"
        )
        self.state = state


def changes_freeze(body: dict[str, Any]) -> bool:
    """True for the body of an entry that freezes or thaws the log."""
    return body.get("kind") in (FREEZE, THAW) and body.get("action") is None


def after(current: int | None, body: dict[str, Any]) -> int | None:
    """The entry the log is frozen by after an entry with `body` (None: not frozen)."""
    if not changes_freeze(body):
        return current
    return body["seq"] if body["kind"] == FREEZE else None


def recorded(txn: lmdb.Transaction, meta: Any) -> int | None:
    """The entry the meta record says the log is frozen by (Altered if it is not a valid record)."""
    return named_entry(txn, meta, META_KEY, "freeze")


def current(txn: lmdb.Transaction, dbs: dict[bytes, Any]) -> FreezeState | None:
    """The freeze in force as the entry the meta record names says it (None: not frozen)."""
    seq = recorded(txn, dbs[b"meta"])
    if seq is None:
        return None
    raw = txn.get(seq_key(seq), db=dbs[b"entries"])
    if raw is None:
        raise Altered(f"the freeze record names entry {seq}, which is missing")
    entry = parsed_entry(seq, as_bytes(raw))
    if entry.kind != FREEZE or entry.action is not None:
        raise Altered(f"the freeze record names entry {seq}, which is a {entry.kind} entry")
    return FreezeState.of(entry)


def keep(txn: lmdb.Transaction, dbs: dict[bytes, Any], body: dict[str, Any]) -> None:
    """Before a freeze or thaw entry is written: refuse a freeze of a frozen log and a thaw of
    one that is not (StateError); after it, the meta record says what it did."""
    state = current(txn, dbs)
    if body["kind"] == FREEZE and state is not None:
        raise StateError(
            f"the log is already frozen since entry {state.seq} by {state.by or 'an unnamed operator'}"
        )
    if body["kind"] == THAW and state is None:
        raise StateError("the log is not frozen: there is nothing to thaw")
    seq = after(None if state is None else state.seq, body)
    if seq is None:
        txn.delete(META_KEY, db=dbs[b"meta"])
    else:
        name_entry(txn, dbs[b"meta"], META_KEY, seq)


def refuse_if_frozen(txn: lmdb.Transaction, dbs: dict[bytes, Any]) -> None:
    """Raise Frozen when the log is frozen (one read of an absent key when it is not)."""
    state = current(txn, dbs)
    if state is not None:
        raise Frozen(state)

"""The log as one LMDB transaction sees it: the head, entries, and actions rebuilt from the
entries their indexes list (the index only finds them; Altered where it disagrees with them).

Readers and the writer share it: a write transaction reads through a View of itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import lmdb
import orjson

from . import formats, pruned
from .chain import GENESIS
from .entry import Entry
from .errors import Altered
from .index import advance
from .pruned import Pruned
from .stored import (
    ChainCount,
    as_bytes,
    in_range,
    index_record,
    listed_entries,
    parsed_entry,
    seq_key,
    state_key,
)

DBS = (
    b"entries",
    b"actions",
    b"states",
    b"meta",
    b"keys",
    b"attrs",
    b"sessions",  # store/sessions.py
    b"epochs",
    b"locks",  # store/locks.py
    b"limits",  # store/limits.py
)
# Databases a later version added: a read-only open of a log an older airlock wrote lacks them.
ADDED = frozenset({b"attrs", b"sessions", b"epochs", b"locks", b"limits"})
HEAD = b"head"
NEXT_ACTION = b"next_action"


class View:
    """Reads of the log inside one transaction `txn` over the log's databases `dbs`."""

    def __init__(self, txn: lmdb.Transaction, dbs: dict[bytes, Any]):
        self.txn = txn
        self.dbs = dbs
        self._pruned: Pruned | None = None

    def head(self) -> tuple[int, str]:
        """The sequence number and hash of the last entry (0 and the genesis hash if empty)."""
        raw = self.txn.get(HEAD, db=self.dbs[b"meta"])
        if raw is None:
            return 0, GENESIS
        try:
            head = orjson.loads(as_bytes(raw))
            seq, digest = head["seq"], head["hash"]
            if not isinstance(seq, int) or not isinstance(digest, str):
                raise TypeError
        except (ValueError, TypeError, KeyError):
            raise Altered("the recorded head is not a valid record") from None
        return seq, digest

    def entry(self, seq: int) -> Entry | None:
        """The entry with sequence number `seq`, if there is one (Altered if it is damaged)."""
        raw = self.txn.get(seq_key(seq), db=self.dbs[b"entries"])
        if raw is None:
            return None
        return parsed_entry(seq, as_bytes(raw))

    def entries(self, start: int) -> Iterator[Entry]:
        """Entries in order from sequence number `start` (Altered at the first damaged one)."""
        cur = self.txn.cursor(db=self.dbs[b"entries"])
        if cur.set_range(seq_key(start)):
            for key, raw in cur:
                yield parsed_entry(int.from_bytes(as_bytes(key), "big"), as_bytes(raw))

    def index(self, action_id: int) -> dict[str, Any] | None:
        """An action's stored index record as it stands, if there is one (not checked against
        the chain: the writer's and recovery's view of where the action stands)."""
        raw = self.txn.get(seq_key(action_id), db=self.dbs[b"actions"])
        return index_record(action_id, as_bytes(raw)) if raw is not None else None

    def next_action(self) -> int:
        """The id the next new action gets."""
        raw = self.txn.get(NEXT_ACTION, db=self.dbs[b"meta"])
        if raw is None:
            return 1
        if len(raw) != 8:
            raise Altered("the recorded next action number is not a valid record")
        return int.from_bytes(as_bytes(raw), "big")

    def legacy_before(self) -> int:
        """The first entry in the current format: those before it were written by an older
        airlock (for a log no writer of this version has opened yet, all of them)."""
        raw = self.txn.get(formats.META_KEY, db=self.dbs[b"meta"])
        if raw is None:
            return self.head()[0] + 1
        since = formats.since_of(as_bytes(raw))
        if since is None:
            raise Altered("the log's format record is not a valid record")
        return since

    def pruned(self) -> Pruned:
        """Where the log starts, as its last prune left it (read once per view)."""
        if self._pruned is None:
            self._pruned = pruned.current(self.txn, self.dbs)
        return self._pruned

    def action(self, action_id: int, *, whole: bool = False) -> dict[str, Any] | None:
        """One action as its entries say (see `Log.action`); None for one pruned."""
        found = self.derived(action_id)
        if found is None and 1 <= action_id < self.next_action() and self.pruned().keeps_action(action_id):
            raise Altered(f"the actions index has no record of action {action_id}")
        if found is not None and whole:
            about = self._entries_about(action_id, found["entries"][0])
            if about != found["entries"]:
                missing = sorted(set(about) - set(found["entries"]))
                raise Altered(f"action {action_id}'s index does not list its entries {missing}")
        return found

    def _entries_about(self, action_id: int, start: int) -> list[int]:
        # Canonical JSON has no spaces: an entry about the action holds this exact text.
        needle = b'"action":' + str(action_id).encode() + b","
        found = []
        cur = self.txn.cursor(db=self.dbs[b"entries"])
        if cur.set_range(seq_key(start)):
            for key, raw in cur:
                if needle in raw:
                    seq = int.from_bytes(as_bytes(key), "big")
                    if parsed_entry(seq, as_bytes(raw)).action == action_id:
                        found.append(seq)
        return found

    def derived(self, action_id: int, chain: ChainCount | None = None) -> dict[str, Any] | None:
        """An action's index rebuilt from the entries its index record lists; with `chain`,
        also checked to list every entry the chain has about it."""
        raw = self.txn.get(seq_key(action_id), db=self.dbs[b"actions"])
        if raw is None:
            return None
        listed = listed_entries(action_id, as_bytes(raw))
        index: dict[str, Any] | None = None
        for seq in listed:
            entry = self.entry(seq)
            if entry is None:
                raise Altered(f"action {action_id}'s index lists entry {seq}, which is missing")
            if entry.action != action_id:
                raise Altered(
                    f"action {action_id}'s index lists entry {seq}, which is about action {entry.action}"
                )
            index = advance(index, entry)
        if index is None:
            raise Altered(f"action {action_id}'s index lists no entries")
        if chain is not None:
            chain.check(action_id, listed)
        if listed[0] < self.legacy_before():
            # An older airlock's action: its summary fields are in no entry, so they are shown as
            # its index has them, and named as unchecked.
            unchecked = {k: v for k, v in index_record(action_id, as_bytes(raw)).items() if k not in index}
            index = unchecked | index | {"unchecked": sorted(unchecked)}
        return index

    def actions(self, state: str | None, after: int, *, whole: bool = False) -> Iterator[dict[str, Any]]:
        """Actions with id above `after`, oldest first, optionally in one state (see `Log.actions`)."""
        chain = ChainCount.of(self.dbs[b"entries"], self.txn, after) if whole else None
        if state is None or chain is not None:
            for found in self._all_actions(after, chain):
                if state is None or found["state"] == state:
                    yield found
            return
        prefix = state.encode() + b"\0"
        cur = self.txn.cursor(db=self.dbs[b"states"])
        if not cur.set_range(state_key(state, after + 1)):
            return
        for raw_key in cur.iternext(values=False):
            key = as_bytes(raw_key)
            if not key.startswith(prefix):
                break
            action_id = int.from_bytes(key[len(prefix) :], "big")
            derived = self.derived(action_id)
            if derived is None:
                raise Altered(f"the states index lists action {action_id}, which the actions index lacks")
            if derived.get("state") != state:
                raise Altered(
                    f"the states index lists action {action_id} as {state}, "
                    f"its entries say {derived.get('state')}"
                )
            yield derived

    def count(self, state: str) -> int:
        """How many actions the states index lists in `state`."""
        prefix = state.encode() + b"\0"
        cur = self.txn.cursor(db=self.dbs[b"states"])
        found = 0
        if cur.set_range(prefix):
            for raw_key in cur.iternext(values=False):
                if not as_bytes(raw_key).startswith(prefix):
                    break
                found += 1
        return found

    def _all_actions(self, after: int, chain: ChainCount | None) -> Iterator[dict[str, Any]]:
        kept = self.pruned().kept_ids(after)
        expected = next(kept)
        cur = self.txn.cursor(db=self.dbs[b"actions"])
        if cur.set_range(seq_key(after + 1)):
            for raw_key in cur.iternext(values=False):
                action_id = int.from_bytes(as_bytes(raw_key), "big")
                if action_id != expected:
                    # Ids are given out one by one: a gap is an index record someone removed.
                    raise Altered(f"the actions index has no record of action {expected}")
                found = self.derived(action_id, chain)
                assert found is not None
                yield found
                expected = next(kept)
        opened = chain.opened if chain is not None else self.next_action() - 1
        if expected <= opened:
            raise Altered(f"the actions index has no record of action {expected} (the log has {opened})")

    def legacy_action(self, action_id: Any) -> bool:
        """True when an intact entry of the chain shows the action was opened before the upgrade."""
        known = isinstance(action_id, int) and in_range(action_id)
        raw = self.txn.get(seq_key(action_id), db=self.dbs[b"actions"]) if known else None
        listed = listed_entries(action_id, as_bytes(raw))[:1] if raw is not None else []
        first = self.entry(listed[0]) if listed else None
        return first is not None and first.action == action_id and first.seq < self.legacy_before()

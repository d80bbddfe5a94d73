"""Pruning the oldest closed actions, one small step at a time (what is left: store/pruned.py).

A step takes the entries from where the log starts now up to a cut, at most STEP of them, and
removes every one that belongs to an action that is closed (committed, failed, denied, aborted,
replayed, fenced), has all its entries below the cut and holds no live idempotency key, with the
action's index records and its spent key; the entries about no action go too, but for the
freeze in force and the last checkpoint. Everything else below the cut stays, as an island the
prune entry lists with its hash. The deletions and the prune entry share one write transaction
(Record.then), so a step is whole or absent, and each step is small enough not to stall the
writer for long.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from . import attrs, checkpoints, freeze, pruned
from .archive import Segment
from .chain import unseal
from .entry import Entry
from .pruned import PRUNE, Pruned
from .record import Record
from .states import State
from .stored import as_bytes, key_record, parsed_entry, seq_key, state_key
from .view import View

STEP = 2000  # entries one step looks at, at most
MIN_SIZE_STEP = 16  # the fewest entries a step takes when the size limit asks for room
CLOSED = frozenset({State.COMMITTED, State.FAILED, State.DENIED, State.ABORTED, State.REPLAYED, State.FENCED})


@dataclass(frozen=True)
class Retention:
    """How much of the log to keep: entries younger than `max_age` seconds, and no more than
    `max_bytes` of pages in use (the oldest closed actions go first). None keeps everything."""

    max_age: float | None = None
    max_bytes: int | None = None

    @property
    def active(self) -> bool:
        """True when this policy ever prunes anything."""
        return self.max_age is not None or self.max_bytes is not None


@dataclass(frozen=True)
class Cut:
    """One step's range: entries from `begin` (where the log starts now) to before `end`."""

    begin: int
    end: int


def choose(view: View, policy: Retention, used: int, now: float, floor: int | None = None) -> Cut | None:
    """The next step's cut, or None when the policy keeps everything there is: entries older
    than the age limit go, and while more than `max_bytes` are in use the oldest go whatever
    their age. Never past `floor` (the first entry something still needs,
    such as an export that has not shipped it)."""
    begin = pruned.current(view.txn, view.dbs).start
    head = view.head()[0]
    limit = min(begin + STEP, head + 1)
    if floor is not None:
        limit = min(limit, floor)
    if limit <= begin:
        return None
    pressed = policy.max_bytes is not None and used > policy.max_bytes
    if pressed:
        # About the share of entries that is over the limit (they are about the same size).
        assert policy.max_bytes is not None
        count = view.txn.stat(view.dbs[b"entries"])["entries"]
        over = math.ceil(count * (used - policy.max_bytes) / used * 1.1)
        limit = min(limit, begin + max(over, MIN_SIZE_STEP))
    elif policy.max_age is None:
        return None
    oldest = now - (policy.max_age or 0.0)
    end, useful = begin, False
    cur = view.txn.cursor(db=view.dbs[b"entries"])
    if cur.set_range(seq_key(begin)):
        for key, raw in cur:
            seq = int.from_bytes(as_bytes(key), "big")
            if seq >= limit:
                break
            entry = parsed_entry(seq, as_bytes(raw))
            if not pressed and entry.ts >= oldest:
                break
            end, useful = seq + 1, useful or entry.kind != PRUNE
    # A range of nothing but earlier prune entries is not worth a new one, unless an action
    # kept below the start has closed (or its key expired) since.
    if not useful:
        kept = pruned.current(view.txn, view.dbs)
        useful = end > begin and any(_closed(view, a, end, now) is not None for a in kept.island_actions)
    return Cut(begin, end) if useful else None


@dataclass
class Step:
    """What one step removes and keeps, worked out inside its write transaction."""

    after: Pruned
    entries: list[int]  # the entries it removes
    actions: dict[int, dict[str, Any]]  # the actions it removes, with their index records
    bytes: int  # the stored bytes of what it removes

    def data(self) -> dict[str, Any]:
        """The prune entry's data: the state it leaves, and what it removed."""
        return self.after.data() | {
            "removed": {"entries": len(self.entries), "actions": len(self.actions), "bytes": self.bytes}
        }


def plan(view: View, cut: Cut, now: float) -> Step | None:
    """What pruning up to `cut` removes and keeps (None when the log no longer starts where the
    cut was chosen: another process pruned meanwhile)."""
    before = pruned.current(view.txn, view.dbs)
    if before.start != cut.begin:
        return None
    # Entries about no action that stay: the freeze in force and the last checkpoint.
    in_force = {freeze.recorded(view.txn, view.dbs[b"meta"]), checkpoints.hint(view.txn, view.dbs)}
    seen: dict[int, tuple[Entry, int]] = {}
    for seq in sorted(before.islands):
        raw = view.txn.get(seq_key(seq), db=view.dbs[b"entries"])
        if raw is not None:
            seen[seq] = (parsed_entry(seq, as_bytes(raw)), len(raw))
    last_opened = before.first_action - 1
    cur = view.txn.cursor(db=view.dbs[b"entries"])
    if cur.set_range(seq_key(cut.begin)):
        for key, raw in cur:
            seq = int.from_bytes(as_bytes(key), "big")
            if seq >= cut.end:
                break
            entry = parsed_entry(seq, as_bytes(raw))
            seen[seq] = (entry, len(raw))
            if entry.action is not None:
                last_opened = max(last_opened, entry.action)
    closed: dict[int, dict[str, Any] | None] = {}
    for entry, _size in seen.values():
        if entry.action is not None and entry.action not in closed:
            closed[entry.action] = _closed(view, entry.action, cut.end, now)
    islands: dict[int, str] = {}
    removed: list[int] = []
    size = 0
    for seq, (entry, stored) in sorted(seen.items()):
        keep = closed[entry.action] is None if entry.action is not None else seq in in_force
        if keep:
            islands[seq] = entry.hash
        else:
            removed.append(seq)
            size += stored
    gone = {a: index for a, index in closed.items() if index is not None}
    size += sum(len(orjson.dumps(index)) for index in gone.values())
    prev = view.txn.get(seq_key(cut.end - 1), db=view.dbs[b"entries"])
    continues = unseal(as_bytes(prev))[1] if prev is not None else before.continues
    since = view.legacy_before()
    after = Pruned(
        entry=0,
        start=cut.end,
        continues=continues,
        first_action=last_opened + 1,
        islands=islands,
        island_actions=frozenset(e.action for e, _ in (seen[s] for s in islands) if e.action is not None),
        format_since=since if 1 < since < cut.end else before.format_since,
    )
    return Step(after, removed, gone, size)


def _closed(view: View, action_id: int, end: int, now: float) -> dict[str, Any] | None:
    """The action's index record when the step may remove it: closed, every entry below the
    cut, and no live idempotency key; None when it stays."""
    index = view.index(action_id)
    if index is None or index["state"] not in CLOSED or index["entries"][-1] >= end:
        return None
    key = index.get("key")
    if isinstance(key, str):
        raw = view.txn.get(key.encode(), db=view.dbs[b"keys"])
        if raw is not None:
            held = key_record(key, as_bytes(raw))
            if held["action"] == action_id and held["expires"] > now:
                return None
    return index


def remove(view: View, step: Step, entry: Entry) -> None:
    """Delete what `step` removes and record `entry` as the last prune (in its transaction)."""
    txn, dbs = view.txn, view.dbs
    for seq in step.entries:
        txn.delete(seq_key(seq), db=dbs[b"entries"])
    for action_id, index in step.actions.items():
        txn.delete(seq_key(action_id), db=dbs[b"actions"])
        txn.delete(state_key(index["state"], action_id), db=dbs[b"states"])
        if b"attrs" in dbs:
            attrs.drop(txn, dbs, action_id, index)
        key = index.get("key")
        if isinstance(key, str):
            raw = txn.get(key.encode(), db=dbs[b"keys"])
            if raw is not None and key_record(key, as_bytes(raw))["action"] == action_id:
                txn.delete(key.encode(), db=dbs[b"keys"])
    pruned.mark(txn, dbs[b"meta"], entry.seq)


def record(
    view: View,
    cut: Cut,
    now: float,
    sign: Callable[[bytes], str] | None = None,
    segment: Segment | None = None,
) -> Record | None:
    """The prune record for `cut`, planned in `view`'s transaction (None: another process
    pruned meanwhile); `segment` is the archive its entries were written to first."""
    step = plan(view, cut, now)
    if step is None:
        return None
    data = step.data() | ({"archive": segment.as_dict()} if segment is not None else {})
    return Record(kind=PRUNE, data=data, sign=sign, then=lambda v, e: remove(v, step, e))


def removed_bytes(entry: Entry) -> int:
    """The bytes a prune entry says its step removed."""
    removed = entry.data.get("removed")
    found = removed.get("bytes") if isinstance(removed, dict) else None
    return found if isinstance(found, int) else 0

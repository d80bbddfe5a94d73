"""Where the log starts after pruning, as the last `prune` entry says it.

A prune removes the entries below a cut S and records, in a hashed (and signed) `prune` entry
written in the same transaction: S, the hash of entry S-1 that entry S links to, the first
action opened from S on, the entries below S that were kept (the "islands": every entry of an
action still open or still holding a live idempotency key, and the freeze in force) with their
hashes, and where an upgraded log's format starts. The meta record `pruned` names the last
prune entry; readers and `verify` take only that number from it and trust the entry it names,
which `verify` checks is the chain's last prune entry.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import lmdb

from .chain import GENESIS
from .entry import Entry
from .errors import Altered
from .stored import as_bytes, name_entry, named_entry, parsed_entry, seq_key

PRUNE = "prune"
META_KEY = b"pruned"
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class Pruned:
    """What the last prune left: the kept chain starts at `start` and links to `continues`;
    actions below `first_action` are gone but for `island_actions`, whose entries below
    `start` are the `islands` (entry number -> hash)."""

    entry: int = 0  # the prune entry (0: the log was never pruned)
    start: int = 1
    continues: str = GENESIS
    first_action: int = 1
    islands: dict[int, str] = field(default_factory=dict)
    island_actions: frozenset[int] = frozenset()
    format_since: int | None = None  # an upgraded log's first current-format entry, if pruned

    @classmethod
    def of(cls, entry: Entry) -> Pruned:
        """The state a prune entry records; ValueError naming what is malformed."""
        data = entry.data
        if entry.kind != PRUNE or entry.action is not None:
            raise ValueError(f"entry {entry.seq} is a {entry.kind} entry, not a prune entry")
        start, first, since = data.get("start"), data.get("first_action"), data.get("format_since")
        continues, islands = data.get("continues"), data.get("islands")
        actions = data.get("island_actions")
        if not (isinstance(start, int) and isinstance(first, int) and _number(start) and _number(first)):
            raise ValueError(f"prune entry {entry.seq} has a malformed start or first action")
        if since is not None and not (isinstance(since, int) and _number(since)):
            raise ValueError(f"prune entry {entry.seq} has a malformed format start")
        if not isinstance(continues, str) or not _digest(continues):
            raise ValueError(f"prune entry {entry.seq} has a malformed chain link")
        if not isinstance(islands, dict) or not isinstance(actions, list):
            raise ValueError(f"prune entry {entry.seq} has a malformed list of what it kept")
        kept: dict[int, str] = {}
        for seq, digest in islands.items():
            if not seq.isdigit() or not _digest(digest) or not 1 <= int(seq) < start:
                raise ValueError(f"prune entry {entry.seq} lists a malformed kept entry")
            kept[int(seq)] = digest
        if not all(_number(a) and a < first for a in actions):
            raise ValueError(f"prune entry {entry.seq} lists a malformed kept action")
        if start > entry.seq:
            raise ValueError(f"prune entry {entry.seq} says the log starts after it, at {start}")
        return cls(entry.seq, start, continues, first, kept, frozenset(actions), since)

    def data(self) -> dict[str, Any]:
        """What a prune entry records for this state (without the figures of its step)."""
        out: dict[str, Any] = {
            "start": self.start,
            "continues": self.continues,
            "first_action": self.first_action,
            "islands": {str(seq): digest for seq, digest in sorted(self.islands.items())},
            "island_actions": sorted(self.island_actions),
        }
        if self.format_since is not None:
            out["format_since"] = self.format_since
        return out

    def keeps_action(self, action_id: int) -> bool:
        """True when action `action_id` was not pruned."""
        return action_id >= self.first_action or action_id in self.island_actions

    def kept_ids(self, after: int) -> Iterator[int]:
        """The ids of kept actions above `after`, in order (the kept ones below the first
        action, then every id from it on)."""
        below = (a for a in sorted(self.island_actions) if a > after)
        return itertools.chain(below, itertools.count(max(after + 1, self.first_action)))


NEVER = Pruned()


def recorded(txn: lmdb.Transaction, meta: Any) -> int | None:
    """The prune entry the meta record names (None: never pruned; Altered if malformed)."""
    return named_entry(txn, meta, META_KEY, "pruned")


def current(txn: lmdb.Transaction, dbs: dict[bytes, Any]) -> Pruned:
    """What the last prune left (NEVER for a log never pruned; Altered if the record or the
    entry it names is not a prune entry)."""
    seq = recorded(txn, dbs[b"meta"])
    if seq is None:
        return NEVER
    raw = txn.get(seq_key(seq), db=dbs[b"entries"])
    if raw is None:
        raise Altered(f"the pruned record names entry {seq}, which is missing")
    try:
        return Pruned.of(parsed_entry(seq, as_bytes(raw)))
    except ValueError as e:
        raise Altered(f"the pruned record names entry {seq}: {e}") from None


def mark(txn: lmdb.Transaction, meta: Any, seq: int) -> None:
    """Record `seq` as the last prune entry."""
    name_entry(txn, meta, META_KEY, seq)


def _number(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _digest(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX

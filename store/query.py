"""Listing the newest actions through the indexes: what a listing reads grows with what it
shows, never with the log.

Each filter is a sorted set of action ids read from an index (a state from the states index; an
agent, rule or host from the attribute index, store/attrs.py); the sets are intersected newest
first by seeking each to the next id all of them may hold, and the walk stops once it has its
`limit`. A time bound becomes an id bound by binary search, as actions are numbered in the order
they were opened. Each id found is rebuilt from its entries (View.derived) and must say what the
index said of it, or the listing stops with Altered.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import lmdb

from . import attrs
from .errors import Altered
from .stored import MAX_NUMBER, as_bytes, index_record, seq_key
from .view import View

PRUNED = b"pruned"  # the meta record a prune leaves: ids below the kept ones may be missing


@dataclass(frozen=True)
class Query:
    """Which actions to list, newest first: at most `limit` (None for all), with ids below
    `before`, opened at or after `since` (a Unix time), and only those with each given value."""

    limit: int | None = 20
    before: int | None = None
    since: float | None = None
    state: str | None = None
    agent: str | None = None
    rule: str | None = None
    host: str | None = None

    def fields(self) -> dict[str, str]:
        """The attribute filters given (field name to the value asked for)."""
        return {name: value for name in attrs.FIELDS if (value := getattr(self, name)) is not None}


class _Ids:
    """Ids in one index, found by seeking: the keys under `prefix` end in an 8-byte action id."""

    def __init__(self, txn: lmdb.Transaction, db: Any, prefix: bytes):
        self._cursor = txn.cursor(db=db)
        self._prefix = prefix

    def at_most(self, action_id: int) -> int | None:
        """The largest id in the set that is at most `action_id`, if any."""
        cur, prefix = self._cursor, self._prefix
        above = prefix + seq_key(action_id + 1) if action_id < MAX_NUMBER else prefix + b"\xff" * 9
        placed = cur.prev() if cur.set_range(above) else cur.last()
        if not placed:
            return None
        key = as_bytes(cur.key())
        if not key.startswith(prefix) or len(key) != len(prefix) + 8:
            return None
        return int.from_bytes(key[len(prefix) :], "big")


def newest(view: View, query: Query) -> Iterator[dict[str, Any]]:
    """The actions `query` asks for, newest first, each as its entries say."""
    top = view.next_action() - 1
    if query.before is not None:
        top = min(top, query.before - 1)
    floor = _first_since(view, query.since, top) if query.since is not None else 1
    fields = query.fields()
    if fields and not attrs.ready(view.txn, view.dbs):
        # An older airlock's log, not yet opened by a writer of this version: no rows to seek.
        yield from _read_all(view, query, top, floor)
        return
    sets = [_Ids(view.txn, view.dbs[b"attrs"], attrs.prefix(n, v)) for n, v in fields.items()]
    if query.state is not None:
        sets.append(_Ids(view.txn, view.dbs[b"states"], query.state.encode() + b"\0"))
    dense = not sets and view.txn.get(PRUNED, db=view.dbs[b"meta"]) is None
    if not sets:
        sets.append(_Ids(view.txn, view.dbs[b"actions"], b""))
    shown = 0
    for action_id in _common(sets, top, floor):
        if dense and action_id != top:
            # Ids are given out one by one: a gap is an index record someone removed.
            raise Altered(f"the actions index has no record of action {top}")
        found = _checked(view, action_id, query, fields)
        top = action_id - 1
        if found is None:
            continue
        yield found
        shown += 1
        if query.limit is not None and shown >= query.limit:
            return
    if dense and top >= floor:
        raise Altered(f"the actions index has no record of action {top}")


def _common(sets: list[_Ids], top: int, floor: int) -> Iterator[int]:
    """The ids every set holds, from `top` down to `floor`."""
    candidate = top
    while candidate >= floor:
        for ids in sets:
            found = ids.at_most(candidate)
            if found is None or found < floor:
                return
            if found < candidate:
                candidate = found
                break
        else:
            yield candidate
            candidate -= 1


def _checked(view: View, action_id: int, query: Query, fields: dict[str, str]) -> dict[str, Any] | None:
    """The action as its entries say, refused if they disagree with the index that found it;
    None when it was opened before `since` (a clock set back)."""
    found = view.derived(action_id)
    if found is None:
        raise Altered(f"an index lists action {action_id}, which the actions index lacks")
    if query.state is not None and found.get("state") != query.state:
        raise Altered(
            f"the states index lists action {action_id} as {query.state}, "
            f"its entries say {found.get('state')}"
        )
    for name, value in fields.items():
        if found.get(name) != value:
            raise Altered(
                f"the attribute index lists action {action_id} under {name}={value!r}, "
                f"its entries say {found.get(name)!r}"
            )
    if query.since is not None and found["ts"] < query.since:
        return None
    return found


def _read_all(view: View, query: Query, top: int, floor: int) -> Iterator[dict[str, Any]]:
    """Without an attribute index: every action from `top` down, read and compared."""
    ids = _Ids(view.txn, view.dbs[b"actions"], b"")
    shown, fields = 0, query.fields()
    while top >= floor and (action_id := ids.at_most(top)) is not None and action_id >= floor:
        top = action_id - 1
        found = view.derived(action_id)
        if found is None or any(found.get(n) != v for n, v in fields.items()):
            continue
        if query.state is not None and found.get("state") != query.state:
            continue
        if query.since is not None and found["ts"] < query.since:
            continue
        yield found
        shown += 1
        if query.limit is not None and shown >= query.limit:
            return


def _first_since(view: View, since: float, top: int) -> int:
    """The lowest id whose action, or the first kept one after it, was opened at or after
    `since`: binary search over the actions index, reading one record a step."""
    cur = view.txn.cursor(db=view.dbs[b"actions"])
    if not cur.first():
        return top + 1
    low, high = int.from_bytes(as_bytes(cur.key()), "big"), top + 1
    while low < high:
        middle = (low + high) // 2
        if not cur.set_range(seq_key(middle)):
            high = middle
            continue
        action_id = int.from_bytes(as_bytes(cur.key()), "big")
        ts = index_record(action_id, as_bytes(cur.value())).get("ts")
        if not isinstance(ts, int | float) or isinstance(ts, bool):
            raise Altered(f"action {action_id}'s index record has no opening time")
        if ts >= since:
            high = middle
        else:
            low = middle + 1
    return low

"""The attribute index: the actions of one agent, deciding rule or host, found without reading
the others.

One row per action and field it has a value for, keyed `field \\0 value \\0 action id` (8 bytes,
big-endian, so an action's rows sort by id and a listing walks them newest first), with an empty
value. A value too long for an LMDB key, or holding a NUL, is keyed by its SHA-256 after a 0xFF
byte (which no UTF-8 text holds). The writer keeps the rows with the action's index record
(store/append.py), pruning drops them with the action, and `verify` checks them against the
actions index once that is checked against the chain. Like every index, the rows only find
actions: what a reader prints is rebuilt from their entries.

A log an older airlock wrote has no rows: the first writer of this version to open it fills
them in one pass over the actions index, in transactions of FILL_STEP actions (a writer that
stops half-way leaves where it was, and the next one goes on from there), and then records the
meta record `attrs`; until then readers find those actions by reading them (store/query.py),
and verify has no rows to check.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import lmdb
import orjson

from .chain import canonical
from .stored import as_bytes, seq_key

if TYPE_CHECKING:
    from .record import Record
    from .view import View

DB = b"attrs"
META_KEY = b"attrs"  # present once every action's rows are in the index
FIELDS = ("agent", "rule", "host")  # summary fields of an action's intent (proxy/core/records.py)
VERSION = 1
FILL_STEP = 20_000  # actions indexed in one transaction while an older log is filled
_FILLING = b"attrs_filling"  # while it is: the next action id to index
_LONGEST = 200  # bytes of a value kept as it is; longer ones are keyed by their digest


def value_key(value: str) -> bytes:
    """How a value appears in a row's key: as its UTF-8 text, or hashed if long or holding NUL."""
    text = value.encode()
    if len(text) <= _LONGEST and b"\0" not in text:
        return text
    return b"\xff" + hashlib.sha256(text).hexdigest().encode()


def prefix(name: str, value: str) -> bytes:
    """The common start of the rows of every action whose field `name` is `value`."""
    return name.encode() + b"\0" + value_key(value) + b"\0"


def row(name: str, value: str, action_id: int) -> bytes:
    """The key of the row saying action `action_id` has `value` in field `name`."""
    return prefix(name, value) + seq_key(action_id)


def of(index: Mapping[str, Any] | None) -> dict[str, str]:
    """The indexed fields an action's index record has a value for (a missing or null field
    has no row)."""
    if index is None:
        return {}
    return {name: value for name in FIELDS if isinstance(value := index.get(name), str)}


def keep(
    txn: lmdb.Transaction,
    dbs: dict[bytes, Any],
    action_id: int,
    before: Mapping[str, str],
    index: Mapping[str, Any],
) -> None:
    """Move action `action_id`'s rows from the values it had (`before`, from `of`) to those of its
    index record `index` as it now stands."""
    db = dbs[DB]
    now = of(index)
    for name, value in before.items():
        if now.get(name) != value:
            txn.delete(row(name, value, action_id), db=db)
    for name, value in now.items():
        if before.get(name) != value:
            txn.put(row(name, value, action_id), b"", db=db)


def drop(txn: lmdb.Transaction, dbs: dict[bytes, Any], action_id: int, index: Mapping[str, Any]) -> None:
    """Delete action `action_id`'s rows (its index record `index` says which): for pruning."""
    for name, value in of(index).items():
        txn.delete(row(name, value, action_id), db=dbs[DB])


def ready(txn: lmdb.Transaction, dbs: dict[bytes, Any]) -> bool:
    """True when the index holds every action's rows (a log no writer of this version has
    opened yet has none)."""
    return DB in dbs and txn.get(META_KEY, db=dbs[b"meta"]) is not None


def fill(commit: Callable[[Callable[[View], list[Record]]], object]) -> None:
    """Fill the index from the actions index, once per log, in transactions of FILL_STEP actions
    each (`commit` is Appender.commit): one pass over the actions index, a read of each action's
    record and a row per field, and no writer of another process waits long for its turn."""
    done = False

    def step(view: View) -> list[Record]:
        nonlocal done
        done = _fill_step(view.txn, view.dbs)
        return []

    while not done:
        commit(step)


def _fill_step(txn: lmdb.Transaction, dbs: dict[bytes, Any]) -> bool:
    """Index the next FILL_STEP actions; True once every action is in (and the index says so)."""
    if ready(txn, dbs):
        return True
    raw = txn.get(_FILLING, db=dbs[b"meta"])
    if raw is None:
        # Rows a damaged or foreign index left behind would be read as true: start empty.
        txn.drop(dbs[DB], delete=False)
        start = 0
    else:
        start = int.from_bytes(as_bytes(raw), "big")
    cur = txn.cursor(db=dbs[b"actions"])
    placed, indexed = cur.set_range(seq_key(start)), 0
    while placed and indexed < FILL_STEP:
        action_id = int.from_bytes(as_bytes(cur.key()), "big")
        for name, value in of(_record(cur.value())).items():
            txn.put(row(name, value, action_id), b"", db=dbs[DB])
        indexed += 1
        placed = cur.next()
    if placed:
        txn.put(_FILLING, cur.key(), db=dbs[b"meta"])
        return False
    txn.delete(_FILLING, db=dbs[b"meta"])
    txn.put(META_KEY, canonical({"version": VERSION}), db=dbs[b"meta"])
    return True


def disagreement(txn: lmdb.Transaction, dbs: dict[bytes, Any]) -> str | None:
    """The first row missing from the index or extra in it, said plainly, against the actions
    index (which verify has checked against the chain first); None when they agree, or when the
    index was never filled (readers do not use it then)."""
    if txn.get(META_KEY, db=dbs[b"meta"]) is None:
        return None
    if DB not in dbs:
        return "the log records an attribute index but has none"
    db, expected = dbs[DB], 0
    for key, raw in txn.cursor(db=dbs[b"actions"]):
        action_id = int.from_bytes(as_bytes(key), "big")
        for name, value in of(_record(raw)).items():
            if txn.get(row(name, value, action_id), db=db) is None:
                return f"action {action_id} has {name}={value!r} but is not listed under it"
            expected += 1
    if txn.stat(db)["entries"] == expected:
        return None
    for key in txn.cursor(db=db).iternext(values=False):
        found = _extra(txn, dbs, as_bytes(key))
        if found is not None:
            return found
    return f"it has {txn.stat(db)['entries']} rows, the actions index implies {expected}"


def _extra(txn: lmdb.Transaction, dbs: dict[bytes, Any], key: bytes) -> str | None:
    """What is wrong with a row that no action's index record implies, if it is such a row."""
    name, _, rest = key.partition(b"\0")
    stored, action_id = rest[:-9], int.from_bytes(rest[-8:], "big")
    raw = txn.get(seq_key(action_id), db=dbs[b"actions"]) if len(rest) >= 9 else None
    value = of(_record(raw)).get(name.decode(errors="replace")) if raw is not None else None
    if value is not None and value_key(value) == stored and rest[-9:-8] == b"\0":
        return None
    field, said = name.decode(errors="replace"), stored.decode(errors="replace")
    listed = f"it lists action {action_id} under {field}={said!r}"
    return f"{listed}, no such action" if raw is None else f"{listed}, the action has {value!r}"


def _record(raw: bytes | memoryview | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        found = orjson.loads(as_bytes(raw))
    except ValueError:
        return None
    return found if isinstance(found, dict) else None

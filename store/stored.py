"""Reading stored records back: keys of the databases, and entries, index records and key
records parsed and refused (Altered, naming the record) unless well formed.

Also what a listing checks each action's index against: how many entries the chain holds
about each action, and which is its last.
"""

from __future__ import annotations

import array
from typing import Any

import lmdb
import orjson

from .entry import Entry
from .errors import Altered
from .states import State

MAX_NUMBER = (1 << 64) - 1  # the largest entry or action number a database key holds
_STATES = frozenset(State)


def seq_key(n: int) -> bytes:
    """The database key of an entry or action number: 8 bytes, big-endian, so keys sort by number."""
    return n.to_bytes(8, "big")


def in_range(n: int) -> bool:
    """True when `n` fits a database key (0 to 2**64 - 1)."""
    return 0 <= n <= MAX_NUMBER


def as_bytes(raw: bytes | memoryview) -> bytes:
    """A value read from LMDB as bytes."""
    return raw if isinstance(raw, bytes) else bytes(raw)


def state_key(state: str, action_id: int) -> bytes:
    """The states index key of an action in a state."""
    return state.encode() + b"\0" + seq_key(action_id)


def named_entry(txn: lmdb.Transaction, meta: Any, key: bytes, what: str) -> int | None:
    """The entry number a meta record `{"entry": N}` under `key` names (None when there is no
    record; Altered naming `what` if it is not a valid one)."""
    raw = txn.get(key, db=meta)
    if raw is None:
        return None
    try:
        seq = orjson.loads(as_bytes(raw))["entry"]
    except (ValueError, TypeError, KeyError):
        raise Altered(f"the {what} record is not a valid record") from None
    if not isinstance(seq, int) or isinstance(seq, bool) or not in_range(seq):
        raise Altered(f"the {what} record is not a valid record")
    return seq


def name_entry(txn: lmdb.Transaction, meta: Any, key: bytes, seq: int) -> None:
    """Write the meta record `{"entry": seq}` under `key`."""
    txn.put(key, orjson.dumps({"entry": seq}), db=meta)


def parsed_entry(seq: int, raw: bytes) -> Entry:
    """An entry read back, refused unless it is well formed, matches its hash and its place."""
    try:
        entry = Entry.parse(raw)
    except ValueError as e:
        raise Altered(f"entry {seq} is not a valid entry: {e}") from None
    if not Entry.sealed(raw):
        raise Altered(f"entry {seq} does not match its hash")
    if entry.seq != seq:
        raise Altered(f"entry {seq} says it is entry {entry.seq}")
    return entry


def listed_entries(action_id: int, raw: bytes) -> list[int]:
    """The entry numbers an index record lists, refused unless the record is well formed."""
    entries = index_record(action_id, raw)["entries"]
    if not all(isinstance(s, int) and not isinstance(s, bool) and in_range(s) for s in entries):
        raise Altered(f"action {action_id}'s index record lists something that is not an entry number")
    return list(entries)


def index_record(action_id: int, raw: bytes) -> dict[str, Any]:
    """An action's index record, refused unless it has the shape of one."""
    what = f"action {action_id}'s index record"
    index = _record(what, raw, entries=list, state=str, writer=str)
    if index["state"] not in _STATES:
        raise Altered(f"{what} does not have the shape of one")
    return index


def key_record(key: str, raw: bytes) -> dict[str, Any]:
    """An idempotency key's record, refused unless it has the shape of one."""
    return _record(f"idempotency key {key!r}'s record", raw, action=int, payload=str, expires=int | float)


def _record(what: str, raw: bytes, **fields: Any) -> dict[str, Any]:
    """A JSON object read from an index, refused (Altered) unless each of `fields` holds a
    value of its type."""
    try:
        record = orjson.loads(raw)
    except ValueError:
        raise Altered(f"{what} is not valid JSON") from None
    if not isinstance(record, dict) or not all(isinstance(record.get(k), t) for k, t in fields.items()):
        raise Altered(f"{what} does not have the shape of one")
    return record


class ChainCount:
    """How many entries each action has in the chain and which is its last: what a listing
    checks each action's index against, so that a dropped entry or action is seen."""

    def __init__(self, after: int):
        self.after = after
        self.opened = after
        self.count: array.array[int] = array.array("Q")
        self.last: array.array[int] = array.array("Q")

    @classmethod
    def of(cls, entries_db: Any, txn: lmdb.Transaction, after: int) -> ChainCount:
        """Count the entries of every action above `after` in one pass over the chain."""
        chain = cls(after)
        for key, raw in txn.cursor(db=entries_db):
            seq = int.from_bytes(as_bytes(key), "big")
            action = parsed_entry(seq, as_bytes(raw)).action
            if action is None or action <= after:
                continue
            slot = action - after - 1
            while slot >= len(chain.count):
                chain.count.append(0)
                chain.last.append(0)
            chain.count[slot] += 1
            chain.last[slot] = seq
            chain.opened = max(chain.opened, action)
        return chain

    def check(self, action_id: int, listed: list[int]) -> None:
        """Refuse an action whose index does not list every entry the chain has about it."""
        slot = action_id - self.after - 1
        have = self.count[slot] if 0 <= slot < len(self.count) else 0
        if have != len(listed) or (have and self.last[slot] != listed[-1]):
            raise Altered(
                f"action {action_id}'s index lists {len(listed)} of its {have} entries in the chain"
            )

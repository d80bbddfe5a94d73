"""Checkpoints: signed entries that vouch for the chain up to them.

A `checkpoint` entry is about no action; its data names the public key that signed it and the
signature (store/signing.py), which covers its own seq and the hash of the entry before it, so
it vouches for every entry before it. The meta record `checkpoint` names the last one (the
writer keeps it, store/append.py, in the transaction that writes the entry): a hint outside the
chain that `verify --since-checkpoint` starts from, and that `verify` checks names
the chain's last checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lmdb

from .entry import Entry
from .errors import Altered
from .pruned import PRUNE
from .record import Record
from .stored import as_bytes, in_range
from .view import View

CHECKPOINT = "checkpoint"
META_KEY = b"checkpoint"
SIGNED_KINDS = frozenset({CHECKPOINT, PRUNE})  # kinds whose entries must carry a good signature


def record(public_key: str, sign: Callable[[bytes], str]) -> Record:
    """The record of a new checkpoint, signed with `sign` as it is written."""
    return Record(kind=CHECKPOINT, data={"key": public_key}, sign=sign)


def hint(txn: lmdb.Transaction, dbs: dict[bytes, Any]) -> int | None:
    """The entry the meta record `checkpoint` names (None when there is no record; Altered if
    the record is malformed)."""
    raw = txn.get(META_KEY, db=dbs[b"meta"])
    if raw is None:
        return None
    raw = as_bytes(raw)
    seq = int.from_bytes(raw, "big") if len(raw) == 8 else 0
    if seq < 1 or not in_range(seq):
        raise Altered("the checkpoint record is not a valid record")
    return seq


def last(view: View) -> Entry | None:
    """The checkpoint the meta record names (None when there is none, or it was pruned)."""
    seq = hint(view.txn, view.dbs)
    entry = view.entry(seq) if seq is not None else None
    if entry is not None and (entry.kind != CHECKPOINT or entry.action is not None):
        raise Altered(f"the checkpoint record names entry {seq}, a {entry.kind} entry")
    return entry

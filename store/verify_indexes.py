"""Checking the log's indexes against its chain: each is rebuilt from the entries with the
writer's own steps and compared with what is stored: the actions index (state, summary fields,
entry list), the states index, the attribute index (store/attrs.py), the idempotency keys
(holder, payload, expiry, finality, the digest of a stored reply), the action counter and the
freeze record (see store/verify.py).
"""

from __future__ import annotations

import itertools
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import lmdb
import orjson

from . import attrs, freeze, verify_sessions
from . import keys as keyrec
from .chain import GENESIS
from .entry import Entry
from .errors import Altered
from .index import advance, first_difference
from .pruned import NEVER, Pruned
from .stored import as_bytes, seq_key


class Bad(Exception):
    """The first disagreement found; carries the entry it is about, if any."""

    def __init__(self, reason: str, seq: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.seq = seq


@dataclass
class ChainFacts:
    """What the pass over the entries learnt: enough to check the indexes against."""

    checked: int = 0
    head: tuple[int, str] = (0, GENESIS)
    opened: int = 0  # actions opened: ids are given out 1, 2, 3, ... in chain order
    about_actions: int = 0  # entries that name an action
    states: list[str] = field(default_factory=list)  # each action's state, by id (the strings are shared)
    frozen: int | None = None  # the entry the log is frozen by, if it is
    since: int | None = None  # the format entry: entries before it were written by an older airlock
    unchecked: int = 0
    pruned: Pruned = NEVER  # where the log starts, as the last prune entry says
    island_states: dict[int, str] = field(default_factory=dict)  # kept actions below the first action
    sessions: list[Entry] = field(default_factory=list)  # session entries (store/sessions.py), in order

    def state_of(self, action_id: int) -> str | None:
        """An action's state as the check of the actions index found it (None: no such action)."""
        if action_id < self.pruned.first_action:
            return self.island_states.get(action_id)
        slot = action_id - self.pruned.first_action
        return self.states[slot] if 0 <= slot < len(self.states) else None

    @property
    def kept_actions(self) -> int:
        """How many actions the log holds: those kept below the first action, and the rest."""
        return len(self.pruned.island_actions) + self.opened - self.pruned.first_action + 1


def check_indexes(txn: lmdb.Transaction, dbs: dict[bytes, Any], chain: ChainFacts) -> None:
    """Raise Bad at the first index record that differs from what the chain implies."""
    held = _actions(txn, dbs, chain)
    _states(txn, dbs, chain)
    _keys(txn, dbs, held)
    _freeze(txn, dbs, chain)
    if (problem := attrs.disagreement(txn, dbs)) is not None:
        raise Bad(f"attrs index: {problem}")
    if (problem := verify_sessions.disagreement(txn, dbs, chain.sessions, chain.pruned.start)) is not None:
        raise Bad(problem)
    raw = txn.get(b"next_action", db=dbs[b"meta"])
    recorded = int.from_bytes(as_bytes(raw), "big") if raw is not None and len(raw) == 8 else None
    if (raw is None and chain.opened) or (raw is not None and recorded != chain.opened + 1):
        raise Bad(
            f"meta: next_action is {recorded if raw is not None else 'missing'}, "
            f"but the chain has opened {chain.opened} action(s)"
        )


def _actions(txn: lmdb.Transaction, dbs: dict[bytes, Any], chain: ChainFacts) -> dict[str, dict[str, Any]]:
    """Rebuild each action from the entries its index lists and compare; return the key records
    the chain implies (the last claimer of a key decides its record)."""
    expected = chain.pruned.kept_ids(0)
    found, listed = 0, 0
    keys: dict[str, dict[str, Any]] = {}
    for key, value in txn.cursor(db=dbs[b"actions"]):
        action_id, expected_id = int.from_bytes(as_bytes(key), "big"), next(expected)
        if action_id != expected_id:
            raise Bad(f"actions index: action {expected_id} is missing (the chain holds it)")
        try:
            stored = orjson.loads(as_bytes(value))
        except ValueError:
            raise Bad(f"actions index: action {action_id}'s record is not valid JSON") from None
        seqs = stored.get("entries") if isinstance(stored, dict) else None
        if not isinstance(seqs, list) or not seqs or not all(isinstance(s, int) for s in seqs):
            raise Bad(f"actions index: action {action_id}'s record does not list its entries")
        if any(a >= b for a, b in itertools.pairwise(seqs)):
            raise Bad(f"actions index: action {action_id}'s entries are not in order")
        index: dict[str, Any] | None = None
        key_record: dict[str, Any] | None = None
        for seq in seqs:
            raw = txn.get(seq_key(seq), db=dbs[b"entries"]) if 1 <= seq < 1 << 64 else None
            if raw is None:
                raise Bad(f"actions index: action {action_id} lists entry {seq}, which the chain lacks")
            try:
                entry = Entry.parse(as_bytes(raw))
            except ValueError as e:
                raise Bad(f"entry {seq} is not a valid entry: {e}", seq) from None
            if entry.action != action_id:
                raise Bad(
                    f"actions index: action {action_id} lists entry {seq}, "
                    f"which is about action {entry.action}",
                    seq,
                )
            if index is None and entry.claim is not None:
                key_record = keyrec.claimed(entry)
            if entry.settle is not None:
                key_record = keyrec.settled(key_record, entry)
            index = advance(index, entry)
        assert index is not None
        if chain.since is not None and seqs[0] < chain.since:
            # An older airlock's action: only what its entries say can be checked.
            chain.unchecked += 1
            if isinstance(stored.get("key"), str) and "key" not in index:
                keys[stored["key"]] = {"legacy": action_id}
            stored = {k: v for k, v in stored.items() if k in index}
        if stored != index:
            raise Bad(
                f"actions index: action {action_id} disagrees with the chain: "
                f"{first_difference(stored, index)}"
            )
        if action_id < chain.pruned.first_action:
            chain.island_states[action_id] = index["state"]
        else:
            chain.states.append(sys.intern(index["state"]))
        if txn.get(index["state"].encode() + b"\0" + seq_key(action_id), db=dbs[b"states"]) is None:
            raise Bad(f"states index: action {action_id} is {index['state']} in the chain but not listed so")
        if "key" in index:
            keys[index["key"]] = key_record if key_record is not None else {"released": True}
        listed += len(seqs)
        found += 1
    if found != chain.kept_actions:
        missing = next(expected)
        raise Bad(
            f"actions index: it has {found} action(s), the chain holds {chain.kept_actions} "
            f"(action {min(missing, chain.opened)} is missing or extra)"
        )
    if listed != chain.about_actions:
        raise Bad(
            f"actions index: its records list {listed} entries, the chain has {chain.about_actions} "
            "entries about actions (an entry was dropped from an action's list)"
        )
    return keys


def _freeze(txn: lmdb.Transaction, dbs: dict[bytes, Any], chain: ChainFacts) -> None:
    try:
        recorded = freeze.recorded(txn, dbs[b"meta"])
    except Altered as e:
        raise Bad(f"meta: {e.what}") from None
    if recorded != chain.frozen:
        said = f"frozen by entry {recorded}" if recorded is not None else "not frozen"
        truth = f"frozen by entry {chain.frozen}" if chain.frozen is not None else "not frozen"
        raise Bad(f"meta: the freeze record says the log is {said}, the chain says it is {truth}")


def _states(txn: lmdb.Transaction, dbs: dict[bytes, Any], chain: ChainFacts) -> None:
    count = 0
    for key in txn.cursor(db=dbs[b"states"]).iternext(values=False):
        state, _, rest = as_bytes(key).partition(b"\0")
        action_id = int.from_bytes(rest, "big")
        # Each action's state as its entries say, from the check of the actions index.
        actual = chain.state_of(action_id) if len(rest) == 8 else None
        if actual != state.decode(errors="replace"):
            raise Bad(
                f"states index: it lists action {action_id} as {state.decode(errors='replace')}, "
                f"the chain says {actual or 'no such action'}"
            )
        count += 1
    if count != chain.kept_actions:
        raise Bad(f"states index: it has {count} record(s) for {chain.kept_actions} action(s)")


def _keys(txn: lmdb.Transaction, dbs: dict[bytes, Any], expected: dict[str, dict[str, Any]]) -> None:
    present = {k: v for k, v in expected.items() if "released" not in v and "legacy" not in v}
    legacy = {k: v["legacy"] for k, v in expected.items() if "legacy" in v}
    for key, value in txn.cursor(db=dbs[b"keys"]):
        name = as_bytes(key).decode(errors="replace")
        try:
            stored = orjson.loads(as_bytes(value))
        except ValueError:
            raise Bad(f"keys: idempotency key {name!r}'s record is not valid JSON") from None
        want = present.pop(name, None)
        if want is None and name in legacy:
            # Kept (or released) by an older airlock: its record is backed by no entry.
            if not isinstance(stored, dict) or stored.get("action") != legacy[name]:
                raise Bad(
                    f"keys: idempotency key {name!r} is not held by action {legacy[name]}, which claimed it"
                )
            continue
        if want is None:
            raise Bad(f"keys: idempotency key {name!r} is held by no action in the chain")
        if not isinstance(stored, dict) or keyrec.without_reply(stored) != want:
            diff = first_difference(keyrec.without_reply(stored), want) if isinstance(stored, dict) else ""
            raise Bad(f"keys: idempotency key {name!r} disagrees with the chain: {diff}".rstrip(": "))
        if ("reply" in stored) != ("reply_sha256" in want):
            raise Bad(
                f"keys: idempotency key {name!r} has a stored reply the chain does not record, or lacks one"
            )
        if "reply" in stored and keyrec.reply_digest(stored["reply"]) != want["reply_sha256"]:
            raise Bad(
                f"keys: the stored reply of idempotency key {name!r} does not match the digest in "
                f"entry {want['settled']}"
            )
    # A key the chain says has expired may have been swept (store/sweep.py): its absence is no
    # alteration. One that has not expired must be there.
    now = time.time()
    missing = {k: v for k, v in present.items() if not v["expires"] <= now}
    if missing:
        name, want = next(iter(missing.items()))
        raise Bad(f"keys: idempotency key {name!r} (claimed in entry {want['claimed']}) is missing")

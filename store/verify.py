"""Checking the log: the chain's hashes and links, then every index against the chain.

The chain is the truth. The entries are checked first (each hash covers its bytes and the
hash before it; the head names the last entry); then each index is rebuilt from the entries
with the writer's own steps and compared with what is stored: the actions index (state,
summary fields, entry list), the states index, the idempotency keys (holder, payload, expiry,
finality, the digest of a stored reply) and the action counter. The first disagreement is
named with the database it is in.

A log an older airlock wrote, upgraded in place, holds entries without those fields before its
`format` entry (store/formats.py): they are checked by hash and link, their actions' index
records for what the entries do say (entry list, state, times, writer), and the rest of those
records is counted as unchecked in the report rather than failed. Where the old entries end is
taken from the hashed `format` entry, never from an editable record.

With an expected head recorded elsewhere, a log cut short or rolled back to an older copy is
caught too; without one it cannot be: whoever can rewrite the whole file can rewrite a
consistent chain.
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass, field
from typing import Any

import lmdb
import orjson

from . import formats
from . import keys as keyrec
from .chain import GENESIS, link, unseal
from .entry import Entry
from .index import advance, first_difference


@dataclass(frozen=True)
class ChainReport:
    """The result of checking the log: how many entries were checked, the head they end at,
    and the first disagreement (with the entry it is about, when there is one)."""

    checked: int
    bad_seq: int | None = None
    reason: str = ""
    head_seq: int = 0
    head_hash: str = GENESIS
    failed: bool = False
    unchecked: int = 0  # actions an older airlock wrote: their summary fields are in no entry

    @property
    def ok(self) -> bool:
        """True when every entry and every index verified."""
        return not self.failed and self.bad_seq is None


class _Bad(Exception):
    """The first disagreement found; carries the entry it is about, if any."""

    def __init__(self, reason: str, seq: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.seq = seq


def _b(raw: bytes | memoryview) -> bytes:
    return raw if isinstance(raw, bytes) else bytes(raw)


def _key(n: int) -> bytes:
    return n.to_bytes(8, "big")


@dataclass
class _Chain:
    """What the pass over the entries learnt: enough to check the indexes against."""

    checked: int = 0
    head: tuple[int, str] = (0, GENESIS)
    opened: int = 0  # actions opened: ids are given out 1, 2, 3, ... in chain order
    about_actions: int = 0  # entries that name an action
    states: list[str] = field(default_factory=list)  # each action's state, by id (the strings are shared)
    since: int | None = None  # the format entry: entries before it were written by an older airlock
    legacy_actions: int = 0  # actions opened before it
    unchecked: int = 0


def check(txn: lmdb.Transaction, dbs: dict[bytes, Any], expect: tuple[int, str] | None) -> ChainReport:
    """Check the chain, the expected head if given, then every index; the first problem wins."""
    chain = _Chain()
    try:
        _entries(txn, dbs, chain)
        if expect is not None:
            _expected(txn, dbs, expect, chain)
        _format(txn, dbs, chain)
        _indexes(txn, dbs, chain)
    except _Bad as bad:
        return ChainReport(chain.checked, bad.seq, bad.reason, *chain.head, failed=True)
    return ChainReport(chain.checked, None, "", *chain.head, unchecked=chain.unchecked)


def _entries(txn: lmdb.Transaction, dbs: dict[bytes, Any], chain: _Chain) -> None:
    prev, expected = GENESIS, 1
    for key, value in txn.cursor(db=dbs[b"entries"]):
        seq, raw = int.from_bytes(_b(key), "big"), _b(value)
        if seq != expected:
            raise _Bad(f"entry {expected} is missing (found {seq})", expected)
        # Entries about actions are parsed in full when their action is checked against them.
        action, claimed_seq, upgrade = _action_of(seq, raw)
        stored_prev, digest, body = unseal(raw)
        if stored_prev != prev:
            raise _Bad(f"entry {seq} does not link to entry {seq - 1} (its prev hash was changed)", seq)
        if link(prev, body) != digest:
            raise _Bad(f"entry {seq} was altered: its hash does not match its contents", seq)
        if claimed_seq != seq:
            raise _Bad(f"entry {seq} was altered: it says it is entry {claimed_seq}", seq)
        if action is not None:
            if action == chain.opened + 1:
                chain.opened += 1
            elif not 1 <= action <= chain.opened:
                raise _Bad(f"entry {seq} names action {action}, which no earlier entry opened", seq)
            chain.about_actions += 1
        if upgrade:
            if chain.since is not None:
                raise _Bad(
                    f"entry {seq} records a second format upgrade (the first is entry {chain.since})", seq
                )
            chain.since, chain.legacy_actions = seq, chain.opened
        prev, expected = digest, expected + 1
        chain.checked += 1
        chain.head = (seq, digest)
    head_seq, head_hash = _recorded_head(txn, dbs)
    if (head_seq, head_hash) != chain.head:
        raise _Bad(
            f"the log ends at entry {chain.head[0]} (hash {chain.head[1][:12]}) but its head records "
            f"entry {head_seq} (hash {head_hash[:12]})",
            expected,
        )


def _action_of(seq: int, raw: bytes) -> tuple[int | None, Any, bool]:
    """The action an entry is about, the sequence number it claims and whether it marks the
    log's upgrade; an entry about no action is parsed in full here (nothing else will)."""
    try:
        fields = orjson.loads(raw[128:]) if len(raw) >= 130 else None
        if not isinstance(fields, dict):
            raise ValueError("its body is not a JSON object")
        action = fields.get("action")
        if action is None:
            Entry.parse(raw)
        elif not isinstance(action, int) or isinstance(action, bool):
            raise ValueError("its action is not a number")
    except ValueError as e:
        raise _Bad(f"entry {seq} is not a valid entry: {e}", seq) from None
    return action, fields.get("seq"), formats.is_upgrade(fields)


def _format(txn: lmdb.Transaction, dbs: dict[bytes, Any], chain: _Chain) -> None:
    """The meta record of the log's format must repeat what the chain says."""
    raw = txn.get(formats.META_KEY, db=dbs[b"meta"])
    since = chain.since or 1
    if raw is None:
        if chain.checked:
            raise _Bad(
                "meta: the log has no format record: an older airlock wrote it and no writer of this "
                "version has opened it yet (start airlock on it once to record the upgrade), "
                "or the record was removed"
            )
        return
    recorded = formats.since_of(_b(raw))
    if recorded != since:
        said = (
            "is not a valid record"
            if recorded is None
            else f"says the current format starts at entry {recorded}"
        )
        where = (
            f"the format entry {since}" if chain.since is not None else "entry 1 (there is no format entry)"
        )
        raise _Bad(f"meta: the format record {said}, but the chain says it starts at {where}")


def _recorded_head(txn: lmdb.Transaction, dbs: dict[bytes, Any]) -> tuple[int, str]:
    raw = txn.get(b"head", db=dbs[b"meta"])
    if raw is None:
        return 0, GENESIS
    try:
        head = orjson.loads(_b(raw))
        seq, digest = head["seq"], head["hash"]
    except (ValueError, TypeError, KeyError):
        raise _Bad("meta: the recorded head is not a valid record") from None
    if not isinstance(seq, int) or not isinstance(digest, str):
        raise _Bad("meta: the recorded head is not a valid record")
    return seq, digest


def _expected(txn: lmdb.Transaction, dbs: dict[bytes, Any], expect: tuple[int, str], chain: _Chain) -> None:
    seq, digest = expect
    raw = txn.get(_key(seq), db=dbs[b"entries"]) if 1 <= seq < 1 << 64 else None
    if raw is None:
        raise _Bad(
            f"the log no longer holds entry {seq} (hash {digest[:12]}) that was expected: it ends at entry "
            f"{chain.head[0]}, so it was cut short or rolled back to an older copy",
            seq,
        )
    found = unseal(_b(raw))[1]
    if found != digest:
        raise _Bad(
            f"entry {seq} has hash {found[:12]}, not the expected {digest[:12]}: the log was rewritten "
            "or replaced by another copy",
            seq,
        )


def _indexes(txn: lmdb.Transaction, dbs: dict[bytes, Any], chain: _Chain) -> None:
    held = _actions(txn, dbs, chain)
    _states(txn, dbs, chain)
    _keys(txn, dbs, held)
    raw = txn.get(b"next_action", db=dbs[b"meta"])
    recorded = int.from_bytes(_b(raw), "big") if raw is not None and len(raw) == 8 else None
    if (raw is None and chain.opened) or (raw is not None and recorded != chain.opened + 1):
        raise _Bad(
            f"meta: next_action is {recorded if raw is not None else 'missing'}, "
            f"but the chain has opened {chain.opened} action(s)"
        )


def _actions(txn: lmdb.Transaction, dbs: dict[bytes, Any], chain: _Chain) -> dict[str, dict[str, Any]]:
    """Rebuild each action from the entries its index lists and compare; return the key records
    the chain implies (the last claimer of a key decides its record)."""
    expected_id, listed = 1, 0
    keys: dict[str, dict[str, Any]] = {}
    for key, value in txn.cursor(db=dbs[b"actions"]):
        action_id = int.from_bytes(_b(key), "big")
        if action_id != expected_id:
            raise _Bad(f"actions index: action {expected_id} is missing (the chain holds it)")
        try:
            stored = orjson.loads(_b(value))
        except ValueError:
            raise _Bad(f"actions index: action {action_id}'s record is not valid JSON") from None
        seqs = stored.get("entries") if isinstance(stored, dict) else None
        if not isinstance(seqs, list) or not seqs or not all(isinstance(s, int) for s in seqs):
            raise _Bad(f"actions index: action {action_id}'s record does not list its entries")
        if any(a >= b for a, b in itertools.pairwise(seqs)):
            raise _Bad(f"actions index: action {action_id}'s entries are not in order")
        index: dict[str, Any] | None = None
        key_record: dict[str, Any] | None = None
        for seq in seqs:
            raw = txn.get(_key(seq), db=dbs[b"entries"]) if 1 <= seq < 1 << 64 else None
            if raw is None:
                raise _Bad(f"actions index: action {action_id} lists entry {seq}, which the chain lacks")
            try:
                entry = Entry.parse(_b(raw))
            except ValueError as e:
                raise _Bad(f"entry {seq} is not a valid entry: {e}", seq) from None
            if entry.action != action_id:
                raise _Bad(
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
        if action_id <= chain.legacy_actions:
            # An older airlock's action: only what its entries say can be checked.
            chain.unchecked += 1
            if isinstance(stored.get("key"), str) and "key" not in index:
                keys[stored["key"]] = {"legacy": action_id}
            stored = {k: v for k, v in stored.items() if k in index}
        if stored != index:
            raise _Bad(
                f"actions index: action {action_id} disagrees with the chain: "
                f"{first_difference(stored, index)}"
            )
        chain.states.append(sys.intern(index["state"]))
        if txn.get(index["state"].encode() + b"\0" + _key(action_id), db=dbs[b"states"]) is None:
            raise _Bad(f"states index: action {action_id} is {index['state']} in the chain but not listed so")
        if "key" in index:
            keys[index["key"]] = key_record if key_record is not None else {"released": True}
        listed += len(seqs)
        expected_id += 1
    if expected_id - 1 != chain.opened:
        raise _Bad(
            f"actions index: it has {expected_id - 1} action(s), the chain opened {chain.opened} "
            f"(action {min(expected_id, chain.opened)} is missing or extra)"
        )
    if listed != chain.about_actions:
        raise _Bad(
            f"actions index: its records list {listed} entries, the chain has {chain.about_actions} "
            "entries about actions (an entry was dropped from an action's list)"
        )
    return keys


def _states(txn: lmdb.Transaction, dbs: dict[bytes, Any], chain: _Chain) -> None:
    count = 0
    for key in txn.cursor(db=dbs[b"states"]).iternext(values=False):
        state, _, rest = _b(key).partition(b"\0")
        action_id = int.from_bytes(rest, "big")
        # Each action's state as its entries say, from the check of the actions index.
        known = len(rest) == 8 and 1 <= action_id <= len(chain.states)
        actual = chain.states[action_id - 1] if known else None
        if actual != state.decode(errors="replace"):
            raise _Bad(
                f"states index: it lists action {action_id} as {state.decode(errors='replace')}, "
                f"the chain says {actual or 'no such action'}"
            )
        count += 1
    if count != chain.opened:
        raise _Bad(f"states index: it has {count} record(s) for {chain.opened} action(s)")


def _keys(txn: lmdb.Transaction, dbs: dict[bytes, Any], expected: dict[str, dict[str, Any]]) -> None:
    present = {k: v for k, v in expected.items() if "released" not in v and "legacy" not in v}
    legacy = {k: v["legacy"] for k, v in expected.items() if "legacy" in v}
    for key, value in txn.cursor(db=dbs[b"keys"]):
        name = _b(key).decode(errors="replace")
        try:
            stored = orjson.loads(_b(value))
        except ValueError:
            raise _Bad(f"keys: idempotency key {name!r}'s record is not valid JSON") from None
        want = present.pop(name, None)
        if want is None and name in legacy:
            # Kept (or released) by an older airlock: its record is backed by no entry.
            if not isinstance(stored, dict) or stored.get("action") != legacy[name]:
                raise _Bad(
                    f"keys: idempotency key {name!r} is not held by action {legacy[name]}, which claimed it"
                )
            continue
        if want is None:
            raise _Bad(f"keys: idempotency key {name!r} is held by no action in the chain")
        if not isinstance(stored, dict) or keyrec.without_reply(stored) != want:
            diff = first_difference(keyrec.without_reply(stored), want) if isinstance(stored, dict) else ""
            raise _Bad(f"keys: idempotency key {name!r} disagrees with the chain: {diff}".rstrip(": "))
        if ("reply" in stored) != ("reply_sha256" in want):
            raise _Bad(
                f"keys: idempotency key {name!r} has a stored reply the chain does not record, or lacks one"
            )
        if "reply" in stored and keyrec.reply_digest(stored["reply"]) != want["reply_sha256"]:
            raise _Bad(
                f"keys: the stored reply of idempotency key {name!r} does not match the digest in "
                f"entry {want['settled']}"
            )
    if present:
        name, want = next(iter(present.items()))
        raise _Bad(f"keys: idempotency key {name!r} (claimed in entry {want['claimed']}) is missing")


def parse_head(text: str) -> tuple[int, str]:
    """A head as `airlock verify` prints it, SEQ:HASH; ValueError saying what is wrong."""
    seq_text, sep, digest = text.strip().partition(":")
    if not sep or not seq_text.isdigit() or not 1 <= int(seq_text) < 1 << 64:
        raise ValueError(f"{text!r} is not SEQ:HASH (an entry number, a colon, its 64-hex hash)")
    digest = digest.lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"{text!r}: the hash must be the 64 hex digits `airlock verify` printed")
    return int(seq_text), digest

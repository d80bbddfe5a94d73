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

from dataclasses import dataclass
from typing import Any

import lmdb
import orjson

from . import formats, freeze, pruned, sessions
from .chain import GENESIS, link, unseal
from .entry import Entry
from .errors import Altered
from .pruned import PRUNE, Pruned
from .stored import as_bytes, seq_key
from .verify_indexes import Bad, ChainFacts, check_indexes


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
    signed: int = 0  # signed entries (checkpoints, prunes) whose signatures were checked
    since: int = 0  # the checkpoint a check of only the recent entries started from
    start: int = 1  # where the chain checked starts (after retention pruned what came before)
    kept: int = 0  # entries below `start` that the last prune kept

    @property
    def ok(self) -> bool:
        """True when every entry and every index verified."""
        return not self.failed and self.bad_seq is None


def check(txn: lmdb.Transaction, dbs: dict[bytes, Any], expect: tuple[int, str] | None) -> ChainReport:
    """Check the chain, the expected head if given, then every index; the first problem wins."""
    chain = ChainFacts()
    try:
        chain.pruned = _pruned(txn, dbs)
        chain.opened = chain.pruned.first_action - 1
        chain.since = chain.pruned.format_since
        _entries(txn, dbs, chain)
        if expect is not None:
            _expected(txn, dbs, expect, chain)
        _format(txn, dbs, chain)
        check_indexes(txn, dbs, chain)
    except Bad as bad:
        return ChainReport(chain.checked, bad.seq, bad.reason, *chain.head, failed=True)
    return ChainReport(
        chain.checked,
        None,
        "",
        *chain.head,
        unchecked=chain.unchecked,
        start=chain.pruned.start,
        kept=len(chain.pruned.islands),
    )


def _entries(txn: lmdb.Transaction, dbs: dict[bytes, Any], chain: ChainFacts) -> None:
    kept = chain.pruned
    prev, expected = kept.continues, kept.start
    islands: set[int] = set()
    last_prune = 0
    for key, value in txn.cursor(db=dbs[b"entries"]):
        seq, raw = int.from_bytes(as_bytes(key), "big"), as_bytes(value)
        if seq < kept.start:
            _island(seq, raw, chain)
            islands.add(seq)
            continue
        if seq != expected:
            raise Bad(f"entry {expected} is missing (found {seq})", expected)
        # Entries about actions are parsed in full when their action is checked against them.
        action, claimed_seq, upgrade, fields = _action_of(seq, raw)
        stored_prev, digest, body = unseal(raw)
        if stored_prev != prev:
            raise Bad(f"entry {seq} does not link to entry {seq - 1} (its prev hash was changed)", seq)
        if link(prev, body) != digest:
            raise Bad(f"entry {seq} was altered: its hash does not match its contents", seq)
        if claimed_seq != seq:
            raise Bad(f"entry {seq} was altered: it says it is entry {claimed_seq}", seq)
        if action is not None:
            if action == chain.opened + 1:
                chain.opened += 1
            elif not 1 <= action <= chain.opened:
                raise Bad(f"entry {seq} names action {action}, which no earlier entry opened", seq)
            elif not kept.keeps_action(action):
                raise Bad(f"entry {seq} names action {action}, which prune entry {kept.entry} removed", seq)
            chain.about_actions += 1
        elif fields.get("kind") == PRUNE:
            last_prune = seq
        elif freeze.changes_freeze(fields):
            chain.frozen = freeze.after(chain.frozen, fields)
        elif sessions.changes_sessions(fields):
            chain.sessions.append(Entry.parse(raw))
        if upgrade:
            if chain.since is not None:
                raise Bad(
                    f"entry {seq} records a second format upgrade (the first is entry {chain.since})", seq
                )
            chain.since = seq
        prev, expected = digest, expected + 1
        chain.checked += 1
        chain.head = (seq, digest)
    if islands != set(kept.islands):
        lost = min(set(kept.islands) - islands)
        raise Bad(f"entry {lost}, which prune entry {kept.entry} kept, is missing", lost)
    if last_prune != kept.entry:
        said = f"entry {kept.entry}" if kept.entry else "none"
        raise Bad(f"meta: the pruned record names {said}, but the last prune entry is {last_prune or 'none'}")
    head_seq, head_hash = _recorded_head(txn, dbs)
    if (head_seq, head_hash) != chain.head:
        raise Bad(
            f"the log ends at entry {chain.head[0]} (hash {chain.head[1][:12]}) but its head records "
            f"entry {head_seq} (hash {head_hash[:12]})",
            expected,
        )


def _pruned(txn: lmdb.Transaction, dbs: dict[bytes, Any]) -> Pruned:
    """What the last prune left, from the entry the meta record names (checked to be the
    chain's last prune entry when the pass reaches it)."""
    try:
        kept = pruned.current(txn, dbs)
    except Altered as e:
        raise Bad(f"meta: {e.what}") from None
    stored = txn.get(seq_key(kept.entry), db=dbs[b"entries"]) if kept.entry else None
    if stored is not None and not Entry.sealed(as_bytes(stored)):
        raise Bad(f"entry {kept.entry} was altered: its hash does not match its contents", kept.entry)
    return kept


def _island(seq: int, raw: bytes, chain: ChainFacts) -> None:
    """An entry below where the pruned log starts: one the last prune kept, unchanged."""
    kept = chain.pruned
    if seq not in kept.islands:
        raise Bad(
            f"entry {seq} is below where the log starts (entry {kept.start}) and prune entry "
            f"{kept.entry} did not keep it",
            seq,
        )
    action, claimed_seq, upgrade, fields = _action_of(seq, raw)
    _, digest, body = unseal(raw)
    if link(unseal(raw)[0], body) != digest or digest != kept.islands[seq] or claimed_seq != seq:
        raise Bad(f"entry {seq} was altered: it is not the entry prune entry {kept.entry} kept", seq)
    if action is not None:
        if action not in kept.island_actions:
            raise Bad(f"entry {seq} names action {action}, which prune entry {kept.entry} did not keep", seq)
        chain.about_actions += 1
    elif freeze.changes_freeze(fields):
        chain.frozen = freeze.after(chain.frozen, fields)
    elif sessions.changes_sessions(fields):
        chain.sessions.append(Entry.parse(raw))
    if upgrade:
        chain.since = seq
    chain.checked += 1


def _action_of(seq: int, raw: bytes) -> tuple[int | None, Any, bool, dict[str, Any]]:
    """The action an entry is about, the sequence number it claims, whether it marks the log's
    upgrade, and its body; an entry about no action is parsed in full here (nothing else will)."""
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
        raise Bad(f"entry {seq} is not a valid entry: {e}", seq) from None
    return action, fields.get("seq"), formats.is_upgrade(fields), fields


def _format(txn: lmdb.Transaction, dbs: dict[bytes, Any], chain: ChainFacts) -> None:
    """The meta record of the log's format must repeat what the chain says."""
    raw = txn.get(formats.META_KEY, db=dbs[b"meta"])
    since = chain.since or 1
    if raw is None:
        if chain.checked:
            raise Bad(
                "meta: the log has no format record: an older airlock wrote it and no writer of this "
                "version has opened it yet (start airlock on it once to record the upgrade), "
                "or the record was removed"
            )
        return
    recorded = formats.since_of(as_bytes(raw))
    if recorded != since:
        said = (
            "is not a valid record"
            if recorded is None
            else f"says the current format starts at entry {recorded}"
        )
        where = (
            f"the format entry {since}" if chain.since is not None else "entry 1 (there is no format entry)"
        )
        raise Bad(f"meta: the format record {said}, but the chain says it starts at {where}")


def _recorded_head(txn: lmdb.Transaction, dbs: dict[bytes, Any]) -> tuple[int, str]:
    raw = txn.get(b"head", db=dbs[b"meta"])
    if raw is None:
        return 0, GENESIS
    try:
        head = orjson.loads(as_bytes(raw))
        seq, digest = head["seq"], head["hash"]
    except (ValueError, TypeError, KeyError):
        raise Bad("meta: the recorded head is not a valid record") from None
    if not isinstance(seq, int) or not isinstance(digest, str):
        raise Bad("meta: the recorded head is not a valid record")
    return seq, digest


def _expected(
    txn: lmdb.Transaction, dbs: dict[bytes, Any], expect: tuple[int, str], chain: ChainFacts
) -> None:
    seq, digest = expect
    raw = txn.get(seq_key(seq), db=dbs[b"entries"]) if 1 <= seq < 1 << 64 else None
    if raw is None and seq < chain.pruned.start:
        raise Bad(
            f"entry {seq} (hash {digest[:12]}) that was expected was pruned: the log starts at entry "
            f"{chain.pruned.start}; check it in the archive, or expect a later head",
            seq,
        )
    if raw is None:
        raise Bad(
            f"the log no longer holds entry {seq} (hash {digest[:12]}) that was expected: it ends at entry "
            f"{chain.head[0]}, so it was cut short or rolled back to an older copy",
            seq,
        )
    found = unseal(as_bytes(raw))[1]
    if found != digest:
        raise Bad(
            f"entry {seq} has hash {found[:12]}, not the expected {digest[:12]}: the log was rewritten "
            "or replaced by another copy",
            seq,
        )


def parse_head(text: str) -> tuple[int, str]:
    """A head as `airlock verify` prints it, SEQ:HASH; ValueError saying what is wrong."""
    seq_text, sep, digest = text.strip().partition(":")
    if not sep or not seq_text.isdigit() or not 1 <= int(seq_text) < 1 << 64:
        raise ValueError(f"{text!r} is not SEQ:HASH (an entry number, a colon, its 64-hex hash)")
    digest = digest.lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"{text!r}: the hash must be the 64 hex digits `airlock verify` printed")
    return int(seq_text), digest

"""Checking only what came after the last checkpoint: its cost grows with the entries written
since, not with the log.

The checkpoint the meta record `checkpoint` names must be an intact checkpoint entry (signed
by the key, when one is given); every later entry must match its hash and link to the one
before; the recorded head must name the last one; and the index records of every action those
entries touch must be what their entries say (reading those actions' earlier entries, and
nothing else before the checkpoint). What came before the checkpoint is vouched for by its
signature and by the full `verify` that ran when it was written, not checked again.
"""

from __future__ import annotations

import time
from typing import Any

import lmdb
import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from . import keys as keyrec
from . import pruned
from .chain import link, unseal
from .checkpoints import CHECKPOINT, SIGNED_KINDS, hint
from .entry import Entry
from .errors import Altered
from .index import first_difference
from .states import State
from .stored import as_bytes, index_record, listed_entries, seq_key, state_key
from .verify import ChainReport, _expected, _recorded_head
from .verify_indexes import Bad, ChainFacts
from .verify_signed import check_signature
from .view import View


def check_recent(
    txn: lmdb.Transaction,
    dbs: dict[bytes, Any],
    key: Ed25519PublicKey | None,
    expect: tuple[int, str] | None,
) -> ChainReport:
    """Check the log from its last checkpoint on; the report names the checkpoint it started
    from (`since`, 0 when there is none)."""
    chain = ChainFacts()
    start = 0
    try:
        start, after, touched = _entries_since(txn, dbs, key, chain)
        if expect is not None:
            _expected(txn, dbs, expect, chain)
        view = View(txn, dbs)
        for action_id, seqs in touched.items():
            _action(view, action_id, seqs, after)
    except Bad as bad:
        return ChainReport(chain.checked, bad.seq, bad.reason, *chain.head, failed=True, since=start)
    return ChainReport(chain.checked, None, "", *chain.head, since=start)


def _entries_since(
    txn: lmdb.Transaction, dbs: dict[bytes, Any], key: Ed25519PublicKey | None, chain: ChainFacts
) -> tuple[int, int, dict[int, list[int]]]:
    """Check the checkpoint and every entry after it; return the checkpoint's seq, the last entry
    not walked (the checkpoint, or the last one pruned after it) and, for each action the walked
    entries are about, their seqs."""
    try:
        start = hint(txn, dbs)
    except Altered as e:
        raise Bad(f"meta: {e.what}") from None
    if start is None:
        raise Bad(
            "the log records no checkpoint to start from: run `airlock verify` without "
            "--since-checkpoint (`airlock run` writes one every --checkpoint-every entries)"
        )
    raw = txn.get(seq_key(start), db=dbs[b"entries"])
    if raw is None:
        raise Bad(
            f"meta: the checkpoint record names entry {start}, which the log lacks: "
            "run `airlock verify` without --since-checkpoint",
            start,
        )
    checkpoint = _intact(start, as_bytes(raw))
    if checkpoint.kind != CHECKPOINT or checkpoint.action is not None:
        raise Bad(f"meta: the checkpoint record names entry {start}, a {checkpoint.kind} entry", start)
    if key is not None:
        check_signature(checkpoint, key)
    chain.checked, chain.head = 1, (start, checkpoint.hash)
    touched: dict[int, list[int]] = {}
    prev, expected = checkpoint.hash, start + 1
    try:
        kept = pruned.current(txn, dbs)
    except Altered as e:
        raise Bad(f"meta: {e.what}") from None
    if start < kept.start:
        # Kept below where the pruned log starts: the walk starts there, from the hash the last
        # prune entry (walked below, and signed) says it continues from.
        prev, expected = kept.continues, kept.start
    after = expected - 1
    seen_prune = kept.entry <= after  # none, or before the walk: vouched for by the checkpoint
    cur = txn.cursor(db=dbs[b"entries"])
    if cur.set_range(seq_key(expected)):
        for raw_key, value in cur:
            seq = int.from_bytes(as_bytes(raw_key), "big")
            if seq != expected:
                raise Bad(f"entry {expected} is missing (found {seq})", expected)
            entry = _intact(seq, as_bytes(value))
            if entry.prev != prev:
                raise Bad(f"entry {seq} does not link to entry {seq - 1} (its prev hash was changed)", seq)
            if entry.kind == CHECKPOINT:
                raise Bad(f"meta: the checkpoint record names entry {start}, but entry {seq} is a later one")
            if key is not None and entry.kind in SIGNED_KINDS:
                check_signature(entry, key)
            if entry.action is not None:
                touched.setdefault(entry.action, []).append(seq)
            seen_prune = seen_prune or seq == kept.entry
            prev, expected = entry.hash, seq + 1
            chain.checked += 1
            chain.head = (seq, entry.hash)
    if _recorded_head(txn, dbs) != chain.head:
        head_seq, head_hash = _recorded_head(txn, dbs)
        raise Bad(
            f"the log ends at entry {chain.head[0]} (hash {chain.head[1][:12]}) but its head records "
            f"entry {head_seq} (hash {head_hash[:12]})",
            expected,
        )
    if not seen_prune:
        raise Bad(f"meta: the pruned record names entry {kept.entry}, which is not after the checkpoint")
    return start, after, touched


def _intact(seq: int, raw: bytes) -> Entry:
    """An entry whose bytes match its hash and that says it is entry `seq`."""
    try:
        entry = Entry.parse(raw)
    except ValueError as e:
        raise Bad(f"entry {seq} is not a valid entry: {e}", seq) from None
    prev, digest, body = unseal(raw)
    if link(prev, body) != digest:
        raise Bad(f"entry {seq} was altered: its hash does not match its contents", seq)
    if entry.seq != seq:
        raise Bad(f"entry {seq} was altered: it says it is entry {entry.seq}", seq)
    return entry


def _action(view: View, action_id: int, recent: list[int], start: int) -> None:
    """The action's index records (actions, states, its idempotency key) must be what its
    entries say, and list exactly the entries after `start` that are about it."""
    txn, dbs = view.txn, view.dbs
    raw = txn.get(seq_key(action_id), db=dbs[b"actions"])
    if raw is None:
        raise Bad(f"actions index: action {action_id} is missing (entry {recent[0]} is about it)", recent[0])
    try:
        stored = index_record(action_id, as_bytes(raw))
        listed = listed_entries(action_id, as_bytes(raw))
    except Altered as e:
        raise Bad(f"actions index: {e.what}") from None
    if [s for s in listed if s > start] != recent:
        raise Bad(
            f"actions index: action {action_id} lists entries {[s for s in listed if s > start]} after "
            f"the checkpoint, the chain has {recent}"
        )
    try:
        derived = view.derived(action_id)
    except Altered as e:
        raise Bad(f"actions index: {e.what}") from None
    assert derived is not None
    unchecked = derived.pop("unchecked", None)
    if unchecked is not None:
        # An older airlock's action: only what its entries say can be checked.
        stored = {k: v for k, v in stored.items() if k not in unchecked}
        derived = {k: v for k, v in derived.items() if k not in unchecked}
    if stored != derived:
        raise Bad(
            f"actions index: action {action_id} disagrees with the chain: {first_difference(stored, derived)}"
        )
    for state in State:
        listed_so = txn.get(state_key(state, action_id), db=dbs[b"states"]) is not None
        if listed_so != (state == derived["state"]):
            said = "lists" if listed_so else "does not list"
            raise Bad(
                f"states index: it {said} action {action_id} as {state}; the chain says {derived['state']}"
            )
    if "key" in derived and unchecked is None:
        _key(view, action_id, derived["key"], listed)


def _key(view: View, action_id: int, key: str, listed: list[int]) -> None:
    """The idempotency key the action claimed: held as its entries say, or released."""
    held: dict[str, Any] | None = None
    for seq in listed:
        entry = view.entry(seq)  # read (and checked) by view.derived just before
        assert entry is not None
        if entry.claim is not None and held is None:
            held = keyrec.claimed(entry)
        if entry.settle is not None:
            held = keyrec.settled(held, entry)
    raw = view.txn.get(key.encode(), db=view.dbs[b"keys"])
    stored = _stored_key(raw)
    if held is None or held["expires"] <= time.time():
        if stored is not None and stored.get("action") == action_id and held is None:
            raise Bad(f"keys: idempotency key {key!r} is still held by action {action_id}, which released it")
        return  # released, or expired (and perhaps swept)
    if stored is None or stored.get("action") != action_id:
        if (
            stored is None
            or not isinstance(stored.get("claimed"), int)
            or stored["claimed"] < held["claimed"]
        ):
            raise Bad(f"keys: idempotency key {key!r} (claimed in entry {held['claimed']}) is missing")
        return  # claimed again since, by another action: the full check covers it
    if keyrec.without_reply(stored) != held:
        raise Bad(
            f"keys: idempotency key {key!r} disagrees with the chain: "
            f"{first_difference(keyrec.without_reply(stored), held)}"
        )
    if ("reply" in stored) != ("reply_sha256" in held) or (
        "reply" in stored and keyrec.reply_digest(stored["reply"]) != held["reply_sha256"]
    ):
        raise Bad(f"keys: the stored reply of idempotency key {key!r} does not match the chain")


def _stored_key(raw: Any) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        found = orjson.loads(as_bytes(raw))
    except ValueError:
        raise Bad("keys: an idempotency key's record is not valid JSON") from None
    return found if isinstance(found, dict) else {}

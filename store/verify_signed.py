"""Checking the signed entries of the log (checkpoints and prunes) against a public key, and
that the meta record `checkpoint` names the chain's last checkpoint.

Run after the chain itself verified (store/verify.py), over the same transaction: an entry's
signature covers its seq, the hash before it, its kind and its data, so a good signature on an
entry of an intact chain vouches for every entry before it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import lmdb
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .checkpoints import CHECKPOINT, SIGNED_KINDS, hint
from .entry import Entry
from .errors import Altered
from .signing import SIGNATURE, public_text, signature_ok, signed_payload
from .stored import as_bytes, seq_key
from .verify import ChainReport
from .verify_indexes import Bad

# Canonical JSON has no spaces: an entry of one of these kinds holds this exact text (an entry
# whose data merely mentions it is parsed and passed over).
_NEEDLES = tuple(b'"kind":"' + kind.encode() + b'"' for kind in sorted(SIGNED_KINDS))


def check_signed(txn: lmdb.Transaction, dbs: dict[bytes, Any], key: Ed25519PublicKey | None) -> int:
    """Raise Bad at the first signed entry whose signature `key` did not make (when a key is
    given), or when the checkpoint record does not name the last checkpoint; return how many
    signed entries it read (without a key, only those from the checkpoint the record names on:
    the chain check vouches for the rest)."""
    signed, head, last_checkpoint = 0, 0, None
    cur = txn.cursor(db=dbs[b"entries"])
    start = _recorded(txn, dbs) if key is None else None
    found = cur.set_range(seq_key(start)) if start is not None and _holds(txn, dbs, start) else cur.first()
    for raw_key, value in cur if found else ():
        head = int.from_bytes(as_bytes(raw_key), "big")
        raw = as_bytes(value)
        if not any(needle in raw for needle in _NEEDLES):
            continue
        try:
            entry = Entry.parse(raw)
        except ValueError as e:
            raise Bad(f"entry {head} is not a valid entry: {e}", head) from None
        if entry.kind not in SIGNED_KINDS:
            continue
        if key is not None:
            check_signature(entry, key)
        if entry.kind == CHECKPOINT and entry.action is None:
            last_checkpoint = entry.seq
        signed += 1
    _check_hint(txn, dbs, last_checkpoint, head)
    return signed


def check_signature(entry: Entry, key: Ed25519PublicKey) -> None:
    """Raise Bad unless `entry` carries `key`'s signature over its seq, prev, kind and data."""
    signature = entry.data.get(SIGNATURE)
    what = f"entry {entry.seq} ({entry.kind})"
    if signature is None:
        raise Bad(
            f"{what} carries no signature: it was altered, or written without the signing key", entry.seq
        )
    if signature_ok(key, signed_payload(entry.seq, entry.prev, entry.kind, entry.data), signature):
        return
    named = entry.data.get("key")
    if isinstance(named, str) and named != public_text(key):
        raise Bad(f"{what} says it was signed by {named}, not by the key given: check --key", entry.seq)
    raise Bad(f"{what} has a signature the key given did not make: the entry was altered", entry.seq)


def _recorded(txn: lmdb.Transaction, dbs: dict[bytes, Any]) -> int | None:
    try:
        return hint(txn, dbs)
    except Altered as e:
        raise Bad(f"meta: {e.what}") from None


def _check_hint(txn: lmdb.Transaction, dbs: dict[bytes, Any], last_checkpoint: int | None, head: int) -> None:
    recorded = _recorded(txn, dbs)
    if recorded == last_checkpoint:
        return
    if (
        last_checkpoint is None
        and recorded is not None
        and recorded < head
        and not _holds(txn, dbs, recorded)
    ):
        # Below the head, and the chain verified without it: pruned with the entries before it.
        return
    said = f"names entry {recorded}" if recorded is not None else "is missing"
    truth = f"entry {last_checkpoint}" if last_checkpoint is not None else "none"
    raise Bad(f"meta: the checkpoint record {said}, but the chain's last checkpoint is {truth}")


def _holds(txn: lmdb.Transaction, dbs: dict[bytes, Any], seq: int) -> bool:
    return txn.get(seq_key(seq), db=dbs[b"entries"]) is not None


def with_signatures(
    txn: lmdb.Transaction, dbs: dict[bytes, Any], key: Ed25519PublicKey | None, report: ChainReport
) -> ChainReport:
    """`report` of a chain that verified, with its signed entries checked against `key` (or,
    without a key, only the checkpoint record checked against the chain)."""
    try:
        signed = check_signed(txn, dbs, key)
    except Bad as bad:
        return dataclasses.replace(report, bad_seq=bad.seq, reason=bad.reason, failed=True)
    return dataclasses.replace(report, signed=signed if key is not None else 0)

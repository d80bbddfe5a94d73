"""The log's LMDB files opened as an attacker with file access would open them, and `airlock
verify` run over them."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lmdb
import orjson

from .airlock import AIRLOCK

# Rules the log tests run under: loopback, everything allowed but deletes under /prod.
PROD_RULES = """\
version: 1
egress:
  allow: [127.0.0.1, localhost]
defaults: {read: allow, write: allow, destructive: allow}
rules:
  - id: no-prod-deletes
    match: {method: DELETE, path: "/prod/*"}
    action: deny
    message: production data is never deleted by agents
"""


@contextmanager
def databases(data: Path) -> Iterator[tuple[lmdb.Transaction, dict[str, Any]]]:
    """A write transaction on every database of the log, as an attacker with the file would open it."""
    env = lmdb.open(str(data / "log"), max_dbs=8)
    try:
        with env.begin(write=True) as txn:
            names = ("entries", "actions", "states", "meta", "keys", "attrs")
            yield txn, {n: env.open_db(n.encode(), txn=txn) for n in names}
    finally:
        env.close()


def k(n: int) -> bytes:
    """The key of entry or action `n` in its database."""
    return n.to_bytes(8, "big")


def raw(txn: lmdb.Transaction, key: bytes, db: Any) -> bytes:
    """The stored bytes under `key`; fail if there are none."""
    found = txn.get(key, db=db)
    assert found is not None, key
    return bytes(found)


def load(txn: lmdb.Transaction, key: bytes, db: Any) -> Any:
    """The stored JSON under `key`, parsed; fail if there is none."""
    return orjson.loads(raw(txn, key, db))


def key_named(txn: lmdb.Transaction, db: Any, suffix: str) -> bytes:
    """The stored idempotency key that ends with the client's key (stored keys are scoped)."""
    found = [
        bytes(key) for key in txn.cursor(db=db).iternext(values=False) if bytes(key).endswith(suffix.encode())
    ]
    assert len(found) == 1, found
    return found[0]


def verify(data: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """`airlock verify` over the data dir `data`, as its own process."""
    return subprocess.run(
        [AIRLOCK, "verify", "--data", str(data), *extra], capture_output=True, text=True, timeout=60
    )

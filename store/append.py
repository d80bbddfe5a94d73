"""Records become entries: one durable write transaction per batch.

Every transaction reads the chain head and the action counter inside itself, so several
processes may append to one log (LMDB serializes their write transactions) and nothing is
cached that another process could make stale. Each record is written in a child transaction of
its own: one that fails half-way leaves nothing of itself behind, and the batch goes on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lmdb
import orjson

from . import attrs, checkpoints, coordinate, formats, freeze
from . import keys as keyrec
from .chain import canonical, seal
from .entry import Entry
from .errors import StateError, StoreError, StoreFull, UnknownAction
from .index import advance
from .record import ActionRef, Record
from .signed import SIGNATURE, signed_payload
from .states import INITIAL, MOVES, State
from .stored import seq_key, state_key
from .view import HEAD, NEXT_ACTION, View

# What a batch is: the records to append, chosen inside the transaction (so it may read the
# log as of that moment through the View).
Batch = Callable[[View], list[Record]]


class Appender:
    """Appends records to the chain of one LMDB environment as writer `writer_id`."""

    def __init__(
        self, path: Path, env: lmdb.Environment, dbs: dict[bytes, Any], writer_id: str, max_size: int
    ):
        self.path = path
        self.writer_id = writer_id
        self._env = env
        self._dbs = dbs
        self._max_size = max_size

    def commit(self, batch: Batch) -> list[Entry | StoreError]:
        """Append the records `batch` names in one durable transaction: an entry for each, or
        the StoreError that kept it out (a failure of the whole transaction raises)."""
        for _attempt in range(64):
            opened: list[ActionRef] = []
            try:
                with self._env.begin(write=True) as txn:
                    return self._put_all(txn, batch(View(txn, self._dbs)), opened)
            except lmdb.MapFullError:
                grow = True
            except lmdb.MapResizedError:
                grow = False
            except lmdb.Error as e:
                _forget(opened)
                raise StoreError(f"cannot write the log at {self.path}: {e}") from e
            except BaseException:
                _forget(opened)
                raise
            _forget(opened)
            if grow:
                self._grow()
            else:
                self._env.set_mapsize(0)
        raise StoreError(f"cannot write the log at {self.path}: gave up after 64 tries")

    def _grow(self) -> None:
        size = self._env.info()["map_size"]
        if size >= self._max_size:
            raise StoreFull(
                f"the log at {self.path} is full ({size} bytes, the configured maximum): "
                "make room (--retain, --archive) or raise --log-max-size"
            )
        try:
            self._env.set_mapsize(min(size * 2, self._max_size))
        except lmdb.Error as e:
            raise StoreFull(f"the log at {self.path} is full and cannot grow: {e}") from e

    def _put_all(
        self, txn: lmdb.Transaction, records: list[Record], opened: list[ActionRef]
    ) -> list[Entry | StoreError]:
        # The head as of the last entry written, for records later in this batch to read.
        seq, prev = View(txn, self._dbs).head()
        results: list[Entry | StoreError] = []
        for record in records:
            mark = len(opened)
            try:
                record.check()
                # Each record in a transaction of its own inside the batch's: whatever fails
                # half-way leaves nothing of that record behind, and the batch goes on.
                with self._env.begin(write=True, parent=txn) as child:
                    entry = self._put(View(child, self._dbs), seq + 1, prev, record, opened)
            except (lmdb.MapFullError, lmdb.MapResizedError):
                raise
            except StoreError as e:
                _forget(opened[mark:])
                del opened[mark:]
                results.append(e)
                continue
            except (TypeError, ValueError) as e:
                _forget(opened[mark:])
                del opened[mark:]
                results.append(StoreError(f"a {record.kind} entry could not be encoded: {e}"))
                continue
            except Exception as e:
                _forget(opened[mark:])
                del opened[mark:]
                results.append(StoreError(f"a {record.kind} entry could not be written: {e!r}"))
                continue
            seq, prev = entry.seq, entry.hash
            results.append(entry)
        if results and seq != View(txn, self._dbs).head()[0]:
            txn.put(HEAD, canonical({"seq": seq, "hash": prev}), db=self._dbs[b"meta"])
        return results

    def _put(self, view: View, seq: int, prev: str, record: Record, opened: list[ActionRef]) -> Entry:
        txn = view.txn
        actions_db, states_db, meta = self._dbs[b"actions"], self._dbs[b"states"], self._dbs[b"meta"]
        if record.unless_frozen:
            # In the transaction that writes the record: a freeze durable before it holds.
            freeze.refuse_if_frozen(txn, self._dbs)
        coordinate.refuse_if_fenced(view, record, time.time())
        ref = record.action
        index: dict[str, Any] | None = None
        if record.new_action:
            if ref is None or record.state not in INITIAL:
                raise StateError(f"a new action must start in one of {sorted(INITIAL)}")
            if record.claim is not None:
                keyrec.check_claim(view, record.claim, tip=(seq - 1, prev))
            action_id: int | None = view.next_action()
        elif ref is not None:
            if ref.id is None:
                raise UnknownAction("the action's first entry was never written")
            index = view.index(ref.id)
            if index is None:
                raise UnknownAction(f"no action {ref.id} in the log")
            if record.if_state is not None and index["state"] != record.if_state:
                raise StateError(
                    f"action {ref.id} is {index['state']}; "
                    f"a {record.kind} applies only to {record.if_state} actions"
                )
            if record.state is not None and record.state not in MOVES.get(State(index["state"]), ()):
                raise StateError(f"action {ref.id} is {index['state']}: it cannot become {record.state}")
            action_id = ref.id
        else:
            action_id = None

        body = self._body(seq, record, action_id, index)
        coordinate.before_seal(view, self.path, self.writer_id, record, body, action_id)
        if record.sign is not None:
            # Here, where the entry's seq and the hash before it are known for certain.
            body["data"][SIGNATURE] = record.sign(signed_payload(seq, prev, record.kind, body["data"]))
        # Encoded before anything is written: a record that cannot be encoded changes nothing.
        digest, stored = seal(prev, canonical(body))
        entry = Entry(**body, prev=prev, hash=digest)

        if record.new_action:
            assert ref is not None and action_id is not None
            ref.id = action_id
            opened.append(ref)
            txn.put(NEXT_ACTION, seq_key(action_id + 1), db=meta)
        if freeze.changes_freeze(body):
            freeze.keep(txn, self._dbs, body)
        txn.put(seq_key(seq), stored, db=self._dbs[b"entries"])
        if formats.is_upgrade(body) and txn.get(formats.META_KEY, db=meta) is None:
            txn.put(formats.META_KEY, formats.marker(seq), db=meta)
        if body["kind"] == checkpoints.CHECKPOINT and action_id is None:
            txn.put(checkpoints.META_KEY, seq_key(seq), db=meta)
        if action_id is not None:
            if index is not None and entry.state is not None:
                txn.delete(state_key(index["state"], action_id), db=states_db)
            was = attrs.of(index)
            index = advance(index, entry)
            attrs.keep(txn, self._dbs, action_id, was, index)
            txn.put(state_key(index["state"], action_id), b"", db=states_db)
            if entry.claim is not None:
                keyrec.put_claim(txn, self._dbs, entry)
            if entry.settle is not None:
                assert record.key_outcome is not None
                keyrec.keep_or_release(txn, self._dbs, index["key"], entry, record.key_outcome.reply)
            txn.put(seq_key(action_id), orjson.dumps(index), db=actions_db)
        coordinate.after_write(view, entry, index)
        if record.then is not None:
            record.then(view, entry)
        return entry

    def _body(
        self, seq: int, record: Record, action_id: int | None, index: dict[str, Any] | None
    ) -> dict[str, Any]:
        """The hashed body of the entry `record` becomes (the on-disk names: `settle` is what
        the entry does to its action's idempotency key)."""
        ts = round(time.time(), 6)
        body: dict[str, Any] = {
            "seq": seq,
            "ts": ts,
            "kind": record.kind,
            "action": action_id,
            "state": record.state.value if record.state is not None else None,
            "writer": self.writer_id,
            "data": dict(record.data),
        }
        if action_id is not None and record.summary:
            body["summary"] = dict(record.summary)
        if record.new_action and record.claim is not None:
            body["claim"] = {
                "key": record.claim.key,
                "payload": record.claim.payload,
                "expires": ts + record.claim.ttl,
            }
        if record.key_outcome is not None and index is not None and index.get("key"):
            reply = record.key_outcome.reply
            body["settle"] = {
                "keep": record.key_outcome.keep,
                "reply": keyrec.reply_digest(reply) if reply else None,
            }
        return body


def _forget(opened: list[ActionRef]) -> None:
    for ref in opened:
        ref.id = None

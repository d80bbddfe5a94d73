"""The write-ahead log: an append-only, hash-chained sequence of entries in LMDB, with indexes.

One writer thread per process batches concurrent appends into one synced commit (group
commit), so callers on an event loop never wait on fsync themselves. Several processes may
append to the same log (the proxy, `airlock mcp`, the CLI's `resolve`): LMDB serializes their
write transactions, and every transaction reads the chain head and the action counter
inside itself, so nothing is cached that another process could make stale.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lmdb
import orjson

from .chain import GENESIS, canonical, link, seal, unseal
from .errors import NoLog, StateError, StoreError, StoreFull, UnknownAction
from .keys import Claim, KeyTaken, Settle
from .states import INITIAL, MOVES, State

logger = logging.getLogger(__name__)

_DBS = (b"entries", b"actions", b"states", b"meta", b"keys")
_HEAD = b"head"
_NEXT_ACTION = b"next_action"
_BATCH_MAX = 512
_STOP = object()

# How long a posted record (one nobody waits for) may wait to share a commit.
LAZY_COMMIT = 0.005

DEFAULT_MAP_SIZE = 64 << 20
DEFAULT_MAX_SIZE = 64 << 30


_MAX_KEY = (1 << 64) - 1


def _key(n: int) -> bytes:
    return n.to_bytes(8, "big")


def _in_range(n: int) -> bool:
    return 0 <= n <= _MAX_KEY


def _b(raw: bytes | memoryview) -> bytes:
    return raw if isinstance(raw, bytes) else bytes(raw)


def _state_key(state: str, action_id: int) -> bytes:
    return state.encode() + b"\0" + _key(action_id)


@dataclass
class ActionRef:
    """A handle on an action; the writer fills in `id` when the action's first entry is written."""

    id: int | None = None


@dataclass(frozen=True)
class Record:
    """An entry to append: what happened, to which action, the state it moves to, and the
    summary fields it sets on the action's index record."""

    kind: str
    action: ActionRef | None = None
    state: State | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    summary: Mapping[str, Any] = field(default_factory=dict)
    opens: bool = False  # the first entry of a new action: the writer assigns its id
    expect: State | None = None  # apply only if the action is in this state now (else StateError)
    claim: Claim | None = None  # an opening record: claim this idempotency key (else KeyTaken)
    settle: Settle | None = None  # keep or release the action's idempotency key


@dataclass(frozen=True)
class Entry:
    """One written entry of the log, as stored."""

    seq: int
    ts: float
    kind: str
    action: int | None
    state: str | None
    writer: str
    data: dict[str, Any]
    prev: str
    hash: str

    @classmethod
    def parse(cls, raw: bytes) -> Entry:
        """Decode an entry from its stored bytes (ValueError or TypeError if malformed)."""
        prev, digest, body = unseal(raw)
        return cls(**orjson.loads(body), prev=prev, hash=digest)

    def body(self) -> dict[str, Any]:
        """The part of the entry its hash covers (everything but `prev` and `hash`)."""
        return {
            "seq": self.seq,
            "ts": self.ts,
            "kind": self.kind,
            "action": self.action,
            "state": self.state,
            "writer": self.writer,
            "data": self.data,
        }

    def as_dict(self) -> dict[str, Any]:
        """The entry as a JSON-ready mapping."""
        return self.body() | {"prev": self.prev, "hash": self.hash}


@dataclass(frozen=True)
class _LoopWaiter:
    """An asyncio future waiting on the writer; settled from the loop's own thread."""

    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Entry]


Waiter = concurrent.futures.Future[Entry] | _LoopWaiter | None


def _settle(results: list[tuple[asyncio.Future[Entry], Entry | StoreError]]) -> None:
    for fut, result in results:
        if fut.done():
            continue
        if isinstance(result, StoreError):
            fut.set_exception(result)
        else:
            fut.set_result(result)


@dataclass(frozen=True)
class Verdict:
    """The result of checking the chain: how many entries were checked and the first bad one."""

    checked: int
    bad_seq: int | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        """True when every entry verified."""
        return self.bad_seq is None


class Log:
    """The log of one data directory: readers anywhere, appends through this process's writer."""

    def __init__(self, path: Path, env: lmdb.Environment, *, readonly: bool, max_size: int):
        self.path = path
        self._env = env
        self._readonly = readonly
        self._max_size = max_size
        self._dbs = {name: env.open_db(name, create=not readonly) for name in _DBS}
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock_fd: int | None = None
        self.writer_id = uuid.uuid4().hex[:12]

    @classmethod
    def open(
        cls,
        path: Path | str,
        *,
        readonly: bool = False,
        map_size: int = DEFAULT_MAP_SIZE,
        max_size: int = DEFAULT_MAX_SIZE,
    ) -> Log:
        """Open (or, for writing, create) the log in directory `path`."""
        path = Path(path)
        if readonly and not (path / "data.mdb").exists():
            raise NoLog(f"no log at {path}: start the proxy with this data dir first")
        try:
            if not readonly:
                path.mkdir(parents=True, exist_ok=True)
                (path / "writers").mkdir(exist_ok=True)
            env = lmdb.open(
                str(path),
                map_size=min(map_size, max_size),
                max_dbs=len(_DBS),
                readonly=readonly,
                sync=True,
                metasync=True,
            )
        except (lmdb.Error, OSError) as e:
            raise StoreError(f"cannot open the log at {path}: {e}") from e
        return cls(path, env, readonly=readonly, max_size=max_size)

    # ---- reading -------------------------------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[lmdb.Transaction]:
        try:
            txn = self._env.begin()
        except lmdb.MapResizedError:
            # Another process grew the map; adopt its size and try again.
            self._env.set_mapsize(0)
            txn = self._env.begin()
        try:
            yield txn
        finally:
            txn.abort()

    def head(self) -> tuple[int, str]:
        """The sequence number and hash of the last entry (0 and the genesis hash if empty)."""
        with self._read() as txn:
            return self._head(txn)

    def _head(self, txn: lmdb.Transaction) -> tuple[int, str]:
        raw = txn.get(_HEAD, db=self._dbs[b"meta"])
        if raw is None:
            return 0, GENESIS
        head = orjson.loads(_b(raw))
        return head["seq"], head["hash"]

    def entry(self, seq: int) -> Entry | None:
        """The entry with sequence number `seq`, if there is one."""
        if not _in_range(seq):
            return None
        with self._read() as txn:
            raw = txn.get(_key(seq), db=self._dbs[b"entries"])
        return Entry.parse(_b(raw)) if raw is not None else None

    def entries(self, start: int = 1) -> Iterator[Entry]:
        """Entries in order from sequence number `start`."""
        start = max(start, 1)
        if start > _MAX_KEY:
            return
        with self._read() as txn:
            cur = txn.cursor(db=self._dbs[b"entries"])
            if cur.set_range(_key(start)):
                for _, raw in cur:
                    yield Entry.parse(_b(raw))

    def action(self, action_id: int) -> dict[str, Any] | None:
        """The index record of one action: its state, summary fields and entry numbers."""
        if not _in_range(action_id):
            return None
        with self._read() as txn:
            raw = txn.get(_key(action_id), db=self._dbs[b"actions"])
        return orjson.loads(_b(raw)) if raw is not None else None

    def actions(self, state: str | None = None, after: int = 0) -> Iterator[dict[str, Any]]:
        """Index records of actions with id above `after`, oldest first, optionally in one state."""
        after = max(after, 0)
        if after >= _MAX_KEY:
            return
        with self._read() as txn:
            if state is None:
                cur = txn.cursor(db=self._dbs[b"actions"])
                if cur.set_range(_key(after + 1)):
                    for _, raw in cur:
                        yield orjson.loads(_b(raw))
                return
            prefix = state.encode() + b"\0"
            cur = txn.cursor(db=self._dbs[b"states"])
            if not cur.set_range(_state_key(state, after + 1)):
                return
            actions_db = self._dbs[b"actions"]
            for raw_key in cur.iternext(values=False):
                key = _b(raw_key)
                if not key.startswith(prefix):
                    break
                found = txn.get(key[len(prefix) :], db=actions_db)
                if found is not None:
                    yield orjson.loads(_b(found))

    def verify(self) -> Verdict:
        """Check every entry's hash and link, the sequence's continuity and the recorded head."""
        prev, expected, checked = GENESIS, 1, 0
        with self._read() as txn:
            head_seq, head_hash = self._head(txn)
            for key, raw in txn.cursor(db=self._dbs[b"entries"]):
                seq = int.from_bytes(_b(key), "big")
                if seq != expected:
                    return Verdict(checked, expected, f"entry {expected} is missing (found {seq})")
                stored = _b(raw)
                entry_prev, digest, body = unseal(stored)
                if entry_prev != prev:
                    return Verdict(checked, seq, f"entry {seq} does not link to entry {seq - 1}")
                if link(prev, body) != digest:
                    return Verdict(checked, seq, f"entry {seq} was altered: its hash does not match")
                try:
                    if Entry.parse(stored).seq != seq:
                        return Verdict(checked, seq, f"entry {seq} is stored under the wrong number")
                except (ValueError, TypeError) as e:
                    return Verdict(checked, seq, f"entry {seq} is not a valid entry: {e}")
                prev, expected, checked = digest, seq + 1, checked + 1
        if (head_seq, head_hash) != (expected - 1, prev):
            return Verdict(
                checked,
                expected,
                f"the log ends at entry {expected - 1} (hash {prev[:12]}) but its head records "
                f"entry {head_seq} (hash {head_hash[:12]})",
            )
        return Verdict(checked)

    # ---- writing -------------------------------------------------------------------------

    def start(self) -> None:
        """Start this process's writer: take its liveness lock, recover dead writers' actions."""
        if self._readonly:
            raise StoreError("the log was opened read-only")
        lock = self.path / "writers" / f"{self.writer_id}.lock"
        self._lock_fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        self._recover()
        self._thread = threading.Thread(target=self._run, name="airlock-log-writer", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Write what is queued, stop the writer and close the environment."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            (self.path / "writers" / f"{self.writer_id}.lock").unlink(missing_ok=True)
            self._lock_fd = None
        self._env.close()

    def _running(self) -> None:
        if self._thread is None:
            raise StoreError("the log writer is not running")

    def submit(self, record: Record) -> concurrent.futures.Future[Entry]:
        """Queue a record; the future resolves once it is durable (or fails with StoreError)."""
        fut: concurrent.futures.Future[Entry] = concurrent.futures.Future()
        try:
            self._running()
        except StoreError as e:
            fut.set_exception(e)
            return fut
        self._queue.put((record, fut))
        return fut

    def post(self, record: Record) -> None:
        """Queue a record without waiting for it; the writer logs a failure to write it."""
        self._running()
        self._queue.put((record, None))

    async def append(self, record: Record) -> Entry:
        """Append a record and wait until it is durable on disk."""
        self._running()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Entry] = loop.create_future()
        self._queue.put((record, _LoopWaiter(loop, fut)))
        return await fut

    def append_now(self, record: Record) -> Entry:
        """Append a record from a thread that may block (the CLI): wait for the durable commit."""
        return self.submit(record).result()

    def _run(self) -> None:
        # Records someone waits for are committed at once, together with whatever else is queued.
        # Posted records (reads, outcomes) may wait up to LAZY_COMMIT for company, so that at low
        # concurrency they share the next waited-for commit instead of costing an fsync each.
        lazy: list[tuple[Record, Waiter]] = []
        deadline = 0.0
        while True:
            try:
                item = self._queue.get(timeout=max(deadline - time.monotonic(), 0) if lazy else None)
            except queue.Empty:
                self._commit(lazy)
                lazy = []
                continue
            batch, stop = self._drain(item)
            if not lazy and batch:
                deadline = time.monotonic() + LAZY_COMMIT
            lazy.extend(batch)
            if stop or len(lazy) >= _BATCH_MAX or any(waiter is not None for _, waiter in batch):
                if lazy:
                    self._commit(lazy)
                lazy = []
            if stop:
                return

    def _drain(self, first: Any) -> tuple[list[tuple[Record, Waiter]], bool]:
        """The first item and everything queued behind it; True if a stop was among them."""
        batch: list[tuple[Record, Waiter]] = []
        item = first
        while True:
            if item is _STOP:
                return batch, True
            batch.append(item)
            if len(batch) >= _BATCH_MAX:
                return batch, False
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return batch, False

    def _commit(self, batch: list[tuple[Record, Waiter]]) -> None:
        results: list[Entry | StoreError] = []
        opened: list[ActionRef] = []
        try:
            results = self._write([r for r, _ in batch], opened)
        except Exception as e:
            # The writer thread must outlive any failure, or every later append would hang.
            for ref in opened:
                ref.id = None
            error = e if isinstance(e, StoreError) else StoreError(f"cannot write the log: {e!r}")
            results = [error] * len(batch)
        # One wake-up per event loop for the whole batch, not one per waiter.
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Entry], Entry | StoreError]]] = {}
        for (record, waiter), result in zip(batch, results, strict=True):
            if isinstance(waiter, _LoopWaiter):
                by_loop.setdefault(waiter.loop, []).append((waiter.future, result))
            elif waiter is not None:
                if isinstance(result, StoreError):
                    waiter.set_exception(result)
                else:
                    waiter.set_result(result)
            elif isinstance(result, StoreError):
                logger.error("a %s entry was not written: %s", record.kind, result)
        for loop, settled in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
                loop.call_soon_threadsafe(_settle, settled)

    def _write(self, records: list[Record], opened: list[ActionRef]) -> list[Entry | StoreError]:
        for _attempt in range(64):
            try:
                with self._env.begin(write=True) as txn:
                    return self._put_all(txn, records, opened)
            except lmdb.MapFullError:
                for ref in opened:
                    ref.id = None
                opened.clear()
                self._grow()
            except lmdb.MapResizedError:
                self._env.set_mapsize(0)
            except lmdb.Error as e:
                raise StoreError(f"cannot write the log at {self.path}: {e}") from e
        raise StoreError(f"cannot write the log at {self.path}: gave up after 64 tries")

    def _grow(self) -> None:
        size = self._env.info()["map_size"]
        if size >= self._max_size:
            raise StoreFull(
                f"the log at {self.path} is full ({size} bytes, the configured maximum): "
                "archive it or raise --log-max-size"
            )
        try:
            self._env.set_mapsize(min(size * 2, self._max_size))
        except lmdb.Error as e:
            raise StoreFull(f"the log at {self.path} is full and cannot grow: {e}") from e

    def _put_all(
        self, txn: lmdb.Transaction, records: list[Record], opened: list[ActionRef]
    ) -> list[Entry | StoreError]:
        seq, prev = self._head(txn)
        results: list[Entry | StoreError] = []
        for record in records:
            try:
                entry = self._put(txn, seq + 1, prev, record, opened)
            except StoreError as e:
                results.append(e)
                continue
            except (TypeError, ValueError) as e:
                # A record that cannot be encoded fails alone; the writer and the batch go on.
                results.append(StoreError(f"a {record.kind} entry could not be encoded: {e}"))
                continue
            seq, prev = entry.seq, entry.hash
            results.append(entry)
        meta = self._dbs[b"meta"]
        txn.put(_HEAD, canonical({"seq": seq, "hash": prev}), db=meta)
        return results

    def _put(
        self, txn: lmdb.Transaction, seq: int, prev: str, record: Record, opened: list[ActionRef]
    ) -> Entry:
        actions_db, states_db = self._dbs[b"actions"], self._dbs[b"states"]
        ref = record.action
        index: dict[str, Any] | None = None
        if record.opens:
            if ref is None or record.state not in INITIAL:
                raise StateError(f"a new action must start in one of {sorted(INITIAL)}")
            if record.claim is not None:
                self._check_claim(txn, record.claim)
            raw_next = txn.get(_NEXT_ACTION, db=self._dbs[b"meta"])
            ref.id = int.from_bytes(_b(raw_next), "big") if raw_next else 1
            opened.append(ref)
            txn.put(_NEXT_ACTION, _key(ref.id + 1), db=self._dbs[b"meta"])
        elif ref is not None:
            if ref.id is None:
                raise UnknownAction("the action's first entry was never written")
            raw = txn.get(_key(ref.id), db=actions_db)
            if raw is None:
                raise UnknownAction(f"no action {ref.id} in the log")
            index = orjson.loads(_b(raw))
            if record.expect is not None and index["state"] != record.expect:
                raise StateError(
                    f"action {ref.id} is {index['state']}; "
                    f"a {record.kind} applies only to {record.expect} actions"
                )
            if record.state is not None and record.state not in MOVES.get(State(index["state"]), ()):
                raise StateError(f"action {ref.id} is {index['state']}: it cannot become {record.state}")

        ts = round(time.time(), 6)
        action_id = ref.id if ref is not None else None
        state = record.state.value if record.state is not None else None
        data = dict(record.data)
        body: dict[str, Any] = {
            "seq": seq,
            "ts": ts,
            "kind": record.kind,
            "action": action_id,
            "state": state,
            "writer": self.writer_id,
            "data": data,
        }
        digest, stored = seal(prev, canonical(body))
        txn.put(_key(seq), stored, db=self._dbs[b"entries"])

        if action_id is not None:
            assert ref is not None
            if index is None:
                index = {"id": action_id, "ts": ts, "writer": self.writer_id, "entries": []}
            elif record.state is not None:
                txn.delete(_state_key(index["state"], action_id), db=states_db)
            index.update(record.summary)
            index["entries"].append(seq)
            index["updated"] = ts
            if record.state is not None:
                index["state"] = record.state.value
                txn.put(_state_key(index["state"], action_id), b"", db=states_db)
            if record.opens and record.claim is not None:
                self._take_claim(txn, record.claim, action_id, ts)
                index["key"] = record.claim.key
            if record.settle is not None and index.get("key"):
                self._settle_key(txn, index["key"], action_id, record.settle)
            txn.put(_key(action_id), orjson.dumps(index), db=actions_db)
        return Entry(
            seq=seq,
            ts=ts,
            kind=record.kind,
            action=action_id,
            state=state,
            writer=self.writer_id,
            data=data,
            prev=prev,
            hash=digest,
        )

    # ---- idempotency keys ----------------------------------------------------------------

    def key(self, key: str) -> dict[str, Any] | None:
        """The live record of an idempotency key (holder action, payload, reply), if any."""
        with self._read() as txn:
            raw = txn.get(key.encode(), db=self._dbs[b"keys"])
        if raw is None:
            return None
        held: dict[str, Any] = orjson.loads(_b(raw))
        return held if held["expires"] > time.time() else None

    def _check_claim(self, txn: lmdb.Transaction, claim: Claim) -> None:
        raw = txn.get(claim.key.encode(), db=self._dbs[b"keys"])
        if raw is None:
            return
        held = orjson.loads(_b(raw))
        if held["expires"] <= time.time():
            return  # expired: the key is free again
        holder = txn.get(_key(held["action"]), db=self._dbs[b"actions"])
        state = orjson.loads(_b(holder))["state"] if holder is not None else "unknown"
        raise KeyTaken(claim.key, held, state)

    def _take_claim(self, txn: lmdb.Transaction, claim: Claim, action_id: int, ts: float) -> None:
        held = {"action": action_id, "payload": claim.payload, "expires": ts + claim.ttl, "final": False}
        txn.put(claim.key.encode(), orjson.dumps(held), db=self._dbs[b"keys"])

    def _settle_key(self, txn: lmdb.Transaction, key: str, action_id: int, settle: Settle) -> None:
        keys = self._dbs[b"keys"]
        raw = txn.get(key.encode(), db=keys)
        if raw is None:
            return
        held = orjson.loads(_b(raw))
        if held["action"] != action_id:
            return  # the key has moved on (expired and claimed again): not ours to settle
        if not settle.keep:
            txn.delete(key.encode(), db=keys)
            return
        held["final"] = True
        if settle.reply is not None:
            held["reply"] = settle.reply
        txn.put(key.encode(), orjson.dumps(held), db=keys)

    # ---- recovery ------------------------------------------------------------------------

    def _recover(self) -> None:
        """Mark actions left pending by writers that died (no lock held) as in doubt."""
        orphans: dict[str, list[int]] = {}
        for index in self.actions(State.PENDING):
            orphans.setdefault(index["writer"], []).append(index["id"])
        dead = {w: ids for w, ids in orphans.items() if w != self.writer_id and not self._alive(w)}
        records = [
            Record(
                kind="recovery",
                action=ActionRef(action_id),
                state=State.IN_DOUBT,
                data={"reason": "its writer stopped before recording an outcome", "writer": writer},
            )
            for writer, ids in dead.items()
            for action_id in ids
        ]
        if records:
            results = self._write(records, [])
            bad = [r for r in results if isinstance(r, StoreError)]
            if bad:
                raise bad[0]
            logger.warning("%d action(s) left pending by a stopped writer are now in_doubt", len(records))
        for writer in dead:
            (self.path / "writers" / f"{writer}.lock").unlink(missing_ok=True)

    def _alive(self, writer: str) -> bool:
        lock = self.path / "writers" / f"{writer}.lock"
        try:
            fd = os.open(lock, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

"""The write-ahead log: an append-only, hash-chained sequence of entries in LMDB, with indexes.

One writer thread per process batches concurrent appends into one synced commit (group
commit), so callers on an event loop never wait on fsync themselves. Several processes may
append to the same log (the proxy, `airlock mcp`, the CLI's `resolve`): LMDB serializes their
write transactions, and every transaction reads the chain head and the action counter
inside itself, so nothing is cached that another process could make stale.

The chain is the truth: every index (actions, states, keys, the head and the action counter)
is derived from the hashed entries, readers rebuild what they show from those entries, and
`verify` checks every index against them (store/verify.py).
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
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lmdb
import orjson

from . import formats
from . import keys as keyrec
from .chain import GENESIS, canonical, seal
from .entry import Entry
from .errors import Altered, NoLog, StateError, StoreError, StoreFull, UnknownAction
from .index import advance
from .keys import Claim, KeyTaken, Settle
from .states import INITIAL, MOVES, State
from .stored import (
    ChainCount,
    as_bytes,
    in_range,
    index_record,
    key_record,
    listed_entries,
    parsed_entry,
    seq_key,
    state_key,
)
from .verify import Verdict, check

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

# The log's files are readable by airlock's user only: they hold requests and stored replies.
DIR_MODE = 0o700
FILE_MODE = 0o600

_MAX_KEY = (1 << 64) - 1


@dataclass
class ActionRef:
    """A handle on an action; the writer fills in `id` when the action's first entry is written."""

    id: int | None = None


@dataclass(frozen=True)
class Record:
    """An entry to append: what happened, to which action, the state it moves to, and the
    summary fields it sets on the action's index (hashed into the entry with the rest)."""

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


def _checked(record: Record) -> None:
    """Refuse a record that cannot be written before it joins a transaction."""
    ref = record.action
    if ref is not None and not record.opens and ref.id is not None and not in_range(ref.id):
        raise UnknownAction(f"no action {ref.id} in the log")
    if record.claim is not None and len(record.claim.key.encode()) > keyrec.MAX_KEY_BYTES:
        raise StoreError(f"an idempotency key longer than {keyrec.MAX_KEY_BYTES} bytes cannot be stored")


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
        self._tip: tuple[int, str] = (0, GENESIS)  # the writer's head inside a batch
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
        """Open (or, for writing, create) the log in directory `path`, readable by its owner only."""
        path = Path(path)
        if readonly and not (path / "data.mdb").exists():
            raise NoLog(f"no log at {path}: start the proxy with this data dir first")
        try:
            if not readonly:
                path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
                (path / "writers").mkdir(mode=DIR_MODE, exist_ok=True)
            env = lmdb.open(
                str(path),
                map_size=min(map_size, max_size),
                max_dbs=len(_DBS),
                readonly=readonly,
                sync=True,
                metasync=True,
                mode=FILE_MODE,
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
        try:
            head = orjson.loads(as_bytes(raw))
            seq, digest = head["seq"], head["hash"]
            if not isinstance(seq, int) or not isinstance(digest, str):
                raise TypeError
        except (ValueError, TypeError, KeyError):
            raise Altered("the recorded head is not a valid record") from None
        return seq, digest

    def entry(self, seq: int) -> Entry | None:
        """The entry with sequence number `seq`, if there is one (Altered if it is damaged)."""
        if not in_range(seq):
            return None
        with self._read() as txn:
            return self._entry(txn, seq)

    def _entry(self, txn: lmdb.Transaction, seq: int) -> Entry | None:
        raw = txn.get(seq_key(seq), db=self._dbs[b"entries"])
        if raw is None:
            return None
        return parsed_entry(seq, as_bytes(raw))

    def entries(self, start: int = 1) -> Iterator[Entry]:
        """Entries in order from sequence number `start` (Altered at the first damaged one)."""
        start = max(start, 1)
        if start > _MAX_KEY:
            return
        with self._read() as txn:
            cur = txn.cursor(db=self._dbs[b"entries"])
            if cur.set_range(seq_key(start)):
                for key, raw in cur:
                    yield parsed_entry(int.from_bytes(as_bytes(key), "big"), as_bytes(raw))

    def action(self, action_id: int, *, whole: bool = False) -> dict[str, Any] | None:
        """One action as its entries say: state, summary fields and entry numbers (the index
        only finds the entries; Altered if it points at entries that are not the action's).

        With `whole`, the chain from the action's first entry on is read as well, so that an
        entry missing from the action's list is refused instead of passed over."""
        if not in_range(action_id):
            return None
        with self._read() as txn:
            found = self._derived(txn, action_id)
            if found is None and 1 <= action_id < self._next_action(txn):
                raise Altered(f"the actions index has no record of action {action_id}")
            if found is not None and whole:
                about = self._entries_about(txn, action_id, found["entries"][0])
                if about != found["entries"]:
                    missing = sorted(set(about) - set(found["entries"]))
                    raise Altered(f"action {action_id}'s index does not list its entries {missing}")
            return found

    def _entries_about(self, txn: lmdb.Transaction, action_id: int, start: int) -> list[int]:
        # Canonical JSON has no spaces: an entry about the action holds this exact text.
        needle = b'"action":' + str(action_id).encode() + b","
        found = []
        cur = txn.cursor(db=self._dbs[b"entries"])
        if cur.set_range(seq_key(start)):
            for key, raw in cur:
                if needle in raw:
                    seq = int.from_bytes(as_bytes(key), "big")
                    if parsed_entry(seq, as_bytes(raw)).action == action_id:
                        found.append(seq)
        return found

    def _derived(
        self, txn: lmdb.Transaction, action_id: int, chain: ChainCount | None = None
    ) -> dict[str, Any] | None:
        raw = txn.get(seq_key(action_id), db=self._dbs[b"actions"])
        if raw is None:
            return None
        listed = listed_entries(action_id, as_bytes(raw))
        index: dict[str, Any] | None = None
        for seq in listed:
            entry = self._entry(txn, seq)
            if entry is None:
                raise Altered(f"action {action_id}'s index lists entry {seq}, which is missing")
            if entry.action != action_id:
                raise Altered(
                    f"action {action_id}'s index lists entry {seq}, which is about action {entry.action}"
                )
            index = advance(index, entry)
        if index is None:
            raise Altered(f"action {action_id}'s index lists no entries")
        if chain is not None:
            chain.check(action_id, listed)
        if listed[0] < self._legacy_before(txn):
            # An older airlock's action: its summary fields are in no entry, so they are shown as
            # its index has them, and named as unchecked.
            unchecked = {k: v for k, v in index_record(action_id, as_bytes(raw)).items() if k not in index}
            index = unchecked | index | {"unchecked": sorted(unchecked)}
        return index

    def actions(
        self, state: str | None = None, after: int = 0, *, whole: bool = False
    ) -> Iterator[dict[str, Any]]:
        """Actions with id above `after`, oldest first, optionally in one state, each as its
        entries say (see `action`); Altered where the indexes visibly disagree with the chain.

        With `whole`, the chain is read first as well, so that an action missing from the
        indexes, or an entry missing from an action's list, is refused instead of passed over
        (memory: two numbers per action)."""
        after = max(after, 0)
        if after >= _MAX_KEY:
            return
        with self._read() as txn:
            chain = ChainCount.of(self._dbs[b"entries"], txn, after) if whole else None
            if state is None or chain is not None:
                for found in self._all_actions(txn, after, chain):
                    if state is None or found["state"] == state:
                        yield found
                return
            prefix = state.encode() + b"\0"
            cur = txn.cursor(db=self._dbs[b"states"])
            if not cur.set_range(state_key(state, after + 1)):
                return
            for raw_key in cur.iternext(values=False):
                key = as_bytes(raw_key)
                if not key.startswith(prefix):
                    break
                action_id = int.from_bytes(key[len(prefix) :], "big")
                derived = self._derived(txn, action_id)
                if derived is None:
                    raise Altered(f"the states index lists action {action_id}, which the actions index lacks")
                if derived.get("state") != state:
                    raise Altered(
                        f"the states index lists action {action_id} as {state}, "
                        f"its entries say {derived.get('state')}"
                    )
                yield derived

    def _all_actions(
        self, txn: lmdb.Transaction, after: int, chain: ChainCount | None
    ) -> Iterator[dict[str, Any]]:
        expected = after + 1
        cur = txn.cursor(db=self._dbs[b"actions"])
        if cur.set_range(seq_key(expected)):
            for raw_key in cur.iternext(values=False):
                action_id = int.from_bytes(as_bytes(raw_key), "big")
                if action_id != expected:
                    # Ids are given out one by one: a gap is an index record someone removed.
                    raise Altered(f"the actions index has no record of action {expected}")
                found = self._derived(txn, action_id, chain)
                assert found is not None
                yield found
                expected += 1
        opened = chain.opened if chain is not None else self._next_action(txn) - 1
        if expected <= opened:
            raise Altered(f"the actions index has no record of action {expected} (the log has {opened})")

    def _next_action(self, txn: lmdb.Transaction) -> int:
        raw = txn.get(_NEXT_ACTION, db=self._dbs[b"meta"])
        if raw is None:
            return 1
        if len(raw) != 8:
            raise Altered("the recorded next action number is not a valid record")
        return int.from_bytes(as_bytes(raw), "big")

    def verify(self, expect: tuple[int, str] | None = None) -> Verdict:
        """Check every entry's hash and link, the recorded head, and every index against the
        chain; with `expect` (seq, hash), also that the log still holds that entry unchanged."""
        try:
            with self._read() as txn:
                return check(txn, self._dbs, expect)
        except lmdb.Error as e:
            raise StoreError(f"cannot read the log at {self.path}: {e}") from e

    # ---- writing -------------------------------------------------------------------------

    def start(self) -> None:
        """Start this process's writer: take its liveness lock, recover dead writers' actions."""
        if self._readonly:
            raise StoreError("the log was opened read-only")
        writers = self.path / "writers"
        # Locked before it has its name, so a recoverer that finds the file finds it locked.
        making = writers / f".{self.writer_id}.lock"
        self._lock_fd = os.open(making, os.O_CREAT | os.O_RDWR, FILE_MODE)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        os.rename(making, writers / f"{self.writer_id}.lock")
        self._record_format()
        self._recover()
        self._thread = threading.Thread(target=self._run, name="airlock-log-writer", daemon=True)
        self._thread.start()

    def _record_format(self) -> None:
        """Record the log's format the first time a writer of this version opens it: a new log is
        current from entry 1; an older airlock's log gets a `format` entry where it is upgraded."""
        bad = [r for r in self._write(self._format_records) if isinstance(r, StoreError)]
        if bad:
            raise bad[0]

    def _format_records(self, txn: lmdb.Transaction) -> list[Record]:
        meta = self._dbs[b"meta"]
        if txn.get(formats.META_KEY, db=meta) is not None:
            return []
        head = self._head(txn)[0]
        if head:
            # No marker yet: the chain says what the log holds (once per log, so a full scan).
            for key, raw in txn.cursor(db=self._dbs[b"entries"]):
                entry = parsed_entry(int.from_bytes(as_bytes(key), "big"), as_bytes(raw))
                if formats.is_upgrade(entry.body()):
                    txn.put(formats.META_KEY, formats.marker(entry.seq), db=meta)
                    return []
                if entry.summary or entry.claim is not None or entry.settle is not None:
                    break  # current from the start: only the marker was lost
            else:
                return [Record(kind=formats.KIND, data=formats.upgrade_data(head))]
        txn.put(formats.META_KEY, formats.marker(1), db=meta)
        return []

    def _legacy_before(self, txn: lmdb.Transaction) -> int:
        """The first entry in the current format: those before it were written by an older
        airlock (for a log no writer of this version has opened yet, all of them)."""
        raw = txn.get(formats.META_KEY, db=self._dbs[b"meta"])
        if raw is None:
            return self._head(txn)[0] + 1
        since = formats.since_of(as_bytes(raw))
        if since is None:
            raise Altered("the log's format record is not a valid record")
        return since

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
        records = [r for r, _ in batch]
        try:
            results = self._write(lambda _txn: records)
        except Exception as e:
            # The writer thread must outlive any failure, or every later append would hang.
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

    def _write(self, batch: Callable[[lmdb.Transaction], list[Record]]) -> list[Entry | StoreError]:
        """Append the records `batch` names in one durable transaction (it is called inside the
        transaction, so it may read the log as of that moment)."""
        for _attempt in range(64):
            opened: list[ActionRef] = []
            try:
                with self._env.begin(write=True) as txn:
                    return self._put_all(txn, batch(txn), opened)
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
                "archive it or raise --log-max-size"
            )
        try:
            self._env.set_mapsize(min(size * 2, self._max_size))
        except lmdb.Error as e:
            raise StoreFull(f"the log at {self.path} is full and cannot grow: {e}") from e

    def _put_all(
        self, txn: lmdb.Transaction, records: list[Record], opened: list[ActionRef]
    ) -> list[Entry | StoreError]:
        # The head as of the last entry written, for records later in this batch to read.
        seq, prev = self._tip = self._head(txn)
        results: list[Entry | StoreError] = []
        for record in records:
            mark = len(opened)
            try:
                _checked(record)
                # Each record in a transaction of its own inside the batch's: whatever fails
                # half-way leaves nothing of that record behind, and the batch goes on.
                with self._env.begin(write=True, parent=txn) as child:
                    entry = self._put(child, seq + 1, prev, record, opened)
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
            seq, prev = self._tip = entry.seq, entry.hash
            results.append(entry)
        if results and seq != self._head(txn)[0]:
            txn.put(_HEAD, canonical({"seq": seq, "hash": prev}), db=self._dbs[b"meta"])
        return results

    def _put(
        self, txn: lmdb.Transaction, seq: int, prev: str, record: Record, opened: list[ActionRef]
    ) -> Entry:
        actions_db, states_db, meta = self._dbs[b"actions"], self._dbs[b"states"], self._dbs[b"meta"]
        ref = record.action
        index: dict[str, Any] | None = None
        if record.opens:
            if ref is None or record.state not in INITIAL:
                raise StateError(f"a new action must start in one of {sorted(INITIAL)}")
            if record.claim is not None:
                self._check_claim(txn, record.claim)
            action_id: int | None = self._next_action(txn)
        elif ref is not None:
            if ref.id is None:
                raise UnknownAction("the action's first entry was never written")
            raw = txn.get(seq_key(ref.id), db=actions_db)
            if raw is None:
                raise UnknownAction(f"no action {ref.id} in the log")
            index = index_record(ref.id, as_bytes(raw))
            if record.expect is not None and index["state"] != record.expect:
                raise StateError(
                    f"action {ref.id} is {index['state']}; "
                    f"a {record.kind} applies only to {record.expect} actions"
                )
            if record.state is not None and record.state not in MOVES.get(State(index["state"]), ()):
                raise StateError(f"action {ref.id} is {index['state']}: it cannot become {record.state}")
            action_id = ref.id
        else:
            action_id = None

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
        if record.opens and record.claim is not None:
            body["claim"] = {
                "key": record.claim.key,
                "payload": record.claim.payload,
                "expires": ts + record.claim.ttl,
            }
        if record.settle is not None and index is not None and index.get("key"):
            reply = record.settle.reply
            body["settle"] = {
                "keep": record.settle.keep,
                "reply": keyrec.reply_digest(reply) if reply else None,
            }
        # Encoded before anything is written: a record that cannot be encoded changes nothing.
        digest, stored = seal(prev, canonical(body))
        entry = Entry(**body, prev=prev, hash=digest)

        if record.opens:
            assert ref is not None and action_id is not None
            ref.id = action_id
            opened.append(ref)
            txn.put(_NEXT_ACTION, seq_key(action_id + 1), db=meta)
        txn.put(seq_key(seq), stored, db=self._dbs[b"entries"])
        if formats.is_upgrade(body) and txn.get(formats.META_KEY, db=meta) is None:
            txn.put(formats.META_KEY, formats.marker(seq), db=meta)
        if action_id is not None:
            if index is not None and entry.state is not None:
                txn.delete(state_key(index["state"], action_id), db=states_db)
            index = advance(index, entry)
            txn.put(state_key(index["state"], action_id), b"", db=states_db)
            if entry.claim is not None:
                txn.put(
                    entry.claim["key"].encode(), orjson.dumps(keyrec.claimed(entry)), db=self._dbs[b"keys"]
                )
            if entry.settle is not None:
                assert record.settle is not None
                self._settle_key(txn, index["key"], entry, record.settle.reply)
            txn.put(seq_key(action_id), orjson.dumps(index), db=actions_db)
        return entry

    # ---- idempotency keys ----------------------------------------------------------------

    def key(self, key: str) -> dict[str, Any] | None:
        """The live record of an idempotency key (holder action, payload, reply), if any."""
        with self._read() as txn:
            raw = txn.get(key.encode(), db=self._dbs[b"keys"])
        if raw is None:
            return None
        held = key_record(key, as_bytes(raw))
        return held if held["expires"] > time.time() else None

    def _check_claim(self, txn: lmdb.Transaction, claim: Claim) -> None:
        raw = txn.get(claim.key.encode(), db=self._dbs[b"keys"])
        if raw is None:
            return
        held = key_record(claim.key, as_bytes(raw))
        if held["expires"] <= time.time():
            return  # expired: the key is free again
        holder = txn.get(seq_key(held["action"]), db=self._dbs[b"actions"])
        state = index_record(held["action"], as_bytes(holder))["state"] if holder is not None else "unknown"
        if "claimed" not in held and self._legacy_action(txn, held["action"]):
            # An older airlock's key: no hashed entry backs its stored reply, so it is never
            # replayed, and the request is refused (409) rather than run a second time.
            raise KeyTaken(claim.key, keyrec.without_reply(held) | {"final": True}, state, legacy=True)
        self._check_key(txn, claim.key, held)
        raise KeyTaken(claim.key, held, state)

    def _legacy_action(self, txn: lmdb.Transaction, action_id: Any) -> bool:
        """True when an intact entry of the chain shows the action was opened before the upgrade."""
        known = isinstance(action_id, int) and in_range(action_id)
        raw = txn.get(seq_key(action_id), db=self._dbs[b"actions"]) if known else None
        listed = listed_entries(action_id, as_bytes(raw))[:1] if raw is not None else []
        first = self._entry(txn, listed[0]) if listed else None
        return first is not None and first.action == action_id and first.seq < self._legacy_before(txn)

    def _check_key(self, txn: lmdb.Transaction, key: str, held: dict[str, Any]) -> None:
        """Refuse to act on a key record the chain does not back: its claim, its settlement and
        the digest of its stored reply must be in intact entries (a few reads, not a scan)."""
        claim = self._intact(txn, held.get("claimed"), f"idempotency key {key!r}")
        expected = keyrec.claimed(claim) if claim.claim is not None else {}
        fields = ("action", "payload", "expires", "claimed")
        if (
            claim.claim is None
            or claim.claim["key"] != key
            or any(held.get(f) != expected[f] for f in fields)
        ):
            raise Altered(f"idempotency key {key!r} does not match the claim in entry {claim.seq}")
        if not held.get("final") and "reply" not in held:
            return
        settle = self._intact(txn, held.get("settled"), f"idempotency key {key!r}")
        if (
            settle.settle is None
            or settle.action != held["action"]
            or not settle.settle["keep"]
            or settle.settle.get("reply") != held.get("reply_sha256")
            or ("reply" in held) != (settle.settle.get("reply") is not None)
            or ("reply" in held and keyrec.reply_digest(held["reply"]) != settle.settle["reply"])
        ):
            raise Altered(f"the stored reply of idempotency key {key!r} does not match entry {settle.seq}")

    def _intact(self, txn: lmdb.Transaction, seq: Any, what: str) -> Entry:
        """An entry whose bytes match its hash and whose successor (or the head) links to it."""
        if not isinstance(seq, int) or not in_range(seq):
            raise Altered(f"{what} names no entry of the chain")
        entry = self._entry(txn, seq)
        if entry is None:
            raise Altered(f"{what} names entry {seq}, which is missing")
        after = self._entry(txn, seq + 1)
        linked = after.prev == entry.hash if after is not None else self._tip == (seq, entry.hash)
        if not linked:
            raise Altered(f"entry {seq} no longer links into the chain")
        return entry

    def _settle_key(
        self, txn: lmdb.Transaction, key: str, entry: Entry, reply: dict[str, Any] | None
    ) -> None:
        keys = self._dbs[b"keys"]
        raw = txn.get(key.encode(), db=keys)
        held = key_record(key, as_bytes(raw)) if raw is not None else None
        after = keyrec.settled(held, entry)
        if after is held:
            return  # released already, or the key has moved on (expired and claimed again)
        if after is None:
            txn.delete(key.encode(), db=keys)
            return
        if reply is not None and entry.settle is not None and entry.settle.get("reply") is not None:
            after["reply"] = reply
        txn.put(key.encode(), orjson.dumps(after), db=keys)

    # ---- recovery ------------------------------------------------------------------------

    def _recover(self) -> None:
        """Mark actions left pending by writers that died (no lock held) as in doubt.

        The scan and the writes share one write transaction, so several processes starting
        at once on one data dir each see the others' recoveries and none moves an action twice.
        """
        alive: dict[str, bool] = {}
        dead: set[str] = set()

        def orphans(txn: lmdb.Transaction) -> list[Record]:
            found: list[Record] = []
            prefix = State.PENDING.encode() + b"\0"
            cur = txn.cursor(db=self._dbs[b"states"])
            if not cur.set_range(prefix):
                return found
            for raw_key in cur.iternext(values=False):
                key = as_bytes(raw_key)
                if not key.startswith(prefix):
                    break
                action_id = int.from_bytes(key[len(prefix) :], "big")
                raw = txn.get(key[len(prefix) :], db=self._dbs[b"actions"])
                if raw is None:
                    continue
                index = index_record(action_id, as_bytes(raw))
                writer = index["writer"]
                if index["state"] != State.PENDING or writer == self.writer_id:
                    continue
                if writer not in alive:
                    alive[writer] = self._alive(writer)
                if alive[writer]:
                    continue
                dead.add(writer)
                found.append(
                    Record(
                        kind="recovery",
                        action=ActionRef(action_id),
                        state=State.IN_DOUBT,
                        expect=State.PENDING,
                        data={"reason": "its writer stopped before recording an outcome", "writer": writer},
                    )
                )
            return found

        results = self._write(orphans)
        bad = [r for r in results if isinstance(r, StoreError)]
        if bad:
            raise bad[0]
        if results:
            logger.warning("%d action(s) left pending by a stopped writer are now in_doubt", len(results))
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


def _forget(opened: list[ActionRef]) -> None:
    for ref in opened:
        ref.id = None

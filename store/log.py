"""The write-ahead log: an append-only, hash-chained sequence of entries in LMDB, with indexes.

`Log` is the one face of the store. It reads through a View of one transaction
(store/view.py), appends through this process's writer thread (store/writer.py), which
commits batches of records as entries (store/append.py), keeps idempotency keys with their
actions (store/keys.py), and on start records dead writers' actions as in doubt
(store/recovery.py). Several processes may append to the same log (the proxy, `airlock mcp`,
the CLI's `resolve`).

The chain is the truth: every index (actions, states, keys, the head and the action counter)
is derived from the hashed entries, readers rebuild what they show from those entries, and
`verify` checks every index against them (store/verify.py).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lmdb

from . import archive as archived
from . import attrs, checkpoints, freeze, limits, locks, prune, sessions
from . import keys as keyrec
from .append import Appender
from .chain import canonical
from .entry import Entry
from .errors import Altered, NoLog, StoreError
from .freeze import FreezeState
from .links import linked
from .locks import LockInfo
from .prune import Retention
from .pruned import Pruned
from .query import Query
from .query import newest as query_newest
from .record import Record
from .recovery import DIR_MODE, FILE_MODE, WriterLock, recover
from .sessions import SessionInfo
from .signing import PublicKey
from .stored import MAX_NUMBER, in_range
from .sweep import Swept, sweep_step
from .upgrade import record_format
from .usage import Usage, usage
from .verify import ChainReport, check
from .verify_recent import check_recent
from .verify_signed import with_signatures
from .view import ADDED, DBS, View
from .writer import CommitObserver, Writer

DEFAULT_MAP_SIZE = 64 << 20
DEFAULT_MAX_SIZE = 64 << 30
PROBE = b"probe"  # the meta key readiness probes write: outside the chain, checked by nothing
CURSOR = b"cursor:"  # + a reader's name: the last entry it has taken (outside the chain)


class Log:
    """The log of one data directory: readers anywhere, appends through this process's writer.

    Three ways to append: `await append(r)` and `append_blocking(r)` (from a thread) return
    once the entry is durable; `append_soon(r)` returns at once, and the record shares a
    commit within writer.LAZY_COMMIT."""

    def __init__(self, path: Path, env: lmdb.Environment, *, readonly: bool, max_size: int):
        self.path = path
        self.writer_id = uuid.uuid4().hex[:12]
        self._env = env
        self._readonly = readonly
        self._dbs = {name: db for name in DBS if (db := _database(env, name, readonly)) is not None}
        self._appender = Appender(path, env, self._dbs, self.writer_id, max_size)
        self.max_size = max_size  # the most the log may use (--log-max-size)
        self._writer = Writer(self._appender.commit)
        self._lock = WriterLock(path, self.writer_id)

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
                max_dbs=len(DBS),
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
    def _view(self) -> Iterator[View]:
        try:
            txn = self._env.begin()
        except lmdb.MapResizedError:
            # Another process grew the map; adopt its size and try again.
            self._env.set_mapsize(0)
            txn = self._env.begin()
        try:
            yield View(txn, self._dbs)
        finally:
            txn.abort()

    def head(self) -> tuple[int, str]:
        """The sequence number and hash of the last entry (0 and the genesis hash if empty)."""
        with self._view() as view:
            return view.head()

    def entry(self, seq: int) -> Entry | None:
        """The entry with sequence number `seq`, if there is one (Altered if it is damaged)."""
        if not in_range(seq):
            return None
        with self._view() as view:
            return view.entry(seq)

    def entries(self, start: int = 1) -> Iterator[Entry]:
        """Entries in order from sequence number `start` (Altered at the first damaged one)."""
        start = max(start, 1)
        if start > MAX_NUMBER:
            return
        with self._view() as view:
            yield from view.entries(start)

    def action(self, action_id: int, *, whole: bool = False) -> dict[str, Any] | None:
        """One action as its entries say: state, summary fields and entry numbers (the index
        only finds the entries; Altered if it points at entries that are not the action's).

        With `whole`, the chain from the action's first entry on is read as well, so that an
        entry missing from the action's list is refused instead of passed over."""
        if not in_range(action_id):
            return None
        with self._view() as view:
            return view.action(action_id, whole=whole)

    def action_entries(self, action_id: int) -> tuple[dict[str, Any], list[Entry]] | None:
        """One action as its entries say, with those entries, each checked to be sealed and
        linked to its neighbours in the chain (store/links.py): reads what it returns and the
        entries around it, whatever the log's length."""
        if not in_range(action_id):
            return None
        with self._view() as view:
            index = view.action(action_id)
            if index is None:
                return None
            entries = [e for seq in index["entries"] if (e := view.entry(seq)) is not None]
            linked(view, entries)
            return index, entries

    def newest(self, query: Query) -> list[dict[str, Any]]:
        """The newest actions `query` asks for, newest first, each as its entries say, found
        through the indexes: reads what it returns (store/query.py), whatever the log's length."""
        with self._view() as view:
            return list(query_newest(view, query))

    def actions(
        self, state: str | None = None, after: int = 0, *, whole: bool = False
    ) -> Iterator[dict[str, Any]]:
        """Actions with id above `after`, oldest first, optionally in one state, each as its
        entries say (see `action`); Altered where the indexes visibly disagree with the chain.

        With `whole`, the chain is read first as well, so that an action missing from the
        indexes, or an entry missing from an action's list, is refused instead of passed over
        (memory: two numbers per action)."""
        after = max(after, 0)
        if after >= MAX_NUMBER:
            return
        with self._view() as view:
            yield from view.actions(state, after, whole=whole)

    def key(self, key: str) -> dict[str, Any] | None:
        """The live record of an idempotency key (holder action, payload, reply), if any."""
        with self._view() as view:
            return keyrec.live_record(view, key)

    def frozen(self) -> FreezeState | None:
        """The freeze in force, as its entry says (None when the log is not frozen)."""
        with self._view() as view:
            return freeze.current(view.txn, self._dbs)

    def session(self, session_id: str) -> SessionInfo | None:
        """Session `session_id`, with when and by what it was superseded (None: unknown)."""
        with self._view() as view:
            return sessions.info(sessions.Stored(view.txn, self._dbs), session_id)

    def session_by_token(self, digest: str) -> SessionInfo | None:
        """The session whose token has SHA-256 `digest` (hex), stale or not: check `stale()`."""
        with self._view() as view:
            return sessions.by_token(sessions.Stored(view.txn, self._dbs), digest)

    def epoch(self, name: str) -> int:
        """Agent `name`'s current epoch (0 before its first session or takeover)."""
        with self._view() as view:
            return sessions.epoch_of(sessions.Stored(view.txn, self._dbs), name)

    def sessions(self, name: str | None = None) -> list[SessionInfo]:
        """Every session the log holds (of agent `name` only, if given), by agent and epoch."""
        with self._view() as view:
            return list(sessions.every(view, name))

    def locks(self) -> list[LockInfo]:
        """Every lock record, in key order, each saying whether it binds now."""
        with self._view() as view:
            return list(locks.every(view, self.path, self.writer_id))

    def counted(self, key: str, window: float) -> int:
        """The weight limit `key` has counted in the last `window` seconds."""
        with self._view() as view:
            return limits.counted(view.txn, self._dbs, key, window, time.time())

    def last_action(self) -> int:
        """The id of the newest action (0 for none): ids are dense, so the newest N are the ids
        above `last_action() - N`."""
        with self._view() as view:
            return view.next_action() - 1

    def count(self, state: str) -> int:
        """How many actions are in `state` now, as the states index says (its cost grows with
        that number: call it off the event loop)."""
        with self._view() as view:
            return view.count(state)

    def verify(self, expect: tuple[int, str] | None = None, key: PublicKey | None = None) -> ChainReport:
        """Check every entry's hash and link, the recorded head, and every index against the
        chain; with `expect` (seq, hash), also that the log still holds that entry unchanged;
        with `key`, also every checkpoint's and prune's signature (store/verify_signed.py)."""
        try:
            with self._view() as view:
                report = check(view.txn, self._dbs, expect)
                return with_signatures(view.txn, self._dbs, key, report) if report.ok else report
        except lmdb.Error as e:
            raise StoreError(f"cannot read the log at {self.path}: {e}") from e

    def verify_recent(
        self, expect: tuple[int, str] | None = None, key: PublicKey | None = None
    ) -> ChainReport:
        """Check only what came after the last checkpoint (store/verify_recent.py): its cost
        grows with the entries written since, not with the log."""
        try:
            with self._view() as view:
                return check_recent(view.txn, self._dbs, key, expect)
        except lmdb.Error as e:
            raise StoreError(f"cannot read the log at {self.path}: {e}") from e

    def last_checkpoint(self) -> Entry | None:
        """The last checkpoint entry, as the checkpoint record names it (None when there is
        none, or it was pruned; Altered if the record names an entry that is no checkpoint)."""
        with self._view() as view:
            return checkpoints.last(view)

    # ---- writing -------------------------------------------------------------------------

    def start(self) -> None:
        """Start this process's writer: take its liveness lock, record the log's format if this
        version has not yet, recover dead writers' actions, then start the writer thread."""
        if self._readonly:
            raise StoreError("the log was opened read-only")
        self._lock.take()
        record_format(self._appender)
        attrs.fill(self._appender.commit)
        recover(self._appender)
        self._writer.start()

    @property
    def writing(self) -> bool:
        """True while this process's writer thread runs."""
        return self._writer.alive

    def observe_commits(self, observer: CommitObserver) -> None:
        """Tell `observer` how long each of this process's commits took (fsync included) and
        whether it failed; it runs on the writer thread, so it must be quick."""
        self._writer.observe(observer)

    def probe(self) -> None:
        """Write and sync one small record outside the chain (the meta key `probe`): StoreError
        if the log cannot be written now. For readiness checks when nothing else writes."""
        for _attempt in range(2):
            try:
                with self._env.begin(write=True) as txn:
                    stamp = canonical({"ts": time.time(), "writer": self.writer_id})
                    txn.put(PROBE, stamp, db=self._dbs[b"meta"])
                return
            except lmdb.MapResizedError:
                self._env.set_mapsize(0)
            except lmdb.Error as e:
                raise StoreError(f"cannot write the log at {self.path}: {e}") from e
        raise StoreError(f"cannot write the log at {self.path}: its map keeps being resized")

    def cursor(self, name: str) -> int:
        """The last entry the reader `name` has taken, as `set_cursor` recorded it (0 for none).
        `otlp`: the last entry a collector accepted; entries after it are not shipped yet."""
        with self._view() as view:
            raw = view.txn.get(CURSOR + name.encode(), db=self._dbs[b"meta"])
        if raw is None:
            return 0
        if len(raw) != 8:
            raise Altered(f"the cursor {name} is not a valid record")
        return int.from_bytes(bytes(raw), "big")

    def set_cursor(self, name: str, seq: int) -> None:
        """Record durably that the reader `name` has taken every entry up to `seq` (a meta
        record outside the chain); StoreError if the log cannot be written now."""
        for _attempt in range(2):
            try:
                with self._env.begin(write=True) as txn:
                    txn.put(CURSOR + name.encode(), seq.to_bytes(8, "big"), db=self._dbs[b"meta"])
                return
            except lmdb.MapResizedError:
                self._env.set_mapsize(0)
            except lmdb.Error as e:
                raise StoreError(f"cannot write the log at {self.path}: {e}") from e
        raise StoreError(f"cannot write the log at {self.path}: its map keeps being resized")

    def usage(self) -> Usage:
        """Bytes in use (pages, not the file's size), the most allowed, entries, and the oldest
        entry's time: a few statistics and one entry, whatever the log's length."""
        with self._view() as view:
            return usage(view.txn, self._dbs, self.max_size)

    def sweep_keys(self) -> Swept:
        """Delete expired idempotency keys and their stored replies, in short write
        transactions (store/sweep.py), then limit counts older than their window and locks
        that bind no more; StoreError if the log cannot be written."""
        swept = Swept()
        start: bytes | None = b""
        while start is not None:
            for _attempt in range(2):
                try:
                    with self._env.begin(write=True) as txn:
                        going, step = sweep_step(txn, self._dbs, start)
                    break
                except lmdb.MapResizedError:
                    self._env.set_mapsize(0)
                except lmdb.Error as e:
                    raise StoreError(f"cannot sweep expired keys in the log at {self.path}: {e}") from e
            else:
                raise StoreError(f"cannot write the log at {self.path}: its map keeps being resized")
            swept.add(step)
            start = going
        self._sweep_coordination()
        return swept

    def _sweep_coordination(self) -> None:
        """Delete limit counts older than their window and locks that bind no more, in short
        write transactions (outside the chain: neither is anything an entry says)."""
        at: bytes | None = b""
        while at is not None:
            with self._writing() as txn:
                at, _ = limits.sweep_step(txn, self._dbs, at, time.time())
        with self._writing() as txn:
            locks.sweep(View(txn, self._dbs), self.path, self.writer_id, time.time())

    @contextmanager
    def _writing(self) -> Iterator[lmdb.Transaction]:
        """One short write transaction outside the chain (StoreError if the log cannot be written)."""
        try:
            with self._env.begin(write=True) as txn:
                yield txn
        except lmdb.MapResizedError:
            self._env.set_mapsize(0)
            raise StoreError(f"cannot write the log at {self.path}: its map was resized; try again") from None
        except lmdb.Error as e:
            raise StoreError(f"cannot write the log at {self.path}: {e}") from e

    def pruned(self) -> Pruned:
        """Where the log starts, as its last prune left it (`NEVER` if it was never pruned)."""
        with self._view() as view:
            return view.pruned()

    def prune(
        self,
        policy: Retention,
        *,
        archive: Path | None = None,
        floor: int | None = None,
        sign: Callable[[bytes], str] | None = None,
        now: float | None = None,
    ) -> Entry | None:
        """One small step of retention, from a thread that may block: remove the oldest closed
        actions `policy` lets go (never past entry `floor`), writing them first to a segment
        under `archive` if given; return the signed prune entry, or None when there was
        nothing to prune. Call it again until it returns None."""
        if not self.writing:
            raise StoreError("the log writer is not running")
        now = time.time() if now is None else now
        with self._view() as view:
            used = usage(view.txn, self._dbs, self.max_size).used_bytes
            cut = prune.choose(view, policy, used, now, floor)
            if cut is None:
                return None
            segment = archived.write(archive, view, cut.begin, cut.end) if archive is not None else None

        def step(view: View) -> list[Record]:
            found = prune.record(view, cut, now, sign, segment)
            return [found] if found is not None else []

        results = self._appender.commit(step)
        if not results:
            return None
        if isinstance(results[0], StoreError):
            raise results[0]
        return results[0]

    def close(self) -> None:
        """Write what is queued, stop the writer and close the environment."""
        self._writer.stop()
        self._lock.release()
        self._env.close()

    async def append(self, record: Record) -> Entry:
        """Append a record and wait until it is durable on disk."""
        return await self._writer.append(record)

    def append_blocking(self, record: Record) -> Entry:
        """Append a record from a thread that may block (the CLI): return once it is durable."""
        return self._writer.append_blocking(record)

    def append_soon(self, record: Record) -> None:
        """Queue a record nobody waits for; it shares a commit within writer.LAZY_COMMIT, and
        the writer logs a failure to write it."""
        self._writer.append_soon(record)


def _database(env: lmdb.Environment, name: bytes, readonly: bool) -> Any:
    """One of the log's databases; None for one a later version added that a read-only open of
    an older airlock's log lacks."""
    try:
        return env.open_db(name, create=not readonly)
    except lmdb.NotFoundError:
        if readonly and name in ADDED:
            return None
        raise

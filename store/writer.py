"""This process's writer: one thread that batches queued records into one synced commit.

Callers on an event loop or on threads queue records and never wait on fsync themselves
(group commit). A record someone waits for is committed at once, together with whatever else
is queued; one nobody waits for may wait up to LAZY_COMMIT to share a commit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .append import Batch
from .entry import Entry
from .errors import StoreError
from .record import Record

logger = logging.getLogger(__name__)

_BATCH_MAX = 512
_STOP = object()

# How long a record nobody waits for may wait to share a commit.
LAZY_COMMIT = 0.005


@dataclass(frozen=True)
class _LoopWaiter:
    """An asyncio future waiting on the writer; resolved from the loop's own thread."""

    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Entry]


_Waiter = concurrent.futures.Future[Entry] | _LoopWaiter | None
_Result = Entry | StoreError

# Told of every commit on the writer thread: how long it took (fsync included) and the error
# that kept the whole batch out, if one did. Must be quick and must not raise.
CommitObserver = Callable[[float, StoreError | None], None]


def _resolve(results: list[tuple[asyncio.Future[Entry], _Result]]) -> None:
    """Hand each waiting future its entry or error (on the future's own loop)."""
    for fut, result in results:
        if fut.done():
            continue
        if isinstance(result, StoreError):
            fut.set_exception(result)
        else:
            fut.set_result(result)


class Writer:
    """The writer thread: `commit` writes one batch durably and says how each record went."""

    def __init__(self, commit: Callable[[Batch], list[_Result]]):
        self._commit_batch = commit
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._observers: list[CommitObserver] = []

    def observe(self, observer: CommitObserver) -> None:
        """Tell `observer` of every commit from now on (on this thread: it must be quick)."""
        self._observers.append(observer)

    @property
    def alive(self) -> bool:
        """True while the thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the thread."""
        self._thread = threading.Thread(target=self._run, name="airlock-log-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Write what is queued and stop the thread."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None

    def _running(self) -> None:
        if self._thread is None:
            raise StoreError("the log writer is not running")

    async def append(self, record: Record) -> Entry:
        """Append a record and wait until it is durable on disk."""
        self._running()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Entry] = loop.create_future()
        self._queue.put((record, _LoopWaiter(loop, fut)))
        return await fut

    def append_blocking(self, record: Record) -> Entry:
        """Append a record from a thread that may block: return once it is durable."""
        self._running()
        fut: concurrent.futures.Future[Entry] = concurrent.futures.Future()
        self._queue.put((record, fut))
        return fut.result()

    def append_soon(self, record: Record) -> None:
        """Queue a record nobody waits for; the writer logs a failure to write it."""
        self._running()
        self._queue.put((record, None))

    def _run(self) -> None:
        # Records someone waits for are committed at once, together with whatever else is queued.
        # Records nobody waits for (reads, outcomes) may wait up to LAZY_COMMIT for company, so that
        # at low concurrency they share the next waited-for commit instead of costing an fsync each.
        lazy: list[tuple[Record, _Waiter]] = []
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

    def _drain(self, first: Any) -> tuple[list[tuple[Record, _Waiter]], bool]:
        """The first item and everything queued behind it; True if a stop was among them."""
        batch: list[tuple[Record, _Waiter]] = []
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

    def _commit(self, batch: list[tuple[Record, _Waiter]]) -> None:
        results: list[_Result] = []
        records = [r for r, _ in batch]
        failed: StoreError | None = None
        started = time.perf_counter()
        try:
            results = self._commit_batch(lambda _view: records)
        except Exception as e:
            # The writer thread must outlive any failure, or every later append would hang.
            failed = e if isinstance(e, StoreError) else StoreError(f"cannot write the log: {e!r}")
            results = [failed] * len(batch)
        elapsed = time.perf_counter() - started
        for observer in self._observers:
            try:
                observer(elapsed, failed)
            except Exception:
                logger.exception("a commit observer failed")
        # One wake-up per event loop for the whole batch, not one per waiter.
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Entry], _Result]]] = {}
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
        for loop, resolved in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
                loop.call_soon_threadsafe(_resolve, resolved)

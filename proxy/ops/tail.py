"""Following the log: one thread reads each new entry once and hands it to its readers.

The thread wakes when this process commits, and at least once a `poll` for entries other
processes wrote (`airlock resolve`, `airlock mcp`). It starts at the log's head: readers see the
entries written from then on. Reading is on the thread, never on the event loop, and costs what
the new entries cost, whatever the log's length.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable

from store import Entry, Log, StoreError

logger = logging.getLogger(__name__)

CHUNK = 256  # entries read in one transaction, and handed on together
# How long the tail lets entries gather after a commit wakes it: an action's intent and outcome
# are usually handed on together, and the event loop is woken once for them, not twice.
GATHER = 0.01

Reader = Callable[[list[Entry]], None]


class Tail:
    """A thread that follows the log and hands each batch of new entries to every reader."""

    def __init__(self, log: Log, *, poll: float = 1.0, gather: float = GATHER):
        self.log = log
        self.poll = poll
        self.gather = gather
        self.seq = 0  # the last entry handed on
        self._readers: list[Reader] = []
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        log.observe_commits(lambda _seconds, _error: self._wake.set())

    def follow(self, reader: Reader) -> None:
        """Hand `reader` every batch of new entries (on the tail's thread: it must be quick)."""
        self._readers.append(reader)

    def start(self) -> None:
        """Start following from the log's head as it is now."""
        self.seq = self.log.head()[0]
        self._thread = threading.Thread(target=self._run, name="airlock-log-tail", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and wait for it."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        failing = False
        while not self._stopping.is_set():
            if self._wake.wait(self.poll):
                self._stopping.wait(self.gather)
            self._wake.clear()
            try:
                self._catch_up()
            except StoreError as e:
                # Said once, not at every poll; the entries are read again when the log reads.
                if not failing:
                    logger.error("airlock: following the log stopped at entry %d: %s", self.seq, e)
                failing = True
                continue
            failing = False

    def _catch_up(self) -> None:
        while not self._stopping.is_set():
            # The generator is dropped at once, and with it its read transaction.
            batch = list(itertools.islice(self.log.entries(self.seq + 1), CHUNK))
            if not batch:
                return
            for reader in self._readers:
                try:
                    reader(batch)
                except Exception:
                    logger.exception("airlock: a reader of the log failed")
            self.seq = batch[-1].seq
            if len(batch) < CHUNK:
                return

"""Upkeep: the log's periodic chores (sweeping expired keys, watching the disk, pruning), run
on one background thread so that nothing whose cost grows with the log runs on the event loop.

Each job runs every `seconds`, the first time one period after it is registered (or sooner,
if it asks). A job that raises is logged and runs again at its next time; it never stops the
thread nor the other jobs. Jobs run one after another, never two at once, so a job that is
slow delays the others rather than racing them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass
class Job:
    """A chore run every `seconds`, next at `due` (a `time.monotonic()` time)."""

    name: str
    seconds: float
    run: Callable[[], object]
    due: float


class Upkeep:
    """One thread that runs registered jobs at their periods until stopped."""

    def __init__(self) -> None:
        self._jobs: list[Job] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def jobs(self) -> list[str]:
        """The names of the registered jobs, in the order they were registered."""
        with self._lock:
            return [job.name for job in self._jobs]

    def every(
        self, name: str, seconds: float, fn: Callable[[], object], *, first: float | None = None
    ) -> None:
        """Run `fn` every `seconds` on the upkeep thread, the first time `first` seconds from
        now (default: one period)."""
        if seconds <= 0:
            raise ValueError(f"upkeep job {name!r}: its period must be positive, not {seconds}")
        with self._lock:
            self._jobs.append(
                Job(name, seconds, fn, time.monotonic() + (seconds if first is None else first))
            )
        self._wake.set()

    def start(self) -> None:
        """Start the thread (once)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="airlock-upkeep", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and wait for it; a job running now is finished first."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def run_due(self) -> None:
        """Run every job whose time has come (what the thread does at each wake)."""
        now = time.monotonic()
        with self._lock:
            due = [job for job in self._jobs if job.due <= now]
        for job in due:
            if self._stopping.is_set():
                return
            try:
                job.run()
            except Exception:
                logger.exception("airlock: upkeep job %s failed; it runs again in %gs", job.name, job.seconds)
            job.due = time.monotonic() + job.seconds

    def _next_wait(self) -> float:
        with self._lock:
            if not self._jobs:
                return 3600.0
            return max(0.0, min(job.due for job in self._jobs) - time.monotonic())

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self._next_wait())
            self._wake.clear()
            if self._stopping.is_set():
                return
            self.run_due()

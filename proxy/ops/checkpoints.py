"""Writing signed checkpoints while the proxy runs: every `every` entries or `interval` seconds,
whichever comes first, and never when nothing was written since the last one.

A thread of its own writes them: the writer's commit observer only wakes it, so the gate never
waits on a checkpoint, and a slow anchor (`--checkpoint-to`) delays checkpoints, not requests.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from store import Entry, Log, Signer, StoreError, checkpoint_record

from .anchor import Anchor
from .datadir import DataDir

logger = logging.getLogger(__name__)


def signer_for(data: DataDir) -> Signer:
    """The data dir's signing key (`DATA/signing.key`), created on first use."""
    return Signer.load_or_create(data.root)


@dataclass(frozen=True)
class Cadence:
    """When to write a checkpoint: after `every` new entries or `interval` seconds with at least
    one new entry (0 turns either off)."""

    every: int = 1000
    interval: float = 300.0

    @property
    def active(self) -> bool:
        """True when checkpoints are written at all."""
        return self.every > 0 or self.interval > 0

    def due(self, new: int, since: float) -> bool:
        """True when `new` entries written over `since` seconds call for a checkpoint."""
        if new <= 0:
            return False
        return (self.every > 0 and new >= self.every) or (self.interval > 0 and since >= self.interval)


class Checkpoints:
    """The thread that writes checkpoints to one log and hands each, once durable, to `anchor`."""

    def __init__(self, log: Log, signer: Signer, cadence: Cadence, anchor: Anchor | None = None):
        self.log = log
        self.signer = signer
        self.cadence = cadence
        self.anchor = anchor
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._last = (0, time.time())  # the last checkpoint's seq and time

    def start(self) -> None:
        """Start writing checkpoints (nothing happens when the cadence is off)."""
        if not self.cadence.active or self._thread is not None:
            return
        try:
            last = self.log.last_checkpoint()
        except StoreError as e:
            logger.error("airlock: %s; checkpoints start over from the head", e)
            last = None
        if last is not None:
            self._last = (last.seq, last.ts)
        self.log.observe_commits(self._committed)
        self._thread = threading.Thread(target=self._run, name="airlock-checkpoints", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and close the anchor (before the log closes)."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.anchor is not None:
            self.anchor.close()

    def write_if_due(self) -> Entry | None:
        """Write a checkpoint now if the cadence calls for one; the entry written, if any."""
        head = self.log.head()[0]
        seq, ts = self._last
        if not self.cadence.due(head - seq, time.time() - ts):
            return None
        entry = self.log.append_blocking(checkpoint_record(self.signer.public_text(), self.signer.sign))
        self._last = (entry.seq, entry.ts)
        if self.anchor is not None:
            self.anchor.send(entry)
        return entry

    def _committed(self, seconds: float, error: StoreError | None) -> None:
        # On the writer thread: only wake ours (which reads the head and decides).
        self._wake.set()

    def _wait(self) -> float | None:
        # Until the interval is up; once it is, until our next commit or another interval (a
        # log nobody writes to costs one read of its head per interval).
        if self.cadence.interval <= 0:
            return None
        left = self._last[1] + self.cadence.interval - time.time()
        return left if left > 0 else self.cadence.interval

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self._wait())
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                self.write_if_due()
            except StoreError as e:
                logger.error("airlock: a checkpoint was not written: %s", e)
            except Exception:
                logger.exception("airlock: a checkpoint was not written")

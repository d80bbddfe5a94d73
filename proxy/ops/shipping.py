"""Shipping the log to an OpenTelemetry collector (`airlock run --otlp-endpoint URL`).

A thread of its own, never the event loop, reads the entries after the last one the collector
accepted and exports them in batches with the official OTLP/HTTP exporter. A batch that fails is
sent again, with a growing pause, until the collector takes it: entries wait in the log, none is
dropped. The cursor (`Log.cursor("otlp")`) moves only once the collector has accepted a batch,
and is durable, so a restart of Airlock or of the collector resumes where shipping stopped. A
crash between the collector's answer and the cursor's write sends that batch again: every
record carries `airlock.seq`, by which a receiver drops what it already has.
"""

from __future__ import annotations

import itertools
import logging
import threading

from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs.export import LogRecordExportResult

from store import Log, StoreError

from . import otel

logger = logging.getLogger(__name__)

CURSOR = "otlp"  # the name of the shipped cursor: the last entry the collector accepted
BATCH = 512  # entries in one export request
FIRST_PAUSE = 0.5  # seconds before a failed batch is sent again; doubles up to LONGEST_PAUSE
LONGEST_PAUSE = 30.0
GATHER = 0.05  # after a commit wakes the shipper, let the entries around it gather
GRACE = 2.0  # seconds a stop waits for an export under way before it cuts the exporter's retries


class Shipper:
    """A thread that ships every entry of `log` to the collector at `endpoint`, in order, once."""

    def __init__(self, log: Log, endpoint: str, *, poll: float = 1.0):
        self.log = log
        self.endpoint = endpoint
        self.poll = poll
        self.seq = 0  # the last entry the collector accepted
        self.shipped = 0  # entries this process shipped
        self.failures = 0  # exports that failed (and were tried again)
        self._exporter = OTLPLogExporter(endpoint=endpoint)
        self._resource = otel.resource()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        log.observe_commits(lambda _seconds, _error: self._wake.set())

    def start(self) -> None:
        """Start shipping after the last entry the collector accepted."""
        self.seq = self.log.cursor(CURSOR)
        self._thread = threading.Thread(target=self._run, name="airlock-otlp-shipper", daemon=True)
        self._thread.start()
        logger.info("airlock: shipping the log to %s from entry %d", self.endpoint, self.seq + 1)

    def stop(self) -> None:
        """Stop after the export under way (or, past GRACE, cut its retries) and record the cursor."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(GRACE)
            self._exporter.shutdown()
            self._thread.join()
            self._thread = None
        else:
            self._exporter.shutdown()

    def lag(self) -> int:
        """Entries written but not yet accepted by the collector."""
        return max(self.log.head()[0] - self.seq, 0)

    def _run(self) -> None:
        pause = 0.0
        recorded = self.seq
        while not self._stopping.is_set():
            if pause:
                self._stopping.wait(pause)
            try:
                if recorded != self.seq:
                    self.log.set_cursor(CURSOR, self.seq)
                    recorded = self.seq
                batch = list(itertools.islice(self.log.entries(self.seq + 1), BATCH))
            except StoreError as e:
                pause = self._failed(pause, f"the log cannot be read or written here: {e}")
                continue
            if not batch:
                if self._wake.wait(self.poll):
                    self._stopping.wait(GATHER)
                self._wake.clear()
                continue
            if self._stopping.is_set():
                break
            result = self._exporter.export([otel.log_record(e, self._resource) for e in batch])
            if result is not LogRecordExportResult.SUCCESS:
                where = f"entries {batch[0].seq}-{batch[-1].seq} were not accepted by {self.endpoint}"
                pause = self._failed(pause, f"{where}; they wait in the log and are sent again")
                continue
            if pause:
                logger.info("airlock: shipping to %s again (from entry %d)", self.endpoint, batch[0].seq)
            pause = 0.0
            self.seq = batch[-1].seq
            self.shipped += len(batch)
        try:
            if recorded != self.seq:
                self.log.set_cursor(CURSOR, self.seq)
        except StoreError as e:
            logger.error("airlock: the shipped cursor stayed at entry %d: %s", recorded, e)

    def _failed(self, pause: float, why: str) -> float:
        # Said once per outage, not at every try.
        if not pause:
            logger.warning("airlock: shipping the log stalls: %s", why)
        self.failures += 1
        return min(max(pause * 2, FIRST_PAUSE), LONGEST_PAUSE)

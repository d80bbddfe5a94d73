"""Entries of a time window, read in order and written out as they are read (`airlock export`).

Entry times do not decrease along the chain (each is taken as its entry is written), so the
first entry of a window is found by binary search on sequence numbers, reading one entry a
step: what comes before `since` is never read. The window's entries are then read a chunk at a
time, each chunk in a read transaction of its own, and written before the next is read, so
memory does not grow with the window. The window ends at the head the export began with.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import BinaryIO

import orjson

from store import Entry, Log

CHUNK = 512  # entries read in one transaction (and, for OTLP, one ExportLogsServiceRequest)


def between(log: Log, since: float | None, until: float | None) -> Iterator[Entry]:
    """The entries written from `since` to `until` (Unix times, both included; None: no bound)."""
    head, _ = log.head()
    seq = first_since(log, since, head) if since is not None else 1
    while seq <= head:
        chunk = list(itertools.islice(log.entries(seq), CHUNK))
        for entry in chunk:
            if entry.seq > head or (until is not None and entry.ts > until):
                return
            if since is None or entry.ts >= since:
                yield entry
        if len(chunk) < CHUNK:
            return
        seq = chunk[-1].seq + 1


def first_since(log: Log, since: float, head: int) -> int:
    """The number of the first entry written at or after `since` (head + 1 if none)."""
    low, high = 1, head + 1
    while low < high:
        middle = (low + high) // 2
        found = _at_or_after(log, middle)
        if found is None or found.seq > head or found.ts >= since:
            high = middle
        else:
            low = found.seq + 1
    return low


def _at_or_after(log: Log, seq: int) -> Entry | None:
    # A pruned log has gaps: the entry at `seq`, or the first one after it.
    found = list(itertools.islice(log.entries(seq), 1))
    return found[0] if found else None


def write_jsonl(entries: Iterator[Entry], out: BinaryIO) -> int:
    """Each entry as one JSON line, as `airlock show --json` prints it (hashes included); returns
    how many were written."""
    written = 0
    for entry in entries:
        out.write(orjson.dumps(entry.as_dict()) + b"\n")
        written += 1
    return written


def write_otlp(entries: Iterator[Entry], out: BinaryIO) -> int:
    """Entries as OTLP/JSON, one ExportLogsServiceRequest of up to CHUNK records a line (what an
    OpenTelemetry collector's file receivers read); returns how many were written."""
    from . import otel  # OpenTelemetry loads only for this format

    where = otel.resource()
    written = 0
    while chunk := list(itertools.islice(entries, CHUNK)):
        out.write(otel.otlp_json(chunk, where).encode() + b"\n")
        written += len(chunk)
    return written


FORMATS: dict[str, Callable[[Iterator[Entry], BinaryIO], int]] = {"jsonl": write_jsonl, "otlp": write_otlp}

"""Checking an archive (store/archive.py): each segment's lines by hash and link, the segments
end to end, each segment's SHA-256 against the prune entry that recorded it, and, joined to
the live log, that the archive ends where the log starts and holds the entries it kept."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .archive import lines, segments, unline
from .chain import GENESIS, link
from .checkpoints import SIGNED_KINDS
from .entry import Entry
from .errors import StoreError
from .pruned import PRUNE
from .verify_indexes import Bad
from .verify_signed import check_signature

if TYPE_CHECKING:
    from .log import Log


@dataclass(frozen=True)
class ArchiveReport:
    """What checking an archive found: the entries it holds and the first problem, if any."""

    first: int = 0
    last: int = 0
    segments: int = 0
    reason: str = ""

    @property
    def ok(self) -> bool:
        """True when the archive (and its join to the log, if asked) verified."""
        return not self.reason


class _Bad(Exception):
    pass


def check_archive(
    directory: Path, live: Log | None = None, key: Ed25519PublicKey | None = None
) -> ArchiveReport:
    """Check the archive under `directory` on its own, and joined to `live` if given; with
    `key`, also the signature of every checkpoint and prune entry in it."""
    state = _Pass(live, key)
    try:
        found = segments(directory)
        if live is not None:
            # A segment from where the log still starts was written by a prune that never
            # committed (the next one replaces it): its entries are in the log.
            found = [f for f in found if f[0] < live.pruned().start]
        if not found:
            raise _Bad(f"there are no archive segments in {directory}")
        for first, last, path in found:
            state.segment(first, last, path)
        state.digests()
        if live is not None:
            state.joined(live)
    except _Bad as bad:
        return ArchiveReport(state.first, state.expected - 1, state.count, str(bad))
    except (OSError, EOFError, StoreError) as e:
        return ArchiveReport(state.first, state.expected - 1, state.count, f"cannot read the archive: {e}")
    return ArchiveReport(state.first, state.expected - 1, state.count)


class _Pass:
    """One pass over the segments in order."""

    def __init__(self, live: Log | None, key: Ed25519PublicKey | None):
        self.key = key
        self.first = 0
        self.expected = 0
        self.prev = ""
        self.count = 0
        self.files: dict[str, str] = {}  # segment file -> its SHA-256
        self.recorded: dict[str, tuple[str, int]] = {}  # file -> (SHA-256, prune entry) as recorded
        self.islands = live.pruned().islands if live is not None else {}
        self.found_islands: dict[int, str] = {}

    def segment(self, first: int, last: int, path: Path) -> None:
        if self.count and first != self.expected:
            raise _Bad(
                f"segment {path.name} starts at entry {first}; the one before ends at {self.expected - 1}"
            )
        if not self.count:
            self.first, self.expected = first, first
        self.files[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
        for text in lines(path):
            self._line(path.name, text)
        if self.expected != last + 1:
            raise _Bad(f"segment {path.name} ends at entry {self.expected - 1}, not {last}")
        self.count += 1

    def _line(self, name: str, text: bytes) -> None:
        seq = self.expected
        try:
            prev, digest, body = unline(text)
            fields = orjson.loads(body)
            if not isinstance(fields, dict):
                raise ValueError("its entry is not a JSON object")
        except ValueError as e:
            raise _Bad(f"{name}: the line for entry {seq} is not an archived entry ({e})") from None
        if fields.get("seq") != seq:
            raise _Bad(f"{name}: entry {seq} was altered or is missing (found entry {fields.get('seq')})")
        if link(prev, body) != digest:
            raise _Bad(f"{name}: entry {seq} was altered: its hash does not match its contents")
        if (self.prev or (GENESIS if seq == 1 else prev)) != prev:
            raise _Bad(f"{name}: entry {seq} does not link to entry {seq - 1}")
        if fields.get("kind") == PRUNE and fields.get("action") is None:
            self._record(fields)
        if self.key is not None and fields.get("kind") in SIGNED_KINDS and fields.get("action") is None:
            try:
                check_signature(Entry.parse(prev.encode() + digest.encode() + body), self.key)
            except (Bad, ValueError) as e:
                raise _Bad(f"{name}: {e}") from None
        if seq in self.islands:
            self.found_islands[seq] = digest
        self.prev, self.expected = digest, seq + 1

    def _record(self, fields: dict[str, Any]) -> None:
        data = fields.get("data")
        made = data.get("archive") if isinstance(data, dict) else None
        if isinstance(made, dict) and isinstance(made.get("file"), str):
            self.recorded[made["file"]] = (str(made.get("sha256")), int(fields["seq"]))

    def digests(self) -> None:
        for name, (digest, by) in self.recorded.items():
            if name not in self.files:
                if int(name.split("-")[1]) >= self.first:
                    raise _Bad(f"segment {name}, which prune entry {by} archived, is missing")
                continue  # older than the archive's first segment: not part of this archive
            if self.files[name] != digest:
                raise _Bad(
                    f"segment {name} was altered: its SHA-256 is not the one prune entry {by} recorded"
                )

    def joined(self, live: Log) -> None:
        kept = live.pruned()
        for entry in live.entries(kept.start):
            if entry.kind == PRUNE and entry.action is None:
                self._record(entry.body())
        unchecked = [name for name in self.files if name not in self.recorded]
        self.digests()
        if unchecked and max(unchecked) == max(self.files):
            raise _Bad(f"segment {max(unchecked)} is recorded by no prune entry")
        if self.expected != kept.start or self.prev != kept.continues:
            raise _Bad(
                f"the archive ends at entry {self.expected - 1}, but the log continues from entry "
                f"{kept.start - 1} (hash {kept.continues[:12]}): segments are missing or were altered"
            )
        for seq, digest in self.islands.items():
            if seq >= self.first and self.found_islands.get(seq) != digest:
                raise _Bad(f"entry {seq}, which the log kept when it was pruned, differs from the archive")

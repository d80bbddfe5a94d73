"""Archives: the entries a prune removes, written out first as gzip-compressed JSON lines.

A segment holds the entries from where the log started to the prune's cut, in order, each line
`{"prev":PREV,"hash":HASH,"entry":BODY}` with BODY the entry's stored bytes verbatim, so a line
is checked by hashing PREV and BODY again, whatever a JSON library would make of them. The
segment is durable (synced, renamed into place, the directory synced) before the prune that
removes its entries commits, and the prune entry names its file and SHA-256. Segments join end
to end: together with the live log they are the chain from entry 1 (or from the first entry
archived).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .chain import unseal
from .errors import StoreError
from .stored import as_bytes, seq_key
from .view import View

DIR_MODE = 0o700
FILE_MODE = 0o600
_NAME = re.compile(r"entries-(\d{12})-(\d{12})\.jsonl\.gz")
_PREFIX = len(b'{"prev":"') + 64 + len(b'","hash":"') + 64 + len(b'","entry":')


@dataclass(frozen=True)
class Segment:
    """An archive file: the entries `first` to `last` and the SHA-256 of its bytes."""

    file: str
    first: int
    last: int
    sha256: str

    def as_dict(self) -> dict[str, Any]:
        """What a prune entry records of the segment it archived."""
        return {"file": self.file, "first": self.first, "last": self.last, "sha256": self.sha256}


def name(first: int, last: int) -> str:
    """The file name of the segment of entries `first` to `last`."""
    return f"entries-{first:012d}-{last:012d}.jsonl.gz"


def line(raw: bytes) -> bytes:
    """One stored entry as its archive line."""
    prev, digest, body = unseal(raw)
    return b'{"prev":"' + prev.encode() + b'","hash":"' + digest.encode() + b'","entry":' + body + b"}\n"


def unline(text: bytes) -> tuple[str, str, bytes]:
    """An archive line's previous hash, hash and entry body; ValueError if it is not one."""
    text = text.rstrip(b"\n")
    if (
        len(text) < _PREFIX + 3
        or not text.startswith(b'{"prev":"')
        or text[9 + 64 : 9 + 64 + 10] != b'","hash":"'
        or text[_PREFIX - 10 : _PREFIX] != b'","entry":'
        or not text.endswith(b"}")
    ):
        raise ValueError("it is not an archived entry line")
    return text[9 : 9 + 64].decode(), text[9 + 64 + 10 : 9 + 128 + 10].decode(), text[_PREFIX:-1]


def write(directory: Path, view: View, first: int, end: int) -> Segment:
    """Write the entries `first` to `end - 1` as a segment under `directory`, durably; a
    segment an unfinished earlier prune left from the same start is replaced."""
    try:
        directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        for stale in directory.glob(f"entries-{first:012d}-*.jsonl.gz"):
            stale.unlink()
        final = directory / name(first, end - 1)
        making = directory / f".{final.name}.tmp"
        digest = hashlib.sha256()
        fd = os.open(making, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, FILE_MODE)
        with os.fdopen(fd, "wb") as out:
            tee = _Hashing(out, digest)
            with gzip.GzipFile(fileobj=tee, mode="wb", mtime=0) as packed:
                expected = first
                cur = view.txn.cursor(db=view.dbs[b"entries"])
                if cur.set_range(seq_key(first)):
                    for key, raw in cur:
                        seq = int.from_bytes(as_bytes(key), "big")
                        if seq >= end:
                            break
                        if seq != expected:
                            raise StoreError(f"cannot archive: entry {expected} is missing from the log")
                        packed.write(line(as_bytes(raw)))
                        expected += 1
                if expected != end:
                    raise StoreError(f"cannot archive: entry {expected} is missing from the log")
            out.flush()
            os.fsync(out.fileno())
        os.rename(making, final)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        raise StoreError(f"cannot write the archive in {directory}: {e}") from e
    return Segment(final.name, first, end - 1, digest.hexdigest())


class _Hashing:
    """A file wrapper that hashes what is written through it."""

    def __init__(self, out: Any, digest: Any):
        self._out = out
        self._digest = digest

    def write(self, data: bytes) -> int:
        self._digest.update(data)
        return int(self._out.write(data))

    def flush(self) -> None:
        self._out.flush()


def segments(directory: Path) -> list[tuple[int, int, Path]]:
    """The segment files under `directory`, by first entry (first, last, path); StoreError for a
    directory that cannot be read."""
    try:
        found = []
        for path in directory.iterdir():
            matched = _NAME.fullmatch(path.name)
            if matched:
                found.append((int(matched[1]), int(matched[2]), path))
    except OSError as e:
        raise StoreError(f"cannot read the archive in {directory}: {e}") from e
    return sorted(found)


def lines(path: Path) -> Iterator[bytes]:
    """The lines of one segment, decompressed as they are read."""
    with gzip.open(path, "rb") as packed:
        yield from packed

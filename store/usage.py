"""How much of its room the log uses, read in constant time: page counts from LMDB's own
statistics, the number of entries, and the first entry's time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lmdb

from .stored import as_bytes, parsed_entry

META_PAGES = 2  # LMDB's two meta pages, at the start of every file


@dataclass(frozen=True)
class Usage:
    """The log's size in pages in use (not the file's size, which keeps freed pages), the
    largest it may grow to, its entries, and when its oldest entry was written."""

    used_bytes: int
    max_bytes: int
    entries: int
    oldest_ts: float | None

    @property
    def used_fraction(self) -> float:
        """The part of the allowed size in use (1.0: full)."""
        return self.used_bytes / self.max_bytes if self.max_bytes > 0 else 0.0


def usage(txn: lmdb.Transaction, dbs: dict[bytes, Any], max_bytes: int) -> Usage:
    """The log's usage as `txn` sees it: a statistic per database and one entry read."""
    pages = META_PAGES + _pages(txn.stat())  # the main database names the others
    page_size = 0
    for db in dbs.values():
        stat = txn.stat(db)
        pages += _pages(stat)
        page_size = stat["psize"]
    entries = dbs[b"entries"]
    cur = txn.cursor(db=entries)
    oldest = None
    if cur.first():
        oldest = parsed_entry(int.from_bytes(as_bytes(cur.key()), "big"), as_bytes(cur.value())).ts
    return Usage(pages * (page_size or txn.stat()["psize"]), max_bytes, txn.stat(entries)["entries"], oldest)


def _pages(stat: Any) -> int:  # lmdb's statistics of one database
    return int(stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"])

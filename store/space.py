"""How much of the log's file is in use: the pages its databases hold (freed pages, which
LMDB reuses, are not counted), read from the databases' own statistics at no cost."""

from __future__ import annotations

from typing import Any

import lmdb


def used_bytes(env: lmdb.Environment, txn: lmdb.Transaction, dbs: dict[bytes, Any]) -> int:
    """The bytes of pages the log's databases hold now, as `txn` sees them."""
    main = env.stat()
    pages = main["branch_pages"] + main["leaf_pages"] + main["overflow_pages"]
    for db in dbs.values():
        stat = txn.stat(db)
        pages += stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
    return int(pages * main["psize"])

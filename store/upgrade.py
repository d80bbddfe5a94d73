"""Recording the log's format the first time a writer of this version opens it (store/formats.py):
a new log is current from entry 1; an older airlock's log gets a `format` entry where it is
upgraded."""

from __future__ import annotations

from . import formats
from .append import Appender
from .errors import StoreError
from .record import Record
from .stored import as_bytes, parsed_entry
from .view import View


def record_format(appender: Appender) -> None:
    """Record the format marker, and the upgrade entry if the log needs one."""
    bad = [r for r in appender.commit(_format_records) if isinstance(r, StoreError)]
    if bad:
        raise bad[0]


def _format_records(view: View) -> list[Record]:
    txn, meta = view.txn, view.dbs[b"meta"]
    if txn.get(formats.META_KEY, db=meta) is not None:
        return []
    head = view.head()[0]
    if head:
        # No marker yet: the chain says what the log holds (once per log, so a full scan).
        for key, raw in txn.cursor(db=view.dbs[b"entries"]):
            entry = parsed_entry(int.from_bytes(as_bytes(key), "big"), as_bytes(raw))
            if formats.is_upgrade(entry.body()):
                txn.put(formats.META_KEY, formats.marker(entry.seq), db=meta)
                return []
            if entry.summary or entry.claim is not None or entry.settle is not None:
                break  # current from the start: only the marker was lost
        else:
            return [Record(kind=formats.KIND, data=formats.upgrade_data(head))]
    txn.put(formats.META_KEY, formats.marker(1), db=meta)
    return []

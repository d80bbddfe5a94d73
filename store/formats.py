"""The log's format: from which entry on the chain carries everything the indexes show.

Logs written before entries carried their summary fields, key claims and settlements (format 1)
are upgraded in place: the first writer of this version to open one appends a `format` entry,
and every entry from it on is in the current format. The entry is hashed like any other, so
where the old entries end is known from the chain itself; the meta database's `format` record
only repeats it for the writer, and `verify` checks that the two agree. A log this version
started holds current entries from entry 1 and needs no such entry.
"""

from __future__ import annotations

from typing import Any

import orjson

from .chain import canonical

VERSION = 2
KIND = "format"  # the kind of the entry that marks the upgrade
META_KEY = b"format"
NEW_FIELDS = ("summary", "claim", "settle")  # what only current entries carry


def marker(since: int) -> bytes:
    """The meta record saying the entries from `since` on are in the current format."""
    return canonical({"version": VERSION, "since": since})


def since_of(raw: bytes) -> int | None:
    """The first current-format entry a meta record names; None if it is not a valid record."""
    try:
        found = orjson.loads(raw)
    except ValueError:
        return None
    if not isinstance(found, dict) or found.get("version") != VERSION:
        return None
    since = found.get("since")
    return since if isinstance(since, int) and not isinstance(since, bool) and since >= 1 else None


def is_upgrade(fields: dict[str, Any]) -> bool:
    """True for the body of the entry that marks a log's upgrade."""
    return fields.get("kind") == KIND and fields.get("action") is None


def upgrade_data(legacy: int) -> dict[str, Any]:
    """What the upgrade entry records: the format, and how many entries came before it."""
    return {"version": VERSION, "legacy_entries": legacy}

"""The action index as the chain implies it: one step per entry.

The writer keeps the index with `advance`, and `verify` and every reader derive it from the
chain with the same function, so a stored index record that differs from what its entries
say can only mean the file was altered.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .entry import Entry


def advance(index: dict[str, Any] | None, entry: Entry) -> dict[str, Any]:
    """The action's index record after `entry` (`index` is None before its first entry)."""
    if index is None:
        index = {"id": entry.action, "ts": entry.ts, "writer": entry.writer, "entries": []}
    index.update(entry.summary)
    index["entries"].append(entry.seq)
    index["updated"] = entry.ts
    if entry.state is not None:
        index["state"] = entry.state
    if entry.claim is not None:
        index["key"] = entry.claim["key"]
    return index


def derive(entries: Iterable[Entry]) -> dict[str, Any] | None:
    """The index record of one action from all its entries, oldest first."""
    index: dict[str, Any] | None = None
    for entry in entries:
        index = advance(index, entry)
    return index


def first_difference(stored: dict[str, Any], derived: dict[str, Any]) -> str:
    """The first field in which a stored index record differs from the derived one, said plainly."""
    for name in sorted(set(stored) | set(derived)):
        if name not in derived:
            return f"its index has {name}={_short(stored[name])}, which no entry set"
        if name not in stored:
            return f"its index lacks {name} (the chain says {_short(derived[name])})"
        if stored[name] != derived[name]:
            return f"its index says {name}={_short(stored[name])}, the chain says {_short(derived[name])}"
    return "its index matches"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."

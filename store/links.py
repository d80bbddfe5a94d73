"""An action's entries checked where they sit in the chain, reading only their neighbours: what
`airlock show` checks instead of reading the chain to its end.

Each listed entry must be sealed (its hash covers its bytes), about the action, and linked both
ways: its `prev` is the hash of the entry before it, and the entry after it names its hash. An
entry edited and sealed again breaks a link; one dropped from the action's list is not seen
here (only `verify`, which reads the whole chain, sees that).
"""

from __future__ import annotations

from .entry import Entry
from .errors import Altered
from .view import View


def linked(view: View, entries: list[Entry]) -> None:
    """Refuse (Altered) unless each of `entries` links to the entries around it that the log
    holds (after pruning, an entry below the kept chain may have no neighbour to check)."""
    for entry in entries:
        before = view.entry(entry.seq - 1) if entry.seq > 1 else None
        if before is not None and before.hash != entry.prev:
            raise Altered(
                f"entry {entry.seq} does not link to entry {before.seq} (its prev hash was changed)"
            )
        after = view.entry(entry.seq + 1)
        if after is not None and after.prev != entry.hash:
            raise Altered(f"entry {after.seq} does not link to entry {entry.seq} (one of them was rewritten)")
        if after is None and view.head() != (entry.seq, entry.hash):
            head = view.head()[0]
            if head <= entry.seq:
                raise Altered(f"entry {entry.seq} is not the log's head, which records entry {head}")
            kept = view.pruned()
            if entry.seq < kept.start and kept.islands.get(entry.seq) != entry.hash:
                # Below where the pruned log starts: only the prune entry vouches for it.
                raise Altered(f"entry {entry.seq} is not an entry the last prune (entry {kept.entry}) kept")

"""Retention on the upkeep thread: prune the oldest closed actions while the policy asks, in
small steps (each its own write transaction, so the writer interleaves), archiving what goes
first if asked, and never past what the OpenTelemetry shipper has yet to ship."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from store import Log, Retention, removed_bytes

logger = logging.getLogger("airlock")

STEPS_PER_RUN = 50  # then the other chores get their turn; the rest waits for the next run
RUN_SECONDS = 10.0  # how often retention looks for something to prune


class Retainer:
    """Keeps the log within `policy`: each `run` prunes until the policy keeps what is left (or
    STEPS_PER_RUN steps), writing each step's entries to `archive` first when given."""

    def __init__(
        self,
        log: Log,
        policy: Retention,
        *,
        archive: Path | None = None,
        sign: Callable[[bytes], str] | None = None,
        floor: Callable[[], int | None] = lambda: None,
    ):
        self.log = log
        self.policy = policy
        self.archive = archive
        self.sign = sign
        self.floor = floor
        self.pruned_bytes = 0  # what the steps of this process removed, as their entries say
        self.pruned_entries = 0

    def run(self) -> None:
        """Prune what the policy lets go now (on the upkeep thread: it blocks)."""
        steps = 0
        for _ in range(STEPS_PER_RUN):
            entry = self.log.prune(self.policy, archive=self.archive, floor=self.floor(), sign=self.sign)
            if entry is None:
                break
            steps += 1
            self.pruned_bytes += removed_bytes(entry)
            removed = entry.data.get("removed")
            self.pruned_entries += removed.get("entries", 0) if isinstance(removed, dict) else 0
        if steps:
            kept = self.log.pruned()
            logger.info(
                "airlock: retention pruned the log up to entry %d (%d kept below it)%s",
                kept.start - 1,
                len(kept.islands),
                f", archived in {self.archive}" if self.archive is not None else "",
            )


def shipped_floor(log: Log, cursor: str) -> Callable[[], int | None]:
    """A floor that keeps every entry the reader `cursor` has not taken yet."""
    return lambda: log.cursor(cursor) + 1

"""How full the log is, watched: one WARNING when its pages in use cross 80% of --log-max-size
(and one line when they fall back under), and what to tell the operator when it is full.

At the limit nothing that must be logged goes out (503 `log_unavailable`); the warning comes
early enough to make room first: `--retain AGE` drops old entries, `--archive DIR` keeps them
in files before they go, or a larger `--log-max-size`.
"""

from __future__ import annotations

import logging

from store import Log, Usage

logger = logging.getLogger("airlock")

NEARLY_FULL = 0.8  # the part of --log-max-size in use past which the log is nearly full
CHECK_SECONDS = 5.0  # how often the upkeep thread looks (a few statistics: cheap at any size)
MAKE_ROOM = (
    "make room with --retain AGE (drop entries older than AGE; with --archive DIR they are kept "
    "in files first) or give a larger --log-max-size"
)


def nearly_full(usage: Usage) -> bool:
    """True when the log uses NEARLY_FULL of its allowed size or more."""
    return usage.used_fraction >= NEARLY_FULL


class LogRoom:
    """Watches the log's use and says so once each time it crosses NEARLY_FULL, either way."""

    def __init__(self, log: Log):
        self.log = log
        self.nearly_full = False

    def check(self) -> Usage:
        """Read the log's use and warn if it has just crossed into nearly full (an upkeep job)."""
        usage = self.log.usage()
        now = nearly_full(usage)
        if now and not self.nearly_full:
            logger.warning(
                "airlock: the log at %s is %d%% full (%s of --log-max-size %s in use); at the limit "
                "every request that must be logged gets 503: %s",
                self.log.path,
                int(usage.used_fraction * 100),
                size(usage.used_bytes),
                size(usage.max_bytes),
                MAKE_ROOM,
            )
        elif self.nearly_full and not now:
            logger.info(
                "airlock: the log at %s is back under %d%% of --log-max-size (%s in use)",
                self.log.path,
                int(NEARLY_FULL * 100),
                size(usage.used_bytes),
            )
        self.nearly_full = now
        return usage


def full_at_start(log: Log, retained: bool = False) -> str:
    """The one line `airlock run` exits with when the log has no room to start in (`retained`:
    retention ran and could not make enough)."""
    if retained:
        return (
            f"the log at {log.path} is full (--log-max-size {size(log.max_size)}) and retention found "
            "nothing more it may prune (what is left is open or younger than --retain): "
            "give a shorter --retain, a --retain-size, or a larger --log-max-size"
        )
    return f"the log at {log.path} is full (--log-max-size {size(log.max_size)}): {MAKE_ROOM}"


def size(n: int) -> str:
    """Bytes as a person reads them: 812KiB, 3.2MiB, 64GiB."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            value = n / (1 << shift)
            return f"{value:.0f}{unit}" if value >= 10 or value.is_integer() else f"{value:.1f}{unit}"
    return f"{n}B"

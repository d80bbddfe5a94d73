"""The retry-storm breaker: one action failing again and again is stopped, and told why.

An action is known by its dedup key, or by agent and fingerprint. Its failed attempts are
counted in a sliding window; once the window holds the rule's number of failures, further
attempts are refused until the oldest failure ages out. A success clears the count. The
counts live in this process's memory, bounded to the most recently failing actions.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque

from rules import Storm


class Breaker:
    """Failed attempts per action within its storm window."""

    def __init__(self, capacity: int = 10_000):
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._capacity = capacity

    def __bool__(self) -> bool:
        """True while some action has failures on record."""
        return bool(self._failures)

    def retry_after(self, ident: str, storm: Storm, now: float | None = None) -> float | None:
        """Seconds until the action may be tried again, or None if it may go now."""
        failures = self._failures.get(ident)
        if not failures or storm.failures <= 0:
            return None
        now = time.monotonic() if now is None else now
        while failures and failures[0] <= now - storm.window:
            failures.popleft()
        if len(failures) < storm.failures:
            return None
        return failures[-storm.failures] + storm.window - now

    def failed(self, ident: str, storm: Storm, now: float | None = None) -> None:
        """Count one failed attempt of the action."""
        if storm.failures <= 0:
            return
        failures = self._failures.setdefault(ident, deque())
        failures.append(time.monotonic() if now is None else now)
        while len(failures) > storm.failures:
            failures.popleft()
        self._failures.move_to_end(ident)
        while len(self._failures) > self._capacity:
            self._failures.popitem(last=False)

    def succeeded(self, ident: str) -> None:
        """The action went through: its failures no longer count."""
        self._failures.pop(ident, None)

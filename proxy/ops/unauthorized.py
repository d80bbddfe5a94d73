"""Refused control API requests go in the log: an `unauthorized` entry with the method, the
path and the remote address (never the token that was sent, right or wrong).

A flood cannot fill the log: at most BURST entries are written at once and then one every
WINDOW / BURST seconds (a token bucket); the refusals in between are counted, and the next
entry says how many went unlogged (`unlogged`). Every refusal is still answered 401.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from store import Log, Record, StoreError

logger = logging.getLogger(__name__)

BURST = 10
WINDOW = 60.0  # seconds in which at most BURST more entries are written
PATH_KEPT = 256  # characters of the path kept: the path is the requester's text


class UnauthorizedLog:
    """Writes `unauthorized` entries for refused control API requests, rate-limited."""

    def __init__(self, log: Log, *, clock: Callable[[], float] = time.monotonic):
        self.log = log
        self.clock = clock
        self.unlogged = 0
        self._allowance = float(BURST)
        self._checked = clock()

    def refused(self, method: str, path: str, remote: str | None, credential: str) -> bool:
        """Note a refused request (`credential`: none, malformed or wrong); True if logged."""
        now = self.clock()
        self._allowance = min(BURST, self._allowance + (now - self._checked) * BURST / WINDOW)
        self._checked = now
        if self._allowance < 1:
            self.unlogged += 1
            return False
        self._allowance -= 1
        data = {
            "method": method,
            "path": path[:PATH_KEPT],
            "remote": remote or "",
            "credential": credential,
            "unlogged": self.unlogged,
        }
        try:
            self.log.append_soon(Record(kind="unauthorized", data=data))
        except StoreError as e:
            logger.error("airlock: a refused control API request was not logged: %s", e)
            return False
        self.unlogged = 0
        return True

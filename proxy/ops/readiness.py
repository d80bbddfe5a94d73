"""Readiness: may traffic be sent here? Only while the log can be written and rules are loaded.

The log is writable when this process's writer thread runs and its latest commit succeeded.
A commit older than FRESH seconds says too little, so then a probe (one small synced write
outside the chain) stands in for it: a proxy nobody sends traffic to is still checked.
"""

from __future__ import annotations

import asyncio
import time

from proxy.core.reload import RulesReloader
from store import Log, StoreError

FRESH = 30.0  # seconds a commit's outcome (or a probe's) speaks for the log


class Readiness:
    """Whether the proxy is ready, and if not, why (one line an operator can act on)."""

    def __init__(self, log: Log, reloader: RulesReloader):
        self.log = log
        self.reloader = reloader
        self._last: tuple[float, StoreError | None] | None = None
        self._probing = asyncio.Lock()
        log.observe_commits(self._committed)

    def _committed(self, _seconds: float, error: StoreError | None) -> None:
        # On the writer thread: one assignment, read whole by the loop.
        self._last = (time.monotonic(), error)

    async def problem(self) -> str | None:
        """Why the proxy is not ready, or None when it is."""
        if not self.log.writing:
            return "the log writer has stopped: restart airlock (its output says why it stopped)"
        if not self.reloader.current.digest:
            return "no rules are loaded: check the rules path and reload"
        last = self._last
        if last is None or time.monotonic() - last[0] > FRESH:
            last = await self._probe()
        if last[1] is not None:
            return f"the log cannot be written: {last[1]}"
        return None

    async def _probe(self) -> tuple[float, StoreError | None]:
        async with self._probing:  # probes one at a time, however many ask
            last = self._last
            if last is not None and time.monotonic() - last[0] <= FRESH:
                return last
            try:
                await asyncio.to_thread(self.log.probe)
                error = None
            except StoreError as e:
                error = e
            self._last = (time.monotonic(), error)
            return self._last

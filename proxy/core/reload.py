"""Live rules: reload when a file in the rules path changes, on SIGHUP, or on request.

A reload that fails validation changes nothing: the previous rules stay in force and the error
is logged and kept for the control API. Every successful load is an entry in the log with the
rules' digest, so the audit trail shows which rules decided each action.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

from rules import RulesError, Ruleset, rule_files_in
from store import Log

from . import records

logger = logging.getLogger(__name__)


def signature(path: Path) -> str:
    """A digest of every rule file's name and content: any edit, addition, removal or swap
    (as a ConfigMap update does) changes it, whatever happens to mtimes."""
    h = hashlib.sha256()
    try:
        targets = rule_files_in(path) if path.is_dir() else [path]
    except OSError:
        targets = []
    for target in targets:
        h.update(str(target).encode() + b"\0")
        try:
            h.update(target.read_bytes())
        except OSError:
            h.update(b"\0unreadable")
    return h.hexdigest()


class RulesReloader:
    """Keeps the proxy's rules current with the files on disk."""

    def __init__(self, path: Path, log: Log, apply: Callable[[Ruleset], None], current: Ruleset):
        self.path = path
        self.log = log
        self.apply = apply
        self.current = current
        self.last_error: str | None = None
        self.reloads = 0  # reloads that put new rules in force
        self.failures = 0  # reloads refused for invalid files
        self._seen = signature(path)
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[bool]] = set()

    async def record(self, reason: str) -> None:
        """Write the rules in force to the log (at start, and after each reload)."""
        await self.log.append(records.rules_loaded(self.current, reason=reason))

    async def reload(self, reason: str) -> Ruleset:
        """Load the rules again; on success use and log them, on failure keep the old ones."""
        async with self._lock:
            self._seen = signature(self.path)
            try:
                ruleset = Ruleset.load(self.path)
            except RulesError as e:
                self.last_error = str(e)
                self.failures += 1
                logger.error("airlock: rules not reloaded (%s), the previous rules stay: %s", reason, e)
                raise
            self.last_error = None
            if ruleset.digest == self.current.digest:
                return ruleset
            self.apply(ruleset)
            self.current = ruleset
            self.reloads += 1
            await self.record(reason)
            logger.info(
                "airlock: rules reloaded (%s): %d rules, digest %s",
                reason,
                len(ruleset.rules),
                ruleset.digest[:12],
            )
            return ruleset

    async def try_reload(self, reason: str) -> bool:
        """Reload; a failure is logged and kept in `last_error`, and reported as False."""
        try:
            await self.reload(reason)
        except RulesError:
            return False
        return True

    def trigger(self, reason: str) -> None:
        """Start a reload from synchronous code (a signal handler) and keep it alive until done."""
        task = asyncio.get_running_loop().create_task(self.try_reload(reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def watch(self, interval: float = 1.0) -> None:
        """Poll the rules path and reload when it has changed and then held still for one poll,
        so that a file caught half-written is never loaded (runs until cancelled)."""
        pending: str | None = None
        while True:
            await asyncio.sleep(interval)
            now = signature(self.path)
            if now == self._seen:
                pending = None
            elif now == pending:
                await self.try_reload("file changed")
                pending = None
            else:
                pending = now

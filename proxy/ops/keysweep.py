"""The upkeep job that deletes expired idempotency keys with their stored replies
(store/sweep.py): at once when a process starts, then every minute."""

from __future__ import annotations

import logging

from store import Log

from .upkeep import Upkeep

logger = logging.getLogger("airlock")

SWEEP_SECONDS = 60.0  # how often expired idempotency keys are deleted


def sweep_expired(log: Log) -> None:
    """Delete the log's expired keys (in short write transactions) and say how many went."""
    swept = log.sweep_keys()
    if swept.keys:
        logger.info("airlock: deleted %d expired idempotency key(s) and their replies", swept.keys)


def schedule_sweep(chores: Upkeep, log: Log) -> None:
    """Sweep `log`'s expired keys on the upkeep thread, at once and every SWEEP_SECONDS."""
    chores.every("sweep expired idempotency keys", SWEEP_SECONDS, lambda: sweep_expired(log), first=0)

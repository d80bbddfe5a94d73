"""Idempotency keys in the log: claimed with an action's first entry, settled with its outcome.

A key is claimed in the same transaction that writes the intent, so two requests with one key,
in one process or several, can never both become actions. The outcome keeps the key (with
the reply to replay) or releases it for the next attempt; a key expires after its TTL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import StoreError


@dataclass(frozen=True)
class Claim:
    """An idempotency key an opening record claims, the payload digest it stands for, its TTL."""

    key: str
    payload: str
    ttl: float


@dataclass(frozen=True)
class Settle:
    """What an action's outcome does to its key: keep it (final, with the reply) or release it."""

    keep: bool
    reply: dict[str, Any] | None = None


class KeyTaken(StoreError):
    """The key belongs to another action; says which, in what state, and what it stood for."""

    def __init__(self, key: str, holder: dict[str, Any], state: str):
        super().__init__(f"idempotency key is held by action {holder['action']} ({state})")
        self.key = key
        self.holder_id: int = holder["action"]
        self.payload: str = holder["payload"]
        self.reply: dict[str, Any] | None = holder.get("reply")
        self.final: bool = bool(holder.get("final"))
        self.state = state

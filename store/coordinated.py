"""What an intent asks of coordination, and the refusals: its session's fence, the lock it
takes, the sliding-window limits it counts against.

The writer checks and applies all three in the transaction that writes the intent
(store/append.py), so every process appending to one data dir sees the same epochs, locks and
counts, and no action slips in between a takeover, a lock or a count and its check.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .errors import StoreError

# The longest lock or limit key (it is part of a database key: LMDB's maximum is 511 bytes).
MAX_COORD_KEY_BYTES = 400


def when(ts: float) -> str:
    """A time as the refusals say it: ISO 8601 in UTC, to the millisecond."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Fence:
    """The session an intent is written for: refused (Fenced) once the agent's epoch has moved
    past `epoch`, or the session ended or expired."""

    agent: str
    epoch: int
    session: str

    def as_dict(self) -> dict[str, Any]:
        """The fence as the intent's entry records it."""
        return {"agent": self.agent, "epoch": self.epoch, "session": self.session}


@dataclass(frozen=True)
class LockClaim:
    """A lock an intent takes on `key` for `holder` (a session id or an agent name): for the
    action's duration (`hold` None: its outcome releases it), or for `hold` seconds, across the
    holder's actions until then, its session's end or fencing, or an explicit release."""

    key: str
    holder: str
    hold: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """The claim as the intent's entry records it."""
        return {"key": self.key, "holder": self.holder, "hold": self.hold}


@dataclass(frozen=True)
class LimitCheck:
    """A sliding-window limit an intent counts against: `weight` (a batch counts as its size)
    added to what passed on `key` in the last `window` seconds may not exceed `maximum`."""

    key: str
    weight: int
    maximum: int
    window: float

    def as_dict(self) -> dict[str, Any]:
        """The check as the intent's entry records it."""
        return {"key": self.key, "weight": self.weight, "maximum": self.maximum, "window": self.window}


class Fenced(StoreError):
    """The intent's session is stale: superseded by a newer session or takeover of its agent,
    or ended, or expired. The message says which, when and by whom."""

    def __init__(
        self, message: str, fence: Fence, *, epoch: int, by: str | None = None, at: float | None = None
    ):
        super().__init__(message)
        self.fence = fence
        self.epoch = epoch  # the agent's current epoch
        self.by = by  # the session (or the operator's takeover) that superseded it
        self.at = at  # when


class Locked(StoreError):
    """Another live holder has the lock on `key`: who, since when, for which action (if the lock
    is for one action's duration)."""

    def __init__(self, key: str, holder: str, since: float, action_id: int | None, *, expires: float | None):
        for_what = f"for action {action_id}" if action_id is not None else "held across its actions"
        until = f" until {when(expires)}" if expires is not None else ""
        super().__init__(f"lock {key!r} is held by {holder} ({for_what}) since {when(since)}{until}")
        self.key = key
        self.holder = holder
        self.since = since
        self.action_id = action_id
        self.expires = expires


class LimitReached(StoreError):
    """The intent would take `key` past `maximum` in its sliding window: `counted` passed in
    the last `window` seconds, and its weight would cross the limit."""

    def __init__(self, key: str, counted: int, maximum: int, window: float, weight: int):
        super().__init__(
            f"limit {key!r} reached: {counted} passed in the last {window:g}s, the maximum is {maximum}, "
            f"and this action counts {weight}"
        )
        self.key = key
        self.counted = counted
        self.maximum = maximum
        self.window = window
        self.weight = weight

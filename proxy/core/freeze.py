"""The operator's freeze: the records that freeze and thaw the log, and the refusal an agent
gets for a write or destructive action while it is frozen.

The log itself enforces the freeze: an intent of a mutating action is written `unless_frozen`,
so the check and the intent are one durable step, whichever process froze the log.
"""

from __future__ import annotations

import time

from rules import Decision, Verdict
from store import FreezeState, Record

from . import redact

FREEZE_RULE = "freeze"
RETRY_AFTER = 60  # seconds: a freeze has no end an agent could be told, so it looks again later


def freeze(by: str, reason: str) -> Record:
    """The entry that freezes the log: refused (StateError) if it is frozen already."""
    return Record(kind="freeze", data={"by": by, "reason": redact.text(reason)})


def thaw(by: str, reason: str) -> Record:
    """The entry that lifts the freeze: refused (StateError) if the log is not frozen."""
    return Record(kind="thaw", data={"by": by, "reason": redact.text(reason)})


def when(state: FreezeState) -> str:
    """The moment a freeze began, in UTC, to the second."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(state.ts))


def describe(state: FreezeState) -> str:
    """Who froze the log, when and why, in one clause."""
    why = f": {state.reason}" if state.reason else " (no reason given)"
    return f"{state.by or 'an unnamed operator'} froze airlock at {when(state)} (log entry {state.seq}){why}"


def refusal(state: FreezeState) -> Decision:
    """The refusal of a write or destructive action while the log is frozen."""
    message = (
        f"{describe(state)}. No write or destructive action goes out until an operator runs "
        f"`airlock thaw`; reads still follow the rules. Do not work around it: retry after "
        f"{RETRY_AFTER} s, or ask the operator."
    )
    return Decision(Verdict.DENY, FREEZE_RULE, message, "frozen")

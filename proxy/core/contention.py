"""Where agents meet: the fence, lock and limits an action's intent carries, and what an agent
is told when one of them stops it.

The log checks all three in the step that writes the intent (store/coordinated.py), so a
takeover, a lock or a count can never slip in between a check and the action's intent.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from rules import Action, Decision, Limit, Lock, Verdict, duration_text
from store import Fence, Fenced, LimitCheck, LimitReached, LockClaim, Locked, Log

from . import records

FENCED_RULE = "session-fence"
LOCK_POLL = 0.05  # how often an action waiting for a lock tries again


@dataclass(frozen=True)
class Checks:
    """What an admitted action's intent asks of coordination."""

    fence: Fence | None = None
    lock: LockClaim | None = None
    limits: tuple[LimitCheck, ...] = ()
    lock_rule: Lock | None = None
    limit_rules: tuple[Limit, ...] = ()

    def limit_of(self, reached: LimitReached) -> Limit | None:
        """The rule's limit a refusal names."""
        rule = reached.key.partition("|")[0]
        return next((x for x in self.limit_rules if x.rule == rule), None)


def fence_of(action: Action) -> Fence | None:
    """The fence of an action sent with a session's credentials."""
    if action.session is None or action.epoch is None:
        return None
    return Fence(action.agent, action.epoch, action.session)


def checks_for(action: Action, decision: Decision) -> Checks:
    """The fence, lock and limits of an action the rules let go."""
    lock = None
    if decision.lock is not None:
        lock = LockClaim(decision.lock.key_of(action), action.session or action.agent, decision.lock.hold)
    limits = tuple(
        LimitCheck(key, weight, limit.count, limit.per)
        for limit in decision.limits
        for key, weight in limit.counts(action)
    )
    return Checks(fence_of(action), lock, limits, decision.lock, decision.limits)


def check_fence(log: Log, fence: Fence) -> None:
    """Fenced when the fence's agent has moved to a newer epoch (read, not in a commit: for an
    action that changes nothing upstream, whose intent is not waited for)."""
    current = log.epoch(fence.agent)
    if current > fence.epoch:
        raise Fenced(f"session {fence.session} of {fence.agent} is superseded", fence, epoch=current)


def fenced(refusal: Fenced) -> Decision:
    """The decision on an action of a stale session (superseded, ended, expired): refused
    (409), saying which, when and by whom."""
    message = (
        f"{refusal} (agent {refusal.fence.agent} is at epoch {refusal.epoch}): this session no longer "
        "acts for the agent, so nothing it sends is forwarded; stop, and let the current session "
        "carry on"
    )
    return Decision(Verdict.DENY, FENCED_RULE, message, records.FENCED)


def lock_refusal(locked: Locked, lock: Lock | None) -> Decision:
    """The decision on an action whose lock another holder kept past its wait (409)."""
    waited = f"after waiting {lock.wait:g} s" if lock is not None and lock.wait else "at once"
    message = (
        f"{locked.key.partition('|')[2]} is locked by {locked.holder}"
        + (f" (action {locked.action_id})" if locked.action_id is not None else "")
        + f" since {_iso(locked.since)}; refused {waited}: retry once it is done"
    )
    return Decision(Verdict.DENY, lock.rule if lock is not None else None, message, "locked")


def limit_decision(reached: LimitReached, limit: Limit | None) -> Decision:
    """The decision on the action that would cross a limit: denied, or held for votes."""
    rule = limit.rule if limit is not None else reached.key.partition("|")[0]
    message = (
        f"limit of rule {rule} reached: {reached.counted} matching actions passed in the last "
        f"{duration_text(reached.window)} and the limit is {reached.maximum}"
        + (f" (this one counts {reached.weight})" if reached.weight > 1 else "")
    )
    if limit is not None and limit.then is Verdict.HOLD:
        return Decision(Verdict.HOLD, rule, f"{message}; it is held for votes", "held")
    return Decision(Verdict.DENY, rule, f"{message}; slow down, or ask an operator to raise it", "limited")


def retry_after(reached: LimitReached) -> int:
    """Seconds an agent is told to wait after a limit refused it: the window, at most."""
    return max(1, math.ceil(reached.window))


def lock_deadline(lock: Lock | None) -> float:
    """When an action waiting for its lock gives up."""
    return time.monotonic() + (lock.wait if lock is not None else 0.0)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

"""Exactly-once effects: the idempotency key an action claims, and when its answer is final.

A key comes from the client's `Idempotency-Key` header (IETF draft semantics), else from the
first matching rule's `dedup` (a template over the action, or `auto`: its fingerprint). It is
scoped by host and, unless the rule shares it, by agent, and stands for one payload (the
action's fingerprint). A completed key replays its stored reply; one in flight makes
duplicates wait for it (or, with `on_conflict: reject`, answers 409); the same key with another
payload is a 422; a key whose action is in doubt after a crash is a 409.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from rules import Action, Decision, StatusSet, Storm, fingerprint
from store import Claim

KEY_HEADER = "idempotency-key"


DEFAULT_STORM = Storm(None)  # 5 failures in 60 s


@dataclass(frozen=True)
class DedupPolicy:
    """Process-wide defaults: how long keys live, how long a duplicate waits for the first,
    how much reply is kept, and the retry-storm breaker; rules override them per action."""

    ttl: float = 24 * 3600
    wait: float = 30.0
    reply_limit: int = 1 << 20
    storm: Storm = DEFAULT_STORM


@dataclass(frozen=True)
class Keyed:
    """A request that claims a dedup key, and how its duplicates and answers are treated."""

    claim: Claim
    wait: float
    label: str = "Idempotency-Key"  # what the key is called in answers to the agent
    reject: bool = False
    final_statuses: StatusSet | None = None
    verify: dict[str, Any] | None = None  # the read that resolves it if it is left in doubt

    def final(self, status: int | None) -> bool:
        """True when this answer (None: no answer at all) is the action's effect, to be replayed."""
        return is_final(status) if self.final_statuses is None else status in self.final_statuses


def claim_for(action: Action, decision: Decision, policy: DedupPolicy) -> Keyed | None:
    """The key an action claims: its Idempotency-Key (mutating requests), else its rule's key."""
    rule = decision.dedup
    header = action.headers.get(KEY_HEADER, "").strip() if action.effect.mutating else ""
    if header:
        key = f"key:{header}"
    elif rule is not None and (rendered := rule.key_of(action)) is not None:
        # Rule keys may hold body fields: only their digest is kept.
        key = f"{rule.rule}:{hashlib.sha256(rendered.encode()).hexdigest()}"
    else:
        return None
    scope = "*" if rule is not None and rule.shared else action.agent
    claim = Claim(
        key=f"{scope}|{action.host}|{key}",
        payload=fingerprint(action),
        ttl=rule.ttl if rule is not None and rule.ttl is not None else policy.ttl,
    )
    if rule is None:
        return Keyed(claim, policy.wait)
    return Keyed(
        claim,
        wait=rule.wait if rule.wait is not None else policy.wait,
        label="Idempotency-Key" if header else f"dedup key (rule {rule.rule})",
        reject=rule.reject,
        final_statuses=rule.final,
        verify=rule.verify.request(action) if rule.verify is not None else None,
    )


def is_final(status: int | None) -> bool:
    """By default 2xx, 3xx and 4xx answers are effects (or final refusals) and are replayed;
    5xx and no answer at all let a retry through."""
    return status is not None and status < 500

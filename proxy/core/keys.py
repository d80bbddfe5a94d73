"""Exactly-once effects: the idempotency key an action claims, when its answer is final, and why
a repeat of it is refused.

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
from store import Claim, KeyTaken, State

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


# Requests that carry no credentials were the agent `agent` before agents had sessions (the
# default name is `anonymous` since): their keys keep that scope, so that a retry across the
# upgrade finds the key its first attempt took, and is neither run twice nor refused wrongly.
UNNAMED = "anonymous"
UNNAMED_SCOPE = "agent"


def key_scope(action: Action) -> str:
    """Whose keys an action's key is among: its agent's (a request without credentials, under
    the default name, keeps the scope that name had before sessions: UNNAMED_SCOPE)."""
    unnamed = action.agent == UNNAMED and action.session is None and not action.agent_claimed
    return UNNAMED_SCOPE if unnamed else action.agent


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
    scope = "*" if rule is not None and rule.shared else key_scope(action)
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


def refusal(keyed: Keyed, taken: KeyTaken) -> tuple[str, str, int] | None:
    """Why an action whose key another action holds is refused (the reason, the message, the
    status); None when it is replayed (a final answer is stored) or waits for the holder."""
    holder, label = taken.holder_id, keyed.label
    if taken.payload != keyed.claim.payload:
        return (
            "idempotency_key_reused",
            f"this {label} was used by action {holder} for a different request; "
            "use a new key for a new request",
            422,
        )
    if taken.legacy:
        return (
            "idempotency_key_unverifiable",
            f"action {holder} with this {label} was recorded by an older airlock, whose stored "
            "responses the log cannot vouch for, so it is not replayed and this request was not "
            f"executed; see `airlock show {holder}` for what happened, and do not retry",
            409,
        )
    if taken.final and taken.reply is None:
        return (
            "idempotency_key_completed",
            f"action {holder} with this {label} already took effect, and its response "
            "cannot be replayed (it was resolved after a crash, or too large to keep); do not retry",
            409,
        )
    if taken.state == State.IN_DOUBT:
        return (
            "idempotency_in_doubt",
            f"action {holder} with this {label} is in doubt: the proxy stopped while it was "
            "in flight, so whether it took effect is unknown and this request was not executed; "
            f"an operator resolves it with `airlock resolve {holder} --executed|--not-executed`, "
            "then retry with the same key",
            409,
        )
    if keyed.reject:
        return (
            "idempotency_in_flight",
            f"action {holder} with this {label} is in flight, and the rule rejects duplicates "
            "instead of waiting; wait for the first request's answer instead of sending it again",
            409,
        )
    return None

"""Admission: what happens to a decided action before it may go upstream, whatever carried it.

A refused action is logged and answered. An action in a retry storm is stopped. A keyed action
claims its dedup key with its intent, or is answered as the key's holder allows (replay, wait,
409, 422). Any other action, reads included, gets its intent written durably before it may go
(concurrent intents share one commit); a model call's intent is queued, not waited for: it
changes nothing upstream, and a crash never leaves it in doubt. A model call past one of its
rules' token budgets is refused (429). An intent the log cannot hold (a value it cannot encode)
is refused; when the log cannot be written at all, nothing goes, unless the operator let reads
pass unlogged. While an operator's freeze holds, the log refuses the intent of a write or
destructive action in the commit that would have written it, and the action is refused (503).
The transport (the HTTP gate, the MCP adapters) turns an `Answer` into its own terms and
reports the outcome back with `finish` or `fail`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from rules import Action, Decision, Effect, Ruleset, Storm, Verdict
from store import (
    ActionRef,
    Fenced,
    Frozen,
    KeyOutcome,
    KeyTaken,
    LimitReached,
    Locked,
    Log,
    Record,
    StoreError,
)

from . import contention, freeze, keys, records
from .breaker import Breaker
from .budgets import Ledger, Overspent
from .coordination import Coordination, Embedded
from .holds import Fate, Holds
from .keys import DedupPolicy, Keyed
from .proposals import ModelAnswer, Proposals, estimate_usage
from .redact import Redactor
from .tracking import Meter, ModelCall, Tracking

logger = logging.getLogger(__name__)

KEY_RULE = "idempotency-key"
STORM_RULE = "retry-storm"
HELD_RETRY = 10  # seconds a held request's agent is told to wait before sending it again
KEY_POLL = 0.02  # how often a duplicate looks whether the first request has ended


@dataclass(frozen=True)
class Answer:
    """What the agent gets instead of the upstream's answer: a refusal (the decision says why),
    or a stored reply replayed from an earlier action."""

    decision: Decision
    action_id: int | None
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    reply: dict[str, Any] | None = None
    replay_of: int | None = None


def unavailable(message: str) -> Answer:
    """503 when the log cannot record an action: nothing goes out unlogged."""
    decision = Decision(Verdict.DENY, None, message, "log_unavailable")
    return Answer(decision, None, 503, {"Retry-After": "30"})


class Unloggable(ValueError):
    """An intent the log cannot encode (an integer past 64 bits, nesting too deep): the action
    is refused rather than forwarded unlogged. The message says what could not be encoded."""


def unloggable(record: Record) -> str | None:
    """Why the log could not encode a record, or None when it can."""
    try:
        orjson.dumps(record.data)
        orjson.dumps(record.summary)
    except orjson.JSONEncodeError as e:
        return str(e) or type(e).__name__
    return None


# Told how long each admission took: the verdict's name and the seconds (the metrics).
DecisionObserver = Callable[[str, float], None]


def _unobserved(_verdict: str, _seconds: float) -> None:
    return None


# Told of the tokens each model call's answer reports: the call and its usage (the metrics).
UsageObserver = Callable[[ModelCall, ModelAnswer], None]


def _unspent(_call: ModelCall, _answer: ModelAnswer) -> None:
    return None


class Admission:
    """Logs and admits decided actions; one per proxy process, shared by every transport."""

    def __init__(
        self,
        log: Log,
        ruleset: Ruleset,
        *,
        bodies: records.BodyPolicy,
        policy: DedupPolicy,
        reads_pass_unlogged: bool = False,
    ):
        self.log = log
        self.bodies = bodies
        self.policy = policy
        # Fail closed by default: a read can carry data out, and the trail is the product.
        self.reads_pass_unlogged = reads_pass_unlogged
        self.breaker = Breaker()
        self.decided: DecisionObserver = _unobserved
        self.used: UsageObserver = _unspent
        self.ledger = Ledger()  # the tokens model calls used, against their rules' budgets
        self.coordination: Coordination = Embedded(log)  # epochs, locks and limit counters
        self.proposals = Proposals()  # the tool calls models proposed, to link the actions to
        self.use_rules(ruleset)
        self.holds = Holds(
            log,
            self._held_intent,
            lambda: self.ruleset.voters,
            lambda: self.redactor,
        )

    def use_rules(self, ruleset: Ruleset) -> None:
        """Describe actions with `ruleset`'s digest and secret headers from now on."""
        self.ruleset, self.redactor = ruleset, Redactor(ruleset.secret_headers)

    def intent(
        self, action: Action, decision: Decision, ref: ActionRef, *, unless_frozen: bool = False, **kw: Any
    ) -> Record:
        """The intent record of an action; Unloggable if the log could not encode it. With
        `unless_frozen` the log refuses it (Frozen) while an operator's freeze holds. A tool
        call a model proposed names the model call (`proposed_by`); a rule that keeps prompts
        keeps the model call's body as the log keeps a write's."""
        bodies = self.bodies
        if decision.keep_prompts:
            bodies = bodies.with_limit(Effect.INFERENCE, bodies.limit)
        record = records.intent(
            action,
            decision,
            ref,
            redactor=self.redactor,
            bodies=bodies,
            rules_digest=self.ruleset.digest,
            proposed_by=self.proposals.origin(action, decision.proposed_as),
            **kw,
        )
        if (problem := unloggable(record)) is not None:
            raise Unloggable(problem)
        return dataclasses.replace(record, unless_frozen=True) if unless_frozen else record

    async def admit(self, action: Action, decision: Decision, *, keep: int = 0) -> Tracking | Answer:
        """Log the action and let it go (a Tracking), or answer it instead (an Answer); how long
        that took goes to `decided` (the verdict's name and the seconds).

        `keep` is how much of the response the transport can keep for replays.
        """
        started = time.perf_counter()
        try:
            return await self._admit(action, decision, keep=keep)
        finally:
            self.decided(decision.verdict.value, time.perf_counter() - started)

    async def _admit(self, action: Action, decision: Decision, *, keep: int) -> Tracking | Answer:
        """Log the action and let it go (a Tracking), or answer it instead (an Answer).

        `keep` is how much of the response the transport can keep for replays.
        """
        if decision.refused:
            return await self.refuse(action, decision)
        if decision.budgets and (over := self.ledger.overspent(decision.budgets, action.agent)):
            return await self._overspent(action, over)
        if decision.verdict is Verdict.HOLD:
            return await self._hold(action, decision)
        keyed = keys.claim_for(action, decision, self.policy)
        storm = decision.storm or self.policy.storm
        unkeyed_mutation = keyed is None and action.effect.mutating
        tracking = Tracking(
            ActionRef(),
            keyed=keyed,
            storm=storm,
            unkeyed=action if unkeyed_mutation else None,
            model_call=_model_call(action, decision, self.bodies),
        )
        if (wait := self._storm_wait(tracking, storm)) is not None:
            return await self._storm(action, storm, wait)
        if decision.budgets:
            # Counted as it goes (its prompt, by estimate): calls sent side by side cannot all
            # pass on a budget's last tokens. Its answer corrects the count.
            prompt = estimate_usage(len(action.body or b""), 0).total
            tracking.spending = self.ledger.spend(decision.budgets, action.agent, prompt)
        checks = contention.checks_for(action, decision)
        try:
            if keyed is not None:
                tracking.meter = Meter(keep=keep)
                return await self._admit_keyed(action, decision, tracking, keyed, checks)
            intent = self.intent(action, decision, tracking.ref, unless_frozen=action.effect.mutating)
        except Unloggable as e:
            return await self._unloggable(action, str(e))
        deadline = contention.lock_deadline(checks.lock_rule)
        try:
            if action.effect is Effect.INFERENCE and checks.lock is None and not checks.limits:
                # Written soon: nothing waits for its fsync. A model call changes nothing
                # upstream, so its session's fence is read here rather than in the commit.
                if checks.fence is not None:
                    contention.check_fence(self.log, checks.fence)
                self.log.append_soon(intent)
            else:
                while went := await self._coordinated(action, decision, intent, checks, deadline):
                    if not isinstance(went, bool):
                        return went
                    tracking.ref = ActionRef()  # the lock may have come free: a fresh intent
                    intent = self.intent(action, decision, tracking.ref, unless_frozen=action.effect.mutating)
                tracking.locked = checks.lock is not None and checks.lock.hold is None
        except Frozen as e:
            return await self._frozen(action, e)
        except Fenced as e:
            return await self._fenced(action, e)
        except StoreError as e:
            if action.effect.mutating or not self.reads_pass_unlogged:
                return unavailable(f"{e}; the request was not forwarded")
            logger.warning(
                "the log is down: a %s passes unlogged (%s %s): %s",
                action.effect.value,
                action.method,
                action.url,
                e,
            )
            tracking.logged = False
        return tracking

    async def _overspent(self, action: Action, over: Overspent) -> Answer:
        """Refuse a model call whose budget is spent, saying when to try again."""
        retry = max(1, math.ceil(over.retry_after))
        decision = Decision(Verdict.DENY, over.budget.rule, over.message, "budget_spent")
        return await self.refuse(action, decision, 429, {"Retry-After": str(retry)})

    async def _coordinated(
        self, action: Action, decision: Decision, intent: Record, checks: contention.Checks, deadline: float
    ) -> Tracking | Answer | bool:
        """Append an intent with its checks: False once written; an Answer when its lock stayed
        taken past its wait or a limit stops it (a limit that holds: what the hold came to,
        which may be the approved action running); True when the lock may have come free (try
        a fresh intent). Fenced and other StoreErrors propagate."""
        try:
            await self.coordination.admit(intent, fence=checks.fence, lock=checks.lock, limits=checks.limits)
        except Locked as e:
            if time.monotonic() >= deadline:
                return await self.refuse(action, contention.lock_refusal(e, checks.lock_rule), 409)
            await asyncio.sleep(contention.LOCK_POLL)
            return True
        except LimitReached as e:
            limited = contention.limit_decision(e, checks.limit_of(e))
            if limited.verdict is Verdict.HOLD:
                return await self._hold(
                    action, dataclasses.replace(limited, hold=decision.hold or self.ruleset.hold)
                )
            retry = {"Retry-After": str(contention.retry_after(e))}
            return await self.refuse(action, limited, 429, retry)
        return False

    async def _fenced(self, action: Action, refusal: Fenced) -> Answer:
        """Refuse an action of a superseded session (409), logged as fenced."""
        return await self.refuse(action, contention.fenced(refusal), 409)

    def _held_intent(
        self, action: Action, decision: Decision, ref: ActionRef, held: dict[str, Any]
    ) -> Record:
        intent = self.intent(action, decision, ref, held=held, unless_frozen=action.effect.mutating)
        fence = contention.fence_of(action)
        return dataclasses.replace(intent, fence=fence) if fence is not None else intent

    async def _hold(self, action: Action, decision: Decision) -> Tracking | Answer:
        """Park a held action until a decision; run it (a Tracking) on a commit, else answer."""
        try:
            parked = await self.holds.park(action, decision)
        except Unloggable as e:
            return await self._unloggable(action, str(e))
        except Frozen as e:  # held while frozen, or approved and run while frozen: neither goes
            return await self._frozen(action, e)
        except Fenced as e:
            return await self._fenced(action, e)
        except StoreError as e:
            return unavailable(f"{e}; the request was not forwarded")
        held = parked.action_id
        if parked.fate is Fate.RUN:
            return Tracking(ActionRef(held), unkeyed=action if action.effect.mutating else None)
        if parked.fate is Fate.ABORTED:
            message = f"action {held} was held for votes and aborted ({parked.why}); it was not executed"
            return Answer(Decision(Verdict.DENY, decision.rule, message, "aborted"), held, 403)
        message = (
            f"{decision.message}: action {held} awaits approval and has not run "
            f"(an operator approves it with `airlock approve {held}`); send the same request again "
            "later: it joins this action and runs once approved"
        )
        retry = {"Retry-After": str(HELD_RETRY)}
        return Answer(Decision(Verdict.HOLD, decision.rule, message, "held"), held, 503, retry)

    async def _unloggable(self, action: Action, problem: str) -> Answer:
        """Refuse an action the log cannot encode, logging it without its arguments."""
        decision = Decision(
            Verdict.DENY,
            None,
            f"airlock cannot write this request to its log ({problem}), so it was not forwarded; "
            "send values the log can hold (integers within 64 bits, nesting under 255 levels)",
            "unloggable",
        )
        stripped = dataclasses.replace(action, args=f"(not logged: {problem})")
        return await self.refuse(stripped, decision, 400)

    async def refuse(
        self, action: Action, decision: Decision, status: int = 403, headers: dict[str, str] | None = None
    ) -> Answer:
        """Log a refused action and say so (without its arguments if the log cannot encode them)."""
        ref = ActionRef()
        try:
            try:
                intent = self.intent(action, decision, ref)
            except Unloggable as e:
                intent = self.intent(dataclasses.replace(action, args=f"(not logged: {e})"), decision, ref)
            await self.log.append(intent)
        except (StoreError, Unloggable) as e:
            logger.error("a refusal was not logged: %s", e)
        return Answer(decision, ref.id, status, headers or {})

    async def _frozen(self, action: Action, frozen: Frozen) -> Answer:
        """Refuse a write or destructive action the log would not take while it is frozen."""
        decision = freeze.refusal(frozen.state)
        return await self.refuse(action, decision, 503, {"Retry-After": str(freeze.RETRY_AFTER)})

    async def _refuse_key(self, action: Action, error: str, message: str, status: int) -> Answer:
        return await self.refuse(action, Decision(Verdict.DENY, KEY_RULE, message, error), status)

    def _storm_wait(self, tracking: Tracking, storm: Storm) -> float | None:
        # While nothing is failing, the breaker has nothing to say: no fingerprint is taken.
        if not self.breaker:
            return None
        repeat = tracking.breaker_key()
        return None if repeat is None else self.breaker.retry_after(repeat, storm)

    async def _storm(self, action: Action, storm: Storm, wait: float) -> Answer:
        retry = max(1, math.ceil(wait))
        message = (
            f"this action failed {storm.failures} times within {storm.window:g} s, so airlock stops "
            f"further attempts for {retry} s: stop retrying it, and find out why it fails "
            "(the upstream may be down, or the request may be wrong) before trying again"
        )
        decision = Decision(Verdict.DENY, storm.rule or STORM_RULE, message, "retry_storm")
        return await self.refuse(action, decision, 429, {"Retry-After": str(retry)})

    async def _admit_keyed(
        self, action: Action, decision: Decision, tracking: Tracking, keyed: Keyed, checks: contention.Checks
    ) -> Tracking | Answer:
        """Claim the action's dedup key with its intent, or answer as its holder allows."""
        deadline = time.monotonic() + keyed.wait
        locking = contention.lock_deadline(checks.lock_rule)
        while True:
            tracking.ref = ActionRef()
            intent = self.intent(
                action,
                decision,
                tracking.ref,
                claim=keyed.claim,
                verify=keyed.verify,
                unless_frozen=action.effect.mutating,
            )
            try:
                went = await self._coordinated(action, decision, intent, checks, locking)
                if not isinstance(went, bool):
                    return went
                if went:
                    continue  # the lock may have come free
                tracking.locked = checks.lock is not None and checks.lock.hold is None
            except Frozen as e:
                return await self._frozen(action, e)
            except Fenced as e:
                return await self._fenced(action, e)
            except KeyTaken as taken:
                answer = await self._duplicate(action, keyed, taken, deadline)
                if answer is not None:
                    return answer
                continue  # the key was released: this action may go
            except StoreError as e:
                return unavailable(f"{e}; the request was not forwarded")
            return tracking

    async def _duplicate(
        self, action: Action, keyed: Keyed, taken: KeyTaken, deadline: float
    ) -> Answer | None:
        """Answer an action whose key another action holds; None if the key came free."""
        refusal = keys.refusal(keyed, taken)
        if refusal is not None:
            return await self._refuse_key(action, *refusal)
        if taken.final:
            return await self._replay(action, taken)
        holder = taken.holder_id
        # In flight: wait for the first action to end, then replay it or take the key.
        while time.monotonic() < deadline:
            await asyncio.sleep(KEY_POLL)
            held = self.log.key(keyed.claim.key)
            if held is None or held["action"] != holder or held.get("final"):
                return None
        message = (
            f"action {holder} with this {keyed.label} is still in flight after {keyed.wait:g} s; "
            "retry later with the same key"
        )
        return await self._refuse_key(action, "idempotency_in_flight", message, 409)

    async def _replay(self, action: Action, taken: KeyTaken) -> Answer:
        assert taken.reply is not None
        ref = ActionRef()
        decision = Decision(Verdict.ALLOW, KEY_RULE, f"replayed from action {taken.holder_id}")
        try:
            await self.log.append(self.intent(action, decision, ref, replay_of=taken.holder_id))
        except (StoreError, Unloggable) as e:
            logger.error("a replay was not logged: %s", e)
        return Answer(decision, ref.id, 200, reply=taken.reply, replay_of=taken.holder_id)

    def append_soon(self, record: Record, by: Callable[[Record], None] | None = None) -> None:
        """Write a record without waiting for it (reads, outcomes), to the log or `by`."""
        try:
            (by or self.log.append_soon)(record)
        except StoreError as e:
            logger.error("a %s entry was not written: %s", record.kind, e)

    def _count(self, tracking: Tracking, status: int | None) -> bool:
        """Tell the breaker how the attempt went; True when the answer was final."""
        final = tracking.final(status)
        if tracking.storm is None or (final and not self.breaker):
            return final
        repeat = tracking.breaker_key()
        if repeat is not None:
            if final:
                self.breaker.succeeded(repeat)
            else:
                self.breaker.failed(repeat, tracking.storm)
        return final

    def finish(
        self,
        tracking: Tracking,
        status: int,
        *,
        headers: dict[str, str],
        reply: dict[str, Any] | None = None,
        error: str | None = None,
        answer: ModelAnswer | None = None,
    ) -> None:
        """Write the outcome of an action that got an answer (`reply`: what to replay; `answer`:
        what a model call's answer says: its tokens are spent against its budgets, and the
        tool calls it proposes are remembered for the actions that carry them out)."""
        call = tracking.model_call
        if call is not None and answer is not None:
            self._answered(tracking, call, answer)
        if not tracking.logged:
            return
        final = self._count(tracking, status)
        key_outcome = None
        if tracking.keyed is not None:
            key_outcome = KeyOutcome(final, reply if final else None)
        record = records.outcome(
            tracking.ref,
            status=status,
            size=tracking.meter.size,
            sha256=tracking.meter.sha256,
            duration_ms=tracking.elapsed_ms(),
            headers=self.redactor.headers(headers),
            error=error,
            key_outcome=key_outcome,
            request_body=tracking.upload.seen() if tracking.upload is not None else None,
            answer=answer,
            keep_arguments=call is not None and call.keep_prompts,
            redactor=self.redactor,
        )
        self._settle(tracking, record)

    def _answered(self, tracking: Tracking, call: ModelCall, answer: ModelAnswer) -> None:
        if answer.usage is not None and tracking.spending is not None:
            self.ledger.correct(tracking.spending, answer.usage.total)
        if answer.calls:
            self.proposals.remember(call.agent, tracking.ref, answer.calls)
        try:
            self.used(call, answer)
        except Exception:
            logger.exception("a usage observer failed")

    def fail(self, tracking: Tracking, error: str) -> None:
        """Write the outcome of an action that got no answer."""
        if not tracking.logged:
            return
        final = self._count(tracking, None)
        record = records.failure(
            tracking.ref,
            error=error,
            duration_ms=tracking.elapsed_ms(),
            keep_key=final,
            request_body=tracking.upload.seen() if tracking.upload is not None else None,
        )
        self._settle(tracking, record)

    def _settle(self, tracking: Tracking, outcome: Record) -> None:
        """Write an outcome without waiting for it (it shares the next commit); one that releases
        the action's lock goes through the coordination that holds the lock."""
        self.append_soon(outcome, self.coordination.settle_soon if tracking.locked else None)


def _model_call(action: Action, decision: Decision, bodies: records.BodyPolicy) -> ModelCall | None:
    """What the outcome of a model call needs of its request and decision."""
    if action.inference is None:
        return None
    keep = decision.keep_prompts or bodies.limit_for(Effect.INFERENCE) > 0
    return ModelCall(action.agent, action.inference, decision.budgets, keep)

"""The gate: the mitmproxy addon that classifies, decides, logs and only then lets a request go.

Order per request: classify into an Action, decide with the rules, write the intent (durably
before anything goes upstream when the action mutates), forward, then write the outcome when
the response has passed through in full.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

from mitmproxy import http, tcp
from mitmproxy.proxy.mode_specs import ProxyMode

from rules import Action, Decision, Effect, Ruleset, Verdict
from rules.dedup import Storm, fingerprint
from store import ActionRef, KeyTaken, Log, Record, Settle, State, StoreError

from . import answers, dedup, records
from .dedup import DedupPolicy, Keyed
from .protocols.http import AGENT_HEADER, classify, header_map
from .redact import Redactor
from .storm import Breaker

logger = logging.getLogger(__name__)

TRACK = "airlock.tracking"
KEY_RULE = "idempotency-key"
STORM_RULE = "retry-storm"
KEY_POLL = 0.02  # how often a duplicate looks whether the first request has settled
STREAM_ABOVE = 256 * 1024


class Meter:
    """Counts and hashes a response body as it streams through, chunk by chunk, keeping up to
    `keep` bytes of it (for replays); `kept` is None once the body outgrew that."""

    def __init__(self, keep: int = 0) -> None:
        self.size = 0
        self._hash = hashlib.sha256()
        self._keep = keep
        self._kept: bytearray | None = bytearray() if keep else None

    def __call__(self, chunk: bytes) -> bytes:
        self.size += len(chunk)
        self._hash.update(chunk)
        if self._kept is not None:
            if len(self._kept) + len(chunk) > self._keep:
                self._kept = None
            else:
                self._kept += chunk
        return chunk

    @property
    def kept(self) -> bytes | None:
        """The body seen so far, if it was kept and fit."""
        return bytes(self._kept) if self._kept is not None else None

    @property
    def sha256(self) -> str:
        """Hex digest of everything seen so far."""
        return self._hash.hexdigest()


@dataclass
class Tracking:
    """What the gate keeps on a forwarded flow until its outcome is written."""

    ref: ActionRef
    keyed: Keyed | None = None  # holds a dedup key: its outcome keeps or releases it
    repeat: str | None = None  # who the action is to the retry-storm breaker
    storm: Storm | None = None
    started: float = field(default_factory=time.monotonic)
    meter: Meter = field(default_factory=Meter)

    def final(self, status: int | None) -> bool:
        """True when the answer (None: none) is the action's effect rather than a failure."""
        return self.keyed.final(status) if self.keyed is not None else dedup.is_final(status)

    def elapsed_ms(self) -> float:
        """Milliseconds since the request was let through."""
        return (time.monotonic() - self.started) * 1000


class Gate:
    """Decides every request against the rules and writes it to the log around forwarding."""

    def __init__(
        self,
        log: Log,
        ruleset: Ruleset,
        *,
        agent: str,
        bodies: records.BodyPolicy,
        upstreams: dict[ProxyMode, str] | None = None,
        dedup: DedupPolicy | None = None,
    ):
        self.log = log
        self.dedup = dedup or DedupPolicy()
        self.agent = agent
        self.bodies = bodies
        self.upstreams = upstreams or {}
        self.ruleset = ruleset
        self.redactor = Redactor(ruleset.secret_headers)
        self.breaker = Breaker()

    def use_rules(self, ruleset: Ruleset) -> None:
        """Decide from now on with `ruleset`."""
        self.ruleset, self.redactor = ruleset, Redactor(ruleset.secret_headers)

    async def request(self, flow: http.HTTPFlow) -> None:
        """Decide and log a request before it may go upstream; on any failure, refuse it."""
        if flow.response or flow.error or not flow.live:
            return
        try:
            upstream = self.upstreams.get(flow.client_conn.proxy_mode)
            action = classify(flow, agent=self.agent, upstream=upstream)
            decision = self.ruleset.evaluate(action)
            flow.request.headers.pop(AGENT_HEADER, None)
            await self._admit(flow, action, decision)
        except Exception:
            # mitmproxy forwards a flow whose hook raised: never let that happen unlogged.
            logger.exception("could not decide %s %s", flow.request.method, flow.request.pretty_url)
            flow.metadata.pop(TRACK, None)
            flow.response = answers.internal_error(
                "airlock could not decide or log this request; it was not forwarded"
            )

    def _intent(self, action: Action, decision: Decision, ref: ActionRef, **kw: Any) -> Record:
        """The intent record of an action, as this gate describes actions."""
        return records.intent(
            action,
            decision,
            ref,
            redactor=self.redactor,
            bodies=self.bodies,
            rules_digest=self.ruleset.digest,
            **kw,
        )

    async def _refuse(
        self, flow: http.HTTPFlow, action: Action, decision: Decision, status: int = 403
    ) -> None:
        ref = ActionRef()
        try:
            await self.log.append(self._intent(action, decision, ref))
        except StoreError as e:
            logger.error("a refusal was not logged: %s", e)
        flow.response = answers.refusal(decision, ref.id, status)

    async def _refuse_key(
        self, flow: http.HTTPFlow, action: Action, error: str, message: str, status: int
    ) -> None:
        await self._refuse(flow, action, Decision(Verdict.DENY, KEY_RULE, message, error), status)

    async def _admit(self, flow: http.HTTPFlow, action: Action, decision: Decision) -> None:
        if decision.refused:
            await self._refuse(flow, action, decision)
            return
        keyed = dedup.claim_for(action, decision, self.dedup)
        storm = decision.storm or self.dedup.storm
        repeat = None
        if keyed is not None:
            repeat = keyed.claim.key
        elif action.effect.mutating:
            repeat = f"{action.agent}|{fingerprint(action)}"
        if repeat is not None and (wait := self.breaker.retry_after(repeat, storm)) is not None:
            await self._refuse_storm(flow, action, storm, wait)
            return
        tracking = Tracking(ActionRef(), keyed=keyed, repeat=repeat, storm=storm)
        if keyed is not None:
            await self._admit_keyed(flow, action, decision, tracking, keyed)
            return
        intent = self._intent(action, decision, tracking.ref)
        if action.effect.mutating:
            try:
                await self.log.append(intent)
            except StoreError as e:
                flow.response = answers.unavailable(f"{e}; the request was not forwarded")
                return
        else:
            self._post(intent)
        flow.metadata[TRACK] = tracking

    async def _refuse_storm(self, flow: http.HTTPFlow, action: Action, storm: Storm, wait: float) -> None:
        retry = max(1, math.ceil(wait))
        message = (
            f"this action failed {storm.failures} times within {storm.window:g} s, so airlock stops "
            f"further attempts for {retry} s: stop retrying it, and find out why it fails "
            "(the upstream may be down, or the request may be wrong) before trying again"
        )
        decision = Decision(Verdict.DENY, storm.rule or STORM_RULE, message, "retry_storm")
        ref = ActionRef()
        try:
            await self.log.append(self._intent(action, decision, ref))
        except StoreError as e:
            logger.error("a refusal was not logged: %s", e)
        flow.response = answers.refusal(decision, ref.id, 429, {"Retry-After": str(retry)})

    async def _admit_keyed(
        self, flow: http.HTTPFlow, action: Action, decision: Decision, tracking: Tracking, keyed: Keyed
    ) -> None:
        """Claim the request's dedup key with its intent, or answer as its holder allows."""
        deadline = time.monotonic() + keyed.wait
        while True:
            tracking.ref = ActionRef()
            intent = self._intent(action, decision, tracking.ref, claim=keyed.claim, verify=keyed.verify)
            try:
                await self.log.append(intent)
            except KeyTaken as taken:
                if await self._duplicate(flow, action, keyed, taken, deadline):
                    return
                continue  # the key was released: this request may go
            except StoreError as e:
                flow.response = answers.unavailable(f"{e}; the request was not forwarded")
                return
            tracking.meter = Meter(keep=self.dedup.reply_limit)
            flow.metadata[TRACK] = tracking
            return

    async def _duplicate(
        self, flow: http.HTTPFlow, action: Action, keyed: Keyed, taken: KeyTaken, deadline: float
    ) -> bool:
        """Answer a request whose key another action holds; False if the key came free."""
        holder, label = taken.holder_id, keyed.label
        if taken.payload != keyed.claim.payload:
            message = (
                f"this {label} was used by action {holder} for a different request; "
                "use a new key for a new request"
            )
            await self._refuse_key(flow, action, "idempotency_key_reused", message, 422)
            return True
        if taken.final:
            if taken.reply is not None:
                await self._replay(flow, action, taken)
                return True
            message = (
                f"action {holder} with this {label} already took effect, and its response "
                "cannot be replayed (it was resolved after a crash, or too large to keep); do not retry"
            )
            await self._refuse_key(flow, action, "idempotency_key_completed", message, 409)
            return True
        if taken.state == State.IN_DOUBT:
            message = (
                f"action {holder} with this {label} is in doubt: the proxy stopped while it was "
                "in flight, so whether it took effect is unknown and this request was not executed; "
                f"an operator settles it with `airlock resolve {holder} --executed|--not-executed`, "
                "then retry with the same key"
            )
            await self._refuse_key(flow, action, "idempotency_in_doubt", message, 409)
            return True
        if keyed.reject:
            message = (
                f"action {holder} with this {label} is in flight, and the rule rejects duplicates "
                "instead of waiting; wait for the first request's answer instead of sending it again"
            )
            await self._refuse_key(flow, action, "idempotency_in_flight", message, 409)
            return True
        # In flight: wait for the first request to settle, then replay it or take the key.
        while time.monotonic() < deadline:
            await asyncio.sleep(KEY_POLL)
            held = self.log.key(keyed.claim.key)
            if held is None or held["action"] != holder or held.get("final"):
                return False
        message = (
            f"action {holder} with this {label} is still in flight after {keyed.wait:g} s; "
            "retry later with the same key"
        )
        await self._refuse_key(flow, action, "idempotency_in_flight", message, 409)
        return True

    async def _replay(self, flow: http.HTTPFlow, action: Action, taken: KeyTaken) -> None:
        assert taken.reply is not None
        ref = ActionRef()
        decision = Decision(Verdict.ALLOW, KEY_RULE, f"replayed from action {taken.holder_id}")
        try:
            await self.log.append(self._intent(action, decision, ref, replay_of=taken.holder_id))
        except StoreError as e:
            logger.error("a replay was not logged: %s", e)
        flow.response = dedup.replay(taken.reply, taken.holder_id)

    def _count(self, tracking: Tracking, status: int | None) -> bool:
        """Tell the breaker how the attempt went; True when the answer was final."""
        final = tracking.final(status)
        if tracking.repeat is not None and tracking.storm is not None:
            if final:
                self.breaker.succeeded(tracking.repeat)
            else:
                self.breaker.failed(tracking.repeat, tracking.storm)
        return final

    def _post(self, record: Record) -> None:
        try:
            self.log.post(record)
        except StoreError as e:
            logger.error("a %s entry was not written: %s", record.kind, e)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """Stream large or open-ended response bodies through a meter instead of buffering them."""
        tracking = flow.metadata.get(TRACK)
        if tracking is None or flow.response is None:
            return
        length = flow.response.headers.get("content-length", "")
        # Small bodies of known length pass whole: streaming them costs more than it saves.
        if not length.isdigit() or int(length) > STREAM_ABOVE:
            flow.response.stream = tracking.meter

    def response(self, flow: http.HTTPFlow) -> None:
        """Write the outcome once the whole response has passed."""
        tracking: Tracking | None = flow.metadata.pop(TRACK, None)
        if tracking is not None and flow.response is not None:
            self._record_response(flow, tracking)

    def _record_response(self, flow: http.HTTPFlow, tracking: Tracking, error: str | None = None) -> None:
        assert flow.response is not None
        meter = tracking.meter
        if not meter.size and flow.response.raw_content:
            meter(flow.response.raw_content)  # not streamed: the whole body is here
        status = flow.response.status_code
        final = self._count(tracking, status)
        settle = None
        if tracking.keyed is not None:
            body = meter.kept if error is None else None
            settle = Settle(final, dedup.reply_of(flow.response, body, self.redactor) if final else None)
        record = records.outcome(
            tracking.ref,
            status=status,
            size=meter.size,
            sha256=meter.sha256,
            duration_ms=tracking.elapsed_ms(),
            headers=self.redactor.headers(header_map(flow.response.headers)),
            error=error,
            settle=settle,
        )
        self._post(record)

    def error(self, flow: http.HTTPFlow) -> None:
        """Write a failure outcome for a request that got no response."""
        tracking: Tracking | None = flow.metadata.pop(TRACK, None)
        if tracking is None:
            return
        message = flow.error.msg if flow.error else "unknown error"
        if flow.response is not None:
            # The upstream answered, then the stream broke: the action did reach it.
            self._record_response(flow, tracking, error=message)
            return
        if flow.server_conn.timestamp_tcp_setup is not None:
            message += " (after connecting to the upstream)"
        final = self._count(tracking, None)
        record = records.failure(
            tracking.ref, error=message, duration_ms=tracking.elapsed_ms(), keep_key=final
        )
        self._post(record)

    async def tcp_start(self, flow: tcp.TCPFlow) -> None:
        """Refuse raw TCP streams: only HTTP(S) that the gate can read may pass."""
        host, port = flow.server_conn.address or ("unknown", 0)
        action = Action(
            method="CONNECT",
            scheme="tcp",
            host=str(host).lower(),
            port=port,
            path="",
            effect=Effect.WRITE,
            protocol="tcp",
            agent=self.agent,
        )
        decision = Decision(
            Verdict.DENY,
            "raw-tcp",
            f"raw TCP to {host}:{port} cannot be inspected, so it is refused; "
            "only HTTP and HTTPS pass through airlock",
            "protocol_refused",
        )
        intent = records.intent(
            action,
            decision,
            ActionRef(),
            redactor=self.redactor,
            bodies=self.bodies,
            rules_digest=self.ruleset.digest,
        )
        # Killing a TCP flow does not stop its connect; an error on the connection does.
        flow.server_conn.error = decision.message
        try:
            await self.log.append(intent)
        except StoreError as e:
            logger.error("a refusal was not logged: %s", e)

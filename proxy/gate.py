"""The gate: the mitmproxy addon that classifies, decides, logs and only then lets a request go.

Order per request: classify into an Action, decide with the rules, write the intent (durably
before anything goes upstream when the action mutates), forward, then write the outcome when
the response has passed through in full.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field

from mitmproxy import http, tcp
from mitmproxy.proxy.mode_specs import ProxyMode

from rules import Action, Decision, Effect, Ruleset, Verdict
from store import ActionRef, Log, Record, StoreError

from . import answers, records
from .protocols.http import AGENT_HEADER, classify, header_map
from .redact import Redactor

logger = logging.getLogger(__name__)

TRACK = "airlock.tracking"
STREAM_ABOVE = 256 * 1024


class Meter:
    """Counts and hashes a response body as it streams through, chunk by chunk."""

    def __init__(self) -> None:
        self.size = 0
        self._hash = hashlib.sha256()

    def __call__(self, chunk: bytes) -> bytes:
        self.size += len(chunk)
        self._hash.update(chunk)
        return chunk

    @property
    def sha256(self) -> str:
        """Hex digest of everything seen so far."""
        return self._hash.hexdigest()


@dataclass
class Tracking:
    """What the gate keeps on a forwarded flow until its outcome is written."""

    ref: ActionRef
    started: float = field(default_factory=time.monotonic)
    meter: Meter = field(default_factory=Meter)

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
    ):
        self.log = log
        self.agent = agent
        self.bodies = bodies
        self.upstreams = upstreams or {}
        self.ruleset = ruleset
        self.redactor = Redactor(ruleset.secret_headers)

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

    async def _admit(self, flow: http.HTTPFlow, action: Action, decision: Decision) -> None:
        ref = ActionRef()
        intent = records.intent(
            action,
            decision,
            ref,
            redactor=self.redactor,
            bodies=self.bodies,
            rules_digest=self.ruleset.digest,
        )
        if decision.refused:
            try:
                await self.log.append(intent)
            except StoreError as e:
                logger.error("a refusal was not logged: %s", e)
            flow.response = answers.refusal(decision, ref.id)
            return
        if action.effect.mutating:
            try:
                await self.log.append(intent)
            except StoreError as e:
                flow.response = answers.unavailable(f"{e}; the request was not forwarded")
                return
        else:
            self._post(intent)
        flow.metadata[TRACK] = Tracking(ref)

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
            meter(flow.response.raw_content)
        record = records.outcome(
            tracking.ref,
            status=flow.response.status_code,
            size=meter.size,
            sha256=meter.sha256,
            duration_ms=tracking.elapsed_ms(),
            headers=self.redactor.headers(header_map(flow.response.headers)),
            error=error,
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
        record = records.failure(tracking.ref, error=message, duration_ms=tracking.elapsed_ms())
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

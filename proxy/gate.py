"""The gate: the mitmproxy addon that classifies, decides, logs and only then lets a request go.

Order per request: classify into an Action, decide with the rules, write the intent (durably
before anything goes upstream when the action mutates), forward, then write the outcome when
the response has passed through in full.
"""

from __future__ import annotations

import logging

from mitmproxy import http, tcp
from mitmproxy.net.http import url
from mitmproxy.proxy.mode_specs import ProxyMode, TransparentMode

from rules import Action, Decision, Effect, Ruleset, Verdict
from store import Log

from . import answers, dedup, records
from .admission import Admission, Answer, Tracking
from .dedup import DedupPolicy
from .egress import Egress
from .mcp_http import EventStream, Exchange, json_answer, server_of, settle_json
from .protocols import mcp
from .protocols.http import AGENT_HEADER, classify, header_map
from .toolcalls import ToolCalls

logger = logging.getLogger(__name__)

TRACK = "airlock.tracking"
MCP = "airlock.mcp"
STREAM_ABOVE = 256 * 1024


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
        self.agent = agent
        self.upstreams = upstreams or {}
        self.admission = Admission(log, ruleset, bodies=bodies, policy=dedup or DedupPolicy())
        self.calls = ToolCalls(self.admission)
        self.egress = Egress(lambda: self.ruleset)
        self.legacy: set[str] = set()  # URLs legacy SSE sessions POST to (their channels)

    @property
    def ruleset(self) -> Ruleset:
        """The rules in force."""
        return self.admission.ruleset

    def use_rules(self, ruleset: Ruleset) -> None:
        """Decide from now on with `ruleset`."""
        self.admission.use_rules(ruleset)

    async def request(self, flow: http.HTTPFlow) -> None:
        """Decide and log a request before it may go upstream; on any failure, refuse it."""
        if flow.response or flow.error or not flow.live:
            return
        try:
            upstream = self.upstreams.get(flow.client_conn.proxy_mode)
            if isinstance(flow.client_conn.proxy_mode, TransparentMode):
                _name_by_host_header(flow)
            action = classify(flow, agent=self.agent, upstream=upstream)
            flow.request.headers.pop(AGENT_HEADER, None)
            if upstream is None:
                action = await self.egress.resolved(action)  # egress checks the addresses too
            if (session := mcp.session_action(action)) is not None:
                action = session
            elif action.method == "POST" and await self._mcp(flow, action):
                return
            action, decision = self.ruleset.decide(action)
            admitted = await self.admission.admit(action, decision, keep=self.admission.policy.reply_limit)
            if isinstance(admitted, Answer):
                flow.response = _http_answer(admitted)
            else:
                flow.metadata[TRACK] = admitted
        except Exception:
            # mitmproxy forwards a flow whose hook raised: never let that happen unlogged.
            logger.exception("could not decide %s %s", flow.request.method, flow.request.pretty_url)
            flow.metadata.pop(TRACK, None)
            flow.response = answers.internal_error(
                "airlock could not decide or log this request; it was not forwarded"
            )

    async def _mcp(self, flow: http.HTTPFlow, action: Action) -> bool:
        """Gate a POST of JSON-RPC messages as MCP; False if the body is not JSON-RPC."""
        try:
            messages = mcp.messages(action.body)
        except mcp.NotJsonRpc as e:
            decision = Decision(Verdict.DENY, None, f"{e}; nothing was forwarded", "invalid_jsonrpc")
            answer = await self.admission.refuse(action, decision, 400)
            error = mcp.rpc_error(None, mcp.INVALID_REQUEST, f"{answer.decision.message} (airlock)")
            flow.response = json_answer([error], batch=False, status=400)
            return True
        if messages is None:
            return False
        url = flow.request.url
        legacy = url in self.legacy
        exchange = Exchange(url if legacy else f"flow:{flow.id}", server_of(action), action, not legacy)
        answers = await self.calls.send(messages, action, channel=exchange.channel, server=exchange.server)
        if answers is None:
            flow.metadata[MCP] = exchange
        elif legacy and answers:
            # Legacy SSE clients read answers on their stream only: the server answers pings
            # in place of the refused requests, and the stream carries the real answers.
            flow.request.content = self.calls.stand_in(exchange.channel, answers)
        else:
            flow.response = json_answer(answers, batch=(action.body or b"").lstrip()[:1] == b"[")
        return True

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """Stream large or open-ended response bodies through a meter instead of buffering them;
        read MCP event streams on the way."""
        if flow.response is None:
            return
        tracking = flow.metadata.get(TRACK)
        exchange: Exchange | None = flow.metadata.get(MCP)
        if "text/event-stream" in flow.response.headers.get("content-type", ""):
            if exchange is not None or tracking is not None:
                flow.response.stream = EventStream(
                    self.calls,
                    url=flow.request.url,
                    action=exchange.action if exchange else classify(flow, agent=self.agent),
                    channel=exchange.channel if exchange else None,
                    legacy=self.legacy,
                    meter=tracking.meter if tracking else None,
                )
            return
        if tracking is None:
            return
        length = flow.response.headers.get("content-length", "")
        # Small bodies of known length pass whole: streaming them costs more than it saves.
        if not length.isdigit() or int(length) > STREAM_ABOVE:
            flow.response.stream = tracking.meter

    def response(self, flow: http.HTTPFlow) -> None:
        """Write the outcome once the whole response has passed."""
        exchange: Exchange | None = flow.metadata.pop(MCP, None)
        if exchange is not None and flow.response is not None:
            settle_json(self.calls, exchange, flow.response)
            if exchange.scoped:
                status = flow.response.status_code
                self.calls.close(exchange.channel, f"the server answered {status} without a response")
        tracking: Tracking | None = flow.metadata.pop(TRACK, None)
        if tracking is not None and flow.response is not None:
            self._record_response(flow, tracking)

    def _record_response(self, flow: http.HTTPFlow, tracking: Tracking, error: str | None = None) -> None:
        assert flow.response is not None
        meter = tracking.meter
        if not meter.size and flow.response.raw_content:
            meter(flow.response.raw_content)  # not streamed: the whole body is here
        reply = None
        if tracking.keyed is not None and error is None:
            reply = dedup.reply_of(flow.response, meter.kept)
        self.admission.finish(
            tracking,
            flow.response.status_code,
            headers=header_map(flow.response.headers),
            reply=reply,
            error=error,
        )

    def error(self, flow: http.HTTPFlow) -> None:
        """Write a failure outcome for a request that got no response."""
        message = flow.error.msg if flow.error else "unknown error"
        exchange: Exchange | None = flow.metadata.pop(MCP, None)
        if exchange is not None and exchange.scoped:
            self.calls.close(exchange.channel, message)
        tracking: Tracking | None = flow.metadata.pop(TRACK, None)
        if tracking is None:
            return
        if flow.response is not None:
            # The upstream answered, then the stream broke: the action did reach it.
            self._record_response(flow, tracking, error=message)
            return
        if flow.server_conn.timestamp_tcp_setup is not None:
            message += " (after connecting to the upstream)"
        self.admission.fail(tracking, message)

    def _tunnel(self, host: str, port: int, agent: str) -> Action:
        """A byte stream to `host:port`, as an action."""
        return Action(
            method="CONNECT",
            scheme="tcp",
            host=host.lower(),
            port=port,
            path="",
            effect=Effect.WRITE,
            protocol="tcp",
            agent=agent,
        )

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        """Open a tunnel only to an allowed host and port, at an allowed address."""
        if flow.response or flow.error or not flow.live:
            return
        try:
            agent = flow.request.headers.get(AGENT_HEADER, self.agent)
            action = await self.egress.resolved(self._tunnel(flow.request.host, flow.request.port, agent))
            decision = self.ruleset.egress_decision(action)
            if decision is not None and decision.refused:
                flow.response = _http_answer(await self.admission.refuse(action, decision))
        except Exception:
            logger.exception("could not decide CONNECT %s", flow.request.pretty_url)
            flow.response = answers.internal_error("airlock could not decide this tunnel; it was not opened")

    async def tcp_start(self, flow: tcp.TCPFlow) -> None:
        """Refuse raw TCP streams: only HTTP(S) that the gate can read may pass."""
        host, port = flow.server_conn.address or ("unknown", 0)
        action = self._tunnel(str(host), port, self.agent)
        decision = Decision(
            Verdict.DENY,
            "raw-tcp",
            f"raw TCP to {host}:{port} cannot be inspected, so it is refused; "
            "only HTTP and HTTPS pass through airlock",
            "protocol_refused",
        )
        # Killing a TCP flow does not stop its connect; an error on the connection does.
        flow.server_conn.error = decision.message
        await self.admission.refuse(action, decision)


def _name_by_host_header(flow: http.HTTPFlow) -> None:
    """A redirected connection names only an address: decide the request by the host it names
    (its Host header), and connect to that host, not to the address the client picked."""
    try:
        host, _ = url.parse_authority(flow.request.host_header or "", check=True)
    except ValueError:
        return  # no usable Host header: the bare address is the destination
    flow.request.data.host = host


def _http_answer(answer: Answer) -> http.Response:
    """An Answer as the HTTP response the client gets."""
    if answer.reply is not None and answer.replay_of is not None:
        replayed = dedup.replay(answer.reply, answer.replay_of)
        if replayed is not None:
            return replayed
        decision = Decision(
            Verdict.DENY,
            answer.decision.rule,
            f"action {answer.replay_of} already took effect, and its response cannot be replayed "
            "over HTTP; do not retry",
            "idempotency_key_completed",
        )
        return answers.refusal(decision, answer.action_id, 409)
    return answers.refusal(answer.decision, answer.action_id, answer.status, answer.headers)

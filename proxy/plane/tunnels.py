"""Tunnels: CONNECT opens only to allowed destinations, and only HTTP may speak inside one.

A tunnel is a byte stream to `host:port`. The gate can read HTTP in it (plain or behind TLS,
and WebSocket messages after an upgrade); anything else would leave unseen, so it is refused
and logged before a byte of it goes anywhere: raw TCP, DNS (mitmproxy would answer it itself,
bypassing the rules), UDP and QUIC, and any layer mitmproxy might pick that is not HTTP.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from mitmproxy import connection, http, tcp
from mitmproxy.proxy import commands, events, layer, layers
from mitmproxy.proxy.layers import modes
from mitmproxy.proxy.layers.http import HTTPMode

from proxy.core.admission import Admission
from proxy.plane.adapters.http import AGENT_HEADER
from rules import Action, Decision, Effect, Ruleset, Verdict

from . import answers
from .egress import Egress

logger = logging.getLogger(__name__)

RAW_TCP_RULE = "raw-tcp"
DNS_RULE = "dns-in-tunnel"
PROTOCOL_RULE = "protocol"

# The layers that carry only what the gate reads: the listeners' own layers, TLS, and HTTP.
READABLE = (modes.HttpProxy, modes.ReverseProxy, modes.TransparentProxy, layers.HttpLayer)
TLS = (layers.ServerTLSLayer, layers.ClientTLSLayer)


def tunnel_action(
    host: str, port: int, agent: str, protocol: str = "tcp", *, claimed: str | None = None
) -> Action:
    """A byte stream to `host:port`, as an action (`claimed`: the agent the client named itself)."""
    return Action(
        method="CONNECT",
        scheme="tcp",
        host=host.lower(),
        port=port,
        path="",
        effect=Effect.WRITE,
        protocol=protocol,
        agent=claimed or agent,
        configured_agent=agent if claimed and claimed != agent else None,
    )


def refusal(rule: str, message: str) -> Decision:
    """The decision that refuses a protocol the gate cannot read."""
    return Decision(Verdict.DENY, rule, message, "protocol_refused")


def raw_tcp(host: str, port: int) -> Decision:
    """Refuse bytes to `host:port` that are not HTTP."""
    return refusal(
        RAW_TCP_RULE,
        f"raw TCP to {host}:{port} cannot be inspected, so it is refused; "
        "only HTTP and HTTPS (and WebSocket) pass through airlock",
    )


def looks_like_http(data: bytes) -> bool:
    """True unless the first bytes rule out an HTTP request line (a verb, then a space)."""
    if len(data) < 3:
        return True  # too little to tell: the HTTP parser will refuse it if it is not HTTP
    first_line = data.split(b"\n", 1)[0]
    return data[:3].isalpha() and b" " in first_line


def refused_layer(chosen: layer.Layer, host: str, port: int) -> tuple[str, Decision]:
    """The protocol a refused layer speaks to `host:port`, as logged, and why it is refused."""
    if isinstance(chosen, layers.DNSLayer):
        return "dns", refusal(
            DNS_RULE,
            f"DNS to {host}:{port} through a tunnel would bypass the rules, so it is refused; "
            "resolve names with the system resolver and connect by name through airlock",
        )
    if isinstance(chosen, (layers.HttpLayer, layers.TCPLayer)):
        return "tcp", raw_tcp(host, port)
    kind = type(chosen).__name__.removesuffix("Layer")
    return "tcp", refusal(
        PROTOCOL_RULE,
        f"{kind} to {host}:{port} cannot be inspected, so it is refused; "
        "only HTTP and HTTPS (and WebSocket) pass through airlock",
    )


class Closed(layer.Layer):
    """A layer for what was refused: it closes the client's connection and passes nothing on."""

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.Start):
            yield commands.CloseConnection(self.context.client)
            if self.context.server.connected:
                yield commands.CloseConnection(self.context.server)


class Tunnels:
    """The mitmproxy addon that decides CONNECT and refuses every protocol but HTTP inside."""

    def __init__(self, admission: Admission, rules: Callable[[], Ruleset], egress: Egress, *, agent: str):
        self.admission = admission
        self.rules = rules
        self.egress = egress
        self.agent = agent
        self._claims: dict[str, str] = {}  # client connection id -> the agent its CONNECT claimed

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        """Open a tunnel only to an allowed host and port, at an allowed address."""
        if flow.response or flow.error or not flow.live:
            return
        try:
            claimed = flow.request.headers.get(AGENT_HEADER)
            if claimed:
                self._claims[flow.client_conn.id] = claimed
            tunnel = tunnel_action(flow.request.host, flow.request.port, self.agent, claimed=claimed)
            action = await self.egress.resolved(tunnel)
            decision = self.rules().egress_decision(action)
            if decision is not None and decision.refused:
                answer = await self.admission.refuse(action, decision)
                flow.response = answers.refusal(answer.decision, answer.action_id, answer.status)
        except Exception:
            # mitmproxy opens a tunnel whose hook raised: never let that happen undecided.
            logger.exception("could not decide CONNECT %s", flow.request.pretty_url)
            flow.response = answers.internal_error("airlock could not decide this tunnel; it was not opened")

    async def next_layer(self, nextlayer: layer.NextLayer) -> None:
        """Let only HTTP (behind TLS or not) through; refuse and log any other protocol."""
        chosen = nextlayer.layer
        if chosen is None or readable(chosen, nextlayer.data_client()):
            return
        context = nextlayer.context
        host, port = _destination(context.server)
        protocol, decision = refused_layer(chosen, host, port)
        nextlayer.layer = Closed(context)
        claimed = self._claims.get(context.client.id)
        await self.admission.refuse(
            tunnel_action(host, port, self.agent, protocol, claimed=claimed), decision
        )

    async def tcp_start(self, flow: tcp.TCPFlow) -> None:
        """Refuse raw TCP streams, should one start: only HTTP that the gate can read may pass."""
        host, port = _destination(flow.server_conn)
        decision = raw_tcp(host, port)
        # Killing a TCP flow does not stop its connect; an error on the connection does.
        flow.server_conn.error = decision.message
        if flow.killable:
            flow.kill()
        claimed = self._claims.get(flow.client_conn.id)
        await self.admission.refuse(tunnel_action(host, port, self.agent, claimed=claimed), decision)

    def client_disconnected(self, client: connection.Client) -> None:
        """Forget the claim of a closed connection."""
        self._claims.pop(client.id, None)


def readable(chosen: layer.Layer, data: bytes) -> bool:
    """True for a layer that carries only what the gate reads."""
    if isinstance(chosen, layers.HttpLayer) and chosen.mode is HTTPMode.transparent:
        return looks_like_http(data)  # in a tunnel, or redirected: it must be HTTP to pass
    return isinstance(chosen, READABLE + TLS)


def _destination(server: connection.Server) -> tuple[str, int]:
    host, port = server.address or ("unknown", 0)
    return str(host), int(port)

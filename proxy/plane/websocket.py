"""WebSocket messages through the gate: decided, logged, and only then passed on.

mitmproxy holds each message while its `websocket_message` hook runs. A message from the client
is decided by the rules (proxy/plane/adapters/websocket.py says how it reads) and its intent is
written, durably, before the hook returns; its outcome is written once it has been handed on.
A refused message is dropped, logged as denied, and the socket is closed on both sides with
1008 (policy violation) and a reason naming the rule. Messages from the server are logged as
reads, by size and digest. Once a socket is closed by airlock nothing more passes on it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import wsproto.events
from mitmproxy import ctx, http
from mitmproxy.proxy import layer, layers
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.websocket import WebSocketMessage

from proxy.core.admission import Admission, Answer
from proxy.core.tracking import Tracking
from proxy.mcp import messages as mcp
from proxy.plane.adapters.http import AGENT_HEADER
from rules import Action

from .adapters import websocket as ws
from .identity import IDENTITY, Identity, identified

logger = logging.getLogger(__name__)

CLAIMED = "airlock.ws.claimed"
BASE = "airlock.ws.base"
CLOSED = "airlock.ws.closed"
POLICY = 1008  # RFC 6455: a message violated the endpoint's policy
TRY_AGAIN = 1013  # RFC 6455: try again later (log unavailable, retry storm)
INTERNAL = 1011
REASON_BYTES = 123  # the most a close frame's reason may hold


def close_code(status: int) -> int:
    """The WebSocket close code for a refusal that HTTP would answer with `status`."""
    if status in (429, 503):
        return TRY_AGAIN
    return INTERNAL if status >= 500 else POLICY


def close_reason(answer: Answer) -> str:
    """A close reason naming the rule and why, cut to fit a close frame."""
    decision = answer.decision
    text = (
        f"airlock rule {decision.rule}: {decision.message}"
        if decision.rule
        else f"airlock: {decision.message}"
    )
    encoded = text.encode()
    return text if len(encoded) <= REASON_BYTES else encoded[:REASON_BYTES].decode(errors="ignore")


class WebSockets:
    """The mitmproxy addon that gates every WebSocket message."""

    def __init__(
        self,
        admission: Admission,
        upstreams: dict[ProxyMode, str],
        catalog: mcp.ToolCatalog,
        *,
        agent: str,
    ):
        self.admission = admission
        self.upstreams = upstreams
        self.catalog = catalog
        self.agent = agent

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Remember the agent an upgrade request claims (the gate removes the header before
        forwarding): its messages carry the same claim."""
        if flow.request.headers.get("upgrade", "").strip().lower() == "websocket":
            flow.metadata[CLAIMED] = flow.request.headers.get(AGENT_HEADER)

    async def websocket_message(self, flow: http.HTTPFlow) -> None:
        """Decide and log the newest message before mitmproxy passes it on; refuse it otherwise."""
        assert flow.websocket is not None
        message = flow.websocket.messages[-1]
        if flow.metadata.get(CLOSED):
            message.drop()  # the socket is being closed by airlock: nothing more passes
            return
        try:
            base = flow.metadata.get(BASE) or self._base(flow)
            if message.from_client:
                await self._send(flow, message, base)
            else:
                await self._receive(flow, message, base)
        except Exception:
            # mitmproxy passes a message whose hook raised: never let that happen unlogged.
            logger.exception("could not decide a WebSocket message on %s", flow.request.pretty_url)
            message.drop()
            close(flow, INTERNAL, "airlock could not decide or log this message; it was not passed on")

    def _base(self, flow: http.HTTPFlow) -> Action:
        """The action the socket's messages share, made once from its upgrade request."""
        request = flow.request.copy()
        if claimed := flow.metadata.get(CLAIMED):
            request.headers[AGENT_HEADER] = claimed
        upstream = self.upstreams.get(flow.client_conn.proxy_mode)
        identity: Identity | None = flow.metadata.get(IDENTITY)  # who sent the upgrade (the gate's)
        if identity is None:
            base = ws.base_of(request, agent=self.agent, upstream=upstream)
        else:
            base = identified(ws.base_of(request, agent=identity.name, upstream=upstream), identity)
        flow.metadata[BASE] = base
        return base

    async def _send(self, flow: http.HTTPFlow, message: WebSocketMessage, base: Action) -> None:
        action = ws.message_action(base, message.content, from_client=True)
        read = ws.deciding(ws.readings(action, self.admission.ruleset, self.catalog))
        admitted = await self.admission.admit(read.action, read.decision)
        if isinstance(admitted, Answer):
            message.drop()
            close(flow, close_code(admitted.status), close_reason(admitted))
            return
        # The message goes on as soon as this hook returns: its outcome is written right after.
        asyncio.get_running_loop().call_soon(self._passed, admitted)

    async def _receive(self, flow: http.HTTPFlow, message: WebSocketMessage, base: Action) -> None:
        action = ws.message_action(base, b"", from_client=False)
        decided, decision = self.admission.ruleset.decide(action)
        admitted = await self.admission.admit(decided, decision)
        if isinstance(admitted, Answer):
            message.drop()
            close(flow, close_code(admitted.status), close_reason(admitted))
            return
        admitted.meter(message.content)  # its size and digest, not its content
        asyncio.get_running_loop().call_soon(self._passed, admitted)

    def _passed(self, tracking: Tracking) -> None:
        try:
            self.admission.finish(tracking, ws.PASSED, headers={})
        except Exception:
            logger.exception("the outcome of a WebSocket message was not written")


def close(flow: http.HTTPFlow, code: int, reason: str) -> None:
    """Close the flow's WebSocket on both sides with `code` and `reason` (1008 for a refusal).

    mitmproxy has no command for this: the close is queued on the client side's WebSocket
    connection as if the client had sent it, and an empty injected message makes mitmproxy
    process it now; the layer then sends the close frame both ways and closes both connections.
    Every message after it is dropped.
    """
    flow.metadata[CLOSED] = True
    relay = _layer_of(flow)
    if relay is None:
        # No layer to close through (the connection is going away already): cut it instead.
        if flow.killable:
            flow.kill()
        return
    relay.client_ws._events.append(wsproto.events.CloseConnection(code=code, reason=reason))
    ctx.master.commands.call("inject.websocket", flow, False, b"", True)


def _layer_of(flow: http.HTTPFlow) -> layers.WebsocketLayer | None:
    """The layer relaying the flow's WebSocket, found from its client connection's handler."""
    handler = ctx.master.addons.get("proxyserver").connections.get(flow.client_conn.id)
    if handler is None:
        return None
    for node in _descendants(handler.layer):
        if isinstance(node, layers.WebsocketLayer) and node.flow is flow:
            return node
    return None


def _descendants(root: layer.Layer) -> Iterator[object]:
    """Every layer reachable from `root`: through next layers, child layers, HTTP streams, and
    the layer a mode layer hands its events to."""
    stack: list[object] = [root]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        stack.append(getattr(node, "layer", None))
        stack.append(getattr(node, "child_layer", None))
        streams = getattr(node, "streams", None)
        if isinstance(streams, dict):
            stack.extend(streams.values())
        handler = getattr(node, "_handle_event", None)
        stack.append(getattr(handler, "__self__", None))

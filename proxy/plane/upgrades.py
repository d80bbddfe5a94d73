"""Protocol upgrades: only WebSocket, whose messages the gate reads, may follow an HTTP request.

After `101 Switching Protocols` a connection carries whatever the two ends agreed on. Airlock
reads WebSocket messages (proxy/plane/websocket.py); any other protocol would be a byte stream nobody
inspects. So a request asking for another protocol (`Upgrade: foo`) is refused before it goes
upstream, and a 101 answer that is not a WebSocket handshake is never passed to the client:
the flow is killed and both connections close (mitmproxy's `rawtcp`, which would relay such
streams, is off as well).
"""

from __future__ import annotations

import logging

from mitmproxy import http

from proxy.core.tracking import Tracking
from rules import Decision, Verdict

from .gate import TRACK
from .guards import RequestGuard

logger = logging.getLogger(__name__)

UPGRADE_RULE = "upgrade"
WEBSOCKET_VERSION = "13"


def asked_protocol(request: http.Request) -> str | None:
    """The protocol a request asks to switch to, other than WebSocket; None if it asks for none."""
    if "upgrade" not in request.headers:
        return None
    asked = ", ".join(request.headers.get_all("upgrade")).strip()
    return None if asked.lower() == "websocket" else asked or "(empty)"


def is_websocket_handshake(flow: http.HTTPFlow) -> bool:
    """True when a 101 answer completes a WebSocket handshake that mitmproxy will relay as one."""
    assert flow.response is not None
    switched: str = flow.response.headers.get("upgrade", "")
    version: str = flow.request.headers.get("sec-websocket-version", "")
    return switched.strip().lower() == "websocket" and version == WEBSOCKET_VERSION


def refused_upgrade(protocol: str) -> Decision:
    """The refusal of a request that asks to switch to `protocol`."""
    return Decision(
        Verdict.DENY,
        UPGRADE_RULE,
        f"the request asks to switch the connection to {protocol!r} (its Upgrade header); airlock "
        "cannot inspect that protocol, so it is refused; only WebSocket upgrades pass",
        "protocol_refused",
    )


class Upgrades(RequestGuard):
    """The gate's guard that refuses upgrades to protocols the gate cannot read."""

    checks = "this upgrade"
    # The client may already be sending the other protocol's bytes: they must not be read as
    # the next HTTP request, so the connection ends with the refusal.
    closes = True

    def check(self, flow: http.HTTPFlow) -> Decision | None:
        """The refusal of a request that asks to switch to another protocol than WebSocket."""
        protocol = asked_protocol(flow.request)
        return None if protocol is None else refused_upgrade(protocol)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """Kill a flow whose upstream switched to a protocol other than WebSocket."""
        response = flow.response
        if response is None or response.status_code != 101 or is_websocket_handshake(flow):
            return
        switched = response.headers.get("upgrade", "") or "(unnamed)"
        why = (
            f"the upstream answered 101 Switching Protocols to {switched!r}, which airlock cannot "
            "inspect; the answer was not passed on and the connection was closed"
        )
        logger.warning("airlock: %s %s: %s", flow.request.method, flow.request.pretty_url, why)
        tracking: Tracking | None = flow.metadata.pop(TRACK, None)
        if tracking is not None:
            self.admission.fail(tracking, why)
        if flow.killable:
            flow.kill()

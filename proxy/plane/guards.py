"""What every guard of the gate shares: a synchronous check of each request that refuses, and
logs, what may not go on, returning a coroutine for mitmproxy to await only when it refuses."""

from __future__ import annotations

import logging
from collections.abc import Coroutine
from typing import Any

from mitmproxy import http
from mitmproxy.proxy.mode_specs import ProxyMode

from proxy.core.admission import Admission
from proxy.plane.adapters.http import classify
from rules import Decision

from . import answers
from .identity import IDENTITY, Identity, identified

logger = logging.getLogger(__name__)


class RequestGuard:
    """A check the gate runs before it decides a request (see gate.Guard); subclasses say what
    they refuse in `check`."""

    checks = "this request"  # what the guard checks, for the answer when the check itself fails
    closes = False  # True: the connection ends with the refusal

    def __init__(self, admission: Admission, upstreams: dict[ProxyMode, str], *, agent: str):
        self.admission = admission
        self.upstreams = upstreams
        self.agent = agent

    def check(self, flow: http.HTTPFlow) -> Decision | None:
        """The refusal of the request, or None when it may go on to the gate."""
        raise NotImplementedError

    def request(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        """None when the request may go on; else the coroutine that refuses and logs it."""
        if flow.response or flow.error or not flow.live:
            return None
        try:
            refusal = self.check(flow)
        except Exception:
            # mitmproxy forwards a flow whose hook raised: refuse instead.
            logger.exception("could not check %s: %s", self.checks, flow.request.pretty_url)
            flow.response = answers.internal_error(
                f"airlock could not check {self.checks}; it was not forwarded"
            )
            return None
        return None if refusal is None else self._refuse(flow, refusal)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """Look at an answer before the gate does; by default there is nothing to look at."""

    async def _refuse(self, flow: http.HTTPFlow, refusal: Decision) -> None:
        try:
            upstream = self.upstreams.get(flow.client_conn.proxy_mode)
            identity: Identity | None = flow.metadata.get(IDENTITY)  # who sent it, as the gate established
            agent = self.agent if identity is None else identity.name
            action = classify(flow, agent=agent, upstream=upstream)
            refused = action if identity is None else identified(action, identity)
            answer = await self.admission.refuse(refused, refusal)
            flow.response = answers.refusal(answer.decision, answer.action_id, answer.status)
            if self.closes:
                flow.response.headers["connection"] = "close"
        except Exception:
            logger.exception("could not refuse %s", flow.request.pretty_url)
            flow.response = answers.internal_error(
                f"airlock could not check {self.checks}; it was not forwarded"
            )

"""Names inside a connection must agree with where it goes: no domain fronting.

The gate decides a request by its destination: the host of a CONNECT tunnel, of an absolute
URL, or (for redirected connections) the Host header it follows. Upstreams that serve many
names (CDNs, shared load balancers, virtual hosts) route by the names inside instead: the TLS
SNI, the `Host` header, HTTP/2's `:authority`. A request whose inner names differ from its
destination would reach a service the rules never decided on, so it is refused and logged,
naming both. Reverse listeners are exempt: mitmproxy sets the names to the named upstream.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from mitmproxy import http
from mitmproxy.net.http import url
from mitmproxy.proxy.mode_specs import ReverseMode, TransparentMode

from rules import Decision, Verdict

from .guards import RequestGuard

logger = logging.getLogger(__name__)

FRONTING_RULE = "domain-fronting"


def _canonical(host: str) -> str:
    return host.strip().rstrip(".").lower()


def inner_names(flow: http.HTTPFlow) -> Iterator[tuple[str, str]]:
    """Every name the request carries for its upstream: (where it is, the value)."""
    request = flow.request
    for value in request.headers.get_all("host"):
        yield "Host header", value
    if (request.is_http2 or request.is_http3) and request.authority:
        yield ":authority", request.authority
    if flow.client_conn.sni:
        yield "TLS SNI", flow.client_conn.sni


def mismatch(flow: http.HTTPFlow) -> str | None:
    """Why the names inside the request disagree with its destination, or None if they agree."""
    named = list(inner_names(flow))
    if isinstance(flow.client_conn.proxy_mode, TransparentMode):
        if not named:
            return None
        # A redirected connection names only an address: the first inner name is the destination.
        where, value = named[0]
        try:
            host, port = url.parse_authority(value, check=True)
        except ValueError:
            return f"its {where} {value!r} is not a valid host"
        target, target_port, destination = host, port or flow.request.port, f"the {where}'s {value}"
    else:
        target, target_port = flow.request.host, flow.request.port
        destination = url.hostport(flow.request.scheme, target, target_port)
        # The common case: every name is the destination as the client wrote it.
        same = {target.lower(), destination.lower(), f"{target}:{target_port}".lower()}
        if all(value.lower() in same for _, value in named):
            return None
    for where, value in named:
        try:
            host, port = url.parse_authority(value, check=True)
        except ValueError:
            return f"the request goes to {destination}, and its {where} {value!r} is not a valid host"
        if _canonical(host) != _canonical(target) or (port is not None and port != target_port):
            return f"the request goes to {destination}, but its {where} names {value}"
    return None


def refused_fronting(why: str) -> Decision:
    """The refusal of a request whose names disagree."""
    return Decision(
        Verdict.DENY,
        FRONTING_RULE,
        f"{why}; a different name inside the connection than its destination (domain fronting) "
        "would reach a service the rules did not decide on, so it is refused; "
        "send the request to the host it names, by that name",
        "name_mismatch",
    )


class Fronting(RequestGuard):
    """The gate's guard that refuses requests whose names disagree with their destination."""

    checks = "the names in this request"

    def check(self, flow: http.HTTPFlow) -> Decision | None:
        """The refusal of a request naming another host inside than the one it goes to."""
        if isinstance(flow.client_conn.proxy_mode, ReverseMode):
            return None  # mitmproxy sets the names to the named upstream
        why = mismatch(flow)
        return None if why is None else refused_fronting(why)

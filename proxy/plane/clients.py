"""Which clients a listener serves: a listener open to the world does not serve the world.

mitmproxy's own `block_global` refuses every client with a public address on every listener,
which also kills the connections `airlock capture` redirects to the transparent listener when
the agent's source address is public (a pod or a host with a public IP). Here the rule is per
listener: the transparent listener serves whatever is redirected to it (capture redirects only
the agent user's own traffic, and the listener binds where the operator says), and a forward or
reverse listener bound to every interface refuses clients from public addresses.
"""

from __future__ import annotations

import ipaddress
import logging

from mitmproxy import connection
from mitmproxy.proxy.mode_specs import ProxyMode, TransparentMode

logger = logging.getLogger(__name__)

EVERY_INTERFACE = frozenset({"", "0.0.0.0", "::"})


def refusal(mode: ProxyMode, peer: str) -> str | None:
    """Why a client at `peer` may not use the listener of `mode`, or None when it may."""
    if isinstance(mode, TransparentMode):
        return None  # redirected to us on purpose, from wherever the agent's traffic comes from
    if mode.listen_host() not in EVERY_INTERFACE:
        return None  # bound to an interface the operator chose
    try:
        address = ipaddress.ip_address(peer.rsplit("%", 1)[0])
    except ValueError:
        return None  # not an IP peer (a UNIX socket): local by nature
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if not address.is_global:
        return None
    return (
        f"client {peer} has a public address and the listener is open on every interface; "
        "bind the listener to a private or loopback address to serve it"
    )


class Clients:
    """The mitmproxy addon that refuses clients a listener should not serve."""

    def client_connected(self, client: connection.Client) -> None:
        """Refuse the client (mitmproxy closes the connection) if its listener should not serve it."""
        if not client.peername:
            return  # no address to judge (not an IP connection)
        why = refusal(client.proxy_mode, str(client.peername[0]))
        if why is not None:
            logger.warning("airlock: %s", why)
            client.error = why

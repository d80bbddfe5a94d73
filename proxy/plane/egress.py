"""Egress by address: a name on the allowlist reaches only the addresses the rules allow.

The gate resolves a request's host before deciding it, and the rules refuse names that resolve
to loopback, private, link-local, metadata or other non-public addresses (unless a range entry
allows them). The connection then goes to exactly the address that was checked: each answer
is kept for a few seconds and mitmproxy is handed the address, not the name, so a DNS server
that answers differently the second time (DNS rebinding) gains nothing. Connections the gate
did not see (raw TCP, tunnels) are checked here as they open.

Keep-alive: an open connection is named by its host again, so mitmproxy reuses it for later
requests to that host; before a request may reuse one, its address is checked again against
the host's current answer and the rules in force, and a connection whose address would not be
picked now is closed, so the request opens a new one to a checked address.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

from mitmproxy import connection, ctx, http
from mitmproxy.proxy import server_hooks
from mitmproxy.proxy.mode_specs import ReverseMode

from rules import ALLOWED, Action, Address, Ruleset, address_of

from .discard import Discard

logger = logging.getLogger(__name__)

TTL = 10.0  # seconds an answer is used for; the check and the connect see the same one
CAPACITY = 4096


class Unresolvable(OSError):
    """The name has no address."""


async def system_lookup(host: str) -> list[str]:
    """The addresses the system resolver (getaddrinfo: hosts file, DNS) gives for `host`."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class Resolver:
    """Names to addresses through the system resolver, each answer kept for `ttl` seconds."""

    def __init__(
        self,
        ttl: float = TTL,
        capacity: int = CAPACITY,
        lookup: Callable[[str], Awaitable[list[str]]] | None = None,
    ):
        self.ttl = ttl
        self.capacity = capacity
        self.lookup = lookup or system_lookup
        self._answers: OrderedDict[str, tuple[float, list[Address]]] = OrderedDict()

    async def addresses(self, host: str) -> list[Address]:
        """The addresses of `host` (itself, for an IP address); raise Unresolvable."""
        if (address := address_of(host)) is not None:
            return [address]
        host = host.lower()
        now = time.monotonic()
        kept = self._answers.get(host)
        if kept is not None and kept[0] > now:
            return kept[1]
        try:
            answer = await self.lookup(host)
        except (OSError, UnicodeError) as e:
            raise Unresolvable(f"cannot resolve {host}: {e}") from e
        found = list(dict.fromkeys(a for text in answer if (a := address_of(text)) is not None))
        if not found:
            raise Unresolvable(f"cannot resolve {host}: no addresses")
        self._answers[host] = (now + self.ttl, found)
        self._answers.move_to_end(host)
        while len(self._answers) > self.capacity:
            self._answers.popitem(last=False)
        return found


class Egress:
    """The mitmproxy addon that connects only to checked addresses, and the check itself."""

    def __init__(
        self, rules: Callable[[], Ruleset], resolver: Resolver | None = None, discard: Discard | None = None
    ):
        self.rules = rules
        self.resolver = resolver or Resolver()
        self.discard = discard  # where refused uploads stream to: the one loopback it lets through
        self._names: dict[str, tuple[str, int]] = {}  # connection id -> the address as named
        self._pinned: dict[str, Address] = {}  # connection id -> the address it was checked for
        # (client connection id, host, port) -> that client's open connections named by the host
        self._open: dict[tuple[str, str, int], dict[str, tuple[connection.Server, Address]]] = {}
        self._keys: dict[str, tuple[str, str, int]] = {}  # connection id -> its key in _open
        self._own: frozenset[tuple[Address | None, int]] = frozenset()  # Airlock's listeners

    def refuse_own(self, listeners: Iterable[tuple[str, int]]) -> None:
        """Never connect to Airlock's own listeners (`(host, port)`; an empty or unspecified host
        listens on every interface): the control API takes votes and freezes, and an agent that
        allowed loopback must not reach it, or the proxy itself, through the proxy."""
        self._own = frozenset(
            (None if not h or h in ("0.0.0.0", "::") else address_of(h), p) for h, p in listeners
        )

    def _is_own(self, address: Address, port: int) -> bool:
        local = address.is_loopback or address.is_unspecified
        return any(p == port and (local or address == host) for host, p in self._own)

    async def resolved(self, action: Action) -> Action:
        """The action with the addresses its host resolves to, for the rules to check (a name
        that does not resolve is left as it is: nothing can connect to it)."""
        try:
            addresses = await self.resolver.addresses(action.host)
        except Unresolvable:
            return action
        return dataclasses.replace(action, addresses=tuple(addresses))

    async def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        """Point the connection at the checked address of its host, or refuse it."""
        server = data.server
        if server.error or server.via is not None or server.address is None:
            return
        host, port = str(server.address[0]), int(server.address[1])
        if self.discard is not None and self.discard.owns(host, port):
            return  # a refused upload's body, on its way to be dropped (proxy/plane/discard.py)
        if isinstance(data.client.proxy_mode, ReverseMode):
            return  # an upstream the operator named on the command line
        try:
            addresses = await self.resolver.addresses(host)
        except Unresolvable as e:
            server.error = str(e)
            return
        # The name itself was decided by the gate (requests, tunnels) or refused (raw TCP).
        allowed, decision = self.rules().check_address(ALLOWED, host, port, addresses)
        if allowed is None:
            server.error = f"airlock refused the connection: {decision.message}"
            logger.warning("egress: %s", server.error)
            return
        if self._is_own(allowed, port):
            server.error = (
                f"airlock refused the connection: {host}:{port} is airlock's own control API or "
                "proxy listener, which is not reachable through the proxy"
            )
            logger.warning("egress: %s", server.error)
            return
        if address_of(host) is None:
            self._names[server.id] = (host, port)
            self._pinned[server.id] = allowed
            server.sni = server.sni or host
        server.address = (str(allowed), port)

    def server_connected(self, data: server_hooks.ServerConnectionHookData) -> None:
        """Name the connection by its host again, so later requests to the host reuse it."""
        named = self._names.get(data.server.id)
        pinned = self._pinned.get(data.server.id)
        self._restore(data.server)
        if named is not None and pinned is not None:
            key = (data.client.id, *named)
            self._open.setdefault(key, {})[data.server.id] = (data.server, pinned)
            self._keys[data.server.id] = key

    def server_disconnected(self, data: server_hooks.ServerConnectionHookData) -> None:
        """Forget a closed connection."""
        key = self._keys.pop(data.server.id, None)
        servers = self._open.get(key) if key is not None else None
        if key is not None and servers is not None:
            servers.pop(data.server.id, None)
            if not servers:
                del self._open[key]

    def request(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        """Before a decided request may reuse an open connection to its host, close those whose
        address the check would not pick now (the answer changed, or the rules did). Only a
        request with open connections to recheck returns a coroutine for mitmproxy to await.
        A streamed request was rechecked at its headers (the gate's `requestheaders`)."""
        if flow.response or flow.error or not self._open or flow.request.stream:
            return None
        host, port = flow.request.host, flow.request.port
        servers = self._open.get((flow.client_conn.id, host, port))
        if not servers:
            return None
        return self._recheck(flow, host, port, servers)

    async def _recheck(
        self, flow: http.HTTPFlow, host: str, port: int, servers: dict[str, tuple[connection.Server, Address]]
    ) -> None:
        try:
            addresses = await self.resolver.addresses(host)
        except Unresolvable:
            addresses = []
        rules = self.rules()
        allowed = {a for a in addresses if rules.address_refusal(host, a, port) is None}
        if not allowed and rules.egress_report and addresses:
            allowed = {addresses[0]}  # report mode connects to the first, as server_connect does
        for server_id, (server, pinned) in list(servers.items()):
            if pinned not in allowed:
                del servers[server_id]
                logger.info(
                    "egress: closing a connection to %s (%s): not the checked address now", host, pinned
                )
                _close(flow, server)

    def server_connect_error(self, data: server_hooks.ServerConnectionHookData) -> None:
        """Forget a connection that did not open."""
        self._restore(data.server)

    def _restore(self, server: connection.Server) -> None:
        self._pinned.pop(server.id, None)
        named = self._names.pop(server.id, None)
        if named is None:
            return
        # mitmproxy reuses a connection for a request whose host and port equal its address,
        # and refuses to change the address of an open connection. Naming it by its host again
        # is what lets keep-alive work; its peer stays the address that was checked, and a
        # request is decided (its name and addresses checked) before any connection is chosen.
        object.__setattr__(server, "address", named)


def _close(flow: http.HTTPFlow, server: connection.Server) -> None:
    """Close an open upstream connection of the flow's client (mitmproxy then opens another for
    the next request on it)."""
    proxyserver = ctx.master.addons.get("proxyserver")
    handler = proxyserver.connections.get(flow.client_conn.id) if proxyserver is not None else None
    if handler is not None and server in handler.transports:
        handler.close_connection(server)

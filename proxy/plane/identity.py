"""Who sent a request, as Airlock establishes it rather than as the request claims.

Each way in has its own credentials:

- forward proxy: `Proxy-Authorization: Basic base64(NAME:TOKEN)`, which clients send for a proxy
  URL `http://NAME:TOKEN@HOST:PORT`; on a CONNECT it comes once, with the tunnel, and the
  requests inside carry none, so the tunnel's credentials are kept per client connection;
- reverse mode (and any request, whichever way it came): `X-Airlock-Session: NAME:TOKEN`;
- transparent capture: the UID the connection comes from (for a local connection the kernel's
  socket tables, /proc/net/tcp and tcp6, say whose socket the client's is), mapped to a name by
  `airlock run --agent-uid UID=NAME`;
- none of these: the agent the operator configured (`airlock run --agent`, `anonymous` by
  default).

Credentials are looked up each request by their token's digest: a session ended or expired
since its tunnel opened stops passing at once. Bad credentials (malformed, unknown token, a
token of another name, an ended or expired session) are refused with 407 and logged. A session
superseded by a newer one of its name still passes here with its own (stale) epoch: the intent's
fence refuses it. Credential headers never go upstream, and the log never holds them.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from mitmproxy import connection, http
from mitmproxy.proxy.mode_specs import ProxyMode, TransparentMode

from proxy.core.admission import Admission
from proxy.core.credentials import (
    PROXY_AUTHORIZATION,
    SESSION_HEADER,
    BadCredentials,
    Credentials,
    from_basic,
    from_pair,
)
from proxy.plane.adapters.http import classify
from rules import Action, Decision, Verdict
from store import Log, when

from . import answers

logger = logging.getLogger(__name__)

IDENTITY = "airlock.identity"  # flow.metadata: the Identity the request was sent as
IDENTITY_RULE = "identity"
REALM = 'Basic realm="airlock"'


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified agent name, with the session its credentials belong to and that session's
    epoch (None for a name the operator gave: configured, or mapped from a UID)."""

    name: str
    session: str | None = None
    epoch: int | None = None


class Unverified(Exception):
    """Credentials that do not prove who sent the request: the message says why."""


def identified(action: Action, identity: Identity) -> Action:
    """`action` (classified with `identity.name` as its agent) with who sent it: verified unless
    the request named another agent itself, which stays a claim."""
    others = tuple(identified(o, identity) for o in action.others)
    return dataclasses.replace(
        action,
        verified=not action.agent_claimed,
        session=identity.session,
        epoch=identity.epoch,
        others=others,
    )


def refusal(why: str) -> Decision:
    """The refusal of a request whose credentials prove nothing."""
    return Decision(
        Verdict.DENY,
        IDENTITY_RULE,
        f"{why}; get new credentials with `airlock session new NAME` and use the proxy URL it prints "
        "(or send `X-Airlock-Session: NAME:TOKEN` to a reverse listener), or send none to act as the "
        "proxy's configured agent",
        "bad_credentials",
    )


class Identities:
    """The gate's child addon that says who sent each request (see the module's docstring)."""

    def __init__(
        self,
        log: Log,
        admission: Admission,
        upstreams: Mapping[ProxyMode, str],
        *,
        agent: str,
        by_uid: Mapping[int, str] | None = None,
        clock: Callable[[], float] = time.time,
        proc: Path = Path("/proc/net"),
    ):
        self.log = log
        self.admission = admission
        self.upstreams = upstreams
        self.agent = agent
        self.by_uid = dict(by_uid or {})
        self.clock = clock
        self.proc = proc
        self._tunnels: dict[str, Credentials] = {}  # client connection id -> its CONNECT's credentials

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        """Check a CONNECT's credentials: refuse bad ones (407), keep good ones for the tunnel."""
        if flow.response or flow.error or not flow.live:
            return
        try:
            credentials = self._sent(flow)
            if credentials is None:
                return
            self.verify(credentials)
            self._tunnels[flow.client_conn.id] = credentials
        except Unverified as e:
            await self._refuse(flow, str(e))
        except Exception:
            logger.exception("could not check the credentials of CONNECT %s", flow.request.pretty_url)
            flow.response = answers.internal_error("airlock could not check this tunnel's credentials")

    def client_disconnected(self, client: connection.Client) -> None:
        """Forget a closed connection's credentials."""
        self._tunnels.pop(client.id, None)

    async def request(self, flow: http.HTTPFlow) -> Identity | None:
        """Who sent `flow` (also kept in its metadata), with its credential headers removed; None
        when its credentials are bad, and the flow was answered 407."""
        try:
            credentials = self._sent(flow) or self._tunnels.get(flow.client_conn.id)
            identity = self.verify(credentials) if credentials is not None else self.unnamed(flow)
        except Unverified as e:
            await self._refuse(flow, str(e))
            return None
        except Exception:
            # mitmproxy forwards a flow whose hook raised: refuse instead.
            logger.exception("could not tell who sent %s", flow.request.pretty_url)
            flow.response = answers.internal_error("airlock could not check this request's credentials")
            return None
        flow.metadata[IDENTITY] = identity
        return identity

    def verify(self, credentials: Credentials) -> Identity:
        """The identity `credentials` prove; Unverified says why they prove none."""
        # Looked up by the token's SHA-256: how long the lookup takes says nothing of the token.
        found = self.log.session_by_token(credentials.digest)
        if found is None:
            raise Unverified(f"the token sent for agent {credentials.name!r} is not one of any session")
        if found.agent != credentials.name:
            raise Unverified(f"the token sent for agent {credentials.name!r} is another agent's")
        if found.ended is not None:
            raise Unverified(f"session {found.id} of agent {found.agent!r} ended at {when(found.ended)}")
        if found.expires is not None and found.expires <= self.clock():
            raise Unverified(f"session {found.id} of agent {found.agent!r} expired at {when(found.expires)}")
        return Identity(found.agent, found.id, found.epoch)

    def unnamed(self, flow: http.HTTPFlow) -> Identity:
        """Who sent a request without credentials: the agent its UID maps to under capture,
        else the configured agent."""
        if self.by_uid and isinstance(flow.client_conn.proxy_mode, TransparentMode):
            peer = flow.client_conn.peername
            uid = socket_uid(peer[0], peer[1], self.proc) if peer else None
            if uid is not None and uid in self.by_uid:
                return Identity(self.by_uid[uid])
        return Identity(self.agent)

    def _sent(self, flow: http.HTTPFlow) -> Credentials | None:
        """The credentials the request itself carries (removed from it), if any."""
        headers = flow.request.headers
        basic = headers.pop(PROXY_AUTHORIZATION, None)
        pair = headers.pop(SESSION_HEADER, None)
        try:
            if pair is not None:
                return from_pair(pair, "X-Airlock-Session")
            if basic is not None:
                return from_basic(basic)
        except BadCredentials as e:
            raise Unverified(str(e)) from None
        return None

    async def _refuse(self, flow: http.HTTPFlow, why: str) -> None:
        """Answer 407 with what is wrong and what to do, and log the refused action."""
        decision = refusal(why)
        headers = {"Proxy-Authenticate": REALM}
        try:
            upstream = self.upstreams.get(flow.client_conn.proxy_mode)
            answer = await self.admission.refuse(
                classify(flow, agent=self.agent, upstream=upstream), decision, 407
            )
            flow.response = answers.refusal(answer.decision, answer.action_id, 407, headers)
        except Exception:
            logger.exception("could not refuse %s", flow.request.pretty_url)
            flow.response = answers.refusal(decision, None, 407, headers)


def socket_uid(host: str, port: int, proc: Path = Path("/proc/net")) -> int | None:
    """The UID owning the local TCP socket bound to host:port (a client of ours on this host,
    as /proc/net/tcp and tcp6 list it), or None when no such socket is in this network namespace."""
    try:
        address = ipaddress.ip_address(host.rsplit("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    wanted = {_proc_address(address, port)}
    if isinstance(address, ipaddress.IPv4Address):
        wanted.add(_proc_address(ipaddress.IPv6Address(f"::ffff:{address}"), port))
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 7 and fields[1] in wanted and fields[3] != "0A":  # 0A: listening
                return int(fields[7])
    return None


def _proc_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> str:
    """An address as /proc/net/tcp{,6} prints it: each 32-bit word in host (little-endian) order."""
    raw = address.packed
    words = "".join(raw[i : i + 4][::-1].hex().upper() for i in range(0, len(raw), 4))
    return f"{words}:{port:04X}"

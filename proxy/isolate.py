"""`airlock exec --isolate`: run a command in a network namespace whose only way out is airlock.

The namespace has loopback and one veth link to the host. On the host side of the link:

- every TCP connection from the namespace is redirected (DNAT) to airlock's transparent
  listener on the host's loopback, which recovers the original destination and applies the
  rules as for any other request;
- DNS queries (UDP port 53 to the host end of the link, which is the namespace's only
  nameserver) are relayed to the host's own resolver by this process;
- everything else from the namespace (other UDP, ICMP, forwarding) is dropped.

The command runs without capabilities (an empty bounding set), so even as root it cannot
change the namespace's network or enter the host's. Everything made here is removed when the
command ends, whatever way it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .capture import resolvers
from .config import Address

NETNS_ETC = Path("/etc/netns")
DNS_PORT = 53


class IsolateError(RuntimeError):
    """The namespace could not be made; the message says what is missing."""


@dataclass(frozen=True)
class Link:
    """The names and addresses of one isolated namespace."""

    name: str
    host_if: str
    ns_if: str
    host_ip: str
    ns_ip: str

    @classmethod
    def for_process(cls, pid: int) -> Link:
        """A link named after `pid`, on a /30 of 169.254.200.0/21 chosen by it (far from the
        metadata address 169.254.169.254)."""
        a, b = 200 + (pid >> 6) % 8, (pid & 0x3F) << 2
        return cls(
            f"airlock-{pid}",
            f"alh{pid}"[:15],
            f"aln{pid}"[:15],
            f"169.254.{a}.{b + 1}",
            f"169.254.{a}.{b + 2}",
        )


def _ip(*args: str) -> None:
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        raise IsolateError(f"{' '.join(args)}: {done.stderr.strip() or done.returncode}")


def _quiet(*args: str) -> None:
    subprocess.run(args, capture_output=True)


def _host_rules(link: Link, transparent: Address) -> list[list[str]]:
    to = f"{transparent.host}:{transparent.port}"
    return [
        ["-t", "nat", "-I", "PREROUTING", "-i", link.host_if, "-p", "tcp",
         "-j", "DNAT", "--to-destination", to],
        ["-t", "filter", "-I", "INPUT", "-i", link.host_if, "-j", "DROP"],
        ["-t", "filter", "-I", "INPUT", "-i", link.host_if, "-p", "udp", "-d", link.host_ip,
         "--dport", str(DNS_PORT), "-j", "ACCEPT"],
        ["-t", "filter", "-I", "INPUT", "-i", link.host_if, "-p", "tcp", "-d", transparent.host,
         "--dport", str(transparent.port), "-j", "ACCEPT"],
        ["-t", "filter", "-I", "FORWARD", "-i", link.host_if, "-j", "DROP"],
    ]  # fmt: skip


@contextlib.contextmanager
def namespace(link: Link, transparent: Address) -> Iterator[None]:
    """Make the namespace, its link and the host's rules; remove them all on the way out."""
    if os.geteuid() != 0:
        raise IsolateError("--isolate needs root (network namespaces and iptables)")
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            raise IsolateError(f"--isolate needs {tool}: install it (apt-get install iproute2 iptables)")
    if transparent.host != "127.0.0.1":
        raise IsolateError(f"--transparent {transparent}: --isolate reaches airlock on 127.0.0.1 only")
    rules = _host_rules(link, transparent)
    etc = NETNS_ETC / link.name
    try:
        _ip("ip", "netns", "add", link.name)
        _ip("ip", "link", "add", link.host_if, "type", "veth", "peer", "name", link.ns_if)
        _ip("ip", "link", "set", link.ns_if, "netns", link.name)
        _ip("ip", "addr", "add", f"{link.host_ip}/30", "dev", link.host_if)
        _ip("ip", "link", "set", link.host_if, "up")
        inside = ["ip", "netns", "exec", link.name]
        _ip(*inside, "ip", "link", "set", "lo", "up")
        _ip(*inside, "ip", "addr", "add", f"{link.ns_ip}/30", "dev", link.ns_if)
        _ip(*inside, "ip", "link", "set", link.ns_if, "up")
        _ip(*inside, "ip", "route", "add", "default", "via", link.host_ip)
        # Redirecting to the host's loopback needs the link to accept such destinations.
        Path(f"/proc/sys/net/ipv4/conf/{link.host_if}/route_localnet").write_text("1")
        for args in rules:
            _ip("iptables", "-w", *args)
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(f"nameserver {link.host_ip}\n")
        yield
    finally:
        for args in rules:
            _quiet("iptables", "-w", *[("-D" if a == "-I" else a) for a in args])
        _quiet("ip", "link", "del", link.host_if)
        _quiet("ip", "netns", "del", link.name)
        shutil.rmtree(etc, ignore_errors=True)


class DnsRelay(asyncio.DatagramProtocol):
    """Relays DNS datagrams from the namespace to the host's resolver and back, unchanged."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the listening socket."""
        assert isinstance(transport, asyncio.DatagramTransport)
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        """Ask the resolver on a socket of its own, and answer the asker."""
        asyncio.get_running_loop().create_task(self._relay(data, addr))

    async def _relay(self, data: bytes, asker: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        answered: asyncio.Future[bytes] = loop.create_future()

        class Answer(asyncio.DatagramProtocol):
            def datagram_received(self, reply: bytes, addr: tuple[str, int]) -> None:
                if not answered.done():
                    answered.set_result(reply)

        transport, _ = await loop.create_datagram_endpoint(Answer, remote_addr=self.upstream)
        try:
            transport.sendto(data)
            reply = await asyncio.wait_for(answered, 5)
            if self.transport is not None:
                self.transport.sendto(reply, asker)
        except TimeoutError:
            pass  # the asker retries or gives up, as with any lost datagram
        finally:
            transport.close()


def _identity(user: str) -> tuple[int, int]:
    """A user name or UID as (uid, gid); a UID with no passwd entry gets the same GID."""
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        if user.isdigit():
            return int(user), int(user)
        raise IsolateError(f"--user {user}: no such user") from None
    return entry.pw_uid, entry.pw_gid


async def run_isolated(cmd: list[str], env: dict[str, str], transparent: Address, user: str | None) -> int:
    """Run `cmd` in a fresh isolated namespace; its exit code (128+signal if killed)."""
    link = Link.for_process(os.getpid())
    servers = [s for s in resolvers() if ":" not in s]
    if not servers:
        raise IsolateError("no IPv4 nameserver in /etc/resolv.conf for the namespace's DNS relay")
    with namespace(link, transparent):
        loop = asyncio.get_running_loop()
        relay, _ = await loop.create_datagram_endpoint(
            lambda: DnsRelay((servers[0], DNS_PORT)), local_addr=(link.host_ip, DNS_PORT)
        )
        drop = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--no-new-privs"]
        if user is not None:
            uid, gid = _identity(user)
            drop += [f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
        try:
            proc = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", link.name, *drop, "--", *cmd, env=env
            )
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.add_signal_handler(sig, proc.send_signal, sig)
            code = await proc.wait()
        finally:
            relay.close()
        return 128 - code if code < 0 else code

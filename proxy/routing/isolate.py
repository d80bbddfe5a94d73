"""`airlock exec --isolate`: run a command in a network namespace whose only way out is airlock,
as a user who can neither read nor change anything of airlock's.

The namespace has loopback and one veth link to the host, and no IPv6 at all. On the host side
of the link:

- every TCP connection from the namespace is redirected (DNAT) to airlock's transparent
  listener on the host's loopback, which recovers the original destination and applies the
  rules as for any other request;
- DNS queries (UDP port 53 to the host end of the link, which is the namespace's only
  nameserver) are relayed to the host's own resolver by this process;
- everything else from the namespace (other UDP, ICMP, IPv6, forwarding) is dropped.

The command runs as an unprivileged user (`nobody` unless `--user` says another; never root,
nor any user who could change airlock's files: `proxy/routing/runas.py`), without capabilities, in
mount, PID and IPC namespaces where airlock's paths are covered and the host's sockets are out
of sight (`proxy/routing/confine.py`). Everything made here is removed when the command ends, whatever way it
ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from proxy.ops.config import Address

from .capture import resolvers
from .confine import CA_INSIDE, Confinement
from .environ import captured_environment, for_user
from .runas import RunAsError, check_out_of_reach, code_paths, identity, import_paths

DNS_PORT = 53
TOOLS = {"ip": "iproute2", "iptables": "iptables", "setpriv": "util-linux", "sysctl": "procps"}
IPV6_CONF = Path("/proc/sys/net/ipv6/conf")
STOPPING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # passed on to the command


class IsolateError(RuntimeError):
    """The namespace could not be made, or the command could reach airlock's files; the message
    says what is missing or wrong."""


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


@dataclass(frozen=True)
class Isolation:
    """What `airlock exec --isolate` was asked for."""

    transparent: Address
    ca_cert: Path
    private: tuple[Path, ...]  # airlock's paths (data dir, rules, ...), hidden from the command
    user: str | None = None


def require_host(transparent: Address) -> None:
    """Check that this host can isolate a command: root, the tools, airlock on loopback."""
    if os.geteuid() != 0:
        raise IsolateError("--isolate needs root (namespaces, mounts and iptables)")
    for tool, package in TOOLS.items():
        if shutil.which(tool) is None:
            raise IsolateError(f"--isolate needs {tool}: install it (apt-get install {package})")
    if transparent.host != "127.0.0.1":
        raise IsolateError(f"--transparent {transparent}: --isolate reaches airlock on 127.0.0.1 only")


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


def _host_rules_v6(link: Link) -> list[list[str]]:
    # The namespace has no IPv6; should it get some, the host takes nothing from the link.
    if shutil.which("ip6tables") is None or not IPV6_CONF.is_dir():
        return []
    return [
        ["-t", "filter", "-I", "INPUT", "-i", link.host_if, "-j", "DROP"],
        ["-t", "filter", "-I", "FORWARD", "-i", link.host_if, "-j", "DROP"],
    ]


def _without(args: list[str]) -> list[str]:
    return [("-D" if a == "-I" else a) for a in args]


def _rules_listing(tool: str, table: str) -> list[list[str]]:
    """The rules of one table, each as the words of its `-A` line."""
    if shutil.which(tool) is None:
        return []
    listing = subprocess.run([tool, "-w", "-t", table, "-S"], capture_output=True, text=True)
    return [words for line in listing.stdout.splitlines() if (words := shlex.split(line))[:1] == ["-A"]]


TABLES = [(tool, table) for tool in ("iptables", "ip6tables") for table in ("nat", "filter")]


def remove(link: Link) -> None:
    """Remove a namespace, its link and every iptables and ip6tables rule naming the link."""
    for tool, table in TABLES:
        for words in _rules_listing(tool, table):
            if link.host_if in words:
                _quiet(tool, "-w", "-t", table, "-D", *words[1:])
    _quiet("ip", "link", "del", link.host_if)
    _quiet("ip", "netns", "del", link.name)


def sweep_stale() -> list[int]:
    """Remove what runs killed before they could clean up left behind: namespaces, links and
    rules named after a process that is gone. The PIDs of those runs."""
    pids = set()
    for line in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.splitlines():
        name = line.split(" ")[0]
        if name.startswith("airlock-") and name.removeprefix("airlock-").isdigit():
            pids.add(int(name.removeprefix("airlock-")))
    for tool, table in TABLES:
        for words in _rules_listing(tool, table):
            pids.update(int(w[3:]) for w in words if w.startswith("alh") and w[3:].isdigit())
    gone = sorted(pid for pid in pids if not Path(f"/proc/{pid}").exists())
    for pid in gone:
        remove(Link.for_process(pid))
    return gone


@contextlib.contextmanager
def namespace(link: Link, transparent: Address) -> Iterator[None]:
    """Make the namespace, its link and the host's rules; remove them all on the way out."""
    require_host(transparent)
    sweep_stale()
    remove(link)  # anything under this process's names was left by a killed run with its PID
    v4, v6 = _host_rules(link, transparent), _host_rules_v6(link)
    try:
        _ip("ip", "netns", "add", link.name)
        _ip("ip", "link", "add", link.host_if, "type", "veth", "peer", "name", link.ns_if)
        inside = ["ip", "netns", "exec", link.name]
        if IPV6_CONF.is_dir():
            # No IPv6 on either end: no link-local address, no neighbour to find with ff02::1.
            (IPV6_CONF / link.host_if / "disable_ipv6").write_text("1")
            _ip(*inside, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1")  # fmt: skip
        _ip("ip", "link", "set", link.ns_if, "netns", link.name)
        _ip("ip", "addr", "add", f"{link.host_ip}/30", "dev", link.host_if)
        _ip("ip", "link", "set", link.host_if, "up")
        _ip(*inside, "ip", "link", "set", "lo", "up")
        _ip(*inside, "ip", "addr", "add", f"{link.ns_ip}/30", "dev", link.ns_if)
        _ip(*inside, "ip", "link", "set", link.ns_if, "up")
        _ip(*inside, "ip", "route", "add", "default", "via", link.host_ip)
        # Redirecting to the host's loopback needs the link to accept such destinations.
        Path(f"/proc/sys/net/ipv4/conf/{link.host_if}/route_localnet").write_text("1")
        for args in v4:
            _ip("iptables", "-w", *args)
        for args in v6:
            _ip("ip6tables", "-w", *args)
        yield
    finally:
        for args in v4:
            _quiet("iptables", "-w", *_without(args))
        for args in v6:
            _quiet("ip6tables", "-w", *_without(args))
        _quiet("ip", "link", "del", link.host_if)
        _quiet("ip", "netns", "del", link.name)


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


async def run_isolated(cmd: list[str], environ: Mapping[str, str], isolation: Isolation) -> int:
    """Run `cmd` in a fresh isolated namespace; its exit code (128+signal if killed)."""
    require_host(isolation.transparent)
    for path in isolation.private:
        if path == Path("/"):
            raise IsolateError("/ cannot be hidden from the command: name airlock's own paths")
        if not path.exists():
            raise IsolateError(
                f"{path}: no such file or directory (airlock's paths: --data, --rules, --hide)"
            )
    try:
        who = identity(isolation.user)
        check_out_of_reach(who, [*isolation.private, isolation.ca_cert, *code_paths()], import_paths())
    except RunAsError as e:
        raise IsolateError(str(e)) from e
    link = Link.for_process(os.getpid())
    servers = [s for s in resolvers() if ":" not in s]
    if not servers:
        raise IsolateError("no IPv4 nameserver in /etc/resolv.conf for the namespace's DNS relay")
    confinement = Confinement(link.name, who.uid, who.gid, isolation.ca_cert, link.host_ip, isolation.private)
    env = for_user(captured_environment(environ, CA_INSIDE), who.name, who.home)
    with namespace(link, isolation.transparent):
        loop = asyncio.get_running_loop()
        relay, _ = await loop.create_datagram_endpoint(
            lambda: DnsRelay((servers[0], DNS_PORT)), local_addr=(link.host_ip, DNS_PORT)
        )
        # Signals are caught from before the command starts, and passed on once it has.
        caught: list[int] = []
        for sig in STOPPING:
            loop.add_signal_handler(sig, caught.append, sig)
        try:
            # Out of the terminal's process group: Ctrl-C reaches the command once, through here.
            proc = await asyncio.create_subprocess_exec(
                *confinement.command(cmd), env=env, start_new_session=True
            )
            for sig in STOPPING:
                loop.add_signal_handler(sig, proc.send_signal, sig)
            for early in caught:
                proc.send_signal(early)
            code = await proc.wait()
        finally:
            relay.close()
            for sig in STOPPING:
                loop.remove_signal_handler(sig)
        return 128 - code if code < 0 else code

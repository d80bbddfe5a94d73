"""Capture without proxy variables: `airlock capture` (iptables rules for one UID) and
`airlock exec --isolate` (a network namespace whose only way out is airlock).

Everything is real: network namespaces, links, iptables rules, `airlock run` with a transparent
listener, curl as the agent's user, and upstream servers on non-loopback addresses (loopback is
never captured). Each test makes its own namespaces, links and processes under unique names and
removes them all afterwards, whether it passes or not.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from proxy.routing.isolate import Link
from rules import EGRESS_RULE

from .support import AIRLOCK, Airlock, environ_without_proxy, free_port, wait_for


def _unsupported() -> str | None:
    """Why these tests cannot run here, or None when they can."""
    if not sys.platform.startswith("linux"):
        return "needs Linux (network namespaces and iptables)"
    if os.geteuid() != 0:
        return f"needs root for network namespaces and iptables (running as uid {os.geteuid()})"
    missing = [tool for tool in ("ip", "iptables", "setpriv", "curl") if shutil.which(tool) is None]
    if missing:
        return f"needs {', '.join(missing)} on PATH"
    return None


pytestmark = pytest.mark.skipif(_unsupported() is not None, reason=_unsupported() or "")

NOBODY = 65534  # the agent's UID in the capture test
NETNS_ETC = Path("/etc/netns")
UPSTREAM_IP = "10.77.0.1"  # inside the test namespaces
PA, PB, PU = 18001, 18002, 18003  # fixed ports are fine inside a fresh namespace
LISTEN, CONTROL, TRANSPARENT = 8080, 8081, 8082

# The servers run as separate processes (inside namespaces, as root) and record what reaches them
# to a file, one JSON object per line; `ready` appears once the socket is bound.
SERVERS = textwrap.dedent(
    """\
    import json, socket, sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from pathlib import Path

    kind, host, port, record, ready, answer = sys.argv[1:7]
    port = int(port)


    def note(entry):
        with open(record, "a") as f:
            f.write(json.dumps(entry) + "\\n")


    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            note({"path": self.path, "host": self.headers.get("Host")})
            body = json.dumps({"port": port, "path": self.path}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)


    def dns_answer(query):
        # The name asked for, and a reply: an A record `answer` for A queries, no records otherwise.
        end, labels = 12, []
        while query[end]:
            labels.append(query[end + 1 : end + 1 + query[end]].decode())
            end += 1 + query[end]
        qtype = int.from_bytes(query[end + 1 : end + 3], "big")
        count = 1 if qtype == 1 else 0
        header = query[:2] + b"\\x81\\x80" + b"\\x00\\x01" + count.to_bytes(2, "big") + bytes(4)
        record = b"\\xc0\\x0c\\x00\\x01\\x00\\x01" + (60).to_bytes(4, "big") + b"\\x00\\x04"
        record += socket.inet_aton(answer)
        return ".".join(labels), header + query[12 : end + 5] + (record if count else b"")


    if kind == "http":
        server = ThreadingHTTPServer((host, port), Handler)
        Path(ready).touch()
        server.serve_forever()
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((host, port))
        Path(ready).touch()
        while True:
            data, peer = sock.recvfrom(4096)
            if kind == "dns":
                name, reply = dns_answer(data)
                note({"name": name})
                sock.sendto(reply, peer)
            else:
                note({"data": data.decode(errors="replace")})
    """
)


# ---- processes, namespaces and links ---------------------------------------------------------


def sh(*cmd: str) -> str:
    """Run a setup command; fail with its stderr if it fails."""
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"{shlex.join(cmd)} exited {done.returncode}: {done.stderr}"
    return done.stdout


def quiet(*cmd: str) -> str:
    """Run a cleanup or inspection command, whatever it finds."""
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout


class Processes:
    """Processes started by a test, each in a process group of its own; all killed afterwards."""

    def __init__(self, root: Path):
        self.root = root
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, cmd: list[str], name: str) -> subprocess.Popen[bytes]:
        """Start `cmd` with its output in `<root>/<name>.out`."""
        with (self.root / f"{name}.out").open("ab") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=environ_without_proxy(), start_new_session=True
            )
        self.started.append(proc)
        return proc

    def output(self, name: str) -> str:
        """What a process wrote."""
        return (self.root / f"{name}.out").read_text(errors="replace")

    def stop(self) -> None:
        """SIGKILL every process group started (children included)."""
        for proc in self.started:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        self.started.clear()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Every process a test starts is killed when it ends."""
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.stop()


@pytest.fixture(scope="module", autouse=True)
def _tidy_etc_netns() -> Iterator[None]:
    # `ip netns exec` reads /etc/netns/<ns>; remove the directory afterwards if this module made it.
    existed = NETNS_ETC.exists()
    yield
    if not existed:
        with suppress(OSError):
            NETNS_ETC.rmdir()


@dataclass(frozen=True)
class Netns:
    """A network namespace made by the test."""

    name: str

    def exec(self, *cmd: str, uid: int | None = None) -> list[str]:
        """`cmd` run inside the namespace, as `uid` (no groups) if given."""
        user = [] if uid is None else ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
        return ["ip", "netns", "exec", self.name, *user, *cmd]

    def run(self, *cmd: str, uid: int | None = None) -> subprocess.CompletedProcess[str]:
        """Run `cmd` inside the namespace and wait for it."""
        return subprocess.run(
            self.exec(*cmd, uid=uid), capture_output=True, text=True, timeout=30, env=environ_without_proxy()
        )


def add_link(prefix: list[str], name: str, address: str) -> None:
    """A link holding `address`: a dummy interface, or a veth pair (peer `<name>p`) where the
    kernel has no dummy driver. `prefix` runs the commands in a namespace."""
    ends = [name]
    made = subprocess.run([*prefix, "ip", "link", "add", name, "type", "dummy"], capture_output=True)
    if made.returncode != 0:
        sh(*prefix, "ip", "link", "add", name, "type", "veth", "peer", "name", f"{name}p")
        ends.append(f"{name}p")
    sh(*prefix, "ip", "addr", "add", address, "dev", name)
    for end in ends:
        sh(*prefix, "ip", "link", "set", end, "up")


@pytest.fixture
def netns(processes: Processes) -> Iterator[Netns]:
    """A namespace with loopback up and 10.77.0.1/24 on a link; its hosts file names allowed.test
    and forgotten.test there and its resolv.conf says nameserver 10.77.0.1."""
    ns = Netns(f"al-t-{secrets.token_hex(4)}")
    etc = NETNS_ETC / ns.name
    sh("ip", "netns", "add", ns.name)
    try:
        etc.mkdir(parents=True)
        (etc / "hosts").write_text(
            f"127.0.0.1 localhost\n::1 localhost\n{UPSTREAM_IP} allowed.test forgotten.test\n"
        )
        (etc / "resolv.conf").write_text(f"nameserver {UPSTREAM_IP}\n")
        sh(*ns.exec("ip", "link", "set", "lo", "up"))
        add_link(ns.exec(), "up0", f"{UPSTREAM_IP}/24")
        yield ns
    finally:
        processes.stop()
        for pid in quiet("ip", "netns", "pids", ns.name).split():
            with suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        quiet("ip", "netns", "del", ns.name)
        shutil.rmtree(etc, ignore_errors=True)


@pytest.fixture
def host_address() -> Iterator[str]:
    """10.78.X.1 on a link of the host namespace (removed afterwards)."""
    name = f"alt{secrets.token_hex(3)}"
    used = quiet("ip", "-4", "-o", "addr")
    x = next(x for x in random.sample(range(1, 255), 254) if f" 10.78.{x}." not in used)
    try:
        add_link([], name, f"10.78.{x}.1/24")
        yield f"10.78.{x}.1"
    finally:
        quiet("ip", "link", "del", name)


# ---- servers and clients ---------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    """A recording server process."""

    record: Path

    def seen(self) -> list[dict[str, Any]]:
        """What reached it so far."""
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines()]


def started(proc: subprocess.Popen[bytes], condition: Callable[[], bool], what: str, output: str) -> None:
    """Wait until `condition`; fail at once with the output if the process exits first."""

    def check() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"{what}: exited {proc.returncode} first; output in {output}")
        return condition()

    wait_for(check, what)


def serve(procs: Processes, prefix: list[str], kind: str, host: str, port: int, answer: str = "") -> Server:
    """Start a recording server (`http`, `udp`, or `dns` answering `answer`) on host:port."""
    script = procs.root / "servers.py"
    script.write_text(SERVERS)
    name = f"{kind}-{host}-{port}"
    record, ready = procs.root / f"{name}.jsonl", procs.root / f"{name}.ready"
    args = [kind, host, str(port), str(record), str(ready), answer]
    proc = procs.start([*prefix, sys.executable, str(script), *args], name)
    started(proc, ready.exists, f"the {kind} server on {host}:{port} is up", str(procs.root / f"{name}.out"))
    return Server(record)


def start_airlock(procs: Processes, ns: Netns, root: Path, rules: str) -> Airlock:
    """`airlock run` as root inside the namespace, with a transparent listener."""
    (root / "rules.yaml").write_text(rules)
    a = Airlock(
        data=root / "data",
        rules=root / "rules.yaml",
        port=LISTEN,
        control_port=CONTROL,
        extra=("--transparent", f"127.0.0.1:{TRANSPARENT}"),
    )
    proc = procs.start(ns.exec(*a.command()), "airlock")
    healthz = f"http://127.0.0.1:{CONTROL}/healthz"
    ready = lambda: ns.run("curl", "-sf", "-m", "2", healthz).returncode == 0  # noqa: E731
    started(proc, ready, "airlock answers in the namespace", str(root / "airlock.out"))
    return a


@dataclass(frozen=True)
class Reply:
    """What curl got."""

    status: int
    body: str

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


def curl_args(url: str) -> list[str]:
    """curl fetching `url` directly (no proxy, whatever the environment says), status last."""
    return ["curl", "-sS", "--noproxy", "*", "-m", "10", "-w", "\n%{http_code}", url]


def reply_of(done: subprocess.CompletedProcess[str]) -> Reply:
    """curl's output as a Reply; fail if curl failed."""
    assert done.returncode == 0, f"curl exited {done.returncode}: {done.stderr}"
    body, _, status = done.stdout.rpartition("\n")
    return Reply(int(status), body)


def send_udp(ns: Netns, port: int, text: str, uid: int | None = None) -> subprocess.CompletedProcess[str]:
    """One datagram to 10.77.0.1:port from inside the namespace (bash's /dev/udp)."""
    return ns.run("bash", "-c", f"printf %s {text} > /dev/udp/{UPSTREAM_IP}/{port}", uid=uid)


def datagram(text: str, host: str, port: int) -> list[str]:
    """A python command that sends one UDP datagram."""
    send = f"socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'{text}', ('{host}', {port}))"
    return [sys.executable, "-c", f"import socket; {send}"]


def logged(a: Airlock, n: int) -> list[dict[str, Any]]:
    """The log once it holds `n` actions (outcomes are written just after the client's answer)."""
    wait_for(lambda: len(a.log()) == n, f"the log holds {n} actions")
    return a.log()


def mentioning(prefix: list[str], word: str) -> list[str]:
    """The iptables (and ip6tables) rules of the nat and filter tables that mention `word`."""
    lines = []
    for tool in ("iptables", "ip6tables"):
        if shutil.which(tool) is None:
            continue
        for table in ("nat", "filter"):
            out = quiet(*prefix, tool, "-w", "-t", table, "-S")
            lines += [f"{tool} -t {table} {line}" for line in out.splitlines() if word in line]
    return lines


# ---- airlock capture -------------------------------------------------------------------------


def test_capture_sends_one_users_traffic_through_airlock(
    netns: Netns, processes: Processes, tmp_path: Path
) -> None:
    ns = netns
    allowed = serve(processes, ns.exec(), "http", UPSTREAM_IP, PA)
    forgotten = serve(processes, ns.exec(), "http", UPSTREAM_IP, PB)
    other_udp = serve(processes, ns.exec(), "udp", UPSTREAM_IP, PU)
    resolver = serve(processes, ns.exec(), "udp", UPSTREAM_IP, 53)  # stands in for the nameserver
    rules = f"version: 1\negress:\n  allow: [allowed.test, {{host: {UPSTREAM_IP}, ports: [{PA}]}}]\n"
    a = start_airlock(processes, ns, tmp_path, rules)

    installed = ns.run(AIRLOCK, "capture", "--uid", str(NOBODY), "--port", str(TRANSPARENT))
    assert installed.returncode == 0, installed.stderr
    assert mentioning(ns.exec(), f"AIRLOCK-{NOBODY}")

    # No proxy variables, and curl told to ignore any: the connection is captured all the same.
    ok = reply_of(ns.run(*curl_args(f"http://allowed.test:{PA}/ok"), uid=NOBODY))
    assert ok.status == 200, ok
    assert ok.json() == {"port": PA, "path": "/ok"}
    assert allowed.seen() == [{"path": "/ok", "host": f"allowed.test:{PA}"}]

    # A name off the allowlist, at an address that only root may reach directly.
    denied = reply_of(ns.run(*curl_args(f"http://forgotten.test:{PB}/secret"), uid=NOBODY))
    assert denied.status == 403, denied
    body = denied.json()
    assert (body["error"], body["rule"]) == ("egress_denied", EGRESS_RULE)
    assert "forgotten.test" in body["message"] and "not on the egress allowlist" in body["message"]

    # The bare address, with no name at all.
    raw = reply_of(ns.run(*curl_args(f"http://{UPSTREAM_IP}:{PB}/raw"), uid=NOBODY))
    assert raw.status == 403, raw
    raw_body = raw.json()
    assert (raw_body["error"], raw_body["rule"]) == ("egress_denied", EGRESS_RULE)
    assert "bare IP address" in raw_body["message"]
    assert forgotten.seen() == []

    first, second, third = logged(a, 3)
    assert (first["method"], first["url"], first["host"]) == (
        "GET",
        f"http://allowed.test:{PA}/ok",
        "allowed.test",
    )
    assert (first["state"], first["status"]) == ("committed", 200)
    assert (second["host"], second["state"], second["rule"]) == ("forgotten.test", "denied", EGRESS_RULE)
    assert second["id"] == body["action_id"]
    assert (third["host"], third["state"], third["rule"]) == (UPSTREAM_IP, "denied", EGRESS_RULE)
    assert third["id"] == raw_body["action_id"]

    # UDP: only DNS to the nameserver of resolv.conf leaves; root's datagram, sent last, shows the
    # listener was there to receive the agent's.
    send_udp(ns, PU, "from-agent", uid=NOBODY)
    dns = send_udp(ns, 53, "query", uid=NOBODY)
    assert dns.returncode == 0, dns.stderr
    assert send_udp(ns, PU, "from-root").returncode == 0
    wait_for(lambda: resolver.seen() == [{"data": "query"}], "the resolver has the agent's datagram")
    wait_for(lambda: other_udp.seen() != [], "root's datagram arrives")
    assert other_udp.seen() == [{"data": "from-root"}]

    # Root is not captured: its connection goes straight to the forgotten endpoint, unlogged.
    direct = reply_of(ns.run(*curl_args(f"http://forgotten.test:{PB}/direct")))
    assert direct.status == 200
    assert forgotten.seen() == [{"path": "/direct", "host": f"forgotten.test:{PB}"}]
    assert len(a.log()) == 3

    removed = ns.run(AIRLOCK, "capture", "--uid", str(NOBODY), "--port", str(TRANSPARENT), "--remove")
    assert removed.returncode == 0, removed.stderr
    assert mentioning(ns.exec(), "AIRLOCK") == []
    # And the agent is on its own again.
    after = reply_of(ns.run(*curl_args(f"http://forgotten.test:{PB}/after"), uid=NOBODY))
    assert after.status == 200
    assert [s["path"] for s in forgotten.seen()] == ["/direct", "/after"]
    assert len(a.log()) == 3


# ---- airlock exec --isolate ------------------------------------------------------------------


@dataclass(frozen=True)
class Traces:
    """What an isolated namespace may leave behind, as seen from where airlock exec ran."""

    netns: frozenset[str]
    links: frozenset[str]
    etc: frozenset[str]
    rules: frozenset[str]

    @classmethod
    def now(cls, prefix: list[str]) -> Traces:
        """The airlock-* namespaces, alh* links, /etc/netns/airlock-* and rules naming alh*."""
        names = [line.split()[0] for line in quiet(*prefix, "ip", "netns", "list").splitlines() if line]
        links = [
            line.split(": ")[1].split("@")[0] for line in quiet(*prefix, "ip", "-o", "link").splitlines()
        ]
        etc = [p.name for p in NETNS_ETC.glob("airlock-*")]
        return cls(
            frozenset(n for n in names if n.startswith("airlock-")),
            frozenset(n for n in links if n.startswith("alh")),
            frozenset(etc),
            frozenset(mentioning(prefix, "alh")),
        )

    def added_since(self, before: Traces) -> dict[str, frozenset[str]]:
        """What is here now and was not before (empty when all was cleaned up)."""
        found = {
            "netns": self.netns - before.netns,
            "links": self.links - before.links,
            "/etc/netns": self.etc - before.etc,
            "iptables": self.rules - before.rules,
        }
        return {k: v for k, v in found.items() if v}


def scrub(prefix: list[str], link: Link) -> None:
    """Remove whatever a killed `airlock exec --isolate` left (so a failing test leaves nothing)."""
    for tool in ("iptables", "ip6tables") if shutil.which("ip6tables") else ("iptables",):
        for table in ("nat", "filter"):
            for line in quiet(*prefix, tool, "-w", "-t", table, "-S").splitlines():
                if link.host_if in shlex.split(line) and line.startswith("-A "):
                    quiet(*prefix, tool, "-w", "-t", table, "-D", *shlex.split(line)[1:])
    quiet(*prefix, "ip", "link", "del", link.host_if)
    quiet(*prefix, "ip", "netns", "del", link.name)
    shutil.rmtree(NETNS_ETC / link.name, ignore_errors=True)
    with suppress(OSError):
        Path("/run/netns", link.name).unlink()


def isolated(
    a: Airlock, cmd: list[str], prefix: list[str] | None = None
) -> tuple[Link, subprocess.CompletedProcess[str]]:
    """Run `airlock exec --isolate -- cmd` towards `a`'s transparent listener (inside another
    namespace when `prefix` says so) and check that it left nothing behind."""
    prefix = prefix or []
    before = Traces.now(prefix)
    transparent = a.extra[a.extra.index("--transparent") + 1]
    args = [*prefix, AIRLOCK, "exec", "--data", str(a.data), "--isolate", "--transparent", transparent]
    args += ["--", *cmd]
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environ_without_proxy(),
        start_new_session=True,
    )
    link = Link.for_process(proc.pid)  # `ip netns exec` execs airlock: the PID is airlock's
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        scrub(prefix, link)
        raise
    left = Traces.now(prefix).added_since(before)
    scrub(prefix, link)
    assert left == {}, f"airlock exec --isolate left behind {left}"
    return link, subprocess.CompletedProcess(args, proc.returncode, out, err)


def test_exec_isolate_reaches_only_airlock(
    host_address: str, processes: Processes, make_airlock: Callable[..., Airlock]
) -> None:
    pa, pb, pu = free_port(), free_port(), free_port()
    allowed = serve(processes, [], "http", host_address, pa)
    other = serve(processes, [], "http", host_address, pb)
    sink = serve(processes, [], "udp", host_address, pu)
    transparent = free_port()
    rules = f"version: 1\negress:\n  allow: [{{host: {host_address}, ports: [{pa}]}}]\n"
    a = make_airlock(rules=rules, extra=("--transparent", f"127.0.0.1:{transparent}"))

    _, done = isolated(a, curl_args(f"http://{host_address}:{pa}/ok"))
    ok = reply_of(done)
    assert ok.status == 200 and ok.json() == {"port": pa, "path": "/ok"}
    assert allowed.seen() == [{"path": "/ok", "host": f"{host_address}:{pa}"}]

    _, done = isolated(a, curl_args(f"http://{host_address}:{pb}/no"))
    denied = reply_of(done)
    assert denied.status == 403, denied
    assert (denied.json()["error"], denied.json()["rule"]) == ("egress_denied", EGRESS_RULE)
    assert other.seen() == []

    ok_entry, denied_entry = logged(a, 2)
    assert (ok_entry["url"], ok_entry["state"], ok_entry["status"]) == (
        f"http://{host_address}:{pa}/ok",
        "committed",
        200,
    )
    assert (denied_entry["host"], denied_entry["state"], denied_entry["rule"]) == (
        host_address,
        "denied",
        EGRESS_RULE,
    )
    assert denied_entry["id"] == denied.json()["action_id"]

    # UDP anywhere but the DNS relay goes nowhere; the host's own datagram, sent after, arrives.
    # (bash, not this interpreter: the command runs as nobody, who may not read root's home)
    _, done = isolated(a, ["bash", "-c", f"printf isolated > /dev/udp/{host_address}/{pu}"])
    assert done.returncode == 0, done.stderr
    subprocess.run(datagram("host", host_address, pu), check=True, timeout=10)
    wait_for(lambda: sink.seen() != [], "the host's datagram arrives")
    assert sink.seen() == [{"data": "host"}]

    # No capabilities inside: the namespace's network cannot be changed.
    _, done = isolated(a, ["ip", "link", "set", "lo", "down"])
    assert done.returncode != 0
    assert "not permitted" in done.stderr.lower(), done.stderr

    link, done = isolated(a, ["cat", "/etc/resolv.conf"])
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"nameserver {link.host_ip}\n"

    _, done = isolated(a, ["sh", "-c", "exit 7"])
    assert done.returncode == 7
    assert len(a.log()) == 2


def test_exec_isolate_resolves_names_through_the_dns_relay(
    netns: Netns, processes: Processes, tmp_path: Path
) -> None:
    # Inside a test namespace, /etc/resolv.conf names a fake resolver the test controls, so the
    # relay (which asks the first nameserver of resolv.conf) can be followed end to end.
    ns = netns
    upstream = serve(processes, ns.exec(), "http", UPSTREAM_IP, PA)
    resolver = serve(processes, ns.exec(), "dns", UPSTREAM_IP, 53, answer=UPSTREAM_IP)
    rules = f"version: 1\negress:\n  allow: [viadns.test, {{host: {UPSTREAM_IP}, ports: [{PA}]}}]\n"
    a = start_airlock(processes, ns, tmp_path, rules)

    # viadns.test is in no hosts file: the isolated curl can learn its address only by DNS.
    link, done = isolated(a, curl_args(f"http://viadns.test:{PA}/dns"), prefix=ns.exec())
    ok = reply_of(done)
    assert ok.status == 200 and ok.json() == {"port": PA, "path": "/dns"}
    assert upstream.seen() == [{"path": "/dns", "host": f"viadns.test:{PA}"}]
    assert {"name": "viadns.test"} in resolver.seen()
    [entry] = logged(a, 1)
    assert (entry["host"], entry["state"], entry["status"]) == ("viadns.test", "committed", 200)

    # The isolated command's resolver is the relay on the host end of its link.
    assert link.host_ip.startswith("169.254.")
    _, done = isolated(a, ["cat", "/etc/resolv.conf"], prefix=ns.exec())
    assert done.stdout.startswith("nameserver 169.254.")

"""`airlock exec --isolate` under attack: the isolated command can neither touch airlock nor reach
out around it.

Each test starts a real `airlock run` with a transparent listener, its data dir and rules under
/var/lib (outside the directories the command gets fresh copies of, so what is tested is that they
are hidden), and host-side listeners an escaping command would reach: UNIX sockets (stream and
datagram, under /tmp, /run and in the data dir, and an abstract one), IPv6 TCP and UDP on every
address (a ULA on a test link, the host's own, link-local and the all-nodes group ff02::1), IPv4
UDP on every address, a raw TCP listener and two HTTP upstreams, one allowed and one not. A probe
run inside as the command tries every way out and every file of airlock's and prints what
happened. The tests assert on what the host side received (nothing, while what the test itself
sends afterwards arrives), on what the log holds, and that each run leaves nothing behind:
namespaces, links, iptables and ip6tables rules, mounts, processes.

Each test runs in a network namespace and a mount namespace of its own (`Private`): its links,
listeners, airlock and every command it starts are there, and `ip netns` names live in a
/run/netns of its own, so what it finds before and after a run is its own doing, whatever else
runs on the host.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from proxy.routing.isolate import Link
from rules import EGRESS_RULE

from ..support import AIRLOCK, Airlock, environ_without_proxy, free_port, wait_for
from ..support.namespaces import Traces, exec_isolated, quiet, scrub, sh
from ..support.outcomes import settled

# The probe runs as an unprivileged user, who cannot run the test's interpreter (it may live in
# root's home): it needs a system Python.
PROBE_PYTHON = next(
    (p for p in ("/usr/bin/python3", "/usr/local/bin/python3") if os.access(p, os.X_OK)), None
)
IPV6 = Path("/proc/sys/net/ipv6").is_dir()


def _unsupported() -> str | None:
    """Why these tests cannot run here, or None when they can."""
    if not sys.platform.startswith("linux"):
        return "needs Linux (namespaces, mounts and iptables)"
    if os.geteuid() != 0:
        return f"needs root for namespaces, mounts and iptables (running as uid {os.geteuid()})"
    missing = [
        t for t in ("ip", "iptables", "setpriv", "sysctl", "unshare", "nsenter") if shutil.which(t) is None
    ]
    if missing:
        return f"needs {', '.join(missing)} on PATH"
    if PROBE_PYTHON is None:
        return "needs a system python3 (/usr/bin/python3) for the probe run as an unprivileged user"
    return None


pytestmark = pytest.mark.skipif(_unsupported() is not None, reason=_unsupported() or "")

HTTP_OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"

# Run inside by the system python3 as the isolated command: tries each way out and each file named
# in the spec (argv[1], JSON), prints what happened as JSON, starts a process that outlives it, and
# exits 3.
PROBE = textwrap.dedent(
    r"""
    import json, os, socket, subprocess, sys, time, urllib.error, urllib.request

    spec = json.loads(sys.argv[1])
    out = {"attempts": {}, "http": {}}


    def attempt(name, fn, *args):
        try:
            out["attempts"][name] = "reached: " + repr(fn(*args))[:200]
        except Exception as e:
            out["attempts"][name] = "refused: " + type(e).__name__ + ": " + str(e)[:200]


    def read(path):
        with open(path, "rb") as f:
            return len(f.read())


    def append(path):
        with open(path, "ab") as f:
            f.write(b"\n# written from inside\n")


    def create(path):
        with open(path, "xb") as f:
            f.write(b"x")


    def unix(kind, address):
        with socket.socket(socket.AF_UNIX, kind) as s:
            s.settimeout(3)
            if kind == socket.SOCK_STREAM:
                s.connect(address)
                s.sendall(b"inside")
            else:
                s.sendto(b"inside", address)


    def udp(family, address):
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.sendto(b"inside", address)


    def tcp(family, address):
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(address)
            s.sendall(b"inside\r\n\r\n")
            return s.recv(200)


    for path in spec["read"]:
        attempt("read " + path, read, path)
    for path in spec["append"]:
        attempt("append to " + path, append, path)
    for path in spec["create"]:
        attempt("create " + path, create, path)
    for path in spec["unix_stream"]:
        attempt("unix stream " + repr(path), unix, socket.SOCK_STREAM, path)
    for path in spec["unix_dgram"]:
        attempt("unix datagram " + path, unix, socket.SOCK_DGRAM, path)
    nameserver = open("/etc/resolv.conf").read().split()[1]
    for host, port in spec["udp4"] + [[nameserver, spec["udp4"][0][1]]]:
        udp(socket.AF_INET, (host, port))  # leaves the sender whatever happens to it: see the listener
    # Where IPv6 is on, its link-local addresses are usable once duplicate detection is over:
    # wait for that, as an attacker would.
    def addresses6():
        try:
            return [line.split() for line in open("/proc/net/if_inet6").read().splitlines()]
        except OSError:
            return []


    for _ in range(50):
        if not any(int(fields[4], 16) & 0x40 for fields in addresses6()):  # IFA_F_TENTATIVE
            break
        time.sleep(0.1)
    out["ipv6"] = addresses6()
    for host, port in spec["udp6"]:
        attempt(f"udp [{host}]:{port}", udp, socket.AF_INET6, (host, port))
    for host, port in spec["tcp6"]:
        attempt(f"tcp [{host}]:{port}", tcp, socket.AF_INET6, (host, port))
    # Link-local: all nodes on each link, and each of the host's link-local addresses.
    for index, name in socket.if_nameindex() if spec["link_local"] else []:
        port = spec["udp6"][0][1]
        attempt(f"udp [ff02::1%{name}]:{port}", udp, socket.AF_INET6, ("ff02::1", port, 0, index))
        for host in spec["link_local"]:
            port = spec["tcp6"][0][1]
            attempt(f"tcp [{host}%{name}]:{port}", tcp, socket.AF_INET6, (host, port, 0, index))
    for host, port in spec["tcp4"]:
        out["tcp4 " + host] = repr(tcp(socket.AF_INET, (host, port)))
    for url in spec["http"]:
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                out["http"][url] = [r.status, r.read().decode()]
        except urllib.error.HTTPError as e:
            out["http"][url] = [e.code, e.read().decode()]
    status = open("/proc/self/status").read().splitlines()
    out["status"] = {k: v.split() for k, _, v in (line.partition(":") for line in status)}
    out["processes"] = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            out["processes"].append(open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode())
        except OSError:
            pass
    out["ca"] = open(os.environ["SSL_CERT_FILE"]).read()
    out["env"] = {k: os.environ.get(k) for k in ("HOME", "USER", "HTTP_PROXY", "https_proxy")}
    subprocess.Popen(["sleep", spec["marker"]], start_new_session=True)
    print(json.dumps(out))
    sys.exit(3)
    """
)


# ---- host-side listeners ---------------------------------------------------------------------


class Listener:
    """A socket on the host that records whatever reaches it: each connection's first bytes (and
    answers `reply`), or each datagram."""

    def __init__(self, sock: socket.socket, where: str, reply: bytes = b""):
        self.sock, self.where, self.reply = sock, where, reply
        self.got: list[bytes] = []
        self.lock = threading.Lock()
        if sock.type == socket.SOCK_STREAM:
            sock.listen(16)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                if self.sock.type != socket.SOCK_STREAM:
                    self._note(self.sock.recvfrom(65536)[0])
                    continue
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            with conn:
                conn.settimeout(3)
                data = b""
                with suppress(OSError):
                    while b"\r\n\r\n" not in data and (chunk := conn.recv(4096)):
                        data += chunk
                        if data == b"host":
                            break
                self._note(data or b"<connected>")
                with suppress(OSError):
                    conn.sendall(self.reply)

    def _note(self, data: bytes) -> None:
        with self.lock:
            self.got.append(data)

    def seen(self) -> list[bytes]:
        """What reached it so far."""
        with self.lock:
            return list(self.got)

    def close(self) -> None:
        """Stop listening (wakes the thread blocked on the socket)."""
        with suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def listen(family: int, kind: int, address: Any, reply: bytes = b"") -> Listener:
    """A Listener bound to `address` (a UNIX path is made connectable by anyone: only isolation
    can keep the command from it)."""
    sock = socket.socket(family, kind)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind(address)
    if family == socket.AF_UNIX and address.startswith("/"):
        os.chmod(address, 0o777)
    where = address if isinstance(address, str) else repr(address)
    return Listener(sock, where, reply)


def knock(listener: Listener) -> None:
    """Send b"host" to the listener from the test (the host), and wait until it has it."""
    sock = listener.sock
    with socket.socket(sock.family, sock.type) as s:
        address = sock.getsockname()
        if sock.family == socket.AF_UNIX and isinstance(address, bytes):
            address = address.decode()  # abstract: b"\0name"
        if sock.type == socket.SOCK_STREAM:
            s.connect(address)
            s.sendall(b"host")
        else:
            s.sendto(b"host", address)
    wait_for(lambda: b"host" in listener.seen(), f"{listener.where} has the host's own message")


# ---- the test's own namespaces ----------------------------------------------------------------


@dataclass(frozen=True)
class Private:
    """A network and a mount namespace held open by a process of the test's (`pid`). The test's
    thread is in the network namespace, so every socket it makes and process it starts is; a
    command run with `enter` is in the mount namespace too, where /run/netns is its own."""

    pid: int

    def enter(self, cwd: Path | None = None) -> list[str]:
        """The prefix that runs a command in the mount namespace (in `cwd`, or the test's own)."""
        return ["nsenter", f"--mount=/proc/{self.pid}/ns/mnt", f"--wd={cwd or os.getcwd()}", "--"]

    def mounts(self) -> list[str]:
        """The lines of the mount namespace's mountinfo."""
        return Path(f"/proc/{self.pid}/mountinfo").read_text().splitlines()


# Run by the holder: a /run/netns of the mount namespace's own (shared, as `ip netns add` makes
# it), loopback up, then wait to be killed.
HOLD = (
    "mkdir -p /run/netns && mount -t tmpfs -o mode=755 netns /run/netns && mount --make-shared /run/netns"
    " && ip link set lo up && echo held && exec sleep infinity"
)


@pytest.fixture
def private() -> Iterator[Private]:
    """The test's own namespaces, entered by its thread, and gone with all they hold afterwards
    (links, iptables rules, `ip netns` names: the holder is the last process in them)."""
    holder = subprocess.Popen(
        ["unshare", "--net", "--mount", "--propagation", "private", "--", "sh", "-c", HOLD],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n", "the namespaces were made"
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            own = os.open(f"/proc/{holder.pid}/ns/net", os.O_RDONLY)
            try:
                os.setns(own, os.CLONE_NEWNET)
            finally:
                os.close(own)
            try:
                yield Private(holder.pid)
            finally:
                os.setns(home, os.CLONE_NEWNET)
        finally:
            os.close(home)
    finally:
        holder.kill()
        holder.wait(10)


# ---- the world: a link, listeners, airlock ---------------------------------------------------


@dataclass
class World:
    """Airlock and everything around it that the isolated command must not reach."""

    home: Path
    airlock: Airlock
    private: Private
    v4: str
    v6: str | None
    secret: Path  # a file of airlock's outside the data dir, readable by anyone: only --hide hides it
    listeners: dict[str, Listener] = field(default_factory=dict)

    @property
    def transparent(self) -> str:
        """The transparent listener's address."""
        return self.airlock.extra[self.airlock.extra.index("--transparent") + 1]

    def port(self, name: str) -> int:
        """The port of a TCP or UDP listener."""
        return int(self.listeners[name].sock.getsockname()[1])

    def host_v6_addresses(self, scope: str = "global") -> list[str]:
        """The host's IPv6 addresses of a scope (global: the test link's ULA included)."""
        out = quiet("ip", "-6", "-o", "addr", "show", "scope", scope)
        return [line.split()[3].split("/")[0] for line in out.splitlines() if "inet6" in line]


def _add_link(name: str, v4: str, v6: str | None) -> None:
    made = subprocess.run(["ip", "link", "add", name, "type", "dummy"], capture_output=True)
    ends = [name]
    if made.returncode != 0:
        sh("ip", "link", "add", name, "type", "veth", "peer", "name", f"{name}p")
        ends.append(f"{name}p")
    sh("ip", "addr", "add", f"{v4}/24", "dev", name)
    if v6 is not None:
        sh("ip", "addr", "add", f"{v6}/64", "dev", name, "nodad")
    for end in ends:
        sh("ip", "link", "set", end, "up")


@pytest.fixture
def world(tmp_path: Path, private: Private) -> Iterator[World]:
    """In the test's own namespaces: a test link (10.79.X.1 and fd00:a1:X::1), listeners
    everywhere, and `airlock run` with its data, rules and an extra secret under a fresh
    /var/lib/airlock-isolate-* directory."""
    link = f"ali{secrets.token_hex(3)}"
    used = quiet("ip", "-o", "addr")
    x = next(x for x in random.sample(range(1, 255), 254) if f" 10.79.{x}." not in used)
    v4, v6 = f"10.79.{x}.1", (f"fd00:a1:{x:x}::1" if IPV6 else None)
    home = Path(tempfile.mkdtemp(prefix="airlock-isolate-", dir="/var/lib"))
    home.chmod(0o755)
    tag = secrets.token_hex(4)
    listeners: dict[str, Listener] = {}
    a: Airlock | None = None
    try:
        _add_link(link, v4, v6)
        inet, inet6, unix = socket.AF_INET, socket.AF_INET6, socket.AF_UNIX
        stream, dgram = socket.SOCK_STREAM, socket.SOCK_DGRAM
        listeners["http allowed"] = listen(inet, stream, (v4, 0), HTTP_OK)
        listeners["http other"] = listen(inet, stream, (v4, 0), HTTP_OK)
        listeners["raw tcp"] = listen(inet, stream, (v4, 0))
        listeners["udp4"] = listen(inet, dgram, ("0.0.0.0", 0))
        if v6 is not None:
            listeners["tcp6"] = listen(inet6, stream, ("::", 0))
            listeners["udp6"] = listen(inet6, dgram, ("::", 0))
        listeners["/tmp stream"] = listen(unix, stream, f"/tmp/airlock-isolate-{tag}.sock")
        listeners["/tmp datagram"] = listen(unix, dgram, f"/tmp/airlock-isolate-{tag}.dgram")
        listeners["/run stream"] = listen(unix, stream, f"/run/airlock-isolate-{tag}.sock")
        listeners["/dev/shm stream"] = listen(unix, stream, f"/dev/shm/airlock-isolate-{tag}.sock")
        listeners["abstract"] = listen(unix, stream, f"\0airlock-isolate-{tag}")

        allowed = listeners["http allowed"].sock.getsockname()[1]
        rules = home / "rules.yaml"
        rules.write_text(f"version: 1\negress:\n  allow: [{{host: {v4}, ports: [{allowed}]}}]\n")
        secret = home / "upstream-ca.pem"
        secret.write_text("a file of airlock's that anyone on the host may read\n")
        a = Airlock(
            data=home / "data",
            rules=rules,
            port=free_port(),
            control_port=free_port(),
            extra=("--transparent", f"127.0.0.1:{free_port()}"),
            output=tmp_path / "airlock.out",
        ).start()
        listeners["in the data dir"] = listen(unix, stream, str(home / "data" / "agent.sock"))
        yield World(home, a, private, v4, v6, secret, listeners)
    finally:
        if a is not None:
            a.stop(signal.SIGKILL)
        for listener in listeners.values():
            listener.close()
            if listener.sock.family == socket.AF_UNIX and listener.where.startswith("/"):
                with suppress(OSError):
                    os.unlink(listener.where)
        quiet("ip", "link", "del", link)
        shutil.rmtree(home, ignore_errors=True)


# ---- running the command ---------------------------------------------------------------------


def running(*argv: str) -> list[int]:
    """The host's processes whose command line is exactly `argv`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with suppress(OSError):
            if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1] == [a.encode() for a in argv]:
                found.append(int(pid))
    return found


def mounts_mentioning(w: World, *words: str) -> frozenset[str]:
    """The mounts where airlock exec runs whose line in mountinfo mentions one of `words`."""
    return frozenset(line for line in w.private.mounts() if any(word in line for word in words))


def isolated(
    w: World, cmd: list[str], *options: str, cwd: Path | None = None, via: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """`airlock exec --isolate [options] -- cmd` for `w`'s airlock (started in `cwd`, by the
    command `via` that ends by exec'ing it), checked to leave nothing."""
    enter = w.private.enter(cwd)
    traces, mounts = Traces.now(enter), mounts_mentioning(w, str(w.home), "airlock")
    args = [*enter, *via, AIRLOCK, "exec", "--data", str(w.airlock.data), "--rules", str(w.airlock.rules)]
    args += ["--hide", str(w.secret), "--isolate", "--transparent", w.transparent, *options, "--", *cmd]
    link, done = exec_isolated(args, enter, timeout=90, cwd=cwd)
    left: dict[str, Any] = dict(Traces.now(enter).added_since(traces))
    if added := mounts_mentioning(w, str(w.home), "airlock") - mounts:
        left["mounts"] = added
    scrub(enter, link)
    assert left == {}, f"airlock exec --isolate left behind {left}"
    return done


def probe(w: World, *options: str) -> tuple[dict[str, Any], subprocess.CompletedProcess[str]]:
    """Run the probe isolated against `w`; what it found, and how the run ended."""
    data = w.airlock.data
    ca_key = data / "ca" / "mitmproxy-ca.pem"
    allowed, other = w.port("http allowed"), w.port("http other")
    spec: dict[str, Any] = {
        "read": [str(p) for p in (data / "control.token", ca_key, data / "log" / "data.mdb", w.secret)]
        + [str(w.airlock.rules), str(data / "log" / "lock.mdb")],
        "append": [str(w.airlock.rules), str(data / "log" / "data.mdb"), str(data / "control.token")],
        "create": [str(data / "planted"), str(w.airlock.rules.with_name("more.yaml"))],
        "unix_stream": [
            w.listeners[k].where for k in ("/tmp stream", "/run stream", "/dev/shm stream", "in the data dir")
        ]
        + [w.listeners["abstract"].where],
        "unix_dgram": [w.listeners["/tmp datagram"].where],
        "udp4": [[w.v4, w.port("udp4")], ["169.254.169.254", w.port("udp4")]],
        "udp6": [[a, w.port("udp6")] for a in w.host_v6_addresses()] if w.v6 else [],
        "tcp6": [[a, w.port("tcp6")] for a in w.host_v6_addresses()] if w.v6 else [],
        "link_local": sorted(set(w.host_v6_addresses("link"))) if w.v6 else [],
        "tcp4": [[w.v4, w.port("raw tcp")]],
        "http": [
            f"http://{w.v4}:{allowed}/ok",
            f"http://{w.v4}:{other}/not-allowed",
            "http://169.254.169.254/latest/meta-data/",
        ],
        "marker": f"4242.{random.randrange(10**8)}",
    }
    done = isolated(w, [PROBE_PYTHON or "python3", "-c", PROBE, json.dumps(spec)], *options)
    assert done.returncode == 3, f"exit {done.returncode}: {done.stderr}"
    assert running("sleep", spec["marker"]) == [], "a process the probe started outlived it"
    return json.loads(done.stdout), done


# ---- the tests -------------------------------------------------------------------------------


@pytest.mark.parametrize("user", [None, "nobody", "4321"], ids=["default-user", "nobody", "uid-4321"])
def test_isolated_command_cannot_touch_airlock_or_reach_around_it(world: World, user: str | None) -> None:
    w = world
    token, rules = (w.airlock.data / "control.token").read_bytes(), w.airlock.rules.read_bytes()
    options = () if user is None else ("--user", user)
    found, _ = probe(w, *options)

    # Every file of airlock's, every host socket, every IPv6 path: refused inside...
    attempts = found["attempts"]
    reached = {name: result for name, result in attempts.items() if not result.startswith("refused")}
    assert reached == {}, reached
    assert any(name.startswith("udp [ff02::1%") for name in attempts) or not w.v6
    assert any(name.startswith("tcp [fe80:") for name in attempts) or not w.host_v6_addresses("link")
    assert found["ipv6"] == []  # no IPv6 address at all, not even loopback's
    # ...and nothing arrived at any listener but the allowed upstream; what the host sends itself
    # afterwards does arrive, so the listeners were there to see it.
    seen = {name: lst.seen() for name, lst in w.listeners.items() if name != "http allowed" and lst.seen()}
    assert seen == {}, seen
    for name, listener in w.listeners.items():
        if not name.startswith("http") and name != "raw tcp":
            knock(listener)
            assert listener.seen() == [b"host"], name

    # Nothing changed: the token, the rules (the proxy still enforces them), the log's integrity.
    assert (w.airlock.data / "control.token").read_bytes() == token
    assert w.airlock.rules.read_bytes() == rules
    assert not (w.airlock.data / "planted").exists()
    assert w.airlock.cli("verify").returncode == 0

    # The allowed upstream is reached through airlock, and only it; the rest is refused and logged.
    allowed, other = w.port("http allowed"), w.port("http other")
    http = found["http"]
    assert http[f"http://{w.v4}:{allowed}/ok"] == [200, "ok"]
    [request] = w.listeners["http allowed"].seen()
    assert request.startswith(b"GET /ok HTTP/1.1\r\n")
    for url in (f"http://{w.v4}:{other}/not-allowed", "http://169.254.169.254/latest/meta-data/"):
        status, body = http[url]
        assert status == 403 and json.loads(body)["rule"] == EGRESS_RULE, (url, body)
    log = w.airlock.log()
    committed = [e for e in log if e["state"] == "committed"]
    assert [e["url"] for e in committed] == [f"http://{w.v4}:{allowed}/ok"]
    denied = {e.get("url") for e in log if e["state"] == "denied"}
    assert {f"http://{w.v4}:{other}/not-allowed", "http://169.254.169.254/latest/meta-data/"} <= denied
    assert {e["state"] for e in log} <= {"committed", "denied"}

    # Who it ran as: unprivileged, no capabilities, none to gain; it saw only its own processes;
    # it was given the CA certificate (not the key) and no proxy settings.
    uid = "4321" if user == "4321" else "65534"
    status = found["status"]
    assert status["Uid"] == [uid] * 4 and status["Gid"] == [uid] * 4
    assert status["CapEff"] == status["CapPrm"] == status["CapBnd"] == ["0000000000000000"]
    assert status["NoNewPrivs"] == ["1"]
    assert not [p for p in found["processes"] if "bin/airlock " in p]  # not airlock run, nor exec
    assert len(found["processes"]) <= 3, found["processes"]  # its init, itself, what it started
    assert found["ca"] == w.airlock.ca_cert.read_text()
    assert "PRIVATE KEY" not in found["ca"]
    assert found["env"]["HTTP_PROXY"] is None and found["env"]["https_proxy"] is None
    assert found["env"]["USER"] == ("nobody" if user != "4321" else "4321")


def test_a_hidden_directory_stays_hidden_from_a_command_started_inside_it(world: World) -> None:
    w = world
    keys = w.home / "keys"
    keys.mkdir(mode=0o755)
    (keys / "upstream.key").write_text("a key anyone on the host may read\n")
    (keys / "upstream.key").chmod(0o644)

    # Its working directory is the hidden one: by path or relative to it, the key is not there.
    script = f"cat upstream.key; cat {keys / 'upstream.key'}; ls -a . {keys}; echo done"
    done = isolated(w, ["sh", "-c", script], "--hide", str(keys), cwd=keys)
    assert done.stdout == "done\n", done
    assert "a key" not in done.stderr
    # Not hidden, the same file is read: it is the mount that hides it, not its mode.
    done = isolated(w, ["cat", "upstream.key"], cwd=keys)
    assert done.stdout == "a key anyone on the host may read\n"


# Starts the command in argv[2:] from a session keyring of its own that holds a key described
# argv[1], as a login session's would (x86_64 system call numbers).
SESSION_WITH_A_KEY = textwrap.dedent(
    """
    import ctypes, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.syscall(250, 1, None) >= 0, "keyctl(KEYCTL_JOIN_SESSION_KEYRING)"
    key = libc.syscall(248, b"user", sys.argv[1].encode(), b"session-secret", 14, ctypes.c_long(-3))
    assert key >= 0, "add_key to the session keyring"
    os.execv(sys.argv[2], sys.argv[2:])
    """
)


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the test's system call numbers are x86_64's")
def test_keys_of_the_session_airlock_was_started_from_are_not_the_commands(world: World) -> None:
    description = f"airlock-isolate-{secrets.token_hex(4)}"
    via = (sys.executable, "-c", SESSION_WITH_A_KEY, description)
    mine = subprocess.run([*via, "/bin/cat", "/proc/keys"], capture_output=True, text=True, check=True)
    assert description in mine.stdout  # a command run in that session sees the key...
    done = isolated(world, ["cat", "/proc/keys"], via=via)
    assert done.returncode == 0, done.stderr
    assert description not in done.stdout  # ...the isolated command does not


# Types a command into its standard input's terminal (TIOCSTI), for the shell there to run.
TYPE_INTO_TERMINAL = textwrap.dedent(
    """
    import fcntl, termios
    try:
        for c in b"echo INJECTED\\n":
            fcntl.ioctl(0, termios.TIOCSTI, bytes([c]))
        print("typed")
    except OSError as e:
        print("refused", e.errno)
    """
)


def test_the_command_cannot_type_into_the_terminal_it_was_started_from(world: World) -> None:
    # A shell on a terminal runs airlock exec, then reads a line: whatever the isolated command
    # managed to type would be that line (and a root shell would run it).
    master, slave = os.openpty()
    try:
        script = 'exec 0<>"$1" 1>&0 2>&0; shift; "$@"; read -r -t 2 line; echo "next line: [$line]"'
        via = ("bash", "-c", script, "bash", os.ttyname(slave))
        done = isolated(world, [PROBE_PYTHON or "python3", "-c", TYPE_INTO_TERMINAL], via=via)
        assert done.returncode == 0
        os.close(slave)
        seen = b""
        with suppress(OSError):  # EIO once the terminal's last user is gone
            while chunk := os.read(master, 4096):
                seen += chunk
    finally:
        with suppress(OSError):
            os.close(slave)
        os.close(master)
    text = seen.decode(errors="replace")
    assert "refused" in text and "typed" not in text, text
    assert "next line: []" in text, text


def test_the_command_cannot_be_run_as_a_user_who_could_change_airlocks_files(world: World) -> None:
    w = world
    logged = settled(w.airlock)

    def refused(*options: str) -> str:
        done = isolated(w, ["sh", "-c", "echo ran > /dev/udp/127.0.0.1/9"], *options)
        assert done.returncode == 2, done
        assert done.stdout == ""
        [line] = done.stderr.splitlines()
        assert line.startswith("airlock exec: error: ")
        return line

    assert "root owns airlock's files" in refused("--user", "root")
    assert "root owns airlock's files" in refused("--user", "0")
    assert "no such user" in refused("--user", "no-such-user-here")

    # The owner of a file of airlock's, and anyone when a file or the directory holding it is
    # writable by all, could change what airlock reads.
    os.chown(w.airlock.rules, 4321, 4321)
    line = refused("--user", "4321")
    assert f"could change {w.airlock.rules} (uid 4321 owns it)" in line
    os.chown(w.airlock.rules, 0, 0)
    w.secret.chmod(0o666)
    assert f"could change {w.secret} (anyone may write it)" in refused()
    w.secret.chmod(0o644)
    w.home.chmod(0o777)
    line = refused("--user", "nobody")
    assert f"could change {w.home} (anyone may write it), which holds airlock's" in line
    w.home.chmod(0o755)
    assert "no such file or directory" in refused("--hide", str(w.home / "missing"))
    assert "/ cannot be hidden" in refused("--hide", "/")

    # Nothing ran, nothing reached anything, nothing was logged.
    assert all(lst.seen() == [] for lst in w.listeners.values())
    assert settled(w.airlock) == logged


def test_exit_codes_and_signals_pass_through_and_nothing_outlives_the_command(world: World) -> None:
    w = world
    assert isolated(w, ["sh", "-c", "exit 7"]).returncode == 7
    assert isolated(w, ["sh", "-c", "kill -TERM $$"]).returncode == 128 + signal.SIGTERM
    assert isolated(w, ["no-such-command-here"]).returncode == 127

    # SIGTERM to airlock exec reaches the command; SIGKILL to airlock exec takes the command down
    # with it, and the next run removes what the killed one left of its network.
    for sig in (signal.SIGTERM, signal.SIGKILL):
        marker = f"4343.{random.randrange(10**8)}"
        enter = w.private.enter()
        args = [*enter, AIRLOCK, "exec", "--data", str(w.airlock.data), "--rules", str(w.airlock.rules)]
        args += ["--isolate", "--transparent", w.transparent, "--", "sleep", marker]
        proc = subprocess.Popen(
            args, stderr=subprocess.PIPE, env=environ_without_proxy(), start_new_session=True
        )
        link = Link.for_process(proc.pid)
        try:
            wait_for(lambda: running("sleep", marker) != [], "the command runs")  # noqa: B023
            proc.send_signal(sig)
            code = proc.wait(30)
            wait_for(lambda: running("sleep", marker) == [], "the command is gone")  # noqa: B023
            if sig == signal.SIGKILL:
                assert link.name in Traces.now(enter).netns
                assert isolated(w, ["true"]).returncode == 0
                left = Traces.now(enter)
                assert link.name not in left.netns and link.host_if not in left.links
                assert not [r for r in left.rules if link.host_if in r.split()]
        finally:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            scrub(enter, link)
        assert code == (128 + signal.SIGTERM if sig == signal.SIGTERM else -signal.SIGKILL)
    assert requests.get(f"{w.airlock.control}/healthz", timeout=5).ok

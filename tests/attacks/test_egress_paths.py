"""Every byte that leaves is an action: ways around the gate, tried with real clients (raw
sockets, curl, requests, httpx over HTTP/2) through the real proxy to real servers on loopback.

Each class is tried with several members: upgrades to protocols other than WebSocket (asked for,
or answered with a 101 unasked), DNS and other non-HTTP bytes inside a CONNECT tunnel, names
inside a request that differ from its destination (Host, :authority, SNI), clients of a
listener open to the world, and keep-alive to a host named by a name.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import struct
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import h2.connection
import h2.events
import pytest
import requests
from mitmproxy.addonmanager import traverse
from mitmproxy.connection import Server
from mitmproxy.http import HTTPFlow
from mitmproxy.options import Options
from mitmproxy.proxy import layers
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layer import Layer
from mitmproxy.proxy.layers.http import HTTPMode
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.proxy.server_hooks import ServerConnectionHookData
from mitmproxy.test import taddons, tflow

from proxy.ops.config import Address, RunConfig
from proxy.ops.datadir import DataDir
from proxy.plane import egress as egress_module
from proxy.plane.clients import Clients, refusal
from proxy.plane.egress import Egress, Resolver
from proxy.plane.fronting import Fronting
from proxy.plane.gate import Gate
from proxy.plane.server import build
from proxy.plane.tunnels import Tunnels, readable, refused_layer
from proxy.plane.upgrades import Upgrades
from proxy.plane.websocket import WebSockets
from rules import Ruleset
from store import Log

from ..support import AIRLOCK, Airlock, Upstream, UpstreamCA, curl, free_port, settle, wait_for
from ..support.capture import NOBODY, PA, TRANSPARENT, curl_args, logged, reply_of, serve, start_airlock
from ..support.namespaces import NETNS_ETC, Netns, Processes, add_link, netns_unsupported

# ---- servers that record every byte ---------------------------------------------------------


@dataclass
class RawServer:
    """A TCP server on loopback that records each connection's bytes and answers the first
    bytes of each with `reply` (then keeps reading until the peer closes)."""

    port: int
    reply: bytes = b""
    connections: list[bytearray] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def received(self) -> list[bytes]:
        """The bytes of each connection so far."""
        with self.lock:
            return [bytes(c) for c in self.connections]


@contextmanager
def raw_server(reply: bytes = b"", port: int | None = None) -> Iterator[RawServer]:
    """Serve a RawServer in a thread."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port or 0))
    listener.listen(16)
    server = RawServer(listener.getsockname()[1], reply)

    def serve_one(conn: socket.socket) -> None:
        got = bytearray()
        with server.lock:
            server.connections.append(got)
        answered = False
        with conn, suppress(OSError):
            while chunk := conn.recv(65536):
                with server.lock:
                    got += chunk
                if not answered and server.reply:
                    answered = True
                    conn.sendall(server.reply)

    def accept() -> None:
        with suppress(OSError):
            while True:
                conn, _ = listener.accept()
                threading.Thread(target=serve_one, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield server
    finally:
        listener.close()


def read_all(s: socket.socket) -> bytes:
    """Everything the proxy sends on `s` until it closes the connection."""
    out = b""
    with suppress(OSError):
        while chunk := s.recv(65536):
            out += chunk
    return out


def read_head(s: socket.socket) -> bytes:
    """One answer's head (up to the blank line)."""
    raw = b""
    while b"\r\n\r\n" not in raw:
        chunk = s.recv(65536)
        assert chunk, f"connection closed after {raw!r}"
        raw += chunk
    return raw


def body_of(raw: bytes) -> dict[str, Any]:
    """The JSON body of a whole answer."""
    return dict(json.loads(raw.partition(b"\r\n\r\n")[2]))


def denied(a: Airlock, count: int = 1) -> list[dict[str, Any]]:
    """The denied actions, once `count` of them are logged."""
    wait_for(lambda: len(a.log("--state", "denied")) >= count, f"{count} refusals are logged")
    return a.log("--state", "denied")


def tunnel(a: Airlock, target: str) -> socket.socket:
    """A socket through an open CONNECT tunnel to `target`."""
    s = socket.create_connection(("127.0.0.1", a.port), timeout=10)
    s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = read_head(s)
    assert head.startswith(b"HTTP/1.1 200"), head
    return s


# ---- upgrades -------------------------------------------------------------------------------

UPGRADES = ["foo", "FOO/2", "TLS/1.3", "websocket2", "h2c, foo", "websocket, foo"]
SWITCH = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: Upgrade\r\n\r\nSERVER-STREAM"


@pytest.mark.parametrize("protocol", UPGRADES)
def test_an_upgrade_to_another_protocol_is_refused_before_anything_leaves(
    airlock: Airlock, protocol: str
) -> None:
    with raw_server(SWITCH) as server:
        target = f"127.0.0.1:{server.port}"
        request = (
            f"GET http://{target}/stream HTTP/1.1\r\nHost: {target}\r\n"
            f"Upgrade: {protocol}\r\nConnection: Upgrade\r\n\r\nCLIENT-STREAM"
        )
        with socket.create_connection(("127.0.0.1", airlock.port), timeout=10) as s:
            s.sendall(request.encode())
            answer = read_all(s)
        assert answer.startswith(b"HTTP/1.1 403"), answer
        refused = body_of(answer.split(b"HTTP/1.1 400")[0] if b"HTTP/1.1 400" in answer else answer)
        assert refused["rule"] == "upgrade" and protocol in refused["message"]
        assert b"SERVER-STREAM" not in answer
        assert server.received() == []  # the upstream was never even connected to
        [logged] = denied(airlock)
        assert (logged["rule"], logged["method"], logged["url"]) == (
            "upgrade",
            "GET",
            f"http://{target}/stream",
        )


def test_upgrades_are_refused_from_curl_and_inside_tunnels(airlock: Airlock) -> None:
    with raw_server(SWITCH) as server:
        target = f"127.0.0.1:{server.port}"
        out = curl(
            "-x", airlock.proxy, "-H", "Upgrade: foo", "-H", "Connection: Upgrade", f"http://{target}/x"
        )
        assert json.loads(out.stdout)["rule"] == "upgrade"
        out = curl(
            "-p",
            "-x",
            airlock.proxy,
            "-H",
            "Upgrade: irc/6.9",
            "-H",
            "Connection: Upgrade",
            f"http://{target}/y",
        )
        assert json.loads(out.stdout)["rule"] == "upgrade"
        with tunnel(airlock, target) as s:
            s.sendall(
                f"GET /z HTTP/1.1\r\nHost: {target}\r\nUpgrade: foo\r\nConnection: Upgrade\r\n\r\n".encode()
            )
            head = read_head(s)
        assert head.startswith(b"HTTP/1.1 403"), head
        assert server.received() == []
        assert [x["url"].rsplit("/", 1)[1] for x in denied(airlock, 3)] == ["x", "y", "z"]


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(SWITCH, id="foo"),
        pytest.param(SWITCH.replace(b"foo", b"websocket"), id="websocket-unasked"),
        pytest.param(SWITCH.replace(b"Upgrade: foo\r\n", b""), id="unnamed"),
    ],
)
def test_a_101_the_client_did_not_ask_for_is_cut(airlock: Airlock, reply: bytes) -> None:
    # The request is an allowed read, so it goes upstream; the upstream switches protocols
    # anyway. The 101 never reaches the client and no byte passes either way afterwards.
    with raw_server(reply) as server:
        target = f"127.0.0.1:{server.port}"
        with socket.create_connection(("127.0.0.1", airlock.port), timeout=10) as s:
            s.sendall(f"GET http://{target}/read HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            wait_for(
                lambda: len(server.received()) == 1 and b"\r\n\r\n" in server.received()[0], "it is sent"
            )
            with suppress(OSError):
                s.sendall(b"CLIENT-STREAM")
            answer = read_all(s)
        assert b" 101 " not in answer and b"SERVER-STREAM" not in answer, answer
        assert [c.startswith(b"GET /read HTTP/1.1") for c in server.received()] == [True]
        assert all(b"CLIENT-STREAM" not in c for c in server.received())
        wait_for(lambda: airlock.log()[0]["state"] == "failed", "the read is logged as failed")
        shown = json.loads(airlock.cli("show", str(airlock.log()[0]["id"]), "--json").stdout)
        assert "101 Switching Protocols" in json.dumps(shown)


# ---- DNS and other protocols inside a tunnel --------------------------------------------------


def dns_query(name: str) -> bytes:
    """A DNS query for `name` (A record) as DNS over TCP sends it: length-prefixed."""
    question = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00"
    message = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + question + struct.pack(">HH", 1, 1)
    return struct.pack(">H", len(message)) + message


def bindable(port: int) -> bool:
    """True when this process can listen on loopback `port` right now."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.parametrize("port", [53, 5353])
def test_dns_inside_a_tunnel_is_refused_and_logged(airlock: Airlock, port: int) -> None:
    if not bindable(port):
        pytest.skip(f"cannot listen on 127.0.0.1:{port} here")
    answer = struct.pack(">H", 12) + struct.pack(">HHHHHH", 0x1234, 0x8180, 1, 0, 0, 0)
    with raw_server(answer, port=port) as responder:
        with tunnel(airlock, f"127.0.0.1:{port}") as s:
            s.sendall(dns_query("allowed.example"))
            got = read_all(s)
        assert got == b""  # no answer: the connection is closed
        assert responder.received() == []  # the query went nowhere
    [logged] = denied(airlock)
    assert (logged["rule"], logged["protocol"], logged["method"]) == ("dns-in-tunnel", "dns", "CONNECT")
    assert logged["url"] == f"tcp://127.0.0.1:{port}"


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"SSH-2.0-OpenSSH_9.6\r\n", id="ssh"),
        pytest.param(b"\x00\x01\x02\x03binary", id="binary"),
        pytest.param(b"*1\r\n$4\r\nPING\r\n", id="redis"),
        pytest.param(b"HELO x\r\n\r\n", id="smtp-like-no-version"),
    ],
)
def test_bytes_that_are_not_http_inside_a_tunnel_are_refused(
    airlock: Airlock, upstream: Upstream, payload: bytes
) -> None:
    with raw_server(b"GREETING") as server:
        with tunnel(airlock, f"127.0.0.1:{server.port}") as s:
            s.sendall(payload)
            got = read_all(s)
        assert b"GREETING" not in got
        assert server.received() == []
    # "HELO x" starts like a request line: it is read as HTTP, and HTTP's parser refuses it
    # (nothing is logged: nothing was asked of any upstream).
    if payload.startswith(b"HELO"):
        assert got.startswith(b"HTTP/1.1 400"), got
    else:
        [logged] = denied(airlock)
        assert (logged["rule"], logged["method"]) == ("raw-tcp", "CONNECT")


# ---- domain fronting ------------------------------------------------------------------------


@pytest.fixture
def tls_airlock(make_airlock: Callable[..., Airlock], upstream_ca: UpstreamCA) -> Airlock:
    """A proxy that trusts the TLS upstream's CA."""
    return make_airlock(extra=("--upstream-ca", str(upstream_ca.cert)))


def test_a_different_host_header_inside_a_tunnel_is_refused(
    tls_airlock: Airlock, tls_upstream: Upstream
) -> None:
    a, port = tls_airlock, tls_upstream.port
    base = ("--cacert", str(a.ca_cert), "-x", a.proxy)
    ok = curl(*base, f"https://localhost:{port}/same")
    assert json.loads(ok.stdout)["path"] == "/same"
    fronted = curl(*base, "-H", "Host: evil.example", f"https://localhost:{port}/curl-host")
    assert json.loads(fronted.stdout)["rule"] == "domain-fronting"
    # --connect-to: the tunnel goes to 127.0.0.1, while SNI and Host say localhost.
    moved = curl(
        *base, "--connect-to", f"localhost:{port}:127.0.0.1:{port}", f"https://localhost:{port}/connect-to"
    )
    assert json.loads(moved.stdout)["rule"] == "domain-fronting", moved.stdout
    r = requests.get(
        f"https://localhost:{port}/requests",
        headers={"Host": "evil.example"},
        proxies=a.proxies,
        verify=str(a.ca_cert),
        timeout=10,
    )
    assert r.status_code == 403 and r.json()["rule"] == "domain-fronting"
    assert "evil.example" in r.json()["message"] and f"localhost:{port}" in r.json()["message"]
    assert [s.path for s in tls_upstream.effects()] == ["/same"]
    refused = denied(a, 3)
    assert [x["url"].rsplit("/", 1)[1] for x in refused] == ["curl-host", "connect-to", "requests"]
    assert {x["rule"] for x in refused} == {"domain-fronting"}


def h2_get(a: Airlock, target: str, authority: str, path: str) -> tuple[int, dict[str, Any]]:
    """GET `path` over HTTP/2 (the h2 library on a TLS socket through a tunnel to `target`) with
    its own `:authority`; the status and the JSON body."""
    context = ssl.create_default_context(cafile=a.ca_cert)
    context.set_alpn_protocols(["h2"])
    with tunnel(a, target) as raw, context.wrap_socket(raw, server_hostname=target.split(":")[0]) as s:
        assert s.selected_alpn_protocol() == "h2"
        conn = h2.connection.H2Connection()
        conn.initiate_connection()
        headers = [(":method", "GET"), (":authority", authority), (":scheme", "https"), (":path", path)]
        conn.send_headers(1, headers, end_stream=True)
        s.sendall(conn.data_to_send())
        status, body, done = 0, b"", False
        while not done:
            chunk = s.recv(65536)
            assert chunk, "the proxy closed the connection"
            for event in conn.receive_data(chunk):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    done = True
            s.sendall(conn.data_to_send())
    return status, json.loads(body)


def test_a_different_authority_over_http2_is_refused_and_authority_is_logged(
    tls_airlock: Airlock, tls_upstream: Upstream
) -> None:
    a, port = tls_airlock, tls_upstream.port
    target = f"localhost:{port}"
    status, body = h2_get(a, target, target, "/h2")
    assert status == 200 and body["path"] == "/h2"
    status, body = h2_get(a, target, "evil.example", "/h2-authority")
    assert (
        status == 403
        and body["rule"] == "domain-fronting"
        and ":authority names evil.example" in body["message"]
    )
    # curl over HTTP/2 turns a Host header into the :authority.
    common = ("--http2", "--cacert", str(a.ca_cert), "-x", a.proxy, "-w", "\n%{http_version}")
    fronted = curl(*common, "-H", "Host: evil.example", f"https://{target}/h2-curl")
    assert fronted.stdout.endswith("\n2"), fronted.stdout
    assert json.loads(fronted.stdout.rsplit("\n", 1)[0])["rule"] == "domain-fronting"
    assert [s.path for s in tls_upstream.effects()] == ["/h2"]
    settle(a, 1 + 2 + 2)
    committed = a.log("--state", "committed")[0]
    shown = json.loads(a.cli("show", str(committed["id"]), "--json").stdout)
    headers = shown["entries"][0]["data"]["action"]["headers"]
    assert headers["host"] == target  # HTTP/2's :authority, recorded as the host header
    assert [x["url"].rsplit("/", 1)[1] for x in denied(a, 2)] == ["h2-authority", "h2-curl"]


def test_a_different_sni_inside_a_tunnel_is_refused(tls_airlock: Airlock, tls_upstream: Upstream) -> None:
    a, port = tls_airlock, tls_upstream.port
    context = ssl.create_default_context(cafile=a.ca_cert)
    with tunnel(a, f"localhost:{port}") as raw, context.wrap_socket(raw, server_hostname="evil.example") as s:
        s.sendall(f"GET /sni HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n".encode())
        answer = read_all(s)
    assert answer.startswith(b"HTTP/1.1 403"), answer
    refused = body_of(answer)
    assert refused["rule"] == "domain-fronting" and "TLS SNI names evil.example" in refused["message"]
    assert tls_upstream.effects() == []
    assert denied(a)[0]["rule"] == "domain-fronting"


@pytest.mark.parametrize(
    "hosts",
    [
        ["evil.example"],
        ["LOCALHOST.evil.example"],
        ["127.0.0.2:{port}"],
        ["127.0.0.1:1"],  # the right host, another port
        ["127.0.0.1:{port}", "evil.example"],  # two Host headers: upstreams differ on which counts
    ],
)
def test_a_plain_request_naming_another_host_is_refused(
    airlock: Airlock, upstream: Upstream, hosts: list[str]
) -> None:
    target = f"127.0.0.1:{upstream.port}"
    named = "".join(f"Host: {h.format(port=upstream.port)}\r\n" for h in hosts)
    with socket.create_connection(("127.0.0.1", airlock.port), timeout=10) as s:
        s.sendall(f"GET http://{target}/plain HTTP/1.1\r\n{named}Connection: close\r\n\r\n".encode())
        answer = read_all(s)
    assert answer.startswith(b"HTTP/1.1 403"), answer
    assert body_of(answer)["rule"] == "domain-fronting"
    assert upstream.effects() == []
    ok = requests.get(f"http://{target}/plain", proxies=airlock.proxies, timeout=10)
    assert ok.status_code == 200 and [s.path for s in upstream.effects()] == ["/plain"]
    assert [x["rule"] for x in denied(airlock)] == ["domain-fronting"]


# ---- clients of a listener ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "peer", "refused"),
    [
        ("transparent@127.0.0.1:8082", "203.0.113.7", False),  # capture redirects the agent's own traffic
        ("transparent@0.0.0.0:8082", "8.8.8.8", False),
        ("regular@0.0.0.0:8080", "8.8.8.8", True),  # a forward proxy open to the world
        ("regular@8080", "2001:4860::1", True),
        ("regular@0.0.0.0:8080", "::ffff:8.8.8.8", True),
        ("reverse:http://x@0.0.0.0:9001", "8.8.4.4", True),
        ("regular@0.0.0.0:8080", "10.0.0.5", False),  # pods and private networks
        ("regular@0.0.0.0:8080", "127.0.0.1", False),
        ("regular@10.0.0.1:8080", "8.8.8.8", False),  # bound where the operator chose
    ],
)
def test_a_listener_refuses_public_clients_only_when_open_on_every_interface(
    spec: str, peer: str, refused: bool
) -> None:
    assert (refusal(ProxyMode.parse(spec), peer) is not None) is refused
    clients = Clients()
    with taddons.context(clients):
        client = tflow.tclient_conn()
        client.peername = (peer, 40000)
        client.proxy_mode = ProxyMode.parse(spec)
        clients.client_connected(client)
        assert (client.error is not None) is refused


# ---- keep-alive -----------------------------------------------------------------------------


@dataclass
class CountingServer:
    """An HTTP/1.1 server that counts the TCP connections it accepts."""

    port: int
    connections: int = 0
    requests: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@contextmanager
def counting_server() -> Iterator[CountingServer]:
    """Serve a CountingServer in a thread."""
    counted = CountingServer(free_port())

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def setup(self) -> None:
            super().setup()
            with counted.lock:
                counted.connections += 1

        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            with counted.lock:
                counted.requests.append(f"{self.command} {self.path}")
            payload = b'{"ok": true}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _any

    server = ThreadingHTTPServer(("127.0.0.1", counted.port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield counted
    finally:
        server.shutdown()
        server.server_close()


def test_keep_alive_to_a_named_host_reuses_the_checked_connection(airlock: Airlock) -> None:
    with counting_server() as server, requests.Session() as session:
        session.proxies = airlock.proxies
        for i in range(20):
            url = f"http://localhost:{server.port}/k/{i}"
            r = session.post(url, data=b"x") if i % 2 else session.get(url)
            assert r.status_code == 200, r.text
        assert len(server.requests) == 20
        assert server.connections <= 2, server.connections
    settle(airlock, 1 + 20 * 2)
    logged = airlock.log()
    assert len(logged) == 20 and {x["state"] for x in logged} == {"committed"}
    assert {x["host"] for x in logged} == {"localhost"}


# ---- a captured agent with a public source address --------------------------------------------


def with_public_address(netns: Netns, *hosts: str) -> str:
    """Give the namespace the public address 1.2.3.4 on a link of its own and add `hosts` lines
    (`{public}` standing for it) to its hosts file; return the address."""
    public = "1.2.3.4"
    add_link(netns.exec(), "pub0", f"{public}/24")
    file = NETNS_ETC / netns.name / "hosts"
    file.write_text(file.read_text() + "".join(line.format(public=public) + "\n" for line in hosts))
    return public


@pytest.mark.skipif(netns_unsupported() is not None, reason=netns_unsupported() or "")
def test_capture_serves_an_agent_whose_address_is_public(
    netns: Netns,
    processes: Processes,
    tmp_path: Path,
) -> None:
    # The agent's connection to 1.2.3.4 (a public address, here held by the namespace itself)
    # leaves from 1.2.3.4: the transparent listener sees a public client and must serve it.
    public = with_public_address(netns, "{public} public.test")
    server = serve(processes, netns.exec(), "http", public, PA)
    a = start_airlock(processes, netns, tmp_path, "version: 1\negress:\n  allow: [public.test]\n")
    installed = netns.run(AIRLOCK, "capture", "--uid", str(NOBODY), "--port", str(TRANSPARENT))
    assert installed.returncode == 0, installed.stderr

    ok = reply_of(netns.run(*curl_args(f"http://public.test:{PA}/public"), uid=NOBODY))
    assert ok.status == 200, ok
    assert server.seen() == [{"path": "/public", "host": f"public.test:{PA}"}]
    # Redirected, the Host header is the destination: another name there is decided as itself.
    other = netns.run(*curl_args(f"http://public.test:{PA}/other"), "-H", "Host: other.test", uid=NOBODY)
    assert reply_of(other).status == 403
    [first, second] = logged(a, 2)
    assert (first["url"], first["state"]) == (f"http://public.test:{PA}/public", "committed")
    assert (second["host"], second["rule"], second["state"]) == ("other.test", "egress", "denied")
    assert len(server.seen()) == 1


# ---- the order the addons run in --------------------------------------------------------------


def test_the_master_serve_runs_has_the_guards_before_the_gate_and_egress_as_its_child(tmp_path: Path) -> None:
    # mitmproxy runs a hook addon by addon, in order, a child right after its parent: what refuses
    # a request outright must see it before the gate forwards it, the WebSocket addon must read the
    # agent header before the gate removes it, and every connection the gate lets open is pinned
    # by egress. Checked on the master `serve` builds, not on a list made for the test.
    (tmp_path / "r.yaml").write_text("version: 1\n")
    cfg = RunConfig(data=tmp_path / "data", listen=Address("127.0.0.1", 0), rules=tmp_path / "r.yaml")
    data = DataDir(cfg.data)
    data.prepare()
    log = Log.open(data.log)

    async def built() -> tuple[list[type], bool, list[type]]:
        m, gate = build(cfg, data, log, Ruleset.load(cfg.rules))  # a master needs a running loop
        chain = [type(addon) for addon in traverse(m.addons.chain)]
        return chain, m.addons.get("egress") is gate.egress, [type(guard) for guard in gate.guards]

    try:
        chain, pinned_by_the_gates_egress, guards = asyncio.run(built())
    finally:
        log.close()
    ours = [kind for kind in chain if kind in (Tunnels, WebSockets, Gate, Egress)]
    assert ours == [Tunnels, WebSockets, Gate, Egress]
    assert chain.index(Egress) == chain.index(Gate) + 1
    assert pinned_by_the_gates_egress
    assert guards == [Upgrades, Fronting]
    assert not any(kind.__name__ == "Block" for kind in chain)
    assert Clients in chain


@pytest.mark.parametrize(
    ("kind", "data", "rule"),
    [
        (lambda c: layers.DNSLayer(c), b"\x00\x1d\x12\x34", "dns-in-tunnel"),
        (lambda c: layers.TCPLayer(c), b"SSH-2.0-x\r\n", "raw-tcp"),
        (lambda c: layers.UDPLayer(c), b"datagram", "protocol"),
        (lambda c: layers.HttpLayer(c, HTTPMode.transparent), b"\x16\x00binary", "raw-tcp"),
        (lambda c: layers.HttpLayer(c, HTTPMode.transparent), b"GET / HTTP/1.1\r\n", None),
        (lambda c: layers.HttpLayer(c, HTTPMode.regular), b"CONNECT x:1 HTTP/1.1\r\n", None),
        (lambda c: layers.ServerTLSLayer(c), b"\x16\x03\x01", None),
    ],
)
def test_only_http_and_tls_layers_are_readable(
    kind: Callable[[Context], Layer], data: bytes, rule: str | None
) -> None:
    chosen = kind(Context(tflow.tclient_conn(), Options()))
    assert readable(chosen, data) is (rule is None)
    if rule is not None:
        assert refused_layer(chosen, "allowed.example", 53)[1].rule == rule


async def rechecked(egress: Egress, flow: HTTPFlow) -> None:
    """The egress request hook run as mitmproxy runs it: its coroutine awaited when it returns one."""
    pending = egress.request(flow)
    if pending is not None:
        await pending


@pytest.mark.parametrize(
    ("first", "then", "rules_then"),
    [
        pytest.param(["1.1.1.1"], ["8.8.8.8"], None, id="the-answer-moved"),
        pytest.param(["1.1.1.1", "8.8.8.8"], ["8.8.8.8", "1.1.1.1"], None, id="same-answer-reordered"),
        pytest.param(
            ["10.1.1.1", "1.1.1.1"],
            ["10.1.1.1", "1.1.1.1"],
            "allow: [moving.test]",
            id="rules-dropped-a-range",
        ),
    ],
)
def test_an_open_connection_is_reused_only_while_its_address_is_a_checked_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first: list[str], then: list[str], rules_then: str | None
) -> None:
    # The upstream connection of one client stays open (keep-alive); before each request may
    # reuse it, its address is checked against the name's current answer and the rules in force.
    def load(egress_yaml: str) -> Ruleset:
        (tmp_path / "r.yaml").write_text(f"version: 1\negress:\n  {egress_yaml}\n")
        return Ruleset.load(tmp_path / "r.yaml")

    rules = [load("allow: [moving.test, 10.0.0.0/8]")]
    answer = [first]

    async def lookup(host: str) -> list[str]:
        return answer[0]

    egress = Egress(lambda: rules[0], Resolver(ttl=0, lookup=lookup))
    closed: list[Server] = []
    monkeypatch.setattr(egress_module, "_close", lambda flow, server: closed.append(server))

    async def go() -> None:
        opened = ServerConnectionHookData(
            client=tflow.tclient_conn(), server=Server(address=("moving.test", 443))
        )
        await egress.server_connect(opened)
        assert opened.server.address == (first[0], 443)
        egress.server_connected(opened)
        assert opened.server.address == ("moving.test", 443)  # named again: reusable
        flow = tflow.tflow()
        flow.client_conn = opened.client
        flow.request.host, flow.request.port = "moving.test", 443
        await rechecked(egress, flow)
        assert closed == []  # the same answer: reused
        answer[0] = then
        if rules_then is not None:
            rules[0] = load(rules_then)
        await rechecked(egress, flow)
        changed = first[0] not in then or rules_then is not None
        assert closed == ([opened.server] if changed else [])

    asyncio.run(go())


# One agent session, inside the namespace: a request, a reload of the rules, a second request on
# the same kept-alive proxy connection. Prints what each request got.
KEPT_ALIVE = """\
import json, sys, requests
url, proxy, control, token, rules, new_rules = sys.argv[1:7]
with requests.Session() as s:
    s.proxies = {"http": proxy}
    first = s.get(url, timeout=10).json()
    open(rules, "w").write(new_rules)
    auth = {"Authorization": "Bearer " + token}
    reloaded = requests.post(control + "/v1/rules/reload", headers=auth, timeout=10)
    second = s.get(url, timeout=10)
print(json.dumps({"first": first, "reload": reloaded.status_code, "second": second.status_code}))
"""


@pytest.mark.skipif(netns_unsupported() is not None, reason=netns_unsupported() or "")
def test_a_kept_alive_connection_does_not_outlive_the_rules_that_allowed_its_address(
    netns: Netns,
    processes: Processes,
    tmp_path: Path,
) -> None:
    # moving.test has a private address (allowed by a range) and a public one. A connection
    # opened to the private address stays open; when a reload drops the range, the next request
    # on the same client connection must not reuse it: it goes to the public address.
    public = with_public_address(netns, "10.77.0.1 moving.test", "{public} moving.test")
    private_server = serve(processes, netns.exec(), "http", "10.77.0.1", PA)
    public_server = serve(processes, netns.exec(), "http", public, PA)
    a = start_airlock(
        processes, netns, tmp_path, "version: 1\negress:\n  allow: [moving.test, 10.77.0.0/24]\n"
    )
    script = tmp_path / "kept_alive.py"
    script.write_text(KEPT_ALIVE)
    run = netns.run(
        sys.executable,
        str(script),
        f"http://moving.test:{PA}/k",
        f"http://127.0.0.1:{a.port}",
        f"http://127.0.0.1:{a.control_port}",
        a.token,
        str(a.rules),
        "version: 1\negress:\n  allow: [moving.test]\n",
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"first": {"port": PA, "path": "/k"}, "reload": 200, "second": 200}
    assert [s["path"] for s in private_server.seen()] == ["/k"]  # only before the reload
    assert [s["path"] for s in public_server.seen()] == ["/k"]


# ---- airlock itself is not a destination --------------------------------------------------------


def test_the_control_api_and_the_proxy_are_not_reachable_through_the_proxy(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    # The rules allow loopback, where the control API listens: an agent that read its token
    # must still not vote, freeze or thaw through the proxy, nor loop the proxy into itself.
    a = make_airlock(rules="version: 1\negress: {allow: [127.0.0.1]}\n")
    headers = {"Authorization": f"Bearer {a.token}"}
    direct = requests.post(f"{a.control}/v1/freeze", json={"reason": "agent"}, headers=headers, timeout=10)
    assert direct.status_code == 200  # the operator's own path works
    requests.post(f"{a.control}/v1/thaw", headers=headers, timeout=10).raise_for_status()
    through = [
        requests.post(f"{a.control}/v1/freeze", json={}, headers=headers, proxies=a.proxies, timeout=10),
        requests.get(f"{a.control}/v1/pending", headers=headers, proxies=a.proxies, timeout=10),
        requests.get(f"{a.proxy}/", proxies=a.proxies, timeout=10),
    ]
    assert [r.status_code for r in through] == [502, 502, 502], [r.text for r in through]
    assert all("own control API or proxy listener" in r.text for r in through[:2]), through[0].text
    tunnel = curl("-p", "-x", a.proxy, "-o", "/dev/null", "-w", "%{http_code}", f"{a.control}/healthz")
    assert tunnel.stdout != "200"
    state = requests.get(f"{a.control}/v1/freeze", headers=headers, timeout=10).json()
    assert state["frozen"] is False  # the freeze sent through the proxy never arrived
    assert get_ok(a, upstream)


def get_ok(a: Airlock, upstream: Upstream) -> bool:
    """The proxy still serves an ordinary request."""
    return requests.get(f"{upstream.url}/x", proxies=a.proxies, timeout=10).status_code == 200

"""Shared fixtures: a real upstream server on loopback and a real `airlock run` process."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

BIN = Path(sys.executable).parent
AIRLOCK = str(BIN / "airlock")


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- the upstream ---------------------------------------------------------------------------


@dataclass
class Seen:
    """One request as the upstream received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Upstream:
    """A real HTTP(S) server on loopback that records every request it receives (its effects)."""

    port: int
    scheme: str
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    on_request: Callable[[Seen], None] | None = None
    release: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        """Base URL of the server."""
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def effects(self, method: str | None = None) -> list[Seen]:
        """Requests received so far, optionally only one method."""
        with self.lock:
            return [s for s in self.seen if method is None or s.method == method]


def _handler(up: Upstream) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            seen = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            with up.lock:
                up.seen.append(seen)
                n = len(up.seen)
            if up.on_request is not None:
                up.on_request(seen)
            status = 200
            if self.path.startswith("/status/"):
                status = int(self.path.partition("?")[0].split("/")[2])
            if self.path.startswith("/hold"):
                # Keeps the request open until the test releases it (or a minute passes).
                up.release.wait(60)
            if self.path.startswith("/big/"):
                payload = b"x" * int(self.path.split("/")[2])
            else:
                payload = json.dumps(
                    {"method": self.command, "path": self.path, "n": n, "size": len(body)}
                ).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Set-Cookie", "session=upstream-secret-cookie")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _any

    return Handler


@dataclass(frozen=True)
class TestCA:
    """A CA for the upstream's own certificate, so the proxy can verify it with --upstream-ca."""

    cert: Path
    server_cert: Path
    server_key: Path


@pytest.fixture(scope="session")
def upstream_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    """A private CA and a server certificate for 127.0.0.1 and localhost."""
    d = tmp_path_factory.mktemp("upstream-ca")
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "airlock test upstream CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = TestCA(d / "ca.pem", d / "server.pem", d / "server.key")
    paths.cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.server_key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


@contextmanager
def serving(
    handler: type[BaseHTTPRequestHandler],
    port: int,
    *,
    tls: ssl.SSLContext | None = None,
    release: threading.Event | None = None,
) -> Iterator[None]:
    """Serve `handler` on loopback `port` in a thread; on the way out set `release` (so held
    requests finish) and stop the server."""
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield
    finally:
        if release is not None:
            release.set()
        server.shutdown()
        server.server_close()


def _serve(up: Upstream, tls: ssl.SSLContext | None) -> Iterator[Upstream]:
    with serving(_handler(up), up.port, tls=tls, release=up.release):
        yield up


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    """A plain HTTP upstream on loopback."""
    yield from _serve(Upstream(free_port(), "http"), None)


@pytest.fixture
def tls_upstream(upstream_ca: TestCA) -> Iterator[Upstream]:
    """An HTTPS upstream on loopback with a certificate from `upstream_ca`."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(upstream_ca.server_cert, upstream_ca.server_key)
    yield from _serve(Upstream(free_port(), "https"), ctx)


# ---- the proxy ------------------------------------------------------------------------------


RULES = """\
version: 1
egress:
  allow: [localhost, 127.0.0.1]
secrets:
  headers: [X-Service-Token]
rules:
  - id: no-item-deletes
    description: items are never deleted by agents
    match: {method: DELETE, path: "/items/*"}
    action: deny
    message: Deleting items is not allowed; archive the item instead.
"""


@dataclass
class Airlock:
    """A running `airlock run` process and the ways to reach it."""

    data: Path
    rules: Path
    port: int
    control_port: int
    proc: subprocess.Popen[bytes] | None = None
    upstreams: dict[str, tuple[str, int]] = field(default_factory=dict)  # name -> (url, port)
    extra: tuple[str, ...] = ()
    output: Path | None = None

    @property
    def proxy(self) -> str:
        """The forward proxy URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def proxies(self) -> dict[str, str]:
        """`proxies=` for requests."""
        return {"http": self.proxy, "https": self.proxy}

    @property
    def control(self) -> str:
        """The control API base URL."""
        return f"http://127.0.0.1:{self.control_port}"

    @property
    def ca_cert(self) -> Path:
        """The interception CA certificate clients must trust."""
        return self.data / "ca" / "mitmproxy-ca-cert.pem"

    @property
    def token(self) -> str:
        """The control API token."""
        return (self.data / "control.token").read_text().strip()

    def command(self) -> list[str]:
        """The `airlock run` command line."""
        cmd = [
            AIRLOCK,
            "run",
            "--data",
            str(self.data),
            "--rules",
            str(self.rules),
            "--listen",
            f"127.0.0.1:{self.port}",
            "--control",
            f"127.0.0.1:{self.control_port}",
        ]
        for name, (url, port) in self.upstreams.items():
            cmd += ["--upstream", f"{name}={url}@{port}"]
        return cmd + list(self.extra)

    def start(self) -> Airlock:
        """Start the process and wait until the proxy and the control API answer."""
        assert self.output is not None
        out = self.output.open("ab")
        self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"airlock exited {self.proc.returncode}: {self.output.read_text()}")
            try:
                if requests.get(f"{self.control}/healthz", timeout=1).ok:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"airlock did not become ready: {self.output.read_text()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the process (SIGKILL simulates a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(15)
        self.proc = None

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run an `airlock` subcommand against this data dir."""
        proc = subprocess.run(
            [AIRLOCK, *args, "--data", str(self.data)], capture_output=True, text=True, timeout=60
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"airlock {args} exited {proc.returncode}: {proc.stderr}")
        return proc

    def log(self, *args: str) -> list[dict[str, Any]]:
        """`airlock log --json` as a list of actions."""
        out = self.cli("log", "--json", *args).stdout
        return [json.loads(line) for line in out.splitlines()]


@pytest.fixture
def make_airlock(tmp_path: Path) -> Iterator[Callable[..., Airlock]]:
    """A factory for `airlock run` processes on free ports; every one is stopped afterwards."""
    started: list[Airlock] = []

    def make(
        rules: str = RULES,
        upstreams: dict[str, tuple[str, int]] | None = None,
        extra: tuple[str, ...] = (),
        data: Path | None = None,
        start: bool = True,
    ) -> Airlock:
        rules_file = tmp_path / f"rules-{len(started)}.yaml"
        rules_file.write_text(rules)
        a = Airlock(
            data=data or tmp_path / "data",
            rules=rules_file,
            port=free_port(),
            control_port=free_port(),
            upstreams=upstreams or {},
            extra=extra,
            output=tmp_path / f"airlock-{len(started)}.out",
        )
        started.append(a)
        return a.start() if start else a

    yield make
    for a in started:
        a.stop(signal.SIGKILL)


@pytest.fixture
def airlock(make_airlock: Callable[..., Airlock]) -> Airlock:
    """One running proxy with the test rules."""
    return make_airlock()


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests say which proxy each client uses; nothing leaks in from the environment.
    for var in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
        "AIRLOCK_DATA",
    ):
        monkeypatch.delenv(var, raising=False)


def environ_without_proxy() -> dict[str, str]:
    """The test process environment with no proxy variables (for subprocess clients)."""
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the real curl with `args` and no proxy variables from the environment."""
    return subprocess.run(
        ["curl", "-sS", *args], capture_output=True, text=True, timeout=30, env=environ_without_proxy()
    )


# ---- helpers shared by the test modules -----------------------------------------------------


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    """Poll until `condition` holds; fail naming `what` if it never does."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.02)


def entries_now(a: Airlock) -> int:
    """How many entries the log holds, as the control API's /healthz reports."""
    return int(requests.get(f"{a.control}/healthz", timeout=5).json()["entries"])


def settle(a: Airlock, entries: int) -> None:
    """Wait until the log holds `entries` entries (outcomes are written just after the client has
    its response)."""
    wait_for(lambda: entries_now(a) == entries, f"the log holds {entries} entries")


@contextmanager
def plain_upstream() -> Iterator[Upstream]:
    """The HTTP upstream, for module-scoped fixtures."""
    yield from _serve(Upstream(free_port(), "http"), None)


def started_airlock(root: Path, rules: str = RULES) -> Airlock:
    """An `airlock run` with its rules, data and output under `root`."""
    (root / "rules.yaml").write_text(rules)
    return Airlock(
        data=root / "data",
        rules=root / "rules.yaml",
        port=free_port(),
        control_port=free_port(),
        output=root / "airlock.out",
    ).start()


def hold_and_crash(a: Airlock, up: Upstream, paths: list[str]) -> dict[str, int]:
    """POST each /hold path through the proxy, wait until the upstream holds them all, SIGKILL the
    proxy and start it again on the same data dir: the actions are in_doubt. Returns path -> id."""

    def send(path: str) -> None:
        with suppress(requests.RequestException):  # the proxy is killed under it
            requests.post(f"{up.url}{path}", data=b"payload", proxies=a.proxies, timeout=30)

    threads = [threading.Thread(target=send, args=(p,), daemon=True) for p in paths]
    for t in threads:
        t.start()
    wait_for(lambda: {s.path for s in up.effects()} >= set(paths), "the upstream holds every request")
    a.stop(signal.SIGKILL)
    for t in threads:
        t.join(30)
    a.start()
    found = {str(x["url"]).removeprefix(up.url): int(x["id"]) for x in a.log("--state", "in_doubt")}
    assert set(found) == set(paths), found
    return found

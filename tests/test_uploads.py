"""Large request bodies stream through the real proxy in bounded memory: decided and logged on
their headers before anything goes upstream, metered on the way (size and SHA-256 in the
outcome), refused by rules that must read a body they cannot see, and compressed bodies never
expanded past the limit. Real clients (curl, requests, a raw socket) to a real upstream that
reads and hashes what it receives."""

from __future__ import annotations

import gzip
import hashlib
import json
import socket
import subprocess
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from io import BufferedIOBase
from pathlib import Path
from typing import Any

import pytest
import requests
from botocore.exceptions import ClientError

from store import Log

from .support import Airlock, Upstream, environ_without_proxy, free_port, serving, wait_for
from .support.moto import Moto, moto_server, proxied
from .support.outcomes import final

GIB = 1 << 30
MIB = 1 << 20
PEAK_RSS = 200 * 1000 * 1000  # bytes of Airlock's peak resident memory allowed while a GiB passes

RULES = """\
version: 1
egress:
  allow: [127.0.0.1]
rules:
  - id: no-secrets-out
    match: {method: [POST, PUT], path: "/keys/*", text: "BEGIN PRIVATE KEY"}
    action: deny
    message: Private keys are not uploaded.
  - id: no-admin-flags
    match: {method: POST, path: "/json/*", body: {properties: {admin: {const: true}}, required: [admin]}}
    action: deny
    message: Agents do not grant admin.
  - id: no-uploads-to-vault
    match: {method: PUT, path: "/vault/*"}
    action: deny
    message: Nothing is uploaded to the vault.
"""


@dataclass
class Received:
    """One request as the sink read it: its body by size and digest, and what the log held
    about it when its headers arrived (before any of its body was read)."""

    method: str
    path: str
    headers: dict[str, str]
    size: int
    sha256: str
    intent: dict[str, Any] | None


@dataclass
class Sink:
    """An upstream that reads each request body (by length, or chunked), hashes and discards it."""

    port: int
    log_path: Path | None = None
    received: list[Received] = field(default_factory=list)
    heads: list[str] = field(default_factory=list)  # paths whose headers arrived
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        """Base URL of the sink."""
        return f"http://127.0.0.1:{self.port}"

    def intent_now(self, path: str) -> dict[str, Any] | None:
        """The pending action for `path` in the log right now, read as another process would."""
        if self.log_path is None:
            return None
        log = Log.open(self.log_path, readonly=True)
        try:
            return next((a for a in log.actions("pending") if a["url"].endswith(path)), None)
        finally:
            log._env.close()


def sink_handler(sink: Sink) -> type[BaseHTTPRequestHandler]:
    """Reads and hashes every body, answering 201 with what it counted."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _any(self) -> None:
            with sink.lock:
                sink.heads.append(self.path)
            intent = sink.intent_now(self.path)
            digest = hashlib.sha256()
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                size = _read_chunked(self.rfile, digest)
            else:
                size = _read_exactly(self.rfile, int(self.headers.get("Content-Length") or 0), digest)
            headers = {k.lower(): v for k, v in self.headers.items()}
            got = Received(self.command, self.path, headers, size, digest.hexdigest(), intent)
            with sink.lock:
                sink.received.append(got)
            payload = json.dumps({"size": size, "sha256": got.sha256}).encode()
            self.send_response(201)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_POST = do_PUT = do_PATCH = do_GET = _any

    return Handler


def _read_exactly(rfile: BufferedIOBase, length: int, digest: Any) -> int:
    seen = 0
    while seen < length:
        data = rfile.read(min(length - seen, MIB))
        if not data:
            break
        digest.update(data)
        seen += len(data)
    return seen


def _read_chunked(rfile: BufferedIOBase, digest: Any) -> int:
    seen = 0
    while True:
        size = int(rfile.readline().split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return seen
        seen += _read_exactly(rfile, size, digest)
        rfile.readline()  # the CRLF after each chunk


@pytest.fixture
def sink() -> Iterator[Sink]:
    """A hashing sink on loopback."""
    s = Sink(free_port())
    with serving(sink_handler(s), s.port):
        yield s


@pytest.fixture
def proxy(make_airlock: Callable[..., Airlock], sink: Sink) -> Callable[..., Airlock]:
    """Start `airlock run` with these tests' rules and any extra flags; the sink reads its log."""

    def start(*extra: str) -> Airlock:
        a = make_airlock(RULES, extra=extra)
        sink.log_path = a.data / "log"
        return a

    return start


def peak_rss(a: Airlock) -> int:
    """The proxy process's peak resident memory so far (VmHWM), in bytes."""
    assert a.proc is not None
    status = Path(f"/proc/{a.proc.pid}/status").read_text()
    line = next(x for x in status.splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def through(a: Airlock, *args: str, stdin: Any = None) -> subprocess.CompletedProcess[bytes]:
    """Run curl through the proxy (its body from `stdin` when given)."""
    return subprocess.run(
        ["curl", "-sS", "-x", a.proxy, *args],
        stdin=stdin,
        capture_output=True,
        timeout=120,
        env=environ_without_proxy(),
    )


def outcome_of(a: Airlock, action_id: int) -> dict[str, Any]:
    """The outcome entry's data of an action, once it has one."""
    entries = final(a, action_id)["entries"]
    return dict(next(e for e in entries if e["kind"] == "outcome")["data"])


def only_action(a: Airlock) -> dict[str, Any]:
    """The one action in the log."""
    [action] = a.log()
    return action


# ---- a GiB passes in bounded memory ------------------------------------------------------------


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_gib_upload_streams_through_in_bounded_memory(
    proxy: Callable[..., Airlock], sink: Sink, tmp_path: Path, framing: str
) -> None:
    a = proxy()
    if framing == "content-length":
        sparse = tmp_path / "gib"
        with sparse.open("wb") as f:
            f.truncate(GIB)  # a sparse file: a GiB of zeros that takes no disk
        done = through(a, "-T", str(sparse), f"{sink.url}/put/object")
    else:
        head = subprocess.Popen(["head", "-c", str(GIB), "/dev/zero"], stdout=subprocess.PIPE)
        done = through(a, "-X", "POST", "-T", "-", f"{sink.url}/post/object", stdin=head.stdout)
        head.wait(10)
    assert done.returncode == 0, done.stderr
    [got] = sink.received
    assert got.size == GIB and json.loads(done.stdout) == {"size": GIB, "sha256": got.sha256}
    assert ("transfer-encoding" in got.headers) == (framing == "chunked")

    # The intent was durable before the upstream saw the headers, and says the body streamed.
    assert got.intent is not None and got.intent["state"] == "pending"
    action = only_action(a)
    assert action["id"] == got.intent["id"] and action["state"] == "committed"
    outcome = outcome_of(a, action["id"])
    assert outcome["status"] == 201
    assert outcome["request_body"] == {"size": GIB, "sha256": got.sha256}
    shown = json.loads(a.cli("show", str(action["id"]), "--json").stdout)
    asked = shown["entries"][0]["data"]["action"]
    assert "streams" in asked["body_problem"] and "--stream-above" in asked["body_problem"]
    declared = {"length": GIB} if framing == "content-length" else {}
    assert asked["body"] == {"streamed": True} | declared  # not read, so neither kept nor hashed there
    assert peak_rss(a) < PEAK_RSS, f"peak RSS {peak_rss(a) / 1e6:.0f} MB"


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_refused_gib_upload_gets_its_refusal_in_bounded_memory(
    proxy: Callable[..., Airlock], sink: Sink, tmp_path: Path, framing: str
) -> None:
    """mitmproxy reads a body whole before it answers: a refused upload streams into a loopback
    endpoint that drops it and answers with the refusal (proxy/plane/discard.py)."""
    a = proxy()
    if framing == "content-length":
        sparse = tmp_path / "gib"
        with sparse.open("wb") as f:
            f.truncate(GIB)
        done = through(a, "-T", str(sparse), f"{sink.url}/vault/object")
    else:
        head = subprocess.Popen(["head", "-c", str(GIB), "/dev/zero"], stdout=subprocess.PIPE)
        done = through(a, "-X", "PUT", "-T", "-", f"{sink.url}/vault/object", stdin=head.stdout)
        head.wait(10)
    assert done.returncode == 0, done.stderr
    refusal = json.loads(done.stdout)
    assert (
        refusal["rule"] == "no-uploads-to-vault" and refusal["message"] == "Nothing is uploaded to the vault."
    )
    assert not sink.received and not sink.heads  # the upstream saw nothing, not even the headers
    action = only_action(a)
    assert (action["state"], action["rule"]) == ("denied", "no-uploads-to-vault")
    assert peak_rss(a) < PEAK_RSS, f"peak RSS {peak_rss(a) / 1e6:.0f} MB"


def test_a_refused_upload_inside_a_tunnel_gets_its_refusal(
    proxy: Callable[..., Airlock], tls_upstream: Upstream
) -> None:
    """Through CONNECT (HTTPS), the refused body goes to the loopback endpoint in plain HTTP, and
    the client reads the refusal inside its tunnel."""
    a = proxy("--stream-above", "1MiB")
    body = b"z" * (4 * MIB)
    r = requests.put(
        f"{tls_upstream.url}/vault/object", data=body, proxies=a.proxies, verify=str(a.ca_cert), timeout=60
    )
    assert r.status_code == 403 and r.json()["rule"] == "no-uploads-to-vault"
    assert not tls_upstream.seen


# ---- decided on the headers, before anything goes upstream -----------------------------------


def test_streamed_requests_are_logged_durably_before_their_headers_go_upstream(
    proxy: Callable[..., Airlock], sink: Sink
) -> None:
    a = proxy("--stream-above", "64KiB")
    body = b"row,value\n" * (30 * 1024)  # 300 KiB, past the limit

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 64 * 1024):
            yield body[i : i + 64 * 1024]

    sent = [
        requests.put(f"{sink.url}/length/1", data=body, proxies=a.proxies, timeout=30),
        requests.post(f"{sink.url}/chunked/2", data=chunks(), proxies=a.proxies, timeout=30),
        requests.patch(f"{sink.url}/length/3", data=body, proxies=a.proxies, timeout=30),
    ]
    assert [r.status_code for r in sent] == [201, 201, 201]
    digest = hashlib.sha256(body).hexdigest()
    assert [(g.path, g.size, g.sha256) for g in sink.received] == [
        ("/length/1", len(body), digest),
        ("/chunked/2", len(body), digest),
        ("/length/3", len(body), digest),
    ]
    for got in sink.received:
        assert got.intent is not None, f"no intent in the log when {got.path} reached the upstream"
        outcome = outcome_of(a, got.intent["id"])
        assert outcome["request_body"] == {"size": len(body), "sha256": digest}
    # A body within the limit is read whole, as before: no streaming record.
    small = requests.put(f"{sink.url}/small", data=b"x" * 1000, proxies=a.proxies, timeout=10)
    assert small.status_code == 201
    last = a.log()[-1]
    assert "request_body" not in outcome_of(a, last["id"])


# ---- rules that must read the body refuse a mutating streamed request -------------------------


@pytest.mark.parametrize(
    ("path", "content_type", "rule"),
    [
        ("/keys/upload", "text/plain", "no-secrets-out"),  # `text`
        ("/json/users", "application/json", "no-admin-flags"),  # `body`
    ],
)
def test_a_body_rule_refuses_a_streamed_mutation_it_cannot_read(
    proxy: Callable[..., Airlock], sink: Sink, path: str, content_type: str, rule: str
) -> None:
    a = proxy("--stream-above", "1MiB")
    harmless = b'{"name": "' + b"a" * (3 * MIB) + b'"}'  # matches neither rule, were it read
    r = requests.post(
        f"{sink.url}{path}",
        data=harmless,
        headers={"Content-Type": content_type},
        proxies=a.proxies,
        timeout=30,
    )
    assert r.status_code == 403 and r.headers["X-Airlock-Rule"] == rule
    message = r.json()["message"]
    assert f"rule {rule} must read the body" in message
    assert f"{len(harmless)} bytes" in message and "1 MiB" in message and "--stream-above" in message
    assert sink.heads == [] and sink.received == []
    logged = only_action(a)
    assert (logged["state"], logged["rule"]) == ("denied", rule)

    # Within the limit the rule reads the body, and the same harmless body passes.
    a.stop()
    a = proxy("--stream-above", "8MiB")
    r = requests.post(
        f"{sink.url}{path}",
        data=harmless,
        headers={"Content-Type": content_type},
        proxies=a.proxies,
        timeout=30,
    )
    assert r.status_code == 201 and sink.received[-1].size == len(harmless)


def test_a_streamed_read_is_not_refused_for_its_unread_body(
    proxy: Callable[..., Airlock], sink: Sink
) -> None:
    a = proxy("--stream-above", "64KiB")
    r = requests.get(f"{sink.url}/search", data=b"q" * (256 * 1024), proxies=a.proxies, timeout=30)
    assert r.status_code == 201 and sink.received[0].size == 256 * 1024


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_streamed_request_denied_on_its_headers_reaches_nothing(
    proxy: Callable[..., Airlock], sink: Sink, tmp_path: Path, framing: str
) -> None:
    a = proxy("--stream-above", "1MiB")
    data = tmp_path / "upload.bin"
    data.write_bytes(b"z" * (4 * MIB))
    if framing == "content-length":
        done = through(a, "-T", str(data), f"{sink.url}/vault/object")
    else:
        done = through(a, "-T", "-", f"{sink.url}/vault/object", stdin=data.open("rb"))
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["error"] == "denied" and "Nothing is uploaded to the vault." in answer["message"]
    assert sink.heads == [] and sink.received == []
    logged = only_action(a)
    assert (logged["state"], logged["rule"], logged["method"]) == ("denied", "no-uploads-to-vault", "PUT")


# ---- a client that gives up mid-upload ---------------------------------------------------------


def test_a_client_that_aborts_mid_upload_gets_a_failure_outcome_with_the_bytes_seen(
    proxy: Callable[..., Airlock], sink: Sink
) -> None:
    a = proxy()
    declared, sent = 64 * MIB, 20 * MIB
    with socket.create_connection(("127.0.0.1", a.port)) as s:
        s.sendall(
            f"PUT {sink.url}/partial HTTP/1.1\r\nHost: 127.0.0.1:{sink.port}\r\n"
            f"Content-Length: {declared}\r\n\r\n".encode()
        )
        chunk = b"p" * MIB
        for _ in range(sent // MIB):
            s.sendall(chunk)
        wait_for(lambda: sink.heads == ["/partial"], "the upstream has the headers")
    wait_for(lambda: len(sink.received) == 1, "the upstream saw the upload end")
    assert sink.received[0].size == sent
    action = only_action(a)
    shown = final(a, action["id"])
    outcome = next(e for e in shown["entries"] if e["kind"] == "outcome")
    assert outcome["state"] == "failed"
    assert outcome["data"]["request_body"] == {
        "size": sent,
        "sha256": hashlib.sha256(b"p" * sent).hexdigest(),
    }


# ---- compressed bodies expand only within limits ---------------------------------------------


def gzip_bomb(expanded: int) -> bytes:
    """Gzip members of 64 MiB of zeros each, `expanded` bytes in all: a few MB on the wire."""
    member = gzip.compress(bytes(64 * MIB), compresslevel=9)
    return member * (expanded // (64 * MIB))


@pytest.mark.parametrize("stream_above", ["8MiB", "1MiB"])  # read whole, and streamed unread
def test_a_gzip_bomb_is_refused_without_being_expanded(
    proxy: Callable[..., Airlock], sink: Sink, stream_above: str
) -> None:
    a = proxy("--stream-above", stream_above)
    bomb = gzip_bomb(4 * GIB)
    assert len(bomb) < 5 * MIB
    r = requests.post(
        f"{sink.url}/keys/upload",
        data=bomb,
        headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"},
        proxies=a.proxies,
        timeout=60,
    )
    assert r.status_code == 403 and r.headers["X-Airlock-Rule"] == "no-secrets-out"
    message = r.json()["message"]
    if stream_above == "8MiB":
        assert "expands past" in message
    else:
        assert "streams past the 1 MiB inspection limit" in message
    assert sink.heads == [] and sink.received == []
    assert peak_rss(a) < PEAK_RSS, f"peak RSS {peak_rss(a) / 1e6:.0f} MB"


def test_a_gzip_body_within_limits_is_read_and_decided(proxy: Callable[..., Airlock], sink: Sink) -> None:
    a = proxy()
    secret = zlib.compress(b"-----BEGIN PRIVATE KEY-----\nMIIE...\n")
    r = requests.post(
        f"{sink.url}/keys/upload",
        data=secret,
        headers={"Content-Encoding": "deflate", "Content-Type": "text/plain"},
        proxies=a.proxies,
        timeout=10,
    )
    assert r.status_code == 403 and r.headers["X-Airlock-Rule"] == "no-secrets-out"
    assert "Private keys are not uploaded." in r.json()["message"]
    assert sink.received == []


def test_stream_above_must_be_a_size(make_airlock: Callable[..., Airlock], tmp_path: Path) -> None:
    a = make_airlock(RULES, extra=("--stream-above", "lots"), start=False)
    done = subprocess.run(a.command(), capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert "'lots' is not a size" in done.stderr and "Traceback" not in done.stderr


# ---- an S3 upload: rules on what the URL names still decide it ----------------------------------

S3_RULES = """\
version: 1
egress:
  allow: [127.0.0.1]
aws:
  endpoints: ["127.0.0.1"]
rules:
  - id: no-prod-writes
    match: {operation: s3:PutObject, target: "prod-*/*"}
    action: deny
    message: Production buckets are written by the release pipeline only.
  - id: no-keys-in-objects
    match: {operation: s3:PutObject, target: "keys-*/*", text: "BEGIN PRIVATE KEY"}
    action: deny
    message: Private keys are not stored in buckets.
"""


@pytest.fixture
def moto(tmp_path: Path) -> Iterator[Moto]:
    """A moto server standing in for S3 (AWS itself cannot be reached from here)."""
    with moto_server(tmp_path) as m:
        yield m


def test_an_s3_put_object_streams_and_is_decided_by_the_bucket_and_key_it_names(
    make_airlock: Callable[..., Airlock], moto: Moto
) -> None:
    a = make_airlock(S3_RULES, extra=("--stream-above", "1MiB"))
    direct = moto.direct("s3")
    for bucket in ("dev-data", "prod-data", "keys-data"):
        direct.create_bucket(Bucket=bucket)
    s3 = proxied(a, moto, "s3")
    data = bytes(range(256)) * (12 * 4096)  # 12 MiB

    s3.put_object(Bucket="dev-data", Key="big.bin", Body=data)
    assert direct.get_object(Bucket="dev-data", Key="big.bin")["Body"].read() == data
    with pytest.raises(ClientError) as prod:
        s3.put_object(Bucket="prod-data", Key="big.bin", Body=data)
    assert "release pipeline" in str(prod.value)
    with pytest.raises(ClientError) as keys:
        s3.put_object(Bucket="keys-data", Key="id.pem", Body=data)
    assert "--stream-above" in str(keys.value) and "no-keys-in-objects" in str(keys.value)
    for bucket in ("prod-data", "keys-data"):
        assert direct.list_objects_v2(Bucket=bucket).get("KeyCount") == 0

    puts = [x for x in a.log() if x.get("operation") == "PutObject"]
    assert [(x["state"], x.get("rule")) for x in puts] == [
        ("committed", None),
        ("denied", "no-prod-writes"),
        ("denied", "no-keys-in-objects"),
    ]
    # The whole body, as S3 got it: its digest is the one botocore signed.
    digest = hashlib.sha256(data).hexdigest()
    assert outcome_of(a, puts[0]["id"])["request_body"] == {"size": len(data), "sha256": digest}
    assert puts[0]["targets"] == ["dev-data/big.bin"]

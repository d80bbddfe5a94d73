"""Real clients through the real proxy to a real upstream: forward HTTP and HTTPS, reverse mode."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import aiohttp
import httpx
import lmdb
import requests

from proxy.plane.adapters.http import AGENT_HEADER
from store import Log

from .support import Airlock, Seen, Upstream, curl, free_port


def test_requests_get_and_post_are_forwarded_and_logged(airlock: Airlock, upstream: Upstream) -> None:
    r = requests.get(f"{upstream.url}/things", proxies=airlock.proxies, timeout=10)
    assert r.status_code == 200 and r.json()["path"] == "/things"
    r = requests.post(f"{upstream.url}/things", json={"name": "a"}, proxies=airlock.proxies, timeout=10)
    assert r.status_code == 200 and r.json()["method"] == "POST"
    assert [s.method for s in upstream.effects()] == ["GET", "POST"]

    get, post = airlock.log()
    assert (get["method"], get["state"], get["status"], get["effect"]) == ("GET", "committed", 200, "read")
    assert (post["method"], post["state"], post["status"], post["effect"]) == (
        "POST",
        "committed",
        200,
        "write",
    )
    assert post["url"] == f"{upstream.url}/things" and post["host"] == "127.0.0.1"

    shown = json.loads(airlock.cli("show", str(post["id"]), "--json").stdout)
    intent, outcome = shown["entries"]
    assert intent["kind"] == "intent" and intent["state"] == "pending"
    assert json.loads(intent["data"]["action"]["body"]["text"]) == {"name": "a"}
    assert outcome["kind"] == "outcome" and outcome["state"] == "committed"
    assert outcome["data"]["status"] == 200
    assert outcome["data"]["size"] == len(r.content) and outcome["data"]["duration_ms"] >= 0


def test_curl_httpx_and_aiohttp_go_through(airlock: Airlock, upstream: Upstream) -> None:
    out = curl("-x", airlock.proxy, "-X", "PUT", "-d", "v=1", f"{upstream.url}/curl")
    assert out.returncode == 0 and json.loads(out.stdout)["method"] == "PUT"

    with httpx.Client(proxy=airlock.proxy) as client:
        assert client.patch(f"{upstream.url}/httpx", content=b"p").json()["method"] == "PATCH"

    async def with_aiohttp() -> int:
        async with (
            aiohttp.ClientSession() as s,
            s.delete(f"{upstream.url}/aiohttp", proxy=airlock.proxy) as r,
        ):
            return r.status

    assert asyncio.run(with_aiohttp()) == 200
    assert [s.method for s in upstream.effects()] == ["PUT", "PATCH", "DELETE"]
    assert [(a["method"], a["state"]) for a in airlock.log()] == [
        ("PUT", "committed"),
        ("PATCH", "committed"),
        ("DELETE", "committed"),
    ]


def test_https_is_intercepted_with_the_generated_ca(
    make_airlock: Callable[..., Airlock], tls_upstream: Upstream, upstream_ca: object
) -> None:
    a = make_airlock(extra=("--upstream-ca", str(upstream_ca.cert)))  # type: ignore[attr-defined]
    key = a.data / "ca" / "mitmproxy-ca.pem"
    assert key.stat().st_mode & 0o777 == 0o600
    r = requests.post(
        f"{tls_upstream.url}/secure", data=b"x", proxies=a.proxies, verify=str(a.ca_cert), timeout=10
    )
    assert r.status_code == 200 and r.json()["path"] == "/secure"
    out = curl("--cacert", str(a.ca_cert), "-x", a.proxy, f"https://localhost:{tls_upstream.port}/c")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["path"] == "/c"
    urls = [x["url"] for x in a.log()]
    assert urls == [
        f"https://127.0.0.1:{tls_upstream.port}/secure",
        f"https://localhost:{tls_upstream.port}/c",
    ]


def test_reverse_mode_serves_a_named_upstream(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    port = free_port()
    a = make_airlock(upstreams={"inventory": (upstream.url, port)})
    r = requests.post(f"http://127.0.0.1:{port}/orders", json={"n": 1}, timeout=10)
    assert r.status_code == 200 and r.json()["path"] == "/orders"
    # The forward listener runs in the same process.
    assert requests.get(f"{upstream.url}/fwd", proxies=a.proxies, timeout=10).ok
    rev, fwd = a.log()
    assert (rev["upstream"], rev["method"], rev["state"]) == ("inventory", "POST", "committed")
    assert "upstream" not in fwd


def test_denied_request_gets_403_json_and_never_reaches_upstream(
    airlock: Airlock, upstream: Upstream
) -> None:
    r = requests.delete(f"{upstream.url}/items/7", proxies=airlock.proxies, timeout=10)
    assert r.status_code == 403
    assert r.headers["X-Airlock-Rule"] == "no-item-deletes"
    body = r.json()
    assert body["rule"] == "no-item-deletes" and body["error"] == "denied"
    assert "archive the item" in body["message"]
    assert upstream.effects() == []
    [logged] = airlock.log()
    assert logged["id"] == body["action_id"]
    assert (logged["state"], logged["rule"], logged["status"]) == ("denied", "no-item-deletes", None)


def test_host_off_the_allowlist_is_refused(airlock: Airlock) -> None:
    r = requests.get("http://forgotten.internal.example/admin", proxies=airlock.proxies, timeout=10)
    assert r.status_code == 403 and r.headers["X-Airlock-Rule"] == "egress"
    body = r.json()
    assert body["error"] == "egress_denied" and "forgotten.internal.example" in body["message"]
    [logged] = airlock.log("--state", "denied")
    assert logged["host"] == "forgotten.internal.example" and logged["id"] == body["action_id"]


def test_intent_is_durable_before_the_upstream_sees_the_request(airlock: Airlock, upstream: Upstream) -> None:
    found: list[dict[str, object] | None] = []

    def check(seen: Seen) -> None:
        # Runs inside the upstream, while the proxy waits for this very request's answer.
        log = Log.open(airlock.data / "log", readonly=True)
        try:
            pending = [a for a in log.actions("pending") if a["url"].endswith(seen.path)]
            found.append(pending[0] if pending else None)
        finally:
            log._env.close()

    upstream.on_request = check
    for i in range(5):
        requests.post(f"{upstream.url}/effect/{i}", data=b"payload", proxies=airlock.proxies, timeout=10)
    assert len(found) == 5 and all(f is not None and f["method"] == "POST" for f in found)


def test_credentials_never_reach_the_log(airlock: Airlock, upstream: Upstream) -> None:
    secrets = [
        "Bearer sk-live-abc123",
        "session=s3cr3t-cookie",
        "aws-session-token-xyz",
        "apikey-987",
        "svc-token-555",
        "query-token-777",
    ]
    requests.post(
        f"{upstream.url}/login?access_token=query-token-777&page=2",
        headers={
            "Authorization": secrets[0],
            "Cookie": secrets[1],
            "X-Amz-Security-Token": secrets[2],
            "X-Api-Key": secrets[3],
            "X-Service-Token": secrets[4],
        },
        data=b"{}",
        proxies=airlock.proxies,
        timeout=10,
    )
    # The upstream got the real credentials; the log has none of them, nor the upstream's cookie.
    assert upstream.effects()[0].headers["authorization"] == secrets[0]
    env = lmdb.open(str(airlock.data / "log"), readonly=True, max_dbs=8)
    with env.begin() as txn:
        raw = b"".join(
            bytes(v) for db in (b"entries", b"actions") for _, v in txn.cursor(env.open_db(db, txn=txn))
        )
    env.close()
    assert b"[redacted]" in raw and b"page=2" in raw
    for secret in [*secrets, "upstream-secret-cookie"]:
        assert secret.encode() not in raw


def test_agent_header_names_the_agent_and_is_not_forwarded(airlock: Airlock, upstream: Upstream) -> None:
    requests.get(
        f"{upstream.url}/who", headers={AGENT_HEADER: "planner-7"}, proxies=airlock.proxies, timeout=10
    )
    assert AGENT_HEADER not in upstream.effects()[0].headers
    assert airlock.log()[0]["agent"] == "planner-7"


def test_body_is_kept_up_to_the_limit_with_its_digest(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    a = make_airlock(extra=("--body-limit", "16"))
    body = b"0123456789" * 10
    requests.post(f"{upstream.url}/big", data=body, proxies=a.proxies, timeout=10)
    shown = json.loads(a.cli("show", "1", "--json").stdout)
    kept = shown["entries"][0]["data"]["action"]["body"]
    assert kept["text"] == "0123456789012345" and kept["truncated"] is True and kept["size"] == 100
    import hashlib

    assert kept["sha256"] == hashlib.sha256(body).hexdigest()


def test_upstream_failure_is_logged_as_failed(airlock: Airlock) -> None:
    dead = free_port()
    r = requests.post(f"http://127.0.0.1:{dead}/nobody-home", data=b"x", proxies=airlock.proxies, timeout=10)
    assert r.status_code == 502
    [logged] = airlock.log()
    assert logged["state"] == "failed" and logged["error"]


def test_large_response_streams_and_its_digest_is_logged(airlock: Airlock, upstream: Upstream) -> None:
    size = 8 * 1024 * 1024
    r = requests.get(f"{upstream.url}/big/{size}", proxies=airlock.proxies, timeout=30)
    assert len(r.content) == size
    import hashlib

    shown = json.loads(airlock.cli("show", "1", "--json").stdout)
    outcome = shown["entries"][-1]["data"]
    assert outcome["size"] == size and outcome["sha256"] == hashlib.sha256(r.content).hexdigest()


def test_a_tunnel_to_a_host_off_the_allowlist_is_refused_at_connect(airlock: Airlock) -> None:
    # CONNECT opens tunnels only to allowed host:port pairs; the 403 carries the JSON reason.
    out = curl("--cacert", str(airlock.ca_cert), "-x", airlock.proxy, "https://forgotten.example.com/")
    assert out.returncode != 0 and "403" in out.stderr, out.stderr
    raw = _connect(airlock, "forgotten.example.com:443")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403")
    assert json.loads(body)["error"] == "egress_denied" and b"egress.allow" in body
    denied = airlock.log("--state", "denied")
    assert [(x["method"], x["rule"]) for x in denied] == [("CONNECT", "egress")] * 2
    assert {x["url"] for x in denied} == {"tcp://forgotten.example.com:443"}


def _connect(airlock: Airlock, target: str) -> bytes:
    """The proxy's whole answer to a CONNECT for `target`."""
    import socket

    with socket.create_connection(("127.0.0.1", airlock.port), timeout=10) as s:
        s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        raw = b""
        while b"\r\n\r\n" not in raw or len(raw.partition(b"\r\n\r\n")[2]) < _length(raw):
            chunk = s.recv(65536)
            if not chunk:
                break
            raw += chunk
    return raw


def _length(raw: bytes) -> int:
    for line in raw.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def test_raw_tcp_through_a_tunnel_is_refused_and_logged(airlock: Airlock, upstream: Upstream) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", airlock.port), timeout=10) as s:
        s.sendall(f"CONNECT 127.0.0.1:{upstream.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert s.recv(1000).startswith(b"HTTP/1.1 200")
        s.sendall(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")  # a database handshake: neither TLS nor HTTP
        assert s.recv(1000) == b""  # closed, nothing relayed
    assert upstream.effects() == []
    [logged] = airlock.log()
    assert (logged["state"], logged["rule"], logged["method"]) == ("denied", "raw-tcp", "CONNECT")


def test_no_mitmproxy_side_doors(airlock: Airlock) -> None:
    # mitmproxy's onboarding app answers http://mitm.it itself; Airlock loads no such addon,
    # so the name is just another host off the allowlist.
    r = requests.get("http://mitm.it/cert/pem", proxies=airlock.proxies, timeout=10)
    assert r.status_code == 403 and r.json()["error"] == "egress_denied"

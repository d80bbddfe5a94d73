"""Who sent a request, as Airlock establishes it: session credentials in a proxy URL (forward
HTTP and HTTPS through CONNECT) and in X-Airlock-Session (reverse mode), sessions minted by
`airlock session new`, `airlock exec --agent` and the control API, 407 for credentials that
prove nothing, `anonymous` without any, and a self-named agent that stays a claim. Real clients
through a real `airlock run` to real upstreams; the log says who each action was."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httpx
import pytest
import requests
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect
from websockets.sync.server import ServerConnection, serve

from proxy.core.credentials import BadCredentials, from_basic, from_pair, proxy_url, token_digest
from proxy.plane.identity import socket_uid
from store import Log

from .support import (
    AIRLOCK,
    Airlock,
    Upstream,
    UpstreamCA,
    curl,
    environ_without_proxy,
    free_port,
    wait_for,
)

CREDENTIAL_HEADERS = ("proxy-authorization", "x-airlock-session")


def new_session(a: Airlock, name: str, *extra: str) -> tuple[str, str]:
    """`airlock session new NAME`: the proxy URL it prints, and the session id."""
    out = a.cli("session", "new", name, "--listen", f"127.0.0.1:{a.port}", *extra).stdout
    url, session, *rest = out.splitlines()
    assert rest == [], out  # nothing else on stdout
    return url, session


def intent_of(a: Airlock, action_id: int) -> dict[str, Any]:
    """The action as its intent logged it."""
    shown = json.loads(a.cli("show", str(action_id), "--json").stdout)
    action: dict[str, Any] = shown["entries"][0]["data"]["action"]
    return action


def sessions_of(a: Airlock) -> dict[str, dict[str, Any]]:
    """`airlock session list --json`, by session id."""
    out = a.cli("session", "list", "--json").stdout
    return {s["id"]: s for s in map(json.loads, out.splitlines())}


def no_credentials_reached(up: Upstream) -> None:
    for seen in up.effects():
        assert not set(CREDENTIAL_HEADERS) & set(seen.headers), seen.headers


@pytest.fixture
def tls_airlock(make_airlock: Callable[..., Airlock], upstream_ca: UpstreamCA) -> Airlock:
    return make_airlock(extra=("--upstream-ca", str(upstream_ca.cert)))


def test_session_credentials_identify_every_client_over_http_and_https(
    tls_airlock: Airlock, upstream: Upstream, tls_upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = tls_airlock
    url, session = new_session(a, "billing-bot")
    assert urlsplit(url).username == "billing-bot" and urlsplit(url).port == a.port
    ca = str(a.ca_cert)

    assert curl("-x", url, "-X", "PUT", "-d", "v", f"{upstream.url}/curl").returncode == 0
    out = curl(
        "--cacert", ca, "-x", url, "-X", "PUT", "-d", "v", f"https://localhost:{tls_upstream.port}/curl"
    )
    assert out.returncode == 0, out.stderr
    for base in (upstream.url, tls_upstream.url):
        r = requests.post(
            f"{base}/requests", data=b"x", proxies={"http": url, "https": url}, verify=ca, timeout=10
        )
        assert r.status_code == 200, r.text
        with httpx.Client(proxy=url, verify=ssl.create_default_context(cafile=ca)) as client:
            assert client.patch(f"{base}/httpx", content=b"p").status_code == 200

    monkeypatch.setenv("HTTP_PROXY", url)
    monkeypatch.setenv("HTTPS_PROXY", url)

    async def with_aiohttp() -> list[int]:
        connector = aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=ca))
        async with aiohttp.ClientSession(trust_env=True, connector=connector) as s:
            statuses = []
            for base in (upstream.url, tls_upstream.url):
                async with s.delete(f"{base}/aiohttp") as r:
                    statuses.append(r.status)
            return statuses

    assert asyncio.run(with_aiohttp()) == [200, 200]

    assert len(upstream.effects()) == 4 and len(tls_upstream.effects()) == 4
    no_credentials_reached(upstream)
    no_credentials_reached(tls_upstream)
    actions = a.log()
    assert len(actions) == 8 and {x["agent"] for x in actions} == {"billing-bot"}
    assert {x["state"] for x in actions} == {"committed"}
    for x in actions:
        logged = intent_of(a, x["id"])
        assert (logged["agent"], logged["session"], logged["epoch"]) == ("billing-bot", session, 1)
        assert "configured_agent" not in logged
        assert not set(CREDENTIAL_HEADERS) & set(logged["headers"])
    assert token_of(url) not in (a.data / "log" / "data.mdb").read_bytes().decode("latin-1")


def token_of(url: str) -> str:
    password = urlsplit(url).password
    assert password is not None
    return password


def bad_credentials(a: Airlock) -> dict[str, str]:
    """Proxy URLs whose credentials prove nothing, by what is wrong with them."""
    good, _ = new_session(a, "planner")
    ended, ended_id = new_session(a, "reviewer")
    a.cli("session", "end", ended_id)
    port = a.port
    return {
        "an unknown token": f"http://planner:{'x' * 43}@127.0.0.1:{port}",
        "another agent's token": f"http://admin:{token_of(good)}@127.0.0.1:{port}",
        "an ended session": ended,
    }


def test_bad_credentials_are_refused_with_407_logged_and_nothing_goes_upstream(
    tls_airlock: Airlock, upstream: Upstream, tls_upstream: Upstream
) -> None:
    a = tls_airlock
    cases = bad_credentials(a)
    for what, url in cases.items():
        out = curl("-i", "-x", url, "-X", "DELETE", f"{upstream.url}/things/1")
        status, _, _ = out.stdout.partition("\n")
        assert " 407 " in status, (what, out.stdout)
        assert 'proxy-authenticate: basic realm="airlock"' in out.stdout.lower(), what
        body = json.loads(out.stdout.rpartition("\n\n")[2])
        assert body["error"] == "bad_credentials" and body["rule"] == "identity", body
        assert "airlock session new" in body["message"], body
        r = requests.delete(f"{upstream.url}/things/2", proxies={"http": url}, timeout=10)
        assert r.status_code == 407 and r.headers["Proxy-Authenticate"] == 'Basic realm="airlock"'
        # HTTPS: the CONNECT is refused; no tunnel opens.
        out = curl("--cacert", str(a.ca_cert), "-x", url, "-X", "DELETE", f"{tls_upstream.url}/things/3")
        assert out.returncode != 0 and "407" in out.stderr, (what, out.stderr)
        with pytest.raises(requests.exceptions.ProxyError):
            requests.delete(
                f"{tls_upstream.url}/things/4", proxies={"https": url}, verify=str(a.ca_cert), timeout=10
            )
    malformed = curl("-i", "-x", a.proxy, "-H", "Proxy-Authorization: Basic not-base64!", f"{upstream.url}/m")
    assert " 407 " in malformed.stdout.partition("\n")[0]
    assert "base64" in json.loads(malformed.stdout.rpartition("\n\n")[2])["message"]
    bearer = curl("-i", "-x", a.proxy, "-H", "Proxy-Authorization: Bearer abc", f"{upstream.url}/m")
    assert " 407 " in bearer.stdout.partition("\n")[0]

    assert upstream.effects() == [] and tls_upstream.effects() == []
    refused = a.log()
    assert len(refused) == 4 * len(cases) + 2
    assert {(x["state"], x["rule"]) for x in refused} == {("denied", "identity")}
    messages = [intent_of(a, x["id"]) for x in refused]
    assert all(not set(CREDENTIAL_HEADERS) & set(m["headers"]) for m in messages)
    shown = [json.loads(a.cli("show", str(x["id"]), "--json").stdout) for x in refused]
    why = [s["entries"][0]["data"]["decision"]["message"] for s in shown]
    assert sum("is not one of any session" in w for w in why) == 4
    assert sum("is another agent's" in w for w in why) == 4
    assert sum("ended at" in w for w in why) == 4


def test_an_expired_session_is_refused(make_airlock: Callable[..., Airlock], upstream: Upstream) -> None:
    a = make_airlock()
    url, session = new_session(a, "short-lived", "--ttl", "1s")
    assert requests.get(f"{upstream.url}/a", proxies={"http": url}, timeout=10).status_code == 200

    def refused() -> bool:
        return requests.get(f"{upstream.url}/b", proxies={"http": url}, timeout=10).status_code == 407

    wait_for(refused, "the session expired")
    r = requests.get(f"{upstream.url}/c", proxies={"http": url}, timeout=10)
    assert session in r.json()["message"] and "expired at" in r.json()["message"]
    assert upstream.effects()[0].path == "/a" and "/c" not in [s.path for s in upstream.effects()]


POLICY = """\
version: 1
egress:
  allow: [localhost, 127.0.0.1]
defaults:
  destructive: deny
rules:
  - id: admins-delete
    match: {agent: admin, method: DELETE}
    action: allow
  - id: nobody-writes-anonymously
    match: {agent: anonymous, effect: write}
    action: deny
    message: say who you are with a session's proxy URL
"""


def test_without_credentials_the_agent_is_anonymous_and_a_claim_earns_nothing(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    a = make_airlock(rules=POLICY)
    admin, session = new_session(a, "admin")
    anonymous = {"http": a.proxy}
    claim = {"X-Airlock-Agent": "admin"}
    assert requests.get(f"{upstream.url}/read", proxies=anonymous, timeout=10).status_code == 200
    assert requests.post(f"{upstream.url}/write", proxies=anonymous, timeout=10).status_code == 403
    assert (
        requests.delete(f"{upstream.url}/x/1", proxies=anonymous, headers=claim, timeout=10).status_code
        == 403
    )
    assert requests.delete(f"{upstream.url}/x/2", proxies={"http": admin}, timeout=10).status_code == 200
    # Claiming your own verified name is no claim.
    assert requests.delete(f"{upstream.url}/x/3", proxies={"http": admin}, headers=claim, timeout=10).ok
    assert [(s.method, s.path) for s in upstream.effects()] == [
        ("GET", "/read"),
        ("DELETE", "/x/2"),
        ("DELETE", "/x/3"),
    ]
    assert all("x-airlock-agent" not in s.headers for s in upstream.effects())

    read, write, claimed, verified, same = a.log()
    assert (read["agent"], read["state"]) == ("anonymous", "committed")
    assert (write["agent"], write["state"], write["rule"]) == (
        "anonymous",
        "denied",
        "nobody-writes-anonymously",
    )
    assert (claimed["agent"], claimed["state"]) == ("admin", "denied")
    assert intent_of(a, claimed["id"])["configured_agent"] == "anonymous"
    assert "session" not in intent_of(a, claimed["id"])
    for x in (verified, same):
        assert (x["agent"], x["state"], x["rule"]) == ("admin", "committed", "admins-delete")
        assert intent_of(a, x["id"])["session"] == session


def test_the_configured_agent_is_who_sends_without_credentials(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    a = make_airlock(extra=("--agent", "sidecar-bot"))
    url, _ = new_session(a, "other-bot")
    assert requests.put(f"{upstream.url}/a", proxies={"http": a.proxy}, timeout=10).ok
    assert requests.put(f"{upstream.url}/b", proxies={"http": url}, timeout=10).ok
    assert [x["agent"] for x in a.log()] == ["sidecar-bot", "other-bot"]


def test_reverse_mode_takes_the_session_header_and_never_forwards_it(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    port = free_port()
    a = make_airlock(upstreams={"inventory": (upstream.url, port)})
    url, session = new_session(a, "stock-bot")
    pair = f"stock-bot:{token_of(url)}"
    base = f"http://127.0.0.1:{port}"
    assert requests.post(f"{base}/orders", json={}, headers={"X-Airlock-Session": pair}, timeout=10).ok
    basic = "Basic " + base64.b64encode(pair.encode()).decode()
    assert requests.put(f"{base}/orders/1", headers={"Proxy-Authorization": basic}, timeout=10).ok
    with httpx.Client(headers={"X-Airlock-Session": pair}) as client:
        assert client.delete(f"{base}/orders/2").status_code == 200
    bad = requests.post(f"{base}/orders", headers={"X-Airlock-Session": "stock-bot:nope"}, timeout=10)
    assert bad.status_code == 407 and bad.json()["error"] == "bad_credentials"
    malformed = requests.post(f"{base}/orders", headers={"X-Airlock-Session": "no-colon"}, timeout=10)
    assert malformed.status_code == 407 and "NAME:TOKEN" in malformed.json()["message"]
    assert requests.get(f"{base}/anonymous", timeout=10).ok

    assert [(s.method, s.path) for s in upstream.effects()] == [
        ("POST", "/orders"),
        ("PUT", "/orders/1"),
        ("DELETE", "/orders/2"),
        ("GET", "/anonymous"),
    ]
    no_credentials_reached(upstream)
    actions = a.log()
    assert [(x["agent"], x["state"]) for x in actions] == [
        ("stock-bot", "committed"),
        ("stock-bot", "committed"),
        ("stock-bot", "committed"),
        ("anonymous", "denied"),
        ("anonymous", "denied"),
        ("anonymous", "committed"),
    ]
    assert {intent_of(a, x["id"]).get("session") for x in actions[:3]} == {session}


def exec_agent(a: Airlock, name: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            AIRLOCK,
            "exec",
            "--data",
            str(a.data),
            "--listen",
            f"127.0.0.1:{a.port}",
            "--agent",
            name,
            "--",
            *cmd,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=environ_without_proxy(),
    )


def test_exec_agent_runs_the_command_as_a_new_session_and_ends_it(
    tls_airlock: Airlock, upstream: Upstream, tls_upstream: Upstream
) -> None:
    a = tls_airlock
    _, before_id = new_session(a, "runner")
    out = exec_agent(a, "runner", "curl", "-sS", "-X", "PUT", f"{upstream.url}/from-exec")
    assert out.returncode == 0 and json.loads(out.stdout)["path"] == "/from-exec", out.stderr
    script = (
        "import requests, sys\n"
        f"r = requests.post('{tls_upstream.url}/py', data=b'x', timeout=10)\n"
        "print(r.status_code)\n"
        "sys.exit(3)\n"
    )
    py = exec_agent(a, "runner", sys.executable, "-c", script)
    assert py.returncode == 3 and py.stdout.startswith("200"), py.stderr
    assert [s.path for s in upstream.effects()] == ["/from-exec"] and [
        s.path for s in tls_upstream.effects()
    ] == ["/py"]
    no_credentials_reached(upstream)
    no_credentials_reached(tls_upstream)

    first, second = a.log()
    sessions = sessions_of(a)
    assert len(sessions) == 3
    ids = [intent_of(a, x["id"])["session"] for x in (first, second)]
    assert all(x["agent"] == "runner" for x in (first, second)) and len(set(ids)) == 2
    for i, epoch in zip(ids, (2, 3), strict=True):
        assert sessions[i]["epoch"] == epoch and sessions[i]["ended"] is not None  # ended on exit
    assert sessions[before_id]["fenced"] is True  # exec started a newer session of the name


def test_takeover_moves_the_epoch_on_and_names_what_it_fenced(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    a = make_airlock()
    _, first = new_session(a, "deployer")
    _, second = new_session(a, "deployer")
    out = a.cli("takeover", "deployer", "--by", "oncall").stdout
    assert "epoch 3" in out and f"fenced {first} (epoch 1)" in out and f"fenced {second} (epoch 2)" in out
    listed = sessions_of(a)
    assert listed[first]["fenced"] and listed[second]["fenced"]
    assert listed[second]["taken_over_by"] == "oncall" and listed[first]["superseded_by"] == second
    text = a.cli("session", "list", "deployer").stdout
    assert text.count("fenced") == 2

    auth = {"Authorization": f"Bearer {a.token}"}
    r = requests.post(f"{a.control}/v1/agents/deployer/takeover", json={"by": "ci"}, headers=auth, timeout=10)
    assert r.status_code == 200 and r.json()["epoch"] == 4 and r.json()["by"] == "ci"
    assert requests.post(f"{a.control}/v1/agents/deployer/takeover", timeout=10).status_code == 401
    log = Log.open(a.data / "log", readonly=True)
    try:
        assert log.epoch("deployer") == 4
    finally:
        log.close()


def test_the_control_api_mints_and_lists_sessions(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    a = make_airlock()
    auth = {"Authorization": f"Bearer {a.token}"}
    assert requests.post(f"{a.control}/v1/sessions", json={"agent": "api-bot"}, timeout=10).status_code == 401
    r = requests.post(
        f"{a.control}/v1/sessions", json={"agent": "api-bot", "ttl": 600}, headers=auth, timeout=10
    )
    assert r.status_code == 201, r.text
    minted = r.json()
    assert minted["agent"] == "api-bot" and minted["epoch"] == 1 and minted["expires"] > minted["created"]
    name, token = minted["credentials"].split(":")
    url = proxy_url(name, token, "127.0.0.1", a.port)
    with httpx.Client(proxy=url) as client:
        assert client.put(f"{upstream.url}/minted").status_code == 200
    (action,) = a.log()
    assert action["agent"] == "api-bot" and intent_of(a, action["id"])["session"] == minted["id"]
    for body in ({}, {"agent": ""}, {"agent": "x", "ttl": -1}, ["api-bot"]):
        bad = requests.post(f"{a.control}/v1/sessions", json=body, headers=auth, timeout=10)
        assert bad.status_code == 400 and bad.json()["error"] == "bad_request", body
    listed = requests.get(f"{a.control}/v1/sessions", headers=auth, timeout=10).json()["sessions"]
    assert [s["id"] for s in listed] == [minted["id"]]
    assert "token" not in listed[0] and token_digest(token) not in json.dumps(listed)


def test_session_commands_say_what_is_wrong_in_one_line(make_airlock: Callable[..., Airlock]) -> None:
    a = make_airlock()
    for args in (("session", "end", "s-nope"), ("session", "new", "bot", "--ttl", "soon"), ("session",)):
        out = a.cli(*args, check=False)
        assert out.returncode == 2 and "error:" in out.stderr.strip().splitlines()[-1], out.stderr
        assert "Traceback" not in out.stderr
    _, session = new_session(a, "bot")
    a.cli("session", "end", session)
    again = a.cli("session", "end", session, check=False)
    assert again.returncode == 2 and "ended already" in again.stderr


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        ("Basic", "NAME:TOKEN"),
        ("Basic !!!", "base64"),
        ("Basic " + base64.b64encode(b"no-colon").decode(), "NAME:TOKEN"),
        ("Basic " + base64.b64encode(b":token").decode(), "NAME:TOKEN"),
        ("Basic " + base64.b64encode(b"\xff:x").decode(), "base64"),
        ("Bearer abc", "Basic"),
        ("", "Basic"),
    ],
)
def test_malformed_proxy_authorization_says_what_is_wrong(header: str, problem: str) -> None:
    with pytest.raises(BadCredentials, match=problem):
        from_basic(header)


def test_credentials_read_back_as_sent() -> None:
    basic = "Basic " + base64.b64encode(b"team:bot:tok-en_1").decode()
    assert (from_basic(basic).name, from_basic(basic).token) == ("team:bot", "tok-en_1")
    assert from_pair(" a:b ", "X").token == "b"
    assert proxy_url("a b", "t", "::1", 8080) == "http://a%20b:t@[::1]:8080"


def test_the_uid_of_a_local_client_socket_is_its_owners() -> None:
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        with socket.socket(family) as server:
            server.bind((host, 0))
            server.listen()
            with socket.create_connection(server.getsockname()[:2]) as client:
                peer, _ = server.accept()
                with peer:
                    here = client.getsockname()
                    assert socket_uid(here[0], here[1]) == os.getuid()
                    # The server's own end is not a client.
                    assert socket_uid(host, free_port()) is None
    assert socket_uid("not an address", 1) is None


NODE_CLIENTS = {
    "fetch": """
fetch(process.argv[1], {method: "POST", body: "x"})
  .then(async (r) => { console.log(r.status); })
  .catch((e) => { console.error(String(e.cause || e)); process.exit(1); });
""",
    "http": """
const http = require(process.argv[1].startsWith("https:") ? "https" : "http");
const req = http.request(process.argv[1], {method: "POST"}, (r) => {
  console.log(r.statusCode); r.resume();
});
req.on("error", (e) => { console.error(String(e)); process.exit(1); });
req.end("x");
""",
}
NODE24_GLOB = ".node24/node_modules/node-linux-*/bin/node"


@pytest.mark.parametrize("client", list(NODE_CLIENTS))
def test_node24_sends_the_session_of_exec_agent(
    tls_airlock: Airlock, upstream: Upstream, tls_upstream: Upstream, client: str
) -> None:
    """Node 24's built-in fetch and http take the credentials from the proxy variables exec sets,
    over HTTP and through CONNECT."""
    found = sorted(Path(__file__).resolve().parent.parent.glob(NODE24_GLOB))
    if not found:
        pytest.skip("no Node 24 in .node24: `make test` installs it from the npm registry")
    a = tls_airlock
    for url in (f"{upstream.url}/node-{client}", f"https://localhost:{tls_upstream.port}/node-{client}"):
        out = exec_agent(a, "node-bot", str(found[0]), "-e", NODE_CLIENTS[client], url)
        assert out.returncode == 0 and out.stdout.strip() == "200", (url, out.stdout, out.stderr)
    assert len(upstream.effects()) == 1 and len(tls_upstream.effects()) == 1
    no_credentials_reached(upstream)
    no_credentials_reached(tls_upstream)
    plain, tls = a.log()
    assert plain["agent"] == tls["agent"] == "node-bot"
    assert intent_of(a, plain["id"])["session"] != intent_of(a, tls["id"])["session"]  # one per exec


def test_websocket_messages_are_the_session_that_opened_the_socket(
    make_airlock: Callable[..., Airlock],
) -> None:
    a = make_airlock()
    url, session = new_session(a, "socket-bot")
    seen_headers: list[dict[str, str]] = []

    def echo(conn: ServerConnection) -> None:
        seen_headers.append(
            {k.lower(): v for k, v in conn.request.headers.raw_items()} if conn.request else {}
        )
        with contextlib.suppress(ConnectionClosed):
            for message in conn:
                conn.send(f"echo {message!s}")

    port = free_port()
    with serve(echo, "127.0.0.1", port) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        with ws_connect(f"ws://127.0.0.1:{port}/socket", proxy=url, open_timeout=10) as client:
            client.send("hello")
            assert client.recv(timeout=10) == "echo hello"
        server.shutdown()
    assert seen_headers and not set(CREDENTIAL_HEADERS) & set(seen_headers[0])
    actions = wait_settled(a, 3)
    assert [(x["protocol"], x["method"]) for x in actions] == [
        ("http", "GET"),
        ("ws", "SEND"),
        ("ws", "RECEIVE"),
    ]
    assert {x["agent"] for x in actions} == {"socket-bot"}
    assert {intent_of(a, x["id"]).get("session") for x in actions} == {session}


def wait_settled(a: Airlock, n: int) -> list[dict[str, Any]]:
    wait_for(
        lambda: len(a.log()) == n and all(x["state"] != "pending" for x in a.log()), f"{n} actions settle"
    )
    return a.log()


def test_a_guards_refusal_names_the_session_that_sent_the_request(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    a = make_airlock()
    url, session = new_session(a, "fronting-bot")
    r = requests.get(
        f"{upstream.url}/x", headers={"Host": "elsewhere.test"}, proxies={"http": url}, timeout=10
    )
    assert r.status_code == 403 and r.json()["error"] == "name_mismatch"
    assert upstream.effects() == []
    (refused,) = a.log()
    assert (refused["agent"], refused["rule"]) == ("fronting-bot", "domain-fronting")
    assert intent_of(a, refused["id"])["session"] == session

"""Deny and hold rules cannot be stepped around: any reading an upstream could make counts.

Real clients (requests, curl, httpx, http.client for exact request lines) through a real
`airlock run` to real upstreams on loopback: the recording Python server, and a Node server
that reads bodies with `JSON.parse`, as many upstreams do. Every refused request is checked on
both sides: the upstream saw nothing, and the log holds the refusal with the rule that made it.
"""

from __future__ import annotations

import gzip
import http.client
import json
import subprocess
import textwrap
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import brotli  # type: ignore[import-untyped]
import httpx
import pytest
import requests

from ..support import AIRLOCK, Airlock, Upstream, curl, free_port, settle, wait_for

RULES = textwrap.dedent(
    """\
    version: 1
    egress: {allow: [127.0.0.1]}
    hold: {wait: 0s}
    defaults: {destructive: hold}
    rules:
      - id: no-prod-deletes
        match: {method: DELETE, path: "/prod/*"}
        action: deny
        message: Production is deleted by people; ask an operator.
      - id: no-force
        match: {method: [POST, PUT, PATCH], body: {required: [force]}}
        action: deny
        message: Forced updates are not allowed; retry without force.
      - id: no-drop
        match: {text: "(?i)drop\\\\s+table"}
        action: deny
        message: Schema changes go through migrations.
      - id: no-send-tools
        match: {tool: send_*}
        action: deny
      - id: no-bad-bot
        match: {agent: bad-bot}
        action: deny
        message: bad-bot is switched off.
    """
)


@pytest.fixture
def proxy(make_airlock: Callable[..., Airlock]) -> Airlock:
    return make_airlock(rules=RULES)


def refused(
    r: requests.Response | httpx.Response, rule: str, error: str = "denied", status: int = 403
) -> dict[str, Any]:
    """The JSON refusal body, after checking it names the rule and the error (a held action is
    answered 503: it has not run, and may yet)."""
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert (body["rule"], body["error"]) == (rule, error), body
    assert body["message"] and r.headers["X-Airlock-Rule"] == rule
    return body


def logged_action(a: Airlock, action_id: int) -> dict[str, Any]:
    """The action as its intent entry records it (`airlock show ID --json`)."""
    out: dict[str, Any] = json.loads(a.cli("show", str(action_id), "--json").stdout)
    action: dict[str, Any] = out["entries"][0]["data"]["action"]
    return action


def logged(a: Airlock) -> dict[int, dict[str, Any]]:
    """`airlock log --json` by action id."""
    return {int(x["id"]): x for x in a.log()}


def raw_request(
    a: Airlock, method: str, url: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    """One request through the proxy with exactly this request line (no client normalizes the
    path) and this body; the status and the JSON answer."""
    conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=15)
    try:
        conn.putrequest(method, url, skip_accept_encoding=True)
        for k, v in {"Content-Length": str(len(body)), **(headers or {})}.items():
            conn.putheader(k, v)
        conn.endheaders(body)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, json.loads(data) if data else {}
    finally:
        conn.close()


# ---- 1. method overrides ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "headers", "data"),
    [
        ("/prod/db", {"X-HTTP-Method-Override": "DELETE"}, None),
        ("/prod/db", {"X-HTTP-Method": "DELETE"}, None),
        ("/prod/db", {"X-Method-Override": "delete"}, None),
        ("/prod/db?_method=DELETE", {}, None),
        ("/prod/db", {}, {"_method": "DELETE", "id": "7"}),
    ],
)
def test_a_post_that_overrides_its_method_meets_the_delete_rules(
    proxy: Airlock, upstream: Upstream, path: str, headers: dict[str, str], data: dict[str, str] | None
) -> None:
    r = requests.post(f"{upstream.url}{path}", headers=headers, data=data, proxies=proxy.proxies, timeout=15)
    body = refused(r, "no-prod-deletes")
    assert upstream.effects() == []
    entry = logged(proxy)[body["action_id"]]
    assert (entry["state"], entry["rule"], entry["method"]) == ("denied", "no-prod-deletes", "POST")
    assert logged_action(proxy, body["action_id"])["effect"] == "destructive"


def test_an_override_anywhere_falls_to_the_destructive_default(proxy: Airlock, upstream: Upstream) -> None:
    for header in ("X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override"):
        r = httpx.post(f"{upstream.url}/orders/7", headers={header: "DELETE"}, proxy=proxy.proxy, timeout=15)
        refused(r, "defaults.destructive", "held", 503)
    assert upstream.effects() == []
    # Without an override the same POST is a write, and goes.
    assert httpx.post(f"{upstream.url}/orders/7", proxy=proxy.proxy, timeout=15).status_code == 200
    assert [s.path for s in upstream.effects()] == ["/orders/7"]


# ---- 2. body fields in every encoding an upstream decodes -------------------------------------


def test_force_as_a_form_multipart_or_bare_query_body_is_refused(proxy: Airlock, upstream: Upstream) -> None:
    url = f"{upstream.url}/push"
    kw: dict[str, Any] = {"proxies": proxy.proxies, "timeout": 15}
    attempts = [
        requests.post(url, json={"force": True}, **kw),
        requests.post(url, data={"force": "true"}, **kw),  # application/x-www-form-urlencoded
        requests.post(url, files={"force": (None, "1")}, **kw),  # multipart/form-data field
        requests.post(url, data=b"ref=main&force=", headers={"Content-Type": "text/plain"}, **kw),
        requests.put(url, data=b"force=yes", headers={"Content-Type": ""}, **kw),
    ]
    ids = [refused(r, "no-force")["action_id"] for r in attempts]
    out = curl("-x", proxy.proxy, "-H", "Content-Type:", "--data-binary", "force=1", url)
    ids.append(json.loads(out.stdout)["action_id"])
    assert upstream.effects() == []
    states = logged(proxy)
    assert {states[i]["state"] for i in ids} == {"denied"} and len(set(ids)) == 6

    # A form without the field goes through, as sent.
    assert requests.post(url, data={"ref": "main"}, **kw).status_code == 200
    assert [s.body for s in upstream.effects()] == [b"ref=main"]


# ---- 3. parser differentials, against a Node JSON.parse upstream ------------------------------

NODE_SERVER = """
const http = require('http');
const seen = [];
http.createServer((req, res) => {
  if (req.url === '/__seen') {
    res.setHeader('Content-Type', 'application/json');
    return res.end(JSON.stringify(seen));
  }
  const chunks = [];
  req.on('data', c => chunks.push(c));
  req.on('end', () => {
    const text = Buffer.concat(chunks).toString('utf8');
    let parsed = null, error = null;
    try { parsed = JSON.parse(text); } catch (e) { error = String(e.message); }
    seen.push({path: req.url, force: parsed && parsed.force, error});
    res.setHeader('Content-Type', 'application/json');
    res.end(JSON.stringify({ok: error === null, force: parsed && parsed.force}));
  });
}).listen(Number(process.argv[2]), '127.0.0.1', () => console.log('ready'));
"""


@pytest.fixture
def node_upstream(tmp_path: Path) -> Iterator[str]:
    """A Node HTTP server that JSON.parses every body and records what it read."""
    script = tmp_path / "server.js"
    script.write_text(NODE_SERVER)
    port = free_port()
    proc = subprocess.Popen(["node", str(script), str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait(10)


def node_seen(url: str) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = requests.get(f"{url}/__seen", timeout=10).json()
    return seen


DIFFERENTIALS = {
    "an integer past Python's 4300 digits": b'{"force": true, "n": ' + b"7" * 5000 + b"}",
    "an invalid UTF-8 byte": b'{"force": true, "note": "caf\xe9"}',
    "nesting past the limit": b'{"force": true, "deep": ' + b"[" * 100 + b"]" * 100 + b"}",
}


@pytest.mark.parametrize("what", DIFFERENTIALS)
def test_json_that_python_rejects_but_node_reads_is_refused(
    make_airlock: Callable[..., Airlock], node_upstream: str, what: str
) -> None:
    body = DIFFERENTIALS[what]
    # What the proxy once let through: Node reads it and acts on "force".
    direct = requests.post(f"{node_upstream}/direct", data=body, timeout=10).json()
    assert direct == {"ok": True, "force": True}, what

    a = make_airlock(rules=RULES)
    r = requests.post(
        f"{node_upstream}/push",
        data=body,
        headers={"Content-Type": "application/json"},
        proxies=a.proxies,
        timeout=15,
    )
    answer = refused(r, "no-force", "ambiguous_body")
    assert "cannot be read unambiguously" in answer["message"] and "not forwarded" in answer["message"]
    assert [s["path"] for s in node_seen(node_upstream)] == ["/direct"]
    entry = logged(a)[answer["action_id"]]
    assert (entry["state"], entry["rule"]) == ("denied", "no-force")


def test_trailing_data_and_repeated_keys(make_airlock: Callable[..., Airlock], node_upstream: str) -> None:
    a = make_airlock(rules=RULES)
    kw: dict[str, Any] = {
        "headers": {"Content-Type": "application/json"},
        "proxies": a.proxies,
        "timeout": 15,
    }
    # Trailing data: Python and Node both reject it, other readers take the first or last value.
    trailing = requests.post(f"{node_upstream}/t", data=b'{"ok": 1} {"force": true}', **kw)
    refused(trailing, "no-force", "ambiguous_body")
    # Repeated keys: JSON.parse keeps the last, first-wins readers the first; both are read.
    for body in (b'{"force": true, "force": false}', b'{"force": false, "force": true}'):
        refused(requests.post(f"{node_upstream}/dup", data=body, **kw), "no-force")
    # A repeated key in a tool call makes its tool ambiguous.
    call = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"send_mail","name":"read"}}'
    refused(requests.post(f"{node_upstream}/mcp", data=call, **kw), "no-send-tools", "ambiguous_body")
    assert node_seen(node_upstream) == []
    # Plain JSON passes and Node reads it.
    assert requests.post(f"{node_upstream}/ok", data=b'{"ref": "main"}', **kw).json() == {"ok": True}
    assert [s["path"] for s in node_seen(node_upstream)] == ["/ok"]


# ---- 4. encodings ----------------------------------------------------------------------------

SQL = b'{"sql": "DROP TABLE users"}'

ENCODED = {
    "gzip": gzip.compress(SQL),
    "x-gzip": gzip.compress(SQL),
    "gzip, gzip": gzip.compress(gzip.compress(SQL)),
    "deflate": zlib.compress(SQL),
    "br": brotli.compress(SQL),
    "deflate, br": brotli.compress(zlib.compress(SQL)),
}


def test_text_rules_read_through_content_encodings(proxy: Airlock, upstream: Upstream) -> None:
    for encoding, body in ENCODED.items():
        r = requests.post(
            f"{upstream.url}/q",
            data=body,
            headers={"Content-Encoding": encoding},
            proxies=proxy.proxies,
            timeout=15,
        )
        refused(r, "no-drop")
    for charset_body, content_type in (
        (SQL.decode().encode("utf-16"), "application/json"),
        (SQL.decode().encode("utf-16-be"), "text/plain; charset=UTF-16BE"),
        (SQL.decode().encode("utf-32"), "text/plain"),
        (b'{"sql": "DROP\\u0009TABLE users"}', "application/json"),
    ):
        r = requests.post(
            f"{upstream.url}/q",
            data=charset_body,
            headers={"Content-Type": content_type},
            proxies=proxy.proxies,
        )
        refused(r, "no-drop")
    assert upstream.effects() == []
    # A compressed body that no rule refuses reaches the upstream as it was sent.
    fine = gzip.compress(b'{"sql": "SELECT 1"}')
    r = requests.post(
        f"{upstream.url}/q",
        data=fine,
        headers={"Content-Encoding": "gzip"},
        proxies=proxy.proxies,
        timeout=15,
    )
    assert r.status_code == 200
    [seen] = upstream.effects()
    assert gzip.decompress(seen.body) == b'{"sql": "SELECT 1"}'


def gzip_bomb(size: int) -> bytes:
    """`size` zero bytes, gzipped a chunk at a time (never held whole)."""
    z = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = b"\0" * (1 << 20)
    return b"".join(z.compress(chunk) for _ in range(size >> 20)) + z.flush()


def brotli_bomb(size: int) -> bytes:
    """`size` spaces, brotli-compressed a chunk at a time."""
    c = brotli.Compressor()
    chunk = b" " * (1 << 20)
    out: bytes = b"".join(c.process(chunk) for _ in range(size >> 20)) + c.finish()
    return out


@pytest.mark.parametrize(
    ("encoding", "make", "why"),
    [
        ("gzip", lambda: gzip_bomb(512 << 20), "expands past"),  # 500 KB on the wire, 512 MiB inside
        ("x-gzip, gzip", lambda: gzip.compress(gzip_bomb(512 << 20)), "expands past"),
        ("br", lambda: brotli_bomb(256 << 20), "expands past"),
        ("compress", lambda: b"\x1f\x9d\x90anything", "cannot decode"),
        ("gzip, gzip, gzip, gzip", lambda: b"x", "more than 3"),
        ("gzip", lambda: gzip.compress(b"drop table")[:-9], "ends early"),
    ],
)
def test_a_body_that_cannot_be_decoded_refuses_a_write(
    proxy: Airlock, upstream: Upstream, encoding: str, make: Callable[[], bytes], why: str
) -> None:
    body = make()
    r = requests.post(
        f"{upstream.url}/upload",
        data=body,
        headers={"Content-Encoding": encoding},
        proxies=proxy.proxies,
        timeout=60,
    )
    answer = refused(r, "no-force", "ambiguous_body")  # the first rule that must read the body
    assert why in answer["message"]
    assert upstream.effects() == []
    action = logged_action(proxy, answer["action_id"])
    assert why in action["body_problem"] and action["body"]["size"] == len(body)  # kept as sent


def test_a_read_with_an_undecodable_body_is_not_refused_for_it(proxy: Airlock, upstream: Upstream) -> None:
    r = requests.get(
        f"{upstream.url}/search", data=b"x", headers={"Content-Encoding": "compress"}, proxies=proxy.proxies
    )
    assert r.status_code == 200 and len(upstream.effects("GET")) == 1


# ---- 5. paths as upstreams read them ----------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/PROD/db",
        "/Prod/DB",
        "/prod;v=1/db",
        "/a/..;/prod/db",
        "/prod\\db",
        "/a/%252e%252e/prod/db",
        "/prod%2fdb",
        "/a/..%2fprod/db",
    ],
)
def test_a_path_rule_matches_the_path_as_any_upstream_resolves_it(
    proxy: Airlock, upstream: Upstream, path: str
) -> None:
    status, answer = raw_request(proxy, "DELETE", f"{upstream.url}{path}")
    assert (status, answer["rule"], answer["error"]) == (403, "no-prod-deletes", "denied"), answer
    assert upstream.effects() == []
    assert logged_action(proxy, answer["action_id"])["path"] == path.split("?")[0]


# ---- 6. the agent header is a claim -----------------------------------------------------------


def test_a_claimed_agent_name_does_not_step_out_of_a_deny(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    a = make_airlock(rules=RULES, extra=("--agent", "bad-bot"))
    r = requests.get(
        f"{upstream.url}/x", headers={"X-Airlock-Agent": "good-bot"}, proxies=a.proxies, timeout=15
    )
    answer = refused(r, "no-bad-bot")
    assert upstream.effects() == []
    action = logged_action(a, answer["action_id"])
    assert (action["agent"], action["configured_agent"]) == ("good-bot", "bad-bot")

    # And naming yourself bad-bot gets bad-bot's denies.
    b = make_airlock(rules=RULES, data=a.data.parent / "data-b")
    r = requests.get(
        f"{upstream.url}/x", headers={"X-Airlock-Agent": "bad-bot"}, proxies=b.proxies, timeout=15
    )
    refused(r, "no-bad-bot")
    assert requests.get(f"{upstream.url}/x", proxies=b.proxies, timeout=15).status_code == 200
    settle(b, 1 + 1 + 2)
    assert [s.path for s in upstream.effects()] == ["/x"]


def test_a_rule_can_require_an_agent_not_self_named(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    rules = RULES.replace(
        "rules:\n",
        "rules:\n  - {id: claims-may-not-write, match: {agent_claimed: true, effect: write}, action: deny}\n",
    )
    a = make_airlock(rules=rules, extra=("--agent", "deployer"))
    kw: dict[str, Any] = {"proxies": a.proxies, "timeout": 15}
    refused(
        requests.post(f"{upstream.url}/d", headers={"X-Airlock-Agent": "other"}, **kw), "claims-may-not-write"
    )
    assert requests.post(f"{upstream.url}/d", **kw).status_code == 200
    wait_for(lambda: len(upstream.effects()) == 1, "the upstream has the unclaimed write")
    explained = subprocess.run(
        [
            AIRLOCK, "rules", "explain", "--rules", str(a.rules), "--method", "POST",
            "--url", f"{upstream.url}/d", "--header", "X-Airlock-Agent: other",
            "--agent", "deployer", "--json",
        ],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert json.loads(explained.stdout)["decision"]["rule"] == "claims-may-not-write"

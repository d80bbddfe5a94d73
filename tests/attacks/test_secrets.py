"""No secret in the log: credentials sent by real clients (requests, curl, the MCP SDK) through the
real proxy reach the upstream unchanged, while no byte of them reaches the log file, `airlock log`
or `airlock show`. Credentials are recognised by their names (headers, query parameters, JSON,
form and multipart fields at any depth, tool arguments) and by the shapes of well-known token
formats wherever they appear (path, query, header values, bodies, arguments); what is not a
credential stays readable.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx2
import lmdb
import pytest
import requests
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from ..support import Airlock, Upstream, curl, environ_without_proxy, free_port, serving, wait_for

RULES = """\
version: 1
egress:
  allow: [127.0.0.1, localhost]
secrets:
  headers: [X-Service-Token]
rules: []
"""


def unique(prefix: str, alphabet: str = "0123456789abcdef", size: int = 36) -> str:
    """A credential of a given shape that no other test sends (so a leak is this test's)."""
    digits = uuid.uuid4().hex + uuid.uuid4().hex
    body = "".join(alphabet[int(c, 16) % len(alphabet)] for c in digits)[:size]
    return prefix + body


UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
MIXED = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def shapes() -> dict[str, str]:
    """One fresh credential in each well-known token format."""
    return {
        "aws": unique("AKIA", UPPER, 16),
        "aws-session": unique("ASIA", UPPER, 16),
        "jwt": f"eyJhbGciOiJIUzI1NiJ9.eyJ{unique('', MIXED, 24)}.{unique('', MIXED, 30)}",
        "github": unique("ghp_", MIXED, 36),
        "github-pat": unique("github_pat_", MIXED, 60),
        "gitlab": unique("glpat-", MIXED, 20),
        "slack": unique("xoxb-1234-5678-", MIXED, 24),
        "stripe": unique("sk_live_", MIXED, 24),
        "stripe-restricted": unique("rk_live_", MIXED, 24),
        "openai": unique("sk-proj-", MIXED, 40),
        "anthropic": unique("sk-ant-api03-", MIXED, 40),
        "google": unique("AIza", MIXED, 35),
    }


PEM_LINE = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC"


def pem() -> tuple[str, str]:
    """A PEM private key and its distinctive middle line."""
    line = unique(PEM_LINE[:10], MIXED, 54)
    return f"-----BEGIN PRIVATE KEY-----\n{line}\n{line[::-1]}\n-----END PRIVATE KEY-----\n", line


# ---- what the log holds ---------------------------------------------------------------------


def settle(a: Airlock, entries: int) -> None:
    """Wait until the log has the actions of `entries` entries (an intent and an outcome each)
    and none of them is still pending."""

    def done() -> bool:
        actions = a.log()
        return len(actions) >= entries // 2 and all(x["state"] != "pending" for x in actions)

    wait_for(done, f"the log holds {entries // 2} settled actions")


def log_bytes(a: Airlock) -> bytes:
    """Everything a reader of the log can see: the whole LMDB file, `airlock log --json`, and
    `airlock show ID --json` of every action."""
    raw = (a.data / "log" / "data.mdb").read_bytes()
    listing = a.cli("log", "--json", "--all").stdout
    shown = "".join(a.cli("show", str(x["id"]), "--json").stdout for x in a.log())
    return raw + listing.encode() + shown.encode()


def assert_kept_out(a: Airlock, secrets: dict[str, str] | list[str]) -> bytes:
    """No secret appears anywhere in the log, in any usual encoding of it; returns what was read."""
    seen = log_bytes(a)
    values = secrets.values() if isinstance(secrets, dict) else secrets
    for value in values:
        for form in {value, json.dumps(value)[1:-1], quote(value, safe="")}:
            assert form.encode() not in seen, f"{value!r} is in the log"
    return seen


def shown(a: Airlock, url_part: str) -> dict[str, Any]:
    """`airlock show --json` of the first action whose URL contains `url_part`."""
    action = min((x for x in a.log() if url_part in x["url"]), key=lambda x: int(x["id"]))
    return dict(json.loads(a.cli("show", str(action["id"]), "--json").stdout))


def intent(a: Airlock, url_part: str) -> dict[str, Any]:
    """The logged description of that action (its intent entry's `action`)."""
    entry = shown(a, url_part)["entries"][0]
    assert entry["kind"] == "intent"
    return dict(entry["data"]["action"])


@pytest.fixture
def a(make_airlock: Callable[..., Airlock]) -> Airlock:
    return make_airlock(RULES)


# ---- headers --------------------------------------------------------------------------------


CREDENTIAL_HEADERS = [
    "Authorization",
    "Cookie",
    "Api-Key",
    "X-Api-Key",
    "X-Goog-Api-Key",
    "Private-Token",
    "X-Vault-Token",
    "X-Auth-Token",
    "X-Amz-Security-Token",
    "X-CSRF-Token",
    "X-Hub-Signature-256",
    "X-Client-Secret",
    "X-Service-Token",  # named by the rules' secrets.headers
]


def post(a: Airlock, url: str, body: bytes, content_type: str) -> None:
    """POST `body` through the proxy, and check the upstream answered."""
    headers = {"Content-Type": content_type}
    assert requests.post(url, data=body, headers=headers, proxies=a.proxies, timeout=30).ok


def test_credential_headers_of_every_name_pattern_and_token_shapes_in_other_headers(
    a: Airlock, upstream: Upstream
) -> None:
    named = {h: unique("v-", MIXED, 30) for h in CREDENTIAL_HEADERS}
    tokens = shapes()
    headers = dict(named)
    # Credentials in headers whose names say nothing: found by their shape.
    headers["X-Forwarded-Note"] = f"Bearer {tokens['github']}"
    headers["X-Debug"] = f"key={tokens['aws']} region=eu-west-1"
    headers["Referer"] = f"https://app.example.com/callback?code={tokens['gitlab']}&state=s-123"
    headers["Idempotency-Key"] = "order-1234"
    headers["Accept"] = "application/json"
    r = requests.get(f"{upstream.url}/profile", headers=headers, proxies=a.proxies, timeout=30)
    assert r.status_code == 200 and r.headers["Set-Cookie"] == "session=upstream-secret-cookie"
    settle(a, 2)

    got = upstream.effects()[0].headers
    assert all(got[h.lower()] == v for h, v in named.items()), "the upstream gets the credentials"
    secrets = [*named.values(), tokens["github"], tokens["aws"], tokens["gitlab"], "upstream-secret-cookie"]
    assert_kept_out(a, secrets)

    described = intent(a, "/profile")["headers"]
    assert all(described[h.lower()] == "[redacted]" for h in CREDENTIAL_HEADERS)
    # Non-secrets stay readable, and so does the rest of a header that held a token.
    assert described["accept"] == "application/json"
    assert described["idempotency-key"] == "order-1234"
    assert described["x-debug"] == "key=[redacted] region=eu-west-1"
    assert described["referer"] == "https://app.example.com/callback?code=[redacted]&state=s-123"
    outcome = shown(a, "/profile")["entries"][1]
    assert outcome["data"]["headers"]["set-cookie"] == "[redacted]"
    assert outcome["data"]["headers"]["content-type"] == "application/json"


# ---- query parameters and paths -------------------------------------------------------------


CREDENTIAL_PARAMS = [
    "key",
    "api_key",
    "apiKey",
    "access_token",
    "refresh_token",
    "id_token",
    "code",
    "client_secret",
    "password",
    "X-Amz-Signature",
    "X-Amz-Credential",
    "X-Amz-Security-Token",
    "sig",
    "auth",
    "session_id",
]


def test_query_parameters_of_every_name_pattern_with_curl(a: Airlock, upstream: Upstream) -> None:
    values = {p: unique("q", MIXED, 24) for p in CREDENTIAL_PARAMS}
    query = "&".join(f"{p}={v}" for p, v in values.items())
    done = curl("-x", a.proxy, f"{upstream.url}/search?page=2&q=red+shoes&{query}&state=xyz&max_tokens=100")
    assert done.returncode == 0, done.stderr
    settle(a, 2)
    assert upstream.effects()[0].path.endswith("&state=xyz&max_tokens=100")
    assert_kept_out(a, values)
    url = intent(a, "/search")["url"]
    assert url.startswith(f"{upstream.url}/search?page=2&q=red+shoes&key=[redacted]&api_key=[redacted]")
    assert url.endswith("&state=xyz&max_tokens=100")
    assert url.count("[redacted]") == len(CREDENTIAL_PARAMS)
    assert a.log()[0]["url"] == url


def test_token_shapes_in_paths_and_user_information(a: Airlock, upstream: Upstream) -> None:
    tokens = shapes()
    telegram = unique("123456789:AA", MIXED, 33)
    hook = unique("T0/B0/", MIXED, 24)
    paths = {
        "github": f"/repos/x/{tokens['github']}/hooks",
        "telegram": f"/bot{telegram}/sendMessage",
        "slack": f"/proxy/hooks.slack.com/services/{hook}",
        "stripe": f"/keys/{tokens['stripe']}",
        "jwt": f"/session/{tokens['jwt']}/refresh",
    }
    for path in paths.values():
        assert curl("-x", a.proxy, "-o", "/dev/null", f"{upstream.url}{path}").returncode == 0
    # A URL with user:password in it, given to curl, becomes Basic credentials in a header.
    login = curl(
        "-x",
        a.proxy,
        "-o",
        "/dev/null",
        f"http://deploy:Pw-{tokens['gitlab'][6:]}@127.0.0.1:{upstream.port}/login",
    )
    assert login.returncode == 0
    settle(a, 2 * (len(paths) + 1))
    assert {s.path for s in upstream.effects()} >= set(paths.values())
    assert_kept_out(
        a, [tokens["github"], telegram, hook, tokens["stripe"], tokens["jwt"], tokens["gitlab"][6:]]
    )
    assert intent(a, "/repos/x/")["url"] == f"{upstream.url}/repos/x/[redacted]/hooks"
    assert intent(a, "/sendMessage")["path"] == "/bot[redacted]/sendMessage"
    assert intent(a, "/login")["headers"]["authorization"] == "[redacted]"


# ---- bodies ---------------------------------------------------------------------------------


def test_json_bodies_redact_secret_fields_at_any_depth_and_token_shapes(
    a: Airlock, upstream: Upstream
) -> None:
    tokens = shapes()
    key, line = pem()
    fields = {
        n: unique("f-", MIXED, 24) for n in ("client_secret", "password", "refreshToken", "private_key")
    }
    body = {
        "customer": "c_123",
        "amount": 4200,
        "max_tokens": 100,
        "client_secret": fields["client_secret"],
        "items": [{"sku": "SKU-1", "auth": {"user": "bob", "password": fields["password"]}}],
        "settings": {"deep": {"deeper": [{"refreshToken": fields["refreshToken"], "colour": "red"}]}},
        "private_key": fields["private_key"],
        "note": f"call with {tokens['openai']} or {tokens['anthropic']}",
        "repo": f"https://deploy:{tokens['github']}@git.example.com/x.git",
        "pem": key,
        "hook": f"https://hooks.slack.com/services/{tokens['slack'][5:]}",
        "escaped": json.dumps({"api_key": tokens["google"]}),
    }
    r = requests.post(f"{upstream.url}/orders", json=body, proxies=a.proxies, timeout=30)
    assert r.status_code == 200
    settle(a, 2)
    sent = upstream.effects()[0].body
    assert json.loads(sent) == body, "the upstream gets the body as the client sent it"
    assert_kept_out(
        a, [*fields.values(), *(tokens[k] for k in ("openai", "anthropic", "github", "google")), line]
    )
    logged = intent(a, "/orders")["body"]
    # The size and digest are the original's; the text is the redacted JSON.
    assert logged["size"] == len(sent) and logged["redacted"] is True
    assert logged["sha256"] == hashlib.sha256(sent).hexdigest()
    shown_body = json.loads(logged["text"])
    assert (
        shown_body["customer"] == "c_123" and shown_body["amount"] == 4200 and shown_body["max_tokens"] == 100
    )
    assert shown_body["client_secret"] == "[redacted]" and shown_body["private_key"] == "[redacted]"
    assert shown_body["items"][0]["auth"] == "[redacted]"
    assert shown_body["settings"]["deep"]["deeper"][0] == {"refreshToken": "[redacted]", "colour": "red"}
    assert shown_body["note"] == "call with [redacted] or [redacted]"
    assert shown_body["repo"] == "https://[redacted]git.example.com/x.git".replace("]git", "]@git")
    assert shown_body["pem"] == "[redacted]\n"


def test_form_multipart_text_and_binary_bodies(a: Airlock, upstream: Upstream) -> None:
    tokens = shapes()
    code, secret, password, api_key = (unique("s-", MIXED, 24) for _ in range(4))
    # An OAuth token exchange as a form.
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "client_secret": secret,
        "redirect_uri": "https://app.example.com/cb",
    }
    assert requests.post(f"{upstream.url}/oauth/token", data=form, proxies=a.proxies, timeout=30).ok
    # A multipart upload with credential fields beside a file.
    parts = {"title": (None, "quarterly report"), "password": (None, password), "api_key": (None, api_key)}
    files: dict[str, Any] = {**parts, "file": ("r.csv", b"a,b\n1,2\n", "text/csv")}
    assert requests.post(f"{upstream.url}/upload", files=files, proxies=a.proxies, timeout=30).ok
    # Plain text and binary bodies: only shapes and `name=value` pairs can tell.
    text = f"deploy log\npassword={password}x\nuse {tokens['aws']} then\nregion=eu-west-1\n"
    post(a, f"{upstream.url}/notes", text.encode(), "text/plain")
    binary = b"\x00\x01\xfe\xff" + tokens["stripe"].encode() + b"\x00\x9c" + tokens["jwt"].encode() + b"\xff"
    post(a, f"{upstream.url}/blob", binary, "application/octet-stream")
    settle(a, 8)
    assert upstream.effects()[3].body == binary
    assert_kept_out(a, [code, secret, password, api_key, tokens["aws"], tokens["stripe"], tokens["jwt"]])

    logged = intent(a, "/oauth/token")["body"]["text"]
    assert (
        logged == "grant_type=authorization_code&code=[redacted]&client_secret=[redacted]"
        "&redirect_uri=https%3A%2F%2Fapp.example.com%2Fcb"
    )
    upload = intent(a, "/upload")["body"]["text"]
    assert "quarterly report" in upload and "a,b\n1,2\n" in upload and upload.count("[redacted]") == 2
    assert (
        intent(a, "/notes")["body"]["text"]
        == "deploy log\npassword=[redacted]\nuse [redacted] then\nregion=eu-west-1\n"
    )
    blob = base64.b64decode(intent(a, "/blob")["body"]["base64"])
    assert blob.startswith(b"\x00\x01\xfe\xff[redacted]\x00") and blob.count(b"[redacted]") == 2


def test_a_body_past_the_limit_is_redacted_in_the_part_kept(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    a = make_airlock(RULES, extra=("--body-limit", "1024"))
    token = shapes()["github"]
    secret = unique("s-", MIXED, 24)
    # The secrets straddle the cut at 1024 bytes: not parseable as JSON any more, redacted as text.
    filler = "x" * (1024 - len('{"filler":"",  "client_secret": "') - 10)
    body = f'{{"filler":"{filler}",  "client_secret": "{secret}", "t": "{token}", "more": "{"y" * 4000}"}}'
    post(a, f"{upstream.url}/big", body.encode(), "application/json")
    settle(a, 2)
    assert_kept_out(a, [secret, token, secret[:12], token[:16]])
    logged = intent(a, "/big")["body"]
    assert logged["truncated"] is True and logged["size"] == len(body)


# ---- MCP tool arguments ---------------------------------------------------------------------


VAULT = """\
import sys
from mcp.server.mcpserver import MCPServer

app = MCPServer("vault")
seen = sys.argv[2]


@app.tool()
def connect_db(user: str, password: str, dsn: str, options: dict) -> str:
    with open(seen, "a") as f:
        f.write(password + "\\n")
    return f"connected as {user}"


app.run("streamable-http", host="127.0.0.1", port=int(sys.argv[1]), json_response=True)
"""


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    port = free_port()
    (tmp_path / "vault.py").write_text(VAULT)
    seen = tmp_path / "seen.txt"
    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "vault.py"), str(port), str(seen)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=environ_without_proxy(),
    )

    def up() -> bool:
        try:
            return requests.get(f"http://127.0.0.1:{port}/mcp", timeout=1).status_code > 0
        except requests.ConnectionError:
            return False

    try:
        wait_for(up, "the MCP server listens")
        yield f"http://127.0.0.1:{port}/mcp", seen
    finally:
        proc.kill()
        proc.wait(10)


def test_mcp_tool_arguments_and_the_json_rpc_body_are_redacted_alike(
    a: Airlock, vault: tuple[str, Path]
) -> None:
    url, seen = vault
    tokens = shapes()
    password = unique("pw-", MIXED, 24)
    db_password = unique("dbpw-", MIXED, 20)
    args = {
        "user": "reporting",
        "password": password,
        "dsn": f"postgres://reporting:{db_password}@db.internal:5432/sales",
        "options": {
            "sslmode": "require",
            "aws_secret_access_key": tokens["aws"],
            "note": f"token {tokens['github']}",
        },
    }

    async def call() -> str:
        async with (
            httpx2.AsyncClient(proxy=a.proxy, timeout=30) as http,
            streamable_http_client(url, http_client=http) as streams,
            ClientSession(streams[0], streams[1]) as session,
        ):
            await session.initialize()
            result = await session.call_tool("connect_db", args, read_timeout_seconds=20)
            return str(result.content[0].text)  # type: ignore[union-attr]

    assert asyncio.run(asyncio.wait_for(call(), 60)) == "connected as reporting"
    assert seen.read_text().split() == [password], "the tool got the real password"
    wait_for(
        lambda: any(x.get("tool") == "connect_db" and x.get("status") for x in a.log()), "the call's outcome"
    )
    assert_kept_out(a, [password, db_password, tokens["aws"], tokens["github"]])
    [action] = [x for x in a.log() if x.get("tool") == "connect_db"]
    entry = json.loads(a.cli("show", str(action["id"]), "--json").stdout)["entries"][0]["data"]["action"]
    expected = {
        "user": "reporting",
        "password": "[redacted]",
        "dsn": "postgres://[redacted]@db.internal:5432/sales",
        "options": {"sslmode": "require", "aws_secret_access_key": "[redacted]", "note": "token [redacted]"},
    }
    # Kept once, redacted: short arguments in the action's summary; the body by size and digest.
    assert action["args"] == expected
    assert "args" not in entry and "text" not in entry["body"] and entry["body"]["kept_as"] == "args"


# ---- stored replies -------------------------------------------------------------------------


def test_a_keyed_reply_is_replayed_verbatim_but_shown_redacted(a: Airlock, upstream: Upstream) -> None:
    def send() -> requests.Response:
        return requests.post(
            f"{upstream.url}/payments",
            json={"amount": 5},
            headers={"Idempotency-Key": "pay-1"},
            proxies=a.proxies,
            timeout=30,
        )

    first, again = send(), send()
    assert first.status_code == again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    # The replay gives the client what the first answer gave it, cookie included.
    assert again.headers["Set-Cookie"] == first.headers["Set-Cookie"] == "session=upstream-secret-cookie"
    assert len(upstream.effects("POST")) == 1
    settle(a, 4)
    # The reply lives in the keys database only; no entry and no index shows the cookie.
    env = lmdb.open(str(a.data / "log"), readonly=True, max_dbs=16, lock=False)
    with env.begin() as txn:
        names = [bytes(k) for k, _ in txn.cursor()]
        shown_dbs = [n for n in names if n != b"keys"]
        raw = b"".join(bytes(v) for n in shown_dbs for _, v in txn.cursor(env.open_db(n, txn=txn)))
    env.close()
    assert b"upstream-secret-cookie" not in raw
    listing = a.cli("log", "--json", "--all").stdout + "".join(
        a.cli("show", str(x["id"]), "--json").stdout for x in a.log()
    )
    assert "upstream-secret-cookie" not in listing
    outcome = shown(a, "/payments")["entries"][1]
    assert outcome["data"]["headers"]["set-cookie"] == "[redacted]"


def test_names_that_only_look_like_credentials_stay_readable(a: Airlock, upstream: Upstream) -> None:
    body = {
        "TableName": "orders",
        "Key": {"id": {"S": "order-17"}},  # DynamoDB: a record's key, not a credential
        "code": "print('hello')",  # a program, in a JSON field
        "keyboard": "dvorak",
        "monkey": "george",
        "sort_key": "created",
        "public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
        "max_tokens": 1024,
        "usage": {"input_tokens": 12, "output_tokens": 30},
        "author": "ada",
        "design": "passenger compass",
        "url": "https://example.com/a@b?ref=mail",
    }
    headers = {"Idempotency-Key": "k-1", "Content-Type": "application/json", "Sec-Fetch-Mode": "cors"}
    r = requests.put(
        f"{upstream.url}/items/17", data=json.dumps(body), headers=headers, proxies=a.proxies, timeout=30
    )
    assert r.ok
    settle(a, 2)
    logged = intent(a, "/items/17")
    assert "redacted" not in logged["body"] and json.loads(logged["body"]["text"]) == body
    assert logged["headers"]["idempotency-key"] == "k-1" and logged["headers"]["sec-fetch-mode"] == "cors"


def test_repeated_keys_and_utf16_bodies_do_not_hide_a_secret(a: Airlock, upstream: Upstream) -> None:
    tokens = shapes()
    first, second = unique("p1-", MIXED, 20), unique("p2-", MIXED, 20)
    # A repeated key: Python keeps the last value, a first-wins upstream reads the first.
    repeated = f'{{"note": "{tokens["github"]}", "note": "y", "password": "{first}", "password": "{second}"}}'
    utf16_json = json.dumps({"client_secret": tokens["stripe"], "plan": "gold"}).encode("utf-16")
    utf16_text = f"user=ada\npassword={first}x\n".encode("utf-16-le")
    sends = [
        ("/repeated", repeated.encode(), "application/json"),
        ("/utf16-json", utf16_json, "application/json"),
        ("/utf16-text", utf16_text, "text/plain; charset=utf-16le"),
    ]
    for path, data, ctype in sends:
        r = requests.post(
            f"{upstream.url}{path}", data=data, headers={"Content-Type": ctype}, proxies=a.proxies, timeout=30
        )
        assert r.ok
    settle(a, 2 * len(sends))
    assert [s.body for s in upstream.effects()] == [data for _, data, _ in sends]
    assert_kept_out(a, [tokens["github"], first, second, tokens["stripe"], f"{first}x"])
    for text in (s.encode("utf-16-le") for s in (first, tokens["stripe"])):
        assert text not in log_bytes(a)
    assert json.loads(intent(a, "/utf16-json")["body"]["text"]) == {
        "client_secret": "[redacted]",
        "plan": "gold",
    }
    assert intent(a, "/utf16-text")["body"]["text"] == "user=ada\npassword=[redacted]\n"


def test_response_headers_are_redacted_in_the_outcome(a: Airlock) -> None:
    issued = {
        "X-Auth-Token": unique("rt-", MIXED, 24),
        "X-Amz-Security-Token": unique("st-", MIXED, 24),
        "Authentication-Info": f"nextnonce={unique('nn-', MIXED, 16)}",
        "Set-Cookie": f"sid={unique('sid-', MIXED, 20)}; HttpOnly",
    }
    code = unique("c-", MIXED, 20)
    telltale = shapes()["slack"]

    class Issuer(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(302)
            for name, value in issued.items():
                self.send_header(name, value)
            self.send_header("Location", f"https://app.example.com/cb?code={code}&state=s-1")
            self.send_header("X-Debug", f"issued {telltale}")
            self.send_header("WWW-Authenticate", 'Bearer realm="api"')
            self.send_header("Content-Length", "0")
            self.end_headers()

    port = free_port()
    with serving(Issuer, port):
        r = requests.post(
            f"http://127.0.0.1:{port}/login", data=b"{}", proxies=a.proxies, timeout=30, allow_redirects=False
        )
    assert r.status_code == 302 and r.headers["X-Auth-Token"] == issued["X-Auth-Token"]
    settle(a, 2)
    assert_kept_out(a, [*issued.values(), code, telltale])
    headers = shown(a, "/login")["entries"][1]["data"]["headers"]
    assert all(headers[name.lower()] == "[redacted]" for name in issued)
    assert headers["location"] == "https://app.example.com/cb?code=[redacted]&state=s-1"
    assert headers["x-debug"] == "issued [redacted]"
    assert headers["www-authenticate"] == 'Bearer realm="api"'

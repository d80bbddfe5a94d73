"""Log before effect, under attack: nothing reaches an upstream without a durable intent, and
a request is MCP only when its server has shown it is.

Real clients (requests, httpx, curl, the MCP SDK) go through the real proxy to a recording
upstream that, for every request it receives, looks in the log (read-only, as another process
would) for the request's intent. Each test asserts on what the upstream received and on what
the log holds.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests

from rules import default_path
from store import Log

from ..support import AIRLOCK, Airlock, Seen, Upstream, curl, free_port, recording_handler, serving, wait_for
from ..support.mcp_http import NotesServer, call, connect, note, run
from ..support.mcp_stdio import Host, Setup, write_rules

LOOPBACK = "version: 1\negress:\n  allow: [127.0.0.1, localhost]\n"
WRITES_DENIED = LOOPBACK + "defaults: {read: allow, write: deny, destructive: deny}\n"
ALLOW_ALL = LOOPBACK + "defaults: {read: allow, write: allow, destructive: allow}\n"
# The shipped rules, with held actions answered at once instead of after the default 25 s wait.
STARTER = Path(default_path()).read_text().replace("\ndefaults:", "\nhold: {wait: 0s}\ndefaults:", 1)


def rpc(method: str, nonce: str, *, id: Any = 1, **params: Any) -> dict[str, Any]:
    """A JSON-RPC 2.0 message carrying `nonce` (a notification when `id` is None)."""
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": {"nonce": nonce, **params}}
    if id is not None:
        message["id"] = id
    return message


# Bodies shaped like JSON-RPC, none of them to an MCP server: each is a member of the class.
SHAPES: dict[str, Callable[[str], Any]] = {
    "eth_sendTransaction": lambda n: rpc("eth_sendTransaction", n, to="0xdead", value="0x1"),
    "tools/call": lambda n: {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": "transfer", "arguments": {"nonce": n, "amount": 10}},
    },
    "tools/list": lambda n: rpc("tools/list", n),
    "initialize": lambda n: rpc("initialize", n, protocolVersion="2025-06-18", capabilities={}),
    "notification": lambda n: rpc("notifications/cancelled", n, id=None),
    "batch": lambda n: [rpc("eth_sendTransaction", n, id=1), rpc("ping", n, id=2)],
}


class Witness:
    """Looks in the log, read-only, the moment the upstream receives a request: was its intent
    (found by the nonce in its path or body) already durable?"""

    def __init__(self, a: Airlock) -> None:
        self.a = a
        self.lock = threading.Lock()
        self.durable_first: dict[str, bool] = {}

    def __call__(self, seen: Seen) -> None:
        for nonce in _nonces(seen.path.encode() + b" " + seen.body):
            found = nonce in _logged_text(self.a)
            with self.lock:
                self.durable_first[nonce] = found


def _nonces(body: bytes) -> set[str]:
    return set(NONCE.findall(body.decode(errors="replace")))


def _logged_text(a: Airlock) -> str:
    """Every entry of the log as text, read as another process would."""
    log = Log.open(a.data / "log", readonly=True)
    try:
        return "\n".join(json.dumps(e.as_dict(), default=str) for e in log.entries())
    finally:
        log.close()


NONCE = re.compile(r"nonce-[0-9a-f]{12}")


def fresh() -> str:
    return f"nonce-{uuid.uuid4().hex[:12]}"


def send(client: str, url: str, body: Any, a: Airlock, method: str = "POST") -> tuple[int, str]:
    """Send a JSON body with a real client through the proxy; (status, body text)."""
    data = json.dumps(body)
    headers = {"Content-Type": "application/json"}
    if client == "requests":
        r = requests.request(method, url, data=data, headers=headers, proxies=a.proxies, timeout=30)
        return r.status_code, r.text
    if client == "httpx":
        with httpx.Client(proxy=a.proxy, timeout=30) as c:
            h = c.request(method, url, content=data, headers=headers)
            return h.status_code, h.text
    out = curl(
        "-x",
        a.proxy,
        "-X",
        method,
        "-H",
        "Content-Type: application/json",
        "-d",
        data,
        "-w",
        "\n%{http_code}",
        url,
    )
    text, _, status = out.stdout.rpartition("\n")
    return int(status), text


CLIENTS = ["requests", "httpx", "curl"]


@pytest.fixture
def witnessed(
    make_airlock: Callable[..., Airlock],
) -> Iterator[Callable[[str], tuple[Airlock, Upstream, Witness]]]:
    """An airlock with the given rules in front of a recording upstream that checks the log."""
    with contextlib.ExitStack() as stack:

        def make(rules: str, extra: tuple[str, ...] = ()) -> tuple[Airlock, Upstream, Witness]:
            a = make_airlock(rules=rules, extra=extra)
            witness = Witness(a)
            up = Upstream(free_port(), "http", on_request=witness)
            stack.enter_context(serving(recording_handler(up), up.port, release=up.release))
            return a, up, witness

        yield make


# ---- JSON-RPC shapes to an upstream that is not MCP ------------------------------------------


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_json_rpc_shaped_writes_are_refused_by_a_write_deny_and_logged(
    shape: str, client: str, witnessed: Callable[..., tuple[Airlock, Upstream, Witness]]
) -> None:
    a, up, _ = witnessed(WRITES_DENIED)
    nonce = fresh()
    status, text = send(client, f"{up.url}/orders", SHAPES[shape](nonce), a)
    assert status == 403, text
    refusal = json.loads(text)
    assert refusal["rule"] == "defaults.write" and refusal["action_id"] is not None
    assert up.effects() == []  # nothing reached the upstream
    [action] = [x for x in a.log() if x["id"] == refusal["action_id"]]
    assert (action["state"], action["effect"], action["method"]) == ("denied", "write", "POST")
    assert nonce in _logged_text(a)  # durable, with its body


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_json_rpc_shaped_writes_that_pass_are_durable_before_the_upstream_sees_them(
    shape: str, client: str, witnessed: Callable[..., tuple[Airlock, Upstream, Witness]]
) -> None:
    a, up, witness = witnessed(ALLOW_ALL)
    nonce = fresh()
    status, _ = send(client, f"{up.url}/rpc", SHAPES[shape](nonce), a)
    assert status == 200
    assert len(up.effects("POST")) == 1
    assert witness.durable_first == {nonce: True}
    [action] = [x for x in a.log() if x["url"].endswith("/rpc")]
    # One action, the POST it is: a write over HTTP, never a read because of its shape.
    assert (action["protocol"], action["effect"]) == ("http", "write")
    wait_for(lambda: a.log()[-1]["state"] == "committed", "the outcome is written")


@pytest.mark.parametrize(
    ("rule", "body"),
    [
        ("{id: no-transfers, match: {tool: transfer}, action: deny}", SHAPES["tools/call"]),
        ("{id: no-eth-sends, match: {operation: eth_sendTransaction}, action: deny}", SHAPES["batch"]),
        (
            "{id: no-big-amounts, match: {args: {properties: {amount: {minimum: 5}}, required: [amount]}}, "
            "action: deny}",
            SHAPES["tools/call"],
        ),
    ],
    ids=["tool", "operation-in-batch", "args"],
)
def test_mcp_readings_of_an_unproven_request_still_refuse_it(
    rule: str, body: Callable[[str], Any], witnessed: Callable[..., tuple[Airlock, Upstream, Witness]]
) -> None:
    a, up, _ = witnessed(ALLOW_ALL + f"rules:\n  - {rule}\n")
    status, text = send("requests", f"{up.url}/rpc", body(fresh()), a)
    assert status == 403, text
    assert json.loads(text)["rule"] in rule
    assert up.effects() == []


def test_explain_agrees_with_the_proxy_on_every_reading(
    tmp_path: Path, witnessed: Callable[..., tuple[Airlock, Upstream, Witness]]
) -> None:
    rules = ALLOW_ALL.replace("destructive: allow", "destructive: hold") + (
        "hold: {wait: 0s}\n"
        "rules:\n  - {id: no-transfers, match: {tool: transfer}, action: deny}\n"
        "  - {id: no-admin, match: {path: /admin/*, method: POST}, action: deny}\n"
    )
    a, up, _ = witnessed(rules)
    rules_file = tmp_path / "explain.yaml"
    rules_file.write_text(rules)
    cases: list[tuple[str, str, Any, dict[str, str]]] = [
        ("POST", "/rpc", SHAPES["tools/call"](fresh()), {}),
        ("POST", "/rpc", SHAPES["eth_sendTransaction"](fresh()), {}),
        ("POST", "/admin/x", SHAPES["tools/list"](fresh()), {}),
        ("DELETE", "/mcp", None, {"Mcp-Session-Id": "forged-1"}),
        ("GET", "/mcp", None, {"Accept": "text/event-stream"}),
        ("PUT", "/rpc", SHAPES["batch"](fresh()), {}),
        ("GET", "/items", None, {}),
    ]
    for n, (method, path, body, headers) in enumerate(cases, 1):
        data = json.dumps(body) if body is not None else None
        r = requests.request(
            method, f"{up.url}{path}", data=data, headers=headers, proxies=a.proxies, timeout=30
        )
        args = [
            "rules",
            "explain",
            "--rules",
            str(rules_file),
            "--method",
            method,
            "--url",
            f"{up.url}{path}",
        ]
        args += [x for k, v in headers.items() for x in ("--header", f"{k}:{v}")]
        args += ["--body", data] if data is not None else []
        out = subprocess.run([AIRLOCK, *args, "--json"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        doc = json.loads(out.stdout)
        refused = r.status_code == 403
        assert doc["decision"]["refused"] is refused, (method, path, r.text, doc)
        assert (doc["decision"]["verdict"] == "hold") is (r.status_code == 503), (method, path, r.text)
        if refused:
            assert doc["decision"]["rule"] == r.json()["rule"], (method, path)

        def logged_up_to(n: int = n) -> bool:
            return len(a.log()) == n

        wait_for(logged_up_to, "the request is logged")
        logged = a.log()[-1]
        assert (logged["effect"], logged["verdict"], logged["rule"]) == (
            doc["action"]["effect"],
            doc["decision"]["verdict"],
            doc["decision"]["rule"],
        ), (method, path, logged, doc)


# ---- sessions: only the server's word ends one ------------------------------------------------


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("session", ["forged", "00000000-0000-0000-0000-000000000000", "x" * 64])
def test_a_delete_with_a_forged_session_id_is_destructive(
    session: str, client: str, witnessed: Callable[..., tuple[Airlock, Upstream, Witness]]
) -> None:
    a, up, _ = witnessed(STARTER)
    url = f"{up.url}/orders/7"
    if client == "curl":
        out = curl(
            "-x", a.proxy, "-X", "DELETE", "-H", f"Mcp-Session-Id: {session}", "-w", "\n%{http_code}", url
        )
        text, _, code = out.stdout.rpartition("\n")
        status = int(code)
    elif client == "httpx":
        with httpx.Client(proxy=a.proxy, timeout=30) as c:
            h = c.delete(url, headers={"Mcp-Session-Id": session})
            status, text = h.status_code, h.text
    else:
        r = requests.delete(url, headers={"Mcp-Session-Id": session}, proxies=a.proxies, timeout=30)
        status, text = r.status_code, r.text
    assert status == 503, text  # held for votes, not run
    assert (json.loads(text)["rule"], json.loads(text)["error"]) == ("defaults.destructive", "held")
    assert up.effects() == []
    [action] = a.log()[-1:]
    assert (action["method"], action["effect"], action["protocol"]) == ("DELETE", "destructive", "http")
    out = subprocess.run(
        [
            AIRLOCK,
            "rules",
            "explain",
            "--method",
            "DELETE",
            "--url",
            url,
            "--header",
            f"Mcp-Session-Id:{session}",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    doc = json.loads(out.stdout)
    assert doc["action"]["effect"] == "destructive" and doc["decision"]["verdict"] == "hold"


# ---- a real MCP session still works -------------------------------------------------------------


@pytest.mark.parametrize("mode", ["json", "sse-stream", "legacy-sse"])
def test_a_real_mcp_session_works_under_the_starter_rules(
    mode: str, notes_server: Callable[[str], NotesServer], make_airlock: Callable[..., Airlock]
) -> None:
    server = notes_server(mode)
    a = make_airlock(rules=STARTER)
    name = note()

    async def go() -> tuple[set[str], Any, Any]:
        async with connect(mode, server.url, a.proxy) as s:
            listed = {t.name for t in (await s.list_tools()).tools}
            write = await call(s, "write_note", name=name, text="kept")
            delete = await call(s, "delete_note", name=name)
            return listed, write, delete

    listed, write, delete = run(go())
    assert "write_note" in listed and not write.is_error
    assert delete.is_error and "defaults.destructive" in delete.content[0].text  # held: no votes yet
    assert server.effects(name) == [f"write {name}"]

    def session_over() -> bool:
        return mode == "legacy-sse" or any(x.get("operation") == "session/end" for x in a.log())

    wait_for(session_over, "the client's session DELETE is logged")
    wait_for(lambda: all(x["state"] != "pending" for x in a.log()), "nothing is left pending")
    ops = {x.get("operation"): x for x in a.log()}
    assert ops["tools/list"]["effect"] == "read" and ops["tools/list"]["protocol"] == "mcp"
    if mode != "legacy-sse":
        # The session id was the server's: ending the session is not a destructive DELETE.
        end = ops["session/end"]
        assert (end["effect"], end["method"], end["state"]) == ("read", "DELETE", "committed")


# ---- what the log cannot hold is not forwarded -----------------------------------------------------


UNENCODABLE: dict[str, Any] = {
    "huge-int": 2**70,
    "negative-huge-int": -(2**80),
    "huge-int-deep-inside": {"rows": [[1, 2], [3, {"n": 2**64}]]},
}


@pytest.fixture
def mcp_proven(
    notes_server: Callable[[str], NotesServer], make_airlock: Callable[..., Airlock]
) -> tuple[Airlock, NotesServer]:
    """An airlock that has seen the notes server answer initialize (so it is MCP to it)."""
    server = notes_server("json")
    a = make_airlock(rules=ALLOW_ALL)

    async def introduce() -> None:
        async with connect("json", server.url, a.proxy):
            pass

    run(introduce())
    return a, server


@pytest.mark.parametrize("value", list(UNENCODABLE))
def test_unencodable_arguments_to_an_mcp_server_are_refused_and_logged_without_them(
    value: str, mcp_proven: tuple[Airlock, NotesServer]
) -> None:
    a, server = mcp_proven
    name = note()
    arguments = {"name": name, "text": "t", "extra": UNENCODABLE[value]}
    for body in (
        {
            "jsonrpc": "2.0",
            "id": 3,
            "method": "tools/call",
            "params": {"name": "write_note", "arguments": arguments},
        },
        {
            "jsonrpc": "2.0",
            "id": 4,
            "method": "resources/read",
            "params": {"uri": "x", "n": UNENCODABLE[value]},
        },
    ):
        r = requests.post(
            server.url,
            data=json.dumps(body),
            headers={"Content-Type": "application/json", "Accept": "application/json, text/event-stream"},
            proxies=a.proxies,
            timeout=30,
        )
        assert r.status_code == 200, r.text  # answered in JSON-RPC, by airlock
        answer = r.json()
        text = answer["result"]["content"][0]["text"] if "result" in answer else answer["error"]["message"]
        assert answer["id"] == body["id"] and "cannot write this request to its log" in text
        assert "64 bits" in text
    assert server.effects(name) == []
    refused = [x for x in a.log() if x["state"] == "denied"]
    assert [x["operation"] for x in refused] == ["tools/call", "resources/read"]
    assert all(str(x["args"]).startswith("(not logged:") for x in refused)


def test_unencodable_values_to_a_plain_upstream_are_logged_as_text_before_forwarding(
    witnessed: Callable[..., tuple[Airlock, Upstream, Witness]],
) -> None:
    a, up, witness = witnessed(ALLOW_ALL)
    sent = []
    for value in UNENCODABLE.values():
        nonce = fresh()
        sent.append(nonce)
        body = rpc("tools/call", nonce, name="transfer", arguments={"amount": value})
        assert send("requests", f"{up.url}/rpc", body, a)[0] == 200
    # Not MCP: the request is the POST it is, its body kept as text, durable before it went.
    assert witness.durable_first == dict.fromkeys(sent, True)
    assert str(2**70) in _logged_text(a)


# ---- a full log: nothing goes out --------------------------------------------------------------


def fill(a: Airlock, up: Upstream) -> None:
    """Write to the log until even an empty POST finds no room (big writes first, then smaller)."""
    for size in (200 * 1024, 20 * 1024, 2 * 1024, 0):
        for _ in range(400):
            if (
                requests.post(f"{up.url}/fill", data=b"x" * size, proxies=a.proxies, timeout=30).status_code
                == 503
            ):
                break
        else:
            raise AssertionError(f"the log never filled up with {size}-byte writes")


def test_a_full_log_refuses_reads_and_writes_and_the_upstream_sees_none(
    witnessed: Callable[..., tuple[Airlock, Upstream, Witness]],
) -> None:
    a, up, witness = witnessed(ALLOW_ALL, ("--log-max-size", "1MiB", "--body-limit", "256KiB"))
    fill(a, up)
    # A full log has no fixed edge (pages come free as readers finish), so each request below
    # either finds room for its intent, durable before it goes, or gets 503 and goes nowhere.
    refused: dict[str, int] = {}
    sent: list[str] = []
    for _ in range(20):
        for method in ("GET", "HEAD", "POST", "PUT", "DELETE"):
            nonce = fresh()
            sent.append(nonce)
            r = requests.request(method, f"{up.url}/after/{nonce}", proxies=a.proxies, timeout=30)
            if r.status_code == 503:
                refused[method] = refused.get(method, 0) + 1
                assert method == "HEAD" or r.json()["error"] == "log_unavailable"
            else:
                assert r.status_code == 200, (method, r.text)
        nonce = fresh()
        sent.append(nonce)
        status, _ = send("httpx", f"{up.url}/rpc", SHAPES["tools/list"](nonce), a)
        refused["rpc"] = refused.get("rpc", 0) + (status == 503)
    assert set(refused) == {"GET", "HEAD", "POST", "PUT", "DELETE", "rpc"} and all(refused.values()), refused
    # What reached the upstream had its intent in the log first; what was refused never went.
    assert all(witness.durable_first.get(n, True) for n in sent), witness.durable_first
    seen = {n for s in up.effects() for n in _nonces(s.path.encode() + s.body)}
    assert seen <= {n for n in sent if witness.durable_first.get(n)}


def test_reads_may_pass_unlogged_when_the_operator_says_so(
    witnessed: Callable[..., tuple[Airlock, Upstream, Witness]],
) -> None:
    extra = ("--log-max-size", "1MiB", "--body-limit", "256KiB", "--reads-when-log-down", "pass")
    a, up, witness = witnessed(ALLOW_ALL, extra)
    fill(a, up)
    reads, writes = [], []
    for _ in range(30):
        read, write = fresh(), fresh()
        reads.append(read)
        writes.append(write)
        assert requests.get(f"{up.url}/read/{read}", proxies=a.proxies, timeout=30).status_code == 200
        status = requests.post(
            f"{up.url}/write/{write}", data=b"w", proxies=a.proxies, timeout=30
        ).status_code
        assert status in (200, 503)
    # Every read went out, some of them unlogged (the log was full); no write went out unlogged.
    assert set(reads) <= set(witness.durable_first)
    assert not all(witness.durable_first[r] for r in reads)
    assert all(witness.durable_first.get(w, True) for w in writes)


# ---- hooks after forwarding always write an outcome ---------------------------------------------

DEEP = b"[" * 200_000 + b"]" * 200_000  # JSON nested deeper than a recursive parser can follow
BROKEN = {
    # Each answer to a tools/call is one the proxy cannot read; the client still gets it.
    "bad-gzip": ({"Content-Type": "application/json", "Content-Encoding": "gzip"}, b"not gzip at all"),
    "deep-json": ({"Content-Type": "application/json"}, DEEP),
    "deep-json-event": ({"Content-Type": "text/event-stream"}, b"event: message\ndata: " + DEEP + b"\n\n"),
}


@pytest.fixture
def broken_mcp() -> Iterator[tuple[Upstream, dict[str, str]]]:
    """A hand-written MCP server: it answers initialize as MCP servers do, and every tools/call
    with the answer its `answer["kind"]` names from BROKEN."""
    up = Upstream(free_port(), "http")
    answer = {"kind": "bad-gzip"}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            message = json.loads(body)
            with up.lock:
                up.seen.append(Seen("POST", self.path, {}, body))
            if message["method"] == "initialize":
                result = {"protocolVersion": "2025-06-18", "capabilities": {}, "serverInfo": {"name": "b"}}
                headers, payload = (
                    {"Content-Type": "application/json"},
                    json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result}).encode(),
                )
            else:
                headers, payload = BROKEN[answer["kind"]]
            self.send_response(200)
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(payload)

    with serving(Handler, up.port):
        yield up, answer


@pytest.mark.parametrize("kind", list(BROKEN))
def test_an_answer_the_proxy_cannot_read_still_settles_the_call(
    kind: str, broken_mcp: tuple[Upstream, dict[str, str]], make_airlock: Callable[..., Airlock]
) -> None:
    up, answer = broken_mcp
    answer["kind"] = kind
    a = make_airlock(rules=ALLOW_ALL)
    url = f"{up.url}/mcp"
    with httpx.Client(proxy=a.proxy, timeout=30) as c:
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
        assert c.post(url, json=init).status_code == 200
        call_ = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "t", "arguments": {}}}
        with contextlib.suppress(httpx.HTTPError):  # a body it cannot decode either
            c.post(url, json=call_, headers={"Accept": "application/json, text/event-stream"})
    assert [json.loads(s.body)["method"] for s in up.effects()] == ["initialize", "tools/call"]

    def settled() -> dict[str, Any] | None:
        calls = [x for x in a.log() if x.get("operation") == "tools/call"]
        return calls[0] if calls and calls[0]["state"] != "pending" else None

    wait_for(lambda: settled() is not None, "the call has an outcome")
    logged = settled()
    assert logged is not None and logged["protocol"] == "mcp"
    shown = json.loads(a.cli("show", str(logged["id"]), "--json").stdout)
    outcome = shown["entries"][-1]
    assert "airlock could not read" in json.dumps(outcome), outcome


# ---- two requests under one id: refused, nothing left pending ---------------------------------------

DUPLICATES: dict[str, list[dict[str, Any]]] = {
    "same-int": [{"id": 1, "method": "tools/list"}, {"id": 1, "method": "ping"}],
    "same-string": [
        {"id": "a", "method": "ping"},
        {"id": "b", "method": "ping"},
        {"id": "a", "method": "tools/list"},
    ],
    "calls": [
        {
            "id": 5,
            "method": "tools/call",
            "params": {"name": "write_note", "arguments": {"name": "n", "text": "t"}},
        },
        {"id": 5, "method": "tools/call", "params": {"name": "read_note", "arguments": {"name": "n"}}},
    ],
}


def _batch(members: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"jsonrpc": "2.0", **m} for m in members]


@pytest.mark.parametrize("kind", list(DUPLICATES))
def test_a_batch_reusing_an_id_is_refused_over_http(
    kind: str, mcp_proven: tuple[Airlock, NotesServer]
) -> None:
    a, server = mcp_proven
    before = len(a.log())
    r = requests.post(
        server.url,
        json=_batch(DUPLICATES[kind]),
        headers={"Accept": "application/json, text/event-stream"},
        proxies=a.proxies,
        timeout=30,
    )
    assert r.status_code == 200, r.text
    answers = r.json()
    assert len(answers) == len(DUPLICATES[kind])
    assert all(
        x["error"]["code"] == -32600 and "is used by two requests" in x["error"]["message"] for x in answers
    )
    assert server.effects("n") == []
    # The batch's POSTs (the session's GET stream or DELETE may be logged around them).
    logged = [x for x in a.log()[before:] if x["method"] == "POST"]
    assert [x["state"] for x in logged] == ["denied"] * len(DUPLICATES[kind])


@pytest.mark.parametrize("kind", list(DUPLICATES))
def test_a_batch_reusing_an_id_is_refused_over_stdio(
    kind: str, setup: Setup, hosts: Callable[..., Host]
) -> None:
    write_rules(setup, "rules: []\n")
    received = setup.root / "received"
    host = hosts(setup.airlock_command(str(received)), setup.stderr)
    host.initialize()
    host.send_raw(json.dumps(_batch(DUPLICATES[kind])).encode())
    answers = json.loads(host._lines.get(timeout=20) or b"null")
    assert isinstance(answers, list) and len(answers) == len(DUPLICATES[kind]), answers
    assert all("is used by two requests" in x["error"]["message"] for x in answers)
    host.send({"jsonrpc": "2.0", "id": 9, "method": "tools/list"})
    assert len(host.response(9)["result"]["tools"]) == 5  # the session goes on
    assert host.close() == 0
    methods = [json.loads(line).get("method") for line in received.read_bytes().splitlines()]
    assert methods == ["initialize", "notifications/initialized", "tools/list"]  # the batch never arrived
    log = setup.log()
    assert all(x["state"] != "pending" for x in log)
    assert [x["state"] for x in log if x["state"] == "denied"] == ["denied"] * len(DUPLICATES[kind])

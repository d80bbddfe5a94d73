"""WebSocket messages are actions: real WebSocket clients (websockets, aiohttp) through the real
proxy to a real WebSocket server on loopback that records every message it receives.

Each client reaches the server a different way: `websockets` through a CONNECT tunnel, aiohttp
with an absolute-form upgrade request. What the server received and what the log holds are
checked, not only what the client saw.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from websockets.sync.server import ServerConnection, serve

from store import Log

from ..support import Airlock, UpstreamCA, free_port, settle, wait_for

PASSWORD = "correct-horse-battery-staple-42"

RULES = """\
version: 1
egress:
  allow: [localhost, 127.0.0.1]
rules:
  - id: no-sql-drops
    match: {protocol: [ws, mcp], text: "(?i)drop\\\\s+table"}
    action: deny
    message: Dropping tables is not allowed.
  - id: no-passwords-on-sockets
    match: {protocol: ws, body: {type: object, required: [password]}}
    action: deny
    message: Credentials are not sent over sockets.
  - id: no-database-drops
    match: {tool: drop_database}
    action: deny
    message: The drop_database tool is not for agents.
"""


@dataclass
class SocketServer:
    """A WebSocket server on loopback that echoes and records every message it receives."""

    port: int
    received: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    on_message: Callable[[str], None] | None = None

    @property
    def url(self) -> str:
        """The server's ws:// URL."""
        return f"ws://127.0.0.1:{self.port}/socket"

    def messages(self) -> list[str]:
        """What arrived so far."""
        with self.lock:
            return list(self.received)


@contextmanager
def socket_server(tls: ssl.SSLContext | None = None) -> Iterator[SocketServer]:
    """Serve the recording echo server in a thread (over TLS with `tls`)."""
    server = SocketServer(free_port())

    def handler(conn: ServerConnection) -> None:
        with suppress(ConnectionClosed):  # airlock closes sockets that carried a refused message
            for message in conn:
                text = message if isinstance(message, str) else message.decode()
                if server.on_message is not None:
                    server.on_message(text)
                with server.lock:
                    server.received.append(text)
                conn.send(f"echo {len(text)}")

    with serve(handler, "127.0.0.1", server.port, ssl=tls) as ws_server:
        threading.Thread(target=ws_server.serve_forever, daemon=True).start()
        yield server
        ws_server.shutdown()


@pytest.fixture
def ws_server() -> Iterator[SocketServer]:
    """The recording WebSocket server."""
    with socket_server() as server:
        yield server


def _tool_call(name: str, args: dict[str, Any], id_: int = 1) -> str:
    return json.dumps(
        {"jsonrpc": "2.0", "id": id_, "method": "tools/call", "params": {"name": name, "arguments": args}}
    )


REFUSED = [
    pytest.param("SELECT 1; DROP TABLE users;", "no-sql-drops", id="drop-table"),
    pytest.param("select 1;\ndrop   table orders", "no-sql-drops", id="drop-table-spaced"),
    pytest.param(json.dumps({"user": "ana", "password": PASSWORD}), "no-passwords-on-sockets", id="password"),
    pytest.param(_tool_call("drop_database", {"name": "prod"}), "no-database-drops", id="mcp-tool-call"),
    pytest.param(
        json.dumps(
            [json.loads(_tool_call("search", {"q": "x"})), json.loads(_tool_call("drop_database", {}, 2))]
        ),
        "no-database-drops",
        id="mcp-batch",
    ),
    pytest.param(_tool_call("run_sql", {"sql": "DROP TABLE users"}), "no-sql-drops", id="mcp-args-text"),
]


def _logged(a: Airlock) -> list[dict[str, Any]]:
    return [x for x in a.log() if x["protocol"] in ("ws", "mcp")]


@pytest.mark.parametrize(("message", "rule"), REFUSED)
def test_a_refused_message_never_reaches_the_server_and_closes_the_socket(
    make_airlock: Callable[..., Airlock], ws_server: SocketServer, message: str, rule: str
) -> None:
    a = make_airlock(rules=RULES)
    with connect(ws_server.url, proxy=a.proxy, open_timeout=10) as client:
        client.send("hello")
        assert client.recv(timeout=10) == "echo 5"
        client.send(message)
        client.send("after the refusal")
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                client.recv(timeout=10)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1008 and rule in closed.value.rcvd.reason
    assert ws_server.messages() == ["hello"]  # neither the refused message nor any after it

    wait_for(lambda: any(x["state"] == "denied" for x in _logged(a)), "the refusal is logged")
    logged = _logged(a)
    denied = [x for x in logged if x["state"] == "denied"]
    assert [(x["rule"], x["method"]) for x in denied] == [(rule, "SEND")]
    assert denied[0]["url"] == ws_server.url
    sent = [x for x in logged if x["method"] == "SEND" and x["state"] != "denied"]
    assert [x["state"] for x in sent] == ["committed"]
    intent = json.loads(a.cli("show", str(denied[0]["id"]), "--json").stdout)["entries"][0]
    assert intent["data"]["decision"]["rule"] == rule and intent["data"]["decision"]["verdict"] == "deny"


def test_allowed_messages_pass_and_are_logged_both_ways(
    make_airlock: Callable[..., Airlock], ws_server: SocketServer
) -> None:
    a = make_airlock(rules=RULES)
    durable: list[bool] = []

    def check(text: str) -> None:
        # Runs inside the server as the message arrives: its intent must be on disk already.
        log = Log.open(a.data / "log", readonly=True)
        try:
            durable.append(any(x["method"] == "SEND" for x in log.actions("pending")))
        finally:
            log._env.close()

    ws_server.on_message = check
    texts = ["first", json.dumps({"select": "rows"}), _tool_call("search", {"q": "airlock"})]
    claim = {"X-Airlock-Agent": "bot-7"}
    with connect(ws_server.url, proxy=a.proxy, open_timeout=10, additional_headers=claim) as client:
        for text in texts:
            client.send(text)
            assert client.recv(timeout=10) == f"echo {len(text)}"
    assert ws_server.messages() == texts
    assert durable == [True, True, True]

    def settled() -> bool:
        logged = _logged(a)
        return len(logged) == 6 and all(x["state"] == "committed" for x in logged)

    wait_for(settled, "every message is logged with its outcome")
    logged = _logged(a)
    sent = [x for x in logged if x["method"] == "SEND"]
    received = [x for x in logged if x["method"] == "RECEIVE"]
    assert len(sent) == 3 and len(received) == 3
    assert all(x["effect"] == "write" for x in sent) and all(x["effect"] == "read" for x in received)
    assert sent[2]["tool"] == "search" and sent[2]["protocol"] == "mcp"
    assert {x["agent"] for x in logged} == {"bot-7"}  # the upgrade's claim, on every message
    first = json.loads(a.cli("show", str(sent[0]["id"]), "--json").stdout)
    assert "first" in json.dumps(first)
    echo = json.loads(a.cli("show", str(received[0]["id"]), "--json").stdout)
    # A server's message is logged by size and digest, not by content.
    assert "echo 5" not in json.dumps(echo)
    assert '"size": 6' in json.dumps(echo) or '"size":6' in json.dumps(echo)


def test_aiohttp_messages_meet_the_same_rules(
    make_airlock: Callable[..., Airlock], ws_server: SocketServer
) -> None:
    a = make_airlock(rules=RULES)

    async def talk() -> tuple[list[str], int | None, str]:
        got: list[str] = []
        async with (
            aiohttp.ClientSession() as session,
            # mitmproxy refuses a ws:// absolute URL; an http:// one upgrades the same.
            session.ws_connect(
                ws_server.url.replace("ws://", "http://"),
                proxy=a.proxy,
                timeout=aiohttp.ClientWSTimeout(ws_close=10),
            ) as sock,
        ):
            await sock.send_str("plain")
            got.append((await sock.receive(timeout=10)).data)
            await sock.send_str(_tool_call("drop_database", {"name": "prod"}))
            await sock.send_str("never")
            closing = await sock.receive(timeout=10)
            return got, sock.close_code, str(closing.extra or "")

    got, code, reason = asyncio.run(talk())
    assert got == ["echo 5"]
    assert code == 1008 and "no-database-drops" in reason
    assert ws_server.messages() == ["plain"]
    wait_for(lambda: any(x["state"] == "denied" for x in _logged(a)), "the refusal is logged")
    assert [(x["tool"], x["rule"]) for x in _logged(a) if x["state"] == "denied"] == [
        ("drop_database", "no-database-drops")
    ]


def test_a_password_sent_over_a_socket_is_not_kept_in_clear(
    make_airlock: Callable[..., Airlock], ws_server: SocketServer
) -> None:
    # Allowed here (no rule refuses it): the message passes, and the log keeps no password.
    rules = RULES.replace("action: deny\n    message: Credentials", "action: log\n    message: Credentials")
    a = make_airlock(rules=rules)
    with connect(ws_server.url, proxy=a.proxy, open_timeout=10) as client:
        client.send(json.dumps({"user": "ana", "password": PASSWORD}))
        client.recv(timeout=10)
    assert len(ws_server.messages()) == 1
    wait_for(lambda: len(_logged(a)) == 2, "both messages are logged")
    settle(a, 1 + 2 + 2 + 2)  # rules, the upgrade (intent, outcome), two messages (intent, outcome)
    raw = b"".join((a.data / "log" / name).read_bytes() for name in ("data.mdb",))
    assert PASSWORD.encode() not in raw


def test_a_refused_message_over_tls_closes_the_socket_too(
    make_airlock: Callable[..., Airlock], upstream_ca: UpstreamCA
) -> None:
    # wss:// through a CONNECT tunnel: the message is read inside TLS, refused, and the socket
    # closed with 1008 through the TLS layers on both sides.
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(upstream_ca.server_cert, upstream_ca.server_key)
    with socket_server(tls=server_tls) as server:
        a = make_airlock(rules=RULES, extra=("--upstream-ca", str(upstream_ca.cert)))
        trust = ssl.create_default_context(cafile=a.ca_cert)
        url = f"wss://localhost:{server.port}/socket"
        with connect(url, proxy=a.proxy, ssl=trust, open_timeout=10) as client:
            client.send("over tls")
            assert client.recv(timeout=10) == "echo 8"
            client.send("DROP TABLE accounts")
            with pytest.raises(ConnectionClosed) as closed:
                client.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        assert server.messages() == ["over tls"]
    wait_for(lambda: any(x["state"] == "denied" for x in _logged(a)), "the refusal is logged")
    [refused] = [x for x in _logged(a) if x["state"] == "denied"]
    assert (refused["url"], refused["rule"]) == (url, "no-sql-drops")


def test_a_held_message_never_passes_before_a_decision(
    make_airlock: Callable[..., Airlock], ws_server: SocketServer
) -> None:
    # A message a hold rule matches waits for votes like any action: with no decision within the
    # hold's wait, the socket is closed (a message cannot be answered later) and nothing passed.
    a = make_airlock(
        rules="version: 1\negress: {allow: [127.0.0.1]}\n"
        "rules:\n  - {id: drops-need-a-person, match: {text: '(?i)drop'}, action: hold, hold: {wait: 0s}}\n"
    )
    with connect(ws_server.url, proxy=a.proxy, open_timeout=10) as client:
        client.send("hello")
        assert client.recv(timeout=10) == "echo 5"
        client.send("DROP TABLE users")
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                client.recv(timeout=10)
    assert closed.value.rcvd is not None and "drops-need-a-person" in closed.value.rcvd.reason
    assert ws_server.messages() == ["hello"]
    wait_for(lambda: any(x["state"] == "held" for x in _logged(a)), "the held message is logged")
    [held] = [x for x in _logged(a) if x["state"] == "held"]
    assert (held["method"], held["rule"]) == ("SEND", "drops-need-a-person")

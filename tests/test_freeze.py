"""The operator's freeze, end to end: `airlock freeze` (another process writing the same log) and
the control API refuse every write and destructive action through a running proxy and `airlock
mcp` with 503 `frozen` naming who, when and why; reads follow the rules; the freeze is a log entry,
so it holds across a restart; `airlock thaw` lifts it; `airlock verify` checks the freeze record
against the chain."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import requests
from mcp import ClientSession
from mcp.client.stdio import stdio_client
from mcp.types import CallToolResult, TextContent
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect
from websockets.sync.server import ServerConnection, serve

from store import Log

from .support import AIRLOCK, Airlock, Upstream, free_port
from .support.logfiles import databases, verify
from .support.mcp_http import NotesServer, call, connect, note, run
from .support.mcp_stdio import Setup, write_rules
from .support.outcomes import settled

RULES = """\
version: 1
egress:
  allow: [127.0.0.1, localhost]
defaults: {read: allow, write: allow, destructive: allow}
"""


def operator_cli(data: Path, *args: str, user: str = "alice") -> subprocess.CompletedProcess[str]:
    """`airlock ARGS --data DATA` run by the user `user`."""
    env = os.environ | {"USER": user}
    return subprocess.run(
        [AIRLOCK, *args, "--data", str(data)], capture_output=True, text=True, timeout=60, env=env
    )


def auth(a: Airlock) -> dict[str, str]:
    return {"Authorization": f"Bearer {a.token}"}


def freeze_entries(data: Path) -> list[dict[str, Any]]:
    """The freeze and thaw entries of the log, oldest first."""
    log = Log.open(data / "log", readonly=True)
    try:
        return [e.as_dict() for e in log.entries() if e.kind in ("freeze", "thaw")]
    finally:
        log.close()


def through(a: Airlock) -> requests.Session:
    s = requests.Session()
    s.proxies = a.proxies
    return s


def assert_frozen(r: requests.Response, *words: str) -> None:
    assert r.status_code == 503, r.text
    assert r.headers["Retry-After"] == "60"
    assert r.headers["X-Airlock-Rule"] == "freeze"
    body = r.json()
    assert body["error"] == "frozen" and body["rule"] == "freeze" and isinstance(body["action_id"], int)
    for word in words:
        assert word in body["message"], body["message"]


def test_a_freeze_from_the_cli_refuses_writes_and_deletes_holds_across_a_restart_and_thaw_lifts_it(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    a = make_airlock(RULES)
    s = through(a)
    assert s.post(f"{upstream.url}/before", json={"n": 0}, timeout=10).status_code == 200

    frozen = operator_cli(a.data, "freeze", "--reason", "incident 42: agents wrote bad rows")
    assert frozen.returncode == 0, frozen.stderr
    assert frozen.stdout.startswith("frozen: alice froze airlock at "), frozen.stdout

    # The running proxy refuses the very next write and delete; a read follows the rules.
    post = s.post(f"{upstream.url}/orders", json={"n": 1}, timeout=10)
    assert_frozen(post, "alice froze airlock at", "incident 42: agents wrote bad rows", "airlock thaw")
    delete = s.delete(f"{upstream.url}/orders/1", timeout=10)
    assert_frozen(delete, "alice", "incident 42")
    assert s.get(f"{upstream.url}/orders", timeout=10).status_code == 200
    assert [(x.method, x.path) for x in upstream.effects()] == [("POST", "/before"), ("GET", "/orders")]

    # The log: each refusal is an action denied by the freeze, its message naming it.
    log = settled(a)
    refused = {x["id"]: x for x in log if x["state"] == "denied"}
    assert set(refused) == {post.json()["action_id"], delete.json()["action_id"]}
    assert {(x["method"], x["rule"], x["verdict"]) for x in refused.values()} == {
        ("POST", "freeze", "deny"),
        ("DELETE", "freeze", "deny"),
    }
    shown = a.cli("show", str(delete.json()["action_id"]), "--json").stdout
    assert "alice froze airlock at" in shown and "incident 42" in shown
    state = requests.get(f"{a.control}/v1/freeze", headers=auth(a), timeout=10).json()
    [entry] = freeze_entries(a.data)
    assert entry["action"] is None and entry["data"] == {
        "by": "alice",
        "reason": "incident 42: agents wrote bad rows",
    }
    assert state == {
        "frozen": True,
        "entry": entry["seq"],
        "since": entry["ts"],
        "by": "alice",
        "reason": "incident 42: agents wrote bad rows",
    }

    # A second freeze says the log is frozen already and writes nothing.
    again = operator_cli(a.data, "freeze", user="bob")
    assert again.returncode == 2 and f"already frozen since entry {entry['seq']} by alice" in again.stderr
    assert len(freeze_entries(a.data)) == 1

    # The freeze is in the log: a restarted proxy keeps it.
    a.stop()
    a.start()
    s = through(a)
    assert_frozen(s.put(f"{upstream.url}/orders/2", json={"n": 2}, timeout=10), "alice", "incident 42")
    assert s.get(f"{upstream.url}/orders/2", timeout=10).status_code == 200

    thawed = operator_cli(a.data, "thaw", "--reason", "rows repaired", user="bob")
    assert thawed.returncode == 0, thawed.stderr
    assert thawed.stdout.startswith("thawed by bob (log entry "), thawed.stdout
    assert s.post(f"{upstream.url}/orders", json={"n": 3}, timeout=10).status_code == 200
    assert [(x.method, x.path) for x in upstream.effects() if x.method != "GET"] == [
        ("POST", "/before"),
        ("POST", "/orders"),
    ]
    assert [(e["kind"], e["data"]) for e in freeze_entries(a.data)] == [
        ("freeze", {"by": "alice", "reason": "incident 42: agents wrote bad rows"}),
        ("thaw", {"by": "bob", "reason": "rows repaired"}),
    ]
    assert requests.get(f"{a.control}/v1/freeze", headers=auth(a), timeout=10).json() == {"frozen": False}
    again = operator_cli(a.data, "thaw")
    assert again.returncode == 2 and "not frozen" in again.stderr
    settled(a)
    assert verify(a.data).returncode == 0


def test_the_control_api_freezes_and_thaws_with_its_token_only(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    a = make_airlock(RULES)
    s = through(a)

    def state() -> Any:
        return requests.get(f"{a.control}/v1/freeze", headers=auth(a), timeout=10).json()

    for path in ("/v1/freeze", "/v1/thaw"):
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            r = requests.post(f"{a.control}{path}", json={"reason": "x"}, headers=headers, timeout=10)
            assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    assert requests.get(f"{a.control}/v1/freeze", timeout=10).status_code == 401
    assert state() == {"frozen": False}
    assert freeze_entries(a.data) == []

    for body, field in ((b"[1]", "JSON object"), (b'{"reason": 5}', "reason"), (b'{"by": ""}', "by")):
        r = requests.post(f"{a.control}/v1/freeze", data=body, headers=auth(a), timeout=10)
        assert r.status_code == 400 and field in r.json()["message"], r.text

    r = requests.post(
        f"{a.control}/v1/freeze", json={"reason": "deploy window", "by": "carol"}, headers=auth(a), timeout=10
    )
    assert r.status_code == 200, r.text
    assert r.json()["frozen"] is True and r.json()["by"] == "carol" and r.json()["reason"] == "deploy window"
    r = requests.post(f"{a.control}/v1/freeze", headers=auth(a), timeout=10)
    assert r.status_code == 409 and "already frozen" in r.json()["message"]
    assert_frozen(s.patch(f"{upstream.url}/orders/1", json={"n": 1}, timeout=10), "carol", "deploy window")
    assert upstream.effects() == []

    # Without a body the API records itself as the one who acts.
    r = requests.post(f"{a.control}/v1/thaw", headers=auth(a), timeout=10)
    assert r.status_code == 200 and r.json()["frozen"] is False
    assert requests.post(f"{a.control}/v1/thaw", headers=auth(a), timeout=10).status_code == 409
    assert s.patch(f"{upstream.url}/orders/1", json={"n": 1}, timeout=10).status_code == 200
    assert [(e["kind"], e["data"]) for e in freeze_entries(a.data)] == [
        ("freeze", {"by": "carol", "reason": "deploy window"}),
        ("thaw", {"by": "control-api", "reason": ""}),
    ]


def test_a_websocket_message_while_frozen_closes_the_socket_with_try_again(
    make_airlock: Callable[..., Airlock],
) -> None:
    a = make_airlock(RULES)
    received: list[str] = []

    def echo(conn: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            for message in conn:
                text = message if isinstance(message, str) else message.decode()
                received.append(text)
                conn.send(f"echo {text}")

    port = free_port()
    with serve(echo, "127.0.0.1", port) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        with ws_connect(f"ws://127.0.0.1:{port}/socket", proxy=a.proxy, open_timeout=10) as client:
            client.send("before")
            assert client.recv(timeout=10) == "echo before"
            assert operator_cli(a.data, "freeze", "--reason", "socket storm", user="erin").returncode == 0
            client.send("after")
            with pytest.raises(ConnectionClosed) as closed:
                client.recv(timeout=10)
        server.shutdown()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
    assert "rule freeze" in closed.value.rcvd.reason and "erin froze airlock" in closed.value.rcvd.reason
    assert received == ["before"]
    sent = [(x["method"], x["state"], x["rule"]) for x in settled(a) if x["protocol"] == "ws"]
    assert sent == [("SEND", "committed", None), ("RECEIVE", "committed", None), ("SEND", "denied", "freeze")]


def text_of(result: CallToolResult) -> str:
    assert len(result.content) == 1 and isinstance(result.content[0], TextContent), result
    return result.content[0].text


def host_calls(setup: Setup, calls: list[tuple[str, dict[str, Any]]]) -> list[CallToolResult]:
    """An MCP SDK host that spawns `airlock mcp` in front of the notes server and makes `calls`."""

    async def go() -> list[CallToolResult]:
        with setup.stderr.open("a") as err, anyio.fail_after(45):
            async with (
                stdio_client(setup.params(), errlog=err) as (read, write),
                ClientSession(read, write) as s,
            ):
                await s.initialize()
                await s.list_tools()  # the tools' annotations say which calls only read
                return [await s.call_tool(name, args) for name, args in calls]

    return anyio.run(go)


def test_an_mcp_tool_call_over_stdio_while_frozen_is_a_tool_error(setup: Setup) -> None:
    write_rules(setup, "defaults: {read: allow, write: allow, destructive: allow}\n")
    # Frozen before airlock ever ran on this data dir: the freeze creates the log.
    frozen = operator_cli(setup.data, "freeze", "--reason", "audit", user="dana")
    assert frozen.returncode == 0, frozen.stderr

    write, delete, read = host_calls(
        setup,
        [
            ("write_note", {"name": "a", "text": "hello"}),
            ("delete_note", {"name": "a"}),
            ("read_note", {"name": "a"}),
        ],
    )
    for result in (write, delete):
        assert result.is_error is True
        assert "rule freeze" in text_of(result) and "dana froze airlock at" in text_of(result)
        assert "audit" in text_of(result)
    assert read.is_error is not True
    assert setup.effect_lines() == []
    calls_logged = [
        (x["tool"], x["state"], x["rule"]) for x in setup.log() if x.get("operation") == "tools/call"
    ]
    assert calls_logged == [
        ("write_note", "denied", "freeze"),
        ("delete_note", "denied", "freeze"),
        ("read_note", "committed", None),
    ]


def test_an_mcp_tool_call_over_streamable_http_while_frozen_is_a_tool_error(
    make_airlock: Callable[..., Airlock], notes_server: Callable[[str], NotesServer]
) -> None:
    server = notes_server("sse-stream")
    a = make_airlock(RULES)
    name = note()

    def freeze() -> requests.Response:
        body = {"reason": "model swap", "by": "fay"}
        return requests.post(f"{a.control}/v1/freeze", json=body, headers=auth(a), timeout=10)

    # The session starts before the freeze: until its server has shown it speaks MCP, the first
    # POST of a session counts as a write, which a freeze refuses.
    async def go() -> tuple[requests.Response, CallToolResult, CallToolResult]:
        async with connect("sse-stream", server.url, a.proxy) as s:
            await s.list_tools()
            frozen = await asyncio.to_thread(freeze)
            return (
                frozen,
                await call(s, "write_note", name=name, text="x"),
                await call(s, "read_note", name=name),
            )

    frozen, write, read = run(go())
    assert frozen.status_code == 200, frozen.text
    assert write.is_error is True
    assert "rule freeze" in text_of(write) and "fay froze airlock at" in text_of(write)
    assert "model swap" in text_of(write)
    assert read.is_error is not True
    assert server.effects(name) == []
    calls = [(x["tool"], x["state"], x["rule"]) for x in settled(a) if x.get("operation") == "tools/call"]
    assert calls == [("write_note", "denied", "freeze"), ("read_note", "committed", None)]


@pytest.mark.parametrize("tamper", ["removed", "forged", "moved"])
def test_verify_catches_a_tampered_freeze_record(
    make_airlock: Callable[..., Airlock], upstream: Upstream, tamper: str
) -> None:
    a = make_airlock(RULES)
    assert through(a).post(f"{upstream.url}/x", json={}, timeout=10).status_code == 200
    settled(a)
    assert operator_cli(a.data, "freeze", "--reason", "r").returncode == 0
    [entry] = freeze_entries(a.data)
    if tamper == "forged":
        assert operator_cli(a.data, "thaw").returncode == 0
    a.stop(signal.SIGKILL)
    assert verify(a.data).returncode == 0

    with databases(a.data) as (txn, dbs):
        if tamper == "removed":
            # Lifting the freeze behind the log's back.
            assert txn.delete(b"freeze", db=dbs["meta"])
        elif tamper == "forged":
            # A freeze the chain never made.
            txn.put(b"freeze", b'{"entry":%d}' % entry["seq"], db=dbs["meta"])
        else:
            txn.put(b"freeze", b'{"entry":1}', db=dbs["meta"])

    out = verify(a.data)
    assert out.returncode == 1, out.stdout
    said = {
        "removed": f"says the log is not frozen, the chain says it is frozen by entry {entry['seq']}",
        "forged": f"says the log is frozen by entry {entry['seq']}, the chain says it is not frozen",
        "moved": f"says the log is frozen by entry 1, the chain says it is frozen by entry {entry['seq']}",
    }[tamper]
    assert out.stdout.startswith("altered: meta: the freeze record ") and said in out.stdout, out.stdout

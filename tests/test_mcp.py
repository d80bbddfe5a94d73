"""MCP over HTTP end to end: a real MCP SDK server, a real SDK client, the real proxy between them.

Tool calls are actions (tool, arguments, effect from the server's annotations); denied calls are
tool errors that never reach the server; denied tools are hidden from `tools/list`; dedup rules
answer repeated calls from the log; streamed results pass through as they arrive; the server's
own requests (sampling, elicitation) and notifications reach the client, and its answers reach
the server. Covered over streamable HTTP (JSON and SSE answers), the legacy HTTP+SSE transport,
and reverse mode.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import requests
from mcp.shared.exceptions import MCPError
from mcp.types import CallToolResult, ErrorData

from .support import Airlock, free_port, serving, wait_for
from .support.mcp_http import Client, NotesServer, call, connect, note, run
from .support.notes import (
    NO_DELETES,
    assert_denied,
    assert_result,
    read_result,
    rules,
    settled_calls,
    texts,
    write_result,
)
from .support.scripts.notes_server import big_text

MODES = ["json", "sse-stream", "legacy-sse"]

TOOLS = {"read_note", "write_note", "delete_note", "big_note", "consult"}


# ---- tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_calls_are_decided_logged_and_denied_calls_never_reach_the_server(
    mode: str, notes_server: Callable[[str], NotesServer], make_airlock: Callable[..., Airlock]
) -> None:
    server = notes_server(mode)
    a = make_airlock(rules=rules(NO_DELETES))
    name = note()

    async def go() -> tuple[set[str], CallToolResult, CallToolResult, CallToolResult]:
        async with connect(mode, server.url, a.proxy) as s:
            listed = {t.name for t in (await s.list_tools()).tools}
            read = await call(s, "read_note", name=name)
            write = await call(s, "write_note", name=name, text="hello")
            delete = await call(s, "delete_note", name=name)
            return listed, read, write, delete

    listed, read, write, delete = run(go())
    assert listed == TOOLS - {"delete_note"}  # the deny rule hides it
    assert_result(read, read_result(name))
    assert_result(write, write_result(name, "hello"))
    denied_id = assert_denied(delete, "notes-are-kept", "Notes are never deleted; archive the note instead.")
    assert server.effects(name) == [f"write {name}"]

    by_tool = {x["tool"]: x for x in settled_calls(a, 3)}
    assert set(by_tool) == {"read_note", "write_note", "delete_note"}
    assert all(x["protocol"] == "mcp" and x["method"] == "POST" for x in by_tool.values())
    assert (by_tool["read_note"]["effect"], by_tool["read_note"]["state"]) == ("read", "committed")
    assert (by_tool["write_note"]["effect"], by_tool["write_note"]["state"]) == ("write", "committed")
    assert by_tool["read_note"]["status"] == by_tool["write_note"]["status"] == 200
    assert by_tool["write_note"]["args"] == {"name": name, "text": "hello"}
    deleted = by_tool["delete_note"]
    assert (deleted["effect"], deleted["state"], deleted["rule"]) == (
        "destructive",
        "denied",
        "notes-are-kept",
    )
    assert deleted["id"] == denied_id and deleted["args"] == {"name": name}
    # The session's other requests are reads with their JSON-RPC method as the operation, but
    # for the first initialize over streamable HTTP: until the server has answered it, nothing
    # shows that the server is MCP, so it counts as the POST it is.
    others = [x for x in a.log() if x.get("tool") is None]
    assert {"initialize", "tools/list"} <= {x.get("operation") for x in others}
    unproven = [(x["protocol"], x["operation"], x["effect"]) for x in others if x["effect"] != "read"]
    assert unproven == ([] if mode == "legacy-sse" else [("http", "initialize", "write")])


@pytest.mark.parametrize("hide", [True, False], ids=["hidden", "hide-false"])
def test_tools_a_rule_denies_outright_are_hidden_from_tools_list(
    hide: bool, notes_server: Callable[[str], NotesServer], make_airlock: Callable[..., Airlock]
) -> None:
    server = notes_server("sse-stream")
    deletes = NO_DELETES if hide else NO_DELETES + "  hide: false\n"
    x_writes = """\
- id: no-x-writes
  match: {tool: write_note, args: {properties: {name: {const: "x"}}}}
  action: deny
  message: The note x is read-only.
"""
    a = make_airlock(rules=rules(deletes, x_writes))
    name = note()

    async def go() -> tuple[set[str], CallToolResult, CallToolResult, CallToolResult]:
        async with connect("sse-stream", server.url, a.proxy) as s:
            listed = {t.name for t in (await s.list_tools()).tools}
            x = await call(s, "write_note", name="x", text="no")
            other = await call(s, "write_note", name=name, text="yes")
            delete = await call(s, "delete_note", name=name)
            return listed, x, other, delete

    listed, x, other, delete = run(go())
    # A rule that denies only some arguments does not hide the tool.
    assert listed == (TOOLS - {"delete_note"} if hide else TOOLS)
    assert_denied(x, "no-x-writes", "The note x is read-only.")
    assert_result(other, write_result(name, "yes"))
    # Listed or not, the tool is refused.
    assert_denied(delete, "notes-are-kept", "Notes are never deleted")
    assert server.effects(name) == [f"write {name}"] and server.effects("x") == []


@pytest.mark.parametrize("mode", MODES)
def test_a_repeated_call_is_answered_from_the_log(
    mode: str, notes_server: Callable[[str], NotesServer], make_airlock: Callable[..., Airlock]
) -> None:
    server = notes_server(mode)
    once = """\
- id: notes-once
  match: {tool: write_note}
  dedup: {key: "{tool} {args.name}"}
"""
    a = make_airlock(rules=rules(once))
    name, other = note(), note()

    async def go() -> list[CallToolResult]:
        async with connect(mode, server.url, a.proxy) as s:
            await s.list_tools()
            # The SDK gives each call a new JSON-RPC id and matches the answer by it: the replay
            # is addressed to the retry, or the call would time out.
            return [
                await call(s, "write_note", name=name, text="same"),
                await call(s, "write_note", name=name, text="same"),
                await call(s, "write_note", name=other, text="same"),
            ]

    first, again, different = run(go())
    assert_result(first, write_result(name, "same"))
    assert again.model_dump() == first.model_dump()
    assert_result(different, write_result(other, "same"))
    assert server.effects(name) == [f"write {name}"]
    assert server.effects(other) == [f"write {other}"]

    expected = 3
    if mode != "legacy-sse":
        # A bare retry with an id of its own gets the stored result addressed to that id.
        retry = {
            "jsonrpc": "2.0",
            "id": "retry-1",
            "method": "tools/call",
            "params": {"name": "write_note", "arguments": {"name": name, "text": "same"}},
        }
        r = requests.post(
            server.url,
            json=retry,
            headers={"Accept": "application/json, text/event-stream"},
            proxies=a.proxies,
            timeout=30,
        )
        assert r.status_code == 200
        body = r.json()
        assert body["id"] == "retry-1" and body["result"]["content"][0]["text"] == write_result(name, "same")
        assert server.effects(name) == [f"write {name}"]
        expected = 4

    calls = [x for x in settled_calls(a, expected) if x["args"]["name"] == name]
    committed = [x for x in calls if x["state"] == "committed"]
    replayed = [x for x in calls if x["state"] == "replayed"]
    assert len(committed) == 1 and committed[0]["status"] == 200
    assert len(replayed) == expected - 2
    assert all(x["replay_of"] == committed[0]["id"] and x["tool"] == "write_note" for x in replayed)


def test_rules_overrule_the_servers_annotations_per_tool(
    notes_server: Callable[[str], NotesServer], make_airlock: Callable[..., Airlock]
) -> None:
    """Annotations are the server's hints: a rule's `effect` decides which default applies."""
    server = notes_server("json")
    text = """\
version: 1
egress: {allow: [127.0.0.1]}
defaults: {destructive: deny}
rules:
  - id: writes-here-are-destructive
    match: {tool: write_note}
    effect: destructive
  - id: deletes-are-only-archived
    match: {tool: delete_note}
    effect: write
"""
    a = make_airlock(rules=text)
    name = note()

    async def go() -> tuple[CallToolResult, CallToolResult, CallToolResult]:
        async with connect("json", server.url, a.proxy) as s:
            await s.list_tools()
            read = await call(s, "read_note", name=name)
            return (
                read,
                await call(s, "write_note", name=name, text="x"),
                await call(s, "delete_note", name=name),
            )

    read, write, delete = run(go())
    assert_result(read, read_result(name))
    assert_denied(write, "defaults.destructive", "")
    assert_result(delete, f"deleted {name}")
    assert server.effects(name) == [f"delete {name}"]
    by_tool = {x["tool"]: x for x in settled_calls(a, 3)}
    assert (by_tool["read_note"]["effect"], by_tool["read_note"]["state"]) == ("read", "committed")
    assert (by_tool["write_note"]["effect"], by_tool["write_note"]["state"]) == ("destructive", "denied")
    assert by_tool["write_note"]["rule"] == "defaults.destructive"
    assert (by_tool["delete_note"]["effect"], by_tool["delete_note"]["state"]) == ("write", "committed")


@pytest.mark.parametrize(
    "base_path",
    [False, True],
    ids=["origin-then-the-client-adds-the-path", "the-server-url-as-a-base-path"],
)
def test_reverse_mode_gates_a_streamable_http_server(
    notes_server: Callable[[str], NotesServer], make_airlock: Callable[..., Airlock], base_path: bool
) -> None:
    server = notes_server("sse-stream")
    listen = free_port()
    # Either the upstream is the server's origin and the client asks for /mcp, or (the form the
    # README shows) the upstream is the endpoint's URL, path and all, and the client asks for /.
    upstream, client_url = (
        (server.url, f"http://127.0.0.1:{listen}")
        if base_path
        else (server.base, f"http://127.0.0.1:{listen}/mcp")
    )
    a = make_airlock(rules=rules(NO_DELETES), upstreams={"tools": (upstream, listen)})
    name = note()

    async def go() -> tuple[CallToolResult, CallToolResult]:
        # No proxy: the client takes the listener for the server.
        async with connect("sse-stream", client_url, None) as s:
            await s.list_tools()
            return await call(s, "write_note", name=name, text="via reverse"), await call(
                s, "delete_note", name=name
            )

    write, delete = run(go())
    assert_result(write, write_result(name, "via reverse"))
    assert_denied(delete, "notes-are-kept", "Notes are never deleted; archive the note instead.")
    assert server.effects(name) == [f"write {name}"]
    by_tool = {x["tool"]: x for x in settled_calls(a, 2)}
    assert by_tool["write_note"]["state"] == "committed" and by_tool["write_note"]["status"] == 200
    assert by_tool["write_note"]["effect"] == "write"
    assert by_tool["delete_note"]["state"] == "denied" and by_tool["delete_note"]["effect"] == "destructive"
    assert {x.get("upstream") for x in by_tool.values()} == {"tools"}
    assert {urlsplit(x["url"]).path for x in by_tool.values()} == {"/mcp"}


def test_a_big_result_streams_through_intact(
    notes_server: Callable[[str], NotesServer], make_airlock: Callable[..., Airlock]
) -> None:
    server = notes_server("sse-stream")
    a = make_airlock(rules=rules())
    size = 5_000_000

    async def go() -> CallToolResult:
        async with connect("sse-stream", server.url, a.proxy) as s:
            await s.list_tools()
            return await call(s, "big_note", size=size)

    result = run(go())
    assert not result.is_error
    [text] = texts(result)
    expected = big_text(size)
    assert len(text) == size
    assert hashlib.sha256(text.encode()).hexdigest() == hashlib.sha256(expected.encode()).hexdigest()
    [logged] = settled_calls(a, 1)
    assert (logged["tool"], logged["effect"], logged["state"], logged["status"]) == (
        "big_note",
        "read",
        "committed",
        200,
    )


@dataclass
class HeldStream:
    """A hand-written MCP upstream that answers `initialize` as an MCP server does, and a
    tools/call with an event stream, sending the first half of the event and holding the rest
    until `release` is set."""

    port: int
    text: str
    release: threading.Event
    calls: list[dict[str, Any]]

    def event(self, message_id: Any) -> bytes:
        response = {
            "jsonrpc": "2.0",
            "id": message_id,
            "result": {"content": [{"type": "text", "text": self.text}], "isError": False},
        }
        return b"event: message\ndata: " + json.dumps(response).encode() + b"\n\n"


@pytest.fixture
def held_stream() -> Iterator[HeldStream]:
    up = HeldStream(free_port(), big_text(4_000_000), threading.Event(), [])

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # the body ends when the connection closes

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            message = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if message["method"] == "initialize":
                result = {"protocolVersion": "2025-06-18", "capabilities": {}, "serverInfo": {"name": "held"}}
                answer = json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)
                return
            up.calls.append(message)
            event = up.event(message["id"])
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            half = len(event) // 2
            self.wfile.write(event[:half])
            self.wfile.flush()
            if up.release.wait(30):
                self.wfile.write(event[half:])
                self.wfile.flush()

    with serving(Handler, up.port, release=up.release):
        yield up


def test_an_event_stream_is_passed_on_as_it_arrives(
    held_stream: HeldStream, make_airlock: Callable[..., Airlock]
) -> None:
    a = make_airlock(rules=rules())
    request = {
        "jsonrpc": "2.0",
        "id": 41,
        "method": "tools/call",
        "params": {"name": "long_report", "arguments": {"pages": 900}},
    }
    expected = held_stream.event(41)
    received = bytearray()
    url = f"http://127.0.0.1:{held_stream.port}/mcp"
    # A proxy that held the event back would time this read out: the server sends no more.
    with httpx.Client(proxy=a.proxy, timeout=httpx.Timeout(30, read=10)) as client:
        initialize = {"jsonrpc": "2.0", "id": 40, "method": "initialize", "params": {}}
        assert client.post(url, json=initialize).json()["result"]["serverInfo"] == {"name": "held"}
    with (
        httpx.Client(proxy=a.proxy, timeout=httpx.Timeout(30, read=10)) as client,
        client.stream(
            "POST",
            f"http://127.0.0.1:{held_stream.port}/mcp",
            json=request,
            headers={"Accept": "application/json, text/event-stream"},
        ) as r,
    ):
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        chunks = r.iter_raw()
        received += next(chunks)
        assert not held_stream.release.is_set()
        assert 0 < len(received) <= len(expected) // 2
        assert expected.startswith(bytes(received))
        held_stream.release.set()
        for chunk in chunks:
            received += chunk

    assert bytes(received) == expected
    assert received.startswith(b"event: message\ndata: ") and received.endswith(b"\n\n")
    data = json.loads(bytes(received).removeprefix(b"event: message\ndata: "))
    assert data["id"] == 41 and data["result"]["content"][0]["text"] == held_stream.text
    assert held_stream.calls == [request]
    [logged] = settled_calls(a, 1)
    assert (logged["tool"], logged["args"], logged["state"], logged["status"]) == (
        "long_report",
        {"pages": 900},
        "committed",
        200,
    )


@pytest.mark.parametrize(
    "body",
    [
        {"jsonrpc": "2.0", "method": 5, "id": 1},
        {"jsonrpc": "2.0", "method": "tools/call", "id": 2, "params": {"arguments": {}}},
        [{"jsonrpc": "2.0", "method": "ping", "id": 3}, {"method": "ping", "id": 4, "jsonrpc": "1.0"}],
    ],
    ids=["method-not-a-string", "call-without-a-name", "batch-with-a-bad-member"],
)
def test_malformed_jsonrpc_is_refused_with_a_jsonrpc_error(
    body: Any, notes_server: Callable[[str], NotesServer], make_airlock: Callable[..., Airlock]
) -> None:
    server = notes_server("json")
    a = make_airlock(rules=rules())

    async def introduce() -> None:
        async with connect("json", server.url, a.proxy):
            pass  # the server answers initialize: it has shown it is MCP

    run(introduce())
    r = requests.post(server.url, json=body, proxies=a.proxies, timeout=30)
    assert r.status_code == 400
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()
    assert error["jsonrpc"] == "2.0" and error["id"] is None
    assert error["error"]["code"] == -32600 and "nothing was forwarded" in error["error"]["message"]
    # The refusal, whatever else the session logs around it.
    refused: list[dict[str, Any]] = []

    def logged() -> bool:
        refused[:] = [x for x in a.log() if x["state"] == "denied"]
        return refused != []

    wait_for(logged, "the refusal is logged")
    [refusal] = refused
    assert (refusal["method"], refusal["url"]) == ("POST", server.url)


# ---- the server's requests and notifications ------------------------------------------------


def client_responses(a: Airlock, n: int) -> list[dict[str, Any]]:
    """The log's client responses (to the server's requests) once there are `n`, all settled."""
    found: list[dict[str, Any]] = []

    def done() -> bool:
        found[:] = [x for x in a.log() if x.get("operation") == "response"]
        return len(found) == n and all(x["state"] != "pending" for x in found)

    wait_for(done, f"{n} client responses are settled in the log")
    return found


def assert_passed_both_ways(a: Airlock, args: dict[str, Any]) -> None:
    """The log: one committed `consult` call, the client's two responses to the server's requests
    logged as reads while it ran, and nothing refused."""
    [logged] = settled_calls(a, 1)
    assert (logged["tool"], logged["args"], logged["state"], logged["status"]) == (
        "consult",
        args,
        "committed",
        200,
    )
    responses = client_responses(a, 2)
    assert all(x["protocol"] == "mcp" and x["method"] == "POST" and x["effect"] == "read" for x in responses)
    assert all(x["state"] == "committed" and x["rule"] is None for x in responses), responses
    # The client answered while the call was open (after its intent, before its outcome), where
    # the session POSTs its messages.
    assert all(x["id"] > logged["id"] and x["ts"] <= logged["updated"] for x in responses), responses
    assert all(x["url"] == logged["url"] for x in responses), responses
    log = a.log()
    assert not [x for x in log if x["state"] in ("denied", "held", "fenced", "failed")], log
    assert all(x["rule"] is None for x in log), log


@pytest.mark.parametrize("mode", ["sse-stream", "legacy-sse"])
def test_server_requests_and_notifications_pass_through_both_ways(
    mode: str, notes_server: Callable[[str], NotesServer], make_airlock: Callable[..., Airlock]
) -> None:
    """Inside a call, the server logs, reports progress, samples the client's model and elicits
    from its user, all on the call's own stream; the result is built from the client's answers."""
    server = notes_server(mode)
    a = make_airlock(rules=rules(NO_DELETES))
    client, topic = Client(), note()

    async def go() -> CallToolResult:
        async with connect(mode, server.url, a.proxy, client) as s:
            await s.list_tools()
            return await s.call_tool(
                "consult", {"topic": topic}, read_timeout_seconds=20, progress_callback=client.on_progress
            )

    result = run(go())
    # The client's answers reached the server: the result is made of them.
    assert_result(result, client.result(topic))
    client.assert_asked(topic)
    client.assert_logged(topic)
    assert client.progress == [(1, 2, f"sampling on {topic}"), (2, 2, f"asking about {topic}")]
    assert_passed_both_ways(a, {"topic": topic})


def test_server_requests_on_the_sessions_stream_pass_through_in_json_mode(
    notes_server: Callable[[str], NotesServer], make_airlock: Callable[..., Airlock]
) -> None:
    """A JSON answer cannot carry the server's requests, but the session's GET stream can: the
    server asks there, the client answers in POSTs of their own, the result comes back as JSON."""
    server = notes_server("json")
    a = make_airlock(rules=rules(NO_DELETES))
    client, topic = Client(), note()

    async def go() -> CallToolResult:
        async with connect("json", server.url, a.proxy, client) as s:
            await client.stream_open()
            return await call(s, "consult", topic=topic, standalone=True)

    result = run(go())
    assert_result(result, client.result(topic))
    client.assert_asked(topic)
    client.assert_logged(topic)
    streams = [x for x in a.log() if x.get("operation") == "session/stream"]
    assert streams and all(x["method"] == "GET" and x["effect"] == "read" for x in streams)
    assert_passed_both_ways(a, {"topic": topic, "standalone": True})


@pytest.mark.parametrize("mode", ["sse-stream", "legacy-sse"])
def test_a_clients_error_answer_to_the_server_passes_through(
    mode: str, notes_server: Callable[[str], NotesServer], make_airlock: Callable[..., Airlock]
) -> None:
    """The client answers the server's sampling request with a JSON-RPC error; the server gets it
    and fails the call with that error, which comes back to the client."""
    server = notes_server(mode)
    a = make_airlock(rules=rules())
    client, topic = Client(), note()
    refusal = client.refusal = ErrorData(
        code=-32042, message=f"the user does not share the model [{client.nonce}]"
    )

    async def go() -> MCPError:
        async with connect(mode, server.url, a.proxy, client) as s:
            await s.list_tools()
            with pytest.raises(MCPError) as raised:
                await call(s, "consult", topic=topic)
            return raised.value

    error = run(go())
    assert (error.error.code, error.error.message) == (refusal.code, refusal.message)
    assert len(client.sampled) == 1 and client.elicited == []
    [logged] = settled_calls(a, 1)
    # A JSON-RPC error to the call: a 502 in the log; the client's error answer is a read.
    assert (logged["tool"], logged["state"], logged["status"]) == ("consult", "committed", 502)
    [response] = client_responses(a, 1)
    assert (response["effect"], response["state"], response["rule"]) == ("read", "committed", None)
    assert response["id"] > logged["id"] and response["url"] == logged["url"]


def test_a_held_tool_call_over_streamable_http_runs_once_when_approved(
    notes_server: Callable[[str], NotesServer], make_airlock: Callable[..., Airlock]
) -> None:
    server = notes_server("sse-stream")
    a = make_airlock(
        rules="version: 1\negress: {allow: [127.0.0.1]}\nhold: {wait: 0s}\n"
        "rules:\n  - {id: deletes-need-a-person, match: {tool: delete_note}, action: hold}\n"
    )
    name = note()

    async def go() -> tuple[CallToolResult, CallToolResult]:
        async with connect("sse-stream", server.url, a.proxy) as s:
            held = await call(s, "delete_note", name=name)
            [waiting] = a.log("--state", "held")
            a.cli("approve", str(waiting["id"]), "--voter", "alice", "--reason", "cleanup")
            return held, await call(s, "delete_note", name=name)

    held, ran = run(go())
    assert held.is_error and "awaits approval" in held.content[0].text  # type: ignore[union-attr]
    assert_result(ran, f"deleted {name}")
    assert server.effects(name) == [f"delete {name}"]
    [logged] = settled_calls(a, 1)
    assert (logged["tool"], logged["state"], logged["rule"]) == (
        "delete_note",
        "committed",
        "deletes-need-a-person",
    )

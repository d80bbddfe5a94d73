"""MCP over HTTP end to end: a real MCP SDK server, a real SDK client, the real proxy between them.

Tool calls are actions (tool, arguments, effect from the server's annotations); denied calls are
tool errors that never reach the server; denied tools are hidden from `tools/list`; dedup rules
answer repeated calls from the log; streamed results pass through as they arrive; the server's
own requests (sampling, elicitation) and notifications reach the client, and its answers reach
the server. Covered over streamable HTTP (JSON and SSE answers), the legacy HTTP+SSE transport,
and reverse mode.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
import requests
from mcp import ClientSession
from mcp.client.session import ClientRequestContext
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.types import (
    CallToolResult,
    CreateMessageRequestParams,
    CreateMessageResult,
    ElicitRequestFormParams,
    ElicitRequestParams,
    ElicitResult,
    ErrorData,
    LoggingMessageNotificationParams,
    TextContent,
)

from .support import Airlock, environ_without_proxy, free_port, serving, wait_for

MODES = ["json", "sse-stream", "legacy-sse"]

# The MCP server: three note tools whose effects (writes, deletes) are appended to a file, a
# read-only tool with a big result, and `consult`, which logs, reports progress, and asks the
# client's model (sampling) and user (elicitation) before it answers. argv: port, mode, effects file.
SERVER = """\
import base64, hashlib, sys
from pydantic import BaseModel
from mcp.server.elicitation import elicit_with_validation
from mcp.server.mcpserver import Context, MCPServer
from mcp.types import SamplingMessage, TextContent, ToolAnnotations

port, mode, effects = int(sys.argv[1]), sys.argv[2], sys.argv[3]
app = MCPServer("notes")


def record(line: str) -> None:
    with open(effects, "a") as f:
        f.write(line + "\\n")


@app.tool(annotations=ToolAnnotations(readOnlyHint=True))
def read_note(name: str) -> str:
    return f"the note {name} says hello"


@app.tool()
def write_note(name: str, text: str) -> str:
    record(f"write {name}")
    return f"wrote {len(text)} characters to {name}"


@app.tool(annotations=ToolAnnotations(destructiveHint=True))
def delete_note(name: str) -> str:
    record(f"delete {name}")
    return f"deleted {name}"


@app.tool(annotations=ToolAnnotations(readOnlyHint=True))
def big_note(size: int) -> str:
    return base64.b64encode(hashlib.shake_256(b"airlock").digest(size)).decode()[:size]


class Colour(BaseModel):
    colour: str


@app.tool()
async def consult(topic: str, ctx: Context, standalone: bool = False) -> str:
    # Logs, reports progress, asks the client's model and then its user; the result says what
    # they answered. standalone: the log and the requests go on the session's own stream.
    related = None if standalone else ctx.request_id
    await ctx.session.send_log_message("info", f"consulting on {topic}", "notes", related)
    await ctx.report_progress(1, 2, f"sampling on {topic}")
    prompt = SamplingMessage(role="user", content=TextContent(type="text", text=f"Summarize {topic}"))
    sampled = await ctx.session.create_message([prompt], max_tokens=64, related_request_id=related)
    await ctx.report_progress(2, 2, f"asking about {topic}")
    asked = await elicit_with_validation(ctx.session, f"Which colour is {topic}?", Colour, related)
    colour = asked.data.colour if asked.action == "accept" else asked.action
    return f"{sampled.model} said {sampled.content.text!r}; {topic} is {colour}"


if mode == "legacy-sse":
    app.run("sse", host="127.0.0.1", port=port)
else:
    app.run("streamable-http", host="127.0.0.1", port=port, json_response=(mode == "json"))
"""

TOOLS = {"read_note", "write_note", "delete_note", "big_note", "consult"}


def big_text(size: int) -> str:
    """What `big_note` returns."""
    return base64.b64encode(hashlib.shake_256(b"airlock").digest(size)).decode()[:size]


def read_result(name: str) -> str:
    return f"the note {name} says hello"


def write_result(name: str, text: str) -> str:
    return f"wrote {len(text)} characters to {name}"


def rules(*extra: str) -> str:
    """A rules file allowing loopback, with `extra` rules (YAML list items)."""
    body = "".join(f"  {line}\n" for rule in extra for line in rule.strip().splitlines())
    return f"version: 1\negress:\n  allow: [127.0.0.1]\nrules:\n{body or '  []\n'}"


NO_DELETES = """\
- id: notes-are-kept
  match: {tool: delete_note}
  action: deny
  message: Notes are never deleted; archive the note instead.
"""


# ---- the MCP server -------------------------------------------------------------------------


@dataclass
class NotesServer:
    """The MCP server process in one transport mode, and the effects it has had."""

    mode: str
    port: int
    effects_file: Path
    proc: subprocess.Popen[bytes]

    @property
    def base(self) -> str:
        """The server's origin."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def path(self) -> str:
        """The endpoint a client connects to."""
        return "/sse" if self.mode == "legacy-sse" else "/mcp"

    @property
    def url(self) -> str:
        """The endpoint's URL."""
        return self.base + self.path

    def effects(self, name: str) -> list[str]:
        """Effects on the note `name` so far, as `write NAME` / `delete NAME` lines."""
        if not self.effects_file.exists():
            return []
        lines = self.effects_file.read_text().splitlines()
        return [line for line in lines if line.split(" ", 1)[1] == name]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def notes_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], NotesServer]]:
    """A factory for the MCP server in a transport mode: one process per mode for the module,
    each test working on notes of its own names."""
    root = tmp_path_factory.mktemp("mcp-server")
    script = root / "server.py"
    script.write_text(SERVER)
    servers: dict[str, NotesServer] = {}

    def get(mode: str) -> NotesServer:
        if mode in servers:
            return servers[mode]
        port = free_port()
        out = (root / f"{mode}.out").open("wb")
        proc = subprocess.Popen(
            [sys.executable, str(script), str(port), mode, str(root / f"{mode}.effects")],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=environ_without_proxy(),
        )
        server = servers[mode] = NotesServer(mode, port, root / f"{mode}.effects", proc)

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"the {mode} server exited: {(root / f'{mode}.out').read_text()}")
            return _listening(port)

        wait_for(up, f"the {mode} MCP server listens")
        return server

    try:
        yield get
    finally:
        for server in servers.values():
            server.proc.kill()
            server.proc.wait(10)


def note() -> str:
    """A note name no other test uses (the server is shared)."""
    return f"n-{uuid.uuid4().hex[:10]}"


# ---- the client -----------------------------------------------------------------------------


@dataclass
class Client:
    """The host's side of the server's requests: a model that answers `sampling/createMessage`,
    a user who answers `elicitation/create`, and what the server told it on the way (log
    messages, progress). Answers carry a nonce, so a result that holds them holds this client's."""

    nonce: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    sampled: list[CreateMessageRequestParams] = field(default_factory=list)
    elicited: list[ElicitRequestParams] = field(default_factory=list)
    logs: list[LoggingMessageNotificationParams] = field(default_factory=list)
    progress: list[tuple[float, float | None, str | None]] = field(default_factory=list)
    get_streams: int = 0
    refusal: ErrorData | None = None  # the model's answer instead of a message, when set

    MODEL = "airlock-test-model"

    @property
    def colour(self) -> str:
        """What the user answers."""
        return f"teal-{self.nonce}"

    def completion(self, prompt: str) -> str:
        """What the model answers to `prompt`."""
        return f"{prompt[::-1]} [{self.nonce}]"

    def result(self, topic: str) -> str:
        """What `consult(topic)` returns when both answers reached the server."""
        return f"{self.MODEL} said {self.completion(f'Summarize {topic}')!r}; {topic} is {self.colour}"

    async def sample(
        self, context: ClientRequestContext, params: CreateMessageRequestParams
    ) -> CreateMessageResult | ErrorData:
        self.sampled.append(params)
        if self.refusal is not None:
            return self.refusal
        prompt = params.messages[-1].content
        text = prompt.text if isinstance(prompt, TextContent) else repr(prompt)
        return CreateMessageResult(
            role="assistant",
            content=TextContent(type="text", text=self.completion(text)),
            model=self.MODEL,
            stop_reason="endTurn",
        )

    async def elicit(self, context: ClientRequestContext, params: ElicitRequestParams) -> ElicitResult:
        self.elicited.append(params)
        return ElicitResult(action="accept", content={"colour": self.colour})

    async def log(self, params: LoggingMessageNotificationParams) -> None:
        self.logs.append(params)

    async def on_progress(self, progress: float, total: float | None, message: str | None) -> None:
        self.progress.append((progress, total, message))

    async def _seen(self, response: httpx2.Response) -> None:
        if response.request.method == "GET" and response.status_code == 200:
            self.get_streams += 1

    def hooks(self) -> dict[str, list[Callable[[httpx2.Response], Coroutine[Any, Any, None]]]]:
        """httpx event hooks that count the session's GET streams as they open (streamable HTTP)."""
        return {"response": [self._seen]}

    async def stream_open(self) -> None:
        """Wait until the session's GET stream is open: the server drops requests it sends on the
        session's own stream while there is none."""
        with anyio.fail_after(10):
            while not self.get_streams:
                await anyio.sleep(0.01)

    def callbacks(self) -> dict[str, Any]:
        """`ClientSession` keyword arguments that route the server's messages here."""
        return {
            "sampling_callback": self.sample,
            "elicitation_callback": self.elicit,
            "logging_callback": self.log,
        }

    def assert_asked(self, topic: str) -> None:
        """The server's requests reached the callbacks whole, one of each."""
        [sampled] = self.sampled
        assert sampled.max_tokens == 64
        assert [(m.role, m.content) for m in sampled.messages] == [
            ("user", TextContent(type="text", text=f"Summarize {topic}"))
        ]
        [elicited] = self.elicited
        assert isinstance(elicited, ElicitRequestFormParams), elicited
        assert elicited.message == f"Which colour is {topic}?"
        assert elicited.requested_schema["properties"]["colour"]["type"] == "string"
        assert elicited.requested_schema["required"] == ["colour"]

    def assert_logged(self, topic: str) -> None:
        """The server's log message reached the logging callback."""
        assert [(m.level, m.logger, m.data) for m in self.logs] == [
            ("info", "notes", f"consulting on {topic}")
        ]


@asynccontextmanager
async def connect(
    mode: str, url: str, proxy: str | None, client: Client | None = None
) -> AsyncIterator[ClientSession]:
    """An initialized SDK client session to `url`, through `proxy` when given; `client` answers
    the server's requests and takes its notifications."""
    callbacks = client.callbacks() if client is not None else {}
    if mode == "legacy-sse":

        def factory(
            headers: dict[str, str] | None = None,
            timeout: httpx2.Timeout | None = None,
            auth: httpx2.Auth | None = None,
        ) -> httpx2.AsyncClient:
            return httpx2.AsyncClient(proxy=proxy, headers=headers, timeout=timeout, auth=auth)

        async with (
            sse_client(url, timeout=30, httpx_client_factory=factory) as streams,
            ClientSession(streams[0], streams[1], **callbacks) as session,
        ):
            await session.initialize()
            yield session
        return
    async with (
        httpx2.AsyncClient(
            proxy=proxy, timeout=httpx2.Timeout(30, read=60), event_hooks=client.hooks() if client else None
        ) as http,
        # Results of several MB arrive as one event; the SDK's default cap is 1 MB.
        streamable_http_client(url, http_client=http, max_sse_event_size=64 * 1024 * 1024) as streams,
        ClientSession(streams[0], streams[1], **callbacks) as session,
    ):
        await session.initialize()
        yield session


def run[T](coro: Coroutine[Any, Any, T]) -> T:
    """Run a client coroutine; a lost answer fails the test instead of hanging it."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, 60)

    return asyncio.run(bounded())


async def call(session: ClientSession, tool: str, **args: Any) -> CallToolResult:
    return await session.call_tool(tool, args, read_timeout_seconds=20)


def texts(result: CallToolResult) -> list[str]:
    return [c.text for c in result.content if c.type == "text"]


def assert_result(result: CallToolResult, text: str) -> None:
    """The server's own result for a tool that returns `text`, unchanged."""
    assert not result.is_error, texts(result)
    assert texts(result) == [text]
    assert result.structured_content in (None, {"result": text})


def assert_denied(result: CallToolResult, rule: str, message: str) -> int:
    """A refusal naming the rule and its message; returns the airlock action id it names."""
    assert result.is_error
    [text] = texts(result)
    assert f"rule {rule}" in text and message in text, text
    return int(text.split("airlock action ")[1].split(")")[0])


# ---- the log --------------------------------------------------------------------------------


def tool_calls(a: Airlock) -> list[dict[str, Any]]:
    """The tools/call actions in the log, oldest first."""
    return [x for x in a.log() if x.get("operation") == "tools/call"]


def settled_calls(a: Airlock, n: int) -> list[dict[str, Any]]:
    """The log's tool calls once there are `n` and none is still pending."""
    found: list[dict[str, Any]] = []

    def done() -> bool:
        found[:] = tool_calls(a)
        return len(found) == n and all(x["state"] != "pending" for x in found)

    wait_for(done, f"{n} tool calls are settled in the log")
    return found


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


def test_reverse_mode_gates_a_streamable_http_server(
    notes_server: Callable[[str], NotesServer], make_airlock: Callable[..., Airlock]
) -> None:
    server = notes_server("sse-stream")
    listen = free_port()
    a = make_airlock(rules=rules(NO_DELETES), upstreams={"tools": (server.base, listen)})
    name = note()

    async def go() -> tuple[CallToolResult, CallToolResult]:
        # No proxy: the client takes the listener for the server.
        async with connect("sse-stream", f"http://127.0.0.1:{listen}/mcp", None) as s:
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
    before = len(a.log())
    r = requests.post(server.url, json=body, proxies=a.proxies, timeout=30)
    assert r.status_code == 400
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()
    assert error["jsonrpc"] == "2.0" and error["id"] is None
    assert error["error"]["code"] == -32600 and "nothing was forwarded" in error["error"]["message"]
    wait_for(lambda: len(a.log()) == before + 1, "the refusal is logged")
    logged = a.log()[-1]
    assert (logged["method"], logged["state"]) == ("POST", "denied")


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

"""The MCP tests' HTTP side: the notes server as a process in each transport mode, and a real MCP
SDK client session to it (through airlock when given a proxy) with a host that answers the
server's own requests."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
import httpx2
from mcp import ClientSession
from mcp.client.session import ClientRequestContext
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
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

from .clients import environ_without_proxy
from .upstream import free_port
from .waiting import wait_for

NOTES_SERVER = Path(__file__).parent / "scripts" / "notes_server.py"


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


def listening(port: int) -> bool:
    """Whether something accepts connections on loopback `port`."""
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class NotesServers:
    """The notes server in each transport mode it is asked for, one process per mode, all under
    `root`; every process is killed when the block ends."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.servers: dict[str, NotesServer] = {}

    def get(self, mode: str) -> NotesServer:
        """The server in `mode` (json, sse-stream or legacy-sse), started on first use."""
        if mode in self.servers:
            return self.servers[mode]
        root, port = self.root, free_port()
        out = (root / f"{mode}.out").open("wb")
        effects = root / f"{mode}.effects"
        proc = subprocess.Popen(
            [sys.executable, str(NOTES_SERVER), str(effects), "--http", mode, "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=environ_without_proxy(),
        )
        server = self.servers[mode] = NotesServer(mode, port, effects, proc)

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"the {mode} server exited: {(root / f'{mode}.out').read_text()}")
            return listening(port)

        wait_for(up, f"the {mode} MCP server listens")
        return server

    def __enter__(self) -> NotesServers:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        for server in self.servers.values():
            server.proc.kill()
            server.proc.wait(10)


def note() -> str:
    """A note name no other test uses (the server is shared)."""
    return f"n-{uuid.uuid4().hex[:10]}"


# ---- the client ----------------------------------------------------------------------------


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
        """The model: answers `sampling/createMessage` (or refuses, when `refusal` is set)."""
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
        """The user: accepts `elicitation/create` with `colour`."""
        self.elicited.append(params)
        return ElicitResult(action="accept", content={"colour": self.colour})

    async def log(self, params: LoggingMessageNotificationParams) -> None:
        """Keeps the server's log message."""
        self.logs.append(params)

    async def on_progress(self, progress: float, total: float | None, message: str | None) -> None:
        """Keeps the server's progress notification."""
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
    """`tool` called with `args`; an answer that does not come in 20 s is an error."""
    return await session.call_tool(tool, args, read_timeout_seconds=20)

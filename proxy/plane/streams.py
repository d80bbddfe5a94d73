"""MCP over HTTP: streamable HTTP (JSON or server-sent event answers) and the legacy HTTP+SSE
transport, as the gate sees them in mitmproxy flows.

A POSTed JSON-RPC body goes through `ToolCalls.send`. Answers come back in the POST's own
response (streamable HTTP: JSON, or an event stream that is passed on event by event), or on
a separate event stream (legacy SSE: the stream's `endpoint` event names the URL its session
POSTs to, and that URL is the channel its responses come back on).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

from mitmproxy import http

from proxy.core.tracking import Meter
from proxy.mcp import messages as mcp
from proxy.mcp.evidence import Evidence, Introduction
from proxy.mcp.readings import server_of
from proxy.mcp.toolcalls import ToolCalls
from rules import Action

logger = logging.getLogger(__name__)


@dataclass
class Exchange:
    """A POST of JSON-RPC messages that were forwarded: where their answers come back."""

    channel: str
    server: str
    action: Action
    own_channel: bool  # the channel is this exchange alone (streamable HTTP), not a legacy session


def json_answer(answers: list[dict[str, Any]], batch: bool, status: int = 200) -> http.Response:
    """Answers given in place of the server, as the JSON body of a 200 (202 when there are none)."""
    if not answers:
        return http.Response.make(202, b"")
    body = answers if batch else answers[0]
    return http.Response.make(status, json.dumps(body).encode(), {"Content-Type": "application/json"})


def receive_json(calls: ToolCalls, exchange: Exchange, response: http.Response) -> None:
    """Complete the calls a JSON response answers, rewriting `tools/list` results if needed."""
    if "application/json" not in response.headers.get("content-type", "") or not response.content:
        return
    try:
        body = json.loads(response.content)
    except ValueError:
        return
    raw = response.content if isinstance(body, dict) else None
    items = body if isinstance(body, list) else [body]
    out = [
        calls.receive(m, raw, channel=exchange.channel, server=exchange.server, base=exchange.action)
        for m in items
    ]
    if any(a is not b for a, b in zip(out, items, strict=True)):
        response.content = json.dumps(out if isinstance(body, list) else out[0]).encode()


class EventStream:
    """A text/event-stream passed on as it arrives, its JSON-RPC messages read on the way.

    Events are passed on unchanged, chunk by chunk, except while a response that will be
    rewritten is due on the channel: then whole events are passed on, so that it can be. If
    reading the stream fails, the calls due on its channel get an error outcome, and the rest
    of the stream passes on unread.
    """

    def __init__(
        self,
        calls: ToolCalls,
        *,
        url: str,
        action: Action,
        channel: str | None,
        evidence: Evidence | None = None,
        introduction: tuple[Introduction, str | None] | None = None,
        meter: Meter | None = None,
    ):
        self.calls = calls
        self.evidence = evidence
        self.introduction = introduction  # `initialize` requests answered here, and the session id
        self.broken = False
        self.url = url
        self.action = action
        self.server = server_of(action)
        self.channel = channel
        self.meter = meter
        self.splitter = mcp.SseSplitter()

    def __call__(self, chunk: bytes) -> bytes:
        if self.meter is not None:
            self.meter(chunk)
        if self.broken:
            return chunk
        # What was held back and not passed on yet: on a failure it goes on as it came.
        held = self.splitter.unsent()
        try:
            return self._pass(chunk)
        except Exception as e:
            logger.exception("airlock: could not read an event stream from %s", self.url)
            self.broken = True
            self.end(f"airlock could not read the event stream: {e!r}")
            return held + chunk

    def _rewriting(self) -> bool:
        return self.channel is not None and self.calls.rewrites_due(self.channel)

    def _pass(self, chunk: bytes) -> bytes:
        rewrite = self._rewriting()
        # Held back while a rewrite was due, and not passed on yet: it goes first.
        unsent = b"" if rewrite else self.splitter.unsent()
        out = []
        for raw, sep, emitted in self.splitter.feed(chunk):
            new = self._event(raw)
            if rewrite:
                out.append((raw + sep)[emitted:] if emitted else (new or raw) + sep)
        if not chunk:  # the end of the stream
            out.append(self.splitter.rest())
            self.end("the event stream ended before the response to this call")
            return b"".join(out)
        if not rewrite:
            self.splitter.emitted = self.splitter.pending
            return unsent + chunk
        return b"".join(out)

    def _event(self, raw: bytes) -> bytes | None:
        event = mcp.SseEvent.parse(raw)
        if event.event == "endpoint":
            # Legacy SSE: this session POSTs to the URL the event names; its answers come here.
            posts_to = urljoin(self.url, event.data.strip())
            if self.evidence is not None and not self.evidence.announce(self.url, posts_to):
                return None  # another origin: this stream cannot vouch for it
            self.channel = posts_to
            self.calls.open_session(posts_to)
            return None
        if self.introduction is not None:
            introduction, session = self.introduction
            message = event.json()
            for m in message if isinstance(message, list) else [message]:
                introduction.answered(m, session)
        if self.channel is None:
            return None
        message = event.json()
        if isinstance(message, list):
            out = [self._receive(m, None) for m in message]
            changed = any(a is not b for a, b in zip(out, message, strict=True))
            return event.with_data(out) if changed else None
        new = self._receive(message, event.data.encode())
        return event.with_data(new) if new is not message else None

    def _receive(self, message: Any, raw: bytes | None) -> Any:
        assert self.channel is not None
        return self.calls.receive(message, raw, channel=self.channel, server=self.server, base=self.action)

    def end(self, error: str) -> None:
        """The stream is over: calls still waiting on its channel got no answer."""
        if self.channel is not None:
            self.calls.close(self.channel, error)

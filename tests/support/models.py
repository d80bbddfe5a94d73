"""A model provider on loopback: answers as Anthropic Messages, OpenAI Chat Completions,
Completions and Responses, and Gemini generateContent do, streamed and not.

A real provider cannot be reached from here (this machine has no network but package
registries), so this server follows the providers' published wire formats closely enough that
the official `openai` and `anthropic` SDKs parse its answers (text, tool calls, usage) as they
parse a real provider's (tests/test_llm_wire.py shows it). It records every request it receives
(method, path, headers, JSON body, arrival time). A test scripts the next answers with
`ModelServer.answer(Turn(...))`: text or tool calls, and the usage to report; a turn with
`hold` keeps its stream open after the first events until the test sets the event (to kill a
proxy mid-stream), and `ModelServer.holding` says when a stream has reached that point.

Paths: `/v1/messages` (any prefix before `/messages`), `.../chat/completions`, `.../completions`,
`.../responses`, `.../models/MODEL:generateContent` and `:streamGenerateContent` (SSE with
`alt=sse`, else a JSON array). Anything else answers 404 in OpenAI's error shape.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .upstream import free_port

_ids = itertools.count(1)


def _id(prefix: str) -> str:
    return f"{prefix}{next(_ids):06d}"


@dataclass(frozen=True)
class ToolCall:
    """A tool call a scripted answer proposes."""

    name: str
    arguments: dict[str, Any]
    id: str | None = None  # the provider's id for the call; made up when None


@dataclass(frozen=True)
class Turn:
    """One scripted answer: its text, the tool calls it proposes and the usage it reports
    (`input_tokens` counts the whole prompt, `cached_tokens` of it were read from cache).
    `status` other than 200 answers with the provider's error instead. `hold`: a stream stops
    after its first events (a non-streamed answer before anything) until the event is set."""

    text: str = "Hello from the model."
    calls: tuple[ToolCall, ...] = ()
    input_tokens: int = 12
    output_tokens: int = 8
    cached_tokens: int = 0
    model: str | None = None  # the model the answer names; the request's when None
    status: int = 200
    hold: threading.Event | None = None


@dataclass(frozen=True)
class Received:
    """One request as the server received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    json: Any  # the body as JSON; None when it is not
    at: float  # time.time() when it arrived


@dataclass
class ModelServer:
    """The server's address, its script, and every request it has received."""

    port: int = field(default_factory=free_port)
    received: list[Received] = field(default_factory=list)
    script: deque[Turn] = field(default_factory=deque)
    default: Turn = field(default_factory=Turn)
    holding: threading.Event = field(default_factory=threading.Event)
    held: list[threading.Event] = field(default_factory=list)  # the holds answers wait on
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        """Base URL: the anthropic SDK's `base_url`, and Gemini's."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_url(self) -> str:
        """The openai SDK's `base_url`."""
        return f"{self.url}/v1"

    def answer(self, *turns: Turn) -> None:
        """Script the next answers, in order; once they are used, `default` answers."""
        with self.lock:
            self.script.extend(turns)

    def requests(self, path: str | None = None) -> list[Received]:
        """Requests received so far, optionally those to one path."""
        with self.lock:
            return [r for r in self.received if path is None or r.path == path]

    def next_turn(self) -> Turn:
        """The next scripted answer."""
        with self.lock:
            return self.script.popleft() if self.script else self.default


# ---- the answers, per API ---------------------------------------------------------------------


def _arguments(call: ToolCall) -> str:
    return json.dumps(call.arguments)


def _fragments(text: str, size: int = 7) -> list[str]:
    """A string cut as providers stream it: in small pieces, anywhere."""
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


class Answer:
    """The events (streamed) or the document (not) one API answers a turn with."""

    def __init__(self, turn: Turn, model: str):
        self.turn = turn
        self.model = turn.model or model

    def whole(self) -> dict[str, Any]:
        raise NotImplementedError

    def events(self) -> Iterator[tuple[str | None, dict[str, Any]]]:
        """(event name, data) pairs, in order; the first is sent before any hold."""
        raise NotImplementedError

    def error(self) -> dict[str, Any]:
        return {
            "error": {"message": f"scripted error {self.turn.status}", "type": "server_error", "code": None}
        }

    done_marker = False  # OpenAI closes a chat stream with `data: [DONE]`


class AnthropicAnswer(Answer):
    """Anthropic Messages (input_tokens excludes cache reads, reported beside it)."""

    def usage(self, output: int) -> dict[str, Any]:
        t = self.turn
        return {
            "input_tokens": t.input_tokens - t.cached_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": t.cached_tokens,
            "output_tokens": output,
        }

    def _calls(self) -> list[tuple[str, ToolCall]]:
        return [(c.id or _id("toolu_"), c) for c in self.turn.calls]

    def whole(self) -> dict[str, Any]:
        content: list[dict[str, Any]] = [{"type": "text", "text": self.turn.text}] if self.turn.text else []
        content += [
            {"type": "tool_use", "id": i, "name": c.name, "input": c.arguments} for i, c in self._calls()
        ]
        return {
            "id": _id("msg_"),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": "tool_use" if self.turn.calls else "end_turn",
            "stop_sequence": None,
            "usage": self.usage(self.turn.output_tokens),
        }

    def events(self) -> Iterator[tuple[str | None, dict[str, Any]]]:
        message = self.whole() | {"content": [], "stop_reason": None, "usage": self.usage(1)}
        yield "message_start", {"type": "message_start", "message": message}
        index = 0
        if self.turn.text:
            yield (
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            )
            yield "ping", {"type": "ping"}
            for piece in _fragments(self.turn.text):
                yield (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": piece},
                    },
                )
            yield "content_block_stop", {"type": "content_block_stop", "index": 0}
            index = 1
        for i, call in self._calls():
            block = {"type": "tool_use", "id": i, "name": call.name, "input": {}}
            yield (
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": block},
            )
            for piece in _fragments(_arguments(call)):
                yield (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": piece},
                    },
                )
            yield "content_block_stop", {"type": "content_block_stop", "index": index}
            index += 1
        stop = "tool_use" if self.turn.calls else "end_turn"
        yield (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": self.turn.output_tokens},
            },
        )
        yield "message_stop", {"type": "message_stop"}

    def error(self) -> dict[str, Any]:
        kind = "rate_limit_error" if self.turn.status == 429 else "api_error"
        return {"type": "error", "error": {"type": kind, "message": f"scripted error {self.turn.status}"}}


class ChatAnswer(Answer):
    """OpenAI Chat Completions."""

    done_marker = True

    def __init__(self, turn: Turn, model: str, include_usage: bool = False):
        super().__init__(turn, model)
        self.include_usage = include_usage
        self.id = _id("chatcmpl-")
        self.created = int(time.time())

    def usage(self) -> dict[str, Any]:
        t = self.turn
        return {
            "prompt_tokens": t.input_tokens,
            "completion_tokens": t.output_tokens,
            "total_tokens": t.input_tokens + t.output_tokens,
            "prompt_tokens_details": {"cached_tokens": t.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        }

    def _calls(self) -> list[dict[str, Any]]:
        return [
            {
                "id": c.id or _id("call_"),
                "type": "function",
                "function": {"name": c.name, "arguments": _arguments(c)},
            }
            for c in self.turn.calls
        ]

    def _finish(self) -> str:
        return "tool_calls" if self.turn.calls else "stop"

    def whole(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.turn.text or None, "refusal": None}
        if self.turn.calls:
            message["tool_calls"] = self._calls()
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": self._finish()}],
            "usage": self.usage(),
            "system_fingerprint": "fp_local",
        }

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        chunk = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_local",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        return chunk | ({"usage": None} if self.include_usage else {})

    def events(self) -> Iterator[tuple[str | None, dict[str, Any]]]:
        yield None, self._chunk({"role": "assistant", "content": "", "refusal": None})
        for piece in _fragments(self.turn.text) if self.turn.text else []:
            yield None, self._chunk({"content": piece})
        for index, call in enumerate(self._calls()):
            function = call["function"]
            start = {
                "index": index,
                "id": call["id"],
                "type": "function",
                "function": {"name": function["name"], "arguments": ""},
            }
            yield None, self._chunk({"tool_calls": [start]})
            for piece in _fragments(function["arguments"]):
                yield None, self._chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
        yield None, self._chunk({}, self._finish())
        if self.include_usage:
            yield None, self._chunk({}) | {"choices": [], "usage": self.usage()}


class CompletionAnswer(ChatAnswer):
    """OpenAI's legacy Completions: text only."""

    def whole(self) -> dict[str, Any]:
        choice = {"text": self.turn.text, "index": 0, "logprobs": None, "finish_reason": "stop"}
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": self.usage(),
        }

    def events(self) -> Iterator[tuple[str | None, dict[str, Any]]]:
        pieces = _fragments(self.turn.text)
        for n, piece in enumerate(pieces):
            choice = {
                "text": piece,
                "index": 0,
                "logprobs": None,
                "finish_reason": "stop" if n == len(pieces) - 1 else None,
            }
            yield (
                None,
                {
                    "id": self.id,
                    "object": "text_completion",
                    "created": self.created,
                    "model": self.model,
                    "choices": [choice],
                },
            )
        if self.include_usage:
            yield (
                None,
                {
                    "id": self.id,
                    "object": "text_completion",
                    "created": self.created,
                    "model": self.model,
                    "choices": [],
                    "usage": self.usage(),
                },
            )


class ResponsesAnswer(Answer):
    """OpenAI Responses."""

    def __init__(self, turn: Turn, model: str):
        super().__init__(turn, model)
        self.id = _id("resp_")
        self.created = int(time.time())
        self.message_id = _id("msg_")
        self.call_ids = [(_id("fc_"), c.id or _id("call_")) for c in turn.calls]

    def usage(self) -> dict[str, Any]:
        t = self.turn
        return {
            "input_tokens": t.input_tokens,
            "input_tokens_details": {"cached_tokens": t.cached_tokens},
            "output_tokens": t.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": t.input_tokens + t.output_tokens,
        }

    def _message(self, text: str, status: str) -> dict[str, Any]:
        content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}] if text else []
        return {
            "type": "message",
            "id": self.message_id,
            "status": status,
            "role": "assistant",
            "content": content,
        }

    def _call(self, n: int, arguments: str, status: str) -> dict[str, Any]:
        item_id, call_id = self.call_ids[n]
        name = self.turn.calls[n].name
        return {
            "type": "function_call",
            "id": item_id,
            "call_id": call_id,
            "name": name,
            "arguments": arguments,
            "status": status,
        }

    def _output(self) -> list[dict[str, Any]]:
        out = [self._message(self.turn.text, "completed")] if self.turn.text else []
        return out + [self._call(n, _arguments(c), "completed") for n, c in enumerate(self.turn.calls)]

    def _response(
        self, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None
    ) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "error": None,
            "incomplete_details": None,
            "instructions": None,
            "max_output_tokens": None,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "store": True,
            "temperature": 1.0,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": usage,
            "user": None,
            "metadata": {},
        }

    def whole(self) -> dict[str, Any]:
        return self._response("completed", self._output(), self.usage())

    def events(self) -> Iterator[tuple[str | None, dict[str, Any]]]:
        seq = itertools.count()

        def event(kind: str, **data: Any) -> tuple[str, dict[str, Any]]:
            return kind, {"type": kind, "sequence_number": next(seq), **data}

        yield event("response.created", response=self._response("in_progress", [], None))
        yield event("response.in_progress", response=self._response("in_progress", [], None))
        at = 0
        if self.turn.text:
            item = self.message_id
            yield event("response.output_item.added", output_index=0, item=self._message("", "in_progress"))
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            yield event(
                "response.content_part.added", item_id=item, output_index=0, content_index=0, part=part
            )
            for piece in _fragments(self.turn.text):
                yield event(
                    "response.output_text.delta",
                    item_id=item,
                    output_index=0,
                    content_index=0,
                    delta=piece,
                    logprobs=[],
                )
            yield event(
                "response.output_text.done",
                item_id=item,
                output_index=0,
                content_index=0,
                text=self.turn.text,
                logprobs=[],
            )
            done_part = part | {"text": self.turn.text}
            yield event(
                "response.content_part.done", item_id=item, output_index=0, content_index=0, part=done_part
            )
            yield event(
                "response.output_item.done", output_index=0, item=self._message(self.turn.text, "completed")
            )
            at = 1
        for n, call in enumerate(self.turn.calls):
            index, item = at + n, self.call_ids[n][0]
            yield event(
                "response.output_item.added", output_index=index, item=self._call(n, "", "in_progress")
            )
            for piece in _fragments(_arguments(call)):
                yield event(
                    "response.function_call_arguments.delta", item_id=item, output_index=index, delta=piece
                )
            yield event(
                "response.function_call_arguments.done",
                item_id=item,
                output_index=index,
                arguments=_arguments(call),
            )
            yield event(
                "response.output_item.done",
                output_index=index,
                item=self._call(n, _arguments(call), "completed"),
            )
        yield event("response.completed", response=self.whole())


class GeminiAnswer(Answer):
    """Gemini generateContent (each streamed answer carries whole function calls and the usage
    so far; the last the whole usage)."""

    def usage(self, output: int) -> dict[str, Any]:
        t = self.turn
        usage = {
            "promptTokenCount": t.input_tokens,
            "candidatesTokenCount": output,
            "totalTokenCount": t.input_tokens + output,
        }
        return usage | ({"cachedContentTokenCount": t.cached_tokens} if t.cached_tokens else {})

    def _doc(self, parts: list[dict[str, Any]], output: int, finish: str | None) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
        if finish:
            candidate["finishReason"] = finish
        return {
            "candidates": [candidate],
            "usageMetadata": self.usage(output),
            "modelVersion": self.model,
            "responseId": _id("gem"),
        }

    def _call_parts(self) -> list[dict[str, Any]]:
        return [
            {"functionCall": {"name": c.name, "args": c.arguments} | ({"id": c.id} if c.id else {})}
            for c in self.turn.calls
        ]

    def whole(self) -> dict[str, Any]:
        parts = ([{"text": self.turn.text}] if self.turn.text else []) + self._call_parts()
        return self._doc(parts, self.turn.output_tokens, "STOP")

    def events(self) -> Iterator[tuple[str | None, dict[str, Any]]]:
        pieces = _fragments(self.turn.text, 11) if self.turn.text else []
        for n, piece in enumerate(pieces):
            yield None, self._doc([{"text": piece}], n + 1, None)
        yield None, self._doc(self._call_parts(), self.turn.output_tokens, "STOP")

    def error(self) -> dict[str, Any]:
        status = "RESOURCE_EXHAUSTED" if self.turn.status == 429 else "INTERNAL"
        return {
            "error": {
                "code": self.turn.status,
                "message": f"scripted error {self.turn.status}",
                "status": status,
            }
        }


_GEMINI = re.compile(r".*/models/([^/:]+):(generateContent|streamGenerateContent)")


def _answer(path: str, body: dict[str, Any], turn: Turn) -> tuple[Answer, bool, bool] | None:
    """The answer for a request: its API's, whether it streams, and whether as a JSON array."""
    model = str(body.get("model") or "model")
    stream = body.get("stream") is True
    if m := _GEMINI.fullmatch(path):
        return GeminiAnswer(turn, m.group(1)), m.group(2) == "streamGenerateContent", True
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    if path.endswith("/messages"):
        return AnthropicAnswer(turn, model), stream, False
    if path.endswith("/chat/completions"):
        return ChatAnswer(turn, model, include_usage), stream, False
    if path.endswith("/completions"):
        return CompletionAnswer(turn, model, include_usage), stream, False
    if path.endswith("/responses"):
        return ResponsesAnswer(turn, model), stream, False
    return None


def _handler(server: ModelServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def handle(self) -> None:
            # The client (or a proxy killed mid-answer) may go away at any point.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                super().handle()

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            url = urlsplit(self.path)
            try:
                doc = json.loads(raw) if raw else None
            except ValueError:
                doc = None
            received = Received(
                self.command,
                url.path,
                dict(parse_qsl(url.query)),
                {k.lower(): v for k, v in self.headers.items()},
                raw,
                doc,
                time.time(),
            )
            with server.lock:
                server.received.append(received)
            found = (
                _answer(url.path, doc if isinstance(doc, dict) else {}, Turn())
                if self.command == "POST"
                else None
            )
            if found is None:
                self._json(
                    404,
                    {
                        "error": {
                            "message": f"no such endpoint: {self.command} {url.path}",
                            "type": "invalid_request_error",
                            "code": None,
                        }
                    },
                )
                return
            turn = server.next_turn()
            answer, stream, array = _answer(url.path, doc if isinstance(doc, dict) else {}, turn) or found
            if turn.status != 200:
                self._json(turn.status, answer.error(), {"retry-after": "1"} if turn.status == 429 else {})
                return
            if not stream:
                self._hold(turn)
                self._json(200, answer.whole())
            elif array and received.query.get("alt") != "sse":
                self._array(answer, turn)
            else:
                self._events(answer, turn)

        do_GET = do_DELETE = do_PUT = do_PATCH = do_POST

        def _hold(self, turn: Turn) -> None:
            if turn.hold is not None:
                with server.lock:
                    server.held.append(turn.hold)
                server.holding.set()
                turn.hold.wait(60)

        def _json(self, status: int, doc: dict[str, Any], headers: dict[str, str] | None = None) -> None:
            payload = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("x-request-id", _id("req_"))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        def _start(self, content_type: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("x-request-id", _id("req_"))
            self.end_headers()

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        def _end(self) -> None:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

        def _events(self, answer: Answer, turn: Turn) -> None:
            self._start("text/event-stream; charset=utf-8")
            for n, (name, data) in enumerate(answer.events()):
                head = f"event: {name}\n" if name else ""
                self._chunk(f"{head}data: {json.dumps(data)}\n\n".encode())
                if n == 0:
                    self._hold(turn)
            if answer.done_marker:
                self._chunk(b"data: [DONE]\n\n")
            self._end()

        def _array(self, answer: Answer, turn: Turn) -> None:
            self._start("application/json; charset=UTF-8")
            for n, (_, data) in enumerate(answer.events()):
                self._chunk(((",\r\n" if n else "[") + json.dumps(data)).encode())
                if n == 0:
                    self._hold(turn)
            self._chunk(b"]")
            self._end()

    return Handler


@contextmanager
def serving_models(models: ModelServer | None = None) -> Iterator[ModelServer]:
    """A ModelServer on loopback in a thread until the block ends (held streams are released)."""
    models = models or ModelServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", models.port), _handler(models))
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield models
    finally:
        for hold in models.held + [t.hold for t in models.script if t.hold is not None]:
            hold.set()
        httpd.shutdown()
        httpd.server_close()

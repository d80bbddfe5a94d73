"""The MCP adapter: Model Context Protocol messages (JSON-RPC 2.0) as actions, and the answers
Airlock gives in the protocol's own terms.

A `tools/call` is an action with the tool's name and arguments; its effect comes from the
annotations the server gave the tool in its last `tools/list` (readOnlyHint: read,
destructiveHint: destructive, else write; a tool not listed yet counts as a write). Every
other request (`initialize`, `tools/list`, `resources/read`, ...) and every notification is a
read. Which requests are MCP at all is the server's to show (see proxy/mcp/evidence.py): a
body shaped like JSON-RPC is not enough. Refusals are tool results with `isError: true` that
the model reads; malformed JSON-RPC gets JSON-RPC errors.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from rules import Action, Effect, json_of

CALL = "tools/call"
LIST = "tools/list"
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
INTERNAL_ERROR = -32603
# JSON-RPC errors a retry of the same call would get again: final, like a 4xx.
CLIENT_ERRORS = frozenset({PARSE_ERROR, INVALID_REQUEST, -32601, -32602})


class NotJsonRpc(ValueError):
    """A body that claims to be JSON-RPC but is not valid: answered with a JSON-RPC error."""


def messages(body: bytes | None) -> list[dict[str, Any]] | None:
    """The JSON-RPC messages in a body (one, or a batch); None when the body is not JSON-RPC.

    Raises NotJsonRpc when the body is JSON that looks like JSON-RPC but is malformed. The body
    is parsed once per request, for this and for the rules alike; the result is only read.
    """
    parsed = json_of(body) if body else None
    if parsed is None:
        return None
    batch = parsed if isinstance(parsed, list) else [parsed]
    if not batch or not all(isinstance(m, dict) and m.get("jsonrpc") == "2.0" for m in batch):
        if isinstance(parsed, dict) and "jsonrpc" in parsed:
            raise NotJsonRpc("the message is not JSON-RPC 2.0")
        if isinstance(parsed, list) and any(isinstance(m, dict) and "jsonrpc" in m for m in parsed):
            raise NotJsonRpc("every message of a batch must be a JSON-RPC 2.0 object")
        return None
    for m in batch:
        if "method" in m and not isinstance(m["method"], str):
            raise NotJsonRpc("method must be a string")
        params = m.get("params")
        if params is not None and not isinstance(params, dict | list):
            raise NotJsonRpc("params must be an object or an array")
        if m.get("method") == CALL and not (isinstance(params, dict) and isinstance(params.get("name"), str)):
            raise NotJsonRpc("tools/call needs params.name, the tool's name")
    return batch


def is_request(m: dict[str, Any]) -> bool:
    """A message that expects a response: it has a method and an id."""
    return "method" in m and "id" in m


def is_response(m: dict[str, Any]) -> bool:
    """A response to a request: an id and a result or an error, no method."""
    return "method" not in m and "id" in m and ("result" in m or "error" in m)


def effect_of(annotations: dict[str, Any] | None) -> Effect:
    """A tool's effect from its annotations (hints from the server; rules may override)."""
    annotations = annotations or {}
    if annotations.get("readOnlyHint") is True:
        return Effect.READ
    if annotations.get("destructiveHint") is True:
        return Effect.DESTRUCTIVE
    return Effect.WRITE


@dataclass
class ToolCatalog:
    """What each server's last `tools/list` said about its tools' effects."""

    effects: dict[str, dict[str, Effect]] = field(default_factory=dict)

    def learn(self, server: str, result: Any) -> None:
        """Take in a `tools/list` result (tools of a later page are added to the earlier ones)."""
        tools = result.get("tools") if isinstance(result, dict) else None
        if not isinstance(tools, list):
            return
        known = self.effects.setdefault(server, {})
        for tool in tools:
            if isinstance(tool, dict) and isinstance(tool.get("name"), str):
                known[tool["name"]] = effect_of(tool.get("annotations"))

    def effect(self, server: str, tool: str) -> Effect:
        """The effect of a tool as last listed; a tool not listed counts as a write."""
        return self.effects.get(server, {}).get(tool, Effect.WRITE)


def action_of(message: dict[str, Any], base: Action, catalog: ToolCatalog, server: str) -> Action:
    """The action one JSON-RPC message asks for, on the transport's action `base`."""
    method = message.get("method")
    params = message.get("params")
    if method == CALL:
        assert isinstance(params, dict)
        name = params["name"]
        return dataclasses.replace(
            base,
            protocol="mcp",
            operation=CALL,
            tool=name,
            args=params.get("arguments", {}),
            effect=catalog.effect(server, name),
        )
    return dataclasses.replace(
        base,
        protocol="mcp",
        operation=method if isinstance(method, str) else "response",
        args=params,
        effect=Effect.READ,
    )


def tool_error(message_id: Any, text: str) -> dict[str, Any]:
    """A tool result that tells the model, in words, why the call did not run."""
    return {
        "jsonrpc": "2.0",
        "id": message_id,
        "result": {"content": [{"type": "text", "text": text}], "isError": True},
    }


def rpc_error(message_id: Any, code: int, text: str) -> dict[str, Any]:
    """A JSON-RPC error response."""
    return {"jsonrpc": "2.0", "id": message_id, "error": {"code": code, "message": text}}


def status_of(response: dict[str, Any]) -> int:
    """An HTTP-like status for a call's response, for `final` and the storm breaker: 200 for a
    result, 500 for a tool error (a retry may succeed), 400 for a JSON-RPC error a retry would
    get again, 502 for other JSON-RPC errors."""
    if "error" in response:
        error = response["error"]
        code = error.get("code") if isinstance(error, dict) else None
        return 400 if code in CLIENT_ERRORS else 502
    result = response.get("result")
    return 500 if isinstance(result, dict) and result.get("isError") is True else 200


def with_id(response: dict[str, Any], message_id: Any) -> dict[str, Any]:
    """A stored response re-addressed to the request that is being answered."""
    return response | {"id": message_id}


def hide_tools(result: Any, hidden: Callable[[str], bool]) -> tuple[Any, list[str]]:
    """A `tools/list` result without the tools `hidden` names, and the names removed."""
    if not isinstance(result, dict) or not isinstance(result.get("tools"), list):
        return result, []
    kept, removed = [], []
    for tool in result["tools"]:
        name = tool.get("name") if isinstance(tool, dict) else None
        if isinstance(name, str) and hidden(name):
            removed.append(name)
        else:
            kept.append(tool)
    if not removed:
        return result, []
    return result | {"tools": kept}, removed


@dataclass
class SseEvent:
    """One server-sent event: its field lines as received, and its data joined."""

    raw: bytes
    event: str = "message"
    data: str = ""

    def json(self) -> Any:
        """The event's data as JSON, or None."""
        try:
            return json.loads(self.data) if self.data else None
        except ValueError:
            return None

    @classmethod
    def parse(cls, raw: bytes) -> SseEvent:
        """An event from its raw lines (without the blank line that ends it)."""
        ev = cls(raw)
        data = []
        for line in raw.decode("utf-8", errors="replace").splitlines():
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                ev.event = value
            elif name == "data":
                data.append(value)
        ev.data = "\n".join(data)
        return ev

    def with_data(self, data: Any) -> bytes:
        """The event's lines with its data replaced by `data` as JSON (other fields kept)."""
        lines = [
            line
            for line in self.raw.decode("utf-8", errors="replace").splitlines()
            if line.partition(":")[0] != "data"
        ]
        lines.append(f"data: {json.dumps(data, separators=(',', ':'))}")
        return "\n".join(lines).encode()


class SseSplitter:
    """Splits a text/event-stream into whole events as chunks arrive; holds only the
    unfinished event. `emitted` counts the bytes of that event already passed on unchanged."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._searched = 0  # the buffer before this holds no separator
        self.emitted = 0

    @property
    def pending(self) -> int:
        """Bytes of the unfinished event held."""
        return len(self._buffer)

    def unsent(self) -> bytes:
        """The held bytes not passed on yet (the start of an unfinished event)."""
        return bytes(self._buffer[self.emitted :])

    def rest(self) -> bytes:
        """What is left when the stream ends: an unfinished event, minus what was passed on."""
        rest = bytes(self._buffer[self.emitted :])
        self._buffer.clear()
        self.emitted = 0
        return rest

    def feed(self, chunk: bytes) -> Iterator[tuple[bytes, bytes, int]]:
        """Complete events so far, each as (its lines, the separator after it, how many of its
        leading bytes were already passed on)."""
        self._buffer += chunk
        while True:
            cut = _event_end(self._buffer, self._searched)
            if cut is None:
                self._searched = max(0, len(self._buffer) - 3)
                return
            end, sep_len = cut
            raw, sep = bytes(self._buffer[:end]), bytes(self._buffer[end : end + sep_len])
            del self._buffer[: end + sep_len]
            self._searched = 0
            emitted, self.emitted = self.emitted, max(0, self.emitted - end - sep_len)
            yield raw, sep, emitted


def _event_end(buffer: bytearray, start: int) -> tuple[int, int] | None:
    found = [(i, len(sep)) for sep in (b"\r\n\r\n", b"\n\n", b"\r\r") if (i := buffer.find(sep, start)) >= 0]
    return min(found) if found else None


def session_action(action: Action, *, proven: bool, issued: Callable[[str], bool]) -> Action | None:
    """An MCP session's own HTTP requests, as reads: the GET that opens a server-sent stream
    from a server `proven` to be MCP, and the DELETE that ends a session the server `issued`
    (not a destructive action on the world). Anything else keeps its method's effect."""
    session = action.headers.get("mcp-session-id")
    if action.method == "DELETE" and session and issued(session):
        return dataclasses.replace(action, protocol="mcp", operation="session/end", effect=Effect.READ)
    accepts_stream = "text/event-stream" in action.headers.get("accept", "")
    if action.method == "GET" and proven and accepts_stream:
        return dataclasses.replace(action, protocol="mcp", operation="session/stream", effect=Effect.READ)
    return None


def message_key(value: Any) -> str:
    """A JSON-RPC id as a key: 1 and "1" are different ids."""
    return json.dumps(value)

"""The WebSocket adapter: each message after an upgrade is an action of its own.

A message from the client is a write (`SEND`) to the upgrade request's host and path, by its
agent, with the message as its body, so `text` and `body` rules read it like a request body. A
message that carries JSON-RPC (MCP over WebSocket) is also read message by message as MCP, so
`tool` and `args` rules see a `tools/call` in it; the strictest reading decides. A message from
the server is a read (`RECEIVE`) whose content is not kept, only its size and digest.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mitmproxy import http

from proxy.mcp import messages as mcp
from rules import PRECEDENCE, Action, Effect, Explanation, Ruleset

from .http import from_request

SEND = "SEND"
RECEIVE = "RECEIVE"
PASSED = 101  # the outcome status of a message passed on: it went over the switched protocol


def base_of(request: http.Request, *, agent: str, upstream: str | None = None) -> Action:
    """The action every message of a WebSocket shares: the upgrade request's target and agent."""
    action = from_request(request, agent=agent, upstream=upstream)
    return dataclasses.replace(
        action,
        scheme="wss" if request.scheme == "https" else "ws",
        protocol="ws",
        body=None,
    )


def message_action(base: Action, content: bytes, *, from_client: bool) -> Action:
    """One message as an action: a write carrying the content, or a read without it."""
    if from_client:
        return dataclasses.replace(base, method=SEND, effect=Effect.WRITE, body=content)
    return dataclasses.replace(base, method=RECEIVE, effect=Effect.READ, body=None)


def readings(action: Action, ruleset: Ruleset, catalog: mcp.ToolCatalog) -> list[Explanation]:
    """The message decided as itself and, when it carries JSON-RPC, as each MCP message in it."""
    decided, decision = ruleset.decide(action)
    out = [Explanation(decided, "", [], decision, "")]
    try:
        messages: list[dict[str, Any]] | None = mcp.messages(action.body)
    except mcp.NotJsonRpc:
        messages = None  # not valid JSON-RPC: the message is decided as what it is, bytes
    server = f"{action.host}:{action.port}"
    for message in messages or []:
        read = mcp.action_of(message, action, catalog, server)
        read = dataclasses.replace(read, effect=read.effect.stricter(action.effect))
        decided, decision = ruleset.decide(read)
        out.append(Explanation(decided, "", [], decision, ""))
    return out


def deciding(explained: list[Explanation]) -> Explanation:
    """The reading whose decision holds: the strictest; of equals, the most specific (the last,
    so a tool call rather than the bare message is what the log shows)."""
    return max(reversed(explained), key=lambda r: (r.decision.refused, PRECEDENCE[r.decision.verdict]))

"""What makes a request MCP: what the server has shown of itself, never what the client says.

Any agent can shape a body as JSON-RPC, name a method `tools/list`, or send an `Mcp-Session-Id`
header; an Ethereum node, a JSON-RPC API or a REST endpoint would still act on it. So a request
is read as MCP only once the server at its endpoint (scheme://host:port/path) has shown that it
is an MCP server:

- it answered an `initialize` request with an InitializeResult (a `protocolVersion` and its
  `capabilities` or `serverInfo`), or
- its event stream announced a legacy HTTP+SSE `endpoint` on its own origin: that endpoint is
  where its sessions post.

A session id is the server's when that server sent it in an `Mcp-Session-Id` response header
(on an InitializeResult, or on any response once it has shown it is MCP). `airlock mcp` (stdio)
is MCP by the operator's word. Evidence is kept in memory for the life of the process.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from rules import Action

from . import messages as mcp

INITIALIZE = "initialize"
SESSION_HEADER = "mcp-session-id"
MAX_SESSIONS = 1 << 16  # session ids remembered; the oldest are forgotten first


def endpoint(scheme: str, host: str, port: int, path: str) -> str:
    """The key evidence is kept under: the server's origin and the path it serves MCP on."""
    return f"{scheme.lower()}://{host.lower()}:{port}{path or '/'}"


def endpoint_of(action: Action) -> str:
    """The endpoint an action goes to."""
    return endpoint(action.scheme, action.host, action.port, action.path)


def is_initialize_result(result: Any) -> bool:
    """True for what only an MCP server answers to `initialize`."""
    return (
        isinstance(result, dict)
        and isinstance(result.get("protocolVersion"), str)
        and (isinstance(result.get("capabilities"), dict) or isinstance(result.get("serverInfo"), dict))
    )


class Evidence:
    """The endpoints that have shown they are MCP servers, and the session ids they issued.

    `assume=True` takes every endpoint and session id as shown (`rules explain --mcp`: the
    operator says the server is MCP).
    """

    def __init__(self, *, assume: bool = False) -> None:
        self.assume = assume
        self._servers: set[str] = set()
        self._sessions: OrderedDict[tuple[str, str], None] = OrderedDict()

    def proven(self, action: Action) -> bool:
        """True when the action's endpoint has shown it is an MCP server."""
        return self.assume or endpoint_of(action) in self._servers

    def issued(self, action: Action, session: str) -> bool:
        """True when the action's endpoint issued this session id."""
        return self.assume or (endpoint_of(action), session) in self._sessions

    def prove(self, action: Action) -> None:
        """Remember that the action's endpoint is an MCP server."""
        self._servers.add(endpoint_of(action))

    def announce(self, stream_url: str, posts_to: str) -> bool:
        """A legacy SSE stream at `stream_url` named the URL its session posts to: that endpoint
        is MCP if it is on the stream's own origin (a stream cannot vouch for another server)."""
        stream, target = urlsplit(stream_url), urlsplit(posts_to)
        if (stream.scheme, stream.hostname, _port(stream)) != (target.scheme, target.hostname, _port(target)):
            return False
        assert target.hostname is not None
        self._servers.add(endpoint(target.scheme, target.hostname, _port(target), target.path))
        return True

    def session(self, action: Action, session: str) -> None:
        """Remember a session id the action's endpoint issued."""
        key = (endpoint_of(action), session)
        self._sessions[key] = None
        self._sessions.move_to_end(key)
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)

    def introduction(self, action: Action, messages: list[dict[str, Any]]) -> Introduction | None:
        """The `initialize` requests among messages sent to an endpoint not yet shown to be MCP,
        whose answers may show it; None if there are none."""
        ids = {mcp.message_key(m["id"]) for m in messages if mcp.is_request(m) and m["method"] == INITIALIZE}
        return Introduction(self, action, frozenset(ids)) if ids else None


@dataclass(frozen=True)
class Introduction:
    """`initialize` requests on their way to a server: an InitializeResult in answer to one of
    them shows the server is MCP (and makes the session id it sent with it the server's)."""

    evidence: Evidence
    action: Action
    ids: frozenset[str]

    def answered(self, message: Any, session: str | None) -> bool:
        """Take in one message from the server; True if it showed the server is MCP."""
        if not isinstance(message, dict) or not mcp.is_response(message):
            return False
        if mcp.message_key(message["id"]) not in self.ids or not is_initialize_result(message.get("result")):
            return False
        self.evidence.prove(self.action)
        if session:
            self.evidence.session(self.action, session)
        return True


def _port(url: Any) -> int:
    try:
        port = url.port
    except ValueError:
        port = None
    return port or {"http": 80, "https": 443}.get(url.scheme, 0)

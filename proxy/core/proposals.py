"""Tool calls a model proposed, and the actions that carry them out.

A model's answer may propose tool calls (a name and arguments). When an action of the same
agent later calls that tool with the same arguments, its intent names the model call that
proposed it: the log then answers which model output asked for an action. Arguments are
compared by digest, over their canonical JSON form, so a model's `{"b":1,"a":2}` is the MCP
client's `{"a": 2, "b": 1}`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from rules import Action
from store import ActionRef


def arguments_digest(arguments: Any) -> str:
    """SHA-256 of arguments in canonical JSON (sorted keys, no spaces); a string that holds a
    JSON document (as OpenAI sends arguments) is read as that document first."""
    if isinstance(arguments, str | bytes):
        with contextlib.suppress(ValueError, RecursionError):  # not JSON: the string is the arguments
            arguments = json.loads(arguments)
    try:
        encoded = json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        encoded = repr(arguments)
    return hashlib.sha256(encoded.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Usage:
    """The tokens a model call used, as its answer reports them (`cached_tokens`: of the input,
    those read from the provider's prompt cache, when it says)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    estimated: bool = False  # the answer said nothing: counted from the bytes (estimate_usage)

    @property
    def total(self) -> int:
        """Input and output tokens together: what a budget counts."""
        return self.input_tokens + self.output_tokens

    def as_json(self) -> dict[str, int]:
        """As the log keeps it."""
        return (
            {"input": self.input_tokens, "output": self.output_tokens, "total": self.total}
            | ({"cached": self.cached_tokens} if self.cached_tokens else {})
            | ({"estimated": True} if self.estimated else {})
        )


BYTES_PER_TOKEN = 2  # fewer than any tokenizer averages: an estimate errs towards more tokens


def estimate_usage(request_bytes: int, answer_bytes: int) -> Usage:
    """Tokens for an answer that reports none (an OpenAI stream without
    `stream_options.include_usage`): its prompt's and answer's bytes over BYTES_PER_TOKEN, on
    the high side, so that leaving usage out never stretches a budget."""
    return Usage(request_bytes // BYTES_PER_TOKEN, answer_bytes // BYTES_PER_TOKEN, estimated=True)


@dataclass(frozen=True, slots=True)
class ProposedCall:
    """A tool call a model's answer proposes: the tool's name, its arguments (parsed from JSON
    where the provider sends them as a string), and the provider's id for the call."""

    name: str
    arguments: Any
    id: str | None = None

    @property
    def digest(self) -> str:
        """The arguments' digest (arguments_digest)."""
        return arguments_digest(self.arguments)


@dataclass(frozen=True, slots=True)
class ModelAnswer:
    """What a model call's answer says, as far as it could be read: the tokens it used, the
    tool calls it proposes, the model that answered, and why it could not be read if it
    could not (a reader never fails the answer it reads)."""

    usage: Usage | None = None
    calls: tuple[ProposedCall, ...] = ()
    model: str | None = None
    problem: str | None = None


TEXTS_KEPT = 16  # string values of a proposed call's arguments remembered, to find the request
TEXT_KEPT = 2048  # characters of each


@dataclass(frozen=True, slots=True)
class Proposal:
    """A proposed call remembered: the model call (`turn`) whose answer proposed it, the tool,
    the provider's id for the call, its arguments' digest, and their first string values (what
    an HTTP request that carries the call out may be found by)."""

    turn: ActionRef
    tool: str
    call_id: str | None
    digest: str
    texts: tuple[str, ...]
    at: float

    def link(self) -> dict[str, Any]:
        """How the intent of the action that carries it out names it."""
        assert self.turn.id is not None
        return {"action": self.turn.id, "tool": self.tool} | ({"call": self.call_id} if self.call_id else {})


def _texts(arguments: Any) -> tuple[str, ...]:
    """The first string values in arguments (a JSON string's, when they are one), each cut."""
    if isinstance(arguments, str):
        with contextlib.suppress(ValueError, RecursionError):
            arguments = json.loads(arguments)
    found: list[str] = []
    stack = [arguments]
    while stack and len(found) < TEXTS_KEPT:
        value = stack.pop()
        if isinstance(value, str):
            found.append(value[:TEXT_KEPT])
        elif isinstance(value, dict):
            stack.extend(reversed(list(value.values())))
        elif isinstance(value, list):
            stack.extend(reversed(value))
    return tuple(found)


def same_tool(proposed: str, called: str) -> bool:
    """True when a model's tool name names the tool an action calls: the same name, or the name
    an MCP client gives the model for a server's tool (`mcp__notes__delete_note`)."""
    return proposed == called or proposed.endswith(f"__{called}")


class Proposals:
    """The tool calls recent model answers proposed, by agent: at most `size` of them, each
    for `ttl` seconds (this process's memory; a restart forgets them)."""

    def __init__(self, *, ttl: float = 3600.0, size: int = 10_000):
        self.ttl = ttl
        self.size = size
        self._by_agent: dict[str, deque[Proposal]] = {}
        self._count = 0

    def remember(self, agent: str, turn: ActionRef, calls: Iterable[ProposedCall]) -> None:
        """Remember the calls the answer to model call `turn` proposed."""
        now = time.monotonic()
        kept = self._by_agent.setdefault(agent, deque())
        for call in calls:
            kept.append(Proposal(turn, call.name, call.id, call.digest, _texts(call.arguments), now))
            self._count += 1
        while self._count > self.size:
            self._drop_oldest()

    def origin(self, action: Action, carriers: Iterable[str] = ()) -> dict[str, Any] | None:
        """The model call whose answer proposed this action (the newest, within `ttl`), as the
        action's intent names it; None when no remembered answer proposed it.

        A tool call is proposed when a proposal names its tool with the same arguments. An HTTP
        request is, when a rule names the tools that carry requests out (`carriers`: a tool
        such as `http_request` or `bash`) and a proposal of one of them holds the request's
        host (with its port, unless the scheme's) and path in one of its string arguments (a
        URL, a command line)."""
        if not self._by_agent.get(action.agent):
            return None  # nothing proposed for this agent: no digest to compute
        if action.tool is not None:
            if action.args is None or isinstance(action.args, str):
                return None
            digest = arguments_digest(action.args)
            tool = action.tool
            found = self._newest(action.agent, lambda p: p.digest == digest and same_tool(p.tool, tool))
        elif carriers:
            tools = tuple(carriers)
            if action.path in ("", "/"):
                return None  # a bare host says too little
            where = action.url.partition("://")[2].partition("?")[0]  # host[:port]/path
            found = self._newest(
                action.agent,
                lambda p: any(same_tool(p.tool, t) for t in tools) and any(where in t for t in p.texts),
            )
        else:
            return None
        return found.link() if found is not None else None

    def _newest(self, agent: str, test: Callable[[Proposal], bool]) -> Proposal | None:
        kept = self._by_agent.get(agent)
        if not kept:
            return None
        now = time.monotonic()
        while kept and now - kept[0].at > self.ttl:
            kept.popleft()
            self._count -= 1
        # A proposal whose model call's intent was never written names nothing.
        return next((p for p in reversed(kept) if p.turn.id is not None and test(p)), None)

    def _drop_oldest(self) -> None:
        oldest = min((k for k in self._by_agent.values() if k), key=lambda k: k[0].at, default=None)
        if oldest is None:
            self._count = 0
            return
        oldest.popleft()
        self._count -= 1

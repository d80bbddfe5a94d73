"""MCP through the gate, whatever carries it (streamable HTTP, legacy SSE, stdio).

What the client sends is decided and logged before it is passed on: each request is an action
(a `tools/call` with its tool, arguments and effect), refused or replayed requests are answered
here in JSON-RPC and never reach the server. What the server sends back completes the pending
calls (the outcome entry is written when a call's response has passed), teaches the tool
catalog the tools' effects, and has tools that the rules deny outright removed from
`tools/list` results. A channel is one place responses come back on: an HTTP exchange, a
legacy SSE session, a stdio pipe.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from proxy.core.admission import Admission, Answer
from proxy.core.tracking import Tracking
from rules import Action, Decision, Explanation, Verdict

from . import messages as mcp
from .readings import decide_messages

logger = logging.getLogger(__name__)

REFUSED = -32001  # JSON-RPC error code for refused requests other than tool calls


@dataclass
class Pending:
    """A forwarded request waiting for its response."""

    method: str
    tracking: Tracking


@dataclass
class Channel:
    """What is due on one channel: forwarded requests, and stand-ins' answers (by id)."""

    pending: dict[str, Pending] = field(default_factory=dict)
    stand_ins: dict[str, dict[str, Any]] = field(default_factory=dict)
    tool_lists_due: int = 0  # pending `tools/list` requests, whose results may be rewritten


def _alone(decision: Decision) -> bool:
    """True for a call that cannot go in a batch: refused, deduplicated, or held for votes."""
    return decision.refused or decision.dedup is not None or decision.verdict is Verdict.HOLD


def _text(answer: Answer) -> str:
    d = answer.decision
    where = f"rule {d.rule}" if d.rule else "airlock"
    logged = f"; airlock action {answer.action_id}" if answer.action_id is not None else ""
    return f"Airlock did not run this call ({where}{logged}): {d.message}"


class ToolCalls:
    """Decides and logs MCP messages and completes them with their responses, for every transport."""

    def __init__(self, admission: Admission, catalog: mcp.ToolCatalog | None = None):
        self.admission = admission
        self.catalog = catalog or mcp.ToolCatalog()
        self.channels: dict[str, Channel] = {}
        self._sessions: set[str] = set()  # channels of open legacy SSE sessions: the URLs they POST to

    # ---- legacy SSE sessions -------------------------------------------------------------

    def open_session(self, channel: str) -> None:
        """A legacy SSE stream named `channel` (a URL) as where its session POSTs: answers to
        what is POSTed there come back on that stream."""
        self._sessions.add(channel)

    def is_session(self, url: str) -> bool:
        """True when `url` is the channel of an open legacy SSE session."""
        return url in self._sessions

    # ---- client to server ----------------------------------------------------------------

    async def send(
        self,
        messages: list[dict[str, Any]],
        base: Action,
        *,
        channel: str,
        server: str,
        readings: Sequence[Explanation] | None = None,
    ) -> list[dict[str, Any]] | None:
        """Decide and log the client's messages (`readings`: their decisions, if already made).
        None: forward them all. A list: the answers the client gets instead, and nothing is
        forwarded."""
        if readings is None:
            readings = decide_messages(messages, base, self.admission.ruleset, self.catalog, server=server)
        actions = [r.action for r in readings]
        decisions = [r.decision for r in readings]
        if (reused := self._reused_id(messages, channel)) is not None:
            return await self._refuse_reused(messages, actions, reused)
        if len(messages) > 1 and any(_alone(d) for d in decisions):
            return await self._refuse_batch(messages, actions, decisions)
        answers: list[dict[str, Any]] = []
        admitted: list[tuple[dict[str, Any], Tracking]] = []
        keep = self.admission.policy.reply_limit
        try:
            for message, action, decision in zip(messages, actions, decisions, strict=True):
                outcome = await self.admission.admit(action, decision, keep=keep)
                if isinstance(outcome, Answer):
                    if mcp.is_request(message):
                        answers.append(self.answer(message, outcome))
                    continue
                admitted.append((message, outcome))
        except BaseException:
            # Nothing of the batch goes on: what was logged so far must not stay pending.
            for _, tracking in admitted:
                self.admission.fail(tracking, "airlock could not decide the rest of its batch; not forwarded")
            raise
        if len(admitted) < len(messages):
            # Something was answered here (a refused notification gets no answer): nothing goes on.
            for _, tracking in admitted:
                self.admission.fail(tracking, "not forwarded")
            return answers
        for message, tracking in admitted:
            if mcp.is_request(message):
                due = self.channels.setdefault(channel, Channel())
                due.pending[mcp.message_key(message["id"])] = Pending(str(message["method"]), tracking)
                due.tool_lists_due += message["method"] == mcp.LIST
            else:
                # Notifications and responses get no answer: they are done once passed on.
                self.admission.finish(tracking, 202, headers={})
        return None

    def _reused_id(self, messages: list[dict[str, Any]], channel: str) -> str | None:
        """Why a request's id cannot be told apart from another's, if one's cannot: answers are
        matched to requests by id, so two requests awaiting answers under one id on one channel
        would leave one of them unanswered and its action pending."""
        due = self.channels.get(channel)
        seen: set[str] = set()
        for m in messages:
            if not mcp.is_request(m):
                continue
            key = mcp.message_key(m["id"])
            if key in seen:
                return f"the JSON-RPC id {key} is used by two requests in this batch"
            if due is not None and (key in due.pending or key in due.stand_ins):
                return f"the JSON-RPC id {key} is used by a request that is still awaiting its answer"
            seen.add(key)
        return None

    async def _refuse_reused(
        self, messages: list[dict[str, Any]], actions: list[Action], why: str
    ) -> list[dict[str, Any]]:
        """Refuse every message of a send that reuses an id: nothing of it is forwarded."""
        decision = Decision(
            Verdict.DENY, None, f"{why}; give every request its own id and send it again", "duplicate_id"
        )
        answers = []
        for message, action in zip(messages, actions, strict=True):
            answer = await self.admission.refuse(action, decision, 400)
            if mcp.is_request(message):
                answers.append(mcp.rpc_error(message["id"], mcp.INVALID_REQUEST, _text(answer)))
        return answers

    async def _refuse_batch(
        self, messages: list[dict[str, Any]], actions: list[Action], decisions: list[Decision]
    ) -> list[dict[str, Any]]:
        """A batch is forwarded whole or not at all: one refused (or deduplicated, or held)
        request refuses every message in it."""
        culprit = next(d for d in decisions if _alone(d))
        answers = []
        for message, action, decision in zip(messages, actions, decisions, strict=True):
            if not decision.refused:
                why = (
                    f"it was sent in a batch with a request that {culprit.rule} refuses"
                    if culprit.refused
                    else "calls held for votes cannot be batched"
                    if culprit.verdict is Verdict.HOLD
                    else "calls with dedup keys cannot be batched"
                )
                decision = Decision(
                    Verdict.DENY, culprit.rule, f"{why}; send the calls one by one", "batch_refused"
                )
            answer = await self.admission.refuse(action, decision)
            if mcp.is_request(message):
                answers.append(self.answer(message, answer))
        return answers

    def answer(self, message: dict[str, Any], answer: Answer) -> dict[str, Any]:
        """An Answer as the JSON-RPC response to `message`."""
        if answer.reply is not None:
            stored = answer.reply.get("jsonrpc")
            if isinstance(stored, dict):
                return mcp.with_id(stored, message["id"])
            text = f"action {answer.replay_of} already ran this call, and its result cannot be replayed"
            return mcp.tool_error(message["id"], f"{text}; do not call it again")
        if message.get("method") == mcp.CALL:
            return mcp.tool_error(message["id"], _text(answer))
        return mcp.rpc_error(message["id"], REFUSED, _text(answer))

    def stand_in(self, channel: str, answers: list[dict[str, Any]]) -> bytes:
        """For a transport whose answers arrive on another stream (legacy SSE), the body to
        forward instead: a `ping` for each answered request, whose response on the stream is
        replaced with the answer. The server never sees the refused request."""
        pings = []
        due = self.channels.setdefault(channel, Channel())
        for answer in answers:
            due.stand_ins[mcp.message_key(answer["id"])] = answer
            pings.append({"jsonrpc": "2.0", "id": answer["id"], "method": "ping"})
        return json.dumps(pings if len(pings) > 1 else pings[0]).encode()

    def due(self) -> list[tuple[str, str]]:
        """The forwarded requests still waiting for a response, as (channel, JSON id)."""
        return [(name, key) for name, channel in self.channels.items() for key in channel.pending]

    # ---- server to client ----------------------------------------------------------------

    def rewrites_due(self, channel: str) -> bool:
        """True while a response that will be rewritten is due on the channel (a `tools/list`
        result, or a stand-in's)."""
        due = self.channels.get(channel)
        return due is not None and (due.tool_lists_due > 0 or bool(due.stand_ins))

    def receive(self, message: Any, raw: bytes | None, *, channel: str, server: str, base: Action) -> Any:
        """Take in one message from the server: complete the call it answers, and return the
        message to pass on (a `tools/list` result without hidden tools)."""
        if not isinstance(message, dict) or not mcp.is_response(message):
            return message
        due = self.channels.get(channel)
        if due is None:
            return message
        key = mcp.message_key(message["id"])
        if (stand_in := due.stand_ins.pop(key, None)) is not None:
            return stand_in
        pending = due.pending.pop(key, None)
        if pending is None:
            return message
        out = message
        due.tool_lists_due -= pending.method == mcp.LIST
        if pending.method == mcp.LIST and "result" in message:
            self.catalog.learn(server, message["result"])
            result, hidden = mcp.hide_tools(message["result"], lambda t: self._hidden(t, base, server))
            if hidden:
                logger.info("airlock: tools/list on %s: hid %s (denied by the rules)", server, hidden)
                out = message | {"result": result}
        tracking = pending.tracking
        tracking.meter(raw if raw is not None else json.dumps(message, separators=(",", ":")).encode())
        reply = None
        if tracking.keyed is not None and tracking.meter.kept is not None:  # kept up to the reply limit
            reply = {"jsonrpc": {k: v for k, v in message.items() if k != "id"}}
        self.admission.finish(tracking, mcp.status_of(message), headers={}, reply=reply)
        return out

    def _hidden(self, tool: str, base: Action, server: str) -> bool:
        probe = mcp.action_of(
            {"method": mcp.CALL, "params": {"name": tool, "arguments": {}}}, base, self.catalog, server
        )
        return self.admission.ruleset.hidden_by(probe) is not None

    def close(self, channel: str, error: str) -> None:
        """The channel ended (and the legacy session on it, if any): calls still waiting on it
        got no response."""
        self._sessions.discard(channel)
        due = self.channels.pop(channel, None)
        for pending in due.pending.values() if due is not None else ():
            self.admission.fail(pending.tracking, error)

"""From a request to what it asks for and how the rules decide it: the one path that the proxy
and `airlock rules explain` both take, so that they cannot disagree.

A request is read as MCP only when its server has shown it is one (proxy/mcp/evidence.py).
Without that evidence a body shaped like JSON-RPC is decided under every reading an upstream could make
of it: the plain HTTP request (its method's effect, its URL and body), and each message read as
MCP for `tool`, `args` and `operation` rules, with an effect never lower than the method's.
A call to a cloud API (adapters/cloud.py) is read as its API reads it, and each other reading
an upstream could make of it is decided too. The strictest decision of all readings is the
request's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from proxy.mcp import messages as mcp
from proxy.mcp.evidence import Evidence, Introduction
from proxy.mcp.readings import decide_messages, judge
from proxy.plane.adapters import cloud
from rules import PRECEDENCE, Action, Decision, Explanation, Ruleset, Verdict


class Route(StrEnum):
    """How the proxy carries a request on."""

    HTTP = "http"  # one action: admitted, forwarded, its response recorded
    MCP = "mcp"  # JSON-RPC messages to a server shown to be MCP: one action per message
    MALFORMED = "malformed"  # broken JSON-RPC to an MCP server: answered with a JSON-RPC error


@dataclass(frozen=True)
class Triage:
    """What a request is, every reading of it with its decision, and the decision that holds.

    For Route.HTTP, `action` and `decision` are what is logged and admitted; for Route.MCP,
    `readings` are the messages' own, in order, and `action` is the request they came in.
    """

    route: Route
    action: Action
    decision: Decision
    readings: tuple[Explanation, ...]
    messages: list[dict[str, Any]] | None = None
    introduction: Introduction | None = None  # `initialize` requests whose answers may prove MCP
    problem: str | None = None  # why the JSON-RPC is malformed

    @property
    def deciding(self) -> Explanation:
        """The reading whose decision holds (the first of the strictest)."""
        return next((r for r in self.readings if r.decision is self.decision), self.readings[0])


def triage(
    action: Action,
    ruleset: Ruleset,
    *,
    evidence: Evidence,
    catalog: mcp.ToolCatalog,
    complete: bool = False,
) -> Triage:
    """Read a request (an Action of the plain HTTP request, egress addresses resolved or not) and
    decide it. `complete`: match every rule even where egress refuses (for explanations)."""
    action = cloud.classified(action, ruleset)
    proven = evidence.proven(action)
    session = mcp.session_action(action, proven=proven, issued=lambda sid: evidence.issued(action, sid))
    if session is not None:
        read = judge(ruleset, session, complete=complete)
        return Triage(Route.HTTP, read.action, read.decision, (read,))
    messages: list[dict[str, Any]] | None = None
    try:
        messages = mcp.messages(action.body) if action.body else None
    except mcp.NotJsonRpc as e:
        if proven:
            return _malformed(action, ruleset, str(e), complete)
    if messages is not None and proven and action.method == "POST":
        readings = decide_messages(messages, action, ruleset, catalog, complete=complete)
        return Triage(Route.MCP, action, _strictest(readings).decision, tuple(readings), messages)
    plain = judge(ruleset, action, complete=complete)
    others = [judge(ruleset, other, complete=complete) for other in action.others]
    if messages is None and not others:
        return Triage(Route.HTTP, plain.action, plain.decision, (plain,))
    # Every reading counts: other readings of a cloud call, and a body shaped like JSON-RPC to a
    # server not shown to be MCP read as MCP.
    readings = [plain, *others]
    if messages is not None:
        readings += decide_messages(messages, action, ruleset, catalog, floor=plain.action.effect)
    deciding = _strictest(readings)
    decision = deciding.decision
    if not decision.refused and deciding is not plain:
        decision = dataclasses.replace(decision, dedup=plain.decision.dedup, storm=plain.decision.storm)
    effect = plain.action.effect
    for reading in readings:
        effect = effect.stricter(reading.action.effect)
    logged = dataclasses.replace(plain.action, effect=effect)
    if messages is not None:
        methods = sorted({str(m.get("method", "response")) for m in messages})
        logged = dataclasses.replace(logged, operation=",".join(methods))
    readings[readings.index(deciding)] = dataclasses.replace(deciding, decision=decision)
    return Triage(
        Route.HTTP,
        logged,
        decision,
        tuple(readings),
        messages,
        introduction=evidence.introduction(action, messages) if messages is not None else None,
    )


def _strictest(readings: list[Explanation]) -> Explanation:
    return max(readings, key=lambda r: (r.decision.refused, PRECEDENCE[r.decision.verdict]))


def _malformed(action: Action, ruleset: Ruleset, problem: str, complete: bool) -> Triage:
    read = judge(ruleset, dataclasses.replace(action, protocol="mcp"), complete=complete)
    decision = Decision(Verdict.DENY, None, f"{problem}; nothing was forwarded", "invalid_jsonrpc")
    return Triage(
        Route.MALFORMED,
        read.action,
        decision,
        (dataclasses.replace(read, decision=decision),),
        problem=problem,
    )

"""Each JSON-RPC message read as an MCP action and decided by the rules: the reading that MCP
tool calls take on every transport, and that the triage of an HTTP request adds to its own."""

from __future__ import annotations

import dataclasses
from typing import Any

from rules import Action, Effect, Explanation, Ruleset

from . import messages as mcp


def decide_messages(
    messages: list[dict[str, Any]],
    base: Action,
    ruleset: Ruleset,
    catalog: mcp.ToolCatalog,
    *,
    server: str | None = None,
    floor: Effect | None = None,
    complete: bool = False,
) -> list[Explanation]:
    """Each JSON-RPC message as an MCP action, decided. `server` names the server in the tool
    catalog (default: the base action's host:port); `floor` is the least effect each counts as."""
    server = server or server_of(base)
    out = []
    for message in messages:
        action = mcp.action_of(message, base, catalog, server)
        if floor is not None:
            action = dataclasses.replace(action, effect=action.effect.stricter(floor))
        out.append(judge(ruleset, action, complete=complete))
    return out


def server_of(action: Action) -> str:
    """The MCP server an action goes to, as the tool catalog knows it."""
    return f"{action.host}:{action.port}"


def judge(ruleset: Ruleset, action: Action, *, complete: bool) -> Explanation:
    """Decide one reading: with every matching rule for an explanation, else as the proxy does."""
    if complete:
        return ruleset.explain(action)
    decided, decision = ruleset.decide(action)
    return Explanation(decided, "", [], decision, "")

"""`airlock rules explain`: build a request from the command line and show how the rules decide it.

The request takes the proxy's own path from request to decision (triage): the same readings,
the same evidence rules for MCP, the same effect rules and egress by name. Only what the proxy
learns live is given here instead: `--mcp` says the server has shown it is MCP (and issued any
session id given), `--effect` stands for a tool's annotations or the method's effect.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from mitmproxy import http

from proxy.core.records import BodyPolicy, describe
from proxy.core.redact import Redactor
from proxy.mcp import messages as mcp
from proxy.mcp.evidence import Evidence
from proxy.mcp.readings import server_of
from proxy.ops.logview import cloud_call
from proxy.plane.adapters.http import from_request
from rules import Effect, Explanation, Rule, Ruleset, Verdict

from .triage import Triage, triage


class ExplainError(ValueError):
    """A value given to `rules explain` is malformed; the message names it."""


def body_argument(text: str | None) -> bytes:
    """`--body`: `@FILE` reads the file, anything else is the body itself."""
    if text is None:
        return b""
    if text.startswith("@"):
        try:
            return Path(text[1:]).read_bytes()
        except OSError as e:
            raise ExplainError(f"--body {text}: cannot read the file: {e.strerror or e}") from e
    return text.encode()


def header_arguments(pairs: list[str]) -> list[tuple[str, str]]:
    """`--header K:V` (repeatable)."""
    out = []
    for pair in pairs:
        name, sep, value = pair.partition(":")
        if not sep or not name.strip():
            raise ExplainError(f"--header {pair!r} is not NAME:VALUE")
        out.append((name.strip(), value.strip()))
    return out


def explain_request(
    ruleset: Ruleset,
    *,
    method: str | None,
    url: str,
    headers: list[tuple[str, str]],
    body: bytes,
    agent: str,
    tool: str | None = None,
    args: str | None = None,
    effect: str | None = None,
    is_mcp: bool = False,
) -> Triage:
    """Decide a request as the proxy would. `tool` (with `args`) makes it an MCP `tools/call` to
    a server that has shown it is MCP, as does `is_mcp` for the body given."""
    catalog = mcp.ToolCatalog()
    if tool is not None:
        try:
            arguments = json.loads(args) if args is not None else {}
        except ValueError as e:
            raise ExplainError(f"--args is not JSON: {e}") from e
        call = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": mcp.CALL,
            "params": {"name": tool, "arguments": arguments},
        }
        body, is_mcp = json.dumps(call).encode(), True
    elif args is not None:
        raise ExplainError("--args needs --tool: they are the tool call's arguments")
    try:
        fields = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        default = "POST" if tool is not None else "GET"
        req = http.Request.make((method or default).upper(), url, body, http.Headers(fields))
    except ValueError as e:
        raise ExplainError(f"--url {url!r}: {e}") from e
    action = from_request(req, agent=agent)
    if effect is not None:
        if tool is not None:
            catalog.effects[server_of(action)] = {tool: Effect(effect)}
        else:
            action = dataclasses.replace(action, effect=Effect(effect))
    return triage(action, ruleset, evidence=Evidence(assume=is_mcp), catalog=catalog, complete=True)


def render(read: Triage, ruleset: Ruleset, *, as_json: bool) -> str:
    """How the request was read and decided, as text for people, or as one JSON document: the
    reading whose decision holds in full, and every reading in brief."""
    explanation = read.deciding
    action = describe(explanation.action, redactor=Redactor(ruleset.secret_headers), bodies=BodyPolicy())
    readings = [_reading(r) for r in read.readings]
    decision = explanation.decision
    matched = [
        {
            "id": r.id,
            "action": r.verdict.value if r.verdict is not None else _modifies(r),
            "source": str(r.source),
            "message": r.message,
        }
        for r in explanation.matched
    ]
    repeats = repeats_of(explanation)
    if as_json:
        return json.dumps(
            {
                "action": action,
                "egress": explanation.egress,
                "matched": matched,
                "decision": {
                    "verdict": decision.verdict.value,
                    "rule": decision.rule,
                    "message": decision.message,
                    "refused": decision.refused,
                },
                "reason": explanation.reason,
                "repeats": repeats,
                "route": read.route.value,
                "readings": readings,
                "rules": ruleset.digest,
            },
            indent=2,
        )
    lines = [f"read as: {_route(read)}"]
    if (call := cloud_call(action | action.get("kube", {}))) is not None:
        lines.append(f"call: {call}")
    lines.append("action:")
    lines += [f"  {line}" for line in json.dumps(action, indent=2).splitlines()]
    lines.append(f"egress: {explanation.egress}")
    lines.append("matching rules:" if matched else "matching rules: none")
    for m in matched:
        lines.append(
            f"  {m['id']}  {m['action']}  ({m['source']})" + (f"  {m['message']}" if m["message"] else "")
        )
    outcome = "let through"
    if decision.refused or decision.verdict is Verdict.HOLD:
        outcome = "refused" if decision.refused else "held until voters decide"
    by = f" by {decision.rule}" if decision.rule else ""
    lines.append(f"decision: {decision.verdict.value}{by}: {outcome}")
    lines.append(f"reason: {explanation.reason}")
    if decision.message:
        lines.append(f"message to the agent: {decision.message}")
    for name, value in repeats.items():
        lines.append(f"{name}: " + ", ".join(f"{k} {v}" for k, v in value.items()))
    if len(readings) > 1:
        lines.append("readings (the strictest decides):")
        for r in readings:
            what = " ".join(str(r[k]) for k in ("protocol", "operation", "tool") if r.get(k))
            what += "".join(f" {t}" for t in r.get("targets", [])[:3])
            by = f" by {r['rule']}" if r["rule"] else ""
            lines.append(f"  {what}, {r['effect']}: {r['verdict']}{by}")
    return "\n".join(lines)


def _route(read: Triage) -> str:
    if read.route.value == "mcp":
        return "MCP messages to a server that has shown it is MCP"
    if len(read.readings) > 1 and read.messages is None:
        protocol = read.action.protocol
        return f"{protocol} request read in more than one way: each reading decided, the strictest holds"
    if len(read.readings) > 1:
        return "JSON-RPC to a server not shown to be MCP: decided as HTTP and as MCP, the strictest holds"
    return f"{read.action.protocol} request"


def _reading(r: Explanation) -> dict[str, Any]:
    a, d = r.action, r.decision
    return {
        "protocol": a.protocol,
        "operation": a.operation,
        "tool": a.tool,
        "targets": list(a.targets),
        "effect": a.effect.value,
        "verdict": d.verdict.value,
        "rule": d.rule,
        "refused": d.refused,
    }


def _modifies(rule: Rule) -> str:
    said = [f"effect {rule.effect.value}" if rule.effect else "", "dedup" if rule.dedup else ""]
    said.append("storm" if rule.storm else "")
    return "(none: sets " + ", ".join(s for s in said if s) + ")"


def repeats_of(explanation: Explanation) -> dict[str, dict[str, Any]]:
    """How repeats of the action would be handled: its dedup key and its storm breaker."""
    out: dict[str, dict[str, Any]] = {}
    dedup, storm = explanation.decision.dedup, explanation.decision.storm
    if dedup is not None:
        key = dedup.key_of(explanation.action)
        out["dedup"] = {
            "rule": dedup.rule,
            "key": key if key is not None else "(none: a field of the template is missing)",
            "scope": "all agents" if dedup.shared else "this agent",
            "on_conflict": "reject" if dedup.reject else "wait",
        }
    if storm is not None:
        out["storm"] = {"rule": storm.rule, "failures": storm.failures, "window": f"{storm.window:g}s"}
    return out

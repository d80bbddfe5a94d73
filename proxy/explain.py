"""`airlock rules explain`: build an action from the command line and show how the rules decide it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from mitmproxy import http

from rules import Effect, Explanation, Rule, Ruleset

from .protocols.http import from_request
from .records import BodyPolicy, describe
from .redact import Redactor


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


def build_action(
    *,
    method: str,
    url: str,
    headers: list[tuple[str, str]],
    body: bytes,
    agent: str,
    tool: str | None = None,
    args: str | None = None,
    effect: str | None = None,
) -> Any:
    """The Action the proxy would see for this request (or MCP tool call)."""
    try:
        fields = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        req = http.Request.make(method.upper(), url, body, http.Headers(fields))
    except ValueError as e:
        raise ExplainError(f"--url {url!r}: {e}") from e
    action = from_request(req, agent=agent)
    changes: dict[str, Any] = {}
    if tool is not None:
        changes.update(protocol="mcp", tool=tool)
    if args is not None:
        try:
            changes["args"] = json.loads(args)
        except ValueError as e:
            raise ExplainError(f"--args is not JSON: {e}") from e
    if effect is not None:
        changes["effect"] = Effect(effect)
    return dataclasses.replace(action, **changes) if changes else action


def render(explanation: Explanation, ruleset: Ruleset, *, as_json: bool) -> str:
    """The explanation as text for people, or as one JSON document."""
    action = describe(explanation.action, redactor=Redactor(ruleset.secret_headers), bodies=BodyPolicy())
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
                "rules": ruleset.digest,
            },
            indent=2,
        )
    lines = ["action:"]
    lines += [f"  {line}" for line in json.dumps(action, indent=2).splitlines()]
    lines.append(f"egress: {explanation.egress}")
    lines.append("matching rules:" if matched else "matching rules: none")
    for m in matched:
        lines.append(
            f"  {m['id']}  {m['action']}  ({m['source']})" + (f"  {m['message']}" if m["message"] else "")
        )
    outcome = "refused" if decision.refused else "let through"
    by = f" by {decision.rule}" if decision.rule else ""
    lines.append(f"decision: {decision.verdict.value}{by}: {outcome}")
    lines.append(f"reason: {explanation.reason}")
    if decision.message:
        lines.append(f"message to the agent: {decision.message}")
    for name, value in repeats.items():
        lines.append(f"{name}: " + ", ".join(f"{k} {v}" for k, v in value.items()))
    return "\n".join(lines)


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

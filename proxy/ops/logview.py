"""How the CLI prints actions and entries: one line per action, or one JSON object per line."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from store import Entry

# Fields every JSON line carries, in this order; other index fields follow.
JSON_FIELDS = ("id", "ts", "agent", "method", "url", "host", "effect", "state", "status", "rule")
_INTERNAL = frozenset({"entries", "writer"})


def iso(ts: float) -> str:
    """A timestamp as RFC 3339 UTC with milliseconds."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def as_json(index: dict[str, Any]) -> str:
    """One action as a JSON line."""
    out = {k: index.get(k) for k in JSON_FIELDS}
    out.update({k: v for k, v in index.items() if k not in out and k not in _INTERNAL})
    out["ts"] = iso(index["ts"])
    out["updated"] = iso(index.get("updated", index["ts"]))
    return json.dumps(out, ensure_ascii=False)


def as_line(index: dict[str, Any]) -> str:
    """One action as a readable line: id, time, state, method, status, URL, then who and why."""
    status = index.get("status")
    extra = [f"agent={index.get('agent', '-')}", f"effect={index.get('effect', '-')}"]
    if (call := cloud_call(index)) is not None:
        extra.insert(0, call)
    if index.get("rule"):
        extra.append(f"rule={index['rule']}")
    if index.get("tool"):
        extra.append(f"tool={index['tool']}")
        if index.get("args") is not None:
            extra.append(f"args={json.dumps(index['args'], ensure_ascii=False, separators=(',', ':'))}")
    elif index.get("operation") and index.get("protocol") != "aws":
        extra.append(f"op={index['operation']}")
    if index.get("tokens") is not None:
        extra.append(f"tokens={index['tokens']}")
    if index.get("proposed"):
        extra.append(f"proposed={','.join(map(str, index['proposed']))}")
    if index.get("proposed_by") is not None:
        extra.append(f"proposed_by={index['proposed_by']}")
    if index.get("upstream"):
        extra.append(f"upstream={index['upstream']}")
    if index.get("error"):
        extra.append(f"error={index['error']!r}")
    return (
        f"{index['id']:>6}  {iso(index['ts'])}  {index.get('state', '?'):<9}  "
        f"{index.get('method', '-'):<7} {status if status is not None else '-':>3}  "
        f"{index.get('url', '-')}  {' '.join(extra)}"
    )


def cloud_call(index: dict[str, Any]) -> str | None:
    """A cloud API call as its people say it: `aws s3 DeleteObject prod-users/report.csv`,
    `k8s delete deployments prod/api` (a batch: its first target and how many more), a model
    call `llm anthropic claude-sonnet-4-5 (stream)`."""
    protocol = index.get("protocol")
    if protocol == "aws":
        words = ["aws", str(index.get("service", "?")), str(index.get("operation") or "?")]
    elif protocol == "k8s":
        words = ["k8s", str(index.get("verb", "?")), str(index.get("resource", "?"))]
    elif protocol == "llm":
        words = ["llm", str(index.get("provider", "?")), str(index.get("model") or "?")]
        return " ".join(words + (["(stream)"] if index.get("stream") else []))
    else:
        return None
    targets = index.get("targets") or []
    if targets:
        words.append(str(targets[0]))
        more = max(int(index.get("count") or len(targets)), len(targets)) - 1
        if more:
            words.append(f"(+{more} more)")
    return " ".join(words)


def describe(index: dict[str, Any], entries: list[Entry]) -> str:
    """One action with every entry written about it, for `airlock show`."""
    lines = [as_line(index), ""]
    for e in entries:
        origin = e.data.get("proposed_by") if e.kind == "intent" else None
        if isinstance(origin, dict):
            call = f" ({origin['call']})" if origin.get("call") else ""
            lines.insert(
                1,
                f"  proposed by model call {origin.get('action')}: its answer asked for "
                f"tool {origin.get('tool')}{call} with these arguments",
            )
    for e in entries:
        state = f" -> {e.state}" if e.state else ""
        lines.append(f"  entry {e.seq}  {iso(e.ts)}  {e.kind}{state}  (writer {e.writer})")
        for text in json.dumps(e.data, indent=2, ensure_ascii=False).splitlines():
            lines.append(f"    {text}")
    return "\n".join(lines)

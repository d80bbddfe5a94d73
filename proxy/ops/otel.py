"""An entry of the log as an OpenTelemetry log record: what `--otlp-endpoint` ships and
`airlock export --format otlp` writes.

Attributes are named after OpenTelemetry's semantic conventions where one exists (HTTP, URL,
server, MCP and the GenAI conventions for tool calls) and under `airlock.*` otherwise. Every
value comes from the entry as the log holds it, redacted before it was written: nothing the log
does not hold is shipped, and neither headers nor bodies are.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from google.protobuf.json_format import MessageToJson
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from store import Entry

SCOPE = InstrumentationScope("airlock")
# States that mean something did not go as asked: shipped as warnings.
WARNING_STATES = frozenset({"denied", "aborted", "failed", "in_doubt"})
TOOL_CALL = "tools/call"
_WEB = ("http://", "https://", "ws://", "wss://")


def resource() -> Resource:
    """The resource every record names: `service.name=airlock`, with whatever the operator adds
    through OTEL_RESOURCE_ATTRIBUTES."""
    return Resource.create({"service.name": "airlock"})


def log_record(entry: Entry, where: Resource) -> ReadableLogRecord:
    """The log record of one entry, from `where`."""
    ns = round(entry.ts * 1e9)
    record = LogRecord(
        timestamp=ns,
        observed_timestamp=ns,
        severity_number=SeverityNumber.WARN if entry.state in WARNING_STATES else SeverityNumber.INFO,
        severity_text="WARN" if entry.state in WARNING_STATES else "INFO",
        body=summary(entry),
        attributes=attributes(entry),
        event_name=f"airlock.{entry.kind}",
    )
    return ReadableLogRecord(log_record=record, resource=where, instrumentation_scope=SCOPE)


def otlp_json(entries: Iterable[Entry], where: Resource) -> str:
    """Entries as one OTLP/JSON ExportLogsServiceRequest (the protobuf JSON mapping, enums as
    numbers, as OTLP/JSON requires), on one line."""
    request = encode_logs([log_record(e, where) for e in entries])
    return MessageToJson(request, use_integers_for_enums=True, indent=None)


def summary(entry: Entry) -> str:
    """The record's body: the entry's kind and what it says in a few words."""
    about = f" {entry.action}" if entry.action is not None else ""
    head = f"{entry.kind}{about}"
    asked = entry.data.get("action")
    if entry.kind == "intent" and isinstance(asked, dict):
        decision = entry.data.get("decision") or {}
        what = f"{asked.get('method', '')} {asked.get('url', '')}".strip()
        if asked.get("operation"):
            what = " ".join(str(x) for x in (asked["operation"], asked.get("tool") or "") if x)
        rule = f" by {decision['rule']}" if decision.get("rule") else ""
        return f"{head}: {what}: {decision.get('verdict', '?')}{rule} ({entry.state})"
    if entry.kind == "outcome":
        said = entry.data.get("status", entry.data.get("error", ""))
        return f"{head}: {entry.state} {said}".rstrip()
    return f"{head}: {entry.state}" if entry.state else head


def attributes(entry: Entry) -> dict[str, Any]:
    """The record's attributes: the entry's place in the chain, and what it says."""
    out: dict[str, Any] = {
        "airlock.seq": entry.seq,
        "airlock.hash": entry.hash,
        "airlock.prev": entry.prev,
        "airlock.kind": entry.kind,
        "airlock.writer": entry.writer,
    }
    if entry.action is not None:
        out["airlock.action"] = entry.action
    if entry.state is not None:
        out["airlock.state"] = entry.state
    asked = entry.data.get("action")
    if entry.kind == "intent" and isinstance(asked, dict):
        out |= _asked(entry, asked)
    data = entry.data
    if isinstance(data.get("status"), int) and not isinstance(data.get("status"), bool):
        out["http.response.status_code"] = data["status"]
    if isinstance(data.get("error"), str):
        out["airlock.error"] = data["error"]
    if isinstance(data.get("duration_ms"), int | float):
        out["airlock.duration_ms"] = float(data["duration_ms"])
    for field in ("voter", "vote", "executed"):
        if isinstance(data.get(field), str | bool):
            out[f"airlock.{field}"] = data[field]
    if entry.kind == "decision" and isinstance(data.get("decision"), str):
        out["airlock.decision"] = data["decision"]
    return out


def _asked(entry: Entry, asked: dict[str, Any]) -> dict[str, Any]:
    """What an intent says was asked and decided."""
    out: dict[str, Any] = {}
    decision = entry.data.get("decision")
    if isinstance(decision, dict):
        out |= _strings({"airlock.decision": decision.get("verdict"), "airlock.rule": decision.get("rule")})
    out |= _strings(
        {
            "airlock.agent": asked.get("agent"),
            "airlock.effect": asked.get("effect"),
            "airlock.protocol": asked.get("protocol"),
            "airlock.upstream": asked.get("upstream"),
        }
    )
    url = asked.get("url")
    if isinstance(url, str) and url.startswith(_WEB):
        out |= _strings({"http.request.method": asked.get("method"), "url.full": url})
        out |= _strings({"server.address": asked.get("host")})
        port = asked.get("port")
        if isinstance(port, int) and not isinstance(port, bool) and port > 0:
            out["server.port"] = port
    if asked.get("protocol") == "mcp":
        out |= _strings({"mcp.method.name": asked.get("operation")})
        request_id = _jsonrpc_id(asked.get("body"))
        if request_id is not None:
            out["jsonrpc.request.id"] = request_id
        if asked.get("operation") == TOOL_CALL:
            out["gen_ai.operation.name"] = "execute_tool"
            out |= _strings({"gen_ai.tool.name": asked.get("tool")})
            # The client's JSON-RPC id repeats in every session; the action id names the call.
            out["gen_ai.tool.call.id"] = str(entry.action)
    return out


def _strings(values: dict[str, Any]) -> dict[str, str]:
    return {k: v for k, v in values.items() if isinstance(v, str) and v}


def _jsonrpc_id(body: Any) -> str | None:
    """The JSON-RPC id of a single request, when the logged body text holds one."""
    if not isinstance(body, dict) or not isinstance(body.get("text"), str):
        return None
    try:
        message = json.loads(body["text"])
    except ValueError:
        return None
    if not isinstance(message, dict) or "id" not in message:
        return None
    found = message["id"]
    return str(found) if isinstance(found, str | int) and not isinstance(found, bool) else None

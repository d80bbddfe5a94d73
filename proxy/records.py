"""Log records for what the gate sees: the intent of an action, its outcome, its resolution."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from rules import Action, Decision, Ruleset, Verdict
from store import ActionRef, Claim, Record, Settle, State

from .redact import Redactor

ARGS_SHOWN = 256  # bytes of a tool call's arguments kept in the action's summary (`airlock log`)


@dataclass(frozen=True)
class BodyPolicy:
    """How much of a body the log keeps; its size and digest are always kept."""

    limit: int = 64 * 1024


def body_excerpt(body: bytes | None, policy: BodyPolicy) -> dict[str, Any]:
    """Size, SHA-256 and the first `limit` bytes of a body (as text where it is UTF-8)."""
    if body is None:
        return {"size": 0, "sha256": hashlib.sha256(b"").hexdigest()}
    kept = body[: policy.limit]
    out: dict[str, Any] = {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    if len(body) > policy.limit:
        out["truncated"] = True
    try:
        out["text"] = kept.decode()
    except UnicodeDecodeError:
        out["base64"] = base64.b64encode(kept).decode()
    return out


def intent(
    action: Action,
    decision: Decision,
    ref: ActionRef,
    *,
    redactor: Redactor,
    bodies: BodyPolicy,
    rules_digest: str,
    claim: Claim | None = None,
    replay_of: int | None = None,
    verify: dict[str, Any] | None = None,
) -> Record:
    """The first entry of an action: what was asked (redacted) and what the rules decided.

    With `claim` the action takes an idempotency key; with `replay_of` it was answered from
    that earlier action's stored reply instead of going upstream; `verify` is the read that
    can settle the action if it is left in doubt.
    """
    described = describe(action, redactor=redactor, bodies=bodies)
    url = described["url"]
    state = State.DENIED if decision.verdict is Verdict.DENY else State.PENDING
    extra: dict[str, Any] = {}
    if replay_of is not None:
        state, extra = State.REPLAYED, {"replay_of": replay_of}
    details = {"verify": verify | {"url": _redact_url(verify["url"], redactor)}} if verify else {}
    return Record(
        kind="intent",
        action=ref,
        state=state,
        opens=True,
        claim=claim,
        data={
            "action": described,
            "decision": {
                "verdict": decision.verdict.value,
                "rule": decision.rule,
                "message": decision.message,
            },
            "rules": rules_digest,
        }
        | extra
        | details,
        summary={
            "agent": action.agent,
            "protocol": action.protocol,
            "method": action.method,
            "url": url,
            "host": action.host,
            "effect": action.effect.value,
            "verdict": decision.verdict.value,
            "rule": decision.rule,
            "status": None,
        }
        | {k: described[k] for k in ("upstream", "tool", "operation") if k in described}
        | ({"args": capped_args(described["args"], ARGS_SHOWN)} if "args" in described else {})
        | extra,
    )


def _redact_url(url: str, redactor: Redactor) -> str:
    head, sep, query = url.partition("?")
    return f"{head}?{redactor.query(query)}" if sep else url


def describe(action: Action, *, redactor: Redactor, bodies: BodyPolicy) -> dict[str, Any]:
    """An action as JSON, credentials redacted and the body cut to the policy's limit."""
    url = _redact_url(action.url, redactor)
    described: dict[str, Any] = {
        "protocol": action.protocol,
        "agent": action.agent,
        "method": action.method,
        "url": url,
        "host": action.host,
        "port": action.port,
        "path": action.path,
        "effect": action.effect.value,
        "headers": redactor.headers(action.headers),
        "body": body_excerpt(action.body, bodies),
    }
    for optional in ("upstream", "service", "operation", "tool"):
        if (value := getattr(action, optional)) is not None:
            described[optional] = value
    if action.args is not None:
        described["args"] = capped_args(redactor.args(action.args), bodies.limit)
    return described


def capped_args(args: Any, limit: int) -> Any:
    """Arguments as logged: whole when their JSON fits in `limit` bytes, else its first bytes."""
    encoded = json.dumps(args, ensure_ascii=False, separators=(",", ":")).encode()
    if len(encoded) <= limit:
        return args
    return {"truncated": True, "size": len(encoded), "text": encoded[:limit].decode(errors="ignore")}


def outcome(
    ref: ActionRef,
    *,
    status: int,
    size: int,
    sha256: str,
    duration_ms: float,
    headers: dict[str, str],
    error: str | None = None,
    settle: Settle | None = None,
) -> Record:
    """The response an action got, whatever its status code (and a stream error, if it broke)."""
    data: dict[str, Any] = {
        "status": status,
        "size": size,
        "sha256": sha256,
        "duration_ms": round(duration_ms, 3),
        "headers": headers,
    }
    if error is not None:
        data["error"] = error
    return Record(
        kind="outcome",
        action=ref,
        state=State.COMMITTED,
        data=data,
        summary={"status": status},
        settle=settle,
    )


def failure(ref: ActionRef, *, error: str, duration_ms: float, keep_key: bool = False) -> Record:
    """An action that got no response: the upstream failed or timed out. Its key is released
    for the next attempt, unless `keep_key` (a rule counts a lost answer as final)."""
    return Record(
        kind="outcome",
        action=ref,
        state=State.FAILED,
        data={"error": error, "duration_ms": round(duration_ms, 3)},
        summary={"error": error},
        settle=Settle(keep=keep_key),
    )


def resolution(
    action_id: int, *, executed: bool, note: str, by: str, found: dict[str, Any] | None = None
) -> Record:
    """The word on an in-doubt action, an operator's or a verify read's (`found`: what the read
    saw): it ran upstream, or it did not."""
    return Record(
        kind="resolution",
        action=ActionRef(action_id),
        state=State.COMMITTED if executed else State.ABORTED,
        expect=State.IN_DOUBT,
        # Executed: its key is spent. Not executed: its key is free for the next attempt.
        settle=Settle(keep=executed),
        data={"executed": executed, "note": note, "by": by} | ({"found": found} if found else {}),
        summary={"resolution": "executed" if executed else "not_executed"},
    )


def unsettled(action_id: int, *, found: dict[str, Any]) -> Record:
    """A verify read that could not tell whether an in-doubt action ran: it stays in doubt."""
    return Record(
        kind="verify",
        action=ActionRef(action_id),
        expect=State.IN_DOUBT,
        data={"found": found, "note": "inconclusive: the action stays in doubt"},
        summary={"verify": "inconclusive"},
    )


def rules_loaded(ruleset: Ruleset, *, reason: str) -> Record:
    """The rules now in force: their digest, files and size, and why they were loaded."""
    return Record(
        kind="rules",
        data={
            "digest": ruleset.digest,
            "sources": [str(p) for p in ruleset.sources],
            "rules": len(ruleset.rules),
            "reason": reason,
        },
    )

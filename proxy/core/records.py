"""Log records for what the gate sees: the intent of an action, its outcome, its resolution."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from rules import Action, Decision, Effect, Ruleset, Verdict, json_of
from store import INERT, ActionRef, Claim, KeyOutcome, Record, State

from . import redact
from .proposals import ModelAnswer
from .redact import Redactor

ARGS_SHOWN = 256  # bytes of arguments (JSON) the summary holds whole (`airlock log`); larger: the intent
TARGETS_KEPT = 100  # targets an intent lists (a batch may name thousands: `count` says how many)
TARGETS_SHOWN = 10  # targets the summary lists (`airlock log`)
FENCED = "fenced"  # a Decision's error for an action of a superseded session
ARGS_KEPT = 64 * 1024  # bytes of a proposed tool call's arguments (JSON) an outcome keeps, when kept


@dataclass(frozen=True)
class BodyPolicy:
    """How much of a request body the log keeps, by the action's effect: `limit` bytes unless
    `effects` names the effect. A read keeps none by default: reads are most of the traffic and
    their bodies are seldom the evidence. Nor does a model call (its prompt is most of the log's
    bytes, and holds whatever the agent read). A body's size and digest are always kept."""

    limit: int = 64 * 1024
    effects: tuple[tuple[Effect, int], ...] = ((Effect.READ, 0), (Effect.INFERENCE, 0))

    def limit_for(self, effect: Effect) -> int:
        """The bytes of a body kept for an action of this effect."""
        return dict(self.effects).get(effect, self.limit)

    def with_limit(self, effect: Effect | None, size: int) -> BodyPolicy:
        """This policy with `size` for one effect, or (no effect) for every effect not named."""
        if effect is None:
            return dataclasses.replace(self, limit=size)
        return dataclasses.replace(self, effects=tuple((dict(self.effects) | {effect: size}).items()))


# A token cut by the body limit is still recognised: the kept bytes are redacted with this much
# of what follows them, then cut.
_OVERLAP = 512


def body_excerpt(
    body: bytes | None,
    policy: BodyPolicy,
    *,
    content_type: str = "",
    effect: Effect = Effect.WRITE,
    secret_fields: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Size and SHA-256 of a body as it was sent, and its first bytes up to the policy's limit
    for `effect`, credentials redacted (as text where it is UTF-8, else base64; `redacted: true`
    when any were), and the values of `secret_fields` too. With a limit of 0 only the size and
    digest are kept."""
    limit = policy.limit_for(effect)
    if body is None:
        return {"size": 0, "sha256": hashlib.sha256(b"").hexdigest()}
    out: dict[str, Any] = {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    if limit == 0:
        return out | ({"truncated": True} if body else {})
    if len(body) > limit:
        out["truncated"] = True
        # Not parsed: a body past the limit is redacted as text, by name=value pairs and shapes.
        seen = body[: limit + _OVERLAP]
        named = redact.named(seen, secret_fields, content_type)
        cleaned = redact.body(named, content_type, parsed=_never)
        kept = cleaned[:limit]
    else:
        seen = body
        named = redact.named(body, secret_fields, content_type)
        cleaned = kept = redact.body(named, content_type, parsed=json_of)
    if cleaned is not named or named is not seen:
        out["redacted"] = True
    text = _utf8(kept, cut=len(body) > limit)
    if text is None:
        out["base64"] = base64.b64encode(kept).decode()
    else:
        out["text"] = text
    return out


def _never(_: bytes) -> None:
    return None


def _utf8(data: bytes, *, cut: bool) -> str | None:
    # A cut may split a multi-byte character: drop its first bytes rather than the whole text.
    for trim in range(4 if cut else 1):
        try:
            return data[: len(data) - trim].decode()
        except UnicodeDecodeError:
            continue
    return None


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
    held: dict[str, Any] | None = None,
    proposed_by: dict[str, Any] | None = None,
) -> Record:
    """The first entry of an action: what was asked (redacted) and what the rules decided.

    With `claim` the action takes an idempotency key; with `replay_of` it was answered from
    that earlier action's stored reply instead of going upstream; `verify` is the read that
    can resolve the action if it is left in doubt; `held` (the hold policy, the time it ends
    and the request's fingerprint) parks it for votes; `proposed_by` names the model call whose
    answer proposed this tool call. A model call's intent is `inert`: it changes nothing
    upstream, so a crash before its outcome leaves it failed, never in doubt.
    """
    described = describe(action, redactor=redactor, bodies=bodies)
    url = described["url"]
    listed: dict[str, Any] = {}
    if "args" in described:
        listed["args"], whole = listed_args(described)
        if whole:
            del described["args"]  # in the summary, which the entry carries too
    state = State.DENIED if decision.verdict is Verdict.DENY else State.PENDING
    if decision.error == FENCED:
        state = State.FENCED  # refused because its session was superseded
    extra: dict[str, Any] = {}
    if replay_of is not None:
        state, extra = State.REPLAYED, {"replay_of": replay_of}
    waits: dict[str, Any] = {}
    if held is not None:
        state, waits = State.HELD, {"hold_until": held["until"], "fingerprint": held["fingerprint"]}
    details = {"verify": verify_read(verify, redactor)} if verify else {}
    if held is not None:
        details["hold"] = held
    if proposed_by is not None:
        details["proposed_by"] = proposed_by
        extra_summary = {"proposed_by": proposed_by["action"]}
    else:
        extra_summary = {}
    if action.effect is Effect.INFERENCE:
        extra_summary[INERT] = True
    return Record(
        kind="intent",
        action=ref,
        state=state,
        new_action=True,
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
        | {
            k: described[k]
            for k in ("upstream", "tool", "operation", "service", "region", "count")
            if k in described
        }
        | ({"targets": described["targets"][:TARGETS_SHOWN]} if "targets" in described else {})
        | described.get("kube", {})
        | _inference_summary(described)
        | listed
        | extra
        | waits
        | extra_summary,
    )


def verify_read(read: dict[str, Any], redactor: Redactor) -> dict[str, Any]:
    """A verify read as logged. The read is later sent as logged, so one that would carry a
    credential the log may not keep (in its URL, or a header not taken from the environment as
    `${NAME}`) is marked refused instead of being sent redacted."""
    out = dict(read)
    if read.get("refused"):
        out["refused"] = redact.text(read["refused"])
    if read.get("url") is not None:
        out["url"] = redactor.url(read["url"])
        if out["url"] != read["url"] and "refused" not in out:
            out["refused"] = "its URL holds a credential, which the log does not keep"
    headers = {}
    for name, value in read.get("headers", {}).items():
        if "${" in value:
            headers[name] = value
            continue
        headers[name] = redact.REDACTED if redactor.secret_header(name) else redact.text(value)
        if headers[name] != value and "refused" not in out:
            out["refused"] = f"its header {name} holds a credential: name it as ${{VARIABLE}} instead"
    out["headers"] = headers
    return out


def describe(action: Action, *, redactor: Redactor, bodies: BodyPolicy) -> dict[str, Any]:
    """An action as JSON, credentials redacted and the body cut to the policy's limit."""
    url = _url(action, redactor)
    described: dict[str, Any] = {
        "protocol": action.protocol,
        "agent": action.agent,
        "method": action.method,
        "url": url,
        "host": action.host,
        "port": action.port,
        "path": redact.text(action.path),
        "effect": action.effect.value,
        "headers": _headers(action, redactor),
    }
    content_type = action.headers.get("content-type", "")
    if _args_carried(action):
        # The message's arguments are kept once, parsed (`args`): the body only by size and digest.
        described["body"] = body_excerpt(action.body, BodyPolicy(0)) | {"kept_as": "args"}
    else:
        described["body"] = body_excerpt(
            action.body,
            bodies,
            content_type=content_type,
            effect=action.effect,
            secret_fields=action.secret_fields,
        )
    if action.body_streamed:
        # Streamed upstream unread: its size and digest are the outcome's (`request_body`).
        length = action.headers.get("content-length", "")
        described["body"] = {"streamed": True} | ({"length": int(length)} if length.isdigit() else {})
    for optional in (
        "upstream",
        "service",
        "operation",
        "region",
        "tool",
        "configured_agent",
        "session",
        "epoch",
        "body_problem",
    ):
        if (value := getattr(action, optional)) is not None:
            described[optional] = value
    if action.targets:
        described["targets"] = [redact.text(t) for t in action.targets[:TARGETS_KEPT]]
        if action.count is not None or len(action.targets) > TARGETS_KEPT:
            described["count"] = action.count if action.count is not None else len(action.targets)
    if action.kube is not None:
        described["kube"] = {k: v for k, v in kube_fields(action).items() if v is not None}
    if action.inference is not None:
        described["inference"] = {
            "provider": action.inference.provider,
            "api": action.inference.api,
            "model": action.inference.model,
            "stream": action.inference.stream,
        }
    if action.args is not None:
        # Never fewer bytes than the listing shows, whatever the effect's body limit.
        limit = max(bodies.limit_for(action.effect), ARGS_SHOWN)
        described["args"] = capped_args(redactor.args(action.args), limit)
    return described


def _url(action: Action, redactor: Redactor) -> str:
    """The URL with credentials redacted, and the query fields the service marks secret (a
    query protocol's call sent as a GET carries its members in the query)."""
    url = redactor.url(action.url)
    head, sep, query = url.partition("?")
    if not sep or not action.secret_fields:
        return url
    form = "application/x-www-form-urlencoded"
    return f"{head}?{redact.named(query.encode(), action.secret_fields, form).decode()}"


def _headers(action: Action, redactor: Redactor) -> dict[str, str]:
    """The headers with credentials redacted, and those the service marks secret."""
    shown = redactor.headers(action.headers)
    if action.secret_fields:
        secret = {n.lower() for n in action.secret_fields}
        shown = {k: redact.REDACTED if k.lower() in secret else v for k, v in shown.items()}
    return shown


def _inference_summary(described: dict[str, Any]) -> dict[str, Any]:
    """A model call's provider, model and whether it streams, for `airlock log`."""
    inference = described.get("inference")
    if inference is None:
        return {}
    return {"provider": inference["provider"], "model": inference["model"], "stream": inference["stream"]}


def kube_fields(action: Action) -> dict[str, str | None]:
    """A Kubernetes request's verb, resource (as RBAC names it), group, namespace and name."""
    k = action.kube
    if k is None:
        return {}
    return {
        "verb": k.verb,
        "resource": k.resources,
        "group": k.group or None,
        "namespace": k.namespace,
        "name": k.name,
    }


def _args_carried(action: Action) -> bool:
    """True when an MCP message's arguments were parsed from its body (not replaced by a note
    saying why they could not be logged)."""
    return action.protocol == "mcp" and action.args is not None and not isinstance(action.args, str)


def listed_args(described: dict[str, Any]) -> tuple[Any, bool]:
    """The arguments the action's listing shows, and whether they are all of them: whole when
    their JSON fits in ARGS_SHOWN bytes (the intent's data then leaves them out, so they are
    stored once), else their size only (the intent's data holds them)."""
    args = described["args"]
    encoded = json.dumps(args, ensure_ascii=False, separators=(",", ":")).encode()
    if len(encoded) <= ARGS_SHOWN:  # capped arguments never are: they keep ARGS_SHOWN bytes and more
        return args, True
    capped = isinstance(args, dict) and args.get("truncated") is True and isinstance(args.get("size"), int)
    return {"truncated": True, "size": args["size"] if capped else len(encoded)}, False


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
    key_outcome: KeyOutcome | None = None,
    request_body: dict[str, Any] | None = None,
    answer: ModelAnswer | None = None,
    keep_arguments: bool = False,
    redactor: Redactor | None = None,
) -> Record:
    """The response an action got, whatever its status code (and a stream error, if it broke);
    `request_body`: the size and digest of a request body that streamed upstream.

    A model call's `answer` adds the tokens it used and the tool calls it proposes: each by
    name, id and the digest of its arguments, and the arguments themselves (redacted, capped)
    only with `keep_arguments`.
    """
    data: dict[str, Any] = {
        "status": status,
        "size": size,
        "sha256": sha256,
        "duration_ms": round(duration_ms, 3),
        "headers": headers,
    }
    if request_body is not None:
        data["request_body"] = request_body
    summary: dict[str, Any] = {"status": status}
    if error is not None:
        data["error"] = redact.text(error)
    if answer is not None:
        data["answer"] = answer_of(answer, keep_arguments=keep_arguments, redactor=redactor or Redactor())
        if answer.usage is not None:
            summary["tokens"] = answer.usage.total
        if answer.calls:
            summary["proposed"] = [c.name for c in answer.calls[:TARGETS_SHOWN]]
    return Record(
        kind="outcome",
        action=ref,
        state=State.COMMITTED,
        data=data,
        summary=summary,
        key_outcome=key_outcome,
    )


def answer_of(answer: ModelAnswer, *, keep_arguments: bool, redactor: Redactor) -> dict[str, Any]:
    """What a model's answer said, as logged."""
    out: dict[str, Any] = {}
    if answer.model is not None:
        out["model"] = answer.model
    if answer.usage is not None:
        out["usage"] = answer.usage.as_json()
    if answer.calls:
        calls = []
        for call in answer.calls[:TARGETS_KEPT]:
            logged: dict[str, Any] = {"tool": call.name, "digest": call.digest}
            if call.id is not None:
                logged["id"] = call.id
            if keep_arguments:
                logged["arguments"] = capped_args(redactor.args(call.arguments), ARGS_KEPT)
            calls.append(logged)
        out["proposed"] = calls
        if len(answer.calls) > TARGETS_KEPT:
            out["proposed_count"] = len(answer.calls)
    if answer.problem is not None:
        out["problem"] = redact.text(answer.problem)
    return out


def failure(
    ref: ActionRef,
    *,
    error: str,
    duration_ms: float,
    keep_key: bool = False,
    request_body: dict[str, Any] | None = None,
) -> Record:
    """An action that got no response: the upstream failed or timed out. Its key is released
    for the next attempt, unless `keep_key` (a rule counts a lost answer as final).
    `request_body`: how much of a streaming request body passed before it failed."""
    error = redact.text(error)
    data: dict[str, Any] = {"error": error, "duration_ms": round(duration_ms, 3)}
    if request_body is not None:
        data["request_body"] = request_body
    return Record(
        kind="outcome",
        action=ref,
        state=State.FAILED,
        data=data,
        summary={"error": error},
        key_outcome=KeyOutcome(keep=keep_key),
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
        if_state=State.IN_DOUBT,
        # Executed: its key is spent. Not executed: its key is free for the next attempt.
        key_outcome=KeyOutcome(keep=executed),
        data={"executed": executed, "note": redact.text(note), "by": by}
        | ({"found": _found(found)} if found else {}),
        summary={"resolution": "executed" if executed else "not_executed"},
    )


def still_in_doubt(action_id: int, *, found: dict[str, Any]) -> Record:
    """A verify read that could not tell whether an in-doubt action ran: it stays in doubt."""
    return Record(
        kind="verify",
        action=ActionRef(action_id),
        if_state=State.IN_DOUBT,
        data={"found": _found(found), "note": "inconclusive: the action stays in doubt"},
        summary={"verify": "inconclusive"},
    )


def _found(found: dict[str, Any]) -> dict[str, Any]:
    """What a verify read saw, as logged: its URL and error redacted."""
    return {
        k: (redact.url(v) if k == "url" else redact.text(v)) if isinstance(v, str) else v
        for k, v in found.items()
    }


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

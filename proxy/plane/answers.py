"""Answers to agents that the proxy gives itself: refusals that say why and what to do."""

from __future__ import annotations

import json

from mitmproxy import http

from rules import Action, Decision

from .adapters import aws

RULE_HEADER = "X-Airlock-Rule"
# Kubernetes' Status reasons for the statuses a refusal has.
KUBE_REASONS = {
    400: "BadRequest",
    403: "Forbidden",
    409: "Conflict",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
}


def _json(status: int, body: dict[str, object], extra: dict[str, str] | None = None) -> http.Response:
    headers = {"Content-Type": "application/json", "Cache-Control": "no-store"} | (extra or {})
    return http.Response.make(status, json.dumps(body).encode() + b"\n", headers)


def refusal(
    decision: Decision,
    action_id: int | None,
    status: int = 403,
    headers: dict[str, str] | None = None,
    *,
    action: Action | None = None,
) -> http.Response:
    """A refusal (403 unless said otherwise) naming the rule, why, and what to do: in the shape
    the client reads (an AWS SDK its protocol's error, kubectl a Status), else Airlock's JSON."""
    rule = decision.rule
    extra = ({RULE_HEADER: rule} if rule else {}) | (headers or {})
    if action is not None and action.protocol == "aws":
        return _aws(decision, action, action_id, status, extra)
    if action is not None and action.protocol == "k8s":
        return _kube(decision, action, action_id, status, extra)
    if action is not None and action.inference is not None:
        if action.service is not None:  # Bedrock: an AWS API
            return _aws(decision, action, action_id, status, extra)
        return _model_api(decision, action.inference.provider, action_id, status, extra)
    return _json(
        status,
        {
            "error": decision.error or "denied",
            "rule": rule,
            "message": decision.message,
            "action_id": action_id,
        },
        extra,
    )


def said(decision: Decision, action_id: int | None) -> str:
    """A refusal's message as one line: what the rule says, which rule, which action."""
    parts = [decision.message or decision.error or "refused"]
    if decision.rule:
        parts.append(f"rule {decision.rule}")
    if action_id is not None:
        parts.append(f"action {action_id}")
    return f"airlock: {parts[0]} ({', '.join(parts[1:])})" if len(parts) > 1 else f"airlock: {parts[0]}"


def _aws(
    decision: Decision, action: Action, action_id: int | None, status: int, extra: dict[str, str]
) -> http.Response:
    protocol = aws.protocol_of(action.service) or "rest-xml"
    error = aws.aws_error(protocol, action.service, status, said(decision, action_id), f"airlock-{action_id}")
    headers = {"Content-Type": error.content_type, "Cache-Control": "no-store"} | error.headers | extra
    return http.Response.make(status, error.body, headers)


def _kube(
    decision: Decision, action: Action, action_id: int | None, status: int, extra: dict[str, str]
) -> http.Response:
    k = action.kube
    details: dict[str, str] = {}
    if k is not None:
        details = (
            {"kind": k.resource}
            | ({"name": k.name} if k.name else {})
            | ({"group": k.group} if k.group else {})
        )
    status_object = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": said(decision, action_id),
        "reason": KUBE_REASONS.get(status, "Forbidden" if status < 500 else "InternalError"),
        "details": details,
        "code": status,
    }
    return _json(status, status_object, extra)


# The error types model APIs give these statuses (their SDKs raise by them).
ANTHROPIC_ERRORS = {400: "invalid_request_error", 429: "rate_limit_error", 503: "overloaded_error"}
OPENAI_ERRORS = {400: "invalid_request_error", 429: "rate_limit_exceeded"}
GEMINI_STATUSES = {400: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE"}


def _model_api(
    decision: Decision, provider: str, action_id: int | None, status: int, extra: dict[str, str]
) -> http.Response:
    """A refused model call in its API's own error shape, so that its SDK raises with the
    message (the rule and the action id ride along for people who read the body)."""
    message = said(decision, action_id)
    ours: dict[str, object] = {
        "rule": decision.rule,
        "action_id": action_id,
        "airlock_error": decision.error or "denied",
    }
    if provider == "anthropic":
        kind = ANTHROPIC_ERRORS.get(status, "permission_error" if status == 403 else "api_error")
        shaped: dict[str, object] = {"type": "error", "error": {"type": kind, "message": message}}
        return _json(status, shaped | ours, extra)
    if provider == "gemini":
        code = GEMINI_STATUSES.get(status, "PERMISSION_DENIED" if status == 403 else "INTERNAL")
        shaped = {"error": {"code": status, "message": message, "status": code}}
        return _json(status, shaped | ours, extra)
    kind = OPENAI_ERRORS.get(status, "permission_denied" if status == 403 else "server_error")
    error = {"message": message, "type": kind, "param": None, "code": decision.error or "denied"}
    shaped = {"error": error}
    return _json(status, shaped | ours, extra)


def internal_error(message: str) -> http.Response:
    """500 when the proxy failed to decide an action; the action was not forwarded."""
    return _json(500, {"error": "internal", "rule": None, "message": message, "action_id": None})

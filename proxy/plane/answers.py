"""Answers to agents that the proxy gives itself: refusals that say why and what to do."""

from __future__ import annotations

import json

from mitmproxy import http

from rules import Decision

RULE_HEADER = "X-Airlock-Rule"


def _json(status: int, body: dict[str, object], extra: dict[str, str] | None = None) -> http.Response:
    headers = {"Content-Type": "application/json", "Cache-Control": "no-store"} | (extra or {})
    return http.Response.make(status, json.dumps(body).encode() + b"\n", headers)


def refusal(
    decision: Decision, action_id: int | None, status: int = 403, headers: dict[str, str] | None = None
) -> http.Response:
    """A refusal (403 unless said otherwise) naming the rule, why, and what to do."""
    rule = decision.rule
    return _json(
        status,
        {
            "error": decision.error or "denied",
            "rule": rule,
            "message": decision.message,
            "action_id": action_id,
        },
        ({RULE_HEADER: rule} if rule else {}) | (headers or {}),
    )


def internal_error(message: str) -> http.Response:
    """500 when the proxy failed to decide an action; the action was not forwarded."""
    return _json(500, {"error": "internal", "rule": None, "message": message, "action_id": None})

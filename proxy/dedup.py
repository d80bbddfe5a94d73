"""Exactly-once effects for requests that carry an `Idempotency-Key` (IETF draft semantics).

The key is scoped by agent and host, and stands for one payload: method, target and body. A
completed key replays its stored reply; one in flight makes duplicates wait for it; the same
key with another payload is a 422; a key whose action is in doubt after a crash is a 409.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any

from mitmproxy import http

from rules import Action
from store import Claim

from .redact import Redactor

KEY_HEADER = "idempotency-key"
REPLAYED_HEADER = "Idempotent-Replayed"
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)


@dataclass(frozen=True)
class DedupPolicy:
    """How long keys live, how long a duplicate waits for the first, how much reply is kept."""

    ttl: float = 24 * 3600
    wait: float = 30.0
    reply_limit: int = 1 << 20


def payload_digest(action: Action) -> str:
    """What a key stands for: the method, the target and the body, hashed."""
    h = hashlib.sha256(f"{action.method} {action.host}:{action.port}{action.path}?{action.query}\n".encode())
    h.update(action.body or b"")
    return h.hexdigest()


def claim_for(action: Action, policy: DedupPolicy) -> Claim | None:
    """The key a mutating request claims, if it carries one."""
    key = action.headers.get(KEY_HEADER, "").strip()
    if not key or not action.effect.mutating:
        return None
    return Claim(key=f"{action.agent}|{action.host}|{key}", payload=payload_digest(action), ttl=policy.ttl)


def is_final(status: int) -> bool:
    """2xx and 4xx answers are effects (or final refusals) and are replayed; 5xx let a retry through."""
    return status < 500


def reply_of(response: http.Response, body: bytes | None, redactor: Redactor) -> dict[str, Any] | None:
    """The reply to store for replays: status, headers minus hop-by-hop and secrets, body."""
    if body is None:
        return None
    headers = [
        [name, value]
        for name, value in response.headers.items(multi=True)
        if name.lower() not in HOP_BY_HOP and name.lower() not in redactor.headers_secret
    ]
    return {"status": response.status_code, "headers": headers, "body": base64.b64encode(body).decode()}


def replay(reply: dict[str, Any], original: int) -> http.Response:
    """The stored reply, marked as a replay of the original action."""
    fields = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in reply["headers"]]
    response = http.Response.make(reply["status"], base64.b64decode(reply["body"]), http.Headers(fields))
    response.headers[REPLAYED_HEADER] = "true"
    response.headers["X-Airlock-Replay-Of"] = str(original)
    return response

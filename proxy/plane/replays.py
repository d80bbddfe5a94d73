"""Replays: the reply stored under a completed idempotency key, and the HTTP answer made from it."""

from __future__ import annotations

import base64
from typing import Any

from mitmproxy import http

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


def reply_of(response: http.Response, body: bytes | None) -> dict[str, Any] | None:
    """The reply to store for replays: status, headers minus hop-by-hop ones, body. It is kept
    verbatim (cookies and tokens included) because a replay must give the client what the first
    answer gave it; it lives in the keys database, never in the log's entries."""
    if body is None:
        return None
    headers = [
        [name, value] for name, value in response.headers.items(multi=True) if name.lower() not in HOP_BY_HOP
    ]
    return {"status": response.status_code, "headers": headers, "body": base64.b64encode(body).decode()}


def replay(reply: dict[str, Any], original: int) -> http.Response | None:
    """The stored HTTP reply, marked as a replay of the original action (None if the stored
    reply is not an HTTP one)."""
    if "status" not in reply:
        return None
    fields = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in reply["headers"]]
    response = http.Response.make(reply["status"], base64.b64decode(reply["body"]), http.Headers(fields))
    response.headers[REPLAYED_HEADER] = "true"
    response.headers["X-Airlock-Replay-Of"] = str(original)
    return response

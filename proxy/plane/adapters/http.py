"""The generic HTTP adapter: method, target and headers of a flow become an Action.

The body is decoded from its Content-Encoding within bounds (adapters/encoding.py). The effect
is the strictest of the methods an upstream could read: the method sent, and any a
method-override header or `_method` field names. `X-Airlock-Agent` is a claim: the action is
recorded under the claimed name and keeps the configured agent beside it.
"""

from __future__ import annotations

import dataclasses

from mitmproxy import http

from rules import Action, Effect, readings_of

from .encoding import decode

AGENT_HEADER = "x-airlock-agent"

# Methods not listed count as writes: an unknown verb is treated as a mutation (fail closed).
METHOD_EFFECTS = {
    "GET": Effect.READ,
    "HEAD": Effect.READ,
    "OPTIONS": Effect.READ,
    "TRACE": Effect.READ,
    "POST": Effect.WRITE,
    "PUT": Effect.WRITE,
    "PATCH": Effect.WRITE,
    "DELETE": Effect.DESTRUCTIVE,
}


def header_map(headers: http.Headers) -> dict[str, str]:
    """Headers as lower-cased names to values, repeated fields joined with ', '."""
    out: dict[str, str] = {}
    for raw_name, raw_value in headers.fields:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


def classify(flow: http.HTTPFlow, *, agent: str, upstream: str | None = None) -> Action:
    """The Action a plain HTTP request asks for."""
    return from_request(flow.request, agent=agent, upstream=upstream)


def from_request(req: http.Request, *, agent: str, upstream: str | None = None) -> Action:
    """The Action of one request, on the wire or made up (`airlock rules explain`)."""
    method = req.method.upper()
    headers = header_map(req.headers)
    if (req.is_http2 or req.is_http3) and req.authority and "host" not in headers:
        headers["host"] = req.authority  # HTTP/2's :authority is its Host header
    path, _, query = req.path.partition("?")
    raw = req.raw_content
    decoded = decode(raw, headers.get("content-encoding")) if raw else None
    claimed = headers.get(AGENT_HEADER)
    action = Action(
        method=method,
        scheme=req.scheme,
        host=req.host.lower(),  # the connection target, never the spoofable Host header
        port=req.port,
        path=path or "/",
        query=query,
        effect=METHOD_EFFECTS.get(method, Effect.WRITE),
        agent=claimed or agent,
        configured_agent=agent if claimed and claimed != agent else None,
        headers=headers,
        body=decoded.body if decoded is not None else raw,
        body_problem=decoded.problem if decoded is not None else None,
        upstream=upstream,
    )
    return with_read_methods(action)


def with_read_methods(action: Action) -> Action:
    """The action with the strictest effect of every method an upstream could read it as."""
    effect = action.effect
    for m in readings_of(action).methods[1:]:
        effect = effect.stricter(METHOD_EFFECTS.get(m, Effect.WRITE))
    return action if effect is action.effect else dataclasses.replace(action, effect=effect)

"""The generic HTTP adapter: method, target and headers of a flow become an Action."""

from __future__ import annotations

from mitmproxy import http

from rules import Action, Effect

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
    path, _, query = req.path.partition("?")
    return Action(
        method=method,
        scheme=req.scheme,
        host=req.host.lower(),  # the connection target, never the spoofable Host header
        port=req.port,
        path=path or "/",
        query=query,
        effect=METHOD_EFFECTS.get(method, Effect.WRITE),
        agent=headers.get(AGENT_HEADER, agent),
        headers=headers,
        body=req.get_content(strict=False),
        upstream=upstream,
    )

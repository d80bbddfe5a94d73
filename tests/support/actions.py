"""Actions built by hand, for tests that drive the rule engine and the gate's parts directly."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rules import Action, Effect

# The effect a request of each method has when nothing else says (any other method is a write).
EFFECTS = {"GET": Effect.READ, "DELETE": Effect.DESTRUCTIVE}


def act(
    method: str = "GET",
    path: str = "/",
    *,
    host: str = "api.test",
    port: int = 443,
    scheme: str = "https",
    query: str = "",
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    **fields: Any,
) -> Action:
    """An Action as the HTTP adapter would read it; `fields` sets any other Action field (agent,
    upstream, protocol, tool, args...)."""
    effect = EFFECTS.get(method, Effect.WRITE)
    return Action(
        method, scheme, host, port, path, effect, query=query, headers=headers or {}, body=body, **fields
    )

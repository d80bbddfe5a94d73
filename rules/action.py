"""The normalized Action: the one thing rules see, built from the wire by the protocol adapters."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .addresses import Address


class Effect(StrEnum):
    """What an action does to the world it reaches."""

    READ = "read"
    WRITE = "write"
    DESTRUCTIVE = "destructive"

    @property
    def mutating(self) -> bool:
        """True for effects that change something upstream: these are logged durably first."""
        return self is not Effect.READ

    def stricter(self, other: Effect) -> Effect:
        """The stricter of two effects (read < write < destructive): what an action counts as
        when two readings of it disagree."""
        return self if _STRICTNESS[self] >= _STRICTNESS[other] else other


_STRICTNESS = {Effect.READ: 0, Effect.WRITE: 1, Effect.DESTRUCTIVE: 2}


@dataclass(frozen=True, slots=True)
class Action:
    """What an agent asks to do, independent of how it arrived.

    `protocol` says which adapter read it (http, mcp, ws; tcp or dns for a refused stream);
    `operation`, `tool` and `args` are filled in by the adapters that understand more than
    HTTP. `service` is matched by rules but no adapter sets it yet.
    """

    method: str
    scheme: str
    host: str
    port: int
    path: str
    effect: Effect
    protocol: str = "http"
    agent: str = "agent"
    query: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None
    upstream: str | None = None
    service: str | None = None
    operation: str | None = None
    tool: str | None = None
    args: Any = None
    # The addresses the host resolves to, when the proxy has looked them up: egress checks
    # them, and the connection goes to the one it allows.
    addresses: tuple[Address, ...] | None = None
    # When the request named its agent itself (X-Airlock-Agent), `agent` is that claim and this
    # is the agent the operator configured: a claim is not an identity.
    configured_agent: str | None = None
    # Why the body as sent cannot be decoded (an unknown or corrupt Content-Encoding, or one
    # that expands past the limit); `body` is then the bytes as sent.
    body_problem: str | None = None
    # Readings of the action computed on first use (rules.readings); never compared.
    memo: dict[str, Any] = field(default_factory=dict, init=False, compare=False, repr=False)

    @property
    def agent_claimed(self) -> bool:
        """True when the agent named itself with a name other than the one the operator gave."""
        return self.configured_agent is not None

    @property
    def url(self) -> str:
        """The full URL, with the port only where it is not the scheme's default (for an MCP
        server on stdio: `stdio:COMMAND`)."""
        if self.scheme == "stdio":
            return f"stdio:{self.path.lstrip('/')}"
        default = {"http": 80, "https": 443}.get(self.scheme)
        netloc = self.host if self.port == default else f"{self.host}:{self.port}"
        if ":" in self.host and not self.host.startswith("["):
            netloc = f"[{self.host}]" if self.port == default else f"[{self.host}]:{self.port}"
        return f"{self.scheme}://{netloc}{self.path}" + (f"?{self.query}" if self.query else "")

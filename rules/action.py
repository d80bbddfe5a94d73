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
    # A call to a model: it changes nothing upstream, but carries data out and costs tokens.
    # It is decided and logged like any action, not made durable before it goes, and never
    # left in doubt by a crash.
    INFERENCE = "inference"
    WRITE = "write"
    DESTRUCTIVE = "destructive"

    @property
    def mutating(self) -> bool:
        """True for effects that change something upstream: these are logged durably first."""
        return self is Effect.WRITE or self is Effect.DESTRUCTIVE

    def stricter(self, other: Effect) -> Effect:
        """The stricter of two effects (read < inference < write < destructive): what an action
        counts as when two readings of it disagree."""
        return self if _STRICTNESS[self] >= _STRICTNESS[other] else other


# Protocols whose actions are one HTTP request each: a rule for `protocol: http` matches them.
HTTP_PROTOCOLS = frozenset({"http", "aws", "k8s", "llm"})

_STRICTNESS = {Effect.READ: 0, Effect.INFERENCE: 1, Effect.WRITE: 2, Effect.DESTRUCTIVE: 3}


@dataclass(frozen=True, slots=True)
class Kube:
    """A Kubernetes API request as the API server reads it: the verb it derives from the method
    and path, and the resource the path names (`group` is "" for the core group)."""

    verb: str
    resource: str
    version: str
    group: str = ""
    subresource: str | None = None
    namespace: str | None = None
    name: str | None = None

    @property
    def resources(self) -> str:
        """The resource as RBAC names it: `deployments`, or with its subresource `pods/exec`."""
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


@dataclass(frozen=True, slots=True)
class Inference:
    """A call to a model API as its provider reads it: who serves it (`anthropic`, `openai`,
    `gemini`, `bedrock`, or `openai-compatible` on a host the rules name), which API
    (`messages`, `chat.completions`, `responses`, `generateContent`, `converse`...), the model
    asked for (None when the request does not say), and whether the answer streams."""

    provider: str
    api: str
    model: str | None = None
    stream: bool = False


@dataclass(frozen=True, slots=True)
class Action:
    """What an agent asks to do, independent of how it arrived.

    `protocol` says which adapter read it (http, mcp, ws, aws, k8s, llm; tcp or dns for a
    refused stream); `service`, `operation`, `region`, `targets`, `kube`, `inference`, `tool` and
    `args` are filled in by the adapters that understand more than HTTP. An aws, k8s or llm
    action is an HTTP request too: rules for `protocol: http` match it.
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
    region: str | None = None
    # The resources the action touches, as far as the request says (`bucket/key`, a table, a
    # queue URL, instance ids; `namespace/name` in Kubernetes): a batch lists each of them.
    targets: tuple[str, ...] = ()
    count: int | None = None  # how many items a batch touches (S3 DeleteObjects: its keys)
    kube: Kube | None = None
    inference: Inference | None = None  # a call to a model (protocol llm)
    # Body fields the service says hold secrets, whatever their names (an AWS model's sensitive
    # members, such as SSM's parameter `Value`): the log keeps none of their values.
    secret_fields: frozenset[str] = frozenset()
    # Other readings an upstream could make of the same request (an S3 bucket named by the
    # host instead of the path, a second `Action=`): each is decided too, and the strictest
    # decision holds (proxy.plane.triage).
    others: tuple[Action, ...] = ()
    # The addresses the host resolves to, when the proxy has looked them up: egress checks
    # them, and the connection goes to the one it allows.
    addresses: tuple[Address, ...] | None = None
    # When the request named its agent itself (X-Airlock-Agent), `agent` is that claim and this
    # is the agent the operator configured: a claim is not an identity.
    configured_agent: str | None = None
    # Whether `agent` was established by Airlock (a session's credentials, the UID a captured
    # connection comes from, the operator's configuration), not claimed by the request; the
    # session it came with and that session's epoch (proxy/plane/identity.py).
    verified: bool = True
    session: str | None = None
    epoch: int | None = None
    # Why the body as sent cannot be decoded (an unknown or corrupt Content-Encoding, or one
    # that expands past the limit; a batch whose list of targets cannot be read); `body` is
    # then the bytes as sent.
    body_problem: str | None = None
    # The body streams upstream unread (it is larger than the proxy reads whole, or sent
    # chunked): `body` is None and `body_problem` says why rules cannot read it.
    body_streamed: bool = False
    # Readings of the action computed on first use (rules.readings); never compared.
    memo: dict[str, Any] = field(default_factory=dict, init=False, compare=False, repr=False)

    @property
    def agent_claimed(self) -> bool:
        """True when the agent named itself with a name other than the one the operator gave."""
        return self.configured_agent is not None

    @property
    def over_http(self) -> bool:
        """True for an action that is one HTTP request, whatever else an adapter read in it."""
        return self.protocol in HTTP_PROTOCOLS

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

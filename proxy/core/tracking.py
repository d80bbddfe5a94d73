"""An admitted action until its outcome is written: what it holds (its key, its place in the
retry-storm breaker) and the meter its answer passes through."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

from rules import Action, Budget, Inference, Storm, fingerprint
from store import ActionRef

from . import keys
from .budgets import Spending
from .keys import Keyed


class Meter:
    """Counts and hashes a response body as it passes, chunk by chunk, keeping up to `keep`
    bytes of it (for replays); `kept` is None once the body outgrew that."""

    def __init__(self, keep: int = 0) -> None:
        self.size = 0
        self._hash = hashlib.sha256()
        self._keep = keep
        self._kept: bytearray | None = bytearray() if keep else None

    def __call__(self, chunk: bytes) -> bytes:
        self.size += len(chunk)
        self._hash.update(chunk)
        if self._kept is not None:
            if len(self._kept) + len(chunk) > self._keep:
                self._kept = None
            else:
                self._kept += chunk
        return chunk

    @property
    def kept(self) -> bytes | None:
        """The body seen so far, if it was kept and fit."""
        return bytes(self._kept) if self._kept is not None else None

    @property
    def sha256(self) -> str:
        """Hex digest of everything seen so far."""
        return self._hash.hexdigest()

    def seen(self) -> dict[str, int | str]:
        """The size and SHA-256 of what passed so far, as the log records a body."""
        return {"size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class ModelCall:
    """An admitted model call: whose, what it asked for, the budgets its tokens count against,
    and whether the log keeps its prompt and completion."""

    agent: str
    inference: Inference
    budgets: tuple[Budget, ...] = ()
    keep_prompts: bool = False


@dataclass
class Tracking:
    """An admitted action until its outcome is written."""

    ref: ActionRef
    keyed: Keyed | None = None  # holds a dedup key: its outcome keeps or releases it
    storm: Storm | None = None
    unkeyed: Action | None = None  # an unkeyed mutation: the breaker knows it by fingerprint
    started: float = field(default_factory=time.monotonic)
    meter: Meter = field(default_factory=Meter)
    upload: Meter | None = None  # the request body, when it streams upstream (proxy/plane/uploads.py)
    logged: bool = True  # False: a read let through while the log was down; no outcome is due
    model_call: ModelCall | None = None
    locked: bool = False  # holds a lock for its duration: its outcome releases it
    spending: Spending | None = None  # a model call's tokens, counted as it went
    _breaker_key: str | None = None

    def breaker_key(self) -> str | None:
        """Who the action is to the retry-storm breaker: its dedup key, or for an unkeyed
        mutation its agent and fingerprint (computed only when the breaker asks)."""
        if self.keyed is not None:
            return self.keyed.claim.key
        if self._breaker_key is None and self.unkeyed is not None:
            self._breaker_key = f"{self.unkeyed.agent}|{fingerprint(self.unkeyed)}"
        return self._breaker_key

    def final(self, status: int | None) -> bool:
        """True when the answer (None: none) is the action's effect rather than a failure."""
        return self.keyed.final(status) if self.keyed is not None else keys.is_final(status)

    def elapsed_ms(self) -> float:
        """Milliseconds since the action was let through."""
        return (time.monotonic() - self.started) * 1000

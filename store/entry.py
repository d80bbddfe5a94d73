"""One entry of the log as stored: the hashed body and the two hashes around it.

The body carries everything the indexes show: the action's summary fields, the idempotency
key it claims and how its outcome settles that key, so every index is derivable from the chain.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from .chain import link, unseal

_HASHES = re.compile(rb"[0-9a-f]{128}")


@dataclass(frozen=True)
class Entry:
    """One written entry of the log, as stored."""

    seq: int
    ts: float
    kind: str
    action: int | None
    state: str | None
    writer: str
    data: dict[str, Any]
    prev: str
    hash: str
    summary: dict[str, Any] = field(default_factory=dict)  # fields it sets on its action's index
    claim: dict[str, Any] | None = None  # the idempotency key an opening entry claims
    settle: dict[str, Any] | None = None  # keeps or releases its action's key (with a reply's digest)

    @classmethod
    def parse(cls, raw: bytes) -> Entry:
        """Decode an entry from its stored bytes; ValueError naming what is wrong if malformed."""
        if len(raw) < 130:
            raise ValueError("it is shorter than its two hashes and a body")
        if not _HASHES.match(raw):
            raise ValueError("its hashes are not hex digests")
        prev, digest, body = unseal(raw)
        fields = orjson.loads(body)
        if not isinstance(fields, dict):
            raise ValueError("its body is not a JSON object")
        try:
            entry = cls(**fields, prev=prev, hash=digest)
        except TypeError as e:
            raise ValueError(f"its body has the wrong fields ({e})") from None
        entry._check_shape()
        return entry

    @staticmethod
    def sealed(raw: bytes) -> bool:
        """True when the stored bytes hash to the hash stored with them."""
        prev, digest, body = unseal(raw)
        return link(prev, body) == digest

    def _check_shape(self) -> None:
        checks = [
            isinstance(self.seq, int) and not isinstance(self.seq, bool),
            isinstance(self.ts, int | float) and not isinstance(self.ts, bool),
            isinstance(self.kind, str),
            self.action is None or (isinstance(self.action, int) and not isinstance(self.action, bool)),
            self.state is None or isinstance(self.state, str),
            isinstance(self.writer, str),
            isinstance(self.data, dict),
            isinstance(self.summary, dict),
            self.claim is None
            or (
                isinstance(self.claim, dict)
                and isinstance(self.claim.get("key"), str)
                and isinstance(self.claim.get("payload"), str)
                and isinstance(self.claim.get("expires"), int | float)
            ),
            self.settle is None
            or (
                isinstance(self.settle, dict)
                and isinstance(self.settle.get("keep"), bool)
                and (self.settle.get("reply") is None or isinstance(self.settle.get("reply"), str))
            ),
        ]
        if not all(checks):
            raise ValueError("a field of its body has the wrong type")

    def body(self) -> dict[str, Any]:
        """The part of the entry its hash covers (everything but `prev` and `hash`)."""
        out: dict[str, Any] = {
            "seq": self.seq,
            "ts": self.ts,
            "kind": self.kind,
            "action": self.action,
            "state": self.state,
            "writer": self.writer,
            "data": self.data,
        }
        if self.summary:
            out["summary"] = self.summary
        if self.claim is not None:
            out["claim"] = self.claim
        if self.settle is not None:
            out["settle"] = self.settle
        return out

    def as_dict(self) -> dict[str, Any]:
        """The entry as a JSON-ready mapping."""
        return self.body() | {"prev": self.prev, "hash": self.hash}

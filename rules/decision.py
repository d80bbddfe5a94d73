"""A Decision: what the rules say about one Action, and which rule said it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .dedup import Dedup, Storm


class Verdict(StrEnum):
    """The outcome of evaluating the rules; deny beats hold beats log and allow."""

    ALLOW = "allow"
    LOG = "log"
    HOLD = "hold"
    DENY = "deny"


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict on an action, the rule that decided it (None for the defaults) and why;
    with the first matching rule's `dedup` and `storm` settings, if any rule has them."""

    verdict: Verdict
    rule: str | None = None
    message: str = ""
    error: str = ""
    dedup: Dedup | None = None
    storm: Storm | None = None

    @property
    def refused(self) -> bool:
        """True when the action must not go upstream."""
        return self.verdict in (Verdict.DENY, Verdict.HOLD)

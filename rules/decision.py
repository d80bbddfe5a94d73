"""A Decision: what the rules say about one Action, and which rule said it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .budgets import Budget
    from .holds import Hold
    from .limits import Limit, Lock
    from .repeats import Dedup, Storm


class Verdict(StrEnum):
    """What a rule says of the actions it matches; deny beats hold beats log and allow."""

    ALLOW = "allow"
    LOG = "log"
    HOLD = "hold"
    DENY = "deny"


# How strict each verdict is: of the rules matching an action, the strictest decides.
PRECEDENCE = {Verdict.ALLOW: 0, Verdict.LOG: 1, Verdict.HOLD: 2, Verdict.DENY: 3}


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict on an action, the rule that decided it (None for the defaults) and why;
    with the first matching rule's `dedup` and `storm` settings, if any rule has them, every
    matching rule's token `budgets`, whether a matching rule keeps the prompts of a model call
    (`keep_prompts`), the first matching rule's `lock` and every matching rule's `limits`, the
    tools whose proposed calls may carry the action out (`proposed_as`), and for HOLD the
    policy its votes are taken under.

    HOLD is neither refused nor let through: the action waits for votes (see proxy/core/holds.py).
    """

    verdict: Verdict
    rule: str | None = None
    message: str = ""
    error: str = ""
    dedup: Dedup | None = None
    storm: Storm | None = None
    hold: Hold | None = None
    budgets: tuple[Budget, ...] = ()
    keep_prompts: bool = False
    lock: Lock | None = None
    limits: tuple[Limit, ...] = ()
    proposed_as: tuple[str, ...] = ()

    @property
    def refused(self) -> bool:
        """True when the action must not go upstream."""
        return self.verdict == Verdict.DENY


# Allowed by no rule and refused by nothing: what the defaults say of an action no rule decides
# when its effect defaults to allow, and what egress says of a destination it lets go. A value:
# any Decision(Verdict.ALLOW) equals it.
ALLOWED = Decision(Verdict.ALLOW)

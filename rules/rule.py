"""A Rule: one entry of a rule file's `rules`, compiled, and the test of whether it matches."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .action import Action, Effect
from .budgets import Budget
from .decision import Verdict
from .holds import Hold
from .limits import Limit, Lock
from .match import Predicate, protocol_in
from .readings import readings_of
from .repeats import Dedup, Storm


@dataclass(frozen=True)
class Rule:
    """One rule: an id, what it matches, and what happens to the actions it matches.

    A rule without a verdict only modifies its actions: how repeats are handled (`dedup`,
    `storm`), which effect they count as (`effect`), the tokens they may use (`budget`) or
    what the log keeps of them (`keep`), and leaves the verdict to the other rules and the
    defaults.
    """

    id: str
    verdict: Verdict | None
    message: str
    description: str
    source: Path
    position: int
    test: Predicate
    hosts: frozenset[str] | None = None  # index keys: literal hosts and "*.domain" globs
    methods: frozenset[str] | None = None
    protocols: frozenset[str] | None = None
    dedup: Dedup | None = None
    storm: Storm | None = None
    hold: Hold | None = None  # a hold rule's policy (None: the default policy)
    hides: bool = False  # a deny rule that refuses every call to a tool: hide the tool
    effect: Effect | None = None  # the effect the matched actions are treated as
    widen: bool = False  # any reading of the action matches (deny, hold): see rules.readings
    budget: Budget | None = None  # a token budget for the model calls it matches
    keep_prompts: bool = False  # the model calls it matches keep their prompts in the log
    lock: Lock | None = None  # a lock its actions hold while they run
    limit: Limit | None = None  # how many of its actions pass per window
    proposed_as: tuple[str, ...] = ()  # tools a model's proposed calls carry its requests out with

    def matches(self, action: Action) -> bool:
        """True when every field of the rule's `match` holds for the action (for a deny or hold
        rule under any reading of it, for the others under every reading)."""
        if self.methods is not None:
            sent = action.method.upper() in self.methods
            # The method as sent decides a deny it is in and an allow it is not in; otherwise
            # the other readings of the method (overrides) decide, when there are any.
            if sent is not self.widen:
                others = readings_of(action).methods[1:]
                if self.widen:
                    if not others or not any(m in self.methods for m in others):
                        return False
                elif others and not all(m in self.methods for m in others):
                    return False
            elif not sent:
                return False
        if self.protocols is not None and not protocol_in(action, self.protocols):
            return False
        return self.test(action)

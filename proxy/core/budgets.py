"""Token budgets: the tokens each account's model calls used, over sliding windows.

A model call is admitted while its budgets' accounts have tokens left. Its prompt is counted
against them as it goes (an estimate from its size), so that calls sent side by side cannot all
pass on one budget's last tokens; its answer says how many it used, and the count is corrected
then. So the call that crosses a budget runs (its size is not known before its answer), and
the calls after it are refused until enough tokens age out of the window. The ledger is this
process's memory: a restart starts every budget afresh.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from rules import Budget, duration_text

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Overspent:
    """A budget with no tokens left: how many its window holds, and when enough age out for
    the next call (seconds from now)."""

    budget: Budget
    used: int
    retry_after: float

    @property
    def message(self) -> str:
        """What the agent (a model or a person) is told: the budget, what was used, when to retry."""
        window = duration_text(self.budget.per)
        whose = "this agent's model calls" if self.budget.scope == "agent" else "the model calls it covers"
        return (
            f"the token budget of rule {self.budget.rule} is spent: {whose} used {self.used} tokens "
            f"in the last {window}, and the budget is {self.budget.tokens}; no further model calls "
            f"are let through for {math.ceil(self.retry_after)} s (Retry-After). Finish with what "
            "you have, or ask an operator to raise the budget"
        )


class _Spent:
    """Tokens one call spent on one account, at a time; `live` until they age out."""

    __slots__ = ("at", "live", "tokens")

    def __init__(self, at: float, tokens: int):
        self.at, self.tokens, self.live = at, tokens, True


@dataclass
class Spending:
    """What one call spent, on each of its accounts: `Ledger.correct` sets it to what the
    call's answer reported."""

    entries: list[tuple[str, _Spent]] = field(default_factory=list)


class Ledger:
    """Tokens spent per budget account, each within its budget's window."""

    def __init__(self, clock: Clock = time.monotonic):
        self._clock = clock
        self._spent: dict[str, deque[_Spent]] = {}
        self._totals: dict[str, int] = {}

    def overspent(self, budgets: Iterable[Budget], agent: str) -> Overspent | None:
        """The first of `budgets` whose account for `agent` has no tokens left, if any."""
        now = self._clock()
        for budget in budgets:
            account = budget.account(agent)
            used = self._used(account, budget.per, now)
            if used >= budget.tokens:
                return Overspent(budget, used, self._refill(account, budget, now))
        return None

    def spend(self, budgets: Iterable[Budget], agent: str, tokens: int) -> Spending:
        """Record `tokens` used by a call of `agent` against each of `budgets`."""
        spending = Spending()
        now = self._clock()
        for account in {b.account(agent) for b in budgets}:
            spent = _Spent(now, max(tokens, 0))
            self._spent.setdefault(account, deque()).append(spent)
            self._totals[account] = self._totals.get(account, 0) + spent.tokens
            spending.entries.append((account, spent))
        return spending

    def correct(self, spending: Spending, tokens: int) -> None:
        """A call's answer says it used `tokens`: what it spent (while still in its windows)
        becomes that."""
        for account, spent in spending.entries:
            if spent.live:
                self._totals[account] += max(tokens, 0) - spent.tokens
            spent.tokens = max(tokens, 0)

    def _used(self, account: str, per: float, now: float) -> int:
        spent = self._spent.get(account)
        while spent and now - spent[0].at >= per:
            gone = spent.popleft()
            gone.live = False
            self._totals[account] -= gone.tokens
        return self._totals.get(account, 0)

    def _refill(self, account: str, budget: Budget, now: float) -> float:
        """Seconds until the tokens used in the window fall below the budget."""
        used = self._totals.get(account, 0)
        for spent in self._spent.get(account, ()):
            used -= spent.tokens
            if used < budget.tokens:
                return max(spent.at + budget.per - now, 1.0)
        return 1.0

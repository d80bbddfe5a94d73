"""Token budgets: the tokens each account's model calls used, over sliding windows.

A model call is admitted while its budgets' accounts have tokens left; its answer says how many
it used, and they are spent then. So the call that crosses a budget runs (its size is not
known before its answer), and the calls after it are refused until enough tokens age out of
the window. The ledger is this process's memory: a restart starts every budget afresh.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

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


class Ledger:
    """Tokens spent per budget account, each within its budget's window."""

    def __init__(self, clock: Clock = time.monotonic):
        self._clock = clock
        self._spent: dict[str, deque[tuple[float, int]]] = {}
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

    def spend(self, budgets: Iterable[Budget], agent: str, tokens: int) -> None:
        """Record `tokens` used by a call of `agent` against each of `budgets`."""
        if tokens <= 0:
            return
        now = self._clock()
        for account in {b.account(agent) for b in budgets}:
            self._spent.setdefault(account, deque()).append((now, tokens))
            self._totals[account] = self._totals.get(account, 0) + tokens

    def _used(self, account: str, per: float, now: float) -> int:
        spent = self._spent.get(account)
        while spent and now - spent[0][0] >= per:
            self._totals[account] -= spent.popleft()[1]
        return self._totals.get(account, 0)

    def _refill(self, account: str, budget: Budget, now: float) -> float:
        """Seconds until the tokens used in the window fall below the budget."""
        used = self._totals.get(account, 0)
        for at, tokens in self._spent.get(account, ()):
            used -= tokens
            if used < budget.tokens:
                return max(at + budget.per - now, 1.0)
        return 1.0

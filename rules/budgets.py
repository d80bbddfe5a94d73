"""What a rule says about the tokens its model calls may use: a budget over a sliding window."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .repeats import seconds


class BudgetScope(StrEnum):
    """Whose calls share one budget."""

    AGENT = "agent"  # each agent its own
    RULE = "rule"  # every agent the rule matches together


@dataclass(frozen=True, slots=True)
class Budget:
    """`tokens` (input and output together) per `per` seconds for the model calls `rule`
    matches; the call made once they are used up is refused until enough age out."""

    rule: str
    tokens: int
    per: float
    scope: BudgetScope = BudgetScope.AGENT

    def account(self, agent: str) -> str:
        """Which account a call by `agent` draws on: the rule's, and the agent's unless shared."""
        return self.rule if self.scope is BudgetScope.RULE else f"{self.rule}|{agent}"


def parse_budget(rule: str, spec: dict[str, Any]) -> Budget:
    """A rule's `budget` value (schema-checked)."""
    return Budget(rule, int(spec["tokens"]), seconds(spec["per"]), BudgetScope(spec.get("scope", "agent")))

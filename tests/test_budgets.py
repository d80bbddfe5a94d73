"""Token budgets on their own: the ledger's sliding windows, accounts by scope, and the rule
field that declares them (the proxy's use of them is in tests/test_llm.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.core.budgets import Ledger
from rules import Action, Budget, BudgetScope, Effect, Inference, RulesError, Ruleset


class Clock:
    """A clock the test moves (the ledger's windows are over it)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_budget_refuses_once_its_window_holds_as_many_tokens_and_refills_as_they_age_out() -> None:
    clock = Clock()
    ledger = Ledger(clock)
    budget = Budget("model-budget", tokens=1000, per=3600)
    assert ledger.overspent([budget], "a") is None
    ledger.spend([budget], "a", 600)
    clock.now += 600
    assert ledger.overspent([budget], "a") is None  # 600 < 1000: the next call may go
    ledger.spend([budget], "a", 500)  # the call that crosses it ran: its size was not known
    over = ledger.overspent([budget], "a")
    assert over is not None and over.used == 1100 and over.budget is budget
    # The first 600 age out 3600 s after they were spent: 3000 s from now.
    assert over.retry_after == pytest.approx(3000)
    assert "model-budget" in over.message and "1100 tokens" in over.message and "1h" in over.message
    clock.now += 3000
    assert ledger.overspent([budget], "a") is None  # 500 left in the window


def test_agent_budgets_are_per_agent_and_rule_budgets_are_shared() -> None:
    ledger = Ledger(Clock())
    mine = Budget("per-agent", tokens=100, per=60)
    ours = Budget("shared", tokens=100, per=60, scope=BudgetScope.RULE)
    ledger.spend([mine, ours], "a", 100)
    assert ledger.overspent([mine], "a") is not None
    assert ledger.overspent([mine], "b") is None  # b has its own account
    assert ledger.overspent([ours], "b") is not None  # but shares the rule's


def test_the_first_spent_budget_of_several_is_named() -> None:
    ledger = Ledger(Clock())
    big, small = Budget("big", 10_000, 60), Budget("small", 10, 60)
    ledger.spend([big, small], "a", 50)
    over = ledger.overspent([big, small], "a")
    assert over is not None and over.budget is small


def test_nothing_spent_is_nothing_counted() -> None:
    ledger = Ledger(Clock())
    budget = Budget("b", 1, 60)
    ledger.spend([budget], "a", 0)
    assert ledger.overspent([budget], "a") is None


def test_rules_declare_budgets_and_every_matching_rules_budget_applies(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "version: 1\n"
        "egress: {allow: [api.anthropic.com, api.openai.com]}\n"
        "rules:\n"
        "  - id: model-budget\n"
        "    match: {protocol: llm}\n"
        "    budget: {tokens: 5000, per: 1h}\n"
        "  - id: team-budget\n"
        "    match: {protocol: llm, model: 'claude-*'}\n"
        "    budget: {tokens: 50000, per: 24h, scope: rule}\n"
        "    keep: prompts\n"
    )
    ruleset = Ruleset.load(rules)
    call = Action(
        "POST",
        "https",
        "api.anthropic.com",
        443,
        "/v1/messages",
        Effect.INFERENCE,
        protocol="llm",
        inference=Inference("anthropic", "messages", "claude-sonnet-4-5"),
    )
    decision = ruleset.evaluate(call)
    assert decision.budgets == (
        Budget("model-budget", 5000, 3600.0),
        Budget("team-budget", 50000, 86400.0, BudgetScope.RULE),
    )
    assert decision.keep_prompts
    other = Action(
        "POST",
        "https",
        "api.openai.com",
        443,
        "/v1/chat/completions",
        Effect.INFERENCE,
        protocol="llm",
        inference=Inference("openai", "chat.completions", "gpt-5"),
    )
    assert [b.rule for b in ruleset.evaluate(other).budgets] == ["model-budget"]
    assert not ruleset.evaluate(other).keep_prompts


@pytest.mark.parametrize(
    ("budget", "problem"),
    [
        ("{tokens: 0, per: 1h}", "rules[0].budget.tokens"),
        ("{tokens: 10}", "'per' is a required property"),
        ("{tokens: 10, per: 1h, scope: team}", "rules[0].budget.scope"),
        ("{tokens: 10, per: soon}", "rules[0].budget.per"),
    ],
)
def test_a_bad_budget_is_refused_naming_it(tmp_path: Path, budget: str, problem: str) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(f"version: 1\nrules:\n  - id: b\n    match: {{protocol: llm}}\n    budget: {budget}\n")
    with pytest.raises(RulesError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        Ruleset.load(rules)


def test_calls_in_flight_count_by_estimate_until_their_answers_correct_them() -> None:
    """Calls sent side by side cannot all pass on a budget's last tokens: each is counted as it
    goes (its prompt, estimated) and corrected when its answer says what it used."""
    clock = Clock()
    ledger = Ledger(clock)
    budget = Budget("b", tokens=100, per=60)
    first = ledger.spend([budget], "a", 80)  # in flight
    assert ledger.overspent([budget], "a") is None
    second = ledger.spend([budget], "a", 80)
    assert ledger.overspent([budget], "a") is not None  # a third call waits for answers
    ledger.correct(first, 10)
    ledger.correct(second, 15)
    assert ledger.overspent([budget], "a") is None  # 25 of 100
    clock.now += 61
    ledger.correct(first, 500)  # an answer after its window: nothing left to correct
    assert ledger.overspent([budget], "a") is None

"""Locks and limits as rules declare them: parsing, the keys a lock takes, the counters a limit
adds to (the proxy's enforcement is in tests/test_sessions.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rules import Action, Effect, LimitScope, RulesError, Ruleset, Verdict

RULES = """\
version: 1
egress: {allow: [127.0.0.1, s3.us-east-1.amazonaws.com]}
rules:
  - id: one-writer-per-table
    match: {method: POST, path: "/tables/*"}
    lock: "{host}{path}"
  - id: migration-lock
    match: {path: "/migrate/*"}
    lock: {key: "{agent}", wait: 0, hold: 5m}
  - id: destructive-burst
    match: {effect: destructive}
    limit: {count: 20, per: 1m, then: hold}
  - id: per-object
    match: {effect: destructive}
    limit: {count: 2, per: 1h, scope: target}
"""


def action(method: str, path: str, **kw: object) -> Action:
    effect = Effect.DESTRUCTIVE if method == "DELETE" else Effect.WRITE
    return Action(method, "http", "127.0.0.1", 8000, path, effect, **kw)  # type: ignore[arg-type]


@pytest.fixture
def ruleset(tmp_path: Path) -> Ruleset:
    (tmp_path / "r.yaml").write_text(RULES)
    return Ruleset.load(tmp_path / "r.yaml")


def test_a_lock_is_keyed_by_its_template_and_holds_for_the_action_by_default(ruleset: Ruleset) -> None:
    decision = ruleset.evaluate(action("POST", "/tables/orders"))
    assert decision.lock is not None and decision.lock.hold is None and decision.lock.wait == 30
    assert (
        decision.lock.key_of(action("POST", "/tables/orders"))
        == "one-writer-per-table|127.0.0.1/tables/orders"
    )
    held = ruleset.evaluate(action("POST", "/migrate/v2", agent="planner")).lock
    assert held is not None and (held.wait, held.hold) == (0, 300)
    assert held.key_of(action("POST", "/migrate/v2", agent="planner")) == "migration-lock|planner"


def test_every_matching_rules_limit_applies_and_a_batch_counts_as_its_size(ruleset: Ruleset) -> None:
    batch = action("DELETE", "/bucket", targets=("b/k1", "b/k2", "b/k1"), count=3, agent="a")
    limits = ruleset.evaluate(batch).limits
    assert [(x.rule, x.count, x.per, x.scope, x.then) for x in limits] == [
        ("destructive-burst", 20, 60.0, LimitScope.AGENT, Verdict.HOLD),
        ("per-object", 2, 3600.0, LimitScope.TARGET, Verdict.DENY),
    ]
    burst, per_object = limits
    assert burst.counts(batch) == [("destructive-burst|agent|a", 3)]
    assert per_object.counts(batch) == [("per-object|target|b/k1", 1), ("per-object|target|b/k2", 1)]
    assert ruleset.evaluate(action("POST", "/tables/x")).limits == ()


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("lock: '{nothing}'", "rules[0].lock: {nothing} is not a field"),
        ("lock: {key: 'fixed'}", "rules[0].lock.key: 'fixed' names no field"),
        ("lock: {key: '{host}', wait: soon}", "rules[0].lock"),
        ("limit: {count: 0, per: 1m}", "rules[0].limit.count"),
        ("limit: {count: 5}", "'per' is a required property"),
        ("limit: {count: 5, per: 1m, then: allow}", "rules[0].limit.then"),
    ],
)
def test_a_bad_lock_or_limit_is_refused_naming_it(tmp_path: Path, spec: str, problem: str) -> None:
    (tmp_path / "r.yaml").write_text(
        f"version: 1\nrules:\n  - id: r\n    match: {{method: POST}}\n    {spec}\n"
    )
    with pytest.raises(RulesError) as refused:
        Ruleset.load(tmp_path / "r.yaml")
    assert problem in str(refused.value)

"""The rule evaluator and rule files: table-driven decisions, and errors that name file, line, field."""

from __future__ import annotations

from pathlib import Path

import pytest

from rules import Action, Effect, RulesError, Ruleset, Verdict, default_path

RULES = """\
version: 1
egress:
  allow: ["api.example.com", "*.internal.test", "127.0.0.1"]
rules:
  - id: no-deletes-under-prod
    match: {method: DELETE, path: "/prod/*"}
    action: deny
    message: ask a human
  - id: log-writes
    match: {effect: [write, destructive]}
    action: log
  - id: allow-everything-on-api
    match: {host: api.example.com}
    action: allow
  - id: planner-may-not-post
    match: {agent: "planner-*", method: [POST, PUT]}
    action: deny
  - id: held-drops
    match: {path: "/tables/*/drop"}
    action: hold
"""


def action(
    method: str = "GET",
    host: str = "api.example.com",
    path: str = "/",
    agent: str = "agent",
    upstream: str | None = None,
) -> Action:
    effect = {"GET": Effect.READ, "DELETE": Effect.DESTRUCTIVE}.get(method, Effect.WRITE)
    return Action(method, "https", host, 443, path, effect, agent=agent, upstream=upstream)


@pytest.fixture
def ruleset(tmp_path: Path) -> Ruleset:
    f = tmp_path / "r.yaml"
    f.write_text(RULES)
    return Ruleset.load(f)


@pytest.mark.parametrize(
    ("act", "verdict", "rule"),
    [
        (action(), Verdict.ALLOW, "allow-everything-on-api"),
        (action(host="API.Example.com"), Verdict.ALLOW, "allow-everything-on-api"),
        (action(host="db.internal.test"), Verdict.ALLOW, None),
        (action(host="evil.test"), Verdict.DENY, "egress"),
        (action(host="internal.test"), Verdict.DENY, "egress"),
        # deny beats the allow rule on the same host; adding allows never unlocks it
        (action("DELETE", path="/prod/db"), Verdict.DENY, "no-deletes-under-prod"),
        (action("DELETE", path="/staging/db"), Verdict.LOG, "log-writes"),
        (action("POST", host="db.internal.test"), Verdict.LOG, "log-writes"),
        (action("POST", agent="planner-3"), Verdict.DENY, "planner-may-not-post"),
        (action("post", agent="planner-3"), Verdict.DENY, "planner-may-not-post"),
        (action("POST", agent="executor"), Verdict.LOG, "log-writes"),
        # hold needs votes, which are not there yet: refused, and it says so
        (action("POST", path="/tables/users/drop"), Verdict.DENY, "held-drops"),
        # a named upstream is reachable by the operator's choice, whatever the allowlist says
        (action(host="tools.local", upstream="tools"), Verdict.ALLOW, None),
    ],
)
def test_decisions(ruleset: Ruleset, act: Action, verdict: Verdict, rule: str | None) -> None:
    decision = ruleset.evaluate(act)
    assert (decision.verdict, decision.rule) == (verdict, rule)


def test_refusals_explain_themselves(ruleset: Ruleset) -> None:
    assert ruleset.evaluate(action("DELETE", path="/prod/x")).message == "ask a human"
    assert "held-drops" in ruleset.evaluate(action("POST", path="/tables/t/drop")).message
    assert "egress.allow" in ruleset.evaluate(action(host="evil.test")).message


def test_report_mode_lets_unlisted_hosts_through_and_says_so(tmp_path: Path) -> None:
    f = tmp_path / "r.yaml"
    f.write_text("version: 1\negress:\n  action: report\n  allow: [a.test]\n")
    decision = Ruleset.load(f).evaluate(action(host="b.test"))
    assert decision.verdict is Verdict.LOG and decision.rule == "egress" and "report only" in decision.message


def test_the_shipped_default_rules_are_valid() -> None:
    rs = Ruleset.load(default_path())
    assert rs.rules and rs.egress_allows("localhost") and not rs.egress_allows("example.com")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "version: 1\nrules:\n  - id: a\n    match: {}\n    action: dney\n",
            "r.yaml:5:13: rules[0].action: 'dney' is not one of allow, deny, hold, log",
        ),
        (
            "version: 1\nrules:\n  - id: a\n    mathc: {host: x}\n    action: deny\n",
            "r.yaml:4:5: rules[0].mathc: unknown key 'mathc'",
        ),
        ("version: 1\negress:\n  allow: [a]\n  alow: [b]\n", "r.yaml:4:3: egress.alow: unknown key 'alow'"),
        ("version: 2\n", "r.yaml:1:10: version: 1 was expected"),
        ("version: 1\nrules: [\n", "r.yaml:3:1: not valid YAML"),
        ("- just a list\n", "r.yaml:1:1: a rule file must be a mapping"),
    ],
)
def test_bad_files_are_rejected_with_file_line_and_field(tmp_path: Path, text: str, expected: str) -> None:
    f = tmp_path / "r.yaml"
    f.write_text(text)
    with pytest.raises(RulesError) as err:
        Ruleset.load(f)
    assert str(err.value).startswith(str(tmp_path / expected.split(":")[0])) and expected.split(":", 1)[
        1
    ] in str(err.value)


def test_a_directory_loads_every_yaml_in_name_order_with_unique_ids(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text(
        "version: 1\nrules:\n  - {id: two, match: {method: PUT}, action: deny}\n"
    )
    (tmp_path / "a.yaml").write_text(
        "version: 1\negress: {allow: [x.test]}\nrules:\n  - {id: one, match: {method: POST}, action: deny}\n"
    )
    (tmp_path / "notes.txt").write_text("ignored")
    rs = Ruleset.load(tmp_path)
    assert [r.id for r in rs.rules] == ["one", "two"] and [p.name for p in rs.sources] == ["a.yaml", "b.yaml"]
    (tmp_path / "c.yaml").write_text("version: 1\nrules:\n  - {id: one, match: {}, action: log}\n")
    with pytest.raises(RulesError, match="'one' is already defined in"):
        Ruleset.load(tmp_path)


def test_missing_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="no such rule file"):
        Ruleset.load(tmp_path / "nope.yaml")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RulesError, match=r"no \*\.yaml rule files"):
        Ruleset.load(tmp_path / "empty")

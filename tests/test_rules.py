"""The rule evaluator and rule files: table-driven decisions, and errors that name file, line, field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rules import Action, Effect, RulesError, Ruleset, Verdict, default_path

from .support.actions import act

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


def action(method: str = "GET", *, host: str = "api.example.com", **fields: Any) -> Action:
    """An action on the host the rules above allow by default."""
    return act(method, host=host, **fields)


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
        (action("POST", path="/tables/users/drop"), Verdict.HOLD, "held-drops"),
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
        (
            "version: 1\nrules:\n  - id: a\n    match: {text: '(unclosed'}\n    action: deny\n",
            "r.yaml:4:19: rules[0].match.text: '(unclosed' is not a valid regular expression",
        ),
        (
            "version: 1\nrules:\n  - id: a\n    match: {path: {regex: '[z-a]'}}\n    action: deny\n",
            "rules[0].match.path",
        ),
        (
            "version: 1\nrules:\n  - id: a\n    match:\n      body: {type: nonsense}\n    action: deny\n",
            "r.yaml:5:13: rules[0].match.body: not a valid JSON Schema",
        ),
        (
            "version: 1\nrules:\n  - id: a\n    match: {any: [{mthod: GET}]}\n    action: deny\n",
            "unknown key 'mthod'",
        ),
        ("version: 1\ndefaults: {delete: deny}\n", "r.yaml:2:12: defaults.delete: unknown key 'delete'"),
        ("version: 1\negress: {allow: [{host: a, ports: [70000]}]}\n", "egress.allow[0]"),
        (
            "version: 1\nrules:\n  - id: a\n    match: {any: [{effect: read}]}\n    effect: write\n",
            "r.yaml:4:12: rules[0].match: a rule that sets effect cannot also match on effect",
        ),
        (
            "version: 1\nrules:\n  - id: a\n    match: {}\n    effect: delete\n",
            "rules[0].effect: 'delete' is not one of read, inference, write, destructive",
        ),
    ],
)
def test_bad_files_are_rejected_with_file_line_and_field(tmp_path: Path, text: str, expected: str) -> None:
    f = tmp_path / "r.yaml"
    f.write_text(text)
    with pytest.raises(RulesError) as err:
        Ruleset.load(f)
    message = str(err.value)
    assert message.startswith(str(f)) and expected.removeprefix("r.yaml") in message


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
    with pytest.raises(RulesError, match=r"no \*\.yaml or \*\.yml rule files"):
        Ruleset.load(tmp_path / "empty")


# ---- every match field, combinators, defaults and egress ports --------------------------------

FIELDS = """\
version: 1
egress:
  allow: ["*"]
rules:
  - {id: proto, match: {protocol: mcp, tool: "drop_*"}, action: deny}
  - {id: port, match: {port: [8443, 9443]}, action: deny}
  - {id: query, match: {query: {confirm: "no*"}}, action: deny}
  - {id: header, match: {headers: {X-Env: "prod*"}}, action: deny}
  - {id: service, match: {service: s3, operation: "Delete*"}, action: deny}
  - {id: body, match: {body: {properties: {force: {const: true}}, required: [force]}}, action: deny}
  - {id: args, match: {args: {properties: {to: {pattern: "@evil\\\\.test$"}}, required: [to]}}, action: deny}
  - {id: text, match: {text: "(?i)drop\\\\s+table"}, action: deny}
  - {id: regex-path, match: {path: {regex: "^/v[0-9]+/secrets"}}, action: deny}
  - {id: all-of, match: {all: [{method: PUT}, {path: "/all/*"}]}, action: deny}
  - {id: any-of, match: {any: [{path: "/any-a"}, {path: "/any-b"}]}, action: deny}
  - {id: not-get, match: {path: "/not/*", not: {method: GET}}, action: deny}
  - {id: effect-hold, match: {effect: destructive, host: "db.*"}, action: hold}
  - {id: agent-log, match: {agent: "audit-*"}, action: log}
"""


@pytest.fixture
def fields(tmp_path: Path) -> Ruleset:
    f = tmp_path / "fields.yaml"
    f.write_text(FIELDS)
    return Ruleset.load(f)


@pytest.mark.parametrize(
    ("action", "rule"),
    [
        (act(protocol="mcp", tool="drop_table"), "proto"),
        (act(protocol="http", tool="drop_table"), None),
        (act(port=9443), "port"),
        (act(query="confirm=nope&x=1"), "query"),
        (act(query="confirm=yes"), None),
        (act(headers={"x-env": "production"}), "header"),
        (act(headers={"x-env": "staging"}), None),
        (act(protocol="aws", service="s3", operation="DeleteBucket"), "service"),
        (act(protocol="aws", service="s3", operation="PutObject"), None),
        (act("POST", body=b'{"force": true}'), "body"),
        (act("POST", body=b'{"force": false}'), None),
        (act("POST", body=b"force=true"), "body"),  # read as form fields too: any reading counts
        (act("POST", body=b"note=force"), None),
        (act(protocol="mcp", tool="send", args={"to": "boss@evil.test"}), "args"),
        (act(protocol="mcp", tool="send", args={"to": "me@example.com"}), None),
        (act("POST", body=b"select 1; DROP  TABLE users"), "text"),
        (act(path="/v2/secrets/db"), "regex-path"),
        (act(path="/api/v2/secrets"), None),
        (act("PUT", "/all/x"), "all-of"),
        (act("POST", "/all/x"), None),
        (act(path="/any-b"), "any-of"),
        (act("POST", "/not/x"), "not-get"),
        (act("GET", "/not/x"), None),
        (act("DELETE", host="db.internal"), "effect-hold"),
        (act(agent="audit-bot"), "agent-log"),
    ],
)
def test_each_match_field(fields: Ruleset, action: Action, rule: str | None) -> None:
    assert fields.evaluate(action).rule == rule


def test_every_matching_rule_is_found_and_the_strictest_wins(fields: Ruleset) -> None:
    # An audit agent's destructive call to db.* with a forced body matches log, hold and deny.
    action = act("DELETE", host="db.internal", agent="audit-1", body=b'{"force": true}')
    explained = fields.explain(action)
    assert [r.id for r in explained.matched] == ["body", "effect-hold", "agent-log"]
    assert explained.decision.rule == "body" and explained.decision.refused
    assert "2 other matching rule(s)" in explained.reason


def test_hold_beats_log_and_allow(tmp_path: Path) -> None:
    f = tmp_path / "r.yaml"
    f.write_text(
        "version: 1\negress: {allow: ['*']}\nrules:\n"
        "  - {id: a, match: {path: /x}, action: allow}\n"
        "  - {id: l, match: {path: /x}, action: log}\n"
        "  - {id: h, match: {path: /x}, action: hold}\n"
    )
    decision = Ruleset.load(f).evaluate(act(path="/x"))
    assert (decision.rule, decision.error) == ("h", "held")


@pytest.mark.parametrize(
    ("method", "verdict", "rule"),
    [
        ("GET", Verdict.ALLOW, None),
        ("POST", Verdict.LOG, "defaults.write"),
        ("DELETE", Verdict.HOLD, "defaults.destructive"),
    ],
)
def test_defaults_by_effect(tmp_path: Path, method: str, verdict: Verdict, rule: str | None) -> None:
    f = tmp_path / "r.yaml"
    f.write_text(
        "version: 1\negress: {allow: ['*']}\ndefaults: {read: allow, write: log, destructive: hold}\n"
    )
    decision = Ruleset.load(f).evaluate(act(method))
    assert (decision.verdict, decision.rule) == (verdict, rule)


def test_an_effect_rule_overrules_the_method_or_annotation_for_the_defaults_and_later_matches(
    tmp_path: Path,
) -> None:
    f = tmp_path / "r.yaml"
    f.write_text(
        "version: 1\negress: {allow: ['*']}\ndefaults: {write: log, destructive: deny}\nrules:\n"
        "  - {id: search-is-a-read, match: {method: POST, path: /search}, effect: read}\n"
        "  - {id: purge-destroys, match: {path: /purge}, effect: destructive}\n"
        "  - {id: purge-also, match: {path: /purge}, effect: write}\n"
        "  - {id: watch-destructive, match: {effect: destructive, path: /purge}, action: log}\n"
    )
    rules = Ruleset.load(f)
    search, decision = rules.decide(act("POST", path="/search"))
    assert (search.effect, decision.verdict, decision.rule) == (Effect.READ, Verdict.ALLOW, None)
    # The first matching effect rule wins; later rules' effect matches see the new effect, and
    # the strictest verdict among them and the default still decides.
    purge, decision = rules.decide(act("POST", path="/purge"))
    assert (purge.effect, decision.verdict, decision.rule) == (
        Effect.DESTRUCTIVE,
        Verdict.LOG,
        "watch-destructive",
    )
    explained = rules.explain(act("POST", path="/purge"))
    assert explained.reason.startswith("rule purge-destroys makes it destructive; rule watch-destructive")
    other, decision = rules.decide(act("POST", path="/other"))
    assert (other.effect, decision.rule) == (Effect.WRITE, "defaults.write")


def test_the_strictest_default_wins_across_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("version: 1\negress: {allow: ['*']}\ndefaults: {write: deny}\n")
    (tmp_path / "b.yaml").write_text("version: 1\ndefaults: {write: allow}\n")
    assert Ruleset.load(tmp_path).evaluate(act("POST")).rule == "defaults.write"


@pytest.mark.parametrize(
    ("host", "port", "allowed"),
    [
        ("api.test", 443, True),
        ("api.test", 80, False),
        ("x.internal.test", 8443, True),
        ("x.internal.test", 443, False),
        ("any.open.test", 1234, True),
        ("::1", 8080, True),
        ("::2", 8080, False),
    ],
)
def test_egress_hosts_and_ports(tmp_path: Path, host: str, port: int, allowed: bool) -> None:
    f = tmp_path / "r.yaml"
    f.write_text(
        "version: 1\negress:\n  allow:\n    - 'api.test:443'\n"
        "    - {host: '*.internal.test', ports: [8443]}\n    - '*.open.test'\n    - '::1'\n"
    )
    assert Ruleset.load(f).egress_allows(host, port) is allowed


def test_enforce_in_any_file_beats_report(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("version: 1\negress: {action: report}\n")
    (tmp_path / "b.yaml").write_text("version: 1\negress: {action: enforce}\n")
    assert Ruleset.load(tmp_path).evaluate(act(host="nowhere.test")).rule == "egress"
    (tmp_path / "b.yaml").write_text("version: 1\n")
    assert Ruleset.load(tmp_path).evaluate(act(host="nowhere.test")).verdict is Verdict.LOG


def test_the_index_finds_the_same_rules_as_a_full_scan(fields: Ruleset, tmp_path: Path) -> None:
    f = tmp_path / "mixed.yaml"
    rules = [f"  - {{id: h{i}, match: {{host: 'h{i}.test', method: POST}}, action: deny}}" for i in range(50)]
    rules += [
        "  - {id: glob, match: {host: 'h1*.test'}, action: log}",
        "  - {id: all, match: {}, action: log}",
    ]
    f.write_text("version: 1\negress: {allow: ['*']}\nrules:\n" + "\n".join(rules) + "\n")
    rs = Ruleset.load(f)
    for action in [act("POST", host="h12.test"), act("GET", host="h12.test"), act(host="other.test")]:
        scanned = [r.id for r in rs.rules if r.matches(action)]
        assert [r.id for r in rs.explain(action).matched] == scanned


def test_every_commented_example_in_the_starter_file_is_valid(tmp_path: Path) -> None:
    import re

    lines = []
    for line in default_path().read_text().splitlines():
        m = re.match(r"^  # (- id: .*|  .*)$", line)
        if m:
            lines.append("  " + m.group(1))
        elif not line.startswith("  #"):
            lines.append(line)
    f = tmp_path / "examples.yaml"
    f.write_text("\n".join(lines) + "\n")
    ids = [r.id for r in Ruleset.load(f).rules]
    assert len(ids) >= 9 and "no-force-push-flag" in ids and "mail-only-to-us" in ids
    rs = Ruleset.load(default_path())
    assert rs.evaluate(act("DELETE", host="localhost")).error == "held"  # destructive is held by default
    assert rs.evaluate(act("GET", host="localhost")).verdict is Verdict.ALLOW

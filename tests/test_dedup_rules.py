"""Dedup and storm settings in rule files: key templates, fingerprints, statuses, the breaker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proxy.core.breaker import Breaker
from proxy.core.keys import DedupPolicy, claim_for
from rules import Action, KeyTemplate, RulesError, Ruleset, StatusSet, Storm, Verdict, fingerprint, seconds

from .support.actions import act

RULES = """\
version: 1
egress:
  allow: [api.test]
defaults: {write: hold}
rules:
  - id: orders-by-token
    match: {path: "/orders"}
    dedup: {key: "{method} {host}{path} {body.ClientToken}", scope: all, ttl: 1h, on_conflict: reject}
  - id: mail-once
    match: {tool: send_mail}
    dedup: {key: "{tool} {args.to} {args.subject}", final: [2xx, error]}
  - id: anything-else-auto
    match: {method: PUT}
    dedup: auto
    storm: {failures: 2, window: 10s}
  - id: orders-are-writes
    match: {path: "/orders"}
    action: allow
"""


def order(**fields: Any) -> Action:
    return act("POST", "/orders", **fields)


@pytest.fixture
def ruleset(tmp_path: Path) -> Ruleset:
    f = tmp_path / "r.yaml"
    f.write_text(RULES)
    return Ruleset.load(f)


def test_a_template_keys_actions_by_the_fields_it_names(ruleset: Ruleset) -> None:
    one = ruleset.evaluate(order(body=b'{"ClientToken": "t-1", "qty": 1}'))
    assert one.dedup is not None and one.dedup.rule == "orders-by-token"
    assert one.dedup.key_of(order(body=b'{"qty": 2, "ClientToken": "t-1"}')) == "POST api.test/orders t-1"
    # No ClientToken: the template cannot be filled, so the action has no key.
    assert one.dedup.key_of(order(body=b'{"qty": 1}')) is None
    assert one.dedup.key_of(order(body=b"not json")) is None
    mail = ruleset.evaluate(act("POST", "/rpc", tool="send_mail", args={"to": "a@b", "subject": "hi"}))
    assert mail.dedup is not None and mail.dedup.key_of(
        act("POST", "/rpc", tool="send_mail", args={"to": "a@b", "subject": "hi", "body": "x"})
    ) == ("send_mail a@b hi")


def test_a_rule_without_an_action_leaves_the_verdict_to_the_others(ruleset: Ruleset) -> None:
    decided = ruleset.evaluate(order(body=b"{}"))
    assert (decided.verdict, decided.rule) == (Verdict.ALLOW, "orders-are-writes")
    # PUT matches only the dedup/storm rule: the defaults still decide (write: hold).
    held = ruleset.evaluate(act("PUT", "/things/1"))
    assert held.verdict is Verdict.HOLD and held.rule == "defaults.write"
    assert held.dedup is not None and held.dedup.key is None
    assert held.storm == Storm("anything-else-auto", 2, 10.0)


def test_fingerprints_ignore_key_order_query_order_and_path_spelling() -> None:
    a = order(body=b'{"a": 1, "b": [1, 2]}', query="x=1&y=2")
    same = act("POST", "/./orders", body=b'{ "b": [1,2], "a": 1 }', query="y=2&x=1")
    assert fingerprint(a) == fingerprint(same)
    assert fingerprint(a) != fingerprint(order(body=b'{"a": 2, "b": [1, 2]}', query="x=1&y=2"))
    assert fingerprint(a) != fingerprint(
        act("PUT", "/orders", body=b'{"a": 1, "b": [1, 2]}', query="x=1&y=2")
    )
    call = order(tool="t", args={"x": 1, "y": 2})
    assert fingerprint(call) == fingerprint(order(tool="t", args={"y": 2, "x": 1}, body=b"other id"))


def test_claims_take_the_header_first_and_scope_by_agent_unless_shared(ruleset: Ruleset) -> None:
    policy = DedupPolicy()
    body = b'{"ClientToken": "t-1"}'
    shared = [claim_for(order(body=body, agent=a), ruleset.evaluate(order(body=body)), policy) for a in "xy"]
    assert shared[0] is not None and shared[1] is not None
    assert shared[0].claim.key == shared[1].claim.key and shared[0].reject
    assert shared[0].claim.ttl == 3600 and "t-1" not in shared[0].claim.key  # only its digest is kept

    header = order(body=body, headers={"idempotency-key": "k-9"})
    keyed = claim_for(header, ruleset.evaluate(header), policy)
    assert keyed is not None and keyed.claim.key == "*|api.test|key:k-9" and keyed.label == "Idempotency-Key"

    put = act("PUT", "/things/1", body=b"{}")
    per_agent = [claim_for(act("PUT", "/things/1", agent=a), ruleset.evaluate(put), policy) for a in "xy"]
    assert per_agent[0] is not None and per_agent[1] is not None
    assert per_agent[0].claim.key != per_agent[1].claim.key

    mail = act("POST", "/rpc", tool="send_mail", args={"to": "a@b", "subject": "hi"})
    mailed = claim_for(mail, ruleset.evaluate(mail), policy)
    assert mailed is not None and mailed.final(None) and mailed.final(201) and not mailed.final(404)
    # Nothing keys a plain read.
    get = act("GET", "/items")
    assert claim_for(get, ruleset.evaluate(get), policy) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "version: 1\nrules:\n  - id: a\n    match: {}\n",
            "r.yaml:3:5: rules[0]: needs one of: action, dedup",
        ),
        (
            "version: 1\nrules:\n  - id: a\n    match: {}\n    dedup: {key: '{bdy.x}'}\n",
            "r.yaml:5:18: rules[0].dedup.key: {bdy.x} is not a field of an action",
        ),
        (
            "version: 1\nrules:\n  - id: a\n    match: {}\n    dedup: {key: 'fixed'}\n",
            "rules[0].dedup.key: 'fixed' names no field of the action",
        ),
        (
            "version: 1\nrules:\n  - id: a\n    match: {}\n    dedup: {ttl: 3q}\n",
            "r.yaml:5:18: rules[0].dedup.ttl: '3q' is not a duration",
        ),
        (
            "version: 1\nrules:\n  - id: a\n    match: {}\n    dedup: automatic\n",
            "r.yaml:5:12: rules[0].dedup: 'automatic' is not valid here: use 'auto' or a mapping",
        ),
        (
            "version: 1\nrules:\n  - id: a\n    match: {}\n    dedup: {final: [2xy]}\n",
            "rules[0].dedup.final[0]: '2xy' is not a status",
        ),
        (
            "version: 1\nrules:\n  - id: a\n    match: {}\n    storm: {failures: -1}\n",
            "rules[0].storm.failures: -1 is less than the minimum of 0",
        ),
    ],
)
def test_bad_dedup_settings_name_file_line_and_field(tmp_path: Path, text: str, expected: str) -> None:
    f = tmp_path / "r.yaml"
    f.write_text(text)
    with pytest.raises(RulesError) as err:
        Ruleset.load(f)
    assert str(err.value).startswith(str(f)) and expected.removeprefix("r.yaml") in str(err.value)


def test_template_fields() -> None:
    action = order(
        body=b'{"a": {"b": [10, {"c": "deep"}]}}',
        query="page=2&page=3",
        headers={"x-request": "r-1"},
        tool="t",
        args={"n": 1},
    )
    assert KeyTemplate("{body.a.b.1.c}|{query.page}|{headers.X-Request}|{args.n}").render(action) == (
        "deep|2|r-1|1"
    )
    assert (
        KeyTemplate("{url} {port} {agent}").render(action)
        == "https://api.test/orders?page=2&page=3 443 agent"
    )
    assert KeyTemplate("{body.a}").render(action) == '{"b":[10,{"c":"deep"}]}'
    assert KeyTemplate("{service}").render(action) is None


def test_durations_and_statuses() -> None:
    assert [seconds(v) for v in (5, "500ms", "30s", "5m", "24h", "2d", "1.5")] == [
        5,
        0.5,
        30,
        300,
        86400,
        172800,
        1.5,
    ]
    statuses = StatusSet(["2xx", 409, "error"])
    assert 201 in statuses and 409 in statuses and None in statuses
    assert 404 not in statuses and 500 not in statuses and None not in StatusSet(["2xx"])


def test_the_breaker_trips_after_n_failures_in_the_window_and_a_success_clears_it() -> None:
    storm, breaker = Storm("r", failures=3, window=10), Breaker()
    for t in (0.0, 1.0):
        breaker.failed("a", storm, now=t)
    assert breaker.retry_after("a", storm, now=2.0) is None
    breaker.failed("a", storm, now=2.0)
    assert breaker.retry_after("a", storm, now=3.0) == pytest.approx(7.0)  # until t=0 ages out
    assert breaker.retry_after("b", storm, now=3.0) is None
    assert breaker.retry_after("a", storm, now=10.5) is None
    breaker.failed("a", storm, now=10.5)  # failures at 1, 2 and 10.5 are within one window
    assert breaker.retry_after("a", storm, now=10.5) == pytest.approx(0.5)
    breaker.succeeded("a")
    assert breaker.retry_after("a", storm, now=10.5) is None
    off = Storm("r", failures=0)
    breaker.failed("c", off, now=0)
    assert breaker.retry_after("c", off, now=0) is None


def test_the_breaker_forgets_the_least_recently_failing_actions_beyond_its_capacity() -> None:
    storm, breaker = Storm(None, failures=1, window=60), Breaker(capacity=2)
    for name in "abc":
        breaker.failed(name, storm, now=0)
    assert breaker.retry_after("a", storm, now=1) is None
    assert breaker.retry_after("c", storm, now=1) is not None

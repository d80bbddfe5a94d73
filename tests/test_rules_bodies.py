"""BODIES, the one owner of parsed JSON bodies: bounded, each body parsed once while kept, and
the same owner for the rules and the proxy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proxy.core import records
from proxy.mcp import messages
from rules import BODIES, Action, Effect, ParsedBodies, Ruleset, json_of

RULES = """\
version: 1
egress: {allow: ["*"]}
rules:
  - id: no-drops
    match: {body: {required: [drop], properties: {drop: {const: true}}}}
    action: deny
"""


def test_the_bound_holds_and_the_least_recently_read_goes_first() -> None:
    bodies = ParsedBodies(bound=3)
    for n in range(10):
        bodies.reading(json.dumps({"n": n}).encode())
        assert len(bodies) <= 3
    assert bodies.parses == 10
    bodies.reading(b'{"n": 7}')  # kept: read again without parsing, and now the most recent
    bodies.reading(b'{"n": 10}')  # a new body pushes out the least recently read, {"n": 8}
    assert bodies.parses == 11
    bodies.reading(b'{"n": 7}')
    assert bodies.parses == 11
    bodies.reading(b'{"n": 8}')
    assert bodies.parses == 12


def test_a_bound_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="bound 0"):
        ParsedBodies(bound=0)


def test_an_ambiguous_body_is_kept_with_its_problem() -> None:
    bodies = ParsedBodies(bound=2)
    first = bodies.reading(b'{"a": 1} trailing')
    assert first.doc is None and first.problem is not None and not first.found
    assert bodies.reading(b'{"a": 1} trailing') is first and bodies.parses == 1


def test_the_rules_and_the_proxy_read_one_body_through_one_parse(tmp_path: Path) -> None:
    # The log's redaction reads the body first, then the rules and the MCP reader: one parse.
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    ruleset = Ruleset.load(path)
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "x"}}
    body = json.dumps({**call, "drop": True, "password": "hunter2-not-logged"}).encode()
    before = BODIES.parses
    excerpt = records.body_excerpt(body, records.BodyPolicy(), content_type="application/json")
    assert excerpt["redacted"] and "hunter2" not in excerpt["text"]
    assert BODIES.parses == before + 1
    action = Action("POST", "http", "api.test", 443, "/mcp", Effect.WRITE, body=body)
    assert ruleset.decide(action)[1].refused
    found = messages.messages(body)
    assert found is not None and found[0]["drop"] is True
    assert json_of(body) == found[0]
    assert BODIES.parses == before + 1

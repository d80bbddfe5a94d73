"""Proposed tool calls on their own: the digest that compares arguments across providers and
MCP, and the index that links an action to the model call whose answer proposed it (the proxy's
use of it is in tests/test_llm.py)."""

from __future__ import annotations

import pytest

from proxy.core.proposals import Proposals, ProposedCall, arguments_digest, same_tool
from rules import Action, Effect
from store import ActionRef


def tool_call(tool: str, args: object, agent: str = "agent") -> Action:
    return Action(
        "POST",
        "http",
        "127.0.0.1",
        9000,
        "/mcp",
        Effect.WRITE,
        protocol="mcp",
        agent=agent,
        tool=tool,
        args=args,
    )


def turn(action_id: int) -> ActionRef:
    ref = ActionRef()
    ref.id = action_id
    return ref


@pytest.mark.parametrize(
    ("model", "mcp"),
    [
        ('{"id": "n1", "force": true}', {"force": True, "id": "n1"}),  # OpenAI: a JSON string
        ({"b": [1, {"y": 2, "x": 1}], "a": "é"}, {"a": "é", "b": [1, {"x": 1, "y": 2}]}),
        ("{}", {}),
    ],
)
def test_arguments_compare_by_content_whatever_their_spelling(model: object, mcp: object) -> None:
    assert arguments_digest(model) == arguments_digest(mcp)


def test_different_arguments_differ() -> None:
    assert arguments_digest({"id": "n1"}) != arguments_digest({"id": "n2"})
    assert arguments_digest("not json") != arguments_digest("not json!")


def test_a_tool_name_matches_itself_and_an_mcp_clients_namespaced_name() -> None:
    assert same_tool("delete_note", "delete_note")
    assert same_tool("mcp__notes__delete_note", "delete_note")
    assert not same_tool("delete_note_all", "delete_note")
    assert not same_tool("undelete_note", "delete_note")


def test_an_action_links_to_the_newest_model_call_that_proposed_it_for_its_agent() -> None:
    proposals = Proposals()
    proposals.remember("agent", turn(7), [ProposedCall("delete_note", '{"id":"n1"}', "call_1")])
    proposals.remember("agent", turn(9), [ProposedCall("mcp__notes__delete_note", {"id": "n1"}, "toolu_2")])
    link = proposals.origin(tool_call("delete_note", {"id": "n1"}))
    assert link == {"action": 9, "tool": "mcp__notes__delete_note", "call": "toolu_2"}
    # Other arguments, another tool or another agent: no model call proposed that.
    assert proposals.origin(tool_call("delete_note", {"id": "n2"})) is None
    assert proposals.origin(tool_call("read_note", {"id": "n1"})) is None
    assert proposals.origin(tool_call("delete_note", {"id": "n1"}, agent="other")) is None


def test_proposals_age_out_and_the_index_stays_bounded() -> None:
    proposals = Proposals(ttl=0.0)
    proposals.remember("agent", turn(1), [ProposedCall("t", {})])
    assert proposals.origin(tool_call("t", {})) is None  # older than ttl
    bounded = Proposals(size=3)
    for i in range(10):
        bounded.remember(f"agent{i % 2}", turn(i + 1), [ProposedCall("t", {"i": i})])
    assert bounded.origin(tool_call("t", {"i": 9}, agent="agent1")) == {"action": 10, "tool": "t"}
    assert bounded.origin(tool_call("t", {"i": 0}, agent="agent0")) is None  # dropped, oldest first


def test_a_model_call_whose_intent_was_never_written_links_nothing() -> None:
    proposals = Proposals()
    proposals.remember("agent", ActionRef(), [ProposedCall("t", {})])
    assert proposals.origin(tool_call("t", {})) is None


def http_request(path: str, agent: str = "agent") -> Action:
    return Action("DELETE", "http", "api.example.com", 80, path, Effect.DESTRUCTIVE, agent=agent)


def test_an_http_request_links_only_through_the_tools_a_rule_names_and_by_its_host_and_path() -> None:
    proposals = Proposals()
    url = "http://api.example.com/items/42"
    proposals.remember(
        "agent", turn(3), [ProposedCall("http_request", {"method": "DELETE", "url": url}, "c1")]
    )
    proposals.remember("agent", turn(4), [ProposedCall("run_shell", {"command": f"curl -X DELETE {url}"})])
    assert proposals.origin(http_request("/items/42")) is None  # no rule names a carrier
    assert proposals.origin(http_request("/items/42"), ["http_request"]) == {
        "action": 3,
        "tool": "http_request",
        "call": "c1",
    }
    assert proposals.origin(http_request("/items/42"), ["run_shell", "http_request"]) == {
        "action": 4,
        "tool": "run_shell",
    }
    assert proposals.origin(http_request("/items/7"), ["http_request"]) is None
    assert proposals.origin(http_request("/items/42", agent="other"), ["http_request"]) is None
    assert proposals.origin(http_request("/"), ["http_request"]) is None  # a bare host says too little

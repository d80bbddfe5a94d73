"""What the MCP tests over HTTP expect: the notes server's answers, the rules they start from, and
the tool calls the log holds."""

from __future__ import annotations

from typing import Any

from mcp.types import CallToolResult

from .airlock import Airlock
from .waiting import wait_for


def read_result(name: str) -> str:
    """What `read_note(name)` returns."""
    return f"the note {name} says hello"


def write_result(name: str, text: str) -> str:
    """What `write_note(name, text)` returns."""
    return f"wrote {name}: text {len(text)}, api_token 0, password 0"


def rules(*extra: str) -> str:
    """A rules file allowing loopback, with `extra` rules (YAML list items)."""
    body = "".join(f"  {line}\n" for rule in extra for line in rule.strip().splitlines())
    return f"version: 1\negress:\n  allow: [127.0.0.1]\nrules:\n{body or '  []\n'}"


# A rule that refuses every delete_note call.
NO_DELETES = """\
- id: notes-are-kept
  match: {tool: delete_note}
  action: deny
  message: Notes are never deleted; archive the note instead.
"""


def texts(result: CallToolResult) -> list[str]:
    """The text parts of a tool's result."""
    return [c.text for c in result.content if c.type == "text"]


def assert_result(result: CallToolResult, text: str) -> None:
    """The server's own result for a tool that returns `text`, unchanged."""
    assert not result.is_error, texts(result)
    assert texts(result) == [text]
    assert result.structured_content in (None, {"result": text})


def assert_denied(result: CallToolResult, rule: str, message: str) -> int:
    """A refusal naming the rule and its message; returns the airlock action id it names."""
    assert result.is_error
    [text] = texts(result)
    assert f"rule {rule}" in text and message in text, text
    return int(text.split("airlock action ")[1].split(")")[0])


# ---- the log --------------------------------------------------------------------------------


def tool_calls(a: Airlock) -> list[dict[str, Any]]:
    """The tools/call actions in the log, oldest first."""
    return [x for x in a.log() if x.get("operation") == "tools/call"]


def settled_calls(a: Airlock, n: int) -> list[dict[str, Any]]:
    """The log's tool calls once there are `n` and none is still pending."""
    found: list[dict[str, Any]] = []

    def done() -> bool:
        found[:] = tool_calls(a)
        return len(found) == n and all(x["state"] != "pending" for x in found)

    wait_for(done, f"{n} tool calls are settled in the log")
    return found

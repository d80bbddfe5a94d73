"""`airlock mcp -- CMD ARGS...` end to end: a real MCP SDK host on one side, a real MCP SDK server
on stdio as airlock's child on the other.

Allowed calls pass unchanged; denied calls are tool errors that never reach the server; denied
tools are hidden from `tools/list`; dedup rules answer repeated calls from the log; arguments
are logged redacted and capped while the server gets them whole; the server's own requests and
notifications reach the host and its answers reach the server; the child's stderr and exit code
pass through; malformed input is answered by airlock and never reaches the child.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.types import CallToolResult, ListToolsResult, TextContent

from .support import AIRLOCK, wait_for
from .support.mcp_http import Client
from .support.mcp_stdio import INITIALIZE, Host, Setup, write_rules
from .support.scripts.notes_server import MARKER

UPSTREAM = Path(sys.executable).name  # how airlock names a server run as `python SCRIPT`


def session[T](
    params: StdioServerParameters,
    errlog: Path,
    body: Callable[[ClientSession], Awaitable[T]],
    client: Client | None = None,
) -> T:
    """Run `body` in an initialized SDK client session over stdio; the SDK stops the process.
    `client` answers the server's requests and takes its notifications."""
    callbacks = client.callbacks() if client is not None else {}

    async def go() -> T:
        with errlog.open("a") as err, anyio.fail_after(45):
            async with (
                stdio_client(params, errlog=err) as (read, write),
                ClientSession(read, write, **callbacks) as s,
            ):
                await s.initialize()
                return await body(s)

    return anyio.run(go)


def direct(s: Setup, body: Callable[[ClientSession], Awaitable[Any]]) -> Any:
    """The same server without airlock (effects in their own file), for reference answers."""
    params = StdioServerParameters(
        command=sys.executable, args=[str(s.server), str(s.root / "direct-effects")]
    )
    return session(params, s.root / "direct.stderr", body)


def through_airlock(s: Setup, body: Callable[[ClientSession], Awaitable[Any]]) -> Any:
    return session(s.params(), s.stderr, body)


def text_of(result: CallToolResult) -> str:
    assert len(result.content) == 1 and isinstance(result.content[0], TextContent), result
    return result.content[0].text


def dumped(result: CallToolResult | ListToolsResult) -> dict[str, Any]:
    return result.model_dump(mode="json", by_alias=True, exclude_none=True)


def tool_calls(s: Setup) -> list[dict[str, Any]]:
    return [x for x in s.log() if x.get("operation") == "tools/call"]


# ---- rules, results and the log ---------------------------------------------------------------

ALLOWED = [("read_note", {"name": "a"}), ("write_note", {"name": "a", "text": "hello"})]


async def calls(s: ClientSession) -> dict[str, Any]:
    listed = await s.list_tools()
    results = [await s.call_tool(name, args) for name, args in ALLOWED]
    return {"list": listed, "results": results}


def test_allowed_calls_pass_unchanged_denied_calls_never_run_and_denied_tools_are_hidden(
    setup: Setup,
) -> None:
    write_rules(
        setup,
        """\
rules:
  - id: notes-are-kept
    match: {tool: delete_note}
    action: deny
    message: Notes are kept forever; archive the note instead.
  - id: locked-note
    match: {tool: write_note, args: {properties: {name: {const: locked}}, required: [name]}}
    action: deny
    message: The locked note is read-only.
""",
    )
    reference = direct(setup, calls)

    async def gated(s: ClientSession) -> dict[str, Any]:
        out = await calls(s)
        out["delete"] = await s.call_tool("delete_note", {"name": "a"})
        out["locked"] = await s.call_tool("write_note", {"name": "locked", "text": "x"})
        return out

    got = through_airlock(setup, gated)

    # tools/list: the tool a deny rule refuses outright is gone; the one it refuses only for some
    # arguments stays; every other tool is listed exactly as the server lists it.
    assert [t.name for t in reference["list"].tools] == [
        "read_note",
        "write_note",
        "delete_note",
        "big_note",
        "consult",
    ]
    expected = dumped(reference["list"])
    expected["tools"] = [t for t in expected["tools"] if t["name"] != "delete_note"]
    assert dumped(got["list"]) == expected
    # Allowed calls: the server's results, unchanged.
    assert [dumped(r) for r in got["results"]] == [dumped(r) for r in reference["results"]]
    assert not any(r.is_error for r in got["results"])
    assert text_of(got["results"][1]) == "wrote a: text 5, api_token 0, password 0"
    # Denied calls: tool errors naming the rule and its message; the server never ran them.
    assert got["delete"].is_error is True
    assert "notes-are-kept" in text_of(got["delete"])
    assert "Notes are kept forever; archive the note instead." in text_of(got["delete"])
    assert got["locked"].is_error is True
    assert "locked-note" in text_of(got["locked"])
    assert "The locked note is read-only." in text_of(got["locked"])
    assert setup.effect_lines() == ["write a"]

    log = setup.log()
    operations = [x.get("operation") for x in log]
    assert operations[:3] == ["initialize", "notifications/initialized", "tools/list"], operations
    for x in log:
        assert x["upstream"] == UPSTREAM and x["url"] == f"stdio:{UPSTREAM}" and x["protocol"] == "mcp", x
    seen = [
        (x["tool"], x["args"], x["effect"], x["state"], x["status"], x["rule"])
        for x in log
        if x.get("operation") == "tools/call"
    ]
    assert seen == [
        ("read_note", {"name": "a"}, "read", "committed", 200, None),
        ("write_note", {"name": "a", "text": "hello"}, "write", "committed", 200, None),
        ("delete_note", {"name": "a"}, "destructive", "denied", None, "notes-are-kept"),
        ("write_note", {"name": "locked", "text": "x"}, "write", "denied", None, "locked-note"),
    ]
    # The refusal names the action that logged it.
    denied_id = next(x["id"] for x in log if x.get("tool") == "delete_note")
    assert f"airlock action {denied_id}" in text_of(got["delete"])


def test_hide_false_keeps_a_denied_tool_listed_and_still_refuses_it(setup: Setup) -> None:
    write_rules(
        setup,
        """\
rules:
  - id: notes-are-kept
    match: {tool: delete_note}
    action: deny
    hide: false
    message: Notes are kept forever.
""",
    )
    reference = direct(setup, lambda s: s.list_tools())

    async def gated(s: ClientSession) -> tuple[ListToolsResult, CallToolResult]:
        return await s.list_tools(), await s.call_tool("delete_note", {"name": "b"})

    listed, deleted = through_airlock(setup, gated)
    assert dumped(listed) == dumped(reference)
    assert [t.name for t in listed.tools] == ["read_note", "write_note", "delete_note", "big_note", "consult"]
    assert deleted.is_error is True and "Notes are kept forever." in text_of(deleted)
    assert setup.effect_lines() == []
    [call] = tool_calls(setup)
    assert (call["tool"], call["effect"], call["state"], call["rule"]) == (
        "delete_note",
        "destructive",
        "denied",
        "notes-are-kept",
    )


# ---- dedup ------------------------------------------------------------------------------------


def test_a_dedup_rule_runs_a_repeated_call_once_and_replays_its_result(setup: Setup) -> None:
    write_rules(
        setup,
        """\
rules:
  - id: one-write-per-note
    match: {tool: write_note}
    dedup: {key: "{tool} {args.name}"}
""",
    )

    async def gated(s: ClientSession) -> list[CallToolResult]:
        same = {"name": "n1", "text": "first"}
        return [
            await s.call_tool("write_note", same),
            await s.call_tool("write_note", same),
            await s.call_tool("write_note", {"name": "n2", "text": "first"}),
        ]

    first, again, other = through_airlock(setup, gated)
    assert not first.is_error and text_of(first) == "wrote n1: text 5, api_token 0, password 0"
    assert dumped(again) == dumped(first)
    assert not other.is_error and text_of(other) == "wrote n2: text 5, api_token 0, password 0"
    # One effect per key: the repeat never reached the server.
    assert setup.effect_lines() == ["write n1", "write n2"]
    seen = [(x["args"]["name"], x["state"]) for x in tool_calls(setup)]
    assert seen == [("n1", "committed"), ("n1", "replayed"), ("n2", "committed")]
    committed, replayed, _ = tool_calls(setup)
    assert replayed["replay_of"] == committed["id"]


# ---- what the log keeps of arguments ----------------------------------------------------------


def test_arguments_are_logged_redacted_and_capped_but_reach_the_server_whole(setup: Setup) -> None:
    write_rules(setup, "rules: []\n")
    token, password, big = "tok-" + "k" * 20, "hunter2-xyzzy", "y" * 400_000

    async def gated(s: ClientSession) -> list[CallToolResult]:
        return [
            await s.call_tool(
                "write_note", {"name": "creds", "text": "short", "api_token": token, "password": password}
            ),
            await s.call_tool("write_note", {"name": "big", "text": big}),
        ]

    creds, large = through_airlock(setup, gated)
    # The server got every value whole (it reports the lengths it received).
    assert text_of(creds) == f"wrote creds: text 5, api_token {len(token)}, password {len(password)}"
    assert text_of(large) == f"wrote big: text {len(big)}, api_token 0, password 0"
    assert setup.effect_lines() == ["write creds", "write big"]

    log_text = setup.cli("log", "--json", "--all")
    assert token not in log_text and password not in log_text
    by_name = {x["args"].get("name"): x for x in tool_calls(setup) if "name" in x["args"]}
    redacted = {"name": "creds", "text": "short", "api_token": "[redacted]", "password": "[redacted]"}
    assert by_name["creds"]["args"] == redacted
    shown = setup.show(by_name["creds"]["id"])
    assert token not in json.dumps(shown) and password not in json.dumps(shown)
    assert shown["action"]["args"] == redacted and "args" not in shown["entries"][0]["data"]["action"]

    # The big argument: the listing shows its size, the intent a capped copy.
    big_id = next(x["id"] for x in tool_calls(setup) if x["args"].get("truncated"))
    stored = setup.show(big_id)["entries"][0]["data"]["action"]["args"]
    assert stored["truncated"] is True
    assert stored["size"] > len(big)
    assert stored["text"].startswith('{"name":"big","text":"yyy')
    assert len(stored["text"]) <= 64 * 1024 < len(big)


# ---- airlock mcp run by hand: stderr, exit codes, startup errors -------------------------------


def test_the_childs_stderr_passes_through_while_it_runs(setup: Setup, hosts: Callable[..., Host]) -> None:
    write_rules(setup, "rules: []\n")
    host = hosts(setup.airlock_command(), setup.stderr)
    # The server's first words reach airlock's stderr while it runs, not only at the end.
    wait_for(lambda: MARKER in host.stderr(), "the server's stderr line shows on airlock's")
    host.initialize()
    host.send({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
    listed = host.response(2)["result"]["tools"]
    assert [t["name"] for t in listed] == ["read_note", "write_note", "delete_note", "big_note", "consult"]
    assert host.close() == 0
    err = host.stderr()
    assert err.count(MARKER) == 1 and "Traceback" not in err, err


@pytest.mark.parametrize(
    ("code", "status"),
    [("import sys; sys.exit(7)", 7), ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", 137)],
    ids=["exit-7", "killed-by-sigkill"],
)
def test_airlock_exits_with_the_childs_exit_code(
    setup: Setup, hosts: Callable[..., Host], code: str, status: int
) -> None:
    write_rules(setup, "rules: []\n")
    cmd = [AIRLOCK, "mcp", "--data", str(setup.data), "--rules", str(setup.rules), "--"]
    host = hosts([*cmd, sys.executable, "-c", code], setup.stderr)
    # The host still holds airlock's stdin open: the child's exit alone ends airlock.
    assert host.proc.wait(30) == status
    assert "Traceback" not in host.stderr()


@pytest.mark.parametrize(
    "command",
    [[], ["--"], ["--", "/nonexistent/airlock-test-server"], ["--", "airlock-test-no-such-command"]],
    ids=["no-command", "only-dashes", "missing-path", "missing-on-path"],
)
def test_airlock_mcp_without_a_runnable_command_fails_with_one_line(setup: Setup, command: list[str]) -> None:
    write_rules(setup, "rules: []\n")
    proc = subprocess.run(
        [AIRLOCK, "mcp", "--data", str(setup.data), "--rules", str(setup.rules), *command],
        input=b"",
        capture_output=True,
        timeout=30,
    )
    err = proc.stderr.decode()
    assert proc.returncode != 0
    assert proc.stdout == b""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("airlock mcp: error: ")
    if len(command) > 1:
        assert command[1] in err and "not found" in err


@pytest.mark.parametrize("stdin", ["devnull", "file"])
def test_airlock_mcp_with_stdin_that_is_not_a_pipe(setup: Setup, stdin: str) -> None:
    write_rules(setup, "rules: []\n")
    requests = setup.root / "requests.jsonl"
    requests.write_text(json.dumps(INITIALIZE) + "\n")
    cmd = [AIRLOCK, "mcp", "--data", str(setup.data), "--rules", str(setup.rules), "--"]
    with requests.open("rb") as f:
        proc = subprocess.run(
            [*cmd, sys.executable, "-c", "import sys; sys.exit(7)"],
            stdin=subprocess.DEVNULL if stdin == "devnull" else f,
            capture_output=True,
            timeout=30,
        )
    assert "Traceback" not in proc.stderr.decode(), proc.stderr.decode()
    assert proc.returncode == 7


# ---- malformed input --------------------------------------------------------------------------


def test_malformed_lines_are_answered_by_airlock_and_never_reach_the_child(
    setup: Setup, hosts: Callable[..., Host]
) -> None:
    write_rules(setup, "rules: []\n")
    received = setup.root / "received"
    host = hosts(setup.airlock_command(str(received)), setup.stderr)
    host.initialize()

    host.send_raw(b"this is not JSON {")
    parse = host.recv()
    assert parse["jsonrpc"] == "2.0" and parse["id"] is None and parse["error"]["code"] == -32700, parse
    host.send_raw(b'{"jsonrpc": "2.0", "method": 5, "id": 1}')
    invalid = host.recv()
    assert invalid["jsonrpc"] == "2.0" and invalid["error"]["code"] == -32600, invalid

    # The session goes on as if nothing happened.
    host.send({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
    assert len(host.response(2)["result"]["tools"]) == 5
    call = {"name": "write_note", "arguments": {"name": "after", "text": "ok"}}
    host.send({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": call})
    result = host.response(3)["result"]
    assert result["isError"] is False
    assert result["content"][0]["text"] == "wrote after: text 2, api_token 0, password 0"
    assert host.close() == 0

    # What the child received: exactly the well-formed messages, in order.
    lines = received.read_bytes().splitlines()
    assert [json.loads(line).get("method") for line in lines] == [
        "initialize",
        "notifications/initialized",
        "tools/list",
        "tools/call",
    ]
    assert setup.effect_lines() == ["write after"]


def test_a_tools_call_with_params_that_are_not_an_object_gets_an_error(
    setup: Setup, hosts: Callable[..., Host]
) -> None:
    write_rules(setup, "rules: []\n")
    host = hosts(setup.airlock_command(), setup.stderr)
    host.initialize()
    host.send_raw(b'{"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": null}')
    error = host.recv(timeout=5)
    assert error["error"]["code"] in (-32600, -32602), error
    host.send({"jsonrpc": "2.0", "id": 8, "method": "tools/list"})
    assert len(host.response(8, timeout=5)["result"]["tools"]) == 5


# ---- the server's requests and notifications --------------------------------------------------


def test_server_requests_and_notifications_pass_through_both_ways(setup: Setup) -> None:
    """Inside a call, the server logs, reports progress, samples the host's model and elicits
    from its user over the pipes; the host's answers reach it, and the result is made of them."""
    write_rules(
        setup,
        """\
rules:
  - id: notes-are-kept
    match: {tool: delete_note}
    action: deny
    message: Notes are kept forever.
""",
    )
    client, topic = Client(), "the-harbour"
    cmd = setup.airlock_command()
    params = StdioServerParameters(command=cmd[0], args=cmd[1:])

    async def body(s: ClientSession) -> CallToolResult:
        await s.list_tools()
        return await s.call_tool(
            "consult", {"topic": topic}, read_timeout_seconds=20, progress_callback=client.on_progress
        )

    result = session(params, setup.stderr, body, client)
    assert not result.is_error, result
    assert text_of(result) == client.result(topic)
    client.assert_asked(topic)
    client.assert_logged(topic)
    assert client.progress == [(1, 2, f"sampling on {topic}"), (2, 2, f"asking about {topic}")]

    log = setup.log()
    operations = [x.get("operation") for x in log]
    # The host's two answers went to the server while the call was open, logged as reads.
    assert operations[-3:] == ["tools/call", "response", "response"], operations
    call, *responses = log[-3:]
    assert (call["tool"], call["args"], call["effect"], call["state"], call["status"]) == (
        "consult",
        {"topic": topic},
        "write",
        "committed",
        200,
    )
    for x in responses:
        assert (x["effect"], x["state"], x["status"], x["rule"]) == ("read", "committed", 202, None), x
        assert x["upstream"] == UPSTREAM and x["protocol"] == "mcp" and x["ts"] <= call["updated"], x
    assert [x for x in log if x["state"] != "committed" or x["rule"] is not None] == []


# ---- holds ------------------------------------------------------------------------------------


def test_a_held_tool_call_is_an_error_until_approved_then_runs_once(setup: Setup) -> None:
    write_rules(
        setup,
        """\
hold: {wait: 0s}
rules:
  - id: deletes-need-a-person
    match: {tool: delete_note}
    action: hold
""",
    )

    async def gated(s: ClientSession) -> tuple[CallToolResult, CallToolResult, CallToolResult]:
        held = await s.call_tool("delete_note", {"name": "b"})
        [waiting] = [x for x in tool_calls(setup) if x["state"] == "held"]
        await anyio.to_thread.run_sync(setup.cli, "approve", str(waiting["id"]), "--voter", "alice")
        ran = await s.call_tool("delete_note", {"name": "b"})  # the same call again carries it out
        again = await s.call_tool("delete_note", {"name": "b"})  # a new action, held anew
        return held, ran, again

    held, ran, again = through_airlock(setup, gated)
    assert held.is_error is True and "awaits approval" in text_of(held)
    assert ran.is_error is not True
    assert again.is_error is True and "awaits approval" in text_of(again)
    assert setup.effect_lines() == ["delete b"]
    first, second = tool_calls(setup)
    assert (first["state"], first["rule"]) == ("committed", "deletes-need-a-person")
    assert second["state"] == "held"
    kinds = [e["kind"] for e in setup.show(first["id"])["entries"]]
    assert kinds == ["intent", "vote", "decision", "execute", "outcome"]


def test_a_named_server_is_logged_and_matched_by_its_name(setup: Setup) -> None:
    """Two servers started the same way (`npx ...`, here `python ...`) are told apart by
    `--name`: the log's URL and upstream carry it, and a rule names the server by it."""
    write_rules(
        setup,
        "rules:\n"
        "  - {id: no-note-deletes-on-notes, match: {path: /notes, tool: delete_note}, action: deny,"
        " message: notes are kept}\n",
    )
    cmd = setup.airlock_command()
    named = StdioServerParameters(command=cmd[0], args=[cmd[1], "--name", "notes", *cmd[2:]])

    async def write_then_delete(s: ClientSession) -> tuple[CallToolResult, CallToolResult]:
        return await s.call_tool("write_note", {"name": "a", "text": "x"}), await s.call_tool(
            "delete_note", {"name": "a"}
        )

    written, deleted = session(named, setup.stderr, write_then_delete)
    assert not written.is_error and deleted.is_error
    assert "notes are kept" in text_of(deleted)
    assert setup.effect_lines() == ["write a"]
    logged = tool_calls(setup)
    assert {(x["url"], x["upstream"]) for x in logged} == {("stdio:notes", "notes")}
    assert [(x["tool"], x["state"]) for x in logged] == [
        ("write_note", "committed"),
        ("delete_note", "denied"),
    ]


@pytest.mark.parametrize("name", ["", "two words", "../up", ".hidden"])
def test_a_bad_server_name_is_one_line(setup: Setup, name: str) -> None:
    write_rules(setup, "rules: []\n")
    proc = subprocess.run(
        [AIRLOCK, "mcp", "--name", name, "--data", str(setup.data), "--", sys.executable, "-c", "pass"],
        input=b"",
        capture_output=True,
        timeout=30,
    )
    err = proc.stderr.decode()
    assert proc.returncode == 2 and len(err.strip().splitlines()) == 1, err
    assert "is not a server name" in err and "Traceback" not in err

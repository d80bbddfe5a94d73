"""The MCP adapter without processes: JSON-RPC messages as actions, effects from annotations, the
tool catalog, hiding denied tools, statuses, the SSE splitter and events, and ToolCalls deciding
and settling messages against a real log."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.core.admission import Admission
from proxy.core.keys import DedupPolicy
from proxy.core.records import BodyPolicy
from proxy.mcp import messages as mcp
from proxy.mcp.messages import NotJsonRpc, SseEvent, SseSplitter, ToolCatalog
from proxy.mcp.stdio import StdioConfig, base_action
from proxy.mcp.toolcalls import REFUSED, ToolCalls
from proxy.plane.streams import EventStream
from rules import Action, Effect, Ruleset, Verdict
from store import Log

SERVER = "stdio:notes-server"
BASE = base_action(
    StdioConfig(
        command=["/opt/bin/notes-server", "--verbose"], data=Path("unused"), rules=Path("unused"), agent="a1"
    )
)


def call(name: str, arguments: Any = None, message_id: Any = 1) -> dict[str, Any]:
    params: dict[str, Any] = {"name": name}
    if arguments is not None:
        params["arguments"] = arguments
    return {"jsonrpc": "2.0", "id": message_id, "method": "tools/call", "params": params}


TOOLS = [
    {"name": "read_note", "annotations": {"readOnlyHint": True}},
    {"name": "write_note", "inputSchema": {"type": "object"}},
    {"name": "delete_note", "annotations": {"destructiveHint": True}},
]


# ---- messages ---------------------------------------------------------------------------------


def test_messages_reads_one_message_or_a_batch() -> None:
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    assert mcp.messages(json.dumps(ping).encode()) == [ping]
    assert mcp.messages(b"  " + json.dumps(ping).encode() + b"\n") == [ping]
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    response = {"jsonrpc": "2.0", "id": 1, "result": {}}
    assert mcp.messages(json.dumps([ping, note, response]).encode()) == [ping, note, response]
    assert mcp.messages(json.dumps(call("write_note", {"a": 1})).encode()) == [call("write_note", {"a": 1})]


@pytest.mark.parametrize(
    "body",
    [None, b"", b"not json {", b"5", b'"a string"', b"[]", b"[1, 2]", b'{"a": 1}', b'[{"a": 1}]'],
)
def test_messages_of_what_is_not_json_rpc_is_none(body: bytes | None) -> None:
    assert mcp.messages(body) is None


@pytest.mark.parametrize(
    ("message", "why"),
    [
        ({"jsonrpc": "1.0", "id": 1, "method": "ping"}, "not JSON-RPC 2.0"),
        ({"jsonrpc": "2.0", "method": 5, "id": 1}, "method must be a string"),
        ({"jsonrpc": "2.0", "id": 1, "method": "tools/call"}, "params.name"),
        ({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": 3}}, "params.name"),
        ([{"jsonrpc": "2.0", "method": "ping", "id": 1}, 7], "every message of a batch"),
        ([{"jsonrpc": "2.0", "method": "ping", "id": 1}, {"jsonrpc": "1.0"}], "every message"),
        ([{"jsonrpc": "2.0", "method": "ping", "id": 1}, {"jsonrpc": "2.0", "method": []}], "a string"),
    ],
)
def test_messages_of_malformed_json_rpc_raise(message: Any, why: str) -> None:
    with pytest.raises(NotJsonRpc, match=why):
        mcp.messages(json.dumps(message).encode())


@pytest.mark.parametrize("params", [None, [1], "write_note"])
def test_a_tools_call_whose_params_are_not_an_object_is_malformed(params: Any) -> None:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}).encode()
    with pytest.raises(NotJsonRpc):
        mcp.messages(body)


def test_requests_responses_and_notifications_are_told_apart() -> None:
    request = {"jsonrpc": "2.0", "id": 0, "method": "ping"}
    notification = {"jsonrpc": "2.0", "method": "notifications/progress"}
    result = {"jsonrpc": "2.0", "id": 0, "result": {}}
    error = {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "x"}}
    assert [mcp.is_request(m) for m in (request, notification, result, error)] == [True, False, False, False]
    assert [mcp.is_response(m) for m in (request, notification, result, error)] == [False, False, True, True]
    assert not mcp.is_response({"jsonrpc": "2.0", "id": 1})


# ---- effects, the catalog, actions ------------------------------------------------------------


@pytest.mark.parametrize(
    ("annotations", "effect"),
    [
        (None, Effect.WRITE),
        ({}, Effect.WRITE),
        ({"readOnlyHint": True}, Effect.READ),
        ({"readOnlyHint": True, "destructiveHint": True}, Effect.READ),
        ({"readOnlyHint": False, "destructiveHint": True}, Effect.DESTRUCTIVE),
        ({"destructiveHint": False}, Effect.WRITE),
        ({"idempotentHint": True, "openWorldHint": True}, Effect.WRITE),
        ({"readOnlyHint": "true", "destructiveHint": 1}, Effect.WRITE),  # hints must be true itself
    ],
)
def test_effect_of_annotations(annotations: dict[str, Any] | None, effect: Effect) -> None:
    assert mcp.effect_of(annotations) is effect


def test_the_catalog_learns_each_servers_tools_from_tools_list() -> None:
    catalog = ToolCatalog()
    assert catalog.effect(SERVER, "read_note") is Effect.WRITE  # not listed yet: a write
    catalog.learn(SERVER, {"tools": TOOLS[:2], "nextCursor": "page-2"})
    catalog.learn(SERVER, {"tools": [TOOLS[2], {"annotations": {}}, "junk", {"name": 7}]})
    assert catalog.effect(SERVER, "read_note") is Effect.READ
    assert catalog.effect(SERVER, "write_note") is Effect.WRITE
    assert catalog.effect(SERVER, "delete_note") is Effect.DESTRUCTIVE  # a later page adds to the first
    assert catalog.effects[SERVER] == {
        "read_note": Effect.READ,
        "write_note": Effect.WRITE,
        "delete_note": Effect.DESTRUCTIVE,
    }
    # Another server's tool of the same name is its own.
    assert catalog.effect("stdio:other", "read_note") is Effect.WRITE
    # A later listing changes what it says; results that are not listings are ignored.
    catalog.learn(SERVER, {"tools": [{"name": "read_note", "annotations": {"destructiveHint": True}}]})
    junk: Any
    for junk in (None, [], "x", {"tools": "x"}, {"resources": []}):
        catalog.learn(SERVER, junk)
    assert catalog.effect(SERVER, "read_note") is Effect.DESTRUCTIVE
    assert catalog.effect(SERVER, "write_note") is Effect.WRITE


def test_a_tools_call_is_an_action_with_its_tool_arguments_and_effect() -> None:
    catalog = ToolCatalog()
    catalog.learn(SERVER, {"tools": TOOLS})
    deleted = mcp.action_of(call("delete_note", {"name": "a"}), BASE, catalog, SERVER)
    assert (deleted.operation, deleted.tool, deleted.args, deleted.effect) == (
        "tools/call",
        "delete_note",
        {"name": "a"},
        Effect.DESTRUCTIVE,
    )
    # Everything else comes from the transport's base action.
    assert (deleted.protocol, deleted.agent, deleted.upstream, deleted.url) == (
        "mcp",
        "a1",
        "notes-server",
        "stdio:notes-server",
    )
    assert mcp.action_of(call("read_note", {"name": "a"}), BASE, catalog, SERVER).effect is Effect.READ
    # No arguments: an empty object. A tool not listed, or listed by another server: a write.
    bare = mcp.action_of(call("read_note"), BASE, catalog, SERVER)
    assert bare.args == {} and bare.effect is Effect.READ
    assert mcp.action_of(call("mystery"), BASE, catalog, SERVER).effect is Effect.WRITE
    assert mcp.action_of(call("read_note"), BASE, catalog, "stdio:other").effect is Effect.WRITE


def test_other_messages_are_reads_named_by_their_method() -> None:
    catalog = ToolCatalog()
    writing_base = Action("POST", "https", "mcp.test", 443, "/mcp", Effect.WRITE)
    params = {"uri": "file:///notes/a"}
    read = mcp.action_of(
        {"jsonrpc": "2.0", "id": 4, "method": "resources/read", "params": params},
        writing_base,
        catalog,
        SERVER,
    )
    assert (read.protocol, read.operation, read.args, read.effect, read.tool) == (
        "mcp",
        "resources/read",
        params,
        Effect.READ,
        None,
    )
    note = mcp.action_of({"jsonrpc": "2.0", "method": "notifications/initialized"}, BASE, catalog, SERVER)
    assert (note.operation, note.args, note.effect) == ("notifications/initialized", None, Effect.READ)
    answer = mcp.action_of({"jsonrpc": "2.0", "id": 9, "result": {}}, BASE, catalog, SERVER)
    assert (answer.operation, answer.effect) == ("response", Effect.READ)


# ---- answers and statuses ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "status"),
    [
        ({"id": 1, "result": {"content": []}}, 200),
        ({"id": 1, "result": {"content": [], "isError": False}}, 200),
        ({"id": 1, "result": {"content": [], "isError": True}}, 500),
        ({"id": 1, "result": {"isError": "yes"}}, 200),
        ({"id": 1, "result": []}, 200),
        ({"id": 1, "error": {"code": -32700, "message": "parse"}}, 400),
        ({"id": 1, "error": {"code": -32600, "message": "invalid"}}, 400),
        ({"id": 1, "error": {"code": -32601, "message": "no such method"}}, 400),
        ({"id": 1, "error": {"code": -32602, "message": "bad params"}}, 400),
        ({"id": 1, "error": {"code": -32603, "message": "internal"}}, 502),
        ({"id": 1, "error": {"code": -32001, "message": "server defined"}}, 502),
        ({"id": 1, "error": "not an object"}, 502),
    ],
)
def test_status_of_a_response(response: dict[str, Any], status: int) -> None:
    assert mcp.status_of({"jsonrpc": "2.0"} | response) == status


def test_answers_in_json_rpc_terms() -> None:
    assert mcp.tool_error(3, "no") == {
        "jsonrpc": "2.0",
        "id": 3,
        "result": {"content": [{"type": "text", "text": "no"}], "isError": True},
    }
    assert mcp.rpc_error(None, mcp.PARSE_ERROR, "bad") == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": -32700, "message": "bad"},
    }
    stored = {"jsonrpc": "2.0", "result": {"content": []}}
    assert mcp.with_id(stored, "req-9") == stored | {"id": "req-9"}
    assert "id" not in stored


def test_hide_tools_removes_only_the_named_tools() -> None:
    result = {"tools": [*TOOLS, "junk", {"title": "no name"}], "nextCursor": "c2"}
    kept, removed = mcp.hide_tools(result, lambda name: name.endswith("_note") and name != "read_note")
    assert removed == ["write_note", "delete_note"]
    assert kept == {"tools": [TOOLS[0], "junk", {"title": "no name"}], "nextCursor": "c2"}
    assert len(result["tools"]) == 5  # the original is not changed
    # Nothing hidden: the very same result.
    same, none = mcp.hide_tools(result, lambda name: False)
    assert same is result and none == []
    odd: Any
    for odd in (None, [], {"tools": None}, {"content": []}):
        assert mcp.hide_tools(odd, lambda name: True) == (odd, [])


# ---- server-sent events -----------------------------------------------------------------------

STREAM = (
    b'event: message\nid: 1\ndata: {"jsonrpc":"2.0","id":1,"result":{}}\n\n'
    b": keep-alive\n\n"
    b"data: line one\ndata: line two\n\n"
)
CRLF = b"id: 7\r\nevent: message\r\ndata: {}\r\n\r\ndata: b\r\n\r\n"
CR = b"data: a\r\rid: 2\rdata: b\r\r"


def events(chunks: list[bytes]) -> list[tuple[bytes, bytes]]:
    splitter = SseSplitter()
    out = [(raw, sep) for chunk in chunks for raw, sep, _ in splitter.feed(chunk)]
    assert splitter.rest() == b""
    return out


def splits(data: bytes) -> Iterator[list[bytes]]:
    """The data cut in two and in three at every pair of byte boundaries, and byte by byte."""
    for i, j in itertools.combinations_with_replacement(range(len(data) + 1), 2):
        yield [data[:i], data[i:j], data[j:]]
    yield [data[k : k + 1] for k in range(len(data))]


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        (
            STREAM,
            [
                (b'event: message\nid: 1\ndata: {"jsonrpc":"2.0","id":1,"result":{}}', b"\n\n"),
                (b": keep-alive", b"\n\n"),
                (b"data: line one\ndata: line two", b"\n\n"),
            ],
        ),
        (CRLF, [(b"id: 7\r\nevent: message\r\ndata: {}", b"\r\n\r\n"), (b"data: b", b"\r\n\r\n")]),
        (CR, [(b"data: a", b"\r\r"), (b"id: 2\rdata: b", b"\r\r")]),
    ],
    ids=["lf", "crlf", "cr"],
)
def test_the_splitter_finds_the_same_events_however_the_stream_is_cut(
    stream: bytes, expected: list[tuple[bytes, bytes]]
) -> None:
    assert events([stream]) == expected
    for chunks in splits(stream):
        assert events(chunks) == expected, chunks


def test_the_splitter_holds_only_the_unfinished_event() -> None:
    splitter = SseSplitter()
    assert list(splitter.feed(b"data: a\n\ndata: par")) == [(b"data: a", b"\n\n", 0)]
    assert splitter.pending == len(b"data: par")
    assert list(splitter.feed(b"tial\n")) == []
    assert list(splitter.feed(b"\n")) == [(b"data: partial", b"\n\n", 0)]
    assert splitter.pending == 0
    # The end of the stream: what is left of an unfinished event.
    assert list(splitter.feed(b"data: cut off")) == []
    assert splitter.rest() == b"data: cut off"
    assert (splitter.pending, splitter.emitted, splitter.rest()) == (0, 0, b"")


def test_emitted_says_how_much_of_an_event_was_already_passed_on() -> None:
    splitter = SseSplitter()
    assert list(splitter.feed(b"data: fir")) == []
    splitter.emitted = splitter.pending  # passed on unchanged, as the stream was not rewritten
    # The event completes with part of the next: the first 9 bytes of it already went out.
    assert list(splitter.feed(b"st\n\ndata: second\n\ndata: th")) == [
        (b"data: first", b"\n\n", 9),
        (b"data: second", b"\n\n", 0),
    ]
    assert splitter.emitted == 0
    splitter.emitted = 3  # "dat" of the unfinished event went out
    assert splitter.rest() == b"a: th"
    # Passed on up to the middle of the separator: the rest of it is still owed.
    assert list(splitter.feed(b"data: x\n")) == []
    splitter.emitted = splitter.pending
    assert list(splitter.feed(b"\n")) == [(b"data: x", b"\n\n", 8)]


HTTP = Action("POST", "http", "127.0.0.1", 8000, "/mcp", Effect.READ, upstream="notes")
LISTED = b'{"id":"l","result":{"tools":[{"name":"delete_note"},{"name":"x"}]}}'
KEPT = b'{"id":"l","result":{"tools":[{"name":"x"}]}}'  # delete_note is hidden: never-delete
RELAYED = (
    b'event: message\ndata: {"id":1,"result":{}}\n\n'  # answers the write_note call
    b": ka\n\n"
    b"data: " + LISTED + b"\n\n"  # answers the tools/list call, rewritten if none of it went yet
    b"data: a\ndata: b\n\n"
    b"data: cut"  # unfinished when the stream ends
)


def event_stream(tc: ToolCalls, channel: str) -> EventStream:
    """The event stream of an HTTP exchange whose answers come back on `channel`."""
    return EventStream(tc, url="http://127.0.0.1:8000/mcp", action=HTTP, channel=channel)


async def relay(tc: ToolCalls, chunks: tuple[bytes, ...], due_from: int, channel: str) -> bytes:
    """What the product's EventStream sends on for the chunks and the stream's end: a
    `write_note` call is sent before the stream, a `tools/list` call (a rewrite due) before
    chunk `due_from`."""
    write = call("write_note", {"name": channel})
    assert await tc.send([write], HTTP, channel=channel, server="s") is None
    stream = event_stream(tc, channel)
    out = []
    for i, chunk in enumerate([*chunks, b""]):
        if i == due_from:
            listing = {"jsonrpc": "2.0", "id": "l", "method": "tools/list", "params": {"cursor": channel}}
            assert await tc.send([listing], HTTP, channel=channel, server="s") is None
            assert tc.rewrites_due(channel)
        out.append(stream(chunk))
    assert not stream.broken
    return b"".join(out)


def cuts(data: bytes) -> Iterator[tuple[tuple[bytes, ...], int]]:
    """The data as chunks, each with the chunk a rewrite becomes due before (len + 1: never):
    whole, cut in two at every byte, and byte by byte. No chunk is empty: an empty chunk is
    the stream's end."""
    n = len(data)
    for chunks in [
        (data,),
        *((data[:i], data[i:]) for i in range(1, n)),
        tuple(data[k : k + 1] for k in range(n)),
    ]:
        yield from ((chunks, due_from) for due_from in range(len(chunks) + 2))


@pytest.mark.parametrize("separator", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
def test_passing_through_then_rewriting_loses_and_repeats_nothing(
    calls: tuple[ToolCalls, Path], separator: bytes
) -> None:
    """Wherever the stream is cut, and wherever a rewrite becomes due (a `tools/list` call is
    sent while its stream is open), the bytes sent on are the stream's, once each, the listing
    rewritten if none of it had gone yet; each call is completed by its response, or fails when
    the stream ends before it."""
    tc, path = calls
    stream = RELAYED.replace(b"\n", separator)
    start = stream.index(LISTED) - len(b"data: ")
    end = start + len(b"data: " + LISTED + separator * 2)
    cases = list(cuts(stream))

    async def run() -> list[bytes]:
        return await asyncio.gather(*(relay(tc, c, d, f"c{i}") for i, (c, d) in enumerate(cases)))

    listed = {}  # channel: the listing's state and status
    for i, (sent, (chunks, due_from)) in enumerate(zip(asyncio.run(run()), cases, strict=True)):
        due_at = len(b"".join(chunks[:due_from]))  # bytes passed on when the listing was sent
        expected = stream.replace(LISTED, KEPT) if due_at <= start else stream
        assert sent == expected, (chunks, due_from)
        if due_from <= len(chunks):
            listed[f"c{i}"] = ("committed", 200) if due_at < end else ("failed", None)
    assert tc.due() == []
    actions = logged(tc, path)
    writes = [a for a in actions if a.get("tool") == "write_note"]
    assert len(writes) == len(cases)
    assert {(a["state"], a["status"]) for a in writes} == {("committed", 200)}
    lists = {
        a["args"]["cursor"]: (a["state"], a["status"]) for a in actions if a.get("operation") == "tools/list"
    }
    assert lists == listed


def test_the_event_stream_sends_on_an_event_begun_before_a_rewrite_was_due(
    calls: tuple[ToolCalls, Path],
) -> None:
    tc, _ = calls
    request = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    assert asyncio.run(tc.send([request], HTTP, channel="c", server="s")) is None
    stream = event_stream(tc, "c")
    listing = json.dumps({"jsonrpc": "2.0", "id": 2, "result": {"tools": [{"name": "read_note"}]}})
    note = json.dumps({"jsonrpc": "2.0", "method": "notifications/message", "params": {"data": "hi"}})
    body = f"event: message\ndata: {listing}\n\nevent: message\ndata: {note}\n\n".encode()
    cut = body.index(b"notifications")  # one chunk ends with the listing and the next event's start
    assert stream(body[:cut]) + stream(body[cut:]) + stream(b"") == body


def test_an_event_parses_its_fields() -> None:
    ev = SseEvent.parse(b'id: 4\nevent: message\ndata: {"a":\ndata:  1}\n: comment\nretry: 10')
    assert (ev.event, ev.data) == ("message", '{"a":\n 1}')
    assert ev.json() == {"a": 1}
    endpoint = SseEvent.parse(b"event: endpoint\r\ndata:/messages/?session_id=abc")
    assert (endpoint.event, endpoint.data) == ("endpoint", "/messages/?session_id=abc")
    bare = SseEvent.parse(b"data")
    assert (bare.event, bare.data, bare.json()) == ("message", "", None)
    assert SseEvent.parse(b"data: not json").json() is None
    assert SseEvent.parse(b": only a comment").json() is None


def test_with_data_replaces_the_data_and_keeps_the_other_fields() -> None:
    ev = SseEvent.parse(b'id: 17\nevent: message\ndata: {"old":\ndata: true}\nretry: 500')
    out = ev.with_data({"new": [1, 2]})
    assert out == b'id: 17\nevent: message\nretry: 500\ndata: {"new":[1,2]}'
    again = SseEvent.parse(out)
    assert (again.event, again.json()) == ("message", {"new": [1, 2]})
    crlf = SseEvent.parse(b"event: message\r\nid: 9\r\ndata: 1").with_data(2)
    assert crlf.splitlines() == [b"event: message", b"id: 9", b"data: 2"]


# ---- the rules: which denied tools are hidden --------------------------------------------------

RULES = """\
version: 1
rules:
  - id: never-delete
    match: {tool: delete_note}
    action: deny
    message: notes are kept
  - id: no-locked-writes
    match: {tool: write_note, args: {properties: {name: {const: locked}}, required: [name]}}
    action: deny
  - id: listed-but-denied
    match: {tool: purge_notes}
    action: deny
    hide: false
  - id: reads-are-fine
    match: {tool: read_note}
    action: allow
  - id: no-drops
    match: {protocol: mcp, any: [{tool: "drop_*"}, {tool: truncate_notes}]}
    action: deny
  - id: no-big-exports
    match: {any: [{tool: export_notes, args: {required: [all]}}, {tool: never_called}]}
    action: deny
"""


@pytest.fixture
def ruleset(tmp_path: Path) -> Ruleset:
    f = tmp_path / "rules.yaml"
    f.write_text(RULES)
    return Ruleset.load(f)


def probe(tool: str, **arguments: Any) -> Action:
    return mcp.action_of(call(tool, arguments), BASE, ToolCatalog(), SERVER)


def hider(ruleset: Ruleset, tool: str) -> str | None:
    rule = ruleset.hidden_by(probe(tool))
    return rule.id if rule is not None else None


def test_a_deny_rule_that_refuses_every_call_to_a_tool_hides_it(ruleset: Ruleset) -> None:
    assert hider(ruleset, "delete_note") == "never-delete"
    assert hider(ruleset, "drop_everything") == "no-drops"
    assert hider(ruleset, "truncate_notes") == "no-drops"
    assert ruleset.evaluate(probe("delete_note")).verdict is Verdict.DENY


def test_rules_that_do_not_refuse_a_tool_outright_hide_nothing(ruleset: Ruleset) -> None:
    # A deny rule with an `args` condition refuses some calls only.
    assert hider(ruleset, "write_note") is None
    assert ruleset.evaluate(probe("write_note", name="locked")).verdict is Verdict.DENY
    assert ruleset.evaluate(probe("write_note", name="other")).verdict is Verdict.ALLOW
    # `hide: false` keeps the tool listed, though every call to it is refused.
    assert hider(ruleset, "purge_notes") is None
    assert ruleset.evaluate(probe("purge_notes")).verdict is Verdict.DENY
    # An allow rule, tools no rule names, and a rule whose `any` branches look at arguments.
    assert hider(ruleset, "read_note") is None
    assert hider(ruleset, "list_notes") is None
    assert hider(ruleset, "never_called") is None


# ---- ToolCalls against a real log -------------------------------------------------------------


@pytest.fixture
def calls(tmp_path: Path, ruleset: Ruleset) -> Iterator[tuple[ToolCalls, Path]]:
    path = tmp_path / "log"
    log = Log.open(path)
    log.start()
    try:
        yield ToolCalls(Admission(log, ruleset, bodies=BodyPolicy(), policy=DedupPolicy())), path
    finally:
        log.close()


def logged(tc: ToolCalls, path: Path) -> list[dict[str, Any]]:
    """Every action, after what was posted is written (this closes the writer)."""
    tc.admission.log.close()
    log = Log.open(path, readonly=True)
    try:
        return list(log.actions())
    finally:
        log.close()


def send(tc: ToolCalls, *messages: dict[str, Any]) -> list[Any] | None:
    return asyncio.run(tc.send(list(messages), BASE, channel="ch", server=SERVER))


def receive(tc: ToolCalls, message: Any) -> Any:
    return tc.receive(message, None, channel="ch", server=SERVER, base=BASE)


def test_a_denied_call_is_answered_with_a_tool_error_and_logged(calls: tuple[ToolCalls, Path]) -> None:
    tc, path = calls
    [answer] = send(tc, call("delete_note", {"name": "a"}, message_id="d-1")) or [None]
    assert answer is not None and answer["id"] == "d-1" and answer["result"]["isError"] is True
    text = answer["result"]["content"][0]["text"]
    assert "rule never-delete" in text and "notes are kept" in text
    assert tc.due() == []
    [action] = logged(tc, path)
    assert (action["tool"], action["state"], action["rule"]) == ("delete_note", "denied", "never-delete")
    assert f"airlock action {action['id']}" in text


def test_a_refused_request_other_than_a_call_is_a_json_rpc_error(tmp_path: Path) -> None:
    f = tmp_path / "r.yaml"
    f.write_text(
        "version: 1\nrules:\n  - {id: no-reading, match: {operation: resources/read}, action: deny}\n"
    )
    log = Log.open(tmp_path / "log")
    log.start()
    try:
        tc = ToolCalls(Admission(log, Ruleset.load(f), bodies=BodyPolicy(), policy=DedupPolicy()))
        read = {"jsonrpc": "2.0", "id": 5, "method": "resources/read", "params": {"uri": "x"}}
        [answer] = send(tc, read) or [None]
        assert answer is not None and answer["id"] == 5
        assert answer["error"]["code"] == REFUSED and "no-reading" in answer["error"]["message"]
        # A refused notification gets no answer at all.
        assert send(tc, {"jsonrpc": "2.0", "method": "resources/read"}) == []
    finally:
        log.close()


def test_an_allowed_call_is_settled_by_its_response(calls: tuple[ToolCalls, Path]) -> None:
    tc, path = calls
    assert send(tc, call("write_note", {"name": "a"}, message_id=1)) is None
    assert tc.due() == [("ch", "1")]
    # A response to another id (or "1", a different id) passes untouched and settles nothing.
    stray = {"jsonrpc": "2.0", "id": "1", "result": {}}
    assert receive(tc, stray) is stray and tc.due() == [("ch", "1")]
    assert receive(tc, [stray]) == [stray]
    result = {"jsonrpc": "2.0", "id": 1, "result": {"content": [], "isError": True}}
    assert receive(tc, result) is result
    assert tc.due() == []
    [action] = logged(tc, path)
    assert (action["tool"], action["effect"], action["state"], action["status"]) == (
        "write_note",
        "write",
        "committed",
        500,
    )


def test_a_tools_list_result_teaches_effects_and_loses_hidden_tools(calls: tuple[ToolCalls, Path]) -> None:
    tc, path = calls
    assert send(tc, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}) is None
    assert tc.rewrites_due("ch") and not tc.rewrites_due("other")
    listing: dict[str, Any] = {"jsonrpc": "2.0", "id": 2, "result": {"tools": TOOLS, "nextCursor": "more"}}
    out = receive(tc, listing)
    assert out["result"] == {"tools": [TOOLS[0], TOOLS[1]], "nextCursor": "more"}
    assert out["id"] == 2 and listing["result"]["tools"] == TOOLS
    assert not tc.rewrites_due("ch")
    # The hidden tool's effect was learned all the same.
    assert tc.catalog.effect(SERVER, "delete_note") is Effect.DESTRUCTIVE
    assert tc.catalog.effect(SERVER, "read_note") is Effect.READ
    [action] = logged(tc, path)
    assert (action["operation"], action["state"], action["status"]) == ("tools/list", "committed", 200)


def test_a_batch_with_a_refused_request_is_refused_whole(calls: tuple[ToolCalls, Path]) -> None:
    tc, path = calls
    note = {"jsonrpc": "2.0", "method": "notifications/progress"}
    answers = send(tc, call("read_note", {"name": "a"}, 1), call("delete_note", {"name": "a"}, 2), note)
    assert answers is not None and [a["id"] for a in answers] == [1, 2]
    assert all(a["result"]["isError"] for a in answers)
    assert "never-delete" in answers[0]["result"]["content"][0]["text"]
    assert "batch" in answers[0]["result"]["content"][0]["text"]
    assert tc.due() == []
    states = [(x.get("tool") or x.get("operation"), x["state"]) for x in logged(tc, path)]
    assert states == [
        ("read_note", "denied"),
        ("delete_note", "denied"),
        ("notifications/progress", "denied"),
    ]


def test_calls_left_waiting_when_a_channel_closes_are_failed(calls: tuple[ToolCalls, Path]) -> None:
    tc, path = calls
    assert send(tc, call("write_note", {"name": "a"}, 1)) is None
    tc.close("elsewhere", "gone")
    assert len(tc.due()) == 1
    tc.close("ch", "the server closed its output before answering")
    assert tc.due() == []
    [action] = logged(tc, path)
    assert action["state"] == "failed"
    assert action["error"] == "the server closed its output before answering"


def test_only_results_within_the_reply_limit_are_kept_for_replays(tmp_path: Path) -> None:
    f = tmp_path / "once.yaml"
    f.write_text(
        "version: 1\nrules:\n  - {id: once, match: {tool: write_note}, dedup: {key: '{tool} {args.name}'}}\n"
    )
    log = Log.open(tmp_path / "log")
    log.start()
    try:
        policy = DedupPolicy(reply_limit=256)
        tc = ToolCalls(Admission(log, Ruleset.load(f), bodies=BodyPolicy(), policy=policy))

        def result(message_id: int, text: str) -> dict[str, Any]:
            content = [{"type": "text", "text": text}]
            return {"jsonrpc": "2.0", "id": message_id, "result": {"content": content, "isError": False}}

        assert send(tc, call("write_note", {"name": "small"}, 1)) is None
        receive(tc, result(1, "ok"))
        [replayed] = send(tc, call("write_note", {"name": "small"}, 2)) or [None]
        assert replayed == result(2, "ok")

        assert send(tc, call("write_note", {"name": "big"}, 3)) is None
        receive(tc, result(3, "x" * 1000))
        [refused] = send(tc, call("write_note", {"name": "big"}, 4)) or [None]
        assert refused is not None and refused["id"] == 4 and refused["result"]["isError"] is True
        assert "cannot be replayed" in refused["result"]["content"][0]["text"]
    finally:
        log.close()

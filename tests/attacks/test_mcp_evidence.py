"""What makes a request MCP, decided in one place (triage) for the proxy and `rules explain`;
ids that cannot be told apart; hooks after forwarding that fail. Units on a real log and
mitmproxy's test flows; the same classes through the real proxy are in test_log_first.py."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mitmproxy.http import HTTPFlow
from mitmproxy.test import taddons, tflow, tutils

from proxy.core.admission import Admission
from proxy.core.keys import DedupPolicy
from proxy.core.records import BodyPolicy
from proxy.mcp import messages as mcp
from proxy.mcp.evidence import Evidence, is_initialize_result
from proxy.mcp.toolcalls import ToolCalls
from proxy.plane.gate import TRACK, Gate
from proxy.plane.streams import EventStream
from proxy.plane.triage import Route, triage
from rules import Action, Effect, Ruleset, Verdict
from store import Log

from ..support.actions import act

RULES = """\
version: 1
egress: {allow: [api.test]}
defaults: {read: allow, write: deny, destructive: hold}
rules:
  - {id: no-transfers, match: {tool: transfer}, action: deny}
"""

INIT_RESULT = {"protocolVersion": "2025-06-18", "capabilities": {}, "serverInfo": {"name": "s"}}


@pytest.fixture
def ruleset(tmp_path: Path) -> Ruleset:
    (tmp_path / "r.yaml").write_text(RULES)
    return Ruleset.load(tmp_path / "r.yaml")


def post(path: str, body: bytes | None, method: str = "POST", **headers: str) -> Action:
    """`method` on `path` with `body`; header names are given as keywords (mcp_session_id)."""
    return act(method, path, headers={k.replace("_", "-").lower(): v for k, v in headers.items()}, body=body)


def read(action: Action, ruleset: Ruleset, evidence: Evidence | None = None) -> Any:
    return triage(action, ruleset, evidence=evidence or Evidence(), catalog=mcp.ToolCatalog())


# ---- evidence ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "result",
    [
        {"protocolVersion": "2025-06-18"},  # neither capabilities nor serverInfo
        {"capabilities": {}, "serverInfo": {}},  # no protocolVersion
        {"protocolVersion": 5, "capabilities": {}},
        "initialized",
        None,
    ],
)
def test_only_an_initialize_result_is_evidence(result: Any) -> None:
    assert not is_initialize_result(result)
    evidence = Evidence()
    action = post("/mcp", b"")
    intro = evidence.introduction(action, [{"jsonrpc": "2.0", "id": 1, "method": "initialize"}])
    assert intro is not None
    assert not intro.answered({"jsonrpc": "2.0", "id": 1, "result": result}, "s-1")
    assert not evidence.proven(action) and not evidence.issued(action, "s-1")


def test_an_initialize_result_proves_its_endpoint_only() -> None:
    evidence = Evidence()
    action = post("/mcp", b"")
    intro = evidence.introduction(action, [{"jsonrpc": "2.0", "id": "a", "method": "initialize"}])
    assert intro is not None
    # An answer to another id, a request echoed back, or a result without its shape: nothing.
    assert not intro.answered({"jsonrpc": "2.0", "id": "b", "result": INIT_RESULT}, None)
    assert not intro.answered({"jsonrpc": "2.0", "id": "a", "method": "initialize"}, None)
    assert intro.answered({"jsonrpc": "2.0", "id": "a", "result": INIT_RESULT}, "s-1")
    assert evidence.proven(action) and evidence.issued(action, "s-1")
    for other in (post("/orders", b""), dataclasses.replace(action, port=8443), post("/mcp/x", b"")):
        assert not evidence.proven(other) and not evidence.issued(other, "s-1")
    assert not evidence.issued(action, "s-2")


@pytest.mark.parametrize(
    ("stream", "posts_to", "proves"),
    [
        ("http://h:9/sse", "http://h:9/messages/?session_id=1", True),
        ("http://h:9/sse", "http://h:10/messages/", False),  # another port
        ("http://h:9/sse", "https://h:9/messages/", False),  # another scheme
        ("http://h:9/sse", "http://victim/orders", False),  # another host
    ],
)
def test_a_legacy_endpoint_is_evidence_only_on_the_streams_origin(
    stream: str, posts_to: str, proves: bool
) -> None:
    evidence = Evidence()
    assert evidence.announce(stream, posts_to) is proves
    target = post("/messages/", b"")
    target = dataclasses.replace(target, scheme="http", host="h", port=9)
    assert evidence.proven(target) is proves


# ---- triage: one path for the proxy and explain ----------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"jsonrpc":"2.0","id":1,"method":"eth_sendTransaction","params":{}}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}',
        b'{"jsonrpc":"2.0","method":"notifications/initialized"}',
        b'[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"tools/list"}]',
    ],
)
def test_json_rpc_without_evidence_is_decided_as_the_post_it_is(body: bytes, ruleset: Ruleset) -> None:
    t = read(post("/rpc", body), ruleset)
    assert t.route is Route.HTTP and t.decision.refused and t.decision.rule == "defaults.write"
    assert t.action.protocol == "http" and t.action.effect is Effect.WRITE
    # Every message was read as MCP too, none lower than a write.
    assert len(t.readings) == 1 + (body.count(b'"jsonrpc"'))
    assert all(r.action.effect is Effect.WRITE for r in t.readings)


def test_an_mcp_reading_of_an_unproven_request_can_refuse_it(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(RULES.replace("write: deny", "write: allow"))
    ruleset = Ruleset.load(tmp_path / "r.yaml")
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"transfer","arguments":{}}}'
    t = read(post("/rpc", body), ruleset)
    assert t.route is Route.HTTP and t.decision.rule == "no-transfers"
    assert t.deciding.action.tool == "transfer" and t.action.operation == "tools/call"
    harmless = body.replace(b"transfer", b"lookup")
    assert not read(post("/rpc", harmless), ruleset).decision.refused


def test_with_evidence_messages_are_mcp_and_sessions_the_servers(ruleset: Ruleset) -> None:
    evidence = Evidence()
    base = post("/mcp", b"")
    evidence.prove(base)
    evidence.session(base, "s-1")
    listing = read(post("/mcp", b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'), ruleset, evidence)
    assert listing.route is Route.MCP and not listing.decision.refused
    assert listing.readings[0].action.effect is Effect.READ
    end = read(post("/mcp", None, "DELETE", mcp_session_id="s-1"), ruleset, evidence)
    assert (end.action.operation, end.action.effect, end.decision.refused) == (
        "session/end",
        Effect.READ,
        False,
    )
    # A session id the server never issued, or a DELETE elsewhere: destructive, held.
    for forged in (
        post("/mcp", None, "DELETE", mcp_session_id="s-2"),
        post("/orders/1", None, "DELETE", mcp_session_id="s-1"),
    ):
        t = read(forged, ruleset, evidence)
        assert t.action.effect is Effect.DESTRUCTIVE and t.decision.verdict is Verdict.HOLD
    malformed = read(post("/mcp", b'{"jsonrpc":"2.0","id":1,"method":5}'), ruleset, evidence)
    assert malformed.route is Route.MALFORMED and malformed.decision.error == "invalid_jsonrpc"
    # Without evidence the same malformed body is only a POST.
    assert read(post("/mcp", b'{"jsonrpc":"2.0","id":1,"method":5}'), ruleset).route is Route.HTTP


# ---- ids that cannot be told apart -----------------------------------------------------------


@pytest.fixture
def calls(tmp_path: Path, ruleset: Ruleset) -> Iterator[tuple[ToolCalls, Path]]:
    (tmp_path / "open.yaml").write_text("version: 1\negress: {allow: [api.test]}\ndefaults: {write: allow}\n")
    log = Log.open(tmp_path / "log")
    log.start()
    try:
        open_rules = Ruleset.load(tmp_path / "open.yaml")
        yield (
            ToolCalls(Admission(log, open_rules, bodies=BodyPolicy(), policy=DedupPolicy())),
            tmp_path / "log",
        )
    finally:
        log.close()


def msg(method: str, message_id: Any, **params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": message_id, "method": method, "params": params}


def states(tc: ToolCalls, path: Path) -> list[str]:
    tc.admission.log.close()
    log = Log.open(path, readonly=True)
    try:
        return [x["state"] for x in log.actions()]
    finally:
        log.close()


@pytest.mark.parametrize(
    "batch",
    [
        [msg("ping", 1), msg("ping", 1)],
        [msg("tools/call", "x", name="a", arguments={}), msg("tools/list", "x")],
        [msg("ping", 1), msg("ping", 2), msg("ping", 1)],
    ],
    ids=["same-int", "same-string", "third-repeats-first"],
)
def test_a_batch_that_reuses_an_id_is_refused_whole_and_nothing_stays_pending(
    batch: list[dict[str, Any]], calls: tuple[ToolCalls, Path]
) -> None:
    tc, path = calls
    base = post("/mcp", b"")
    answers = asyncio.run(tc.send(batch, base, channel="c", server="s"))
    assert answers is not None and len(answers) == len(batch)
    assert all(
        a["error"]["code"] == mcp.INVALID_REQUEST and "is used by two requests" in a["error"]["message"]
        for a in answers
    )
    assert tc.due() == []
    assert states(tc, path) == ["denied"] * len(batch)


def test_an_id_still_awaiting_its_answer_on_the_channel_is_refused(calls: tuple[ToolCalls, Path]) -> None:
    tc, path = calls
    base = post("/mcp", b"")
    assert asyncio.run(tc.send([msg("ping", 7)], base, channel="stdio", server="s")) is None
    answers = asyncio.run(tc.send([msg("tools/list", 7)], base, channel="stdio", server="s"))
    assert answers is not None
    [answer] = answers
    assert "still awaiting its answer" in answer["error"]["message"]
    # Another channel may use it; the first is answered and settled.
    assert asyncio.run(tc.send([msg("ping", 7)], base, channel="other", server="s")) is None
    tc.receive({"jsonrpc": "2.0", "id": 7, "result": {}}, None, channel="stdio", server="s", base=base)
    tc.receive({"jsonrpc": "2.0", "id": 7, "result": {}}, None, channel="other", server="s", base=base)
    assert tc.due() == []
    assert states(tc, path) == ["committed", "denied", "committed"]


# ---- hooks after forwarding that fail still write an outcome -------------------------------------


class Boom(RuntimeError):
    pass


def _gate_flow(tmp_path: Path, method: str = "POST") -> tuple[Gate, Log, HTTPFlow]:
    (tmp_path / "g.yaml").write_text("version: 1\negress:\n  allow: [address, api.test]\n")
    log = Log.open(tmp_path / "glog")
    log.start()
    gate = Gate(log, Ruleset.load(tmp_path / "g.yaml"), agent="t", bodies=BodyPolicy())
    flow = tflow.tflow()
    flow.request.method = method
    return gate, log, flow


def _outcomes(tmp_path: Path) -> list[dict[str, Any]]:
    """Each action with its entries (as dicts) under "written"."""
    log = Log.open(tmp_path / "glog", readonly=True)
    try:
        return [
            x | {"written": [e.as_dict() for seq in x["entries"] if (e := log.entry(seq)) is not None]}
            for x in log.actions()
        ]
    finally:
        log.close()


def _raise(*_: Any, **__: Any) -> None:
    raise Boom("a bug after forwarding")


@pytest.mark.parametrize("hook", ["responseheaders", "response", "error"])
def test_a_hook_that_raises_still_writes_an_outcome(
    hook: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def go() -> None:
        gate, log, flow = _gate_flow(tmp_path)
        try:
            with taddons.context(gate) as tctx:
                await gate.request(flow)
                assert TRACK in flow.metadata
                flow.response = tutils.tresp()
                if hook == "responseheaders":
                    flow.response.headers["content-type"] = "text/event-stream"
                    monkeypatch.setattr("proxy.plane.gate.EventStream.__init__", _raise)
                    gate.responseheaders(flow)
                elif hook == "response":
                    monkeypatch.setattr(gate, "_record_response", _raise)
                    gate.response(flow)
                else:
                    flow.response = None
                    flow.error = tflow.terr()
                    monkeypatch.setattr(gate.admission, "fail", _wrap_once(gate.admission.fail))
                    gate.error(flow)
                assert TRACK not in flow.metadata
                await tctx.master.done()
        finally:
            log.close()

    asyncio.run(go())
    [action] = _outcomes(tmp_path)
    assert action["state"] in ("committed", "failed")
    outcome = action["written"][-1]
    assert outcome["kind"] == "outcome" and "a bug after forwarding" in str(outcome), outcome


def _wrap_once(real: Any) -> Any:
    """`fail` that raises the first time only, as a transient bug would."""
    calls = {"n": 0}

    def fail(*args: Any, **kw: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise Boom("a bug after forwarding")
        real(*args, **kw)

    return fail


def test_an_event_stream_that_cannot_be_read_fails_its_calls_and_passes_on(
    calls: tuple[ToolCalls, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    tc, path = calls
    base = post("/mcp", b"")
    assert (
        asyncio.run(tc.send([msg("tools/call", 1, name="a", arguments={})], base, channel="c", server="s"))
        is None
    )
    stream = EventStream(tc, url="https://api.test/mcp", action=base, channel="c")
    monkeypatch.setattr(tc, "receive", _raise)
    event = b'event: message\ndata: {"jsonrpc":"2.0","id":1,"result":{}}\n\n'
    assert stream(event) == event  # passed on as it came
    assert stream(b"more") == b"more" and stream(b"") == b""
    assert tc.due() == []
    assert states(tc, path) == ["failed"]


def test_an_event_stream_that_breaks_off_fails_the_calls_due_on_its_channel(tmp_path: Path) -> None:
    async def go() -> None:
        gate, log, flow = _gate_flow(tmp_path, "GET")
        try:
            with taddons.context(gate) as tctx:
                base = post("/messages/", b"")
                call = msg("tools/call", 1, name="a", arguments={})
                assert await gate.calls.send([call], base, channel="legacy", server="s") is None
                flow.response = tutils.tresp()
                flow.response.stream = EventStream(
                    gate.calls, url="https://api.test/sse", action=base, channel="legacy"
                )
                flow.error = tflow.terr("the connection was reset")
                gate.error(flow)
                assert gate.calls.due() == []
                await tctx.master.done()
        finally:
            log.close()

    asyncio.run(go())
    [call] = [x for x in _outcomes(tmp_path) if x.get("operation") == "tools/call"]
    assert call["state"] == "failed" and "the connection was reset" in str(call["written"][-1])

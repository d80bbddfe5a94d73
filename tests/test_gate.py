"""The gate addon on mitmproxy's test flows: it fails closed when deciding or logging fails."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mitmproxy.http import HTTPFlow
from mitmproxy.test import taddons, tflow

from proxy.core.records import BodyPolicy
from proxy.plane.gate import TRACK, Gate
from rules import Action, Decision, Ruleset
from store import Log

RULES = "version: 1\negress:\n  allow: [address]\n"


class BrokenRules(Ruleset):
    """A ruleset whose evaluation fails, as a bug in a rule matcher would."""

    def decide(self, action: Action) -> tuple[Action, Decision]:
        raise RuntimeError("matcher bug")


def _rules(tmp_path: Path, cls: type[Ruleset] = Ruleset) -> Ruleset:
    (tmp_path / "r.yaml").write_text(RULES)
    loaded = Ruleset.load(tmp_path / "r.yaml")
    loaded.__class__ = cls
    return loaded


def _run(tmp_path: Path, rules: Ruleset, method: str, *, writer: bool, reads_pass: bool = False) -> HTTPFlow:
    async def go() -> HTTPFlow:
        log = Log.open(tmp_path / "log")
        if writer:
            log.start()
        gate = Gate(log, rules, agent="t", bodies=BodyPolicy(), reads_pass_unlogged=reads_pass)
        try:
            with taddons.context(gate) as tctx:
                try:
                    flow = tflow.tflow()
                    flow.request.method = method
                    await gate.request(flow)
                    return flow
                finally:
                    await tctx.master.done()  # removes the master's log handler again
        finally:
            log.close()

    return asyncio.run(go())


def test_a_failing_rule_evaluation_refuses_the_request(tmp_path: Path) -> None:
    flow = _run(tmp_path, _rules(tmp_path, BrokenRules), "POST", writer=True)
    assert flow.response is not None and flow.response.status_code == 500
    assert b"was not forwarded" in (flow.response.content or b"")
    assert TRACK not in flow.metadata


def test_no_log_means_nothing_goes_unless_reads_may_pass_unlogged(tmp_path: Path) -> None:
    for method in ("POST", "GET", "DELETE"):
        refused = _run(tmp_path, _rules(tmp_path), method, writer=False)
        assert refused.response is not None and refused.response.status_code == 503
        assert b"log_unavailable" in (refused.response.content or b"") and TRACK not in refused.metadata
    post = _run(tmp_path, _rules(tmp_path), "POST", writer=False, reads_pass=True)
    assert post.response is not None and post.response.status_code == 503
    get = _run(tmp_path, _rules(tmp_path), "GET", writer=False, reads_pass=True)
    assert get.response is None and TRACK in get.metadata  # forwarded; its entry could not be written
    assert not get.metadata[TRACK].logged  # and no outcome will be written for it


def test_an_allowed_mutation_is_durable_before_the_hook_returns(tmp_path: Path) -> None:
    flow = _run(tmp_path, _rules(tmp_path), "PUT", writer=True)
    assert flow.response is None
    [action] = list(Log.open(tmp_path / "log", readonly=True).actions())
    assert (action["method"], action["state"]) == ("PUT", "pending")

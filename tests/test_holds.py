"""Holds: a held action waits for voters, runs exactly once on a commit, never on an abort or
a timeout; the same request sent again joins its action. Driven with requests through the real
proxy to a recording upstream, votes cast with the `airlock` command and the control API."""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from .support import Airlock, Upstream, wait_for

HOLD_RULES = """\
version: 1
egress: {allow: [127.0.0.1]}
hold: {wait: 30s, timeout: 10m}
defaults: {destructive: hold}
rules:
  - id: two-keys
    match: {method: DELETE, path: "/vault/*"}
    action: hold
    message: Vault deletions need two people.
    hold: {quorum: 2, wait: 30s}
  - id: named-voters
    match: {method: DELETE, path: "/payroll/*"}
    action: hold
    hold: {voters: [alice], wait: 0s}
  - id: quick
    match: {method: DELETE, path: "/quick/*"}
    action: hold
    hold: {wait: 0s, timeout: 1s}
"""


@pytest.fixture
def held(make_airlock: Callable[..., Airlock]) -> Airlock:
    return make_airlock(rules=HOLD_RULES)


@pytest.fixture
def pool() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    with concurrent.futures.ThreadPoolExecutor(4) as p:
        yield p


def delete(a: Airlock, upstream: Upstream, path: str) -> requests.Response:
    return requests.delete(f"{upstream.url}{path}", proxies=a.proxies, timeout=60)


def parked(
    pool: concurrent.futures.ThreadPoolExecutor, a: Airlock, upstream: Upstream, path: str
) -> tuple[concurrent.futures.Future[requests.Response], int]:
    """A DELETE of `path` sent in the background, once it is held: its answer to come, and its id."""
    waiting = pool.submit(delete, a, upstream, path)
    wait_for(lambda: held_ids(a) != [], "the DELETE is held")
    [action_id] = held_ids(a)
    return waiting, action_id


def state_of(a: Airlock, action_id: int) -> str:
    return str(json.loads(a.cli("show", str(action_id), "--json").stdout)["action"]["state"])


def held_ids(a: Airlock) -> list[int]:
    return [int(x["id"]) for x in a.log("--state", "held")]


def kinds(a: Airlock, action_id: int) -> list[str]:
    return [e["kind"] for e in json.loads(a.cli("show", str(action_id), "--json").stdout)["entries"]]


def vote(a: Airlock, verb: str, action_id: int, voter: str, reason: str = "") -> str:
    return a.cli(verb, str(action_id), "--voter", voter, "--reason", reason).stdout


def api_vote(a: Airlock, action_id: int, body: Any, token: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token if token is not None else a.token}"}
    return requests.post(f"{a.control}/v1/actions/{action_id}/votes", json=body, headers=headers, timeout=10)


def test_a_held_delete_waits_and_runs_once_when_approved_from_the_cli(
    held: Airlock, upstream: Upstream, pool: concurrent.futures.ThreadPoolExecutor
) -> None:
    waiting, action_id = parked(pool, held, upstream, "/items/7")
    assert upstream.effects("DELETE") == []  # nothing went out while it was held
    [pending] = [json.loads(line) for line in held.cli("pending", "--json").stdout.splitlines()]
    assert (pending["id"], pending["state"], pending["rule"]) == (action_id, "held", "defaults.destructive")

    said = vote(held, "approve", action_id, "alice", "checked the ticket")
    assert "decision: commit" in said
    r = waiting.result(timeout=30)
    assert r.status_code == 200 and r.json()["path"] == "/items/7"
    assert [s.path for s in upstream.effects("DELETE")] == ["/items/7"]
    assert kinds(held, action_id) == ["intent", "vote", "decision", "execute", "outcome"]
    assert state_of(held, action_id) == "committed"
    entries = json.loads(held.cli("show", str(action_id), "--json").stdout)["entries"]
    assert entries[1]["data"] == {"voter": "alice", "vote": "approve", "reason": "checked the ticket"}
    decided = entries[2]["data"]
    assert decided["decision"] == "commit" and decided["by"] == "alice"
    assert decided["request"] == entries[0]["summary"]["fingerprint"]  # bound to this request
    assert decided["rules"] == entries[0]["data"]["rules"]  # and to the rules it was held under


def test_a_denied_hold_never_reaches_the_upstream_and_the_agent_is_told_why(
    held: Airlock, upstream: Upstream, pool: concurrent.futures.ThreadPoolExecutor
) -> None:
    waiting, action_id = parked(pool, held, upstream, "/items/8")
    vote(held, "deny", action_id, "bob", "that item is still in use")
    r = waiting.result(timeout=30)
    assert r.status_code == 403
    body = r.json()
    assert (body["error"], body["rule"], body["action_id"]) == ("aborted", "defaults.destructive", action_id)
    assert "bob denied: that item is still in use" in body["message"]
    assert upstream.effects("DELETE") == []
    assert state_of(held, action_id) == "aborted"
    # The first decision wins: later votes are refused.
    late = held.cli("approve", str(action_id), "--voter", "carol", check=False)
    assert late.returncode == 2 and "decided already" in late.stderr
    assert api_vote(held, action_id, {"vote": "approve", "voter": "carol"}).status_code == 409
    # Sent again while its hold lasts, the same request gets the abort, not a new hold.
    again = delete(held, upstream, "/items/8")
    assert again.status_code == 403 and again.json()["action_id"] == action_id
    assert upstream.effects("DELETE") == []


def test_a_quorum_of_two_needs_two_distinct_voters(
    held: Airlock, upstream: Upstream, pool: concurrent.futures.ThreadPoolExecutor
) -> None:
    waiting, action_id = parked(pool, held, upstream, "/vault/gold")
    assert "more votes are needed" in vote(held, "approve", action_id, "alice")
    assert "more votes are needed" in vote(held, "approve", action_id, "alice")  # the same voter again
    assert state_of(held, action_id) == "held" and upstream.effects("DELETE") == []
    assert "decision: commit" in vote(held, "approve", action_id, "bob")
    assert waiting.result(timeout=30).status_code == 200
    assert [s.path for s in upstream.effects("DELETE")] == ["/vault/gold"]


def test_no_decision_by_the_timeout_aborts_and_nothing_runs(held: Airlock, upstream: Upstream) -> None:
    r = delete(held, upstream, "/quick/1")
    assert r.status_code == 503 and r.headers["Retry-After"].isdigit()
    body = r.json()
    assert body["error"] == "held" and "awaits approval" in body["message"]
    action_id = body["action_id"]
    wait_for(lambda: state_of(held, action_id) == "aborted", "the hold times out")
    entries = json.loads(held.cli("show", str(action_id), "--json").stdout)["entries"]
    assert entries[-1]["kind"] == "decision"
    assert entries[-1]["data"]["why"] == "no decision before the hold's timeout"
    assert entries[-1]["data"]["by"] == "airlock"
    late = held.cli("approve", str(action_id), check=False)
    assert late.returncode == 2
    assert upstream.effects("DELETE") == []


def test_a_request_sent_again_joins_its_held_action_and_runs_once_after_approval(
    held: Airlock, upstream: Upstream
) -> None:
    first = delete(held, upstream, "/payroll/run-9")  # wait 0s: the agent is told to come back
    assert first.status_code == 503
    action_id = first.json()["action_id"]
    again = delete(held, upstream, "/payroll/run-9")
    assert again.status_code == 503 and again.json()["action_id"] == action_id  # joined, not a new one
    assert held_ids(held) == [action_id]
    # Only the voters the hold names count.
    refused = api_vote(held, action_id, {"vote": "approve", "voter": "mallory"})
    assert refused.status_code == 403 and refused.json()["error"] == "not_a_voter"
    ok = api_vote(held, action_id, {"vote": "approve", "voter": "alice", "reason": "payday"})
    assert ok.status_code == 200 and ok.json()["decision"]["data"]["decision"] == "commit"
    assert state_of(held, action_id) == "approved" and upstream.effects("DELETE") == []
    ran = delete(held, upstream, "/payroll/run-9")  # the retry carries the approved action out
    assert ran.status_code == 200
    assert [s.path for s in upstream.effects("DELETE")] == ["/payroll/run-9"]
    assert kinds(held, action_id)[-3:] == ["decision", "execute", "outcome"]
    # Once run, the same request is a new action, held again.
    fresh = delete(held, upstream, "/payroll/run-9")
    assert fresh.status_code == 503 and fresh.json()["action_id"] != action_id
    assert len(upstream.effects("DELETE")) == 1


def test_votes_through_the_api_are_checked_and_need_the_token(held: Airlock, upstream: Upstream) -> None:
    action_id = delete(held, upstream, "/payroll/run-10").json()["action_id"]
    assert api_vote(held, action_id, {"vote": "approve", "voter": "alice"}, token="wrong").status_code == 401
    for body, field in (
        ({"voter": "alice"}, "vote"),
        ({"vote": "yes", "voter": "alice"}, "vote"),
        ({"vote": "approve"}, "voter"),
        ({"vote": "approve", "voter": ""}, "voter"),
        ({"vote": "approve", "voter": "alice", "reason": 3}, "reason"),
        ([1, 2], None),
    ):
        r = api_vote(held, action_id, body)
        assert r.status_code == 400, body
        assert field is None or f"field {field}" in r.json()["message"], r.json()
    assert api_vote(held, 999_999, {"vote": "approve", "voter": "alice"}).status_code == 404
    pending = requests.get(
        f"{held.control}/v1/pending", headers={"Authorization": f"Bearer {held.token}"}, timeout=10
    ).json()["pending"]
    assert [p["id"] for p in pending] == [action_id] and pending[0]["approved_by"] == []
    assert state_of(held, action_id) == "held"


def test_a_freeze_stops_an_approved_action_until_thaw(held: Airlock, upstream: Upstream) -> None:
    action_id = delete(held, upstream, "/payroll/run-11").json()["action_id"]
    vote(held, "approve", action_id, "alice", "ok")
    held.cli("freeze", "--reason", "incident 42")
    frozen = delete(held, upstream, "/payroll/run-11")
    assert frozen.status_code == 503 and frozen.json()["error"] == "frozen"
    assert "incident 42" in frozen.json()["message"]
    assert upstream.effects("DELETE") == [] and state_of(held, action_id) == "approved"
    held.cli("thaw")
    assert delete(held, upstream, "/payroll/run-11").status_code == 200
    assert [s.path for s in upstream.effects("DELETE")] == ["/payroll/run-11"]
    assert state_of(held, action_id) == "committed"


def test_an_approval_never_runs_with_another_requests_credentials(held: Airlock, upstream: Upstream) -> None:
    # Approved for one account's token, the same DELETE sent with another token is a new held
    # action: it does not join the approved one, and nothing runs with the second token.
    def delete_as(token: str) -> requests.Response:
        return requests.delete(
            f"{upstream.url}/payroll/run-12",
            headers={"Authorization": f"Bearer {token}"},
            proxies=held.proxies,
            timeout=30,
        )

    first = delete_as("token-of-staging").json()["action_id"]
    vote(held, "approve", first, "alice", "staging only")
    other = delete_as("token-of-production")
    assert other.status_code == 503 and other.json()["action_id"] != first
    assert upstream.effects("DELETE") == []
    assert delete_as("token-of-staging").status_code == 200  # the approved request runs, once
    [ran] = upstream.effects("DELETE")
    assert ran.headers["authorization"] == "Bearer token-of-staging"
    assert "token-of-staging" not in held.cli("show", str(first), "--json").stdout  # no secret kept


def test_an_approval_never_runs_with_a_header_that_picks_another_target(
    held: Airlock, upstream: Upstream
) -> None:
    # A header the redaction does not know may still pick where the action lands (a tenant): the
    # approved request runs only with the headers it was approved with; a retry count may differ.
    def delete_in(tenant: str, attempt: int) -> requests.Response:
        headers = {"X-Tenant": tenant, "X-Stainless-Retry-Count": str(attempt)}
        return requests.delete(
            f"{upstream.url}/payroll/run-13", headers=headers, proxies=held.proxies, timeout=30
        )

    first = delete_in("staging", 0).json()["action_id"]
    vote(held, "approve", first, "alice", "staging only")
    other = delete_in("production", 1)
    assert other.status_code == 503 and other.json()["action_id"] != first
    assert upstream.effects("DELETE") == []
    assert delete_in("staging", 2).status_code == 200  # the same request, a later attempt
    [ran] = upstream.effects("DELETE")
    assert ran.headers["x-tenant"] == "staging"

"""Idempotency keys through the real proxy: one effect per key, replays, 422, 409 after a crash."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Callable

import pytest
import requests

from proxy.plane.adapters.http import AGENT_HEADER

from .support import Airlock, Upstream, free_port, wait_for
from .support.outcomes import settled, shown


def post(a: Airlock, url: str, key: str, body: bytes = b'{"order": 1}', **headers: str) -> requests.Response:
    return requests.post(
        url, data=body, headers={"Idempotency-Key": key, **headers}, proxies=a.proxies, timeout=60
    )


def logged(a: Airlock) -> list[tuple[int, str, int | None, int | None, str | None]]:
    """Each action in the log once none is pending: (id, state, status, replay_of, rule)."""
    return [(x["id"], x["state"], x["status"], x.get("replay_of"), x["rule"]) for x in settled(a)]


def entries(a: Airlock, action_id: int) -> list[tuple[str, str, str]]:
    """An action's entries: (kind, state, the decision's message)."""
    found = shown(a, action_id)["entries"]
    return [(e["kind"], e["state"], e["data"].get("decision", {}).get("message", "")) for e in found]


def test_concurrent_duplicates_make_one_effect_and_identical_answers(
    airlock: Airlock, upstream: Upstream
) -> None:
    url = f"{upstream.url}/hold/orders"
    answers: list[requests.Response] = []
    lock = threading.Lock()

    def send() -> None:
        r = post(airlock, url, "order-1")
        with lock:
            answers.append(r)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    # All eight are at the proxy; only one may reach the upstream while it holds the first.
    wait_for(lambda: len(upstream.effects()) == 1, "the first request reaches the upstream")
    wait_for(lambda: len(airlock.log()) >= 1, "the first action is logged")
    upstream.release.set()
    for t in threads:
        t.join(60)
    assert len(upstream.effects("POST")) == 1
    assert len(answers) == 8 and {r.status_code for r in answers} == {200}
    assert len({r.content for r in answers}) == 1
    assert sorted(r.headers.get("Idempotent-Replayed", "") for r in answers) == [""] + ["true"] * 7
    # One action ran and has its outcome; the seven others are replays of it, each one entry.
    actions = logged(airlock)
    [original] = [x for x in actions if x[1] == "committed"]
    assert original[2] == 200
    replays = [x for x in actions if x != original]
    assert replays == [(x[0], "replayed", None, original[0], "idempotency-key") for x in replays]
    assert len(replays) == 7
    assert [k for k, _, _ in entries(airlock, original[0])] == ["intent", "outcome"]
    for replay in replays:
        assert entries(airlock, replay[0]) == [("intent", "replayed", f"replayed from action {original[0]}")]


def test_a_retry_after_completion_replays_and_a_new_payload_is_422(
    airlock: Airlock, upstream: Upstream
) -> None:
    url = f"{upstream.url}/payments"
    first = post(airlock, url, "pay-7")
    again = post(airlock, url, "pay-7")
    assert first.status_code == again.status_code == 200 and first.content == again.content
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(upstream.effects("POST")) == 1

    other = post(airlock, url, "pay-7", body=b'{"order": 2}')
    assert other.status_code == 422
    body = other.json()
    assert body["error"] == "idempotency_key_reused" and str(body["action_id"] - 2) in body["message"]
    assert len(upstream.effects("POST")) == 1

    # Keys are scoped per agent: another agent's identical key is its own request.
    other_agent = post(airlock, url, "pay-7", b'{"order": 1}', **{AGENT_HEADER: "other"})
    assert other_agent.headers.get("Idempotent-Replayed") is None
    assert len(upstream.effects("POST")) == 2
    assert logged(airlock) == [
        (1, "committed", 200, None, None),
        (2, "replayed", None, 1, "idempotency-key"),
        (3, "denied", None, None, "idempotency-key"),
        (4, "committed", 200, None, None),
    ]
    assert body["action_id"] == 3
    assert entries(airlock, 2) == [("intent", "replayed", "replayed from action 1")]
    [(kind, state, message)] = entries(airlock, 3)
    assert (kind, state) == ("intent", "denied") and "used by action 1 for a different request" in message
    assert [x["agent"] for x in settled(airlock)] == ["anonymous", "anonymous", "anonymous", "other"]


def test_a_5xx_is_not_an_effect_so_the_retry_goes_through(airlock: Airlock, upstream: Upstream) -> None:
    url = f"{upstream.url}/status/503"
    assert post(airlock, url, "flaky-1").status_code == 503
    retry = post(airlock, url, "flaky-1")
    assert retry.status_code == 503 and retry.headers.get("Idempotent-Replayed") is None
    assert len(upstream.effects("POST")) == 2
    # A 4xx is final: it is replayed, not sent again.
    assert post(airlock, f"{upstream.url}/status/409", "conflict-1").status_code == 409
    replayed = post(airlock, f"{upstream.url}/status/409", "conflict-1")
    assert replayed.status_code == 409 and replayed.headers["Idempotent-Replayed"] == "true"
    assert len(upstream.effects("POST")) == 3
    assert logged(airlock) == [
        (1, "committed", 503, None, None),
        (2, "committed", 503, None, None),
        (3, "committed", 409, None, None),
        (4, "replayed", None, 3, "idempotency-key"),
    ]


def test_after_a_crash_the_key_is_in_doubt_until_resolved(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    a = make_airlock()
    key = "transfer-9"
    t = threading.Thread(target=_swallow, args=(lambda: post(a, f"{upstream.url}/hold/transfer", key),))
    t.start()
    wait_for(lambda: len(upstream.effects()) == 1, "the upstream holds the transfer")
    a.stop(signal.SIGKILL)
    t.join(30)
    upstream.release.set()
    a.start()
    [doubt] = a.log("--state", "in_doubt")

    retry = post(a, f"{upstream.url}/hold/transfer", key)
    assert retry.status_code == 409
    body = retry.json()
    assert body["error"] == "idempotency_in_doubt" and f"airlock resolve {doubt['id']}" in body["message"]
    assert len(upstream.effects()) == 1  # not executed a second time

    a.cli("resolve", str(doubt["id"]), "--not-executed", "--note", "no transfer in the ledger")
    assert post(a, f"{upstream.url}/hold/transfer", key).status_code == 200
    assert len(upstream.effects()) == 2
    refused, after = doubt["id"] + 1, doubt["id"] + 2
    assert logged(a) == [
        (doubt["id"], "aborted", None, None, None),
        (refused, "denied", None, None, "idempotency-key"),
        (after, "committed", 200, None, None),
    ]
    assert body["action_id"] == refused
    assert [(k, s) for k, s, _ in entries(a, doubt["id"])] == [
        ("intent", "pending"),
        ("recovery", "in_doubt"),
        ("resolution", "aborted"),
    ]


def test_an_executed_resolution_spends_the_key(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    a = make_airlock()
    t = threading.Thread(target=_swallow, args=(lambda: post(a, f"{upstream.url}/hold/b", "spent-1"),))
    t.start()
    wait_for(lambda: any(s.path == "/hold/b" for s in upstream.effects()), "the upstream holds /hold/b")
    a.stop(signal.SIGKILL)
    t.join(30)
    upstream.release.set()
    a.start()
    [doubt] = [x for x in a.log("--state", "in_doubt") if x["url"].endswith("/hold/b")]
    a.cli("resolve", str(doubt["id"]), "--executed", "--note", "the upstream has it")
    again = post(a, f"{upstream.url}/hold/b", "spent-1")
    assert again.status_code == 409 and again.json()["error"] == "idempotency_key_completed"
    assert sum(s.path == "/hold/b" for s in upstream.effects()) == 1
    assert logged(a) == [
        (doubt["id"], "committed", None, None, None),
        (again.json()["action_id"], "denied", None, None, "idempotency-key"),
    ]


def _swallow(call: Callable[[], object]) -> None:
    with contextlib.suppress(requests.RequestException):  # the proxy dies under it
        call()


DEDUP_RULES = """\
version: 1
egress:
  allow: [127.0.0.1]
rules:
  - id: orders-by-token
    match: {method: POST, path: "/orders"}
    dedup: {key: "{path} {body.ClientToken}", scope: all}
  - id: auto-puts
    match: {method: PUT}
    dedup: auto
  - id: reject-dupes
    match: {path: "/hold/reject"}
    dedup: {key: "{path}", on_conflict: reject}
  - id: short-wait
    match: {path: "/hold/wait"}
    dedup: {key: "{path}", wait: 300ms}
  - id: only-2xx-is-final
    match: {path: ["/status/409", "/status/201"]}
    dedup: {key: "{path}", final: [2xx], ttl: 1s}
  - id: quick-storm
    match: {path: "/storm/*"}
    storm: {failures: 2, window: 2s}
"""


def test_a_rule_keys_requests_by_a_body_field_shared_by_all_agents(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    a = make_airlock(DEDUP_RULES)
    url = f"{upstream.url}/orders"

    def send(body: bytes, agent: str = "a") -> requests.Response:
        return requests.post(url, data=body, headers={AGENT_HEADER: agent}, proxies=a.proxies, timeout=30)

    first = send(b'{"ClientToken": "c-1", "qty": 1}')
    # Another agent, the same token, the same payload with its keys in another order: a replay.
    again = send(b'{"qty": 1, "ClientToken": "c-1"}', agent="b")
    assert first.status_code == again.status_code == 200 and first.content == again.content
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(upstream.effects("POST")) == 1
    # The same token with another payload is a reused key.
    reused = send(b'{"ClientToken": "c-1", "qty": 5}')
    assert reused.status_code == 422 and "dedup key (rule orders-by-token)" in reused.json()["message"]
    # A new token, or none at all (the template cannot be filled), is a new request each time.
    for body in (b'{"ClientToken": "c-2"}', b'{"qty": 1}', b'{"qty": 1}'):
        assert send(body).headers.get("Idempotent-Replayed") is None
    assert len(upstream.effects("POST")) == 4
    assert logged(a) == [
        (1, "committed", 200, None, None),
        (2, "replayed", None, 1, "idempotency-key"),
        (3, "denied", None, None, "idempotency-key"),
        (4, "committed", 200, None, None),
        (5, "committed", 200, None, None),
        (6, "committed", 200, None, None),
    ]
    assert settled(a)[1]["agent"] == "b"


def test_auto_keys_replay_the_same_put_and_not_another(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    a = make_airlock(DEDUP_RULES)
    put = lambda body: requests.put(f"{upstream.url}/items/1", data=body, proxies=a.proxies, timeout=30)  # noqa: E731
    assert put(b'{"name": "x", "n": 1}').headers.get("Idempotent-Replayed") is None
    assert put(b'{"n": 1, "name": "x"}').headers["Idempotent-Replayed"] == "true"
    assert put(b'{"n": 2, "name": "x"}').headers.get("Idempotent-Replayed") is None
    assert len(upstream.effects("PUT")) == 2
    assert logged(a) == [
        (1, "committed", 200, None, None),
        (2, "replayed", None, 1, "idempotency-key"),
        (3, "committed", 200, None, None),
    ]


def test_duplicates_in_flight_are_rejected_or_wait_as_the_rule_says(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    a = make_airlock(DEDUP_RULES)
    firsts = [
        threading.Thread(target=_swallow, args=(lambda p=p: post(a, f"{upstream.url}{p}", ""),))
        for p in ("/hold/reject", "/hold/wait")
    ]
    for t in firsts:
        t.start()
    wait_for(lambda: len(upstream.effects()) == 2, "the upstream holds both first requests")
    rejected = requests.post(
        f"{upstream.url}/hold/reject", data=b'{"order": 1}', proxies=a.proxies, timeout=30
    )
    assert rejected.status_code == 409 and rejected.json()["error"] == "idempotency_in_flight"
    assert "rejects duplicates" in rejected.json()["message"]
    waited = requests.post(f"{upstream.url}/hold/wait", data=b'{"order": 1}', proxies=a.proxies, timeout=30)
    assert waited.status_code == 409 and "still in flight after 0.3 s" in waited.json()["message"]
    upstream.release.set()
    for t in firsts:
        t.join(30)
    assert len(upstream.effects()) == 2
    actions = logged(a)
    assert sorted(actions[:2]) == [(1, "committed", 200, None, None), (2, "committed", 200, None, None)]
    assert actions[2:] == [
        (3, "denied", None, None, "idempotency-key"),
        (4, "denied", None, None, "idempotency-key"),
    ]


def test_a_rule_can_make_4xx_retryable_and_keys_expire_after_their_ttl(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    a = make_airlock(DEDUP_RULES)
    send = lambda path: requests.post(f"{upstream.url}{path}", data=b"{}", proxies=a.proxies, timeout=30)  # noqa: E731
    assert send("/status/409").status_code == 409
    assert send("/status/409").headers.get("Idempotent-Replayed") is None  # not final: sent again
    assert len(upstream.effects()) == 2
    assert send("/status/201").status_code == 201
    assert send("/status/201").headers["Idempotent-Replayed"] == "true"
    assert len(upstream.effects()) == 3
    time.sleep(1.2)  # the rule's ttl is 1 s
    assert send("/status/201").headers.get("Idempotent-Replayed") is None
    assert len(upstream.effects()) == 4
    assert logged(a) == [
        (1, "committed", 409, None, None),
        (2, "committed", 409, None, None),
        (3, "committed", 201, None, None),
        (4, "replayed", None, 3, "idempotency-key"),
        (5, "committed", 201, None, None),
    ]


def test_a_retry_storm_is_stopped_with_429_and_logged(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    a = make_airlock(DEDUP_RULES)
    failing = f"{upstream.url}/status/503?job=7"
    send = lambda url: requests.post(url, data=b'{"job": 7}', proxies=a.proxies, timeout=30)  # noqa: E731
    # By default five failures of one action within a minute trip the breaker.
    assert [send(failing).status_code for _ in range(5)] == [503] * 5
    stopped = send(failing)
    assert stopped.status_code == 429 and int(stopped.headers["Retry-After"]) > 50
    body = stopped.json()
    assert body["error"] == "retry_storm" and body["rule"] == "retry-storm"
    assert "failed 5 times within 60 s" in body["message"] and "stop retrying" in body["message"]
    assert len(upstream.effects()) == 5
    # Another action is not affected.
    assert send(f"{upstream.url}/status/503?job=8").status_code == 503
    refused = a.log()[-2]
    assert (refused["state"], refused["rule"], refused["id"]) == ("denied", "retry-storm", body["action_id"])

    # A rule sets its own limits (here: 2 failures in 2 s); connection errors are failures too.
    # Once the window has passed, the action may go again.
    dead = f"http://127.0.0.1:{free_port()}/storm/2"
    assert [requests.post(dead, proxies=a.proxies, timeout=30).status_code for _ in range(2)] == [502, 502]
    tripped = requests.post(dead, proxies=a.proxies, timeout=30)
    assert tripped.status_code == 429 and tripped.json()["rule"] == "quick-storm"
    time.sleep(2.1)
    assert requests.post(dead, proxies=a.proxies, timeout=30).status_code == 502


VERIFY_RULES = """\
version: 1
egress:
  allow: [127.0.0.1]
rules:
  - id: ran
    match: {path: "/hold/ran"}
    dedup:
      key: "{path}"
      verify:
        url: "{scheme}://{host}:{port}/check{path}"
        headers: {Authorization: "Bearer ${VERIFY_TOKEN}"}
        delay: 0
  - id: did-not-run
    match: {path: "/hold/not"}
    dedup: {key: "{path}", verify: {url: "{scheme}://{host}:{port}/status/404", delay: 0}}
  - id: cannot-tell
    match: {path: "/hold/unknown"}
    dedup: {key: "{path}", verify: {url: "{scheme}://{host}:{port}/status/500", delay: 0}}
"""


def test_a_verify_read_settles_in_doubt_actions_on_restart(
    make_airlock: Callable[..., Airlock], upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VERIFY_TOKEN", "s3cret-verify-token")
    a = make_airlock(VERIFY_RULES)
    paths = ["/hold/ran", "/hold/not", "/hold/unknown"]
    send = lambda path: requests.post(f"{upstream.url}{path}", data=b"{}", proxies=a.proxies, timeout=30)  # noqa: E731
    threads = [threading.Thread(target=_swallow, args=(lambda p=p: send(p),)) for p in paths]
    for t in threads:
        t.start()
    wait_for(lambda: len(upstream.effects()) == 3, "the upstream holds all three")
    a.stop(signal.SIGKILL)
    for t in threads:
        t.join(30)
    upstream.release.set()
    a.start()

    def state(path: str) -> str:
        return next(str(x["state"]) for x in a.log() if x["url"].endswith(path))

    wait_for(lambda: state("/hold/ran") == "committed" and state("/hold/not") == "aborted", "verify reads")
    unknown = str(next(x["id"] for x in a.log() if x["url"].endswith("/hold/unknown")))
    wait_for(lambda: "inconclusive" in a.cli("show", unknown, "--json").stdout, "the third read is logged")
    [check] = [s for s in upstream.effects("GET") if s.path == "/check/hold/ran"]
    assert check.headers["authorization"] == "Bearer s3cret-verify-token"

    actions = {path: next(x for x in a.log() if x["url"].endswith(path)) for path in paths}
    entries = {p: json.loads(a.cli("show", str(x["id"]), "--json").stdout) for p, x in actions.items()}
    ran = entries["/hold/ran"]["entries"][-1]
    assert (ran["kind"], ran["data"]["by"], ran["data"]["found"]["status"]) == ("resolution", "verify", 200)
    assert entries["/hold/not"]["entries"][-1]["data"]["found"]["status"] == 404
    found = entries["/hold/unknown"]["entries"][-1]
    assert (found["kind"], found["data"]["found"]["status"]) == ("verify", 500)
    assert state("/hold/unknown") == "in_doubt"
    # The token reached the upstream but not the log.
    assert "s3cret-verify-token" not in a.cli("log", "--json", "--all").stdout + json.dumps(entries)

    # The executed action's key is spent, the other's is free, the unsettled one still refuses.
    completed = send("/hold/ran")
    assert completed.status_code == 409 and completed.json()["error"] == "idempotency_key_completed"
    assert send("/hold/not").status_code == 200
    doubt = send("/hold/unknown")
    assert doubt.status_code == 409 and doubt.json()["error"] == "idempotency_in_doubt"
    assert sorted(s.path for s in upstream.effects("POST")) == sorted([*paths, "/hold/not"])

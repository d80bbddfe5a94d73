"""Idempotency keys through the real proxy: one effect per key, replays, 422, 409 after a crash."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable

import requests

from proxy.protocols.http import AGENT_HEADER

from .conftest import Airlock, Upstream, wait_for


def post(a: Airlock, url: str, key: str, body: bytes = b'{"order": 1}', **headers: str) -> requests.Response:
    return requests.post(
        url, data=body, headers={"Idempotency-Key": key, **headers}, proxies=a.proxies, timeout=60
    )


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
    states = sorted(x["state"] for x in airlock.log())
    assert states == ["committed"] + ["replayed"] * 7
    original = next(x for x in airlock.log() if x["state"] == "committed")
    assert {x["replay_of"] for x in airlock.log() if x["state"] == "replayed"} == {original["id"]}


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
    assert post(airlock, url, "pay-7", **{AGENT_HEADER: "other"}).headers.get("Idempotent-Replayed") is None
    assert len(upstream.effects("POST")) == 2


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


def _swallow(call: Callable[[], object]) -> None:
    with contextlib.suppress(requests.RequestException):  # the proxy dies under it
        call()

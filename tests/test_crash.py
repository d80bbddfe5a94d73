"""SIGKILL in the middle of a load: nothing the upstream received is missing from the log."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable

import requests

from .support import Airlock, Upstream


def _load(a: Airlock, base: str, name: str, stop: threading.Event) -> None:
    session = requests.Session()
    i = 0
    while not stop.is_set():
        try:
            session.post(f"{base}/load/{name}-{i}", json={"i": i}, proxies=a.proxies, timeout=5)
        except requests.RequestException:
            session = requests.Session()
        i += 1


def _held(a: Airlock, base: str, name: str) -> None:
    # The proxy dies while this request waits at the upstream.
    with contextlib.suppress(requests.RequestException):
        requests.put(f"{base}/hold/{name}", data=b"held", proxies=a.proxies, timeout=65)


def test_kill_during_load_loses_no_intent(make_airlock: Callable[..., Airlock], upstream: Upstream) -> None:
    a = make_airlock()
    stop = threading.Event()
    workers = [threading.Thread(target=_load, args=(a, upstream.url, f"w{n}", stop)) for n in range(6)]
    workers += [threading.Thread(target=_held, args=(a, upstream.url, f"h{n}")) for n in range(2)]
    for w in workers:
        w.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if len(upstream.effects("POST")) >= 150 and len(upstream.effects("PUT")) == 2:
            break
        time.sleep(0.01)
    a.stop(signal.SIGKILL)  # mid-load: requests are in flight everywhere
    stop.set()
    upstream.release.set()
    for w in workers:
        w.join(70)

    received = {s.path for s in upstream.effects()}
    assert len(received) >= 152
    a.start()
    actions = {x["url"].removeprefix(upstream.url): x for x in a.log()}
    missing = received - set(actions)
    assert not missing, f"the upstream saw {len(missing)} request(s) with no intent in the log"
    states = {actions[p]["state"] for p in received}
    assert states <= {"committed", "in_doubt"}
    assert {actions["/hold/h0"]["state"], actions["/hold/h1"]["state"]} == {"in_doubt"}
    assert a.log("--state", "pending") == []
    assert "ok:" in a.cli("verify").stdout


def test_a_full_log_refuses_mutations_with_503(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    a = make_airlock(extra=("--log-max-size", "512KiB", "--body-limit", "64KiB"))
    statuses = []
    body = b"y" * 60_000
    for i in range(60):
        r = requests.post(f"{upstream.url}/fill/{i}", data=body, proxies=a.proxies, timeout=10)
        statuses.append(r.status_code)
        if r.status_code == 503:
            assert r.json()["error"] == "log_unavailable" and "was not forwarded" in r.json()["message"]
            break
    assert statuses[-1] == 503 and statuses.count(200) == len(statuses) - 1
    # Every mutation the upstream received was logged first; the refused one never went out.
    assert len(upstream.effects("POST")) == statuses.count(200)
    logged = {x["url"] for x in a.log()}
    assert all(f"{upstream.url}{s.path}" in logged for s in upstream.effects())

"""A log that fills up: its size in /metrics, one warning at 80% of --log-max-size, 503 at the
limit, and an `airlock run` that will not start on a full log, naming how to make room."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

import requests
from prometheus_client.parser import text_string_to_metric_families

from .support import Airlock, Upstream, wait_for


def gauges(a: Airlock) -> dict[str, float]:
    """The log's gauges in /metrics, by name."""
    r = requests.get(f"{a.control}/metrics", headers={"Authorization": f"Bearer {a.token}"}, timeout=10)
    assert r.status_code == 200, r.text
    return {
        s.name: s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
        if s.name.startswith("airlock_log_") and not s.labels
    }


def output(a: Airlock) -> str:
    assert a.output is not None
    return a.output.read_text()


def warnings(a: Airlock) -> list[str]:
    return [line for line in output(a).splitlines() if "% full (" in line]


def test_the_log_size_entries_and_oldest_age_are_metrics(airlock: Airlock, upstream: Upstream) -> None:
    for n in range(3):
        requests.post(f"{upstream.url}/notes/{n}", data=b"x" * 1000, proxies=airlock.proxies, timeout=10)
    seen = gauges(airlock)
    assert seen["airlock_log_max_bytes"] == 64 << 30  # the default --log-max-size
    assert 0 < seen["airlock_log_size_bytes"] < 64 << 20
    assert seen["airlock_log_entries"] >= 1 + 3  # the rules entry, an intent per POST (and outcomes)
    assert seen["airlock_log_oldest_entry_age_seconds"] >= 0
    assert seen["airlock_log_nearly_full"] == 0


def test_one_warning_when_the_log_crosses_80_percent_then_503_at_the_limit(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    a = make_airlock(extra=("--log-max-size", "1MiB", "--body-limit", "256KiB"))
    assert warnings(a) == []
    while gauges(a)["airlock_log_nearly_full"] == 0:
        r = requests.post(f"{upstream.url}/fill", data=b"x" * (40 * 1024), proxies=a.proxies, timeout=30)
        assert r.status_code == 200, "the log was full before it was nearly full"
    seen = gauges(a)
    assert seen["airlock_log_size_bytes"] >= 0.8 * seen["airlock_log_max_bytes"] == 0.8 * (1 << 20)
    wait_for(lambda: warnings(a) != [], "airlock warns that the log is nearly full")
    [line] = warnings(a)
    assert "--retain AGE" in line and "--archive DIR" in line and "--log-max-size" in line

    # On to the limit: every request that must be logged gets 503 and goes nowhere.
    before = len(upstream.effects())
    for size in (40 * 1024, 4 * 1024, 0):
        for _ in range(200):
            r = requests.post(f"{upstream.url}/fill", data=b"x" * size, proxies=a.proxies, timeout=30)
            if r.status_code == 503:
                assert r.json()["error"] == "log_unavailable"
                break
            assert r.status_code == 200
    went = len(upstream.effects()) - before
    r = requests.get(f"{upstream.url}/read-when-full", proxies=a.proxies, timeout=30)
    assert r.status_code in (200, 503)  # pages come free as readers finish: room or 503, never unlogged
    assert r.status_code == 503 or any(e.path == "/read-when-full" for e in upstream.effects())
    assert went > 0
    # Still one warning: the log crossed 80% once.
    wait_for(lambda: gauges(a)["airlock_log_nearly_full"] == 1, "the gauge says nearly full")
    assert len(warnings(a)) == 1


def test_airlock_run_on_a_full_log_says_how_to_make_room(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    a = make_airlock(extra=("--log-max-size", "1MiB", "--body-limit", "256KiB"))
    for _ in range(12):
        assert (
            requests.post(
                f"{upstream.url}/fill", data=b"x" * (40 * 1024), proxies=a.proxies, timeout=30
            ).status_code
            == 200
        )
    a.stop()
    # The same log with a limit below what it holds now: full before anything is written.
    cmd = [*a.command()]
    cmd[cmd.index("--log-max-size") + 1] = "256KiB"
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert line == (
        f"airlock run: error: the log at {a.data / 'log'} is full (--log-max-size 256KiB): make room with "
        "--retain AGE (drop entries older than AGE; with --archive DIR they are kept in files first) "
        "or give a larger --log-max-size"
    )
    # With retention, the same start makes room first (everything is older than a second now),
    # and the proxy serves.
    time.sleep(1.2)
    b = make_airlock(data=a.data, extra=("--log-max-size", "256KiB", "--retain", "1s"))
    assert requests.post(f"{upstream.url}/after", data=b"y", proxies=b.proxies, timeout=30).status_code == 200
    assert [x["url"] for x in b.log()][-1] == f"{upstream.url}/after"
    assert b.cli("verify").returncode == 0

"""The log under faults: a record that cannot be written fails alone (never its batch), recovery is
safe when several processes start at once on a crashed data dir, the data dir is its user's only,
and checking a big log never stops the proxy from answering.
"""

from __future__ import annotations

import asyncio
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

import store.keys
from store import ActionRef, Claim, Entry, KeyOutcome, Log, Record, State, StoreError

from ..support import Airlock, Upstream, curl, settle

RULES = """\
version: 1
egress:
  allow: [127.0.0.1, localhost]
defaults: {read: allow, write: allow, destructive: allow}
"""

BAD_IDS = ["99999999999999999999999", str(1 << 64), str(1 << 63), str((1 << 64) - 1), "0", "123456789"]


def opening(**data: Any) -> Record:
    return Record(kind="intent", action=ActionRef(), state=State.PENDING, new_action=True, data=data)


# ---- one record fails alone ------------------------------------------------------------------


def test_bad_resolves_during_load_fail_alone_and_every_forwarded_request_has_its_outcome(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    a = make_airlock(RULES)
    auth = {"Authorization": f"Bearer {a.token}"}
    answers: list[int] = []
    refusals: list[requests.Response] = []
    lock = threading.Lock()

    def load(name: str) -> None:
        session = requests.Session()
        for i in range(40):
            r = session.post(f"{upstream.url}/load/{name}-{i}", json={"i": i}, proxies=a.proxies, timeout=30)
            with lock:
                answers.append(r.status_code)

    def resolve() -> None:
        for _ in range(10):
            for bad in BAD_IDS:
                r = requests.post(
                    f"{a.control}/v1/actions/{bad}/resolve", json={"executed": True}, headers=auth, timeout=30
                )
                with lock:
                    refusals.append(r)

    threads = [threading.Thread(target=load, args=(f"w{n}",)) for n in range(6)]
    threads += [threading.Thread(target=resolve) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)

    assert answers == [200] * 240
    assert {r.status_code for r in refusals} == {404}
    assert all(r.json()["error"] == "not_found" for r in refusals)
    for bad in BAD_IDS:
        found = requests.get(f"{a.control}/v1/actions/{bad}", headers=auth, timeout=30)
        assert found.status_code == 404 and found.json()["error"] == "not_found", found.text
    received = {s.path for s in upstream.effects("POST")}
    assert len(received) == 240
    settle(a, 1 + 2 * 240)  # the rules entry, an intent and an outcome for each
    actions = {str(x["url"]).removeprefix(upstream.url): x for x in a.log()}
    assert {p: (actions[p]["state"], actions[p]["status"]) for p in received} == {
        p: ("committed", 200) for p in received
    }
    assert a.cli("verify").stdout.startswith("ok: 481 entries verified")
    for bad in BAD_IDS[:3]:
        proc = a.cli("resolve", bad, "--executed", check=False)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no action" in proc.stderr, proc
        shown = a.cli("show", bad, check=False)
        assert shown.returncode == 2 and "no action" in shown.stderr and "Traceback" not in shown.stderr


def test_records_that_cannot_be_written_fail_alone_in_one_batch(tmp_path: Path) -> None:
    log = Log.open(tmp_path)
    log.start()
    try:
        first = ActionRef()
        log.append_blocking(Record(kind="intent", action=first, state=State.PENDING, new_action=True))
        bad: list[Record] = [
            Record(kind="resolution", action=ActionRef(10**30), state=State.COMMITTED),  # past 64 bits
            Record(kind="resolution", action=ActionRef(1 << 64), state=State.COMMITTED),
            Record(
                kind="intent",
                action=ActionRef(),
                state=State.PENDING,
                new_action=True,
                claim=Claim("k" * 600, "p", 60),
            ),
            opening(oops=object()),  # not JSON
            opening(big=1 << 70),  # an integer orjson cannot encode
            Record(kind="intent", action=ActionRef(), state=State.PENDING, new_action=True, summary={1: "x"}),  # type: ignore[dict-item]
            Record(kind="outcome", action=first, state=State.ABORTED),  # a move the log refuses
        ]
        good = [opening(n=n) for n in range(5)]
        # Queued together, so that they share commits with the bad ones.
        queued = [r for pair in zip(good, bad, strict=False) for r in pair] + bad[len(good) :]
        queued.append(Record(kind="outcome", action=first, state=State.COMMITTED))
        results = _results(log, queued)
    finally:
        log.close()
    failed = [r for r in results if isinstance(r, StoreError)]
    written = [r for r in results if isinstance(r, Entry)]
    assert len(failed) == len(bad) and len(written) == len(good) + 1
    # Nothing of a failed record remains: ids stay consecutive, and every index matches the chain.
    reader = Log.open(tmp_path, readonly=True)
    assert [x["id"] for x in reader.actions()] == list(range(1, len(good) + 2))
    assert reader.action(first.id or 0)["state"] == "committed"  # type: ignore[index]
    assert reader.verify().ok


def _results(log: Log, records: list[Record]) -> list[Entry | BaseException]:
    """Queue every record at once, then wait until each is durable (or failed)."""

    async def appended() -> list[Entry | BaseException]:
        return await asyncio.gather(*(log.append(r) for r in records), return_exceptions=True)

    return asyncio.run(appended())


def test_a_record_failing_half_way_leaves_nothing_of_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure after a record's first writes (here injected into settling its key: nothing
    real fails there on demand) is undone with that record alone."""
    log = Log.open(tmp_path)
    log.start()
    try:
        refs = [ActionRef() for _ in range(3)]
        for n, ref in enumerate(refs):
            claim = Claim(f"key-{n}", "p", 60)
            log.append_blocking(
                Record(kind="intent", action=ref, state=State.PENDING, new_action=True, claim=claim)
            )
        real = store.keys.keep_or_release

        def failing(txn: Any, dbs: Any, key: str, entry: Entry, reply: Any) -> None:
            real(txn, dbs, key, entry, reply)
            if key == "key-1":
                raise RuntimeError("the disk said no")

        monkeypatch.setattr(store.keys, "keep_or_release", failing)
        outcomes = [
            Record(kind="outcome", action=ref, state=State.COMMITTED, key_outcome=KeyOutcome(True, {"n": n}))
            for n, ref in enumerate(refs)
        ]
        results = _results(log, outcomes)
    finally:
        log.close()
    assert isinstance(results[1], StoreError) and "the disk said no" in str(results[1])
    assert all(isinstance(r, Entry) for r in (results[0], results[2]))
    reader = Log.open(tmp_path, readonly=True)
    assert [reader.action(ref.id or 0)["state"] for ref in refs] == ["committed", "pending", "committed"]  # type: ignore[index]
    assert reader.key("key-1") is not None and not reader.key("key-1")["final"]  # type: ignore[index]
    assert reader.verify().ok


# ---- recovery, several processes at once ---------------------------------------------------

CRASH = """
import os, sys
from store import ActionRef, Log, Record, State
log = Log.open(sys.argv[1])
log.start()
for n in range(int(sys.argv[2])):
    log.append_blocking(
        Record(kind="intent", action=ActionRef(), state=State.PENDING, new_action=True, data={"n": n})
    )
os._exit(0)  # no outcome, no close: as if killed
"""

RECOVER = """
import os, sys, time
from store import Log
while not os.path.exists(sys.argv[2]):
    time.sleep(0.001)
log = Log.open(sys.argv[1])
log.start()
log.close()
print("started")
"""


def _python(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _recoveries(path: Path) -> dict[int, int]:
    counts: dict[int, int] = {}
    for e in Log.open(path, readonly=True).entries():
        if e.kind == "recovery" and e.action is not None:
            counts[e.action] = counts.get(e.action, 0) + 1
    return counts


@pytest.mark.parametrize("round_", range(5))
def test_processes_starting_at_once_on_a_crashed_log_recover_each_orphan_once(
    tmp_path: Path, round_: int
) -> None:
    path = tmp_path / "log"
    crashed = _python(CRASH, str(path), "20")
    assert crashed.wait(60) == 0, crashed.stderr.read() if crashed.stderr else ""
    go = tmp_path / "go"
    starters = [_python(RECOVER, str(path), str(go)) for _ in range(6)]
    time.sleep(0.3)  # let them all import and wait at the line (not a timed assertion)
    go.touch()
    outs = [(p.wait(60), *p.communicate()) for p in starters]
    assert [(rc, out) for rc, out, _ in outs] == [(0, "started\n")] * 6, [err for _, _, err in outs]
    assert _recoveries(path) == dict.fromkeys(range(1, 21), 1)
    log = Log.open(path, readonly=True)
    assert [x["state"] for x in log.actions()] == ["in_doubt"] * 20
    assert log.verify().ok


def test_airlock_runs_starting_at_once_after_a_crash_all_start(
    make_airlock: Callable[..., Airlock], tmp_path: Path
) -> None:
    data = tmp_path / "shared"
    crashed = _python(CRASH, str(data / "log"), "10")
    assert crashed.wait(60) == 0
    runs = [make_airlock(RULES, data=data, start=False) for _ in range(3)]
    errors: list[BaseException] = []

    def start(a: Airlock) -> None:
        try:
            a.start()
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=start, args=(a,)) for a in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not errors, errors
    assert _recoveries(data / "log") == dict.fromkeys(range(1, 11), 1)
    assert {x["state"] for x in runs[0].log()} == {"in_doubt"}


# ---- the data dir is its user's only ---------------------------------------------------------


def _modes(root: Path) -> dict[str, str]:
    found = {".": f"{stat.S_IMODE(root.stat().st_mode):04o}"}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = f"{stat.S_IMODE(path.lstat().st_mode):04o}"
    return found


def _private(root: Path) -> None:
    modes = _modes(root)
    assert {"log/data.mdb", "log/lock.mdb", "control.token", "ca/mitmproxy-ca.pem"} <= set(modes), modes
    assert any(p.startswith("log/writers/") for p in modes), modes
    wrong = {
        p: m
        for p, m in modes.items()
        if m != ("0700" if (root / p).is_dir() and not (root / p).is_symlink() else "0600")
    }
    assert not wrong, wrong


def test_the_data_dir_and_every_file_in_it_are_the_users_only(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    a = make_airlock(RULES)
    r = requests.post(
        f"{upstream.url}/orders",
        data=b"{}",
        headers={"Idempotency-Key": "o-1"},
        proxies=a.proxies,
        timeout=30,
    )
    assert r.status_code == 200
    _private(a.data)


def test_a_looser_data_dir_is_tightened_at_start_and_says_so(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    a = make_airlock(RULES)
    assert curl("-x", a.proxy, "-d", "x", f"{upstream.url}/notes").returncode == 0
    a.stop()
    for path in [a.data, *a.data.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    a.start()
    _private(a.data)
    assert a.output is not None
    said = [line for line in a.output.read_text().splitlines() if "tightened" in line]
    assert len(said) == 1 and f"data dir {a.data}: . (0755)" in said[0], said
    assert "could be read by other users" in said[0] and "more" in said[0], said


# ---- nothing that grows with the log runs on the event loop ------------------------------------


def test_healthz_answers_while_verify_checks_a_big_log(
    make_airlock: Callable[..., Airlock], tmp_path: Path
) -> None:
    data = tmp_path / "big"
    log = Log.open(data / "log")
    log.start()
    pending: list[Record] = []
    for n in range(40_000):
        ref = ActionRef()
        pending.append(Record(kind="intent", action=ref, state=State.PENDING, new_action=True, data={"n": n}))
        pending.append(Record(kind="outcome", action=ref, state=State.COMMITTED, summary={"status": 200}))
    assert not [r for r in _results(log, pending) if not isinstance(r, Entry)]
    log.close()
    a = make_airlock(RULES, data=data)
    auth = {"Authorization": f"Bearer {a.token}"}
    order: list[str] = []
    verdict: dict[str, Any] = {}

    def verify() -> None:
        r = requests.get(f"{a.control}/v1/verify", headers=auth, timeout=300)
        verdict.update(r.json())
        order.append("verify")

    checking = threading.Thread(target=verify)
    checking.start()
    while checking.is_alive():
        r = requests.get(f"{a.control}/healthz", timeout=300)
        assert r.status_code == 200 and r.json()["ok"]
        if checking.is_alive():
            order.append("healthz")
    checking.join()
    assert verdict["ok"] and verdict["checked"] == 80_001, verdict
    assert verdict["head"]["seq"] == 80_001
    # Answered while the check ran, not queued behind it.
    assert order.index("verify") >= 5, order[:10]

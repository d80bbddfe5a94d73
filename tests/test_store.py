"""The log on its own: chain, indexes, state moves, group commit, recovery, a full map."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import lmdb
import pytest

from store import ActionRef, Entry, Log, Record, State, StateError, StoreError, StoreFull, UnknownAction
from store.chain import canonical


def opened(path: Path, **kw: Any) -> Log:
    log = Log.open(path, **kw)
    log.start()
    return log


def intent(data: dict[str, object] | None = None, state: State = State.PENDING) -> Record:
    return Record("intent", ActionRef(), state, data or {}, {"method": "POST"}, new_action=True)


def test_entries_chain_and_index(tmp_path: Path) -> None:
    log = opened(tmp_path)
    first = log.append_blocking(intent({"n": 1}))
    ref = ActionRef(first.action)
    log.append_blocking(Record("outcome", ref, State.COMMITTED, {"status": 201}, {"status": 201}))
    denied = log.append_blocking(intent({"n": 2}, State.DENIED))
    log.close()

    log = Log.open(tmp_path, readonly=True)
    assert [e.seq for e in log.entries()] == [1, 2, 3]
    assert log.entry(2).prev == first.hash  # type: ignore[union-attr]
    a = log.action(1)
    assert a is not None and (a["state"], a["status"], a["entries"]) == ("committed", 201, [1, 2])
    assert [x["id"] for x in log.actions("denied")] == [denied.action]
    assert [x["id"] for x in log.actions()] == [1, 2]
    assert list(log.actions("pending")) == []
    assert log.verify().ok and log.verify().checked == 3


def test_moves_outside_the_state_machine_are_refused(tmp_path: Path) -> None:
    log = opened(tmp_path)
    e = log.append_blocking(intent(state=State.DENIED))
    with pytest.raises(StateError):
        log.append_blocking(Record("outcome", ActionRef(e.action), State.COMMITTED))
    with pytest.raises(UnknownAction):
        log.append_blocking(Record("outcome", ActionRef(99), State.COMMITTED))
    with pytest.raises(StateError):
        log.append_blocking(Record("intent", ActionRef(), State.COMMITTED, new_action=True))
    # A refused record does not break the chain for the records around it.
    log.append_blocking(intent())
    log.close()
    assert Log.open(tmp_path, readonly=True).verify().ok


def _rewrite(path: Path, seq: int, change: bytes | None) -> None:
    env = lmdb.open(str(path), max_dbs=8)
    db = env.open_db(b"entries")
    with env.begin(write=True) as txn:
        key = seq.to_bytes(8, "big")
        if change is None:
            txn.delete(key, db=db)
        else:
            stored = txn.get(key, db=db)
            assert stored is not None, seq
            txn.put(key, bytes(stored).replace(b'"n":2', change), db=db)
    env.close()


@pytest.mark.parametrize(
    ("seq", "change", "needle"),
    [
        (2, b'"n":3', "entry 2 was altered"),
        (2, None, "entry 2 is missing"),
        (3, None, "head records entry 3"),
    ],
)
def test_verify_names_the_first_bad_entry(
    tmp_path: Path, seq: int, change: bytes | None, needle: str
) -> None:
    log = opened(tmp_path)
    for n in (1, 2, 3):
        log.append_blocking(intent({"n": n}))
    log.close()
    _rewrite(tmp_path, seq, change)
    verdict = Log.open(tmp_path, readonly=True).verify()
    assert not verdict.ok and needle in verdict.reason and verdict.bad_seq == seq


async def appended(log: Log, records: list[Record]) -> list[Entry | BaseException]:
    """Queue every record at once, then wait until each is durable (or failed)."""
    return await asyncio.gather(*(log.append(r) for r in records), return_exceptions=True)


def test_concurrent_appends_share_commits(tmp_path: Path) -> None:
    log = opened(tmp_path)
    before = log._env.info()["last_txnid"]
    written: list[Entry | BaseException] = []

    def burst() -> None:
        # Each thread its own event loop: the writer wakes each loop once per commit.
        written.extend(asyncio.run(appended(log, [intent({"t": threading.get_ident()}) for _ in range(500)])))

    threads = [threading.Thread(target=burst) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = {e.action for e in written if isinstance(e, Entry)}
    commits = log._env.info()["last_txnid"] - before
    log.close()
    assert ids == set(range(1, 2001))
    # Group commit: 2,000 durable appends took far fewer synced transactions.
    assert commits < 1000
    assert Log.open(tmp_path, readonly=True).verify().checked == 2000


WRITER = """
import sys
from store import ActionRef, Log, Record, State
log = Log.open(sys.argv[1]); log.start()
for i in range(int(sys.argv[2])):
    log.append_blocking(Record("intent", ActionRef(), State.PENDING, {"i": i}, new_action=True))
print(log.writer_id, flush=True)
if sys.argv[3] == "crash":
    import os; os._exit(0)
if sys.argv[3] == "linger":
    sys.stdin.read()  # stays alive, holding its writer lock, until stdin closes
log.close()
"""


def test_several_processes_append_to_one_chain(tmp_path: Path) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), "300", "close"], stdout=subprocess.PIPE
        )
        for _ in range(3)
    ]
    for p in procs:
        assert p.wait(60) == 0
    log = Log.open(tmp_path, readonly=True)
    assert log.verify().checked == 900
    assert sorted(a["id"] for a in log.actions()) == list(range(1, 901))


def test_a_dead_writers_pending_actions_become_in_doubt(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", WRITER, str(tmp_path), "3", "crash"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead = out.stdout.strip()
    # A live writer in another process with its own pending action.
    alive = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path), "1", "linger"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert alive.stdout is not None
    alive.stdout.readline()
    log = opened(tmp_path)  # the restart: recovers only what dead writers left
    try:
        doubts = list(log.actions("in_doubt"))
        assert [a["id"] for a in doubts] == [1, 2, 3] and {a["writer"] for a in doubts} == {dead}
        assert [a["id"] for a in log.actions("pending")] == [4]
        recovery = log.entry(log.action(1)["entries"][-1])  # type: ignore[index]
        assert recovery is not None and recovery.kind == "recovery" and recovery.state == "in_doubt"
    finally:
        log.close()
        alive.communicate("", timeout=30)
    assert Log.open(tmp_path, readonly=True).verify().ok


INERT_WRITER = """
import os, sys
from store import INERT, ActionRef, Log, Record, State
log = Log.open(sys.argv[1]); log.start()
for inert in (True, False):
    summary = {"effect": "inference" if inert else "write"} | ({INERT: True} if inert else {})
    log.append_blocking(Record("intent", ActionRef(), State.PENDING, {}, new_action=True, summary=summary))
os._exit(0)
"""


def test_a_dead_writers_inert_actions_fail_instead_of_falling_in_doubt(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-c", INERT_WRITER, str(tmp_path)], check=True)
    log = opened(tmp_path)
    try:
        assert [a["id"] for a in log.actions("failed")] == [1]  # a model call changed nothing
        assert [a["id"] for a in log.actions("in_doubt")] == [2]
        recovery = log.entry(log.action(1)["entries"][-1])  # type: ignore[index]
        assert recovery is not None and recovery.kind == "recovery" and recovery.state == "failed"
        assert "changes nothing upstream" in recovery.data["reason"]
    finally:
        log.close()


def test_a_full_log_refuses_instead_of_losing_entries(tmp_path: Path) -> None:
    log = opened(tmp_path, map_size=256 << 10, max_size=512 << 10)
    written = 0
    with pytest.raises(StoreFull, match="log-max-size"):
        for _ in range(1000):
            log.append_blocking(intent({"pad": "x" * 8000}))
            written += 1
    # The map grew to its maximum before giving up, and everything acknowledged is intact.
    assert written > 30 and log._env.info()["map_size"] == 512 << 10
    log.close()
    reopened = Log.open(tmp_path, readonly=True)
    assert reopened.verify().checked == written


def test_canonical_form_is_stable() -> None:
    assert canonical({"b": 1, "a": [1, "é"]}) == '{"a":[1,"é"],"b":1}'.encode()


def test_a_record_that_cannot_be_encoded_fails_alone(tmp_path: Path) -> None:
    log = opened(tmp_path)
    try:
        good, bad = asyncio.run(appended(log, [intent({"n": 1}), intent({"oops": object()})]))
        assert isinstance(bad, StoreError) and "could not be encoded" in str(bad)
        assert isinstance(good, Entry) and good.seq == 1
        # The writer is alive and the chain has no gap.
        assert log.append_blocking(intent({"n": 2})).seq == 2
    finally:
        log.close()
    assert Log.open(tmp_path, readonly=True).verify().checked == 2

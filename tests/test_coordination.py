"""Sessions and epochs, fencing, locks and limit counters in the log: checked in the transaction
that writes an intent, shared by every process on one data dir, kept across restarts, and
verified against the chain."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lmdb
import orjson
import pytest

from proxy.core.coordination import Coordination, Embedded
from store import (
    ActionRef,
    Entry,
    Fence,
    Fenced,
    LimitCheck,
    LimitReached,
    LockClaim,
    Locked,
    Log,
    Record,
    Retention,
    State,
    StateError,
    StoreError,
    release_lock,
    session_ended,
    session_started,
    takeover,
)


def opened(path: Path) -> Log:
    log = Log.open(path)
    log.start()
    return log


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start(log: Log, name: str, ttl: float | None = None) -> Fence:
    """A new session of `name`, as the fence its intents carry."""
    entry = log.append_blocking(session_started(name, digest(secrets.token_hex(16)), ttl))
    return Fence(name, entry.data["epoch"], entry.data["session"])


def intent(
    fence: Fence | None = None,
    lock: LockClaim | None = None,
    limits: tuple[LimitCheck, ...] = (),
    state: State = State.PENDING,
) -> Record:
    summary = {"agent": fence.agent if fence else "anonymous"}
    return Record(
        "intent",
        ActionRef(),
        state,
        {"method": "DELETE"},
        summary,
        True,
        fence=fence,
        lock=lock,
        limits=limits,
    )


def outcome(entry: Entry) -> Record:
    return Record("outcome", ActionRef(entry.action), State.COMMITTED, {"status": 204}, {"status": 204})


def verified(path: Path) -> None:
    report = Log.open(path, readonly=True).verify()
    assert report.ok, report.reason


# A process on the same data dir: `sessions N NAME` starts N sessions of NAME and prints their
# epochs; `hold KEY` takes a lock held for an hour and dies without closing anything;
# `contend KEY FILE N` runs N actions under a per-action lock on KEY, writing in/out marks to
# FILE while it holds it; `count KEY N MAX` appends N intents against one limit and prints
# how many passed.
WORKER = r"""
import os, sys, time, hashlib, secrets
from store import *
path, what = sys.argv[1], sys.argv[2]
log = Log.open(path)
log.start()
def pending(**kw):
    return Record("intent", ActionRef(), State.PENDING, {}, {"agent": "w"}, True, **kw)
if what == "sessions":
    n, name = int(sys.argv[3]), sys.argv[4]
    for _ in range(n):
        token = hashlib.sha256(secrets.token_bytes(16)).hexdigest()
        print(log.append_blocking(session_started(name, token)).data["epoch"], flush=True)
elif what == "hold":
    log.append_blocking(pending(lock=LockClaim(sys.argv[3], "dying", hold=3600)))
    print("held", flush=True)
    os._exit(0)
elif what == "contend":
    key, marks, n = sys.argv[3], sys.argv[4], int(sys.argv[5])
    me = str(os.getpid())
    for _ in range(n):
        while True:
            try:
                entry = log.append_blocking(pending(lock=LockClaim(key, me)))
                break
            except Locked:
                time.sleep(0.001)
        with open(marks, "a") as f:
            f.write(f"in {me}\n")
        time.sleep(0.002)
        with open(marks, "a") as f:
            f.write(f"out {me}\n")
        log.append_blocking(Record("outcome", ActionRef(entry.action), State.COMMITTED, {}, {}))
elif what == "count":
    key, n, most = sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    passed = 0
    for _ in range(n):
        try:
            log.append_blocking(pending(limits=(LimitCheck(key, 1, most, 3600),)))
            passed += 1
        except LimitReached:
            pass
    print(passed, flush=True)
log.close()
"""


def worker(path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, str(path), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )


def finished(proc: subprocess.Popen[str]) -> str:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return out


# ---- sessions and epochs ---------------------------------------------------------------------


def test_a_new_session_fences_every_older_session_of_its_name_and_no_other(tmp_path: Path) -> None:
    log = opened(tmp_path)
    first, second = start(log, "builder"), start(log, "builder")
    other = start(log, "reviewer")
    third = start(log, "builder")
    assert (first.epoch, second.epoch, third.epoch, other.epoch) == (1, 2, 3, 1)
    assert log.epoch("builder") == 3 and log.epoch("reviewer") == 1 and log.epoch("nobody") == 0
    old = log.session(first.session)
    assert old is not None and old.superseded_by == second.session and old.stale() is not None
    assert log.session(second.session).superseded_by == third.session  # type: ignore[union-attr]
    live = {s.id for s in log.sessions() if s.stale() is None}
    assert live == {third.session, other.session}
    assert [s.epoch for s in log.sessions("builder")] == [1, 2, 3]
    log.close()
    verified(tmp_path)


def test_a_session_is_found_by_its_token_digest_and_the_token_is_never_stored(tmp_path: Path) -> None:
    log = opened(tmp_path)
    token = secrets.token_hex(16)
    entry = log.append_blocking(session_started("builder", digest(token), ttl=600))
    found = log.session_by_token(digest(token))
    assert found is not None and found.id == entry.data["session"] and found.agent == "builder"
    assert found.expires == pytest.approx(entry.ts + 600)
    assert log.session_by_token(digest("another")) is None
    with pytest.raises(StateError, match="exists already"):
        log.append_blocking(session_started("builder", digest(token)))
    log.close()
    assert token.encode() not in (tmp_path / "data.mdb").read_bytes()


def test_sessions_started_at_once_by_two_processes_get_distinct_epochs(tmp_path: Path) -> None:
    opened(tmp_path).close()
    procs = [worker(tmp_path, "sessions", "40", "builder") for _ in range(2)]
    epochs = [int(line) for p in procs for line in finished(p).split()]
    assert sorted(epochs) == list(range(1, 81))
    log = Log.open(tmp_path, readonly=True)
    assert log.epoch("builder") == 80
    assert [s.id for s in log.sessions("builder") if s.stale() is None] == [log.sessions("builder")[-1].id]
    assert log.verify().ok


def test_epochs_and_sessions_survive_a_restart(tmp_path: Path) -> None:
    log = opened(tmp_path)
    old, current = start(log, "builder"), start(log, "builder")
    log.close()
    log = opened(tmp_path)
    assert log.epoch("builder") == 2
    with pytest.raises(Fenced):
        log.append_blocking(intent(old))
    log.append_blocking(intent(current))
    assert start(log, "builder").epoch == 3
    log.close()


# ---- fencing -------------------------------------------------------------------------------


def test_an_intent_of_a_superseded_session_is_refused_saying_when_and_by_whom(tmp_path: Path) -> None:
    log = opened(tmp_path)
    old = start(log, "builder")
    new = start(log, "builder")
    with pytest.raises(Fenced) as refused:
        log.append_blocking(intent(old))
    message = str(refused.value)
    assert message.startswith(f"session {old.session} of agent builder was superseded at 20")
    assert f"by session {new.session} (epoch 2)" in message
    assert refused.value.epoch == 2 and refused.value.by == new.session
    went = log.append_blocking(intent(new))
    assert went.data["fence"] == {"agent": "builder", "epoch": 2, "session": new.session}
    # Nothing of the refused intent was written: one intent, after the two sessions.
    assert [e.kind for e in log.entries()][-3:] == ["session_started", "session_started", "intent"]
    log.close()
    verified(tmp_path)


def test_a_takeover_between_two_appends_fences_the_second(tmp_path: Path) -> None:
    log = opened(tmp_path)
    fence = start(log, "builder")
    log.append_blocking(intent(fence))
    moved = log.append_blocking(takeover("builder", by="alice"))
    assert moved.data["epoch"] == 2 and log.epoch("builder") == 2
    with pytest.raises(Fenced, match=r"superseded at .* by a takeover by alice \(epoch 2\)"):
        log.append_blocking(intent(fence))
    assert start(log, "builder").epoch == 3
    log.close()
    verified(tmp_path)


def test_ended_expired_unknown_and_mismatched_sessions_are_fenced(tmp_path: Path) -> None:
    log = opened(tmp_path)
    ended, brief, kept = start(log, "a"), start(log, "b", ttl=0.05), start(log, "c", ttl=3600)
    log.append_blocking(session_ended(ended.session))
    with pytest.raises(StateError, match="ended already"):
        log.append_blocking(session_ended(ended.session))
    with pytest.raises(StateError, match="no session"):
        log.append_blocking(session_ended("s-0000"))
    time.sleep(0.1)  # past the brief session's ttl
    refusals = {
        "ended at": ended,
        "expired at": brief,
        "is not in the log": Fence("c", 1, "s-unknown"),
        "not of agent c at epoch 7": Fence("c", 7, kept.session),
    }
    for said, fence in refusals.items():
        with pytest.raises(Fenced, match=said):
            log.append_blocking(intent(fence))
    log.append_blocking(intent(kept))
    log.close()
    verified(tmp_path)


def test_a_fenced_session_learns_nothing_of_a_taken_idempotency_key(tmp_path: Path) -> None:
    from store import Claim

    log = opened(tmp_path)
    old = start(log, "builder")
    log.append_blocking(
        Record("intent", ActionRef(), State.PENDING, {}, {}, True, claim=Claim("k1", "p", 600))
    )
    start(log, "builder")
    fenced = Record(
        "intent", ActionRef(), State.PENDING, {}, {}, True, claim=Claim("k1", "p", 600), fence=old
    )
    with pytest.raises(Fenced):
        log.append_blocking(fenced)
    log.close()


# ---- locks ---------------------------------------------------------------------------------


def test_a_second_claim_on_a_held_key_is_refused_naming_the_holder_until_the_outcome(tmp_path: Path) -> None:
    log = opened(tmp_path)
    first = log.append_blocking(intent(lock=LockClaim("db/orders", "alice")))
    assert first.action is not None and log.action(first.action)["lock"] == "db/orders"  # type: ignore[index]
    for holder in ("bob", "alice"):  # another agent, or another action of the same one
        with pytest.raises(Locked) as refused:
            log.append_blocking(intent(lock=LockClaim("db/orders", holder)))
        assert refused.value.holder == "alice" and refused.value.action_id == first.action
        assert "lock 'db/orders' is held by alice (for action 1)" in str(refused.value)
    log.append_blocking(intent(lock=LockClaim("db/users", "bob")))  # another key
    [held] = [lock for lock in log.locks() if lock.key == "db/orders"]
    assert held.live and held.holder == "alice" and held.action == first.action
    log.append_blocking(outcome(first))
    assert "db/orders" not in {lock.key for lock in log.locks()}
    log.append_blocking(intent(lock=LockClaim("db/orders", "bob")))
    log.close()
    verified(tmp_path)


def test_a_held_lock_covers_its_holders_actions_until_released_or_expired(tmp_path: Path) -> None:
    log = opened(tmp_path)
    log.append_blocking(intent(lock=LockClaim("deploy", "alice", hold=3600)))
    for _ in range(3):  # the holder's own actions on the key go
        done = log.append_blocking(intent(lock=LockClaim("deploy", "alice")))
        log.append_blocking(outcome(done))
    with pytest.raises(Locked, match="held across its actions"):
        log.append_blocking(intent(lock=LockClaim("deploy", "bob")))
    with pytest.raises(StateError, match="bob holds no lock"):
        log.append_blocking(release_lock("deploy", "bob"))
    log.append_blocking(release_lock("deploy", "alice"))
    log.append_blocking(intent(lock=LockClaim("deploy", "bob", hold=1)))
    with pytest.raises(Locked):
        log.append_blocking(intent(lock=LockClaim("deploy", "carol")))
    time.sleep(1.1)  # past bob's hold
    log.append_blocking(intent(lock=LockClaim("deploy", "carol")))
    log.close()
    verified(tmp_path)


def test_a_stale_sessions_locks_are_free(tmp_path: Path) -> None:
    log = opened(tmp_path)
    superseded, taken_over, ended = start(log, "a"), start(log, "b"), start(log, "c")
    for fence in (superseded, taken_over, ended):
        log.append_blocking(intent(fence, LockClaim(f"key-{fence.agent}", fence.session, hold=3600)))
        with pytest.raises(Locked):
            log.append_blocking(intent(lock=LockClaim(f"key-{fence.agent}", "someone")))
    start(log, "a")
    log.append_blocking(takeover("b", by="alice"))
    log.append_blocking(session_ended(ended.session))
    assert not any(lock.live for lock in log.locks())
    for name in "abc":
        log.append_blocking(intent(lock=LockClaim(f"key-{name}", "someone")))
    log.close()


def test_a_lock_never_outlives_the_process_that_took_it(tmp_path: Path) -> None:
    opened(tmp_path).close()
    dying = worker(tmp_path, "hold", "deploy")
    assert finished(dying).strip() == "held"
    log = opened(tmp_path)  # the restart
    [lock] = log.locks()
    assert lock.holder == "dying" and not lock.live
    log.append_blocking(intent(lock=LockClaim("deploy", "bob")))
    log.close()


def test_two_processes_contending_for_one_key_never_overlap(tmp_path: Path) -> None:
    opened(tmp_path).close()
    marks = tmp_path / "marks"
    procs = [worker(tmp_path, "contend", "db/orders", str(marks), "25") for _ in range(2)]
    for p in procs:
        finished(p)
    lines = marks.read_text().split("\n")[:-1]
    assert len(lines) == 100 and len({line.split()[1] for line in lines}) == 2
    for went_in, came_out in zip(lines[::2], lines[1::2], strict=True):
        assert went_in.startswith("in ") and came_out == "out " + went_in.split()[1]
    verified(tmp_path)


# ---- limit counters ------------------------------------------------------------------------


def test_n_pass_and_the_next_is_refused_naming_the_limit(tmp_path: Path) -> None:
    log = opened(tmp_path)
    limit = LimitCheck("agent:builder:deletes", 1, 20, 60)
    for _ in range(20):
        log.append_blocking(intent(limits=(limit,)))
    with pytest.raises(LimitReached) as refused:
        log.append_blocking(intent(limits=(limit,)))
    assert (refused.value.counted, refused.value.maximum, refused.value.window) == (20, 20, 60)
    assert "limit 'agent:builder:deletes' reached: 20 passed in the last 60s" in str(refused.value)
    assert log.counted("agent:builder:deletes", 60) == 20
    assert log.last_action() == 20
    log.close()
    verified(tmp_path)


def test_a_batch_counts_as_its_size_and_crosses_at_once(tmp_path: Path) -> None:
    log = opened(tmp_path)
    with pytest.raises(LimitReached) as refused:
        log.append_blocking(intent(limits=(LimitCheck("s3", 50, 20, 60),)))
    assert refused.value.counted == 0 and refused.value.weight == 50
    log.append_blocking(intent(limits=(LimitCheck("s3", 15, 20, 60),)))
    with pytest.raises(LimitReached):
        log.append_blocking(intent(limits=(LimitCheck("s3", 6, 20, 60),)))
    log.append_blocking(intent(limits=(LimitCheck("s3", 5, 20, 60),)))
    assert log.counted("s3", 60) == 20
    log.close()


def test_counts_are_all_or_nothing_across_the_checks_of_one_intent(tmp_path: Path) -> None:
    log = opened(tmp_path)
    wide, narrow = LimitCheck("rule:deletes", 1, 100, 60), LimitCheck("target:t1", 1, 2, 60)
    log.append_blocking(intent(limits=(wide, narrow)))
    log.append_blocking(intent(limits=(wide, narrow)))
    with pytest.raises(LimitReached, match="target:t1"):
        log.append_blocking(intent(lock=LockClaim("t1", "alice"), limits=(wide, narrow)))
    assert log.counted("rule:deletes", 60) == 2 and log.counted("target:t1", 60) == 2
    assert "t1" not in {lock.key for lock in log.locks()}  # nor was the lock taken
    log.close()


def test_the_window_slides(tmp_path: Path) -> None:
    log = opened(tmp_path)
    limit = LimitCheck("burst", 1, 3, 1)
    for _ in range(3):
        log.append_blocking(intent(limits=(limit,)))
    with pytest.raises(LimitReached):
        log.append_blocking(intent(limits=(limit,)))
    time.sleep(1.1)  # the three counted are now older than the window
    assert log.counted("burst", 1) == 0
    for _ in range(3):
        log.append_blocking(intent(limits=(limit,)))
    with pytest.raises(LimitReached):
        log.append_blocking(intent(limits=(limit,)))
    log.close()
    # The older rows were dropped by the checks: what is stored is what the window holds (and
    # the limit's running total).
    env = lmdb.open(str(tmp_path), max_dbs=16, readonly=True, lock=False)
    with env.begin() as txn:
        assert txn.stat(env.open_db(b"limits", txn=txn))["entries"] == 3 + 1
    env.close()


def test_two_processes_share_counts_and_a_restart_keeps_them(tmp_path: Path) -> None:
    opened(tmp_path).close()
    procs = [worker(tmp_path, "count", "shared", "15", "20") for _ in range(2)]
    assert sum(int(finished(p)) for p in procs) == 20
    log = opened(tmp_path)
    assert log.counted("shared", 3600) == 20
    with pytest.raises(LimitReached):
        log.append_blocking(intent(limits=(LimitCheck("shared", 1, 20, 3600),)))
    log.close()
    verified(tmp_path)


# ---- verify and retention ------------------------------------------------------------------


def _rewrite(path: Path, db: bytes, key: bytes, change: dict[str, Any]) -> dict[str, Any]:
    """Change a stored record in place, as someone editing the file would; return it as it was."""
    env = lmdb.open(str(path), max_dbs=16)
    with env.begin(write=True) as txn:
        handle = env.open_db(db, txn=txn)
        raw = txn.get(key, db=handle)
        assert raw is not None
        record: dict[str, Any] = orjson.loads(raw)
        txn.put(key, orjson.dumps(record | change), db=handle)
    env.close()
    return record


def test_verify_checks_sessions_and_epochs_against_the_chain(tmp_path: Path) -> None:
    log = opened(tmp_path)
    start(log, "builder")
    second = start(log, "builder")
    log.append_blocking(intent(second, LockClaim("k", second.session), (LimitCheck("l", 1, 5, 60),)))
    log.append_blocking(session_ended(second.session))
    log.close()
    verified(tmp_path)
    session = b"s" + second.session.encode()
    was = _rewrite(tmp_path, b"sessions", session, {"ended": None, "ended_entry": None})  # revived
    report = Log.open(tmp_path, readonly=True).verify()
    assert (
        not report.ok and report.reason.startswith("sessions: the record") and second.session in report.reason
    )
    _rewrite(tmp_path, b"sessions", session, was)
    verified(tmp_path)
    _rewrite(tmp_path, b"epochs", b"builder", {"epoch": 1})  # the first session made current again
    report = Log.open(tmp_path, readonly=True).verify()
    assert not report.ok and report.reason.startswith("epochs: the record b'builder'")


def test_a_log_with_sessions_locks_and_limits_prunes_and_still_verifies(tmp_path: Path) -> None:
    log = opened(tmp_path)
    fence = start(log, "builder")
    for _ in range(5):
        done = log.append_blocking(
            intent(fence, LockClaim("k", fence.session), (LimitCheck("l", 1, 50, 60),))
        )
        log.append_blocking(outcome(done))
    log.append_blocking(takeover("builder", by="alice"))
    current = start(log, "builder")
    last = log.append_blocking(intent(current))
    while log.prune(Retention(max_age=0), floor=last.seq, now=time.time() + 10) is not None:
        pass
    assert log.pruned().start > 1 and log.entry(1) is None  # the first session's entry is gone
    assert log.epoch("builder") == 3
    with pytest.raises(Fenced, match="by a takeover by alice"):
        log.append_blocking(intent(fence))
    log.append_blocking(intent(current))
    log.close()
    verified(tmp_path)
    shown = json.dumps([s.as_dict() for s in Log.open(tmp_path, readonly=True).sessions()])
    assert fence.session in shown and current.session in shown


def test_airlock_verify_is_ok_on_a_log_with_sessions_locks_and_limits(tmp_path: Path) -> None:
    data = tmp_path / "data"
    log = opened(data / "log")
    old = start(log, "builder", ttl=3600)
    new = start(log, "builder")
    log.append_blocking(intent(new, LockClaim("deploy", new.session, hold=600)))
    done = log.append_blocking(intent(new, LockClaim("db", new.session), (LimitCheck("deletes", 3, 20, 60),)))
    log.append_blocking(outcome(done))
    with pytest.raises(Fenced):
        log.append_blocking(intent(old))
    log.append_blocking(release_lock("deploy", new.session))
    log.append_blocking(takeover("builder", by="alice"))
    log.append_blocking(session_ended(new.session))
    log.close()
    airlock = str(Path(sys.executable).parent / "airlock")
    verify = subprocess.run(
        [airlock, "verify", "--data", str(data)], capture_output=True, text=True, timeout=60
    )
    assert verify.returncode == 0 and verify.stdout.startswith("ok: 8 entries verified"), verify


def test_the_embedded_coordination_is_the_log_behind_the_seam(tmp_path: Path) -> None:
    async def story(coordination: Coordination) -> None:
        first = await coordination.start_session("builder", digest("one"))
        second = await coordination.start_session("builder", digest("two"), ttl=600)
        assert (first.epoch, second.epoch) == (1, 2)
        assert (await coordination.session_by_token(digest("two"))) == second
        fence = Fence("builder", second.epoch, second.id)
        went = await coordination.admit(intent(), fence=fence, lock=LockClaim("t", second.id))
        with pytest.raises(Locked):
            await coordination.admit(intent(), lock=LockClaim("t", "other"))
        await coordination.settle(outcome(went))
        await coordination.admit(intent(), lock=LockClaim("t", second.id, hold=60))
        assert [lock.key for lock in await coordination.locks() if lock.live] == ["t"]
        await coordination.release("t", second.id)
        with pytest.raises(StoreError):
            await coordination.release("t", second.id)
        assert await coordination.takeover("builder", by="alice") == 3
        with pytest.raises(Fenced, match="takeover by alice"):
            await coordination.admit(intent(), fence=fence)
        await coordination.end_session(first.id)
        assert [s.ended is not None for s in await coordination.sessions("builder")] == [True, False]

    log = opened(tmp_path)
    asyncio.run(story(Embedded(log)))
    log.close()
    verified(tmp_path)


def test_the_sweep_drops_counts_past_their_window_and_locks_that_bind_no_more(tmp_path: Path) -> None:
    log = opened(tmp_path)
    for target in ("t1", "t2", "t3"):  # keys no intent counts against again
        log.append_blocking(intent(limits=(LimitCheck(f"target:{target}", 1, 5, 0.05),)))
    log.append_blocking(intent(limits=(LimitCheck("agent:builder", 2, 5, 3600),)))
    done = log.append_blocking(intent(lock=LockClaim("db", "alice")))
    log.append_blocking(outcome(done))  # released by the outcome already
    log.append_blocking(intent(lock=LockClaim("brief", "alice", hold=0.05)))
    log.append_blocking(intent(lock=LockClaim("deploy", "bob", hold=3600)))
    time.sleep(0.1)  # past the short windows and the brief hold
    log.sweep_keys()
    assert [(lock.key, lock.live) for lock in log.locks()] == [("deploy", True)]
    assert log.counted("agent:builder", 3600) == 2
    # The sweep took what it dropped off the limits' totals: a full limit of 1 passes again.
    log.append_blocking(intent(limits=(LimitCheck("target:t1", 1, 1, 0.05),)))
    with pytest.raises(LimitReached):
        log.append_blocking(intent(limits=(LimitCheck("agent:builder", 4, 5, 3600),)))
    log.close()
    env = lmdb.open(str(tmp_path), max_dbs=16, readonly=True, lock=False)
    with env.begin() as txn:  # a row and a total for each of the two limits counted since
        assert txn.stat(env.open_db(b"limits", txn=txn))["entries"] == 2 + 2
    env.close()

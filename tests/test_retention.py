"""Retention in the store: pruning removes only closed actions, keeps the chain verifiable,
writes archives that verify on their own and joined to the live log, and lets LMDB reuse
the pages it frees."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import lmdb
import pytest

from store import ActionRef, Claim, KeyOutcome, Log, Record, State
from store.archive import segments
from store.prune import Retention
from store.verify_archive import check_archive

AGE = Retention(max_age=0.0)  # everything older than now goes


def opened(path: Path) -> Log:
    log = Log.open(path)
    log.start()
    return log


def intent(log: Log, state: State = State.PENDING, **data: Any) -> int:
    entry = log.append_blocking(
        Record("intent", ActionRef(), state, data, {"method": "POST", "host": "h"}, new_action=True)
    )
    assert entry.action is not None
    return entry.action


def close(log: Log, action: int, state: State = State.COMMITTED) -> None:
    log.append_blocking(Record("outcome", ActionRef(action), state, {"status": 200}, {"status": 200}))


def prune_all(log: Log, **kw: Any) -> list[int]:
    """Prune until the policy keeps everything left; the prune entries written."""
    written = []
    policy = kw.pop("policy", AGE)
    while (entry := log.prune(policy, **kw)) is not None:
        written.append(entry.seq)
    return written


def test_pruning_removes_closed_actions_and_keeps_open_ones(tmp_path: Path) -> None:
    log = opened(tmp_path)
    done = [intent(log) for _ in range(5)]
    for a in done:
        close(log, a)
    doubtful = intent(log)
    log.append_blocking(Record("recovery", ActionRef(doubtful), State.IN_DOUBT, {}))
    held = intent(log, State.HELD)
    pending = intent(log)
    denied = intent(log, State.DENIED)
    later = intent(log)
    close(log, later)
    assert prune_all(log)
    kept = {a["id"]: a["state"] for a in log.actions()}
    assert kept == {doubtful: "in_doubt", held: "held", pending: "pending"}
    assert all(log.action(a) is None for a in [*done, denied, later])
    # The kept actions are whole, and they still move.
    assert log.action(doubtful)["entries"] == [11, 12]  # type: ignore[index]
    log.append_blocking(Record("resolution", ActionRef(doubtful), State.COMMITTED, {}))
    close(log, pending)
    report = log.verify()
    assert report.ok, report.reason
    # Closed now, they go at the next prune; the held one stays.
    prune_all(log)
    assert [a["id"] for a in log.actions()] == [held]
    assert log.verify().ok
    log.close()


def test_a_live_idempotency_key_keeps_its_action(tmp_path: Path) -> None:
    log = opened(tmp_path)
    claim = Claim("k-1", "payload", ttl=3600)
    entry = log.append_blocking(
        Record("intent", ActionRef(), State.PENDING, {}, {}, new_action=True, claim=claim)
    )
    log.append_blocking(
        Record(
            "outcome",
            ActionRef(entry.action),
            State.COMMITTED,
            {},
            {},
            key_outcome=KeyOutcome(True, {"b": 1}),
        )
    )
    other = intent(log)
    close(log, other)
    prune_all(log)
    assert [a["id"] for a in log.actions()] == [entry.action]
    assert log.key("k-1") is not None
    assert log.verify().ok
    # Past its TTL the key no longer keeps it.
    prune_all(log, now=entry.ts + 7200)
    assert list(log.actions()) == [] and log.key("k-1") is None
    assert log.verify().ok
    log.close()


def test_verify_catches_what_a_prune_does_not_explain(tmp_path: Path) -> None:
    log = opened(tmp_path)
    for _ in range(4):
        close(log, intent(log))
    held = intent(log, State.HELD)
    close(log, intent(log))
    prune_all(log)
    assert log.verify().ok
    island = log.action(held)["entries"][0]  # type: ignore[index]
    log.close()
    env = lmdb.open(str(tmp_path), max_dbs=8)
    with env.begin(write=True) as txn:
        entries = env.open_db(b"entries", txn=txn)
        txn.delete(island.to_bytes(8, "big"), db=entries)
    env.close()
    report = Log.open(tmp_path, readonly=True).verify()
    assert not report.ok and "kept" in report.reason


def test_archive_verifies_alone_and_joined_and_catches_an_altered_segment(tmp_path: Path) -> None:
    data, archive = tmp_path / "log", tmp_path / "archive"
    log = opened(data)
    for round_ in range(3):
        for _ in range(30):
            close(log, intent(log, note=f"round {round_}"))
        prune_all(log, archive=archive)
    held = intent(log, State.HELD)
    close(log, intent(log))
    prune_all(log, archive=archive)
    head = log.head()
    log.close()
    found = segments(archive)
    assert len(found) >= 4 and found[0][0] == 1
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for _, _, p in found)
    live = Log.open(data, readonly=True)
    assert live.verify().ok
    assert live.action(held) is not None
    alone = check_archive(archive)
    assert alone.ok and alone.first == 1, alone.reason
    joined = check_archive(archive, live)
    assert joined.ok and joined.last == live.pruned().start - 1, joined.reason
    assert head[0] > joined.last

    # One changed byte in an outcome of an early segment: caught on its own and joined.
    _, _, middle = found[0]
    lines = gzip.decompress(middle.read_bytes()).split(b"\n")
    assert b'"status":200' in lines[3]
    lines[3] = lines[3].replace(b'"status":200', b'"status":201')
    middle.write_bytes(gzip.compress(b"\n".join(lines)))
    assert not check_archive(archive).ok
    bad = check_archive(archive, live)
    assert not bad.ok and "altered" in bad.reason


def test_a_rehashed_segment_is_caught_by_the_digest_its_prune_recorded(tmp_path: Path) -> None:
    data, archive = tmp_path / "log", tmp_path / "archive"
    log = opened(data)
    for _ in range(10):
        close(log, intent(log))
    prune_all(log, archive=archive)
    for _ in range(10):
        close(log, intent(log))
    prune_all(log, archive=archive)
    log.close()
    (_, _, first), *_ = segments(archive)
    # Whole lines dropped from the end of the first segment: every hash inside it still holds.
    lines = gzip.decompress(first.read_bytes()).splitlines(keepends=True)
    first.write_bytes(gzip.compress(b"".join(lines[:-2])))
    report = check_archive(archive, Log.open(data, readonly=True))
    assert not report.ok


def test_pages_freed_by_pruning_are_reused(tmp_path: Path) -> None:
    log = opened(tmp_path)
    body = "x" * 2000
    sizes = []
    for _round in range(12):
        for _ in range(200):
            log.append_soon(Record("intent", ActionRef(), State.DENIED, {"body": body}, new_action=True))
        close(log, intent(log))
        prune_all(log)
        sizes.append((tmp_path / "data.mdb").stat().st_size)
    log.close()
    # The file grows while the first rounds fill it, then stays where it is.
    assert sizes[-1] == sizes[5], sizes


@pytest.mark.parametrize("limit", [200_000])
def test_size_retention_keeps_the_log_under_its_size(tmp_path: Path, limit: int) -> None:
    log = opened(tmp_path)
    for _ in range(600):
        log.append_soon(Record("intent", ActionRef(), State.DENIED, {"body": "y" * 1000}, new_action=True))
    close(log, intent(log))
    assert log.used_bytes() > limit
    prune_all(log, policy=Retention(max_bytes=limit))
    assert log.used_bytes() <= limit
    assert log.verify().ok
    assert len(list(log.actions())) > 0
    log.close()

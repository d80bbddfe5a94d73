"""Retention in the store: pruning removes only closed actions, keeps the chain verifiable,
writes archives that verify on their own and joined to the live log, and lets LMDB reuse
the pages it frees."""

from __future__ import annotations

import gzip
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lmdb
import orjson
import pytest
import requests

from store import ActionRef, Claim, KeyOutcome, Log, Record, Signer, State, checkpoint_record
from store.archive import segments
from store.archive import write as write_segment
from store.prune import Retention
from store.verify_archive import check_archive

from .support import AIRLOCK, Airlock, Upstream
from .support.waiting import wait_for

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


def _pruned_log(path: Path) -> tuple[int, int, int]:
    """A log pruned once, with a held action kept below its start: (held action, its island
    entry, the prune entry)."""
    log = opened(path)
    for _ in range(4):
        close(log, intent(log))
    held = intent(log, State.HELD)
    close(log, intent(log))
    (last_prune,) = prune_all(log)[-1:]
    for _ in range(2):
        close(log, intent(log))
    assert log.verify().ok
    island = log.action(held)["entries"][0]  # type: ignore[index]
    log.close()
    return held, island, last_prune


def _k(n: int) -> bytes:
    return n.to_bytes(8, "big")


def _drop_island(txn: lmdb.Transaction, dbs: dict[str, Any], held: int, island: int, prune: int) -> None:
    txn.delete(_k(island), db=dbs["entries"])


def _stored(txn: lmdb.Transaction, key: bytes, db: Any) -> bytes:
    found = txn.get(key, db=db)
    assert found is not None
    return bytes(found)


def _alter_island(txn: lmdb.Transaction, dbs: dict[str, Any], held: int, island: int, prune: int) -> None:
    raw = _stored(txn, _k(island), dbs["entries"])
    txn.put(_k(island), raw.replace(b'"method":"POST"', b'"method":"PUT"'), db=dbs["entries"])


def _restore_a_pruned_entry(
    txn: lmdb.Transaction, dbs: dict[str, Any], held: int, island: int, prune: int
) -> None:
    # An entry put back below the start (as from the archive): the prune entry did not keep it.
    txn.put(_k(1), _stored(txn, _k(island), dbs["entries"]), db=dbs["entries"])


def _point_at_nothing(txn: lmdb.Transaction, dbs: dict[str, Any], held: int, island: int, prune: int) -> None:
    txn.delete(b"pruned", db=dbs["meta"])


def _point_at_another_entry(
    txn: lmdb.Transaction, dbs: dict[str, Any], held: int, island: int, prune: int
) -> None:
    txn.put(b"pruned", orjson.dumps({"entry": island}), db=dbs["meta"])


def _cut_after_the_start(
    txn: lmdb.Transaction, dbs: dict[str, Any], held: int, island: int, prune: int
) -> None:
    txn.delete(_k(prune + 1), db=dbs["entries"])


def _drop_the_kept_action(
    txn: lmdb.Transaction, dbs: dict[str, Any], held: int, island: int, prune: int
) -> None:
    txn.delete(_k(held), db=dbs["actions"])


@pytest.mark.parametrize(
    ("tamper", "words"),
    [
        (_drop_island, "kept, is missing"),
        (_alter_island, "is not the entry prune entry"),
        (_restore_a_pruned_entry, "did not keep it"),
        (_point_at_nothing, "entry 1 is missing"),
        (_point_at_another_entry, "not a prune entry"),
        (_cut_after_the_start, "is missing"),
        (_drop_the_kept_action, "actions index"),
    ],
)
def test_verify_catches_what_a_prune_does_not_explain(
    tmp_path: Path, tamper: Callable[..., None], words: str
) -> None:
    held, island, prune = _pruned_log(tmp_path)
    env = lmdb.open(str(tmp_path), max_dbs=8)
    with env.begin(write=True) as txn:
        names = ("entries", "actions", "states", "meta", "keys")
        tamper(txn, {n: env.open_db(n.encode(), txn=txn) for n in names}, held, island, prune)
    env.close()
    report = Log.open(tmp_path, readonly=True).verify()
    assert not report.ok and words in report.reason, report.reason


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
    for _round in range(16):
        for _ in range(200):
            log.append_soon(Record("intent", ActionRef(), State.DENIED, {"body": body}, new_action=True))
        close(log, intent(log))
        prune_all(log)
        sizes.append((tmp_path / "data.mdb").stat().st_size)
    log.close()
    # The file grows while the first rounds fill it (and LMDB's free list settles), then stays
    # where it is: each round's 200 actions land in the pages the last round's pruning freed.
    assert len(set(sizes[-6:])) == 1 and sizes[-1] <= sizes[2] * 1.02, sizes


@pytest.mark.parametrize("limit", [200_000])
def test_size_retention_keeps_the_log_under_its_size(tmp_path: Path, limit: int) -> None:
    log = opened(tmp_path)
    for _ in range(600):
        log.append_soon(Record("intent", ActionRef(), State.DENIED, {"body": "y" * 1000}, new_action=True))
    close(log, intent(log))
    assert log.usage().used_bytes > limit
    prune_all(log, policy=Retention(max_bytes=limit))
    assert log.usage().used_bytes <= limit
    assert log.verify().ok
    assert len(list(log.actions())) > 0
    log.close()


def test_airlock_run_prunes_archives_and_keeps_what_is_open(
    make_airlock: Callable[..., Airlock], upstream: Upstream, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    a = make_airlock(extra=("--retain", "1s", "--archive", str(archive), "--checkpoint-every", "10"))
    session = requests.Session()
    session.proxies = a.proxies
    for n in range(20):
        assert session.post(f"{upstream.url}/items/{n}", json={"n": n}, timeout=10).status_code == 200
    # One request the upstream holds open: its action stays pending while everything else goes.
    held = threading.Thread(
        target=lambda: session.post(f"{upstream.url}/hold/open", json={}, timeout=60), daemon=True
    )
    held.start()
    wait_for(lambda: len(upstream.effects("POST")) == 21, "the upstream holds the open request")

    def kept() -> list[dict[str, Any]]:
        return a.log()

    wait_for(
        lambda: [x["url"] for x in kept()] == [f"{upstream.url}/hold/open"],
        "retention pruned every closed action",
    )
    assert [s.path for s in upstream.effects("POST")][:20] == [f"/items/{n}" for n in range(20)]
    key = a.cli("key").stdout.strip()
    checked = a.cli("verify", "--archive", str(archive), "--key", key)
    assert "ok: archive" in checked.stdout and "signatures good" in checked.stdout, checked.stdout
    archived = [
        orjson.loads(line)["entry"]
        for _, _, path in segments(archive)
        for line in gzip.decompress(path.read_bytes()).splitlines()
    ]
    intents = [e["summary"]["url"] for e in archived if e["kind"] == "intent"]
    assert intents[:20] == [f"{upstream.url}/items/{n}" for n in range(20)]
    assert {e["kind"] for e in archived} >= {"intent", "outcome"}

    # Once it closes, the open action goes too; the chain still verifies, signatures and all.
    upstream.release.set()
    held.join(timeout=30)
    wait_for(lambda: kept() == [], "retention pruned the action once it closed")
    assert a.cli("verify", "--archive", str(archive), "--key", key).returncode == 0


def test_retention_flags_that_cannot_work_are_refused_in_one_line(tmp_path: Path) -> None:
    for flags, words in [
        (["--archive", str(tmp_path / "a")], "--archive keeps what retention prunes"),
        (["--retain", "7"], "is not an age"),
        (["--retain-size", "2GiB", "--log-max-size", "1GiB"], "must be below --log-max-size"),
    ]:
        proc = subprocess.run(
            [AIRLOCK, "run", "--data", str(tmp_path / "d"), *flags],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2 and words in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) <= 2 and "Traceback" not in proc.stderr


def test_since_checkpoint_walks_from_where_a_pruned_log_starts(tmp_path: Path) -> None:
    log = Log.open(tmp_path / "log")
    log.start()
    signer = Signer.load_or_create(tmp_path)
    for _ in range(5):
        close(log, intent(log))
    held = intent(log, State.HELD)
    checkpoint = log.append_blocking(checkpoint_record(signer.public_text(), signer.sign))
    for _ in range(5):
        close(log, intent(log))
    prune_all(log, sign=signer.sign)
    after = [intent(log) for _ in range(3)]
    # The checkpoint and the held action stay below the start; the walk goes from the start on.
    kept = log.pruned()
    assert checkpoint.seq in kept.islands and checkpoint.seq < kept.start
    assert log.action(held) is not None
    recent = log.verify_recent(None, signer.public())
    assert recent.ok and recent.since == checkpoint.seq, recent.reason
    assert log.verify(None, signer.public()).signed >= 2  # the checkpoint and the prune
    last = log.action(after[-1])["entries"][0]  # type: ignore[index]
    log.close()
    env = lmdb.open(str(tmp_path / "log"), max_dbs=8)
    with env.begin(write=True) as txn:
        entries = env.open_db(b"entries", txn=txn)
        raw = _stored(txn, last.to_bytes(8, "big"), entries)
        txn.put(last.to_bytes(8, "big"), raw.replace(b'"method":"POST"', b'"method":"GET"'), db=entries)
    env.close()
    report = Log.open(tmp_path / "log", readonly=True).verify_recent(None, signer.public())
    assert not report.ok and f"entry {last}" in report.reason, report.reason


def test_the_freeze_in_force_stays_through_a_prune(tmp_path: Path) -> None:
    log = opened(tmp_path)
    close(log, intent(log))
    made = log.append_blocking(Record("freeze", data={"by": "alice", "reason": "incident"}))
    for _ in range(3):
        log.append_blocking(Record("intent", ActionRef(), State.DENIED, {}, new_action=True))
    prune_all(log)
    kept = log.pruned()
    assert made.seq in kept.islands and kept.start > made.seq
    frozen = log.frozen()
    assert frozen is not None and (frozen.seq, frozen.by) == (made.seq, "alice")
    assert log.verify().ok
    log.append_blocking(Record("thaw", data={"by": "alice"}))
    close(log, intent(log))
    prune_all(log)
    assert log.frozen() is None and made.seq not in log.pruned().islands
    assert log.verify().ok
    log.close()


def test_a_segment_whose_prune_never_committed_is_not_the_archive(tmp_path: Path) -> None:
    data, archive = tmp_path / "log", tmp_path / "archive"
    log = opened(data)
    for _ in range(5):
        close(log, intent(log))
    prune_all(log, archive=archive)
    for _ in range(5):
        close(log, intent(log))
    # As if airlock died between writing a step's segment and committing the step.
    start, head = log.pruned().start, log.head()[0]
    with log._view() as view:
        write_segment(archive, view, start, head + 1)
    assert check_archive(archive, log).ok
    prune_all(log, archive=archive)  # the next step replaces it
    assert [first for first, _, _ in segments(archive)].count(start) == 1
    report = check_archive(archive, log)
    assert report.ok and report.last == log.pruned().start - 1, report.reason
    log.close()

"""Signed checkpoints: the data dir's Ed25519 key, checkpoints written every N entries by a real
`airlock run`, `verify --key` over their signatures, `verify --since-checkpoint` over only what
came after the last one, and `--checkpoint-to` sending each off the host (a file that catches a
rollback, a URL that receives every checkpoint even when it was away at first).

The logs are written by real `airlock run` processes driven by requests to a recording upstream;
they are altered as an attacker with the file would alter them, with the lmdb module.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from proxy.ops.checkpoints import Cadence
from store import Entry, Log, parse_public, signature_ok, signed_payload

from .support import AIRLOCK, Airlock, Upstream, free_port, plain_upstream, running, wait_for
from .support.logfiles import PROD_RULES, databases, k, raw

EVERY = 5


@dataclass(frozen=True)
class Written:
    """A log with checkpoints: the final copy, a copy taken before its last checkpoints, the file
    --checkpoint-to wrote, and the public key."""

    data: Path
    older: Path
    anchor: Path
    key: str
    first_action: int  # an action whose entries all came before the last checkpoint


def airlock_on(root: Path, data: Path, *extra: str) -> Airlock:
    """An `airlock run` on `data`, started."""
    rules = root / "rules.yaml"
    rules.write_text(PROD_RULES)
    return Airlock(
        data=data,
        rules=rules,
        port=free_port(),
        control_port=free_port(),
        extra=extra,
        output=root / "airlock.out",
    ).start()


def traffic(a: Airlock, up: Upstream, tag: str, n: int) -> None:
    """`n` POSTs through the proxy, each an intent and an outcome in the log."""
    for i in range(n):
        answer = requests.post(f"{up.url}/notes/{tag}{i}", json={"n": i}, proxies=a.proxies, timeout=30)
        assert answer.status_code == 200


def entries(data: Path) -> list[Entry]:
    """Every entry of the log, read as a reader would."""
    return list(Log.open(data / "log", readonly=True).entries())


def checkpoints(data: Path) -> list[Entry]:
    return [e for e in entries(data) if e.kind == "checkpoint"]


def caught_up(data: Path) -> bool:
    """True once fewer than EVERY entries follow the last checkpoint (none is due)."""
    seqs = [e.seq for e in checkpoints(data)]
    return bool(seqs) and Log.open(data / "log", readonly=True).head()[0] - seqs[-1] < EVERY


def verify(data: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [AIRLOCK, "verify", "--data", str(data), *extra], capture_output=True, text=True, timeout=60
    )


def airlock_key(data: Path) -> str:
    proc = subprocess.run([AIRLOCK, "key", "--data", str(data)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc
    return proc.stdout.strip()


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Written]:
    root = tmp_path_factory.mktemp("checkpoints")
    data, anchor = root / "data", root / "anchor.jsonl"
    cadence = ("--checkpoint-every", str(EVERY), "--checkpoint-interval", "0")
    with plain_upstream() as up:
        a = airlock_on(root, data, *cadence, "--checkpoint-to", str(anchor))
        traffic(a, up, "a", 6)
        wait_for(lambda: caught_up(data), "the checkpoints of the first run are written")
        a.stop()
        older = root / "older"
        shutil.copytree(data, older)

        a = airlock_on(root, data, *cadence, "--checkpoint-to", str(anchor))
        traffic(a, up, "b", 6)
        wait_for(lambda: caught_up(data), "the checkpoints of the second run are written")
        a.stop()

        # A last run that writes no checkpoints: entries follow the last one for certain.
        a = airlock_on(root, data, "--checkpoint-every", "0", "--checkpoint-interval", "0")
        traffic(a, up, "c", 2)
        a.stop()
    yield Written(data, older, anchor, airlock_key(data), first_action=1)


@pytest.fixture
def copy(written: Written, tmp_path: Path) -> Path:
    """A copy of the final log for one test to alter."""
    shutil.copytree(written.data, tmp_path / "data")
    return tmp_path / "data"


def rechain(txn: Any, db: dict[str, Any], start: int, change: Any) -> None:
    """Apply `change` to entry `start`'s body and rewrite every hash from there on, with the head,
    as an attacker who rewrites the whole file would: the chain stays consistent."""
    head = orjson.loads(raw(txn, b"head", db["meta"]))["seq"]
    prev = raw(txn, k(start), db["entries"])[:64]
    for seq in range(start, head + 1):
        body = orjson.loads(raw(txn, k(seq), db["entries"])[128:])
        if seq == start:
            change(body)
        encoded = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
        digest = hashlib.sha256(prev + encoded).hexdigest().encode()
        txn.put(k(seq), prev + digest + encoded, db=db["entries"])
        prev = digest
    txn.put(b"head", orjson.dumps({"seq": head, "hash": prev.decode()}), db=db["meta"])


def last_checkpoint(data: Path) -> int:
    return checkpoints(data)[-1].seq


def ok_line(proc: subprocess.CompletedProcess[str]) -> re.Match[str]:
    found = re.match(r"ok: (\d+) entries verified; head (\d+):([0-9a-f]{64})", proc.stdout)
    assert proc.returncode == 0 and found, proc
    return found


# ---- the key ---------------------------------------------------------------------------------


def test_the_key_is_private_stable_across_restarts_and_printed(tmp_path: Path) -> None:
    with plain_upstream() as up:
        a = airlock_on(tmp_path, tmp_path / "data")
        traffic(a, up, "k", 1)
        a.stop()
        key_file = tmp_path / "data" / "signing.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        first = key_file.read_bytes()
        printed = airlock_key(tmp_path / "data")
        assert re.fullmatch(r"ed25519:[A-Za-z0-9+/]{43}=", printed)
        assert len(base64.b64decode(printed.removeprefix("ed25519:"))) == 32

        a = airlock_on(tmp_path, tmp_path / "data")
        a.stop()
    assert key_file.read_bytes() == first
    assert airlock_key(tmp_path / "data") == printed


def test_airlock_key_creates_a_key_for_a_new_data_dir_once(tmp_path: Path) -> None:
    printed = airlock_key(tmp_path / "new")
    assert stat.S_IMODE((tmp_path / "new" / "signing.key").stat().st_mode) == 0o600
    assert airlock_key(tmp_path / "new") == printed
    assert airlock_key(tmp_path / "other") != printed


# ---- writing checkpoints ---------------------------------------------------------------------


def test_checkpoints_are_written_every_n_entries_and_signed_by_the_data_dirs_key(written: Written) -> None:
    log = entries(written.data)
    marks = [e for e in log if e.kind == "checkpoint"]
    assert len(marks) >= 4, [e.seq for e in marks]
    before = 0
    for mark in marks:
        # Never before N new entries; the entry before it is the one it vouches for.
        assert mark.seq - before > EVERY, [e.seq for e in marks]
        assert mark.action is None and mark.data["key"] == written.key
        assert mark.prev == log[mark.seq - 2].hash
        payload = signed_payload(mark.seq, mark.prev, "checkpoint", mark.data)
        assert signature_ok(parse_public(written.key), payload, mark.data["signature"])
        before = mark.seq


def test_no_checkpoint_is_due_without_new_entries() -> None:
    cadence = Cadence(every=5, interval=60)
    assert not cadence.due(new=0, since=3600)
    assert cadence.due(new=5, since=0) and not cadence.due(new=4, since=0)
    assert cadence.due(new=1, since=60) and not cadence.due(new=1, since=59)
    assert not Cadence(every=0, interval=0).active


# ---- verify --key ----------------------------------------------------------------------------


def test_verify_with_the_key_checks_every_checkpoints_signature(written: Written) -> None:
    proc = verify(written.data, "--key", written.key)
    ok_line(proc)
    assert f"; {len(checkpoints(written.data))} signatures good" in proc.stdout


def test_a_checkpoints_data_rewritten_with_the_chain_fails_verify_with_the_key(
    written: Written, copy: Path
) -> None:
    seq = checkpoints(copy)[1].seq
    with databases(copy) as (txn, db):
        rechain(txn, db, seq, lambda body: body["data"].update(note="rewritten"))
    assert verify(copy).returncode == 0  # consistent with itself: only the signature can tell
    proc = verify(copy, "--key", written.key)
    assert proc.returncode == 1, proc
    assert f"entry {seq} (checkpoint) has a signature the key given did not make" in proc.stdout


def test_a_checkpoints_signature_swapped_or_removed_fails_verify_with_the_key(
    written: Written, copy: Path
) -> None:
    marks = checkpoints(copy)
    other = marks[0].data["signature"]
    with databases(copy) as (txn, db):
        rechain(txn, db, marks[2].seq, lambda body: body["data"].update(signature=other))
    proc = verify(copy, "--key", written.key)
    assert proc.returncode == 1 and f"entry {marks[2].seq} (checkpoint) has a signature" in proc.stdout

    with databases(copy) as (txn, db):
        rechain(txn, db, marks[1].seq, lambda body: body["data"].pop("signature"))
    proc = verify(copy, "--key", written.key)
    assert proc.returncode == 1 and f"entry {marks[1].seq} (checkpoint) carries no signature" in proc.stdout


def test_verify_with_another_key_fails(written: Written, tmp_path: Path) -> None:
    other = airlock_key(tmp_path / "elsewhere")
    proc = verify(written.data, "--key", other)
    first = checkpoints(written.data)[0].seq
    assert proc.returncode == 1, proc
    assert (
        f"entry {first} (checkpoint) says it was signed by {written.key}, not by the key given" in proc.stdout
    )


@pytest.mark.parametrize("bad", ["ed25519:", "ed25519:not-base64!", "rsa:AAAA", "ed25519:" + "A" * 40])
def test_a_malformed_key_is_one_line(written: Written, bad: str) -> None:
    proc = verify(written.data, "--key", bad)
    assert proc.returncode == 2 and proc.stderr.startswith("airlock verify: error: --key"), proc
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_a_moved_checkpoint_record_is_named(written: Written, copy: Path) -> None:
    marks = checkpoints(copy)
    with databases(copy) as (txn, db):
        txn.put(b"checkpoint", k(marks[0].seq), db=db["meta"])
    proc = verify(copy)
    assert proc.returncode == 1, proc
    assert f"the checkpoint record names entry {marks[0].seq}" in proc.stdout
    assert f"last checkpoint is entry {marks[-1].seq}" in proc.stdout


# ---- verify --since-checkpoint ---------------------------------------------------------------


def test_since_checkpoint_checks_only_the_entries_after_the_last_checkpoint(written: Written) -> None:
    whole = ok_line(verify(written.data))
    recent = ok_line(verify(written.data, "--since-checkpoint", "--key", written.key))
    last = last_checkpoint(written.data)
    assert recent[2] == whole[2] and recent[3] == whole[3]  # the same head
    assert int(recent[1]) == int(whole[2]) - last + 1 < int(whole[1])
    assert f"from checkpoint {last}; signatures good" in recent.string


def last_run(data: Path) -> Entry:
    """The first entry of the last run's traffic (it came after the last checkpoint)."""
    found = next(e for e in entries(data) if b"/notes/c0" in orjson.dumps(e.as_dict()))
    assert found.seq > last_checkpoint(data)
    return found


def test_since_checkpoint_notices_an_entry_altered_after_the_checkpoint(written: Written, copy: Path) -> None:
    seq = last_run(copy).seq
    with databases(copy) as (txn, db):
        stored = raw(txn, k(seq), db["entries"])
        txn.put(k(seq), stored.replace(b"/notes/c0", b"/notes/x0"), db=db["entries"])
    proc = verify(copy, "--since-checkpoint")
    assert proc.returncode == 1 and f"entry {seq} was altered" in proc.stdout, proc


def test_since_checkpoint_notices_an_index_altered_after_the_checkpoint(written: Written, copy: Path) -> None:
    action = last_run(copy).action
    assert action is not None
    with databases(copy) as (txn, db):
        index = orjson.loads(raw(txn, k(action), db["actions"]))
        index["status"] = 201
        txn.put(k(action), orjson.dumps(index), db=db["actions"])
    proc = verify(copy, "--since-checkpoint")
    assert proc.returncode == 1, proc
    assert f"action {action} disagrees with the chain: its index says status=201" in proc.stdout


def test_since_checkpoint_does_not_read_entries_before_the_checkpoint(written: Written, copy: Path) -> None:
    first = checkpoints(copy)[0].seq
    with databases(copy) as (txn, db):
        seq = orjson.loads(raw(txn, k(written.first_action), db["actions"]))["entries"][0]
        stored = raw(txn, k(seq), db["entries"])
        txn.put(k(seq), stored.replace(b"/notes/a0", b"/notes/ax"), db=db["entries"])
    assert seq < first
    full = verify(copy)
    assert full.returncode == 1 and f"entry {seq} was altered" in full.stdout, full
    ok_line(verify(copy, "--since-checkpoint", "--key", written.key))


def test_since_checkpoint_without_a_checkpoint_says_what_to_do(tmp_path: Path) -> None:
    with plain_upstream() as up:
        a = airlock_on(tmp_path, tmp_path / "data", "--checkpoint-every", "0", "--checkpoint-interval", "0")
        traffic(a, up, "n", 1)
        a.stop()
    proc = verify(tmp_path / "data", "--since-checkpoint")
    assert proc.returncode == 1 and "records no checkpoint to start from" in proc.stdout, proc
    assert "without --since-checkpoint" in proc.stdout


# ---- --checkpoint-to -------------------------------------------------------------------------


def test_the_checkpoint_file_holds_every_checkpoint_and_the_log_still_holds_them(written: Written) -> None:
    lines = [json.loads(line) for line in written.anchor.read_text().splitlines()]
    marks = checkpoints(written.data)
    assert [(x["seq"], x["hash"]) for x in lines] == [(e.seq, e.hash) for e in marks]
    assert all(x["key"] == written.key for x in lines)
    assert stat.S_IMODE(written.anchor.stat().st_mode) == 0o600
    proc = verify(written.data, "--checkpoints", str(written.anchor), "--key", written.key)
    ok_line(proc)
    assert "the last checkpoint in" in proc.stdout
    ok_line(verify(written.data, "--since-checkpoint", "--checkpoints", str(written.anchor)))


def test_a_rollback_to_an_older_copy_is_caught_against_the_checkpoint_file(written: Written) -> None:
    ok_line(verify(written.older, "--key", written.key))  # consistent with itself
    last = json.loads(written.anchor.read_text().splitlines()[-1])
    proc = verify(written.older, "--checkpoints", str(written.anchor))
    assert proc.returncode == 1, proc
    assert f"no longer holds entry {last['seq']}" in proc.stdout and "cut short or rolled back" in proc.stdout


def test_a_rollback_that_went_on_writing_is_caught_against_the_checkpoint_file(
    written: Written, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(written.older, data)
    last = json.loads(written.anchor.read_text().splitlines()[-1])
    with plain_upstream() as up:
        a = airlock_on(tmp_path, data, "--checkpoint-every", "0", "--checkpoint-interval", "0")
        traffic(a, up, "again", 8)
        a.stop()
    assert Log.open(data / "log", readonly=True).head()[0] > last["seq"]
    ok_line(verify(data, "--key", written.key))
    proc = verify(data, "--checkpoints", str(written.anchor))
    assert proc.returncode == 1, proc
    assert f"entry {last['seq']} has hash" in proc.stdout and "replaced by another copy" in proc.stdout


def test_an_altered_checkpoint_file_is_caught_with_the_key(written: Written, tmp_path: Path) -> None:
    lines = written.anchor.read_text().splitlines()
    forged = json.loads(lines[-1]) | {"hash": "0" * 64}
    (tmp_path / "forged.jsonl").write_text("\n".join([*lines[:-1], json.dumps(forged)]) + "\n")
    proc = verify(written.data, "--checkpoints", str(tmp_path / "forged.jsonl"))
    assert proc.returncode == 1 and "not the expected 000000000000" in proc.stdout, proc
    (tmp_path / "resigned.jsonl").write_text(
        "\n".join([*lines[:-1], json.dumps(json.loads(lines[-1]) | {"prev": "1" * 64})]) + "\n"
    )
    proc = verify(written.data, "--checkpoints", str(tmp_path / "resigned.jsonl"), "--key", written.key)
    assert proc.returncode == 1 and f":{len(lines)}: checkpoint" in proc.stdout, proc
    assert "was not signed by the key given" in proc.stdout


def test_a_checkpoint_file_that_is_not_one_is_one_line(written: Written, tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_text('{"seq": 3}\n')
    proc = verify(written.data, "--checkpoints", str(tmp_path / "bad.jsonl"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc
    assert f"{tmp_path / 'bad.jsonl'}:1: not a checkpoint line" in proc.stderr


def test_checkpoints_are_posted_to_a_url_and_retried_until_it_answers(tmp_path: Path) -> None:
    receiver = Upstream(free_port(), "http")
    with plain_upstream() as up:
        a = airlock_on(
            tmp_path,
            tmp_path / "data",
            "--checkpoint-every",
            str(EVERY),
            "--checkpoint-interval",
            "0",
            "--checkpoint-to",
            f"{receiver.url}/checkpoints",
        )
        try:
            traffic(a, up, "u", 4)
            # Nothing listens there yet: the delivery fails, is counted, and is tried again.
            wait_for(lambda: metric(a, "airlock_checkpoint_send_failures_total") >= 1, "a failed delivery")
            assert metric(a, "airlock_checkpoint_age_seconds") >= 0
            with running(receiver):
                traffic(a, up, "v", 4)
                wait_for(lambda: caught_up(a.data), "the checkpoints are written")
                wait_for(lambda: len(receiver.effects("POST")) >= 2, "the checkpoints arrived", 90)
                a.stop()  # what is still queued is delivered before it exits
        finally:
            a.stop()
    marks = checkpoints(tmp_path / "data")
    posted = [json.loads(seen.body) for seen in receiver.effects("POST")]
    assert {seen.path for seen in receiver.effects()} == {"/checkpoints"}
    assert [(x["seq"], x["hash"]) for x in posted] == [(e.seq, e.hash) for e in marks]
    key = parse_public(airlock_key(tmp_path / "data"))
    for x in posted:
        payload = signed_payload(x["seq"], x["prev"], "checkpoint", {"key": x["key"]})
        assert signature_ok(key, payload, x["signature"])


def metric(a: Airlock, name: str) -> float:
    text = requests.get(
        f"{a.control}/metrics", headers={"Authorization": f"Bearer {a.token}"}, timeout=10
    ).text
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    assert found is not None, f"{name} is not in /metrics"
    return float(found[1])


@pytest.mark.parametrize("target", ["ftp://example.com/x", "/no/such/dir/anchor.jsonl"])
def test_a_bad_checkpoint_target_is_one_line(tmp_path: Path, target: str) -> None:
    proc = subprocess.run(
        [AIRLOCK, "run", "--data", str(tmp_path / "data"), "--checkpoint-to", target],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--checkpoint-to" in proc.stderr, proc

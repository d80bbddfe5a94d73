"""The `airlock` command line, run for real against real proxies: log, show, verify, resolve, ca, and
one-line errors for bad input."""

from __future__ import annotations

import contextlib
import hashlib
import json
import queue
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from subprocess import PIPE
from typing import Any

import lmdb
import pytest
import requests

from .support import (
    AIRLOCK,
    Airlock,
    Upstream,
    free_port,
    hold_and_crash,
    interruptible,
    plain_upstream,
    settle,
    started_airlock,
)

ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
JSON_KEYS = {"id", "ts", "agent", "method", "url", "host", "effect", "state", "status", "rule"}

Run = subprocess.CompletedProcess[str]


# ---- helpers --------------------------------------------------------------------------------


def airlock_cmd(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60, cwd: Path | None = None
) -> Run:
    """Run `airlock ARGS` as its own process (in `cwd`, if given)."""
    return subprocess.run([AIRLOCK, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)


def in_parallel(*calls: Callable[[], Run]) -> list[Run]:
    """Run independent CLI invocations side by side (each one spends most of its time importing)."""
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda call: call(), calls))


def one_line_error(proc: Run) -> str:
    """Assert `proc` failed with status 2 and exactly one line on stderr, no traceback; return that line."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def json_lines(text: str) -> list[dict[str, object]]:
    """Parse one JSON object per line."""
    return [json.loads(line) for line in text.splitlines()]


def make_traffic(a: Airlock, up: Upstream) -> None:
    """Five actions: committed GET, committed POST, denied DELETE, committed 404 GET, failed POST."""
    s = requests.Session()
    s.proxies = a.proxies
    assert s.get(f"{up.url}/things", timeout=10).status_code == 200
    assert s.post(f"{up.url}/things", data=b"hello airlock", timeout=10).status_code == 200
    assert s.delete(f"{up.url}/items/7", timeout=10).status_code == 403
    assert s.get(f"{up.url}/status/404", timeout=10).status_code == 404
    assert s.post(f"http://127.0.0.1:{free_port()}/nobody", data=b"x", timeout=10).status_code == 502
    settle(a, 10)  # the rules at start, 2 for each of the four forwarded actions, 1 for the denied one


@dataclass
class Busy:
    """A running proxy whose log holds the five actions of `make_traffic`."""

    airlock: Airlock
    upstream: Upstream


@contextlib.contextmanager
def _served_traffic(factory: pytest.TempPathFactory, name: str, stop: signal.Signals) -> Iterator[Busy]:
    """A proxy that served `make_traffic`, stopped with `stop` when the block ends."""
    with plain_upstream() as up:
        a = started_airlock(factory.mktemp(name))
        try:
            make_traffic(a, up)
            yield Busy(a, up)
        finally:
            a.stop(stop)


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Busy]:
    """Shared by the read-only tests below: nothing but them adds to this log."""
    with _served_traffic(tmp_path_factory, "busy", signal.SIGKILL) as served:
        yield served


@pytest.fixture(scope="module")
def quiet_data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The data dir of a proxy that served `make_traffic` and was then stopped."""
    with _served_traffic(tmp_path_factory, "quiet", signal.SIGTERM) as served:
        pass
    yield served.airlock.data


# ---- airlock log ----------------------------------------------------------------------------


def test_log_json_lines_carry_every_field_newest_last(busy: Busy) -> None:
    a, up = busy.airlock, busy.upstream
    out = a.cli("log", "--json").stdout
    actions = json_lines(out)
    assert len(actions) == 5 and len(out.splitlines()) == 5
    for action in actions:
        assert set(action) >= JSON_KEYS, action
        assert ISO.fullmatch(str(action["ts"])), action["ts"]
        assert action["agent"] == "anonymous" and action["host"] == "127.0.0.1"
        assert "entries" not in action and "writer" not in action
    assert [x["id"] for x in actions] == [1, 2, 3, 4, 5]
    assert [(x["method"], x["state"], x["status"], x["effect"]) for x in actions] == [
        ("GET", "committed", 200, "read"),
        ("POST", "committed", 200, "write"),
        ("DELETE", "denied", None, "destructive"),
        ("GET", "committed", 404, "read"),
        ("POST", "failed", None, "write"),
    ]
    assert [x["url"] for x in actions[:4]] == [
        f"{up.url}/things",
        f"{up.url}/things",
        f"{up.url}/items/7",
        f"{up.url}/status/404",
    ]
    assert [x["rule"] for x in actions] == [None, None, "no-item-deletes", None, None]


def test_log_state_filters(busy: Busy) -> None:
    a = busy.airlock
    denied, committed = in_parallel(
        lambda: a.cli("log", "--json", "--state", "denied"),
        lambda: a.cli("log", "--json", "--state", "committed"),
    )
    assert [(x["id"], x["state"]) for x in json_lines(denied.stdout)] == [(3, "denied")]
    assert [(x["id"], x["state"]) for x in json_lines(committed.stdout)] == [
        (1, "committed"),
        (2, "committed"),
        (4, "committed"),
    ]


def test_log_text_shows_url_and_state(busy: Busy) -> None:
    a, up = busy.airlock, busy.upstream
    lines = a.cli("log").stdout.splitlines()
    assert len(lines) == 5
    assert lines[1].split()[0] == "2" and "committed" in lines[1] and f"{up.url}/things" in lines[1]
    assert "denied" in lines[2] and f"{up.url}/items/7" in lines[2] and "rule=no-item-deletes" in lines[2]
    assert "failed" in lines[4] and "/nobody" in lines[4]
    with pytest.raises(json.JSONDecodeError):
        json.loads(lines[0])


def test_log_follow_prints_new_actions(airlock: Airlock, upstream: Upstream) -> None:
    requests.get(f"{upstream.url}/before", proxies=airlock.proxies, timeout=10)
    proc = subprocess.Popen(
        [AIRLOCK, "log", "--follow", "--json", "--data", str(airlock.data)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=interruptible,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None and proc.stderr is not None
    stdout = proc.stdout

    def read() -> None:
        for line in stdout:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()

    def next_action(deadline: float) -> dict[str, object]:
        return dict(json.loads(lines.get(timeout=max(0.0, deadline - time.monotonic()))))

    try:
        deadline = time.monotonic() + 20
        seen = [next_action(deadline)]
        assert seen[0]["url"] == f"{upstream.url}/before"
        # Only now is the follower surely past its first listing.
        r = requests.post(f"{upstream.url}/followed", data=b"x", proxies=airlock.proxies, timeout=10)
        assert r.status_code == 200
        while not (seen[-1]["url"] == f"{upstream.url}/followed" and seen[-1]["state"] == "committed"):
            try:
                seen.append(next_action(deadline))
            except queue.Empty:
                raise AssertionError(f"follow printed only {seen}") from None
        assert {x["url"] for x in seen} <= {f"{upstream.url}/before", f"{upstream.url}/followed"}
        assert seen[-1]["id"] == 2 and seen[-1]["method"] == "POST" and seen[-1]["status"] == 200
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(15)
    assert proc.returncode == 0
    assert "Traceback" not in proc.stderr.read()


# ---- airlock show ---------------------------------------------------------------------------


def test_show_prints_intent_and_outcome(busy: Busy) -> None:
    a, up = busy.airlock, busy.upstream
    text, js = in_parallel(lambda: a.cli("show", "2"), lambda: a.cli("show", "2", "--json"))
    shown = json.loads(js.stdout)
    assert shown["action"]["id"] == 2 and shown["action"]["state"] == "committed"
    intent, outcome = shown["entries"]
    assert (intent["kind"], intent["state"], intent["action"]) == ("intent", "pending", 2)
    assert intent["data"]["action"]["method"] == "POST"
    assert intent["data"]["action"]["body"]["text"] == "hello airlock"
    assert (outcome["kind"], outcome["state"], outcome["data"]["status"]) == ("outcome", "committed", 200)
    assert (intent["seq"], outcome["seq"]) == (4, 5) and outcome["prev"] == intent["hash"]
    assert f"{up.url}/things" in text.stdout and "committed" in text.stdout
    assert f"entry {intent['seq']}" in text.stdout and "intent -> pending" in text.stdout
    assert f"entry {outcome['seq']}" in text.stdout and "outcome -> committed" in text.stdout
    assert "hello airlock" in text.stdout


def test_show_unknown_id_is_one_line_exit_2(busy: Busy) -> None:
    proc = busy.airlock.cli("show", "999", "--json", check=False)
    assert "no action 999" in one_line_error(proc) and proc.stdout == ""


# ---- airlock verify -------------------------------------------------------------------------


def test_verify_ok_on_a_live_and_a_stopped_log(busy: Busy, quiet_data: Path) -> None:
    live, stopped = in_parallel(
        lambda: busy.airlock.cli("verify"), lambda: airlock_cmd("verify", "--data", str(quiet_data))
    )
    # 2 entries for each of the four forwarded actions, 1 for the denied one.
    for proc in (live, stopped):
        assert proc.returncode == 0 and re.fullmatch(
            r"ok: 10 entries verified; head 10:[0-9a-f]{64}\n", proc.stdout
        ), proc


@contextmanager
def entries_of(data: Path) -> Iterator[tuple[lmdb.Transaction, Any]]:
    """A write transaction on the log's entries db (the proxy must not be running)."""
    env = lmdb.open(str(data / "log"), max_dbs=8)
    try:
        with env.begin(write=True) as txn:
            yield txn, env.open_db(b"entries", txn=txn)
    finally:
        env.close()


def head(data: Path) -> bytes:
    """The log's recorded head, read straight from LMDB."""
    env = lmdb.open(str(data / "log"), readonly=True, max_dbs=8)
    try:
        with env.begin() as txn:
            raw = txn.get(b"head", db=env.open_db(b"meta", txn=txn))
            assert raw is not None
            return bytes(raw)
    finally:
        env.close()


def key(seq: int) -> bytes:
    return seq.to_bytes(8, "big")


def find_entry(txn: lmdb.Transaction, db: Any, needle: bytes) -> tuple[int, bytes]:
    """The first entry whose stored bytes contain `needle`."""
    for k, v in txn.cursor(db=db):
        if needle in bytes(v):
            return int.from_bytes(bytes(k), "big"), bytes(v)
    raise AssertionError(f"no entry contains {needle!r}")


def copy_of(quiet_data: Path, tmp_path: Path) -> Path:
    shutil.copytree(quiet_data, tmp_path / "data")
    return tmp_path / "data"


@pytest.mark.parametrize(
    ("old", "new"),
    [(b'"method":"POST"', b'"method":"GETX"'), (b'"text":"hello airlock"', b'"text":"hello airlocK"')],
    ids=["method", "body"],
)
def test_verify_names_an_altered_entry(quiet_data: Path, tmp_path: Path, old: bytes, new: bytes) -> None:
    data = copy_of(quiet_data, tmp_path)
    with entries_of(data) as (txn, db):
        seq, raw = find_entry(txn, db, old)
        txn.put(key(seq), raw.replace(old, new, 1), db=db)
    assert seq == 4  # the POST's intent: entry 1 is the rules in force, 2 and 3 the GET before it
    proc = airlock_cmd("verify", "--data", str(data))
    assert proc.returncode == 1, proc
    assert proc.stdout.startswith("altered:") and re.search(r"\bentry 4\b", proc.stdout), proc.stdout


def canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def forged(raw: bytes) -> bytes:
    """An entry with its request body changed and its own hash recomputed to match, as someone who knows
    the format would. Stored either as one JSON object with "prev" and "hash" (hash = sha256(prev +
    canonical JSON of the rest)) or as prev (64 hex) + hash (64 hex) + JSON body (hash = sha256(prev +
    body bytes))."""
    if raw.startswith(b"{"):
        entry = json.loads(raw)
        entry["data"]["action"]["body"]["text"] = "goodbye"
        rest = {k: v for k, v in entry.items() if k not in ("prev", "hash")}
        entry["hash"] = hashlib.sha256(entry["prev"].encode() + canonical(rest)).hexdigest()
        return canonical(entry)
    prev, body = raw[:64], json.loads(raw[128:])
    body["data"]["action"]["body"]["text"] = "goodbye"
    return prev + hashlib.sha256(prev + canonical(body)).hexdigest().encode() + canonical(body)


def test_verify_catches_an_alteration_whose_hash_was_recomputed(quiet_data: Path, tmp_path: Path) -> None:
    data = copy_of(quiet_data, tmp_path)
    with entries_of(data) as (txn, db):
        seq, raw = find_entry(txn, db, b'"text":"hello airlock"')
        txn.put(key(seq), forged(raw), db=db)
    proc = airlock_cmd("verify", "--data", str(data))
    # The forged entry checks out on its own; the next one no longer links to it.
    assert proc.returncode == 1, proc
    assert re.search(rf"\bentry {seq + 1}\b", proc.stdout), proc.stdout


@pytest.mark.parametrize("which", ["last", "middle"])
def test_verify_detects_a_deleted_entry(quiet_data: Path, tmp_path: Path, which: str) -> None:
    data = copy_of(quiet_data, tmp_path)
    with entries_of(data) as (txn, db):
        cur = txn.cursor(db=db)
        assert cur.last()
        last = int.from_bytes(bytes(cur.key()), "big")
        gone = last if which == "last" else 4
        assert txn.delete(key(gone), db=db)
    assert last == 10
    proc = airlock_cmd("verify", "--data", str(data))
    assert proc.returncode == 1, proc
    # "entry 4 is missing (found 5)"; "the log ends at entry 8 (...) but its head records entry 9 (...)".
    named = rf"\bentry {gone}\b" if which == "middle" else rf"\brecords entry {gone}\b"
    assert proc.stdout.startswith("altered:") and re.search(named, proc.stdout), proc.stdout


# ---- airlock resolve ------------------------------------------------------------------------


def test_resolve_settles_in_doubt_actions(airlock: Airlock, upstream: Upstream) -> None:
    try:
        ids = hold_and_crash(airlock, upstream, ["/hold/one", "/hold/two"])
    finally:
        upstream.release.set()
    one, two = ids["/hold/one"], ids["/hold/two"]

    # Two resolutions at once, from two processes, while the proxy runs: all three append to one log.
    done, undone = in_parallel(
        lambda: airlock.cli("resolve", str(one), "--executed", "--note", "checked"),
        lambda: airlock.cli("resolve", str(two), "--not-executed"),
    )
    assert done.stdout.startswith(f"action {one} resolved as executed")
    assert undone.stdout.startswith(f"action {two} resolved as not executed")
    again, shown, states, verified = in_parallel(
        lambda: airlock.cli("resolve", str(one), "--not-executed", check=False),
        lambda: airlock.cli("show", str(one), "--json"),
        lambda: airlock.cli("log", "--json"),
        lambda: airlock.cli("verify"),
    )
    assert "only to in_doubt" in one_line_error(again)

    assert {x["id"]: x["state"] for x in json_lines(states.stdout)} == {one: "committed", two: "aborted"}
    entries = json.loads(shown.stdout)["entries"]
    assert [e["kind"] for e in entries] == ["intent", "recovery", "resolution"]
    assert [e["state"] for e in entries] == ["pending", "in_doubt", "committed"]
    assert entries[-1]["data"]["note"] == "checked" and entries[-1]["data"]["executed"] is True
    assert verified.stdout.startswith("ok:")


def test_resolve_refuses_actions_that_are_not_in_doubt(busy: Busy) -> None:
    a = busy.airlock
    before = head(a.data)
    committed, missing = in_parallel(
        lambda: a.cli("resolve", "1", "--executed", "--note", "x", check=False),
        lambda: a.cli("resolve", "999", "--executed", check=False),
    )
    assert "action 1 is committed; a resolution applies only to in_doubt actions" in one_line_error(committed)
    assert "no action 999" in one_line_error(missing)
    assert head(a.data) == before  # nothing was written


# ---- airlock ca -----------------------------------------------------------------------------


def test_ca_prints_the_cert_and_keeps_secrets_private(busy: Busy, tmp_path: Path) -> None:
    shared, fresh = in_parallel(
        lambda: busy.airlock.cli("ca"),
        lambda: airlock_cmd("ca", "--data", str(tmp_path / "fresh")),
    )
    for proc, data in ((shared, busy.airlock.data), (fresh, tmp_path / "fresh")):
        assert proc.returncode == 0, proc
        cert = Path(proc.stdout.strip())
        assert cert == data / "ca" / "mitmproxy-ca-cert.pem" and cert.is_file()
        assert cert.read_text().startswith("-----BEGIN CERTIFICATE-----")
        key_file = cert.parent / "mitmproxy-ca.pem"
        assert "PRIVATE KEY" in key_file.read_text()
        assert key_file.stat().st_mode & 0o777 == 0o600
    # `ca` names the very file the running proxy made (and `exec` points clients at).
    assert Path(shared.stdout.strip()) == busy.airlock.ca_cert
    assert (busy.airlock.data / "control.token").stat().st_mode & 0o777 == 0o600


# ---- bad input: one line on stderr, exit 2 --------------------------------------------------

BAD_RULES = """\
version: 1
rules:
  - id: typo
    match: {method: POST}
    action: dney
"""


@dataclass(frozen=True)
class Case:
    """A bad command line (with {data}, {rules}, {file}, {busy}, {port} and {busy_data} filled in), and
    text its error line must contain."""

    args: tuple[str, ...]
    expect: tuple[str, ...]

    def filled(self, values: dict[str, str]) -> Case:
        """This case with the placeholders replaced."""
        args = tuple(a.format(**values) for a in self.args)
        return Case(args, tuple(e.format(**values) for e in self.expect))


CASES: dict[str, Case] = {
    "unknown-flag": Case(("run", "--bogus", "--data", "{data}"), ("--bogus",)),
    "bad-listen": Case(("run", "--data", "{data}", "--listen", "foo"), ("--listen", "'foo'", "HOST:PORT")),
    "bad-upstream": Case(("run", "--data", "{data}", "--upstream", "nourl"), ("--upstream", "'nourl'")),
    "bad-rules-poll": Case(("run", "--data", "{data}", "--rules-poll", "soon"), ("--rules-poll", "'soon'")),
    "rules-check-missing": Case(
        ("rules", "explain", "--url", "http://x/", "--rules", "/nonexistent.yaml"), ("no such rule file",)
    ),
    "missing-rules": Case(
        ("run", "--data", "{data}", "--rules", "/nonexistent.yaml"), ("/nonexistent.yaml",)
    ),
    "invalid-rules": Case(
        (
            "run",
            "--data",
            "{data}",
            "--rules",
            "{rules}",
            "--listen",
            "127.0.0.1:{port}",
            "--control",
            "127.0.0.1:{port2}",
        ),
        ("{rules}:5:13", "rules[0].action", "'dney'"),
    ),
    "data-not-writable": Case(
        ("run", "--data", "{file}/sub", "--listen", "127.0.0.1:{port}", "--control", "127.0.0.1:{port2}"),
        ("{file}/sub", "which is a file"),
    ),
    "listen-in-use": Case(
        ("run", "--data", "{data}", "--listen", "127.0.0.1:{busy}", "--control", "127.0.0.1:{port}"),
        ("127.0.0.1:{busy}", "--listen"),
    ),
    "control-in-use": Case(
        ("run", "--data", "{data}", "--listen", "127.0.0.1:{port}", "--control", "127.0.0.1:{busy}"),
        ("127.0.0.1:{busy}", "--control"),
    ),
    "log-without-log": Case(("log", "--data", "{data}"), ("no log",)),
    "show-negative-id": Case(("show", "-1", "--data", "{busy_data}"), ("-1",)),
    "resolve-huge-id": Case(
        ("resolve", "99999999999999999999", "--executed", "--data", "{busy_data}"), ("99999999999999999999",)
    ),
}


@pytest.fixture(scope="module")
def bad_runs(busy: Busy, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[Run, Case]]]:
    """Every bad command line of CASES, run side by side once; case name -> (result, case with values)."""
    root = tmp_path_factory.mktemp("bad")
    (root / "bad.yaml").write_text(BAD_RULES)
    (root / "a-file").write_text("not a directory")
    with ExitStack() as stack:
        taken = stack.enter_context(socket.socket())
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        values = {
            "rules": str(root / "bad.yaml"),
            "file": str(root / "a-file"),
            "busy": str(taken.getsockname()[1]),
            "busy_data": str(busy.airlock.data),
        }
        procs: dict[str, tuple[subprocess.Popen[str], Case]] = {}
        for name, case in CASES.items():
            filled = {**values, "data": str(root / name), "port": str(free_port()), "port2": str(free_port())}
            real = case.filled(filled)
            proc = subprocess.Popen([AIRLOCK, *real.args], stdout=PIPE, stderr=PIPE, text=True)
            procs[name] = (proc, real)
        results: dict[str, tuple[Run, Case]] = {}
        for name, (proc, case) in procs.items():
            try:
                out, err = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            results[name] = (subprocess.CompletedProcess(proc.args, proc.returncode, out, err), case)
    yield results


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_on_stderr(bad_runs: dict[str, tuple[Run, Case]], name: str) -> None:
    proc, case = bad_runs[name]
    line = one_line_error(proc)
    assert line.startswith("airlock"), line
    for text in case.expect:
        assert text in line, (text, line)
    assert proc.stdout == ""

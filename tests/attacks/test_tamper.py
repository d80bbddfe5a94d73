"""Any alteration of the log is evident: an attacker with file access edits each LMDB database in
turn, with the lmdb module, as the proxy's own writer would; `airlock verify` names the database that
disagrees with the chain, and `airlock log` / `airlock show` print the chain's truth or refuse in one
line. Cutting the log short (head moved to match) and rolling it back to an older copy are caught
by `verify --expect` with a head recorded earlier. A forged stored reply is never replayed.

The log is written by a real `airlock run` driven by curl and requests to a recording upstream.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from store import ActionRef, Log, Record, State
from store.keys import reply_digest

from ..support import AIRLOCK, Airlock, Upstream, curl, plain_upstream, settle, started_airlock
from ..support.logfiles import PROD_RULES, databases, k, key_named, load, raw, verify

RULES = PROD_RULES


@dataclass(frozen=True)
class Recorded:
    """A log written through the proxy: the final copy, an older copy, and what is in them."""

    data: Path  # the final log (never edited: each test edits its own copy)
    older: Path  # a copy taken before the last requests
    head: str  # the head `airlock verify` printed for the final log, as SEQ:HASH
    ids: dict[str, int]  # request path -> action id
    upstream: str


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """`airlock ARGS` as its own process."""
    return subprocess.run([AIRLOCK, *args], capture_output=True, text=True, timeout=60)


def printed_head(proc: subprocess.CompletedProcess[str]) -> str:
    found = re.fullmatch(r"ok: \d+ entries verified; head (\d+:[0-9a-f]{64})\n", proc.stdout)
    assert proc.returncode == 0 and found, proc
    return found[1]


def keyed(a: Airlock, url: str, key: str, body: bytes) -> requests.Response:
    return requests.post(url, data=body, headers={"Idempotency-Key": key}, proxies=a.proxies, timeout=30)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorded]:
    root = tmp_path_factory.mktemp("tamper")
    with plain_upstream() as up:
        a = started_airlock(root, RULES)
        try:
            assert curl("-x", a.proxy, f"{up.url}/health").returncode == 0
            denied = curl("-x", a.proxy, "-X", "DELETE", f"{up.url}/prod/db")
            assert "no-prod-deletes" in denied.stdout
            assert keyed(a, f"{up.url}/orders/1", "order-1", b'{"order": 1}').status_code == 200
            assert curl("-x", a.proxy, "-d", "text=hi", f"{up.url}/notes").returncode == 0
            settle(a, 1 + 2 + 1 + 2 + 2)  # rules, GET, denied DELETE, keyed POST, POST
        finally:
            a.stop()
        older = root / "older"
        shutil.copytree(a.data, older)
        a.start()
        try:
            assert keyed(a, f"{up.url}/orders/2", "order-2", b'{"order": 2}').status_code == 200
            settle(a, 8 + 1 + 2)  # the second run's rules entry, the keyed POST
        finally:
            a.stop()
        ids = {str(x["url"]).removeprefix(up.url): int(x["id"]) for x in a.log()}
        assert len(up.effects()) == 4  # the DELETE never left
        yield Recorded(a.data, older, printed_head(verify(a.data)), ids, up.url)


@pytest.fixture
def copy(recorded: Recorded, tmp_path: Path) -> Path:
    """A copy of the recorded data dir for one test to alter."""
    shutil.copytree(recorded.data, tmp_path / "data")
    return tmp_path / "data"


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """A refusal: non-zero exit, one line on stderr that says the log was altered, no traceback."""
    assert proc.returncode != 0, proc
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "altered" in proc.stderr, proc.stderr
    return proc.stderr


def shown(data: Path, action_id: int) -> dict[str, Any]:
    proc = run("show", str(action_id), "--json", "--data", str(data))
    assert proc.returncode == 0, proc
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


def listed(data: Path, *args: str) -> list[dict[str, Any]]:
    proc = run("log", "--json", "--data", str(data), *args)
    assert proc.returncode == 0, proc
    return [json.loads(line) for line in proc.stdout.splitlines()]


# ---- the actions index ----------------------------------------------------------------------


def test_a_rewritten_summary_is_named_and_log_and_show_print_the_chain(
    recorded: Recorded, copy: Path
) -> None:
    delete = recorded.ids["/prod/db"]
    with databases(copy) as (txn, db):
        index = load(txn, k(delete), db["actions"])
        assert (index["method"], index["state"]) == ("DELETE", "denied")
        index |= {"method": "GET", "url": f"{recorded.upstream}/health", "state": "committed", "status": 200}
        index |= {"verdict": "allow", "rule": None, "effect": "read"}
        txn.put(k(delete), orjson.dumps(index), db=db["actions"])
        # A thorough attacker moves the states index along with it.
        txn.delete(b"denied\0" + k(delete), db=db["states"])
        txn.put(b"committed\0" + k(delete), b"", db=db["states"])

    proc = verify(copy)
    assert proc.returncode == 1 and proc.stdout.startswith("altered: actions index: action"), proc
    assert re.search(rf"\baction {delete}\b", proc.stdout) and len(proc.stdout.splitlines()) == 1

    # What is printed comes from the hashed entries, whatever the index says.
    row = next(x for x in listed(copy) if x["id"] == delete)
    assert (row["method"], row["state"], row["rule"], row["url"]) == (
        "DELETE",
        "denied",
        "no-prod-deletes",
        f"{recorded.upstream}/prod/db",
    )
    assert delete not in {x["id"] for x in listed(copy, "--all", "--state", "committed")}
    detail = shown(copy, delete)
    assert (detail["action"]["method"], detail["action"]["state"]) == ("DELETE", "denied")
    text = run("show", str(delete), "--data", str(copy)).stdout
    assert "DELETE" in text and "denied" in text and "committed" not in text


def test_a_deleted_index_record_is_named_and_not_silently_hidden(recorded: Recorded, copy: Path) -> None:
    delete = recorded.ids["/prod/db"]
    with databases(copy) as (txn, db):
        assert txn.delete(k(delete), db=db["actions"])
        assert txn.delete(b"denied\0" + k(delete), db=db["states"])

    proc = verify(copy)
    assert proc.returncode == 1 and f"actions index: action {delete} is missing" in proc.stdout, proc
    assert f"action {delete}" in one_line_error(run("log", "--data", str(copy)))
    assert f"action {delete}" in one_line_error(run("show", str(delete), "--data", str(copy)))


def test_an_entry_dropped_from_an_action_list_is_named_and_refused(recorded: Recorded, copy: Path) -> None:
    health = recorded.ids["/health"]
    with databases(copy) as (txn, db):
        index = load(txn, k(health), db["actions"])
        outcome = index["entries"].pop()
        index |= {"state": "pending", "status": None}
        txn.put(k(health), orjson.dumps(index), db=db["actions"])
        txn.delete(b"committed\0" + k(health), db=db["states"])
        txn.put(b"pending\0" + k(health), b"", db=db["states"])

    proc = verify(copy)
    assert proc.returncode == 1 and proc.stdout.startswith("altered: actions index:"), proc
    assert re.search(rf"\baction {health}\b", proc.stdout), proc.stdout
    # `log --all` reads the whole chain and sees it; `show` reads only the action's entries.
    assert f"action {health}" in one_line_error(run("log", "--all", "--data", str(copy)))
    assert outcome not in shown(copy, health)["action"]["entries"]


def test_an_index_listing_another_actions_entry_is_refused(recorded: Recorded, copy: Path) -> None:
    health, notes = recorded.ids["/health"], recorded.ids["/notes"]
    with databases(copy) as (txn, db):
        index = load(txn, k(health), db["actions"])
        index["entries"].append(load(txn, k(notes), db["actions"])["entries"][-1])
        txn.put(k(health), orjson.dumps(index), db=db["actions"])

    assert "actions index" in verify(copy).stdout
    assert "about action" in one_line_error(run("show", str(health), "--data", str(copy)))


# ---- the states index and meta ---------------------------------------------------------------


def test_a_moved_states_record_is_named(recorded: Recorded, copy: Path) -> None:
    delete = recorded.ids["/prod/db"]
    with databases(copy) as (txn, db):
        assert txn.delete(b"denied\0" + k(delete), db=db["states"])
        txn.put(b"committed\0" + k(delete), b"", db=db["states"])

    proc = verify(copy)
    assert proc.returncode == 1 and proc.stdout.startswith("altered: states index:"), proc
    assert f"action {delete}" in proc.stdout
    # The full listing filters on the state the entries give; the indexed one names the record.
    assert delete not in {x["id"] for x in listed(copy, "--all", "--state", "committed")}
    assert delete in {x["id"] for x in listed(copy, "--all", "--state", "denied")}
    assert f"action {delete}" in one_line_error(run("log", "--state", "committed", "--data", str(copy)))


@pytest.mark.parametrize("change", ["head back one", "next_action up", "next_action removed"])
def test_altered_meta_is_named(recorded: Recorded, copy: Path, change: str) -> None:
    with databases(copy) as (txn, db):
        head = load(txn, b"head", db["meta"])
        if change == "head back one":
            prev = raw(txn, k(head["seq"]), db["entries"])[:64].decode()
            txn.put(b"head", orjson.dumps({"seq": head["seq"] - 1, "hash": prev}), db=db["meta"])
        elif change == "next_action up":
            n = int.from_bytes(raw(txn, b"next_action", db["meta"]), "big")
            txn.put(b"next_action", k(n + 5), db=db["meta"])
        else:
            assert txn.delete(b"next_action", db=db["meta"])
    proc = verify(copy)
    assert proc.returncode == 1 and len(proc.stdout.splitlines()) == 1, proc
    named = "head records entry" if change.startswith("head") else "meta: next_action"
    assert named in proc.stdout, proc.stdout


# ---- the keys database -----------------------------------------------------------------------


def forged_reply(held: dict[str, Any]) -> dict[str, Any]:
    reply = dict(held["reply"])
    reply["body"] = "eyJmb3JnZWQiOiB0cnVlfQ=="  # {"forged": true}
    return reply


KEY_CHANGES: dict[str, Callable[[dict[str, Any]], dict[str, Any] | None]] = {
    "forged reply": lambda held: held | {"reply": forged_reply(held)},
    "forged reply and digest": lambda held: held | {"reply": forged_reply(held), "reply_sha256": "0" * 64},
    "another holder": lambda held: held | {"action": held["action"] - 1},
    "another payload": lambda held: held | {"payload": "f" * 64},
    "not final": lambda held: held | {"final": False},
    "expiry extended": lambda held: held | {"expires": held["expires"] + 1e6},
    "deleted": lambda held: None,
}


@pytest.mark.parametrize("change", list(KEY_CHANGES))
def test_an_altered_key_record_is_named(recorded: Recorded, copy: Path, change: str) -> None:
    with databases(copy) as (txn, db):
        key = key_named(txn, db["keys"], "order-1")
        held = load(txn, key, db["keys"])
        assert held["final"] and "reply" in held
        after = KEY_CHANGES[change](held)
        if after is None:
            txn.delete(key, db=db["keys"])
        else:
            txn.put(key, orjson.dumps(after), db=db["keys"])
    proc = verify(copy)
    assert proc.returncode == 1 and proc.stdout.startswith("altered: keys:"), proc
    assert "order-1" in proc.stdout and len(proc.stdout.splitlines()) == 1


def test_a_key_record_with_no_action_behind_it_is_named(recorded: Recorded, copy: Path) -> None:
    with databases(copy) as (txn, db):
        held = load(txn, key_named(txn, db["keys"], "order-1"), db["keys"])
        txn.put(b"order-invented", orjson.dumps(held), db=db["keys"])
    assert "keys: idempotency key 'order-invented' is held by no action" in verify(copy).stdout


@pytest.mark.parametrize("digest_too", [False, True], ids=["reply", "reply-and-digest"])
def test_a_forged_stored_reply_is_not_replayed(
    make_airlock: Callable[..., Airlock], upstream: Upstream, digest_too: bool
) -> None:
    a = make_airlock(RULES)
    url = f"{upstream.url}/payments"
    first = keyed(a, url, "pay-1", b'{"amount": 10}')
    assert first.status_code == 200
    again = keyed(a, url, "pay-1", b'{"amount": 10}')
    assert again.headers.get("Idempotent-Replayed") == "true" and again.content == first.content
    a.stop()
    with databases(a.data) as (txn, db):
        key = key_named(txn, db["keys"], "pay-1")
        held = load(txn, key, db["keys"])
        held["reply"] = forged_reply(held)
        if digest_too:
            held["reply_sha256"] = reply_digest(held["reply"])
        txn.put(key, orjson.dumps(held), db=db["keys"])
    a.start()

    retry = keyed(a, url, "pay-1", b'{"amount": 10}')
    assert b"forged" not in retry.content and retry.status_code >= 500, (retry.status_code, retry.content)
    assert "altered" in retry.text and "pay-1" in retry.text
    assert len(upstream.effects("POST")) == 1  # nor was it sent again
    proc = a.cli("verify", check=False)
    assert proc.returncode == 1 and "keys:" in proc.stdout, proc
    a.stop(signal.SIGTERM)


# ---- the entries -----------------------------------------------------------------------------


def test_an_edited_entry_is_named(recorded: Recorded, copy: Path) -> None:
    delete = recorded.ids["/prod/db"]
    with databases(copy) as (txn, db):
        seq = load(txn, k(delete), db["actions"])["entries"][0]
        stored = raw(txn, k(seq), db["entries"])
        txn.put(k(seq), stored.replace(b'"method":"DELETE"', b'"method":"GET"'), db=db["entries"])
    proc = verify(copy)
    assert proc.returncode == 1 and f"entry {seq} was altered" in proc.stdout, proc
    assert f"entry {seq}" in one_line_error(run("show", str(delete), "--data", str(copy)))
    assert f"entry {seq}" in one_line_error(run("log", "--data", str(copy)))


# ---- cut short, rolled back ------------------------------------------------------------------


def test_a_tail_cut_with_every_index_to_match_is_caught_by_expect(recorded: Recorded, copy: Path) -> None:
    last = recorded.ids["/orders/2"]
    with databases(copy) as (txn, db):
        index = load(txn, k(last), db["actions"])
        first = index["entries"][0]
        head = load(txn, b"head", db["meta"])
        for seq in range(first, head["seq"] + 1):
            assert txn.delete(k(seq), db=db["entries"])
        txn.delete(k(last), db=db["actions"])
        txn.delete(f"{index['state']}".encode() + b"\0" + k(last), db=db["states"])
        txn.delete(key_named(txn, db["keys"], "order-2"), db=db["keys"])
        for row in [bytes(r) for r in txn.cursor(db=db["attrs"]).iternext(values=False)]:
            if row.endswith(k(last)):
                txn.delete(row, db=db["attrs"])
        prev = raw(txn, k(first - 1), db["entries"])[64:128]
        txn.put(b"head", orjson.dumps({"seq": first - 1, "hash": prev.decode()}), db=db["meta"])
        txn.put(b"next_action", k(last), db=db["meta"])

    # Consistent with itself: nothing in the file can tell. A head recorded elsewhere can.
    assert verify(copy).returncode == 0
    proc = verify(copy, "--expect", recorded.head)
    cut = recorded.head.split(":")[0]
    assert proc.returncode == 1 and f"no longer holds entry {cut}" in proc.stdout, proc


def test_a_rollback_to_an_older_copy_is_caught_by_expect(recorded: Recorded) -> None:
    assert verify(recorded.older).returncode == 0
    proc = verify(recorded.older, "--expect", recorded.head)
    assert proc.returncode == 1 and "cut short or rolled back" in proc.stdout, proc
    # The head the older copy had is still in the final log: recording it proves nothing was lost.
    older_head = printed_head(verify(recorded.older))
    assert verify(recorded.data, "--expect", older_head).returncode == 0


def test_a_replaced_history_is_caught_by_expect(tmp_path: Path) -> None:
    """Two copies that went apart after a common start: the same entry number, another hash."""
    log = Log.open(tmp_path / "a")
    log.start()
    for n in range(3):
        log.append_blocking(Record(kind="note", data={"n": n}))
    log.close()
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    heads = []
    for name, word in (("a", "kept"), ("b", "forked")):
        other = Log.open(tmp_path / name)
        other.start()
        for n in range(2):
            other.append_blocking(
                Record(
                    kind="intent", action=ActionRef(), state=State.PENDING, new_action=True, data={word: n}
                )
            )
        heads.append(other.head())
        other.close()
    assert heads[0][0] == heads[1][0] and heads[0][1] != heads[1][1]
    verdict = Log.open(tmp_path / "b", readonly=True).verify(expect=heads[0])
    assert not verdict.ok and "not the expected" in verdict.reason
    assert Log.open(tmp_path / "a", readonly=True).verify(expect=heads[0]).ok


@pytest.mark.parametrize("bad", ["5", "5:xyz", "x:" + "a" * 64, "0:" + "a" * 64])
def test_a_malformed_expect_is_one_line(recorded: Recorded, bad: str) -> None:
    proc = verify(recorded.data, "--expect", bad)
    assert proc.returncode == 2 and "--expect" in proc.stderr and len(proc.stderr.splitlines()) == 1, proc


# ---- corrupt records -------------------------------------------------------------------------

CORRUPT = {
    "actions record not JSON": ("actions", "id", b"{not json"),
    "actions record wrong shape": ("actions", "id", b'{"entries": "all"}'),
    "entry bytes garbage": ("entries", "first", b"garbage"),
    "entry body not JSON": ("entries", "first", b"0" * 128 + b"{nope"),
    "head not JSON": ("meta", "head", b"nope"),
    "key record not JSON": ("keys", "order-1", b"[1,2"),
    "states key not an action": ("states", "committed\0x", b""),
}


@pytest.mark.parametrize("case", list(CORRUPT))
def test_corrupt_records_get_one_clear_line(recorded: Recorded, copy: Path, case: str) -> None:
    where, which, value = CORRUPT[case]
    delete = recorded.ids["/prod/db"]
    with databases(copy) as (txn, db):
        if which == "id":
            key = k(delete)
        elif which == "first":
            key = k(load(txn, k(delete), db["actions"])["entries"][0])
        elif where == "keys":
            key = key_named(txn, db["keys"], which)
        else:
            key = which.encode()
        txn.put(key, value, db=db[where])

    proc = verify(copy)
    assert proc.returncode == 1 and proc.stdout.startswith("altered:"), proc
    assert len(proc.stdout.splitlines()) == 1 and "Traceback" not in proc.stderr
    for args in (("log",), ("log", "--json"), ("show", str(delete))):
        out = run(*args, "--data", str(copy))
        assert "Traceback" not in out.stderr, out.stderr
        if out.returncode != 0:
            one_line_error(out)


def test_the_control_api_shows_the_chain_and_names_a_bad_states_index(
    recorded: Recorded, copy: Path, make_airlock: Callable[..., Airlock]
) -> None:
    delete = recorded.ids["/prod/db"]
    with databases(copy) as (txn, db):
        index = load(txn, k(delete), db["actions"])
        index |= {"method": "GET", "state": "committed", "rule": None}
        txn.put(k(delete), orjson.dumps(index), db=db["actions"])
        txn.delete(b"denied\0" + k(delete), db=db["states"])
        txn.put(b"committed\0" + k(delete), b"", db=db["states"])
    a = make_airlock(RULES, data=copy)
    auth = {"Authorization": f"Bearer {a.token}"}
    one = requests.get(f"{a.control}/v1/actions/{delete}", headers=auth, timeout=30).json()
    assert (one["action"]["method"], one["action"]["state"]) == ("DELETE", "denied")
    listed_all = requests.get(f"{a.control}/v1/actions", headers=auth, timeout=30).json()["actions"]
    assert next(x for x in listed_all if x["id"] == delete)["method"] == "DELETE"
    by_state = requests.get(f"{a.control}/v1/actions?state=committed", headers=auth, timeout=30)
    assert by_state.status_code == 500 and by_state.json()["error"] == "log_altered", by_state.text
    verdict = requests.get(f"{a.control}/v1/verify", headers=auth, timeout=60).json()
    assert not verdict["ok"] and verdict["reason"].startswith("actions index:"), verdict
    expect = requests.get(f"{a.control}/v1/verify?expect=bad", headers=auth, timeout=60)
    assert expect.status_code == 400 and "SEQ:HASH" in expect.json()["message"]

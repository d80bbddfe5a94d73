"""A log written by the airlock before entries carried their index fields is upgraded in place,
honestly: the new airlock appends a hashed `format` entry where the old entries end, `airlock
verify` passes with a note counting the old actions whose summaries no entry can vouch for, every
new action is checked in full, and no alteration of the marker makes new entries pass as old.
A retry of a request whose Idempotency-Key an old action holds is refused (409), neither replayed
from the unvouched stored reply nor sent upstream a second time.

The old log (fixtures/legacy_log.tar.xz) was written by that airlock through a real proxy (see
fixtures/make_legacy_log.py): a GET, a POST, a keyed POST and a denied DELETE, to an upstream on
127.0.0.1:LEGACY_PORT, where these tests serve the upstream again.
"""

from __future__ import annotations

import re
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb
import orjson
import pytest
import requests

from store import Log

from ..support import Upstream, curl, running, started_airlock, wait_for
from ..support.logfiles import databases, k, key_named, load, raw, verify
from .fixtures.make_legacy_log import ARCHIVE, BODY, KEY, LEGACY_PORT, RULES

OLD_ENTRIES = 8  # rules, GET (2), POST (2), keyed POST (2), denied DELETE
OLD_ACTIONS = 4
FORMAT_SEQ = OLD_ENTRIES + 1
NOTE = f"; {OLD_ACTIONS} action(s) from before index checks"


@dataclass(frozen=True)
class Upgraded:
    """The old log after the new airlock ran on it, and what happened through it."""

    data: Path
    old: Path  # the old log as the fixture holds it
    upstream: Upstream
    retry: requests.Response  # the old keyed request sent again, same key and body
    reused: requests.Response  # the old key with another body
    new_key: str
    ids: dict[str, int]  # request path -> id of the new actions


def unpack(into: Path) -> Path:
    """The fixture's data dir: the old airlock's log/ only (the CA and token are made anew)."""
    with tarfile.open(ARCHIVE) as tar:
        tar.extractall(into, filter="data")
    return into


def old_bytes(data: Path) -> list[bytes]:
    env = lmdb.open(str(data / "log"), max_dbs=8, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return [bytes(v) for _, v in txn.cursor(db=env.open_db(b"entries", txn=txn))]
    finally:
        env.close()


def keyed(proxies: dict[str, str], url: str, key: str, body: bytes) -> requests.Response:
    return requests.post(url, data=body, headers={"Idempotency-Key": key}, proxies=proxies, timeout=30)


@pytest.fixture(scope="module")
def upgraded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upgraded]:
    root = tmp_path_factory.mktemp("legacy")
    old = unpack(root / "old")
    shutil.copytree(old, root / "data")
    with running(Upstream(LEGACY_PORT, "http")) as up:
        a = started_airlock(root, RULES)
        try:
            assert curl("-x", a.proxy, f"{up.url}/after").returncode == 0
            first = keyed(a.proxies, f"{up.url}/orders/2", "order-new-1", b'{"order": 2}')
            again = keyed(a.proxies, f"{up.url}/orders/2", "order-new-1", b'{"order": 2}')
            assert first.status_code == again.status_code == 200 and first.content == again.content
            assert "no-prod-deletes" in curl("-x", a.proxy, "-X", "DELETE", f"{up.url}/prod/other").stdout
            retry = keyed(a.proxies, f"{up.url}/orders/1", KEY, BODY)
            reused = keyed(a.proxies, f"{up.url}/orders/1", KEY, b'{"order": 99}')
            wait_for(lambda: all(x["state"] != "pending" for x in a.log()), "every action has its outcome")
        finally:
            a.stop()
        new = [x for x in a.log() if x["id"] > OLD_ACTIONS]
        ids = {str(x["url"]).removeprefix(up.url): int(x["id"]) for x in new if x["verdict"] == "allow"}
        yield Upgraded(a.data, old, up, retry, reused, "order-new-1", ids)


@pytest.fixture
def copy(upgraded: Upgraded, tmp_path: Path) -> Path:
    shutil.copytree(upgraded.data, tmp_path / "data")
    return tmp_path / "data"


def entry(data: Path, seq: int) -> dict[str, Any]:
    log = Log.open(data / "log", readonly=True)
    try:
        found = log.entry(seq)
        assert found is not None
        return found.as_dict()
    finally:
        log._env.close()


def altered(data: Path) -> str:
    proc = verify(data)
    assert proc.returncode == 1 and proc.stdout.startswith("altered: "), proc
    assert len(proc.stdout.splitlines()) == 1 and "Traceback" not in proc.stderr, proc
    return proc.stdout


# ---- the upgrade ----------------------------------------------------------------------------


def test_the_old_log_is_refused_until_a_writer_records_its_upgrade(tmp_path: Path) -> None:
    out = altered(unpack(tmp_path / "old"))
    assert "no format record" in out and "start airlock on it once" in out


def test_the_upgraded_log_verifies_with_a_note_and_keeps_the_old_entries_unchanged(
    upgraded: Upgraded,
) -> None:
    proc = verify(upgraded.data)
    found = re.fullmatch(r"ok: (\d+) entries verified; head (\d+):[0-9a-f]{64}(.*)\n", proc.stdout)
    assert proc.returncode == 0 and found, proc
    assert found[3].startswith(NOTE) and "summaries are not checked" in found[3]
    # The old entries are the old airlock's bytes; the first entry after them marks the upgrade.
    assert old_bytes(upgraded.data)[:OLD_ENTRIES] == old_bytes(upgraded.old)
    marker = entry(upgraded.data, FORMAT_SEQ)
    assert (marker["kind"], marker["action"], marker["data"]) == (
        "format",
        None,
        {"version": 2, "legacy_entries": OLD_ENTRIES},
    )
    with databases(upgraded.data) as (txn, db):
        assert load(txn, b"format", db["meta"]) == {"version": 2, "since": FORMAT_SEQ}
        kinds = [orjson.loads(bytes(v)[128:])["kind"] for _, v in txn.cursor(db=db["entries"])]
        txn.abort()
    assert kinds.count("format") == 1


def test_old_actions_are_listed_with_their_unchecked_fields_named_and_new_ones_in_full(
    upgraded: Upgraded,
) -> None:
    log = Log.open(upgraded.data / "log", readonly=True)
    try:
        rows = list(log.actions(whole=True))
    finally:
        log._env.close()
    old, new = rows[:OLD_ACTIONS], rows[OLD_ACTIONS:]
    assert [(x["method"], x["state"]) for x in old] == [
        ("GET", "committed"),
        ("POST", "committed"),
        ("POST", "committed"),
        ("DELETE", "denied"),
    ]
    assert all({"method", "url", "verdict"} <= set(x["unchecked"]) for x in old)
    assert new and all("unchecked" not in x for x in new)
    # Every new action's summary comes from its hashed entries.
    for x in new:
        first = entry(upgraded.data, x["entries"][0])
        assert first["summary"]["method"] == x["method"] and first["summary"]["url"] == x["url"]


def test_a_retry_of_an_old_keyed_request_is_refused_neither_replayed_nor_sent(upgraded: Upgraded) -> None:
    retry = upgraded.retry
    assert retry.status_code == 409, retry.text
    assert "older airlock" in retry.text and "airlock show 3" in retry.text
    assert "session=upstream-secret-cookie" not in retry.headers.get("Set-Cookie", "")
    # The old key with another body is still the old action's: a different request.
    assert upgraded.reused.status_code == 422, upgraded.reused.text
    orders = [s for s in upgraded.upstream.effects("POST") if s.path == "/orders/1"]
    assert orders == []  # the old airlock's went to the upstream it ran with; nothing since
    # Both refusals are logged as denied actions, after the upgrade.
    log = Log.open(upgraded.data / "log", readonly=True)
    try:
        refused = [x for x in log.actions() if x["id"] > OLD_ACTIONS and x["url"].endswith("/orders/1")]
    finally:
        log._env.close()
    assert [x["state"] for x in refused] == ["denied", "denied"]
    assert all(x["entries"][0] > FORMAT_SEQ for x in refused)


def test_a_lost_format_record_is_restored_from_the_chain_not_moved(upgraded: Upgraded, copy: Path) -> None:
    with databases(copy) as (txn, db):
        txn.delete(b"format", db=db["meta"])
    assert "no format record" in altered(copy)
    log = Log.open(copy / "log")
    log.start()
    log.close()
    proc = verify(copy)
    assert proc.returncode == 0 and NOTE in proc.stdout, proc
    with databases(copy) as (txn, db):
        assert load(txn, b"format", db["meta"]) == {"version": 2, "since": FORMAT_SEQ}
        kinds = [orjson.loads(bytes(v)[128:])["kind"] for _, v in txn.cursor(db=db["entries"])]
    assert kinds.count("format") == 1


def test_a_new_log_has_no_format_entry_and_no_old_actions(tmp_path: Path) -> None:
    log = Log.open(tmp_path / "log")
    log.start()
    log.close()
    with databases(tmp_path) as (txn, db):
        assert load(txn, b"format", db["meta"]) == {"version": 2, "since": 1}
        assert txn.stat(db["entries"])["entries"] == 0


# ---- alterations ----------------------------------------------------------------------------


def _new_summary(txn: Any, db: dict[str, Any], ids: dict[str, int]) -> None:
    index = load(txn, k(ids["/after"]), db["actions"])
    index["url"] = index["url"].replace("/after", "/elsewhere")
    txn.put(k(ids["/after"]), orjson.dumps(index), db=db["actions"])


def _new_key_reply(txn: Any, db: dict[str, Any], ids: dict[str, int]) -> None:
    name = key_named(txn, db["keys"], "order-new-1")
    held = load(txn, name, db["keys"])
    held["reply"]["status"] = 201
    txn.put(name, orjson.dumps(held), db=db["keys"])


def _marker_at_head(txn: Any, db: dict[str, Any], ids: dict[str, int]) -> None:
    head = load(txn, b"head", db["meta"])["seq"]
    txn.put(b"format", orjson.dumps({"version": 2, "since": head + 1}), db=db["meta"])


def _marker_at_start(txn: Any, db: dict[str, Any], ids: dict[str, int]) -> None:
    txn.put(b"format", orjson.dumps({"version": 2, "since": 1}), db=db["meta"])


def _format_entry(txn: Any, db: dict[str, Any], ids: dict[str, int]) -> None:
    stored = raw(txn, k(FORMAT_SEQ), db["entries"])
    txn.put(k(FORMAT_SEQ), stored.replace(b'"legacy_entries":8', b'"legacy_entries":99'), db=db["entries"])


def _old_state(txn: Any, db: dict[str, Any], ids: dict[str, int]) -> None:
    index = load(txn, k(OLD_ACTIONS), db["actions"])  # the denied DELETE
    index["state"] = "committed"
    txn.put(k(OLD_ACTIONS), orjson.dumps(index), db=db["actions"])
    txn.delete(b"denied\0" + k(OLD_ACTIONS), db=db["states"])
    txn.put(b"committed\0" + k(OLD_ACTIONS), b"", db=db["states"])


def _old_entry_list(txn: Any, db: dict[str, Any], ids: dict[str, int]) -> None:
    # The GET's outcome dropped, with everything its first entry alone would say moved to match.
    index = load(txn, k(1), db["actions"])
    index |= {"entries": index["entries"][:1], "state": "pending", "updated": index["ts"]}
    txn.put(k(1), orjson.dumps(index), db=db["actions"])
    txn.delete(b"committed\0" + k(1), db=db["states"])
    txn.put(b"pending\0" + k(1), b"", db=db["states"])


def _old_key_holder(txn: Any, db: dict[str, Any], ids: dict[str, int]) -> None:
    name = key_named(txn, db["keys"], KEY)
    held = load(txn, name, db["keys"])
    held["action"] = 2
    txn.put(name, orjson.dumps(held), db=db["keys"])


@pytest.mark.parametrize(
    ("alter", "named"),
    [
        (_new_summary, "actions index: action"),
        (_new_key_reply, "keys: the stored reply"),
        (_marker_at_head, "meta: the format record says"),
        (_marker_at_start, "meta: the format record says the current format starts at entry 1"),
        (_format_entry, f"entry {FORMAT_SEQ} was altered"),
        (_old_state, f"actions index: action {OLD_ACTIONS} disagrees with the chain"),
        (_old_entry_list, "actions index: its records list"),
        (_old_key_holder, "is not held by action 3"),
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else "",
)
def test_each_alteration_is_named(upgraded: Upgraded, copy: Path, alter: Any, named: str) -> None:
    assert verify(copy).returncode == 0
    with databases(copy) as (txn, db):
        alter(txn, db, upgraded.ids)
    out = altered(copy)
    assert named in out, out
    assert NOTE not in out

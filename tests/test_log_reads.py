"""Reads whose cost does not grow with the log: `airlock log`'s filters answered from the indexes,
the attribute index checked by verify and filled for an older log, `show` reading only its
action, and GET /v1/actions paged by cursor."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lmdb
import pytest
import requests

from store import ActionRef, Altered, ChainReport, Log, Query, Record, State, attrs
from store.links import linked
from store.query import newest
from store.view import View

from .support import AIRLOCK, Airlock, Upstream, interruptible

RULES = """\
version: 1
egress:
  allow: [localhost, 127.0.0.1]
rules:
  - id: no-item-deletes
    match: {method: DELETE, path: "/items/*"}
    action: deny
    message: items are never deleted by agents
"""

# (agent, host, method, path): three agents, two hosts, one rule that denies.
TRAFFIC = [
    ("alice", "127.0.0.1", "GET", "/a/1"),
    ("bob", "localhost", "POST", "/b/1"),
    ("alice", "localhost", "DELETE", "/items/1"),
    ("carol", "127.0.0.1", "GET", "/c/1"),
    ("bob", "127.0.0.1", "DELETE", "/items/2"),
    ("alice", "127.0.0.1", "POST", "/a/2"),
    ("bob", "localhost", "GET", "/b/2"),
    ("alice", "localhost", "GET", "/a/3"),
    ("carol", "localhost", "DELETE", "/items/3"),
    ("alice", "127.0.0.1", "DELETE", "/items/4"),
]


@pytest.fixture
def traffic(make_airlock: Callable[..., Airlock], upstream: Upstream) -> Airlock:
    """An `airlock run` that carried TRAFFIC, in order, to one upstream by two names."""
    a = make_airlock(RULES)
    for agent, host, method, path in TRAFFIC:
        url = f"http://{host}:{upstream.port}{path}"
        r = requests.request(method, url, headers={"X-Airlock-Agent": agent}, proxies=a.proxies, timeout=10)
        assert r.status_code == (403 if method == "DELETE" else 200), (url, r.status_code)
    return a


def listing(a: Airlock, *args: str) -> list[dict[str, Any]]:
    """`airlock log --json ARGS`."""
    return [json.loads(line) for line in a.cli("log", "--json", *args).stdout.splitlines()]


def test_each_filter_lists_exactly_the_matching_actions_newest_last(traffic: Airlock) -> None:
    everything = traffic.log()  # --all: checked against the whole chain
    assert [x["id"] for x in everything] == list(range(1, len(TRAFFIC) + 1))
    assert {x["agent"] for x in everything} == {"alice", "bob", "carol"}
    cases: list[tuple[tuple[str, ...], Callable[[dict[str, Any]], bool]]] = [
        ((), lambda x: True),
        (("--agent", "alice"), lambda x: x["agent"] == "alice"),
        (("--agent", "nobody"), lambda x: False),
        (("--host", "localhost"), lambda x: x["host"] == "localhost"),
        (("--rule", "no-item-deletes"), lambda x: x["rule"] == "no-item-deletes"),
        (("--state", "denied"), lambda x: x["state"] == "denied"),
        (
            ("--agent", "alice", "--host", "localhost"),
            lambda x: (x["agent"], x["host"]) == ("alice", "localhost"),
        ),
        (
            ("--agent", "bob", "--rule", "no-item-deletes", "--state", "denied"),
            lambda x: (x["agent"], x["rule"], x["state"]) == ("bob", "no-item-deletes", "denied"),
        ),
        (
            ("--agent", "alice", "--state", "committed"),
            lambda x: (x["agent"], x["state"]) == ("alice", "committed"),
        ),
        (("--since", everything[6]["ts"]), lambda x: x["id"] >= 7),
        (
            ("--since", everything[3]["ts"], "--agent", "alice"),
            lambda x: x["id"] >= 4 and x["agent"] == "alice",
        ),
    ]
    for args, wanted in cases:
        expected = [x for x in everything if wanted(x)]
        assert listing(traffic, *args) == expected, args
        assert listing(traffic, "--all", *args) == expected, args
        # -n keeps the newest N of them, still newest last.
        assert listing(traffic, "-n", "2", *args) == expected[-2:], args
    assert "/items/4" in traffic.cli("log", "--agent", "alice", "-n", "1").stdout


def test_follow_prints_only_the_actions_its_filters_match(traffic: Airlock, upstream: Upstream) -> None:
    proc = subprocess.Popen(
        [AIRLOCK, "log", "--follow", "--json", "-n", "1", "--agent", "bob", "--data", str(traffic.data)],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=interruptible,
    )
    lines: queue.Queue[dict[str, Any]] = queue.Queue()
    stdout = proc.stdout
    assert stdout is not None

    def read() -> None:
        for line in stdout:
            lines.put(json.loads(line))

    threading.Thread(target=read, daemon=True).start()
    try:
        assert lines.get(timeout=30)["url"].endswith("/b/2")  # the listing: bob's newest
        # Written after the follower started; alice's first, so a line for it would come first.
        for agent, path in (("alice", "/a/9"), ("bob", "/b/9")):
            r = requests.get(
                f"{upstream.url}{path}",
                headers={"X-Airlock-Agent": agent},
                proxies=traffic.proxies,
                timeout=10,
            )
            assert r.status_code == 200
        seen = [lines.get(timeout=30)]
        while seen[-1]["state"] != "committed":
            seen.append(lines.get(timeout=30))
        assert {(x["agent"], x["url"]) for x in seen} == {("bob", f"{upstream.url}/b/9")}, seen
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(15)
    assert proc.returncode == 0


def test_a_bad_since_or_count_is_one_line_naming_it(traffic: Airlock) -> None:
    for args, said in ((("--since", "yesterday"), "--since 'yesterday'"), (("-n", "0"), "-n 0")):
        proc = subprocess.run(
            [AIRLOCK, "log", *args, "--data", str(traffic.data)], capture_output=True, text=True, timeout=30
        )
        assert proc.returncode == 2 and said in proc.stderr and len(proc.stderr.splitlines()) == 1, proc


def test_the_control_api_pages_newest_first_by_cursor(traffic: Airlock) -> None:
    auth = {"Authorization": f"Bearer {traffic.token}"}
    everything = traffic.log()

    def pages(**params: str) -> Iterator[list[dict[str, Any]]]:
        query: dict[str, str] = dict(params)
        while True:
            r = requests.get(f"{traffic.control}/v1/actions", params=query, headers=auth, timeout=30)
            assert r.status_code == 200, r.text
            yield r.json()["actions"]
            if r.json()["next"] is None:
                return
            query["before"] = str(r.json()["next"])

    seen = [x["id"] for page in pages(limit="3") for x in page]
    assert seen == list(range(len(TRAFFIC), 0, -1))
    assert [len(p) for p in pages(limit="5")] == [5, 5]
    alice = [x["id"] for page in pages(limit="2", agent="alice") for x in page]
    assert alice == [x["id"] for x in reversed(everything) if x["agent"] == "alice"]
    denied_local = [x["id"] for page in pages(limit="1", state="denied", host="localhost") for x in page]
    assert denied_local == [
        x["id"] for x in reversed(everything) if (x["state"], x["host"]) == ("denied", "localhost")
    ]
    since = [x["id"] for page in pages(since=everything[7]["ts"]) for x in page]
    assert since == [10, 9, 8]
    bad = requests.get(f"{traffic.control}/v1/actions", params={"since": "soon"}, headers=auth, timeout=30)
    assert bad.status_code == 400 and "since" in bad.json()["message"]
    mixed = requests.get(
        f"{traffic.control}/v1/actions", params={"after": "0", "agent": "x"}, headers=auth, timeout=30
    )
    assert mixed.status_code == 400 and "after" in mixed.json()["message"]


# ---- the attribute index, as the store keeps and checks it ---------------------------------


def intents(log: Log, count: int, agent: Callable[[int], str]) -> None:
    """`count` actions opened through the store, action i by agent(i), every 7th denied by a rule."""
    for i in range(1, count + 1):
        denied = i % 7 == 0
        log.append_soon(
            Record(
                kind="intent",
                action=ActionRef(),
                state=State.DENIED if denied else State.PENDING,
                new_action=True,
                summary={"agent": agent(i), "host": f"h{i % 3}.test", "rule": "r" if denied else None},
            )
        )
    log.append_blocking(Record(kind="note"))


@pytest.fixture
def small_log(tmp_path: Path) -> Path:
    log = Log.open(tmp_path / "log")
    log.start()
    intents(log, 30, lambda i: f"agent-{i % 4}")
    log.close()
    return tmp_path / "log"


@contextmanager
def reading(path: Path) -> Iterator[Log]:
    """The log at `path` opened read-only, closed afterwards (LMDB opens a file once a process)."""
    log = Log.open(path, readonly=True)
    try:
        yield log
    finally:
        log.close()


def verified(path: Path) -> ChainReport:
    with reading(path) as log:
        return log.verify()


def attrs_rows(path: Path) -> list[bytes]:
    env = lmdb.open(str(path), max_dbs=16, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return [bytes(k) for k in txn.cursor(db=env.open_db(b"attrs", txn=txn)).iternext(values=False)]
    finally:
        env.close()


def k(n: int) -> bytes:
    return n.to_bytes(8, "big")


@pytest.mark.parametrize(
    "change",
    ["row added", "row removed", "value changed", "action moved"],
)
def test_verify_names_an_attribute_row_added_removed_or_changed(small_log: Path, change: str) -> None:
    assert verified(small_log).ok
    env = lmdb.open(str(small_log), max_dbs=16)
    with env.begin(write=True) as txn:
        db = env.open_db(b"attrs", txn=txn)
        if change == "row added":
            txn.put(b"agent\0agent-1\0" + k(2), b"", db=db)
        elif change == "row removed":
            assert txn.delete(b"agent\0agent-1\0" + k(5), db=db)
        elif change == "value changed":
            assert txn.delete(b"host\0h1.test\0" + k(4), db=db)
            txn.put(b"host\0h2.test\0" + k(4), b"", db=db)
        else:
            assert txn.delete(b"rule\0r\0" + k(14), db=db)
            txn.put(b"rule\0r\0" + k(15), b"", db=db)
    env.close()
    report = verified(small_log)
    assert not report.ok and report.reason.startswith("attrs index:"), report
    named = {
        "row added": "action 2",
        "row removed": "action 5",
        "value changed": "action 4",
        "action moved": "14",
    }
    assert named[change] in report.reason, report.reason
    # A listing through the index names what its entries disagree with, rather than print it.
    if change in ("row added", "value changed"):
        query = Query(agent="agent-1") if change == "row added" else Query(host="h2.test")
        with reading(small_log) as log, pytest.raises(Altered, match=r"action (2|4)\b"):
            log.newest(query)


def test_an_older_log_without_the_index_is_read_and_a_writer_fills_it(
    small_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wanted = Query(agent="agent-2", limit=3)
    with reading(small_log) as log:
        before = [x["id"] for x in log.newest(wanted)]
    assert before == [30, 26, 22]
    # As an older airlock left it: no attribute database and no record of one.
    env = lmdb.open(str(small_log), max_dbs=16)
    with env.begin(write=True) as txn:
        txn.drop(env.open_db(b"attrs", txn=txn), delete=True)
        assert txn.delete(b"attrs", db=env.open_db(b"meta", txn=txn))
    env.close()
    with reading(small_log) as old:
        assert [x["id"] for x in old.newest(wanted)] == before  # read without the index
        assert [x["id"] for x in old.newest(Query(rule="r", state="denied", limit=None))] == [28, 21, 14, 7]
        assert old.verify().ok
    monkeypatch.setattr(attrs, "FILL_STEP", 8)  # four transactions
    writer = Log.open(small_log)
    writer.start()  # fills the index once
    writer.close()
    assert len(attrs_rows(small_log)) == 30 * 2 + 4  # agent and host each, a rule for the denied
    with reading(small_log) as log:
        assert [x["id"] for x in log.newest(wanted)] == before and log.verify().ok


# ---- what a read costs -----------------------------------------------------------------------


class CountingCursor:
    """A cursor that counts each record it moves to (a stand-in for LMDB's own page reads,
    which no counter of LMDB exposes to Python)."""

    def __init__(self, cursor: lmdb.Cursor, counter: list[int]):
        self._cursor = cursor
        self._counter = counter

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._cursor, name)
        if name in ("set_range", "set_key", "first", "last", "next", "prev"):

            def moved(*args: Any, **kwargs: Any) -> Any:
                self._counter[0] += 1
                return found(*args, **kwargs)

            return moved
        if name in ("iternext", "iterprev", "__iter__"):

            def each(*args: Any, **kwargs: Any) -> Iterator[Any]:
                for item in found(*args, **kwargs):
                    self._counter[0] += 1
                    yield item

            return each
        return found

    def __iter__(self) -> Iterator[Any]:
        for item in self._cursor:
            self._counter[0] += 1
            yield item


class CountingTxn:
    """A read transaction that counts every record read through it."""

    def __init__(self, txn: lmdb.Transaction):
        self._txn = txn
        self.reads = [0]

    def get(self, *args: Any, **kwargs: Any) -> Any:
        self.reads[0] += 1
        return self._txn.get(*args, **kwargs)

    def cursor(self, *args: Any, **kwargs: Any) -> CountingCursor:
        return CountingCursor(self._txn.cursor(*args, **kwargs), self.reads)


@pytest.fixture(scope="module")
def long_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5000 actions: agent `rare` opens every 250th, `busy` the rest."""
    path = tmp_path_factory.mktemp("long") / "log"
    log = Log.open(path)
    log.start()
    intents(log, 5000, lambda i: "rare" if i % 250 == 0 else "busy")
    log.close()
    return path


def reads(path: Path, read: Callable[[View], object]) -> int:
    """How many records `read` reads through a View of the log at `path`."""
    env = lmdb.open(str(path), max_dbs=16, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            dbs = {
                name: env.open_db(name, txn=txn)
                for name in (b"entries", b"actions", b"states", b"meta", b"keys", b"attrs")
            }
            counting = CountingTxn(txn)
            read(View(counting, dbs))  # type: ignore[arg-type]
            return counting.reads[0]
    finally:
        env.close()


def test_a_filtered_listing_reads_what_it_prints_not_the_log(long_log: Path) -> None:
    def listed(query: Query) -> Callable[[View], object]:
        return lambda view: [x["id"] for x in newest(view, query)]

    assert reads(long_log, listed(Query(agent="rare", limit=5))) < 60
    # Three sets intersected: the seeks follow the smallest (`rare`, one action in 250).
    assert reads(long_log, listed(Query(agent="rare", rule="r", state="denied", limit=2))) < 150
    assert reads(long_log, listed(Query(limit=5))) < 40
    assert reads(long_log, listed(Query(limit=5, since=0.0))) < 80  # a binary search: ~13 steps
    # Twice as many printed, about twice the reads: what grows is the answer.
    five, ten = (reads(long_log, listed(Query(agent="rare", limit=n))) for n in (5, 10))
    assert ten <= 2 * five + 4
    with reading(long_log) as log:
        assert [x["id"] for x in log.newest(Query(agent="rare", limit=5))] == [5000, 4750, 4500, 4250, 4000]
        assert [x["id"] for x in log.newest(Query(agent="rare", rule="r", limit=2))] == [3500, 1750]


def test_show_reads_only_its_action_and_its_neighbours(long_log: Path) -> None:
    def shown(view: View) -> object:
        index = view.action(10)
        assert index is not None
        entries = [e for seq in index["entries"] if (e := view.entry(seq)) is not None]
        linked(view, entries)  # and the neighbours each links to
        return entries

    assert reads(long_log, shown) < 12
    with reading(long_log) as log:
        found = log.action_entries(10)
    assert found is not None and [e.seq for e in found[1]] == found[0]["entries"]

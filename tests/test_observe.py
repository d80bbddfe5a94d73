"""Watching a real `airlock run`: /readyz, /metrics (Prometheus text), /v1/events (server-sent
events of new log entries) and the logging of refused control API requests."""

from __future__ import annotations

import asyncio
import json
import resource
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from proxy.core.reload import RulesReloader
from proxy.ops import events as events_module
from proxy.ops import tail as tail_module
from proxy.ops.control import make_app
from rules import Ruleset
from store import Log, Record

from .support import RULES, Airlock, Upstream, entries_now, settle, wait_for


def auth(a: Airlock) -> dict[str, str]:
    return {"Authorization": f"Bearer {a.token}"}


def through(a: Airlock) -> requests.Session:
    s = requests.Session()
    s.proxies = a.proxies
    return s


# ---- server-sent events, read the way a client reads them -------------------------------------


def sse_events(lines: Iterator[str]) -> Iterator[dict[str, str]]:
    """Events from the stream's lines: each a dict of its fields (comments skipped)."""
    fields: dict[str, str] = {}
    for line in lines:
        if not line:
            if fields:
                yield fields
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")


class Watching:
    """A requests stream of /v1/events, read event by event."""

    def __init__(self, a: Airlock, last_event_id: int | None = None):
        headers = auth(a) | ({} if last_event_id is None else {"Last-Event-ID": str(last_event_id)})
        self.response = requests.get(f"{a.control}/v1/events", headers=headers, stream=True, timeout=30)
        assert self.response.status_code == 200, self.response.text
        assert self.response.headers["Content-Type"] == "text/event-stream"
        self._events = sse_events(self.response.iter_lines(decode_unicode=True))

    def entries(self, n: int) -> list[dict[str, Any]]:
        """The next `n` entries, each checked to carry its sequence number as its event id."""
        out = []
        for _ in range(n):
            ev = next(self._events)
            assert "event" not in ev, ev
            entry = json.loads(ev["data"])
            assert int(ev["id"]) == entry["seq"]
            out.append(entry)
        return out

    def close(self) -> None:
        self.response.close()


def all_entries(a: Airlock) -> list[dict[str, Any]]:
    """Every entry of the log, read through /v1/events from the start."""
    head = entries_now(a)
    w = Watching(a, last_event_id=0)
    try:
        return w.entries(head)
    finally:
        w.close()


# ---- readiness --------------------------------------------------------------------------------


def test_readyz_needs_no_token_and_says_ready(airlock: Airlock) -> None:
    r = requests.get(f"{airlock.control}/readyz", timeout=10)
    assert r.status_code == 200 and r.json() == {"ready": True}


def test_readyz_is_503_while_the_log_cannot_be_written(airlock: Airlock, upstream: Upstream) -> None:
    """The data file may not grow (RLIMIT_FSIZE on the running proxy): writes fail, /readyz
    says so; once it may grow again, the next commit makes it ready."""
    s = through(airlock)
    assert s.get(f"{upstream.url}/before", timeout=10).status_code == 200
    assert airlock.proc is not None
    pid = airlock.proc.pid
    size = (airlock.data / "log" / "data.mdb").stat().st_size
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (size, resource.RLIM_INFINITY))
    try:
        statuses = []
        for i in range(200):
            r = s.post(f"{upstream.url}/big/{i}", data=b"x" * 60_000, timeout=10)
            statuses.append(r.status_code)
            if r.status_code == 503:
                break
        assert statuses[-1] == 503, statuses
        r = requests.get(f"{airlock.control}/readyz", timeout=10)
        assert r.status_code == 503, r.text
        assert r.json()["error"] == "not_ready"
        assert r.json()["message"].startswith("the log cannot be written: ")
    finally:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    assert s.get(f"{upstream.url}/after", timeout=10).status_code == 200
    assert requests.get(f"{airlock.control}/readyz", timeout=10).status_code == 200


# ---- metrics ----------------------------------------------------------------------------------


def scrape(a: Airlock) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, by name and labels, parsed as Prometheus parses it."""
    r = requests.get(f"{a.control}/metrics", headers=auth(a), timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def actions(state: str, effect: str, rule: str = "") -> tuple[str, tuple[tuple[str, str], ...]]:
    return (
        "airlock_actions_total",
        (("effect", effect), ("protocol", "http"), ("rule", rule), ("state", state)),
    )


def test_metrics_count_real_traffic(airlock: Airlock, upstream: Upstream) -> None:
    assert requests.get(f"{airlock.control}/metrics", timeout=10).status_code == 401
    s = through(airlock)
    assert s.get(f"{upstream.url}/one", timeout=10).status_code == 200
    assert s.get(f"{upstream.url}/two", timeout=10).status_code == 200
    assert s.post(f"{upstream.url}/three", json={"n": 3}, timeout=10).status_code == 200
    assert s.delete(f"{upstream.url}/items/4", timeout=10).status_code == 403
    expected = {
        actions("pending", "read"): 2,
        actions("committed", "read"): 2,
        actions("pending", "write"): 1,
        actions("committed", "write"): 1,
        actions("denied", "destructive", "no-item-deletes"): 1,
    }
    wait_for(
        lambda: all(scrape(airlock).get(k) == v for k, v in expected.items()),
        "the metrics count every action the log holds",
    )
    m = scrape(airlock)
    assert sum(v for (name, _), v in m.items() if name == "airlock_actions_total") == 7
    assert m[("airlock_decision_seconds_count", (("verdict", "allow"),))] == 3
    assert m[("airlock_decision_seconds_count", (("verdict", "deny"),))] == 1
    assert m[("airlock_log_commit_seconds_count", ())] >= 3  # the rules, and at least two intents
    assert m[("airlock_log_commit_failures_total", ())] == 0
    assert m[("airlock_held_actions", ())] == 0
    assert m[("airlock_frozen", ())] == 0
    assert m[("airlock_control_unauthorized_total", ())] == 1
    assert m[("airlock_rules_reloads_total", ())] == 0

    reload = f"{airlock.control}/v1/rules/reload"
    airlock.rules.write_text("version: 1\nrules: [{id: broken}]\n")
    assert requests.post(reload, headers=auth(airlock), timeout=10).status_code == 422
    airlock.rules.write_text(RULES + "  - {id: reads-logged, match: {method: GET}, action: log}\n")
    assert requests.post(reload, headers=auth(airlock), timeout=10).status_code == 200
    m = scrape(airlock)
    assert m[("airlock_rules_reload_failures_total", ())] == 1
    assert m[("airlock_rules_reloads_total", ())] == 1


# ---- events -----------------------------------------------------------------------------------


def test_events_arrive_live_and_resume_without_gaps_or_repeats(airlock: Airlock, upstream: Upstream) -> None:
    s = through(airlock)
    watching = Watching(airlock)
    start = entries_now(airlock)
    assert s.get(f"{upstream.url}/one", timeout=10).status_code == 200
    assert s.delete(f"{upstream.url}/items/2", timeout=10).status_code == 403
    live = watching.entries(3)  # intent and outcome of the GET, the denied DELETE's intent
    assert [e["seq"] for e in live] == [start + 1, start + 2, start + 3]
    assert sorted((e["kind"], e["state"]) for e in live) == [
        ("intent", "denied"),
        ("intent", "pending"),
        ("outcome", "committed"),
    ]
    watching.close()

    # While nobody watches, the log goes on.
    assert s.post(f"{upstream.url}/three", json={"n": 3}, timeout=10).status_code == 200
    settle(airlock, start + 5)

    resumed = Watching(airlock, last_event_id=live[-1]["seq"])
    missed = resumed.entries(2)
    assert [e["seq"] for e in missed] == [start + 4, start + 5]
    assert missed[0]["data"]["action"]["url"] == f"{upstream.url}/three"
    assert s.get(f"{upstream.url}/four", timeout=10).status_code == 200
    after = resumed.entries(2)
    assert [e["seq"] for e in after] == [start + 6, start + 7]
    resumed.close()
    # Every entry, each once, equal to what the log holds.
    assert all_entries(airlock)[start:] == live + missed + after


@pytest.mark.asyncio
async def test_events_with_aiohttp_and_many_watchers(airlock: Airlock, upstream: Upstream) -> None:
    """Ten watchers at once each get every new entry, in order."""
    start = entries_now(airlock)

    async def watch(session: aiohttp.ClientSession, ready: asyncio.Event, n: int) -> list[int]:
        async with session.get(f"{airlock.control}/v1/events", headers=auth(airlock)) as r:
            assert r.status == 200
            ready.set()
            seqs: list[int] = []
            async for raw in r.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("id: "):
                    seqs.append(int(line[4:]))
                    if len(seqs) == n:
                        return seqs
        return seqs

    async with aiohttp.ClientSession() as session:
        readies = [asyncio.Event() for _ in range(10)]
        tasks = [asyncio.create_task(watch(session, ready, 4)) for ready in readies]
        await asyncio.gather(*(ready.wait() for ready in readies))
        async with aiohttp.ClientSession() as agent:
            for path in ("/a", "/b"):
                async with agent.get(f"{upstream.url}{path}", proxy=airlock.proxy) as r:
                    assert r.status == 200
        got = await asyncio.wait_for(asyncio.gather(*tasks), 30)
    assert got == [[start + 1, start + 2, start + 3, start + 4]] * 10


def test_a_bad_last_event_id_is_a_bad_request(airlock: Airlock) -> None:
    r = requests.get(
        f"{airlock.control}/v1/events", headers=auth(airlock) | {"Last-Event-ID": "yesterday"}, timeout=10
    )
    assert r.status_code == 400 and "Last-Event-ID" in r.json()["message"]


@pytest.fixture
def control_app(tmp_path: Path) -> Iterator[tuple[Log, Callable[[], Any]]]:
    """The control API in this process over a real log (so a watcher's buffer can be made small)."""
    (tmp_path / "rules.yaml").write_text(RULES)
    log = Log.open(tmp_path / "log")
    log.start()
    ruleset = Ruleset.load(tmp_path / "rules.yaml")
    try:
        yield (
            log,
            lambda: make_app(log, "secret", RulesReloader(tmp_path / "rules.yaml", log, print, ruleset)),
        )
    finally:
        log.close()


@pytest.mark.asyncio
async def test_a_watcher_that_falls_behind_is_dropped_and_told_where_to_resume(
    control_app: tuple[Log, Callable[[], Any]],
    aiohttp_client: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A watcher that does not read while the log grows is dropped (the writer never waits for
    it), is told the id to resume from, and resuming from it misses nothing."""
    monkeypatch.setattr(events_module, "BUFFER", 4)
    monkeypatch.setattr(tail_module, "CHUNK", 2)  # a batch always fits an empty buffer
    log, app = control_app
    client = await aiohttp_client(app())
    headers = {"Authorization": "Bearer secret"}
    written = 0
    async with client.get("/v1/events", headers=headers) as r:
        assert r.status == 200
        # Entries of 100 kB until the socket's buffers are full and the watcher's too.
        for _ in range(400):
            await log.append(Record(kind="note", data={"text": "x" * 100_000}))
            written += 1
        text = (await r.content.read()).decode()
    blocks = [b for b in text.split("\n\n") if b and not b.startswith(":")]
    assert blocks[-1].startswith("event: dropped\n")
    notice = json.loads(blocks[-1].split("data: ", 1)[1])
    seqs = [int(b.split("\n")[0].removeprefix("id: ")) for b in blocks[:-1]]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) < written
    assert notice["error"] == "too_slow" and notice["last_event_id"] == seqs[-1]

    resumed: list[int] = []
    async with client.get("/v1/events", headers=headers | {"Last-Event-ID": str(seqs[-1])}) as r:
        async for raw in r.content:
            line = raw.decode()
            if line.startswith("id: "):
                resumed.append(int(line[4:]))
                if resumed[-1] == written:
                    break
    assert resumed == list(range(seqs[-1] + 1, written + 1))


# ---- refused control API requests -------------------------------------------------------------


def test_refused_requests_are_logged_without_the_token(airlock: Airlock) -> None:
    base = airlock.control
    assert requests.get(f"{base}/v1/events", timeout=10).status_code == 401
    wrong = "not-the-token-" + airlock.token[::-1]
    assert (
        requests.get(f"{base}/metrics", headers={"Authorization": f"Bearer {wrong}"}, timeout=10).status_code
        == 401
    )
    r = requests.post(f"{base}/v1/rules/reload", headers={"Authorization": f"Basic {wrong}"}, timeout=10)
    assert r.status_code == 401
    settle(airlock, 4)
    refused = [e for e in all_entries(airlock) if e["kind"] == "unauthorized"]
    assert [(e["action"], e["data"]) for e in refused] == [
        (
            None,
            {
                "method": "GET",
                "path": "/v1/events",
                "remote": "127.0.0.1",
                "credential": "none",
                "unlogged": 0,
            },
        ),
        (
            None,
            {
                "method": "GET",
                "path": "/metrics",
                "remote": "127.0.0.1",
                "credential": "wrong",
                "unlogged": 0,
            },
        ),
        (
            None,
            {
                "method": "POST",
                "path": "/v1/rules/reload",
                "remote": "127.0.0.1",
                "credential": "malformed",
                "unlogged": 0,
            },
        ),
    ]
    text = json.dumps(refused)
    assert wrong not in text and airlock.token not in text


def test_a_flood_of_refused_requests_cannot_fill_the_log(airlock: Airlock) -> None:
    for _ in range(50):
        assert requests.get(f"{airlock.control}/v1/actions", timeout=10).status_code == 401
    logged = [e for e in all_entries(airlock) if e["kind"] == "unauthorized"]
    assert 10 <= len(logged) < 50  # the burst, and at most what refilled meanwhile (1 in 6 s)
    counted = scrape(airlock)[("airlock_control_unauthorized_total", ())]
    assert counted == 50


def test_the_next_logged_refusal_says_how_many_were_not(tmp_path: Path) -> None:
    """Rate limiting with a clock the test moves (the log is real)."""
    from proxy.ops.unauthorized import BURST, WINDOW, UnauthorizedLog

    log = Log.open(tmp_path / "log")
    log.start()
    now = [0.0]
    try:
        refusals = UnauthorizedLog(log, clock=lambda: now[0])
        assert [refusals.refused("GET", "/x", "127.0.0.1", "none") for _ in range(BURST + 5)] == [
            True
        ] * BURST + [False] * 5
        now[0] += WINDOW / BURST
        assert refusals.refused("GET", "/y", "127.0.0.1", "wrong")
        log.append_blocking(Record(kind="note"))  # shares or follows the lazy commit
        logged = [e for e in log.entries() if e.kind == "unauthorized"]
        assert len(logged) == BURST + 1
        assert logged[-1].data["unlogged"] == 5 and logged[-1].data["path"] == "/y"
    finally:
        log.close()


HOLD_RULES = """\
version: 1
egress: {allow: [127.0.0.1]}
rules:
  - id: careful-deletes
    match: {method: DELETE, path: "/items/*"}
    action: hold
    message: deletions wait for a person
    hold: {wait: 0s, timeout: 10m}
"""


def test_metrics_follow_holds_votes_and_the_freeze(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    a = make_airlock(rules=HOLD_RULES)
    r = requests.delete(f"{upstream.url}/items/1", proxies=a.proxies, timeout=10)
    assert r.status_code == 503 and r.json()["error"] == "held"
    action_id = r.json()["action_id"]
    held = (
        "airlock_actions_total",
        (("effect", "destructive"), ("protocol", "http"), ("rule", "careful-deletes"), ("state", "held")),
    )
    wait_for(lambda: scrape(a).get(held) == 1, "the metrics count the held action")
    assert scrape(a)[("airlock_held_actions", ())] == 1

    a.cli("approve", str(action_id), "--voter", "alice", "--reason", "fine")
    approved = ("airlock_votes_total", (("vote", "approve"), ("voter", "alice")))
    wait_for(lambda: scrape(a).get(approved) == 1, "the metrics count alice's vote")
    m = scrape(a)
    assert m[("airlock_hold_decision_seconds_count", (("decision", "commit"),))] == 1
    assert m[("airlock_held_actions", ())] == 0

    a.cli("freeze", "--reason", "incident")
    assert scrape(a)[("airlock_frozen", ())] == 1
    a.cli("thaw")
    assert scrape(a)[("airlock_frozen", ())] == 0

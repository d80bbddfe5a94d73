"""The control API of a real `airlock run`, driven with requests: health, auth, actions, resolve, verify."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from proxy.cli import build_parser

from .support import (
    Airlock,
    Upstream,
    entries_now,
    hold_and_crash,
    plain_upstream,
    started_airlock,
    wait_for,
)
from .support.outcomes import final, settled


def auth(a: Airlock) -> dict[str, str]:
    return {"Authorization": f"Bearer {a.token}"}


@dataclass
class Served:
    """A running proxy whose log holds four actions: committed GET, committed POST, denied DELETE,
    committed GET; nothing else adds to it."""

    airlock: Airlock
    upstream: Upstream

    def get(self, path: str, **kw: Any) -> requests.Response:
        kw.setdefault("headers", auth(self.airlock))
        return requests.get(f"{self.airlock.control}{path}", timeout=10, **kw)

    def post(self, path: str, **kw: Any) -> requests.Response:
        kw.setdefault("headers", auth(self.airlock))
        return requests.post(f"{self.airlock.control}{path}", timeout=10, **kw)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with plain_upstream() as up:
        a = started_airlock(tmp_path_factory.mktemp("control"))
        try:
            s = requests.Session()
            s.proxies = a.proxies
            assert s.get(f"{up.url}/one", timeout=10).status_code == 200
            assert s.post(f"{up.url}/two", json={"n": 2}, timeout=10).status_code == 200
            assert s.delete(f"{up.url}/items/3", timeout=10).status_code == 403
            assert s.get(f"{up.url}/four", timeout=10).status_code == 200
            settled(a)  # every outcome is written
            assert entries_now(a) == 8
            yield Served(a, up)
        finally:
            a.stop(signal.SIGKILL)


@pytest.fixture(scope="module")
def refusing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Airlock]:
    """A running proxy whose log holds one committed GET, for the refused requests: each of them
    is logged (tests/test_observe.py), so they stay out of `served`'s log."""
    with plain_upstream() as up:
        a = started_airlock(tmp_path_factory.mktemp("refusing"))
        try:
            s = requests.Session()
            s.proxies = a.proxies
            assert s.get(f"{up.url}/one", timeout=10).status_code == 200
            settled(a)
            yield a
        finally:
            a.stop(signal.SIGKILL)


# ---- health and auth ------------------------------------------------------------------------


def test_healthz_needs_no_token(served: Served) -> None:
    r = requests.get(f"{served.airlock.control}/healthz", timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
    assert r.json() == {"ok": True, "entries": 8}


@pytest.mark.parametrize(
    "header",
    [None, "Bearer wrong", "Bearer {token}x", "{token}", "Basic {token}", "Bearer"],
    ids=["none", "wrong", "longer", "no-scheme", "basic", "empty"],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/actions"),
        ("GET", "/v1/actions/1"),
        ("GET", "/v1/verify"),
        ("POST", "/v1/actions/1/resolve"),
    ],
)
def test_everything_but_healthz_needs_the_token(
    refusing: Airlock, header: str | None, method: str, path: str
) -> None:
    headers = {} if header is None else {"Authorization": header.format(token=refusing.token)}
    r = requests.request(
        method, f"{refusing.control}{path}", headers=headers, json={"executed": True}, timeout=10
    )
    assert r.status_code == 401
    body = r.json()
    assert body["error"] == "unauthorized" and refusing.token not in r.text


def test_a_refused_resolve_changes_no_action(refusing: Airlock) -> None:
    r = requests.post(f"{refusing.control}/v1/actions/1/resolve", json={"executed": False}, timeout=10)
    assert r.status_code == 401
    assert [(x["id"], x["state"]) for x in refusing.log()] == [(1, "committed")]


# ---- listing and showing actions ------------------------------------------------------------


def test_actions_lists_every_action_oldest_first(served: Served) -> None:
    r = served.get("/v1/actions", params={"after": "0"})
    assert r.status_code == 200
    actions = r.json()["actions"]
    up = served.upstream.url
    assert [(x["id"], x["method"], x["url"], x["state"]) for x in actions] == [
        (1, "GET", f"{up}/one", "committed"),
        (2, "POST", f"{up}/two", "committed"),
        (3, "DELETE", f"{up}/items/3", "denied"),
        (4, "GET", f"{up}/four", "committed"),
    ]
    assert actions[2]["rule"] == "no-item-deletes" and actions[1]["status"] == 200


def test_actions_filter_by_state(served: Served) -> None:
    denied = served.get("/v1/actions", params={"state": "denied"}).json()["actions"]
    committed = served.get("/v1/actions", params={"state": "committed", "after": "0"}).json()["actions"]
    in_doubt = served.get("/v1/actions", params={"state": "in_doubt"}).json()["actions"]
    assert [x["id"] for x in denied] == [3]
    assert [x["id"] for x in committed] == [1, 2, 4]
    assert in_doubt == []


def test_actions_limit_and_after(served: Served) -> None:
    assert [x["id"] for x in served.get("/v1/actions", params={"limit": "1"}).json()["actions"]] == [4]
    page = served.get("/v1/actions", params={"after": "1", "limit": "2"}).json()["actions"]
    assert [x["id"] for x in page] == [2, 3]
    page = served.get("/v1/actions", params={"after": "2", "state": "committed"}).json()["actions"]
    assert [x["id"] for x in page] == [4]
    assert served.get("/v1/actions", params={"after": "4"}).json()["actions"] == []
    bad = served.get("/v1/actions", params={"limit": "many"})
    assert bad.status_code == 400
    assert bad.json()["error"] == "bad_request" and "limit" in bad.json()["message"]


@pytest.mark.parametrize("limit", ["0", "-1", "99999999999999999999"])
def test_a_limit_below_one_or_too_large_is_a_bad_request(served: Served, limit: str) -> None:
    """A page of nothing would read as an empty log: `limit=0` is refused, saying what to send."""
    r = served.get("/v1/actions", params={"limit": limit})
    assert r.status_code == 400
    assert r.json() == {"error": "bad_request", "message": f"limit must be between 1 and {(1 << 63) - 1}"}


@pytest.mark.parametrize("after", ["-5", "99999999999999999999"])
def test_actions_out_of_range_after_is_a_bad_request(served: Served, after: str) -> None:
    r = served.get("/v1/actions", params={"after": after})
    assert r.status_code == 400 and r.json()["error"] == "bad_request"


def test_show_action_has_its_entries(served: Served) -> None:
    r = served.get("/v1/actions/2")
    assert r.status_code == 200
    shown = r.json()
    assert shown["action"]["id"] == 2 and shown["action"]["state"] == "committed"
    intent, outcome = shown["entries"]
    assert (intent["kind"], intent["state"], intent["action"]) == ("intent", "pending", 2)
    assert intent["data"]["action"]["url"] == f"{served.upstream.url}/two"
    assert intent["data"]["action"]["body"]["text"] == '{"n": 2}'
    assert (outcome["kind"], outcome["state"], outcome["data"]["status"]) == ("outcome", "committed", 200)
    assert outcome["prev"] == intent["hash"]
    denied = served.get("/v1/actions/3").json()
    assert [e["kind"] for e in denied["entries"]] == ["intent"]
    assert denied["entries"][0]["data"]["decision"]["rule"] == "no-item-deletes"


@pytest.mark.parametrize("action_id", ["0", "999"])
def test_show_unknown_action_is_404_json(served: Served, action_id: str) -> None:
    r = served.get(f"/v1/actions/{action_id}")
    assert r.status_code == 404
    assert r.json()["error"] == "not_found" and action_id in r.json()["message"]


def test_show_huge_action_id_is_404_json(served: Served) -> None:
    r = served.get("/v1/actions/99999999999999999999")
    assert r.status_code == 404 and r.json()["error"] == "not_found"


# ---- resolve ---------------------------------------------------------------------------------


def test_resolving_a_committed_action_is_409(served: Served) -> None:
    r = served.post("/v1/actions/1/resolve", json={"executed": True, "note": "sure"})
    assert r.status_code == 409
    assert r.json()["error"] == "conflict" and "committed" in r.json()["message"]
    r = served.post("/v1/actions/3/resolve", json={"executed": False})
    assert r.status_code == 409 and "denied" in r.json()["message"]
    assert entries_now(served.airlock) == 8


def test_resolving_an_unknown_action_is_404(served: Served) -> None:
    r = served.post("/v1/actions/999/resolve", json={"executed": True})
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    assert entries_now(served.airlock) == 8


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[]",
        b'"executed"',
        b"{}",
        b'{"executed": "yes"}',
        b'{"executed": 1}',
        b'{"executed": null}',
        b"\xff\xfe",
    ],
    ids=[
        "empty",
        "not-json",
        "list",
        "string",
        "no-executed",
        "string-executed",
        "int-executed",
        "null-executed",
        "not-utf8",
    ],
)
def test_resolve_with_a_bad_body_is_400(served: Served, body: bytes) -> None:
    headers = {**auth(served.airlock), "Content-Type": "application/json"}
    r = served.post("/v1/actions/1/resolve", data=body, headers=headers)
    assert r.status_code == 400
    assert r.json()["error"] == "bad_request" and "executed" in r.json()["message"]
    assert entries_now(served.airlock) == 8


def test_resolve_settles_in_doubt_actions(airlock: Airlock, upstream: Upstream) -> None:
    try:
        ids = hold_and_crash(airlock, upstream, ["/hold/yes", "/hold/no"])
    finally:
        upstream.release.set()
    yes, no = ids["/hold/yes"], ids["/hold/no"]
    base = f"{airlock.control}/v1/actions"

    r = requests.post(
        f"{base}/{yes}/resolve",
        json={"executed": True, "note": "saw it upstream"},
        headers=auth(airlock),
        timeout=10,
    )
    assert r.status_code == 200, r.text
    entry = r.json()["entry"]
    assert (entry["kind"], entry["action"], entry["state"]) == ("resolution", yes, "committed")
    assert entry["data"] == {"executed": True, "note": "saw it upstream", "by": "control-api"}

    r = requests.post(f"{base}/{no}/resolve", json={"executed": False}, headers=auth(airlock), timeout=10)
    assert r.status_code == 200 and r.json()["entry"]["state"] == "aborted"

    again = requests.post(f"{base}/{no}/resolve", json={"executed": True}, headers=auth(airlock), timeout=10)
    assert again.status_code == 409

    shown = requests.get(f"{base}/{yes}", headers=auth(airlock), timeout=10).json()
    assert shown["action"]["state"] == "committed" and shown["action"]["resolution"] == "executed"
    assert [e["kind"] for e in shown["entries"]] == ["intent", "recovery", "resolution"]
    states = requests.get(base, headers=auth(airlock), timeout=10).json()["actions"]
    assert {x["id"]: x["state"] for x in states} == {yes: "committed", no: "aborted"}
    # The CLI, a separate reader, sees the same.
    assert {x["id"]: x["state"] for x in airlock.log()} == {yes: "committed", no: "aborted"}
    verdict = requests.get(f"{airlock.control}/v1/verify", headers=auth(airlock), timeout=10).json()
    assert verdict["ok"] is True


def test_an_action_still_in_flight_cannot_be_resolved(airlock: Airlock, upstream: Upstream) -> None:
    done: list[requests.Response] = []
    sender = threading.Thread(
        target=lambda: done.append(
            requests.post(f"{upstream.url}/hold/in-flight", data=b"x", proxies=airlock.proxies, timeout=30)
        ),
        daemon=True,
    )
    sender.start()
    try:
        wait_for(lambda: len(upstream.effects()) == 1, "the upstream holds the request")
        [pending] = requests.get(
            f"{airlock.control}/v1/actions", params={"state": "pending"}, headers=auth(airlock), timeout=10
        ).json()["actions"]
        r = requests.post(
            f"{airlock.control}/v1/actions/{pending['id']}/resolve",
            json={"executed": True},
            headers=auth(airlock),
            timeout=10,
        )
        assert r.status_code == 409
    finally:
        upstream.release.set()
        sender.join(30)
    assert done and done[0].status_code == 200
    shown = final(airlock, pending["id"])
    assert shown["action"]["state"] == "committed"
    assert [e["kind"] for e in shown["entries"]] == ["intent", "outcome"]


# ---- verify and defaults --------------------------------------------------------------------


def test_verify_reports_ok(served: Served) -> None:
    r = served.get("/v1/verify")
    assert r.status_code == 200
    body = r.json()
    head = body.pop("head")
    assert body == {"ok": True, "checked": 8, "bad_seq": None, "reason": ""}
    assert head["seq"] == 8 and len(head["hash"]) == 64


def test_the_control_api_and_the_proxy_default_to_loopback() -> None:
    args = build_parser().parse_args(["run"])
    assert (args.control.host, args.control.port) == ("127.0.0.1", 8081)
    assert (args.listen.host, args.listen.port) == ("127.0.0.1", 8080)
    assert str(args.control) == "127.0.0.1:8081" and str(args.listen) == "127.0.0.1:8080"


def test_the_token_file_is_private(served: Served) -> None:
    token_file: Path = served.airlock.data / "control.token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert len(served.airlock.token) >= 32

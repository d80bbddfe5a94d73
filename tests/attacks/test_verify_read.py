"""A dedup rule's verify read cannot be steered by the action it is about.

The read is built from the action's own fields and sent, after a crash, with the operator's
credentials. An agent that chooses those fields (a `ClientToken` of `../admin/users/export?x=`)
must not be able to aim that read at another resource, nor make a 404 from elsewhere free its key
for a duplicate. Real proxy, real `kill -9`, a recording upstream: the upstream sees exactly the
reads meant for each action, and the log says why a read that could not be made safely was not
sent.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import suppress
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
import requests

from proxy.core import records
from proxy.core.recheck import refusal
from proxy.core.redact import Redactor
from rules import Action, Effect, parse_dedup

from ..support import AIRLOCK, Airlock, Upstream, free_port, recording_handler, wait_for

OPERATOR_TOKEN = "operator-verify-token-7f3a"

RULES = """\
version: 1
egress:
  allow: [127.0.0.1, localhost]
rules:
  - id: orders-once
    match: {method: POST, path: "/hold/orders/*"}
    dedup:
      key: "{body.ClientToken}"
      verify:
        url: "{scheme}://{host}:{port}/orders/{body.ClientToken}"
        headers: {Authorization: "Bearer ${VERIFY_TOKEN}"}
        not_executed: [404]
        delay: 0
  - id: lookups-once
    match: {method: POST, path: "/hold/lookups/*"}
    dedup:
      key: "{body.ClientToken}"
      verify:
        url: "/lookups?ref={body.ClientToken}&kind=order"
        headers: {Authorization: "Bearer ${VERIFY_TOKEN}"}
        not_executed: [404]
        delay: 0
  - id: elsewhere
    match: {method: POST, path: "/hold/elsewhere/*"}
    dedup:
      key: "{body.ClientToken}"
      verify:
        url: "http://localhost:{port}/status/404/{body.ClientToken}"
        headers: {Authorization: "Bearer ${VERIFY_TOKEN}"}
        delay: 0
"""

# ClientTokens an agent could pick to move the read: up the path, into the query or fragment,
# onto another host, or across header lines. The conftest upstream answers 404 to /status/404...,
# so a read steered there would "prove" the order never ran and free its key for a duplicate.
STEERING = {
    "dots": "../status/404",
    "encoded-dots": "%2e%2e%2fstatus%2f404",
    "mixed-dots": "..%2Fstatus%2F404",
    "double-encoded": "%252e%252e%252fstatus%252f404",
    "backslash": "..\\status\\404",
    "bare-dots": "..",
    "full-url": "http://127.0.0.1:1/status/404",
}
# Tokens that stay one path segment once encoded: their read is sent, to the intended path only.
ENCODED = {
    "query": "a?next=status&all=true",
    "fragment": "b#frag",
    "userinfo": "@evil.example",
    "crlf": "c\r\nX-Injected: 1",
    "spaces-and-amps": "d e&f=g",
}
# In a query value even a path is harmless once encoded.
QUERY_VALUES = ENCODED | {"dots": "../status/404", "full-url": "http://127.0.0.1:1/status/404"}


def crash_with(a: Airlock, up: Upstream, posts: dict[str, dict[str, Any]]) -> dict[str, int]:
    """POST each body to its /hold path, wait until the upstream holds them all, SIGKILL the proxy,
    start it again on the same data dir: the actions are in doubt. Returns path -> action id."""

    def send(path: str, body: dict[str, Any]) -> None:
        with suppress(requests.RequestException):
            requests.post(f"{up.url}{path}", json=body, proxies=a.proxies, timeout=60)

    threads = [threading.Thread(target=send, args=item, daemon=True) for item in posts.items()]
    for t in threads:
        t.start()
    wait_for(
        lambda: {s.path for s in up.effects("POST")} >= set(posts), "the upstream holds every request", 60
    )
    a.stop(signal.SIGKILL)
    up.release.set()
    for t in threads:
        t.join(60)
    a.start()
    return {str(x["url"]).removeprefix(up.url): int(x["id"]) for x in a.log() if "/hold/" in x["url"]}


def last_entries(a: Airlock) -> dict[int, dict[str, Any]]:
    """The last entry written about each action, from one `airlock export` of the whole log."""
    last: dict[int, dict[str, Any]] = {}
    for line in a.cli("export").stdout.splitlines():
        entry = json.loads(line)
        if entry.get("action") is not None:
            last[int(entry["action"])] = entry
    return last


def settled(a: Airlock, ids: list[int]) -> dict[int, dict[str, Any]]:
    """Wait until every action has its verify entry (a resolution, or an inconclusive read);
    the last entry of each action then."""
    found: dict[int, dict[str, Any]] = {}

    def verified() -> bool:
        found.update(last_entries(a))
        return all(found.get(i, {}).get("kind") in ("verify", "resolution") for i in ids)

    wait_for(verified, f"actions {ids} are verified", 60)
    return found


class Backlogged(ThreadingHTTPServer):
    """The recording upstream with room for every held request to connect at once."""

    request_queue_size = 128
    daemon_threads = True


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    up = Upstream(free_port(), "http")
    server = Backlogged(("127.0.0.1", up.port), recording_handler(up))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield up
    finally:
        up.release.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def proxy(make_airlock: Callable[..., Airlock], monkeypatch: pytest.MonkeyPatch) -> Airlock:
    monkeypatch.setenv("VERIFY_TOKEN", OPERATOR_TOKEN)
    return make_airlock(RULES)


def test_a_steering_client_token_gets_no_read_and_cannot_free_its_key(
    proxy: Airlock, upstream: Upstream
) -> None:
    posts = {
        f"/hold/orders/{name}": {"ClientToken": token} for name, token in {**STEERING, **ENCODED}.items()
    }
    posts["/hold/orders/plain"] = {"ClientToken": "order-42"}
    posts |= {f"/hold/lookups/{name}": {"ClientToken": token} for name, token in QUERY_VALUES.items()}
    posts["/hold/elsewhere/plain"] = {"ClientToken": "order-43"}
    ids = crash_with(proxy, upstream, posts)
    last = settled(proxy, list(ids.values()))

    # The upstream saw exactly the intended reads, each one segment or one query value, with the
    # operator's token; nothing under /status, nothing on another path.
    reads = sorted(s.path for s in upstream.effects("GET"))
    intended = sorted(
        [f"/orders/{quote(t, safe='')}" for t in [*ENCODED.values(), "order-42"]]
        + [f"/lookups?ref={quote_plus(t, safe='')}&kind=order" for t in QUERY_VALUES.values()]
    )
    assert reads == intended
    assert {s.headers["authorization"] for s in upstream.effects("GET")} == {f"Bearer {OPERATOR_TOKEN}"}
    assert all("x-injected" not in s.headers for s in upstream.effects("GET"))

    # Sent reads answered 200: those orders ran. Steering tokens got no read: they stay in doubt,
    # and the log names why.
    for path in [
        *(f"/hold/orders/{n}" for n in ENCODED),
        "/hold/orders/plain",
        *(f"/hold/lookups/{n}" for n in QUERY_VALUES),
    ]:
        entry = last[ids[path]]
        assert (entry["kind"], entry["data"]["found"]["status"]) == ("resolution", 200), path
    for name in STEERING:
        entry = last[ids[f"/hold/orders/{name}"]]
        assert entry["kind"] == "verify" and "status" not in entry["data"]["found"], name
        assert (
            "not sent" in entry["data"]["found"]["error"]
            and "one path segment" in entry["data"]["found"]["error"]
        )
    # A literal host other than the action's own is never asked, whatever the rule says.
    entry = last[ids["/hold/elsewhere/plain"]]
    assert entry["kind"] == "verify" and "not on the action's origin" in entry["data"]["found"]["error"]
    states = {x["id"]: x["state"] for x in proxy.log()}
    assert {states[ids[f"/hold/orders/{n}"]] for n in STEERING} == {"in_doubt"}

    # The key of a steering order is still held: a duplicate is refused, not executed.
    before = len(upstream.effects("POST"))
    again = requests.post(
        f"{upstream.url}/hold/orders/dots",
        json={"ClientToken": STEERING["dots"]},
        proxies=proxy.proxies,
        timeout=30,
    )
    assert again.status_code == 409 and again.json()["error"] == "idempotency_in_doubt"
    assert len(upstream.effects("POST")) == before
    # The operator's token reached the upstream, never the log.
    everything = proxy.cli("log", "--json", "--all").stdout + "".join(
        proxy.cli("show", str(i), "--json").stdout for i in ids.values()
    )
    assert OPERATOR_TOKEN not in everything
    assert OPERATOR_TOKEN.encode() not in (proxy.data / "log" / "data.mdb").read_bytes()


LOAD_TIME = {
    "a body field as the host": "https://{body.host}/orders/{body.ClientToken}",
    "a field after the host": "{scheme}://{host}{body.suffix}/orders",
    "user information": "{scheme}://{host}:{port}@evil.example/orders/{body.ClientToken}",
    "a field as the scheme": "{body.scheme}://{host}/orders",
    "no origin": "{body.ClientToken}/orders",
    "a fragment": "{scheme}://{host}:{port}/orders/{body.ClientToken}#x",
    "{url} not first": "/check{url}",
}


@pytest.mark.parametrize("url", LOAD_TIME.values(), ids=list(LOAD_TIME))
def test_a_template_that_could_leave_the_origin_is_refused_when_the_rules_load(
    tmp_path: Path, url: str
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "version: 1\nrules:\n  - id: orders-once\n    match: {method: POST}\n"
        f"    dedup: {{key: '{{body.ClientToken}}', verify: {{url: '{url}'}}}}\n"
    )
    done = subprocess.run([AIRLOCK, "rules", "check", str(rules)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "verify url" in done.stderr


def test_a_literal_credential_in_a_verify_header_is_refused_when_the_rules_load(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "version: 1\nrules:\n  - id: orders-once\n    match: {method: POST}\n"
        "    dedup: {key: '{path}', verify: {headers: {X-Api-Key: 'k-12345'}}}\n"
    )
    done = subprocess.run([AIRLOCK, "rules", "check", str(rules)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "X-Api-Key" in done.stderr and "${" in done.stderr
    assert "k-12345" not in done.stderr


# template, the action's path and query, its ClientToken -> the read's URL (None: refused)
RENDERED = [
    ("/orders/{body.ClientToken}", "/o", "", "a b", "http://127.0.0.1:8080/orders/a%20b"),
    ("/orders/{body.ClientToken}", "/o", "", "x/../../admin", None),
    ("/orders/{body.ClientToken}", "/o", "", "%2E%2E", None),
    (
        "/orders?ref={body.ClientToken}",
        "/o",
        "",
        "1&all=true#x",
        "http://127.0.0.1:8080/orders?ref=1%26all%3Dtrue%23x",
    ),
    (
        "/lookup?p={path}&q={query}",
        "/x&admin=true",
        "a=1",
        "t",
        "http://127.0.0.1:8080/lookup?p=%2Fx%26admin%3Dtrue&q=a=1",
    ),
    ("{url}", "/orders/1", "v=2", "t", "http://127.0.0.1:8080/orders/1?v=2"),
    ("{url}", "/orders/%2e%2e/admin", "", "t", None),
    ("{scheme}://{host}:{port}/check{path}", "/hold/../admin", "", "t", None),
    ("http://localhost:{port}/orders/{body.ClientToken}", "/o", "", "t", None),
]


@pytest.mark.parametrize(("template", "path", "query", "token", "expected"), RENDERED)
def test_each_field_is_encoded_for_the_part_of_the_url_it_fills(
    template: str, path: str, query: str, token: str, expected: str | None
) -> None:
    rule = parse_dedup("orders-once", {"key": "{body.ClientToken}", "verify": {"url": template}})
    assert rule.verify is not None
    body = json.dumps({"ClientToken": token}).encode()
    action = Action("POST", "http", "127.0.0.1", 8080, path, Effect.WRITE, query=query, body=body)
    read = rule.verify.request(action)
    assert read is not None and read["origin"] == "http://127.0.0.1:8080"
    if expected is None:
        assert read.get("refused") and (read["url"] is None or "localhost" in read["url"])
    else:
        assert read["url"] == expected and "refused" not in read


@pytest.mark.parametrize(
    "template",
    [
        "/orders?access_token={body.ClientToken}",
        "/orders/{body.ClientToken}",
        "/orders?ref={body.ClientToken}",
    ],
)
def test_a_read_whose_url_would_carry_a_credential_is_logged_refused(template: str) -> None:
    # The read is sent as logged; the log cannot keep a credential, so such a read is never sent.
    rule = parse_dedup("orders-once", {"key": "{body.ClientToken}", "verify": {"url": template}})
    assert rule.verify is not None
    token = "ghp_" + "a1B2" * 9
    body = json.dumps({"ClientToken": token}).encode()
    action = Action("POST", "http", "127.0.0.1", 8080, "/o", Effect.WRITE, body=body)
    read = rule.verify.request(action)
    assert read is not None and token in read["url"]
    logged = records.verify_read(read, Redactor())
    assert token not in json.dumps(logged) and "credential" in logged["refused"]
    assert refusal(logged) == logged["refused"]

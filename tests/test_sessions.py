"""Agents as sessions through the real proxy: the zombie agent fenced, two agents serialized by a
lock, a loop of deletes stopped by a limit, a batch that crosses a limit at once.

Agents are real client processes (python with requests, curl, boto3) given proxy credentials
by `airlock session new` or `airlock exec --agent`; the upstreams record what they received.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
import requests

from .support import Airlock, Upstream, free_port, serving, wait_for
from .support.moto import Moto, moto_server, proxied

RULES = """\
version: 1
egress:
  allow: [127.0.0.1]
aws: {{endpoints: ["127.0.0.1"]}}
defaults: {{destructive: allow}}
hold: {{wait: 0}}
rules:
{rules}
"""


def rules(*extra: str) -> str:
    body = "".join(f"  {line}\n" for rule in extra for line in rule.strip().splitlines())
    return RULES.format(rules=body.rstrip("\n") or "  []")


def session(a: Airlock, name: str) -> tuple[str, str]:
    """A new session for `name`: its proxy URL (with credentials) and its id."""
    out = a.cli("session", "new", name, "--listen", f"127.0.0.1:{a.port}").stdout.split()
    return out[0], out[1]


def actions(a: Airlock, **fields: Any) -> list[dict[str, Any]]:
    return [x for x in a.log() if all(x.get(k) == v for k, v in fields.items())]


# ---- the zombie agent -----------------------------------------------------------------------

AGENT = """
import sys, requests
proxy = sys.argv[1]
for line in sys.stdin:
    method, url = line.split()
    r = requests.request(method, url, proxies={"http": proxy, "https": proxy}, timeout=30)
    print(r.status_code, r.text.replace("\\n", " "), flush=True)
"""


def test_a_zombie_agent_woken_after_a_takeover_is_fenced_and_its_delete_never_lands(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    a = make_airlock(rules=rules())
    first_url, first = session(a, "migrator")
    zombie = subprocess.Popen(
        [sys.executable, "-c", AGENT, first_url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert zombie.stdin is not None and zombie.stdout is not None

    def send(line: str) -> str:
        assert zombie.stdin is not None and zombie.stdout is not None
        zombie.stdin.write(line + "\n")
        zombie.stdin.flush()
        return zombie.stdout.readline()

    try:
        assert send(f"DELETE {upstream.url}/items/1").startswith("200")
        zombie.send_signal(signal.SIGSTOP)  # partitioned away mid-task
        # A new agent takes over the name and reverses course: it puts item 1 back.
        second_url, second = session(a, "migrator")
        put = requests.put(f"{upstream.url}/items/1", json={"restored": True}, proxies={"http": second_url})
        assert put.status_code == 200
        zombie.send_signal(signal.SIGCONT)  # the zombie wakes up and goes on
        answer = send(f"DELETE {upstream.url}/items/1")
    finally:
        zombie.kill()
        zombie.wait(10)
    assert answer.startswith("409") and "superseded" in answer and second in answer
    assert [(s.method, s.path) for s in upstream.seen] == [("DELETE", "/items/1"), ("PUT", "/items/1")]
    fenced = actions(a, state="fenced")
    assert len(fenced) == 1 and fenced[0]["method"] == "DELETE" and fenced[0]["agent"] == "migrator"
    assert fenced[0]["rule"] == "session-fence"
    intents = {x["id"]: json.loads(a.cli("show", str(x["id"]), "--json").stdout) for x in a.log()}
    sessions = [i["entries"][0]["data"]["action"].get("session") for i in intents.values()]
    assert sessions.count(first) == 2 and sessions.count(second) == 1


def test_a_takeover_fences_every_session_of_the_name(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    a = make_airlock(rules=rules())
    url, _ = session(a, "worker")
    assert requests.post(f"{upstream.url}/a", proxies={"http": url}).status_code == 200
    a.cli("takeover", "worker")
    refused = requests.post(f"{upstream.url}/b", proxies={"http": url})
    assert refused.status_code == 409 and "superseded" in refused.json()["message"]
    assert [s.path for s in upstream.seen] == ["/a"]


# ---- locks ----------------------------------------------------------------------------------


class Slow:
    """An upstream whose every request takes a while, recording when each was in progress."""

    def __init__(self) -> None:
        self.spans: list[tuple[float, float, str]] = []
        self.port = free_port()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        spans = self.spans

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                started = time.monotonic()
                self.rfile.read(int(self.headers.get("content-length", 0)))
                time.sleep(0.4)
                spans.append((started, time.monotonic(), self.path))
                self.send_response(200)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def slow() -> Iterator[Slow]:
    s = Slow()
    with serving(s.handler(), s.port):
        yield s


LOCKED = """\
- id: one-migration-at-a-time
  match: {method: POST, path: "/tables/*"}
  lock: {key: "{path}", wait: 30s}
"""


def test_two_agents_racing_on_one_target_are_serialized_by_a_lock(
    make_airlock: Callable[..., Airlock], slow: Slow
) -> None:
    a = make_airlock(rules=rules(LOCKED))
    urls = [session(a, name)[0] for name in ("alice-agent", "bob-agent")]
    results: list[int] = []

    def migrate(url: str, path: str) -> None:
        r = requests.post(f"http://127.0.0.1:{slow.port}{path}", proxies={"http": url}, timeout=60)
        results.append(r.status_code)

    racers = [threading.Thread(target=migrate, args=(u, "/tables/orders")) for u in urls]
    racers.append(threading.Thread(target=migrate, args=(urls[0], "/tables/users")))  # another key
    for t in racers:
        t.start()
    for t in racers:
        t.join(60)
    assert results == [200, 200, 200]
    orders = sorted(s for s in slow.spans if s[2] == "/tables/orders")
    assert len(orders) == 2 and orders[0][1] <= orders[1][0]  # no overlap in time
    users = next(s for s in slow.spans if s[2] == "/tables/users")
    assert any(users[0] < o[1] and o[0] < users[1] for o in orders)  # other keys do not wait


def test_a_lock_held_past_its_wait_is_refused_naming_the_holder(
    make_airlock: Callable[..., Airlock], slow: Slow
) -> None:
    a = make_airlock(rules=rules(LOCKED.replace("wait: 30s", "wait: 0")))
    holder, _ = session(a, "alice-agent")
    other, _ = session(a, "bob-agent")
    first = threading.Thread(
        target=requests.post,
        args=(f"http://127.0.0.1:{slow.port}/tables/orders",),
        kwargs={"proxies": {"http": holder}},
    )
    first.start()
    wait_for(lambda: bool(actions(a, state="pending")), "the first migration holds the lock")
    refused = requests.post(f"http://127.0.0.1:{slow.port}/tables/orders", proxies={"http": other})
    first.join(30)
    assert refused.status_code == 409
    body = refused.json()
    assert body["rule"] == "one-migration-at-a-time" and "/tables/orders is locked by" in body["message"]
    assert len(slow.spans) == 1


# ---- limits ---------------------------------------------------------------------------------

BURST = """\
- id: destructive-burst
  match: {effect: destructive}
  limit: {count: 20, per: 1m, then: hold}
"""


def test_a_loop_of_deletes_passes_twenty_and_holds_the_twenty_first(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    a = make_airlock(rules=rules(BURST))
    url, _ = session(a, "cleaner")
    statuses = []
    for i in range(100):
        r = requests.delete(f"{upstream.url}/items/{i}", proxies={"http": url}, timeout=30)
        statuses.append(r.status_code)
        if r.status_code != 200:
            held = r.json()
            break
    assert statuses == [200] * 20 + [503]
    assert held["error"] == "held" and "limit of rule destructive-burst reached: 20" in held["message"]
    assert "1m" in held["message"]
    assert len(upstream.seen) == 20
    [waiting] = actions(a, state="held")
    assert waiting["rule"] == "destructive-burst" and waiting["url"].endswith("/items/20")


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    with moto_server(tmp_path_factory.mktemp("moto")) as m:
        yield m


def test_a_batch_counts_as_its_size_and_crosses_a_limit_at_once(
    make_airlock: Callable[..., Airlock], moto: Moto
) -> None:
    limit = "- id: object-deletes\n  match: {operation: 's3:Delete*'}\n  limit: {count: 20, per: 1h}"
    a = make_airlock(rules=rules(limit))
    direct = moto.direct("s3")
    direct.create_bucket(Bucket="batch")
    for i in range(50):
        direct.put_object(Bucket="batch", Key=f"k{i}", Body=b"x")
    s3 = proxied(a, moto, "s3")
    with pytest.raises(s3.exceptions.ClientError) as refused:
        s3.delete_objects(Bucket="batch", Delete={"Objects": [{"Key": f"k{i}"} for i in range(50)]})
    error = refused.value.response["Error"]
    assert "limit of rule object-deletes reached: 0" in error["Message"] and "counts 50" in error["Message"]
    assert len(direct.list_objects_v2(Bucket="batch")["Contents"]) == 50  # nothing was deleted
    s3.delete_objects(Bucket="batch", Delete={"Objects": [{"Key": f"k{i}"} for i in range(20)]})
    assert len(direct.list_objects_v2(Bucket="batch")["Contents"]) == 30


# ---- identity --------------------------------------------------------------------------------

ADMIN = """\
- id: admin-only
  match: {path: "/admin/*", not: {agent: admin, agent_claimed: false}}
  action: deny
  message: Only the verified admin agent may do this.
"""


def test_a_self_named_agent_cannot_pass_a_rule_that_requires_a_verified_identity(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    a = make_airlock(rules=rules(ADMIN))
    claimed = requests.post(
        f"{upstream.url}/admin/reset", headers={"X-Airlock-Agent": "admin"}, proxies=a.proxies
    )
    assert claimed.status_code == 403 and claimed.json()["rule"] == "admin-only"
    url, _ = session(a, "admin")
    verified = requests.post(f"{upstream.url}/admin/reset", proxies={"http": url})
    assert verified.status_code == 200
    assert [s.path for s in upstream.seen] == ["/admin/reset"]


def test_bad_credentials_get_407_and_are_logged(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    a = make_airlock(rules=rules())
    url, _ = session(a, "worker")
    forged = url.replace("worker:", "worker:x", 1)
    refused = requests.post(f"{upstream.url}/x", proxies={"http": forged})
    assert refused.status_code == 407 and "Proxy-Authenticate" in refused.headers
    assert not upstream.seen
    assert any(x["status"] is None and x["state"] == "denied" for x in a.log())


HELD_DELETES = """\
- id: deletes-need-a-person
  match: {method: DELETE}
  action: hold
"""


def test_a_zombies_held_action_approved_after_a_takeover_does_not_run_when_it_asks_again(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    a = make_airlock(rules=rules(HELD_DELETES))
    url, _ = session(a, "migrator")
    held = requests.delete(f"{upstream.url}/items/7", proxies={"http": url}, timeout=30)
    assert held.status_code == 503 and held.json()["error"] == "held"
    a.cli("takeover", "migrator")
    a.cli("approve", str(held.json()["action_id"]), "--voter", "alice")
    again = requests.delete(f"{upstream.url}/items/7", proxies={"http": url}, timeout=30)
    assert again.status_code == 409 and "superseded" in again.json()["message"]
    assert not upstream.seen
    assert [x["state"] for x in actions(a, method="DELETE")] == ["approved", "fenced"]

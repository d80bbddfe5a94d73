"""Soak test: thousands of keyed requests, random client retries and random SIGKILLs of the proxy.

Usage: ``.venv/bin/python bench/soak.py [--keys N] [--workers W] [--dup P] [--kill-min S]
[--kill-max S] [--give-up S] [--seed N] [--keep]``

What it proves: every order id has at most one effect at the upstream (zero duplicates), and
every id a client saw acknowledged has exactly one effect (zero lost acknowledged actions).

  upstream  an in-process HTTP server: ``POST /orders/<id>`` counts one effect for <id> as soon
            as the body is read, sleeps 0-20 ms (so kills land while requests are in flight) and
            answers 201; ``GET /orders/<id>`` answers 200 if <id> has an effect, else 404.
  proxy     ``airlock run`` with one rule keying every ``POST /orders/*`` by its path and
            settling actions left in doubt by a crash with ``GET`` on the same URL.
  killer    SIGKILLs the proxy every --kill-min..--kill-max seconds (counted from the moment it
            is up again) and restarts it on the same ports and data dir.
  clients   --workers threads POST each id with ``Idempotency-Key: <id>`` until a definitive
            answer (201, a 201 replay, or 409 ``idempotency_key_completed``), retrying
            connection errors, timeouts, 5xx, 409 in doubt / in flight and 429; with
            probability --dup they send an acknowledged request once more, which must be
            answered as a replay (or 409 completed).

At the end it reads the upstream's effect counts, ``airlock log --json`` and ``airlock verify``,
prints a summary and a last line ``RESULT: PASS`` or ``RESULT: FAIL (reasons)``; the exit status
is 0 on pass and 1 on fail. This is not part of the pytest suite.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

BIN = Path(sys.executable).parent
AIRLOCK = str(BIN / "airlock")

RULES = """\
version: 1
egress:
  allow: ["127.0.0.1"]
rules:
  - id: orders-exactly-once
    match: {method: POST, path: "/orders/*"}
    dedup:
      key: "{path}"
      verify: {method: GET, delay: 1s}
"""

CLIENT_TIMEOUT = 10.0  # seconds per request
STARTUP_SECONDS = 60.0  # how long one start of the proxy may take to answer /healthz
START_ATTEMPTS = 30  # starts tried before giving up (a port may be briefly busy after a kill)
SETTLE_SECONDS = 15.0  # how long to wait at the end for in-doubt actions to be settled
RETRY_AFTER_CAP = 2.0  # longest sleep a 429's Retry-After may ask of a client
UPSTREAM_SLEEP = 0.020  # longest pause between recording an effect and answering
DETAILS = 5  # failing ids described in detail

# Answer kinds, as counted and printed.
FIRST, REPLAY, COMPLETED = "first", "replay", "completed"
IN_DOUBT, IN_FLIGHT, STORM = "in_doubt", "in_flight", "storm"
SERVER_ERROR, CONN_ERROR, TIMEOUT, UNEXPECTED = "5xx", "conn_error", "timeout", "unexpected"
ACKNOWLEDGED = frozenset({FIRST, REPLAY, COMPLETED})
RETRIED = frozenset({IN_DOUBT, IN_FLIGHT, STORM, SERVER_ERROR, CONN_ERROR, TIMEOUT})
LABELS = (
    (FIRST, "first execution"),
    (REPLAY, "replay"),
    (COMPLETED, "completed-409"),
    (IN_DOUBT, "in-doubt-409"),
    (IN_FLIGHT, "in-flight-409"),
    (STORM, "429"),
    (SERVER_ERROR, "5xx"),
    (CONN_ERROR, "connection errors"),
    (TIMEOUT, "timeouts"),
    (UNEXPECTED, "other statuses"),
)
ERROR_KINDS = {
    "idempotency_key_completed": COMPLETED,
    "idempotency_in_doubt": IN_DOUBT,
    "idempotency_in_flight": IN_FLIGHT,
}


def order_id(n: int) -> str:
    """The n-th order id, e.g. ``o-000123``."""
    return f"o-{n:06d}"


def clean_environ() -> dict[str, str]:
    """This process's environment without proxy variables or AIRLOCK_DATA, for child processes."""
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and k != "AIRLOCK_DATA"}


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- the upstream ---------------------------------------------------------------------------


@dataclass
class Effects:
    """How many times each order was executed at the upstream."""

    counts: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, oid: str) -> int:
        """Count one effect for `oid`; return its count."""
        with self.lock:
            self.counts[oid] = self.counts.get(oid, 0) + 1
            return self.counts[oid]

    def has(self, oid: str) -> bool:
        """Whether `oid` has taken effect."""
        with self.lock:
            return self.counts.get(oid, 0) > 0

    def snapshot(self) -> dict[str, int]:
        """A copy of the counts."""
        with self.lock:
            return dict(self.counts)


class UpstreamServer(ThreadingHTTPServer):
    """A threading HTTP server with a deep accept queue and daemon handler threads."""

    daemon_threads = True
    request_queue_size = 256

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet about connections the killed proxy dropped; report anything else."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _handler(effects: Effects) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self, status: int, payload: dict[str, Any]) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _order(self) -> str | None:
            prefix = "/orders/"
            return self.path[len(prefix) :] if self.path.startswith(prefix) else None

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            oid = self._order()
            if oid is None:
                self._answer(404, {"error": "not_found"})
                return
            n = effects.record(oid)
            time.sleep(random.uniform(0, UPSTREAM_SLEEP))  # so that kills land in flight
            self._answer(201, {"id": oid, "n": n})

        def do_GET(self) -> None:
            oid = self._order()
            if oid is not None and effects.has(oid):
                self._answer(200, {"id": oid})
            else:
                self._answer(404, {"error": "not_found"})

    return Handler


@contextlib.contextmanager
def upstream(effects: Effects) -> Iterator[int]:
    """Serve the orders upstream on a loopback port in a daemon thread; yield the port."""
    server = UpstreamServer(("127.0.0.1", 0), _handler(effects))
    thread = threading.Thread(target=server.serve_forever, name="upstream", daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


# ---- the proxy ------------------------------------------------------------------------------


def _tail(path: Path, lines: int = 20) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def healthy(control: int) -> bool:
    """Whether the control API's /healthz answers 200 (it does once the proxy listens)."""
    session = requests.Session()
    session.trust_env = False
    try:
        return session.get(f"http://127.0.0.1:{control}/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False
    finally:
        session.close()


class Proxy:
    """The `airlock run` process, killed and restarted on the same ports and data dir."""

    def __init__(self, work: Path) -> None:
        self.data = work / "data"
        self.rules = work / "rules.yaml"
        self.output = work / "airlock.out"
        self.port = free_port()
        self.control = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.lock = threading.Lock()
        self.rules.write_text(RULES)

    @property
    def url(self) -> str:
        """The forward proxy URL."""
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        """The `airlock run` command line."""
        return [
            AIRLOCK,
            "run",
            "--data",
            str(self.data),
            "--listen",
            f"127.0.0.1:{self.port}",
            "--control",
            f"127.0.0.1:{self.control}",
            "--rules",
            str(self.rules),
            "--rules-poll",
            "0",
        ]

    def _spawn(self) -> bool:
        """Start one process and wait for /healthz; False if it exited first (a busy port)."""
        with self.output.open("ab") as sink:
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=clean_environ(),
                start_new_session=True,  # a Ctrl-C reaches only us
            )
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if healthy(self.control):
                return True
            time.sleep(0.05)
        raise RuntimeError(f"airlock was not ready after {STARTUP_SECONDS:.0f} s:\n{_tail(self.output)}")

    def start(self) -> None:
        """Start the proxy and wait until it answers, retrying while a port is briefly busy."""
        with self.lock:
            for _ in range(START_ATTEMPTS):
                if self._spawn():
                    self.starts += 1
                    return
                time.sleep(0.2)
            code = self.proc.returncode if self.proc is not None else None
            raise RuntimeError(f"airlock did not start (last exit status {code}):\n{_tail(self.output)}")

    def kill(self) -> None:
        """SIGKILL the proxy (a crash) and wait for it to exit."""
        with self.lock:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait(30)

    def running(self) -> bool:
        """Whether the process is alive and answers /healthz."""
        return self.proc is not None and self.proc.poll() is None and healthy(self.control)

    def stop(self) -> None:
        """SIGTERM the proxy, then SIGKILL it if it has not exited within 10 s."""
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                return
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run an `airlock` subcommand against the data dir."""
        return subprocess.run(
            [AIRLOCK, *args, "--data", str(self.data)],
            capture_output=True,
            text=True,
            check=False,
            stdin=subprocess.DEVNULL,
            env=clean_environ(),
            timeout=300,
        )

    def actions(self, *args: str) -> list[dict[str, Any]]:
        """`airlock log --json` as a list of actions."""
        done = self.cli("log", "--json", *args)
        if done.returncode != 0:
            raise RuntimeError(f"airlock log exited {done.returncode}: {done.stderr.strip()}")
        return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


class Killer(threading.Thread):
    """SIGKILLs the proxy at random intervals and starts it again, until stopped."""

    def __init__(
        self, proxy: Proxy, low: float, high: float, rng: random.Random, abort: threading.Event
    ) -> None:
        super().__init__(name="killer", daemon=True)
        self.proxy, self.low, self.high, self.rng, self.abort = proxy, low, high, rng, abort
        self.halt = threading.Event()
        self.kills = 0
        self.error: Exception | None = None

    def run(self) -> None:
        """Wait a random interval, kill, restart; stop on `halt`, or abort everything on an error."""
        while not self.halt.wait(self.rng.uniform(self.low, self.high)):
            try:
                self.proxy.kill()
                self.kills += 1
                self.proxy.start()
            except Exception as e:
                self.error = e
                self.abort.set()
                return

    def stop(self) -> None:
        """Stop killing and wait for the thread (a restart under way completes first)."""
        self.halt.set()
        self.join()


# ---- the clients ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """What one request got: its kind, and a short description for the id's history."""

    kind: str
    text: str
    retry_after: float | None = None


def classify(resp: requests.Response) -> Answer:
    """Sort a response into one of the answer kinds."""
    status = resp.status_code
    if status == 201:
        replay_of = resp.headers.get("X-Airlock-Replay-Of")
        if resp.headers.get("Idempotent-Replayed", "").lower() == "true":
            return Answer(REPLAY, f"201 replay of action {replay_of}")
        return Answer(FIRST, f"201 {resp.text.strip()}")
    if status == 429:
        try:
            wait = float(resp.headers.get("Retry-After", "1"))
        except ValueError:
            wait = 1.0
        return Answer(STORM, f"429 retry after {wait:g}", retry_after=min(wait, RETRY_AFTER_CAP))
    if status >= 500:
        return Answer(SERVER_ERROR, f"{status} {resp.text[:120].strip()}")
    body: dict[str, Any] = {}
    with contextlib.suppress(ValueError):
        parsed = resp.json()
        if isinstance(parsed, dict):
            body = parsed
    error = str(body.get("error", ""))
    if status == 409 and error in ERROR_KINDS:
        return Answer(ERROR_KINDS[error], f"409 {error} (action {body.get('action_id')})")
    return Answer(UNEXPECTED, f"{status} {resp.text[:200].strip()}")


@dataclass
class Tally:
    """What the clients saw, shared by every worker."""

    answers: Counter[str] = field(default_factory=Counter)
    history: dict[str, list[str]] = field(default_factory=dict)
    acknowledged: set[str] = field(default_factory=set)
    gave_up: set[str] = field(default_factory=set)
    unexpected: dict[str, str] = field(default_factory=dict)
    dup_sends: int = 0
    dup_gave_up: int = 0
    requests: int = 0
    began: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, oid: str, answer: Answer) -> None:
        """Count one answer and add it to the id's history."""
        with self.lock:
            self.requests += 1
            self.answers[answer.kind] += 1
            stamp = time.monotonic() - self.began
            self.history.setdefault(oid, []).append(f"+{stamp:8.3f}s {answer.kind:<10} {answer.text}")


@dataclass(frozen=True)
class Client:
    """How workers send: the proxy, the upstream, the backoff, the give-up time and the tally."""

    proxy: str
    upstream: int
    dup: float
    give_up: float
    tally: Tally
    abort: threading.Event


def send(session: requests.Session, client: Client, oid: str) -> Answer:
    """POST one order through the proxy with its Idempotency-Key."""
    url = f"http://127.0.0.1:{client.upstream}/orders/{oid}"
    try:
        resp = session.post(
            url, json={"id": oid, "qty": 1}, headers={"Idempotency-Key": oid}, timeout=CLIENT_TIMEOUT
        )
    except requests.Timeout as e:
        return Answer(TIMEOUT, type(e).__name__)
    except requests.RequestException as e:
        return Answer(CONN_ERROR, type(e).__name__)
    return classify(resp)


def until_definitive(
    session: requests.Session, client: Client, oid: str, rng: random.Random
) -> Answer | None:
    """Send until an acknowledged or unexpected answer; None when the id is given up (or aborted)."""
    deadline = time.monotonic() + client.give_up
    while not client.abort.is_set() and time.monotonic() < deadline:
        answer = send(session, client, oid)
        client.tally.note(oid, answer)
        if answer.kind not in RETRIED:
            return answer
        if answer.retry_after is not None:
            time.sleep(answer.retry_after)
        else:
            time.sleep(rng.uniform(0.010, 0.100))
    return None


def drive(session: requests.Session, client: Client, oid: str, rng: random.Random) -> None:
    """Get one order acknowledged, then maybe send it again as a client retry would."""
    tally = client.tally
    answer = until_definitive(session, client, oid, rng)
    if answer is None:
        with tally.lock:
            tally.gave_up.add(oid)
        return
    if answer.kind == UNEXPECTED:
        with tally.lock:
            tally.unexpected[oid] = answer.text
        return
    with tally.lock:
        tally.acknowledged.add(oid)
    if rng.random() >= client.dup:
        return
    with tally.lock:
        tally.dup_sends += 1
    again = until_definitive(session, client, oid, rng)
    with tally.lock:
        if again is None:
            tally.dup_gave_up += 1
        elif again.kind not in (REPLAY, COMPLETED):
            tally.unexpected[oid] = f"a duplicate send after acknowledgement got: {again.kind} {again.text}"


def worker(client: Client, ids: queue.Queue[str], seed: int) -> None:
    """Take order ids from the queue until it is empty (or the run is aborted)."""
    rng = random.Random(seed)
    session = requests.Session()
    session.trust_env = False
    session.proxies = {"http": client.proxy}
    try:
        while not client.abort.is_set():
            try:
                oid = ids.get_nowait()
            except queue.Empty:
                return
            drive(session, client, oid, rng)
    finally:
        session.close()


def run_clients(client: Client, keys: int, workers: int, seed: int) -> None:
    """Run every id through the workers and wait for them (Ctrl-C and aborts stop them)."""
    ids: queue.Queue[str] = queue.Queue()
    for n in range(keys):
        ids.put(order_id(n))
    threads = [
        threading.Thread(target=worker, args=(client, ids, seed * 1000 + i), name=f"client-{i}", daemon=True)
        for i in range(workers)
    ]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.5)
    finally:
        client.abort.set()  # no-op when every worker is done; stops them on Ctrl-C


# ---- the report -----------------------------------------------------------------------------


@dataclass
class LogView:
    """What the proxy's log says: actions (by order id), states, verify reads, chain check."""

    actions: list[dict[str, Any]]
    by_order: dict[str, list[dict[str, Any]]]
    states: Counter[str]
    resolutions: Counter[str]
    inconclusive: int
    verify_ok: bool
    verify_text: str


def order_of(url: str) -> str | None:
    """The order id a URL names, if it is an orders URL."""
    head, sep, tail = url.rpartition("/orders/")
    return tail if sep and head else None


def read_log(proxy: Proxy) -> LogView:
    """Every action in the log, grouped by order, and `airlock verify`'s verdict."""
    actions = proxy.actions()
    by_order: dict[str, list[dict[str, Any]]] = {}
    for a in actions:
        oid = order_of(str(a.get("url") or ""))
        if oid is not None:
            by_order.setdefault(oid, []).append(a)
    done = proxy.cli("verify")
    return LogView(
        actions=actions,
        by_order=by_order,
        states=Counter(str(a.get("state")) for a in actions),
        resolutions=Counter(str(a["resolution"]) for a in actions if a.get("resolution")),
        inconclusive=sum(1 for a in actions if a.get("verify") == "inconclusive"),
        verify_ok=done.returncode == 0,
        verify_text=(done.stdout or done.stderr).strip().replace("\n", " "),
    )


def wait_settled(proxy: Proxy) -> int:
    """Wait (up to SETTLE_SECONDS) for the restarted proxy's verify reads; return how many
    actions are still in doubt."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        left = len(proxy.actions("--state", "in_doubt"))
        if left == 0 or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


@dataclass(frozen=True)
class Findings:
    """The checks: ids that break a guarantee, and ids worth reporting."""

    duplicates: list[str]
    lost: list[str]
    unacknowledged: list[str]
    unlogged: list[str]


def check(tally: Tally, effects: dict[str, int], log: LogView) -> Findings:
    """Compare what clients saw, what the upstream did and what the log says."""
    return Findings(
        duplicates=sorted(oid for oid, n in effects.items() if n > 1),
        lost=sorted(oid for oid in tally.acknowledged if effects.get(oid, 0) == 0),
        unacknowledged=sorted(oid for oid, n in effects.items() if n > 0 and oid not in tally.acknowledged),
        unlogged=sorted(
            oid
            for oid, n in effects.items()
            if n > 0 and not any(a.get("method") == "POST" for a in log.by_order.get(oid, []))
        ),
    )


def failures(tally: Tally, found: Findings, log: LogView, abort_error: Exception | None) -> list[str]:
    """The reasons the run fails, if any."""
    reasons = []
    if abort_error is not None:
        reasons.append(f"the killer stopped: {abort_error}")
    if found.duplicates:
        reasons.append(f"{len(found.duplicates)} duplicates")
    if found.lost:
        reasons.append(f"{len(found.lost)} lost acknowledged")
    if tally.unexpected:
        reasons.append(f"{len(tally.unexpected)} unexpected answers")
    if found.unlogged:
        reasons.append(f"{len(found.unlogged)} effects with no logged action")
    if not log.verify_ok:
        reasons.append("airlock verify failed")
    return reasons


def _ids(ids: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(ids[:limit])
    return f" ({shown}{', ...' if len(ids) > limit else ''})" if ids else ""


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counter.most_common()) or "none"


@dataclass(frozen=True)
class Run:
    """Everything one run measured and found."""

    tally: Tally
    kills: int
    elapsed: float
    effects: dict[str, int]
    log: LogView
    found: Findings
    in_doubt_left: int


def print_summary(args: argparse.Namespace, run: Run) -> None:
    """The compact, human-readable summary."""
    tally, log, found, effects = run.tally, run.log, run.found, run.effects
    kinds = ", ".join(f"{label} {tally.answers[kind]}" for kind, label in LABELS)
    print(
        f"soak: {args.keys} keys, {args.workers} workers, dup {args.dup:g}, "
        f"kills every {args.kill_min:g}-{args.kill_max:g} s, give up after {args.give_up:g} s, "
        f"seed {args.seed}"
    )
    rate = tally.requests / run.elapsed if run.elapsed else 0.0
    print(f"load: {run.elapsed:.1f} s, {tally.requests} requests ({rate:.1f} req/s), {run.kills} kills")
    print(
        f"keys: {len(tally.acknowledged)} acknowledged, {len(tally.gave_up)} gave up, "
        f"{len(tally.unexpected)} unexpected answers; duplicate sends {tally.dup_sends} "
        f"({tally.dup_gave_up} gave up)"
    )
    print(f"answers: {kinds}")
    print(
        f"upstream: {sum(1 for n in effects.values() if n > 0)} ids with an effect, "
        f"{sum(effects.values())} effects; duplicates {len(found.duplicates)}{_ids(found.duplicates)}; "
        f"lost acknowledged {len(found.lost)}{_ids(found.lost)}; "
        f"effects without acknowledgement {len(found.unacknowledged)}{_ids(found.unacknowledged)}"
    )
    print(f"log: {len(log.actions)} actions by state: {_counts(log.states)}")
    print(
        f"log: settled by the verify read: {log.resolutions['executed']} executed, "
        f"{log.resolutions['not_executed']} not executed; {log.inconclusive} inconclusive reads; "
        f"{run.in_doubt_left} still in doubt"
    )
    print(
        f"log: effects with no logged POST {len(found.unlogged)}{_ids(found.unlogged)}; "
        f"verify: {'passed' if log.verify_ok else 'FAILED'} ({log.verify_text})"
    )


def print_details(tally: Tally, effects: dict[str, int], log: LogView, found: Findings) -> None:
    """For the first few failing ids: what the client saw, in order, and what the log holds."""
    bad = list(dict.fromkeys([*found.duplicates, *found.lost, *tally.unexpected, *found.unlogged]))
    for oid in bad[:DETAILS]:
        print(f"\n{oid}: {effects.get(oid, 0)} effects; {tally.unexpected.get(oid, '')}")
        for line in tally.history.get(oid, []):
            print(f"  client {line}")
        for a in log.by_order.get(oid, []):
            extra = {k: a[k] for k in ("resolution", "verify", "error", "replay_of") if a.get(k)}
            print(
                f"  log action {a['id']} {a.get('state')} status={a.get('status')} rule={a.get('rule')} "
                f"{json.dumps(extra) if extra else ''}".rstrip()
            )


# ---- the run --------------------------------------------------------------------------------


def measure(args: argparse.Namespace, proxy: Proxy, killer: Killer, effects: Effects, up_port: int) -> Run:
    """Start the proxy, run the clients under the killer, then read the effects and the log."""
    proxy.start()
    tally = Tally()
    client = Client(proxy.url, up_port, args.dup, args.give_up, tally, killer.abort)
    print(f"soak: upstream on 127.0.0.1:{up_port}, proxy on {proxy.url}, work dir {proxy.data.parent}")
    killer.start()
    run_clients(client, args.keys, args.workers, args.seed)
    elapsed = time.monotonic() - tally.began
    killer.stop()
    if killer.error is None and not proxy.running():
        proxy.start()
    in_doubt_left = wait_settled(proxy)
    counts = effects.snapshot()
    log = read_log(proxy)
    found = check(tally, counts, log)
    return Run(tally, killer.kills, elapsed, counts, log, found, in_doubt_left)


def soak(args: argparse.Namespace, work: Path) -> bool:
    """Run the whole soak test in `work`; True when every check passes."""
    random.seed(args.seed)
    effects = Effects()
    proxy = Proxy(work)
    killer = Killer(proxy, args.kill_min, args.kill_max, random.Random(args.seed), threading.Event())
    with upstream(effects) as up_port:
        try:
            run = measure(args, proxy, killer, effects, up_port)
        finally:
            killer.abort.set()
            if killer.is_alive():
                killer.stop()
            proxy.stop()
    print()
    print_summary(args, run)
    print_details(run.tally, run.effects, run.log, run.found)
    reasons = failures(run.tally, run.found, run.log, killer.error)
    print("RESULT: PASS" if not reasons else f"RESULT: FAIL ({'; '.join(reasons)})")
    return not reasons


def build_parser() -> argparse.ArgumentParser:
    """The soak test's flags."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--keys", type=int, default=3000, help="order ids to get acknowledged (default 3000)")
    p.add_argument("--workers", type=int, default=16, help="client threads (default 16)")
    p.add_argument("--dup", type=float, default=0.2, help="chance of resending an acknowledged id (0.2)")
    p.add_argument(
        "--kill-min", type=float, default=1.0, help="shortest time from a restart to the next kill, s (1.0)"
    )
    p.add_argument(
        "--kill-max", type=float, default=3.0, help="longest time from a restart to the next kill, s (3.0)"
    )
    p.add_argument("--give-up", type=float, default=60.0, help="seconds of retrying before giving up (60)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory and print its path")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the flags, run the soak test in a temporary directory, exit 0 on pass and 1 on fail."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.keys < 1 or args.workers < 1 or not 0 <= args.dup <= 1 or args.give_up <= 0:
        parser.error("--keys and --workers must be at least 1, --dup in [0, 1], --give-up positive")
    if not 0 < args.kill_min <= args.kill_max:
        parser.error("--kill-min must be positive and at most --kill-max")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup in `finally`
    work = Path(tempfile.mkdtemp(prefix="airlock-soak-"))
    try:
        passed = soak(args, work)
    except KeyboardInterrupt:
        print("\ninterrupted; the proxy and the upstream are stopped", file=sys.stderr)
        return 130
    except RuntimeError as e:
        print(f"soak: error: {e}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"kept: {work} (data dir {work / 'data'}, proxy output {work / 'airlock.out'})")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())

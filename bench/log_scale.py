"""What the log costs at 100k, 1M and 10M actions, and whether `--retain 7d` levels its size off.

Usage::

    .venv/bin/python bench/log_scale.py [--sizes 100000,1000000,10000000] [--keep DIR] [--full]
    .venv/bin/python bench/log_scale.py --simulate [--days 30] [--rate 5] [--keep DIR]

The logs are built through the store (store.Log, the writer the proxy uses, by
bench/log_reads.py's build(): group commits of up to 512 queued entries, two entries an action,
every 7th action denied by a rule, ten agents, three hosts), with a signed checkpoint appended
every 1,000 entries as `airlock run --checkpoint-every 1000` writes them (the data dir's own
key), then five actions of the agent `agent-lost` left pending and moved to in_doubt by a
`recovery` record each, as a writer starting after a crash records them. A built log is kept
under --keep DIR (`data-SIZE`, with a `built.json` saying how long the build took) and reused by
the next run; about 1.4 KB of disk an action (10M actions: about 14 GB).

For each size it prints, timed inside this process (median of --rounds): `log` (the newest
20), `log --state in_doubt`, `log --agent agent-3 -n 50`, `show` of the first and of the newest
action and `verify --since-checkpoint`. Then the wall and CPU time of the real `airlock`
commands (median of --rounds; Python's start is in each, `airlock --help` shows it): the same
ones, `export --since T` of about the newest 1,000 entries (the logs are built in minutes, so
`--since 1h` would take all of them), full `verify` and full `export` (linear: only up to 1M
unless --full). Then the start-up time of `airlock run` on the data dir until /healthz answers,
and the proxy latency (median and p99 of 200 small POSTs through `airlock run` to a local
http.server upstream, after 20 not counted), three starts. Each `airlock run` adds its
requests to the kept log, so a rerun measures a slightly longer log. Last, the ratios 1M/100k
and 10M/100k: a cost flat in the log's size stays near 1.

--simulate drives a fresh log (DIR/sim) with a simulated clock: the bench process replaces the
`time` that store/append.py stamps entries with by a clock it moves itself (nothing in the
product changes). Each simulated second gets --rate actions (an intent and an outcome each),
queued a simulated minute at a time to the writer (waited for every 10 minutes); a signed
checkpoint every 1,000 entries; every simulated 10 minutes one round of retention
(`Log.prune(Retention(max_age=7 days), now=the simulated time)` until it returns None), as
`airlock run --retain 7d` runs it. Per simulated day it prints data.mdb's size, the bytes in
use, the entries, the oldest entry's age, the actions written and removed so far, and how long
the day took. A measurement, never a test: it exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from log_reads import AIRLOCK, build, median_ms

import store.append
from store import ActionRef, Log, Query, Record, Retention, Signer, State, checkpoint_record, public_text

RULES = "version: 1\negress: {allow: [127.0.0.1]}\ndefaults: {read: allow, write: allow}\n"
LOST = 5  # actions left in doubt in each built log
CHECKPOINT_EVERY = 1000
DAY = 86400


def prepare(data: Path, size: int) -> float:
    """The data dir of a log of `size` actions (built unless a finished one is there); returns
    how long its build took."""
    done = data / "built.json"
    if done.exists():
        return float(json.loads(done.read_text())["seconds"])
    shutil.rmtree(data, ignore_errors=True)
    began = time.perf_counter()
    data.mkdir(mode=0o700, parents=True)
    signer = Signer.load_or_create(data)
    key = public_text(signer.public())
    build(data, size, lambda: checkpoint_record(key, signer.sign), CHECKPOINT_EVERY)
    log = Log.open(data / "log", max_size=64 << 30)
    log.start()
    lost = [
        log.append_blocking(
            Record(
                kind="intent",
                action=ActionRef(),
                state=State.PENDING,
                new_action=True,
                data={"action": {"method": "POST", "url": f"https://h0.test/lost/{n}"}},
                summary={"agent": "agent-lost", "method": "POST", "url": f"https://h0.test/lost/{n}"},
            )
        )
        for n in range(LOST)
    ]
    for entry in lost:
        log.append_blocking(
            Record(
                kind="recovery",
                action=ActionRef(entry.action),
                state=State.IN_DOUBT,
                if_state=State.PENDING,
                data={"reason": "its writer stopped before recording an outcome", "writer": "bench"},
            )
        )
    log.close()
    seconds = time.perf_counter() - began
    done.write_text(json.dumps({"actions": size, "seconds": seconds}))
    return seconds


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Upstream(BaseHTTPRequestHandler):
    """Answers every POST with a small JSON body."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def upstream() -> ThreadingHTTPServer:
    """A local upstream on a free port, served from a daemon thread."""
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Upstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def proxy_run(data: Path, rules: Path, target: str, requests_: int = 200) -> dict[str, float]:
    """Start `airlock run` on `data`: seconds until /healthz answers, then the latency of small
    POSTs through it to `target` (median and p99, ms)."""
    listen, control = free_port(), free_port()
    began = time.perf_counter()
    proc = subprocess.Popen(
        [
            AIRLOCK,
            "run",
            "--data",
            str(data),
            "--rules",
            str(rules),
            "--listen",
            f"127.0.0.1:{listen}",
            "--control",
            f"127.0.0.1:{control}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        while True:
            if proc.poll() is not None:
                assert proc.stderr is not None
                raise SystemExit(f"airlock run on {data} stopped: {proc.stderr.read().decode()[-2000:]}")
            try:
                if requests.get(f"http://127.0.0.1:{control}/healthz", timeout=1).ok:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.02)
        start = time.perf_counter() - began
        start_cpu = process_cpu(proc.pid)
        session = requests.Session()
        session.proxies = {"http": f"http://127.0.0.1:{listen}"}
        times = []
        for n in range(20 + requests_):
            sent = time.perf_counter()
            reply = session.post(f"{target}/things", json={"n": n, "title": "a small write"}, timeout=10)
            if reply.status_code != 200:
                raise SystemExit(
                    f"a POST through airlock run on {data} got {reply.status_code}: {reply.text}"
                )
            if n >= 20:
                times.append((time.perf_counter() - sent) * 1000)
        times.sort()
        direct = requests.Session()
        straight = []
        for n in range(requests_):
            sent = time.perf_counter()
            direct.post(f"{target}/things", json={"n": n, "title": "a small write"}, timeout=10)
            straight.append((time.perf_counter() - sent) * 1000)
        return {
            "start of airlock run until /healthz, wall ms": start * 1000,
            "start of airlock run until /healthz, CPU ms": start_cpu * 1000,
            "POST through the proxy, median ms": statistics.median(times),
            "POST through the proxy, p99 ms": times[int(len(times) * 0.99) - 1],
            "POST straight to the upstream (no proxy), median ms": statistics.median(straight),
        }
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def process_cpu(pid: int) -> float:
    """CPU seconds (user and system, every thread) process `pid` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def newest_since(data: Path, entries: int) -> str:
    """The time of the entry `entries` before the head, as `export --since` takes it."""
    log = Log.open(data / "log", readonly=True)
    try:
        head = log.head()[0]
        entry = log.entry(max(1, head - entries))
        assert entry is not None
        return datetime.fromtimestamp(entry.ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    finally:
        log.close()


def has_export() -> bool:
    """True when this airlock has the `export` command."""
    return subprocess.run([AIRLOCK, "export", "--help"], capture_output=True).returncode == 0


def cli(data: Path, rounds: int, *args: str) -> tuple[float, float]:
    """The median wall time and CPU time (user and system), in ms, of `airlock ARGS --data DATA`
    run `rounds` times, its output thrown away. The CPU time is the figure to compare on a busy
    machine: waiting for a core does not count in it."""
    cpu: list[float] = []

    def run() -> None:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(
            [AIRLOCK, *args, "--data", str(data)],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        used = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        cpu.append(used * 1000)

    return median_ms(run, rounds), statistics.median(cpu)


def measure(data: Path, size: int, rounds: int, linear: bool, rules: Path, target: str) -> dict[str, float]:
    """Every figure for the log in `data`, which holds about `size` actions."""
    log = Log.open(data / "log", readonly=True)
    newest = log.last_action()
    out: dict[str, float] = {
        "log (newest 20), in-process ms": median_ms(lambda: log.newest(Query()), rounds),
        "log --state in_doubt, in-process ms": median_ms(lambda: log.newest(Query(state="in_doubt")), rounds),
        "log --agent agent-3 -n 50, in-process ms": median_ms(
            lambda: log.newest(Query(agent="agent-3", limit=50)), rounds
        ),
        "show 1 (the oldest), in-process ms": median_ms(lambda: log.action_entries(1), rounds),
        "show NEWEST, in-process ms": median_ms(lambda: log.action_entries(newest), rounds),
        "verify --since-checkpoint, in-process ms": median_ms(log.verify_recent, rounds),
    }
    log.close()
    commands: list[tuple[str, int, list[str]]] = [
        ("airlock --help (Python start)", rounds, ["--help"]),
        ("airlock log", rounds, ["log"]),
        ("airlock log --state in_doubt", rounds, ["log", "--state", "in_doubt"]),
        ("airlock log --agent agent-3 -n 50", rounds, ["log", "--agent", "agent-3", "-n", "50"]),
        ("airlock show 1 (the oldest)", rounds, ["show", "1"]),
        ("airlock show NEWEST", rounds, ["show", str(newest)]),
        ("airlock verify --since-checkpoint", rounds, ["verify", "--since-checkpoint"]),
    ]
    if has_export():
        since = newest_since(data, 1000)
        commands.append(
            ("airlock export --since T (newest ~1000 entries)", rounds, ["export", "--since", since])
        )
        if linear:
            commands.append(("airlock export (all: linear)", 1, ["export"]))
    if linear:
        commands.append(("airlock verify (all: linear)", 1, ["verify"]))
    for name, times, args in commands:
        out[f"{name}, wall ms"], out[f"{name}, CPU ms"] = cli(data, times, *args)
    runs = [proxy_run(data, rules, target) for _ in range(3)]
    for name in runs[0]:
        out[name + " (median of 3 starts)"] = statistics.median(run[name] for run in runs)
    out["data.mdb, MiB"] = (data / "log" / "data.mdb").stat().st_size / (1 << 20)
    return out


def table(rows: dict[str, dict[int, float]], sizes: list[int]) -> None:
    """Print `rows` (name -> size -> figure) with the ratio of each size to the smallest."""
    small = sizes[0]
    width = max(len(name) for name in rows)
    head = "  ".join(f"{s:>10}" for s in sizes) + "  " + "  ".join(f"{f'{s}/{small}':>16}" for s in sizes[1:])
    print(f"\n{'':<{width}}  {head}")
    for name, by_size in rows.items():
        cells = "  ".join(f"{by_size[s]:>10.2f}" if s in by_size else f"{'-':>10}" for s in sizes)
        ratios = "  ".join(
            f"{by_size[s] / by_size[small]:>16.2f}" if s in by_size and by_size.get(small) else f"{'-':>16}"
            for s in sizes[1:]
        )
        print(f"{name:<{width}}  {cells}  {ratios}", flush=True)


class Clock:
    """The simulated time store/append.py stamps entries with while --simulate runs."""

    def __init__(self, now: float):
        self.now = now

    def time(self) -> float:
        """The simulated time, in seconds since the epoch."""
        return self.now


def simulate(root: Path, days: int, rate: int, verify: bool) -> None:
    """--simulate: `days` of `rate` actions a second with a 7-day retention, a line a day."""
    data = root / "sim"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(mode=0o700, parents=True)
    signer = Signer.load_or_create(data)
    key = public_text(signer.public())
    clock = Clock(float(int(time.time()) - days * DAY))
    store.append.time = clock  # type: ignore[assignment,attr-defined]  # this process only
    policy = Retention(max_age=7 * DAY)
    log = Log.open(data / "log", max_size=64 << 30)
    log.start()
    written = removed = 0
    began = day_began = time.perf_counter()

    def append(record: Record, *, wait: bool = False) -> None:
        nonlocal written
        if wait:
            log.append_blocking(record)
        else:
            log.append_soon(record)
        written += 1
        if written % CHECKPOINT_EVERY == 0:
            log.append_soon(checkpoint_record(key, signer.sign))

    print(f"simulating {days} days at {rate} actions a second, retention 7 days, in {data}")
    print(
        f"{'day':>4}  {'data.mdb MiB':>12}  {'in use MiB':>10}  {'entries':>10}  {'oldest, days':>12}"
        f"  {'actions':>10}  {'removed':>10}  {'wall s':>7}",
        flush=True,
    )
    start = clock.now
    for minute in range(days * 1440):
        refs = []
        for second in range(60):
            clock.now = start + minute * 60 + second
            for n in range(rate):
                ref = ActionRef()
                refs.append(ref)
                url = f"https://h{n % 3}.test/things/{minute}/{second}/{n}"
                append(
                    Record(
                        kind="intent",
                        action=ref,
                        state=State.PENDING,
                        new_action=True,
                        data={"action": {"method": "POST", "url": url}},
                        summary={
                            "agent": f"agent-{n % 10}",
                            "method": "POST",
                            "url": url,
                            "host": f"h{n % 3}.test",
                            "effect": "write",
                            "status": None,
                        },
                    ),
                )
        for i, ref in enumerate(refs):
            append(
                Record(kind="outcome", action=ref, state=State.COMMITTED, summary={"status": 200}),
                wait=minute % 10 == 9 and i == len(refs) - 1,
            )
        clock.now = start + (minute + 1) * 60
        if minute % 10 == 9:
            while (entry := log.prune(policy, now=clock.now)) is not None:
                removed += int(entry.data["removed"]["actions"])
        if minute % 1440 == 1439:
            usage = log.usage()
            oldest = (clock.now - usage.oldest_ts) / DAY if usage.oldest_ts is not None else 0.0
            now = time.perf_counter()
            print(
                f"{minute // 1440 + 1:>4}  {(data / 'log' / 'data.mdb').stat().st_size / (1 << 20):>12.1f}"
                f"  {usage.used_bytes / (1 << 20):>10.1f}  {usage.entries:>10}  {oldest:>12.2f}"
                f"  {log.last_action():>10}  {removed:>10}  {now - day_began:>7.1f}",
                flush=True,
            )
            day_began = now
    log.close()
    print(f"{days * DAY * rate} actions in {time.perf_counter() - began:.0f} s wall", flush=True)
    if verify:
        verified = subprocess.run([AIRLOCK, "verify", "--data", str(data)], capture_output=True, text=True)
        print(f"airlock verify: {(verified.stdout or verified.stderr).strip()}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="100000,1000000,10000000", help="actions per log, comma-separated")
    parser.add_argument("--rounds", type=int, default=5, help="runs of each command; the median is shown")
    parser.add_argument("--keep", type=Path, help="build the logs here and keep them (reused by a rerun)")
    parser.add_argument("--full", action="store_true", help="time full verify and export at every size")
    parser.add_argument("--simulate", action="store_true", help="run the retention simulation instead")
    parser.add_argument("--days", type=int, default=30, help="simulated days (--simulate)")
    parser.add_argument("--rate", type=int, default=5, help="simulated actions a second (--simulate)")
    parser.add_argument("--verify", action="store_true", help="verify the simulated log at the end")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="airlock-bench-scale-"))
    if args.simulate:
        simulate(root, args.days, args.rate, args.verify)
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    rules = root / "rules.yaml"
    rules.write_text(RULES)
    server = upstream()
    target = f"http://127.0.0.1:{server.server_address[1]}"
    rows: dict[str, dict[int, float]] = {}
    for size in sizes:
        data = root / f"data-{size}"
        seconds = prepare(data, size)
        print(f"{size} actions: built in {seconds:.0f} s ({data})", flush=True)
        rows.setdefault("build, s", {})[size] = seconds
        for name, value in measure(
            data, size, args.rounds, args.full or size <= 1_000_000, rules, target
        ).items():
            rows.setdefault(name, {})[size] = value
            print(f"  {name}: {value:.2f}", flush=True)
    server.shutdown()
    table(rows, sizes)
    return 0


if __name__ == "__main__":
    sys.exit(main())

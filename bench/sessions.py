"""What sessions cost an action: identity and fencing, a lock, a limit check, against none of them.

Usage: ``.venv/bin/python bench/sessions.py [--requests N] [--rounds R] [--warmup W]``

One `airlock run` serves every measurement; its rules name a lock and a limit by path, so one
proxy serves every variant and the variants can take turns. Every request is a POST with a
~200-byte JSON body (a write: its intent is fsynced before it is forwarded), each to a path of
its own:

  baseline  no credentials (agent `anonymous`), a path no lock or limit rule matches
  session   the same through a session's proxy URL (`airlock session new`): the credentials
            are checked and the intent carries the session's fence, checked in its commit
  lock      session, and a rule `lock: "{path}"` matches (a key per request: nothing waits)
  limit     session, and a rule `limit: {count: 100000000, per: 1m}` matches (never refuses)
  all       session, lock and limit together

Each variant runs at concurrency 1 and 8 in every round; the order rotates per round and is
reversed every other round. The load generator is an aiohttp client with keep-alive (as in
bench/overhead.py), in a process of its own per measurement. Printed: per-action latency
(median, p90) and requests per second, medians over rounds, with each variant's ratio to the
baseline (the median of the rounds' paired comparisons), the proxy's CPU time per request
(from /proc, all its threads) and the durable (fsync'd) commits of its log per request (from
/metrics), the figure a busy machine does not blur. At the end the log is read through the
store: every variant's intents are counted with the session, fence, lock and limits they carry.
A measurement, never a test: it exits 0 once it has measured.

Internal role (started by the orchestrator): ``sessions.py load --url URL ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import overhead  # the sibling script: its upstream, processes and result summary
from overhead import Processes, Result

from store import Log

HERE = Path(__file__).resolve()
CONCURRENCIES = (1, 8)
SETTLE = 0.1  # seconds for the outcomes written lazily (within 5 ms) to land between measurements
LIMIT = 100_000_000  # far above what any run sends in a minute: the check runs, nothing is refused

RULES = f"""\
version: 1
egress:
  allow: [127.0.0.1, localhost]
rules:
  - id: bench-lock
    match: {{path: "/lock/*"}}
    lock: "{{path}}"
  - id: bench-limit
    match: {{path: "/limit/*"}}
    limit: {{count: {LIMIT}, per: 1m}}
  - id: bench-all-lock
    match: {{path: "/all/*"}}
    lock: "{{path}}"
  - id: bench-all-limit
    match: {{path: "/all/*"}}
    limit: {{count: {LIMIT}, per: 1m}}
"""


@dataclass(frozen=True)
class Variant:
    """One way of sending the POSTs: with or without session credentials, under which path."""

    name: str
    session: bool
    path: str  # the first path segment; the rules above decide what it adds


VARIANTS = (
    Variant("baseline", False, "plain"),
    Variant("session", True, "plain"),
    Variant("lock", True, "lock"),
    Variant("limit", True, "limit"),
    Variant("all", True, "all"),
)


# ---- the load generator (its own process) ----------------------------------------------------


async def _drive(
    session: aiohttp.ClientSession, base: str, proxy: str, concurrency: int, n: int, tag: str
) -> Result:
    """Send `n` POSTs from `concurrency` workers sharing one keep-alive session, each to
    `base/TAG-i`: a path, and so a lock key, of its own."""
    tickets = iter(range(n))
    latencies: list[float] = []
    errors = 0
    headers = {"Content-Type": "application/json"}

    async def worker() -> None:
        nonlocal errors
        for i in tickets:
            start = time.perf_counter()
            try:
                url = f"{base}/{tag}-{i}"
                async with session.post(url, data=overhead.BODY, headers=headers, proxy=proxy) as resp:
                    await resp.read()
                    ok = resp.status == 200
            except Exception:
                ok = False
            latencies.append(time.perf_counter() - start)
            errors += not ok

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return overhead.summarize(latencies, errors, time.perf_counter() - began)


async def generate_load(base: str, proxy: str, concurrency: int, n: int, warmup: int, tag: str) -> Result:
    """Warm up the connections, then measure `n` requests."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, cookie_jar=aiohttp.DummyCookieJar()
    ) as session:
        if warmup:
            await _drive(session, base, proxy, concurrency, warmup, f"{tag}w")
        return await _drive(session, base, proxy, concurrency, n, tag)


# ---- the orchestrator --------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used so far, all its threads together."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Airlock:
    """The running proxy: where it listens, its control API, its data directory and its pid."""

    port: int
    control: str
    data: Path
    pid: int

    def commits(self) -> float:
        """How many durable (fsync'd) commits the proxy's log has made so far, from /metrics."""
        token = (self.data / "control.token").read_text().strip()
        request = urllib.request.Request(
            f"{self.control}/metrics", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=30) as r:
            text = r.read().decode()
        line = next(x for x in text.splitlines() if x.startswith("airlock_log_commit_seconds_count"))
        return float(line.split()[-1])

    def cli(self, *args: str) -> str:
        """Run an `airlock` command on this proxy's data directory; its standard output."""
        cmd = [overhead.AIRLOCK, *args, "--data", str(self.data)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise RuntimeError(f"airlock {' '.join(args)} failed: {done.stderr.strip()[-500:]}")
        return done.stdout


def start_airlock(procs: Processes, work: Path) -> Airlock:
    """Start `airlock run` with the lock and limit rules, allowing loopback."""
    port, control = overhead.free_port(), overhead.free_port()
    rules, data, output = work / "rules.yaml", work / "data", work / "airlock.out"
    rules.write_text(RULES)
    cmd = [overhead.AIRLOCK, "run", "--data", str(data), "--rules", str(rules)]
    cmd += ["--listen", f"127.0.0.1:{port}", "--control", f"127.0.0.1:{control}"]
    proc = procs.start(cmd, output)
    overhead.wait_until(
        lambda: overhead.http_ok(f"http://127.0.0.1:{control}/healthz"), proc, "airlock", output
    )
    return Airlock(port, f"http://127.0.0.1:{control}", data, proc.pid)


def measure(base: str, proxy: str, conc: int, args: argparse.Namespace, tag: str) -> Result:
    """One load measurement in a fresh process."""
    cmd = [sys.executable, str(HERE), "load", "--url", base, "--proxy", proxy, "--tag", tag]
    cmd += ["--concurrency", str(conc), "--requests", str(args.requests), "--warmup", str(args.warmup)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"the load generator failed:\n{done.stderr[-2000:]}")
    return Result(**json.loads(done.stdout))


Runs = dict[tuple[str, int], list[Result]]
Figures = dict[tuple[str, int], list[float]]  # per variant and concurrency, one per round


def run_rounds(
    airlock: Airlock, upstream: str, session_url: str, args: argparse.Namespace
) -> tuple[Runs, Figures, Figures]:
    """Every variant at both concurrencies, `args.rounds` times; the order rotates per round and
    is reversed every other round, so no variant always runs first or after the same one."""
    runs: Runs = {}
    cpu: Figures = {}
    commits: Figures = {}
    plain = f"http://127.0.0.1:{airlock.port}"
    for r in range(args.rounds):
        for conc in CONCURRENCIES:
            k = r % len(VARIANTS)
            order = VARIANTS[k:] + VARIANTS[:k]
            for v in order[::-1] if r % 2 else order:
                proxy = session_url if v.session else plain
                time.sleep(SETTLE)
                used, committed = cpu_seconds(airlock.pid), airlock.commits()
                res = measure(f"{upstream}/{v.path}", proxy, conc, args, f"{v.name}.r{r}c{conc}")
                time.sleep(SETTLE)
                # The warm-up requests count too: both are read around the whole run.
                sent = args.requests + args.warmup
                per_request = (cpu_seconds(airlock.pid) - used) / sent * 1e6
                runs.setdefault((v.name, conc), []).append(res)
                cpu.setdefault((v.name, conc), []).append(per_request)
                commits.setdefault((v.name, conc), []).append((airlock.commits() - committed) / sent)
                print(
                    f"  round {r + 1}/{args.rounds}  {v.name:<8} c={conc}  median {res.median_ms:6.2f} ms  "
                    f"p90 {res.p90_ms:6.2f} ms  {res.rps:6.0f} req/s  proxy CPU {per_request:5.0f} µs/req  "
                    f"commits/req {commits[(v.name, conc)][-1]:.2f}  errors {res.errors}",
                    flush=True,
                )
    return runs, cpu, commits


def paired(values: dict[tuple[str, int], list[float]], name: str, conc: int) -> float:
    """Median over rounds of `name`'s figure divided by the baseline's from the same round."""
    pairs = zip(values[(name, conc)], values[("baseline", conc)], strict=True)
    return float(statistics.median(a / b for a, b in pairs))


def report(runs: Runs, cpu: Figures, commits: Figures) -> None:
    """Medians over rounds per variant and concurrency, each with its paired ratio to the baseline,
    then what each variant adds to an action over the baseline."""
    figures: Figures = {}
    print(
        f"\n{'variant':<9} {'conc':>4} {'median ms':>10} {'x':>6} {'p90 ms':>8} {'x':>6} "
        f"{'req/s':>7} {'x':>6} {'CPU µs/req':>11} {'x':>6} {'commits/req':>12} {'errors':>6}"
    )
    for conc in CONCURRENCIES:
        for v in VARIANTS:
            rs = runs[(v.name, conc)]
            row = f"{v.name:<9} {conc:>4}"
            for attr, width in (("median_ms", 10), ("p90_ms", 8), ("rps", 7)):
                figures = {key: [float(getattr(x, attr)) for x in xs] for key, xs in runs.items()}
                value = overhead.med(rs, attr)
                shown = f"{value:.0f}" if attr == "rps" else f"{value:.3f}"
                row += f" {shown:>{width}} {paired(figures, v.name, conc):>6.3f}"
            row += f" {statistics.median(cpu[(v.name, conc)]):>11.0f} {paired(cpu, v.name, conc):>6.3f}"
            row += f" {statistics.median(commits[(v.name, conc)]):>12.2f}"
            print(f"{row} {sum(r.errors for r in rs):>6}")
    print("x: the median over rounds of the variant's figure over the baseline's in the same round")
    print("commits/req: durable (fsync'd) log commits per request, warm-up included")
    medians = {key: [x.median_ms for x in xs] for key, xs in runs.items()}

    def added(values: Figures, name: str, conc: int) -> float:
        pairs = zip(values[(name, conc)], values[("baseline", conc)], strict=True)
        return float(statistics.median(a - b for a, b in pairs))

    print("\nadded per action over the baseline (median over rounds of the paired differences):")
    for v in VARIANTS[1:]:
        print(
            f"  {v.name:<8}"
            + "".join(
                f"  c={c}: latency {added(medians, v.name, c):+.3f} ms, proxy CPU "
                f"{added(cpu, v.name, c):+4.0f} µs, commits {added(commits, v.name, c):+.2f}"
                for c in CONCURRENCIES
            )
        )
    base = ", ".join(
        f"c={c} {overhead.med(runs[('baseline', c)], 'median_ms'):.3f} ms, "
        f"{statistics.median(cpu[('baseline', c)]):.0f} µs"
        for c in CONCURRENCIES
    )
    print(f"  (the baseline: {base})")


def log_check(airlock: Airlock) -> list[str]:
    """What the log holds, read through the store once the proxy has stopped: `verify`, and per
    variant how many intents there are and how many carry a session and epoch, a fence, a lock
    and limits (so each variant did what it is said to measure)."""
    log = Log.open(airlock.data / "log", readonly=True)
    lines = [f"verify: {'ok' if log.verify().ok else 'FAILED'}, {log.head()[0]} entries"]
    census: dict[str, dict[str, int]] = {}
    for entry in log.entries():
        action = entry.data.get("action")
        if entry.kind != "intent" or not isinstance(action, dict):
            continue
        # The path is /SEGMENT/VARIANT.rRcC-I (see run_rounds).
        name = str(action.get("path", "")).split("/")[-1].split(".")[0]
        tally = census.setdefault(name, dict.fromkeys(("intents", "epoch", "fence", "lock", "limits"), 0))
        tally["intents"] += 1
        tally["epoch"] += action.get("session") is not None and action.get("epoch") is not None
        for field in ("fence", "lock", "limits"):
            tally[field] += bool(entry.data.get(field))
    log.close()
    for v in VARIANTS:
        tally = census.get(v.name, {})
        lines.append(f"{v.name:<9}" + ", ".join(f"{k} {v}" for k, v in tally.items()))
    return lines


def orchestrate(args: argparse.Namespace) -> None:
    """Start the upstream and the proxy, open a session, measure every variant, report."""
    began = time.monotonic()
    procs = Processes()
    try:
        with tempfile.TemporaryDirectory(prefix="airlock-sessions-") as tmp:
            work = Path(tmp)
            upstream = f"http://127.0.0.1:{overhead.start_upstream(procs, work)}"
            airlock = start_airlock(procs, work)
            session_url, session_id = airlock.cli(
                "session", "new", "bench-agent", "--listen", f"127.0.0.1:{airlock.port}"
            ).split()[:2]
            print(
                f"POST {len(overhead.BODY)}-byte JSON; {args.rounds} rounds x {args.requests} requests "
                f"(+{args.warmup} warm-up) per variant and concurrency; session {session_id}; "
                f"cpus: {os.cpu_count()}; load average {os.getloadavg()[0]:.2f}",
                flush=True,
            )
            runs, cpu, commits = run_rounds(airlock, upstream, session_url, args)
            procs.stop_all()
            print("the log (intents per variant):")
            for line in log_check(airlock):
                print(f"  {line}")
    finally:
        procs.stop_all()
    report(runs, cpu, commits)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}; took {time.monotonic() - began:.0f} s.")


def build_parser() -> argparse.ArgumentParser:
    """Flags of the benchmark, and the internal role it starts itself in."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=300, help="requests per measurement (default 300)")
    p.add_argument("--rounds", type=int, default=5, help="rounds over all variants (default 5)")
    p.add_argument("--warmup", type=int, default=50, help="warm-up requests per measurement (default 50)")
    sub = p.add_subparsers(dest="role", metavar="")
    load = sub.add_parser("load", help="(internal) run one load measurement, print JSON")
    load.add_argument("--url", required=True)
    load.add_argument("--proxy", required=True)
    load.add_argument("--tag", required=True)
    load.add_argument("--concurrency", type=int, required=True)
    load.add_argument("--requests", type=int, required=True)
    load.add_argument("--warmup", type=int, default=0)
    return p


def main() -> int:
    """Dispatch to the orchestrator or to the load generator."""
    args = build_parser().parse_args()
    if args.role == "load":
        res = asyncio.run(
            generate_load(args.url, args.proxy, args.concurrency, args.requests, args.warmup, args.tag)
        )
        print(json.dumps(asdict(res)))
        return 0
    if args.requests < 2 or args.rounds < 1 or args.warmup < 0:
        build_parser().error("--requests must be at least 2, --rounds at least 1, --warmup at least 0")
    return overhead.orchestrated("sessions", orchestrate, args)


if __name__ == "__main__":
    sys.exit(main())

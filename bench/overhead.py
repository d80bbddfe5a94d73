"""What the proxy costs a mutating request: direct vs plain mitmproxy vs airlock, on loopback.

Usage: ``.venv/bin/python bench/overhead.py [--requests N] [--rounds R] [--warmup W]``

Every request is a POST with a ~200-byte JSON body, which airlock treats as a write: it logs
the intent durably (a synced LMDB commit) before forwarding. Three targets are measured:

  direct    client -> upstream
  mitmproxy client -> mitmdump (no addons of ours) -> upstream
  dataplane client -> Airlock's mitmproxy set-up (its addons and options) without gate or log -> upstream
  airlock   client -> airlock run -> upstream

The project's targets compare airlock with plain mitmproxy. Airlock loads only the mitmproxy
addons it needs, which is cheaper than mitmdump's default set, so "gate and log alone" (airlock
against its own data plane) is printed too: that is what the gate and the durable log cost.

at concurrency 1 (per-request latency) and concurrency 16 (requests per second). The upstream
(an aiohttp app) and every load run are separate processes; the proxies start once and stay up
for all rounds. Rounds alternate the order of the targets, and the report takes the median over
rounds, because a small shared machine is noisy. This is a measurement, never a test: it always
exits 0 once it has measured, whether the targets are met or not.

Internal roles of the same file (started by the orchestrator as subprocesses):
``overhead.py upstream``, ``overhead.py dataplane ...`` and ``overhead.py load ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

BIN = Path(sys.executable).parent
MITMDUMP = str(BIN / "mitmdump")
AIRLOCK = str(BIN / "airlock")
HERE = Path(__file__).resolve()

CONCURRENCY_LATENCY = 1
CONCURRENCY_THROUGHPUT = 16
TARGET_ADDED_MS = 1.0  # airlock's median latency over plain mitmproxy at concurrency 1
TARGET_THROUGHPUT = 0.85  # airlock's req/s as a share of plain mitmproxy's at concurrency 16
STARTUP_SECONDS = 60.0

RULES = """\
version: 1
egress:
  allow: [127.0.0.1, localhost]
"""

# A small JSON body, ~200 bytes, like an agent creating a resource.
BODY = json.dumps(
    {
        "op": "create",
        "kind": "ticket",
        "title": "Benchmark ticket",
        "labels": ["bench", "airlock", "overhead"],
        "assignee": "agent-007",
        "priority": 3,
        "description": "A typical mutating request, to measure the proxy.",
    }
).encode()


# ---- the upstream (its own process) ----------------------------------------------------------


async def serve_upstream() -> None:
    """Answer every request with a tiny JSON; print the bound port once listening."""

    async def answer(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response({"ok": True, "size": len(body)})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock, backlog=1024).start()
    print(sock.getsockname()[1], flush=True)
    await asyncio.Event().wait()


# ---- the load generator (its own process) ----------------------------------------------------


@dataclass(frozen=True)
class Result:
    """One measurement: how many requests, how long, and their latency distribution."""

    requests: int
    errors: int
    seconds: float
    median_ms: float
    p90_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        """Completed requests per second over the whole measurement."""
        return self.requests / self.seconds if self.seconds else 0.0


async def _drive(
    session: aiohttp.ClientSession, url: str, proxy: str | None, concurrency: int, n: int
) -> Result:
    """Send `n` POSTs from `concurrency` workers sharing one keep-alive session."""
    tickets = iter(range(n))
    latencies: list[float] = []
    errors = 0
    headers = {"Content-Type": "application/json"}

    async def worker() -> None:
        nonlocal errors
        for _ in tickets:
            start = time.perf_counter()
            try:
                async with session.post(url, data=BODY, headers=headers, proxy=proxy) as resp:
                    await resp.read()
                    ok = resp.status == 200
            except Exception:
                ok = False
            latencies.append(time.perf_counter() - start)
            errors += not ok

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - began
    return summarize(latencies, errors, seconds)


def summarize(latencies: list[float], errors: int, seconds: float) -> Result:
    """Median, p90 and p99 in milliseconds of a list of latencies in seconds."""
    ms = [x * 1000 for x in latencies]
    cuts = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else ms * 99
    return Result(len(ms), errors, seconds, statistics.median(ms), cuts[89], cuts[98])


async def generate_load(url: str, proxy: str | None, concurrency: int, n: int, warmup: int) -> Result:
    """Warm up the connections, then measure `n` requests."""
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, cookie_jar=aiohttp.DummyCookieJar()
    ) as session:
        if warmup:
            await _drive(session, url, proxy, concurrency, warmup)
        return await _drive(session, url, proxy, concurrency, n)


# ---- processes ------------------------------------------------------------------------------


class Processes:
    """Child processes started by the orchestrator; all are stopped on exit, whatever happens."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        cmd: Sequence[str],
        output: Path,
        *,
        pipe_stdout: bool = False,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start `cmd` in its own session (so a Ctrl-C reaches only us), its output to a file,
        in `env` when given.

        With `pipe_stdout`, stdout stays readable by us and only stderr goes to the file.
        """
        with output.open("ab") as sink:
            proc = subprocess.Popen(
                list(cmd),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipe_stdout else sink,
                stderr=sink if pipe_stdout else subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], wait: float = 10) -> None:
        """SIGTERM one child and wait for it, SIGKILL if it has not exited in `wait` s."""
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def stop_all(self) -> None:
        """Stop every child still running (SIGTERM, then SIGKILL after 10 s)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            self.stop(proc)
        self.procs.clear()


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tail(path: Path, lines: int = 20) -> str:
    """The last lines of a child's output."""
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def wait_until(ready: Callable[[], bool], proc: subprocess.Popen[bytes], what: str, output: Path) -> None:
    """Poll `ready()` until it is true; fail if the process exits or never gets ready."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}:\n{tail(output)}")
        if ready():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} was not ready after {STARTUP_SECONDS:.0f} s:\n{tail(output)}")


def port_open(port: int) -> bool:
    """Whether something accepts TCP connections on loopback `port`."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def http_ok(url: str) -> bool:
    """Whether GET `url` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start_upstream(procs: Processes, work: Path) -> int:
    """Start the upstream server and return the port it reports."""
    output = work / "upstream.err"
    proc = procs.start([sys.executable, str(HERE), "upstream"], output, pipe_stdout=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the port, or nothing if it exits first
    if not line.strip().isdigit():
        raise RuntimeError(f"the upstream did not start (exit status {proc.wait()}):\n{tail(output)}")
    return int(line)


def start_mitmdump(procs: Processes, work: Path) -> str:
    """Start plain mitmdump (default addons only) and return its proxy URL."""
    port = free_port()
    output = work / "mitmdump.out"
    cmd = [
        MITMDUMP,
        "-q",
        "--listen-host",
        "127.0.0.1",
        "--listen-port",
        str(port),
        "--set",
        "connection_strategy=lazy",
        "--set",
        f"confdir={work / 'mitmdump-conf'}",
    ]
    proc = procs.start(cmd, output)
    wait_until(lambda: port_open(port), proc, "mitmdump", output)
    return f"http://127.0.0.1:{port}"


async def serve_data_plane(port: int, work: Path) -> None:
    """Airlock's own mitmproxy data plane (its addons and options) with no gate and no log."""
    from mitmproxy import master, options

    from proxy.ops.config import Address, RunConfig
    from proxy.ops.datadir import DataDir
    from proxy.plane.server import configure, data_plane

    cfg = RunConfig(data=work, listen=Address("127.0.0.1", port))
    m = master.Master(options.Options())
    m.addons.add(*data_plane())
    configure(m.options, cfg, DataDir(work), [f"regular@{cfg.listen}"])
    await m.run()


def start_data_plane(procs: Processes, work: Path) -> str:
    """Start Airlock's data plane without the gate: the baseline for what the gate and log cost."""
    port = free_port()
    output = work / "dataplane.out"
    cmd = [sys.executable, str(HERE), "dataplane", "--port", str(port), "--work", str(work / "dataplane")]
    proc = procs.start(cmd, output)
    wait_until(lambda: port_open(port), proc, "the data plane", output)
    return f"http://127.0.0.1:{port}"


def start_airlock(procs: Processes, work: Path) -> tuple[str, Path]:
    """Start `airlock run` allowing loopback; return its proxy URL and data directory."""
    port, control = free_port(), free_port()
    rules, data, output = work / "rules.yaml", work / "data", work / "airlock.out"
    rules.write_text(RULES)
    cmd = [
        AIRLOCK,
        "run",
        "--data",
        str(data),
        "--rules",
        str(rules),
        "--listen",
        f"127.0.0.1:{port}",
        "--control",
        f"127.0.0.1:{control}",
    ]
    proc = procs.start(cmd, output)
    wait_until(lambda: http_ok(f"http://127.0.0.1:{control}/healthz"), proc, "airlock", output)
    return f"http://127.0.0.1:{port}", data


# ---- the orchestrator -----------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where requests go: straight to the upstream, or through a proxy."""

    name: str
    proxy: str | None


def measure(target: Target, url: str, concurrency: int, n: int, warmup: int) -> Result:
    """Run one load measurement in a fresh process and return its result."""
    cmd = [
        sys.executable,
        str(HERE),
        "load",
        "--url",
        url,
        "--concurrency",
        str(concurrency),
        "--requests",
        str(n),
        "--warmup",
        str(warmup),
    ]
    if target.proxy:
        cmd += ["--proxy", target.proxy]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"the load generator failed against {target.name}:\n{done.stderr[-2000:]}")
    return Result(**json.loads(done.stdout))


def rotated(targets: list[Target], by: int) -> list[Target]:
    """The targets in a different order each round, so none always runs first."""
    k = by % len(targets)
    return targets[k:] + targets[:k]


Runs = dict[tuple[str, int], list[Result]]


def run_rounds(targets: list[Target], url: str, args: argparse.Namespace) -> Runs:
    """Every target at both concurrencies, `args.rounds` times, order alternating per round."""
    runs: Runs = {}
    for r in range(args.rounds):
        for conc in (CONCURRENCY_LATENCY, CONCURRENCY_THROUGHPUT):
            for target in rotated(targets, r):
                res = measure(target, url, conc, args.requests, args.warmup)
                runs.setdefault((target.name, conc), []).append(res)
                print(
                    f"  round {r + 1}/{args.rounds}  {target.name:<9} c={conc:<2}  "
                    f"median {res.median_ms:6.2f} ms  p99 {res.p99_ms:6.2f} ms  "
                    f"{res.rps:7.0f} req/s  errors {res.errors}",
                    flush=True,
                )
    return runs


def med(results: list[Result], attr: str) -> float:
    """The median over rounds of one statistic."""
    return float(statistics.median(float(getattr(r, attr)) for r in results))


def print_table(targets: list[Target], runs: Runs) -> None:
    """Median over rounds of every statistic, one row per target and concurrency."""
    print()
    print(
        f"{'target':<10} {'conc':>4} {'requests':>9} {'errors':>6} {'median ms':>10} {'p90 ms':>8} "
        f"{'p99 ms':>8} {'req/s':>8}"
    )
    print("-" * 70)
    for conc in (CONCURRENCY_LATENCY, CONCURRENCY_THROUGHPUT):
        for t in targets:
            rs = runs[(t.name, conc)]
            print(
                f"{t.name:<10} {conc:>4} {sum(r.requests for r in rs):>9} {sum(r.errors for r in rs):>6} "
                f"{med(rs, 'median_ms'):>10.3f} {med(rs, 'p90_ms'):>8.3f} {med(rs, 'p99_ms'):>8.3f} "
                f"{med(rs, 'rps'):>8.0f}"
            )


def paired(runs: Runs, a: str, b: str, conc: int, attr: str, ratio: bool) -> float:
    """Median over rounds of a's statistic minus (or divided by) b's from the same round."""
    pairs = zip(runs[(a, conc)], runs[(b, conc)], strict=True)
    values = [
        float(getattr(x, attr) / getattr(y, attr) if ratio else getattr(x, attr) - getattr(y, attr))
        for x, y in pairs
    ]
    return statistics.median(values)


def verdict(met: bool) -> str:
    """How a target is reported."""
    return "target met" if met else "target missed"


def print_ratios(runs: Runs) -> None:
    """The project's two targets, plus direct vs mitmproxy for context."""
    c1, c16 = CONCURRENCY_LATENCY, CONCURRENCY_THROUGHPUT
    added = paired(runs, "airlock", "mitmproxy", c1, "median_ms", ratio=False)
    share = paired(runs, "airlock", "mitmproxy", c16, "rps", ratio=True)
    mitm_added = paired(runs, "mitmproxy", "direct", c1, "median_ms", ratio=False)
    mitm_share = paired(runs, "mitmproxy", "direct", c16, "rps", ratio=True)
    print()
    print("Ratios (median over rounds of each round's paired comparison):")
    print(
        f"  airlock added median latency over mitmproxy, c=1: {added:+.3f} ms "
        f"(target <= {TARGET_ADDED_MS:.0f} ms): {verdict(added <= TARGET_ADDED_MS)}"
    )
    print(
        f"  airlock throughput / mitmproxy, c=16:             {share:.1%} "
        f"(target >= {TARGET_THROUGHPUT:.0%}): {verdict(share >= TARGET_THROUGHPUT)}"
    )
    gate_added = paired(runs, "airlock", "dataplane", c1, "median_ms", ratio=False)
    gate_share = paired(runs, "airlock", "dataplane", c16, "rps", ratio=True)
    print(f"  gate and log alone (airlock vs its data plane without them), c=1:  {gate_added:+.3f} ms")
    print(f"  gate and log alone (airlock vs its data plane without them), c=16: {gate_share:.1%}")
    print(f"  context: mitmproxy added median latency over direct, c=1: {mitm_added:+.3f} ms")
    print(f"  context: mitmproxy throughput / direct, c=16:             {mitm_share:.1%}")


def log_check(data: Path) -> str:
    """`airlock verify` on the benchmark's log: shows every POST was in fact logged."""
    done = subprocess.run(
        [AIRLOCK, "verify", "--data", str(data)],
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    return (done.stdout or done.stderr).strip()


def orchestrate(args: argparse.Namespace) -> None:
    """Start the upstream and both proxies, measure every target, print the report."""
    began = time.monotonic()
    procs = Processes()
    with tempfile.TemporaryDirectory(prefix="airlock-bench-") as tmp:
        work = Path(tmp)
        try:
            up_port = start_upstream(procs, work)
            mitm = start_mitmdump(procs, work)
            plane = start_data_plane(procs, work)
            airlock, data = start_airlock(procs, work)
            targets = [
                Target("direct", None),
                Target("mitmproxy", mitm),
                Target("dataplane", plane),
                Target("airlock", airlock),
            ]
            url = f"http://127.0.0.1:{up_port}/items"
            print(
                f"POST {len(BODY)}-byte JSON to {url}; {args.rounds} rounds x {args.requests} requests "
                f"(+{args.warmup} warm-up) per target and concurrency; cpus: {os.cpu_count()}"
            )
            runs = run_rounds(targets, url, args)
            posts = args.rounds * 2 * (args.requests + args.warmup)
            print(f"  airlock log after {posts} POSTs (2 entries each): {log_check(data)}")
        finally:
            procs.stop_all()
    print_table(targets, runs)
    print_ratios(runs)
    print(f"\nTook {time.monotonic() - began:.0f} s.")


# ---- command line ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """Flags of the benchmark, and the internal roles it starts itself in."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=1500, help="requests per measurement (default 1500)")
    p.add_argument("--rounds", type=int, default=3, help="rounds over all targets (default 3)")
    p.add_argument("--warmup", type=int, default=200, help="warm-up requests per measurement (default 200)")
    sub = p.add_subparsers(dest="role", metavar="")
    sub.add_parser("upstream", help="(internal) run the upstream server")
    plane = sub.add_parser("dataplane", help="(internal) run Airlock's data plane without the gate")
    plane.add_argument("--port", type=int, required=True)
    plane.add_argument("--work", type=Path, required=True)
    load = sub.add_parser("load", help="(internal) run one load measurement, print JSON")
    load.add_argument("--url", required=True)
    load.add_argument("--proxy")
    load.add_argument("--concurrency", type=int, required=True)
    load.add_argument("--requests", type=int, required=True)
    load.add_argument("--warmup", type=int, default=0)
    return p


def _exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so the cleanup in `finally` blocks runs."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def orchestrated(
    name: str, orchestrate: Callable[[argparse.Namespace], None], args: argparse.Namespace
) -> int:
    """Run a benchmark's orchestrator: every child stops on SIGTERM or Ctrl-C (130), and a
    failure is one line naming the benchmark (1)."""
    _exit_on_sigterm()
    try:
        orchestrate(args)
    except KeyboardInterrupt:
        print("\ninterrupted; all benchmark processes stopped", file=sys.stderr)
        return 130
    except RuntimeError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to the orchestrator or to one of the internal roles."""
    args = build_parser().parse_args(argv)
    if args.role == "upstream":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_upstream())
        return 0
    if args.role == "dataplane":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_data_plane(args.port, args.work))
        return 0
    if args.role == "load":
        res = asyncio.run(generate_load(args.url, args.proxy, args.concurrency, args.requests, args.warmup))
        print(json.dumps(asdict(res)))
        return 0
    if args.requests < 2 or args.rounds < 1 or args.warmup < 0:
        build_parser().error("--requests must be at least 2, --rounds at least 1, --warmup at least 0")
    return orchestrated("overhead", orchestrate, args)


if __name__ == "__main__":
    sys.exit(main())

"""What watching the proxy costs it: ten /v1/events watchers and /metrics scraped every second.

Usage: ``.venv/bin/python bench/observers.py [--requests N] [--rounds R] [--warmup W]``

One `airlock run` serves every measurement. Each round measures it twice at concurrency 1
(latency) and 16 (requests per second), with POSTs of ~200 bytes (writes: a synced intent each,
two log entries):

  bare      nobody watches
  observed  ten watchers read /v1/events (every entry, as it is written) and a scraper reads
            /metrics once a second, from a process of their own

The order alternates per round; the ratios are the median of each round's paired comparison
(observed over bare). On a small machine the observers' own CPU (ten clients reading every
entry) competes with the proxy's, so the proxy's CPU time per request (user and system, from
/proc, all its threads) is printed as well: what watching costs the proxy itself. The load
generator is bench/overhead.py's, in its own process. This is a measurement, never a test: it
exits 0 once it has measured.

Internal role (started by the orchestrator): ``observers.py watch --control URL --token T``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

import overhead  # the sibling script: its upstream, load generator and processes
from overhead import Processes, Result, Target

HERE = Path(__file__).resolve()
WATCHERS = 10
SCRAPE_EVERY = 1.0
TARGET_RATIO = 0.95  # observed throughput and bare latency within 5% of each other


# ---- the observers (their own process) ---------------------------------------------------------


async def observe(control: str, token: str, watchers: int) -> None:
    """Watch /v1/events with `watchers` connections and scrape /metrics every second until
    SIGTERM; print `ready` once every watcher is connected, and what was read at the end."""
    headers = {"Authorization": f"Bearer {token}"}
    events = [0] * watchers
    scrapes = 0
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    connected = asyncio.Semaphore(0)

    async def watch(session: aiohttp.ClientSession, i: int) -> None:
        async with session.get(f"{control}/v1/events", headers=headers) as r:
            r.raise_for_status()
            connected.release()
            # Counted by chunk, not parsed line by line: the observers' own CPU is not the
            # proxy's cost, and they share the machine with it.
            async for chunk in r.content.iter_any():
                events[i] += chunk.count(b"\nid: ") + chunk.startswith(b"id: ")

    async def scrape(session: aiohttp.ClientSession) -> None:
        nonlocal scrapes
        while True:
            async with session.get(f"{control}/metrics", headers=headers) as r:
                r.raise_for_status()
                await r.read()
            scrapes += 1
            await asyncio.sleep(SCRAPE_EVERY)

    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        tasks = [asyncio.create_task(watch(session, i)) for i in range(watchers)]
        for _ in range(watchers):
            await connected.acquire()
        tasks.append(asyncio.create_task(scrape(session)))
        print("ready", flush=True)
        await stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps({"events": events, "scrapes": scrapes}), flush=True)


# ---- the orchestrator --------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used so far, all its threads together."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_airlock(procs: Processes, work: Path) -> tuple[str, str, str, int]:
    """Start `airlock run` allowing loopback; return its proxy URL, control URL, token and pid."""
    port, control = overhead.free_port(), overhead.free_port()
    rules, data, output = work / "rules.yaml", work / "data", work / "airlock.out"
    rules.write_text(overhead.RULES)
    cmd = [overhead.AIRLOCK, "run", "--data", str(data), "--rules", str(rules)]
    cmd += ["--listen", f"127.0.0.1:{port}", "--control", f"127.0.0.1:{control}"]
    proc = procs.start(cmd, output)
    url = f"http://127.0.0.1:{control}"
    overhead.wait_until(lambda: overhead.http_ok(f"{url}/healthz"), proc, "airlock", output)
    return f"http://127.0.0.1:{port}", url, (data / "control.token").read_text().strip(), proc.pid


def observed(
    target: Target, url: str, control: str, token: str, conc: int, args: argparse.Namespace
) -> tuple[Result, dict[str, object]]:
    """One measurement while the observers watch; what they read meanwhile."""
    cmd = [sys.executable, str(HERE), "watch", "--control", control, "--token", token]
    watching = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        assert watching.stdout is not None
        if watching.stdout.readline().strip() != "ready":
            raise RuntimeError("the observers did not connect")
        result = overhead.measure(target, url, conc, args.requests, args.warmup)
    finally:
        watching.send_signal(signal.SIGTERM)
        out, _ = watching.communicate(timeout=30)
    return result, json.loads(out.strip().splitlines()[-1])


def main() -> None:
    """Measure, print each round, the medians and the ratios."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=200)
    args = parser.parse_args()
    procs = Processes()
    runs: dict[tuple[str, int], list[Result]] = {}
    cpu: dict[tuple[str, int], list[float]] = {}  # the proxy's CPU µs per request
    try:
        with tempfile.TemporaryDirectory(prefix="airlock-observers-") as tmp:
            work = Path(tmp)
            url = f"http://127.0.0.1:{overhead.start_upstream(procs, work)}/bench"
            proxy, control, token, pid = start_airlock(procs, work)
            target = Target("airlock", proxy)
            for r in range(args.rounds):
                for conc in (overhead.CONCURRENCY_LATENCY, overhead.CONCURRENCY_THROUGHPUT):
                    for phase in ("bare", "observed")[:: 1 if r % 2 == 0 else -1]:
                        seen = ""
                        used = cpu_seconds(pid)
                        if phase == "bare":
                            res = overhead.measure(target, url, conc, args.requests, args.warmup)
                        else:
                            res, read = observed(target, url, control, token, conc, args)
                            counts = read["events"]
                            assert isinstance(counts, list)
                            seen = f"  events/watcher {min(counts)}-{max(counts)}  scrapes {read['scrapes']}"
                        # The warm-up requests count too: the CPU is read around the whole run.
                        per_request = (cpu_seconds(pid) - used) / (args.requests + args.warmup) * 1e6
                        cpu.setdefault((phase, conc), []).append(per_request)
                        runs.setdefault((phase, conc), []).append(res)
                        print(
                            f"  round {r + 1}/{args.rounds}  {phase:<8} c={conc:<2}  "
                            f"median {res.median_ms:6.2f} ms  p99 {res.p99_ms:6.2f} ms  "
                            f"{res.rps:7.0f} req/s  proxy CPU {per_request:5.0f} µs/req  "
                            f"errors {res.errors}{seen}",
                            flush=True,
                        )
    finally:
        procs.stop_all()
    report(runs, cpu)


def report(runs: dict[tuple[str, int], list[Result]], cpu: dict[tuple[str, int], list[float]]) -> None:
    """Medians per phase and the paired ratios against the 5% target."""
    print(f"\n{'phase':<9} {'conc':>4} {'median ms':>10} {'p99 ms':>8} {'req/s':>8} {'CPU µs/req':>11}")
    for conc in (overhead.CONCURRENCY_LATENCY, overhead.CONCURRENCY_THROUGHPUT):
        for phase in ("bare", "observed"):
            rs = runs[(phase, conc)]
            print(
                f"{phase:<9} {conc:>4} {overhead.med(rs, 'median_ms'):>10.3f} "
                f"{overhead.med(rs, 'p99_ms'):>8.3f} {overhead.med(rs, 'rps'):>8.0f} "
                f"{statistics.median(cpu[(phase, conc)]):>11.0f}"
            )

    def ratio(conc: int, attr: str) -> float:
        pairs = zip(runs[("observed", conc)], runs[("bare", conc)], strict=True)
        return float(statistics.median(getattr(o, attr) / getattr(b, attr) for o, b in pairs))

    latency = ratio(overhead.CONCURRENCY_LATENCY, "median_ms")
    throughput = ratio(overhead.CONCURRENCY_THROUGHPUT, "rps")
    print()
    verdict = "target met" if latency <= 1 / TARGET_RATIO else "target missed"
    print(f"median latency, observed / bare, c=1:  {latency:.3f}  ({verdict}: <= {1 / TARGET_RATIO:.3f})")
    verdict = "target met" if throughput >= TARGET_RATIO else "target missed"
    print(f"throughput, observed / bare, c=16:     {throughput:.3f}  ({verdict}: >= {TARGET_RATIO:.2f})")
    for conc in (overhead.CONCURRENCY_LATENCY, overhead.CONCURRENCY_THROUGHPUT):
        pairs = zip(cpu[("observed", conc)], cpu[("bare", conc)], strict=True)
        share = statistics.median(o / b for o, b in pairs)
        print(f"the proxy's CPU per request, observed / bare, c={conc}:  {share:.3f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "watch":
        p = argparse.ArgumentParser()
        p.add_argument("role")
        p.add_argument("--control", required=True)
        p.add_argument("--token", required=True)
        p.add_argument("--watchers", type=int, default=WATCHERS)
        a = p.parse_args()
        asyncio.run(observe(a.control, a.token, a.watchers))
    else:
        main()

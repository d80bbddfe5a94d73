"""What a read costs through airlock, now that its intent is durable before it goes upstream.

Usage: ``.venv/bin/python bench/reads.py [--requests N] [--rounds R] [--airlock PATH]...``

GETs (reads) and small POSTs (writes) go through `airlock run` to a local aiohttp upstream,
at concurrency 1 (median latency) and 16 (requests per second), and straight to the upstream
for reference. A read's intent and a write's intent are committed the same way (one synced
group commit, shared by the requests in flight), so a read should cost what a write costs.
Give `--airlock` several times (e.g. the binaries of two checkouts run with PYTHONPATH) to
compare them in one run. A measurement, never a test: it prints ratios and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

BIN = Path(sys.executable).parent
RULES = "version: 1\negress: {allow: [127.0.0.1]}\ndefaults: {read: allow, write: allow}\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def upstream(port: int) -> web.AppRunner:
    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def load(url: str, proxy: str | None, method: str, concurrency: int, n: int) -> tuple[float, float]:
    """(median latency in ms, requests per second) for n requests."""
    latencies: list[float] = []
    left = n
    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                t = time.perf_counter()
                data = b'{"item": 1, "note": "a small body"}' if method == "POST" else None
                async with session.request(method, url, data=data, proxy=proxy) as r:
                    await r.read()
                    assert r.status == 200, r.status
                latencies.append(time.perf_counter() - t)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    return statistics.median(latencies) * 1000, n / seconds


def start_airlock(binary: str, data: Path) -> tuple[subprocess.Popen[bytes], int]:
    port, control = free_port(), free_port()
    (data / "rules.yaml").write_text(RULES)
    cmd = [binary, "run", "--data", str(data / "d"), "--rules", str(data / "rules.yaml")]
    cmd += ["--listen", f"127.0.0.1:{port}", "--control", f"127.0.0.1:{control}", "--rules-poll", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", control)) == 0:
                return proc, port
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"{binary} did not start")


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--airlock", action="append", default=None, help="airlock binary (repeatable)")
    args = p.parse_args()
    binaries = args.airlock or [str(BIN / "airlock")]
    up_port = free_port()
    runner = await upstream(up_port)
    url = f"http://127.0.0.1:{up_port}/items"
    results: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        procs = []
        for i, binary in enumerate(binaries):
            data = Path(tmp) / str(i)
            data.mkdir()
            procs.append((binary, *start_airlock(binary, data)))
        try:
            for _ in range(args.rounds):
                for method in ("GET", "POST"):
                    for conc in (1, 16):
                        n = args.requests if conc == 16 else args.requests // 4
                        key = f"direct {method} c{conc}"
                        results.setdefault(key, []).append(await load(url, None, method, conc, n))
                        for i, (_, _, port) in enumerate(procs):
                            key = f"airlock#{i} {method} c{conc}"
                            proxy = f"http://127.0.0.1:{port}"
                            results.setdefault(key, []).append(await load(url, proxy, method, conc, n))
        finally:
            for _, proc, _ in procs:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
    await runner.cleanup()
    for i, (binary, _, _) in enumerate(procs):
        print(f"airlock#{i}: {binary}")
    print(f"{'target':28} {'median ms (c1)':>15} {'req/s (c16)':>12}")
    for key in sorted({k.rsplit(" ", 1)[0] for k in results}):
        c1 = statistics.median(ms for ms, _ in results[f"{key} c1"])
        c16 = statistics.median(rps for _, rps in results[f"{key} c16"])
        print(f"{key:28} {c1:15.2f} {c16:12.0f}")


if __name__ == "__main__":
    asyncio.run(main())

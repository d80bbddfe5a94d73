"""What one action costs in the log, in bytes: the growth of the pages LMDB uses (not the file's
size, which keeps freed pages and grows in steps), divided by the number of actions.

Usage: ``.venv/bin/python bench/sizes.py [--actions N] [--airlock PATH]``

For each kind of action it starts a fresh `airlock run` (its own data dir), sends N of them
through it to a local aiohttp upstream, stops it, and reads the used pages of every database
in the log before and after: a small POST (~100-byte JSON), a 64 KiB POST, an MCP tools/call
(~200 bytes of arguments, to a minimal MCP server the proxy has seen initialize), a GET (a
read), and a GET with a ~2 KiB JSON body (a search query: a read that carries a body). The log
is read with lmdb directly, so the script measures any version of airlock: run it with another
checkout first on PYTHONPATH to compare. A measurement, never a test: it prints a table and
exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import lmdb
from aiohttp import web

BIN = Path(sys.executable).parent
RULES = "version: 1\negress: {allow: [127.0.0.1]}\ndefaults: {read: allow, write: allow}\n"
PROTOCOL = "2025-03-26"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def upstream(port: int) -> web.AppRunner:
    """Answers every request with a small JSON body; /mcp answers as a minimal MCP server."""

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"ok": True})

    async def mcp(request: web.Request) -> web.Response:
        message = await request.json()
        headers = {"Mcp-Session-Id": "bench-session"}
        if "id" not in message:
            return web.Response(status=202, headers=headers)
        if message["method"] == "initialize":
            result = {
                "protocolVersion": PROTOCOL,
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "bench"},
            }
        else:
            result = {"content": [{"type": "text", "text": "done"}]}
        return web.json_response({"jsonrpc": "2.0", "id": message["id"], "result": result}, headers=headers)

    app = web.Application(client_max_size=1 << 20)
    app.router.add_post("/mcp", mcp)
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


def used_bytes(log: Path) -> int:
    """Bytes in the pages every database of the log uses (freed pages not counted)."""
    env = lmdb.open(str(log), readonly=True, lock=False, max_dbs=32)
    try:
        with env.begin() as txn:
            stat = txn.stat()
            pages = 2 + stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
            for name, _ in txn.cursor():
                db = env.open_db(bytes(name), txn=txn, create=False)
                s = txn.stat(db)
                pages += s["branch_pages"] + s["leaf_pages"] + s["overflow_pages"]
            return pages * stat["psize"]
    finally:
        env.close()


def start_airlock(binary: str, data: Path, rules: Path) -> tuple[subprocess.Popen[bytes], int]:
    port, control = free_port(), free_port()
    cmd = [binary, "run", "--data", str(data), "--rules", str(rules)]
    cmd += ["--listen", f"127.0.0.1:{port}", "--control", f"127.0.0.1:{control}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", control), timeout=0.2):
                return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"{binary} did not start")


Send = Callable[[aiohttp.ClientSession, str, str, int], Awaitable[None]]


async def small_post(s: aiohttp.ClientSession, base: str, proxy: str, i: int) -> None:
    body = json.dumps({"order": i, "item": "widget", "quantity": 3, "note": "leave at the door, please"})
    async with s.post(f"{base}/orders", data=body, proxy=proxy) as r:
        await r.read()


async def big_post(s: aiohttp.ClientSession, base: str, proxy: str, i: int) -> None:
    async with s.post(f"{base}/upload", data=b"%08d" % i + b"z" * (64 * 1024 - 8), proxy=proxy) as r:
        await r.read()


async def mcp_call(s: aiohttp.ClientSession, base: str, proxy: str, i: int) -> None:
    args = {"name": f"note-{i}", "text": "a note of about two hundred bytes " * 5}
    message = {
        "jsonrpc": "2.0",
        "id": i,
        "method": "tools/call",
        "params": {"name": "write_note", "arguments": args},
    }
    headers = {"Mcp-Session-Id": "bench-session", "Accept": "application/json, text/event-stream"}
    async with s.post(f"{base}/mcp", json=message, headers=headers, proxy=proxy) as r:
        await r.read()


async def mcp_initialize(s: aiohttp.ClientSession, base: str, proxy: str) -> None:
    params = {
        "protocolVersion": PROTOCOL,
        "capabilities": {},
        "clientInfo": {"name": "bench", "version": "1"},
    }
    message = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params}
    async with s.post(f"{base}/mcp", json=message, headers={"Accept": "application/json"}, proxy=proxy) as r:
        await r.read()


async def read(s: aiohttp.ClientSession, base: str, proxy: str, i: int) -> None:
    async with s.get(f"{base}/items/{i}?fields=name,price", proxy=proxy) as r:
        await r.read()


async def search(s: aiohttp.ClientSession, base: str, proxy: str, i: int) -> None:
    query = {"query": {"bool": {"must": [{"match": {"title": f"term-{i}-{n}"}} for n in range(40)]}}}
    async with s.get(f"{base}/notes/_search", json=query, proxy=proxy) as r:
        await r.read()


KINDS: dict[str, Send] = {
    "small POST (~100 B)": small_post,
    "64 KiB POST": big_post,
    "MCP tools/call (~200 B args)": mcp_call,
    "GET (a read)": read,
    "GET _search, ~2 KiB JSON body": search,
}


async def measure(binary: str, kind: str, send: Send, n: int, root: Path, base: str) -> float:
    """Bytes of used pages per action of one kind."""
    data = root / kind.split()[0].lower() / str(abs(hash(kind)))
    rules = root / "rules.yaml"
    proc, port = start_airlock(binary, data, rules)
    proxy = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as s:
            if send is mcp_call:
                await mcp_initialize(s, base, proxy)
            await send(s, base, proxy, -1)  # the first action: pages every log has from then on
            time.sleep(0.3)  # the outcome is written without waiting: let it land
            before = used_bytes(data / "log")
            for i in range(n):
                await send(s, base, proxy, i)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    return (used_bytes(data / "log") - before) / n


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--actions", type=int, default=300, help="actions of each kind (default 300)")
    p.add_argument("--airlock", default=str(BIN / "airlock"), help="the airlock binary")
    args = p.parse_args()
    port = free_port()
    runner = await upstream(port)
    base = f"http://127.0.0.1:{port}"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            (root / "rules.yaml").write_text(RULES)
            print(f"{args.airlock}: bytes of the log per action ({args.actions} of each kind)")
            for kind, send in KINDS.items():
                per = await measure(args.airlock, kind, send, args.actions, root, base)
                print(f"  {kind:<30} {per:>10,.0f}")
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())

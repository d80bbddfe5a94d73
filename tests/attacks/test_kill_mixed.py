"""SIGKILL under a mixed load: every request the upstream saw has a durable intent in the log.

Four kinds of traffic run at once through one `airlock run`: plain writes, JSON-RPC-shaped POSTs to
an upstream that is not an MCP server, keyed requests (Idempotency-Key), and WebSocket messages.
Each request carries a nonce; the upstream records the nonces it received. The proxy is killed
mid-load; after a restart, every nonce the upstream saw must be in an intent entry of the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import aiohttp
import pytest
import requests
from aiohttp import web

from store import Log

from ..support import Airlock, free_port, wait_for

RULES = """\
version: 1
egress:
  allow: [127.0.0.1, localhost]
defaults: {read: allow, write: allow, destructive: allow}
"""

NONCE = re.compile(r"k[a-z]+-\d+-\d+")
KINDS = ("plain", "rpc", "keyed", "ws")


@dataclass
class Recorder:
    """An aiohttp upstream that records the nonce of every request and WebSocket message."""

    port: int
    seen: dict[str, set[str]] = field(default_factory=lambda: {k: set() for k in KINDS})
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        """Base URL."""
        return f"http://127.0.0.1:{self.port}"

    def note(self, text: str) -> None:
        """Record every nonce in `text` under its kind."""
        with self.lock:
            for nonce in NONCE.findall(text):
                self.seen[nonce.split("-")[0][1:]].add(nonce)

    def count(self, kind: str) -> int:
        """Nonces of one kind received so far."""
        with self.lock:
            return len(self.seen[kind])

    def all(self) -> set[str]:
        """Every nonce received."""
        with self.lock:
            return set().union(*self.seen.values())


def _app(rec: Recorder) -> web.Application:
    async def any_request(request: web.Request) -> web.StreamResponse:
        rec.note(await request.text())
        return web.json_response({"ok": True})

    async def socket(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                rec.note(msg.data)
                await ws.send_str("ok")
        return ws

    app = web.Application()
    app.router.add_get("/ws", socket)
    app.router.add_route("*", "/{tail:.*}", any_request)
    return app


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    rec = Recorder(free_port())
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(_app(rec), access_log=None)
    ready = threading.Event()

    async def start() -> None:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", rec.port).start()
        ready.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop)
    assert ready.wait(10)
    yield rec
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def _http(a: Airlock, rec: Recorder, kind: str, worker: int, stop: threading.Event) -> None:
    session = requests.Session()
    i = 0
    while not stop.is_set():
        i += 1
        nonce = f"k{kind}-{worker}-{i}"
        headers: dict[str, str] = {}
        if kind == "rpc":
            url = f"{rec.url}/rpc"
            body = {"jsonrpc": "2.0", "id": i, "method": "eth_sendTransaction", "params": [{"n": nonce}]}
        elif kind == "keyed":
            url, body, headers = f"{rec.url}/orders", {"n": nonce}, {"Idempotency-Key": nonce}
        else:
            url, body = f"{rec.url}/items/{i}", {"n": nonce}
        try:
            session.post(url, json=body, headers=headers, proxies=a.proxies, timeout=5)
        except requests.RequestException:
            session = requests.Session()


def _ws(a: Airlock, rec: Recorder, worker: int, stop: threading.Event) -> None:
    async def run() -> None:
        i = 0
        while not stop.is_set():
            try:
                async with (
                    aiohttp.ClientSession() as session,
                    session.ws_connect(
                        f"{rec.url}/ws", proxy=a.proxy, timeout=aiohttp.ClientWSTimeout(5)
                    ) as ws,
                ):
                    while not stop.is_set():
                        i += 1
                        await ws.send_str(json.dumps({"n": f"kws-{worker}-{i}"}))
                        await asyncio.wait_for(ws.receive(), 5)
            except (aiohttp.ClientError, TimeoutError, ConnectionError):
                await asyncio.sleep(0.05)

    asyncio.run(run())


def _logged_nonces(a: Airlock) -> set[str]:
    log = Log.open(a.data / "log", readonly=True)
    try:
        found: set[str] = set()
        for entry in log.entries():
            if entry.kind == "intent":
                found.update(NONCE.findall(json.dumps(entry.data)))
        return found
    finally:
        log.close()


def test_kill_under_mixed_load_every_effect_has_a_durable_intent(
    make_airlock: Callable[..., Airlock], recorder: Recorder
) -> None:
    a = make_airlock(rules=RULES)
    stop = threading.Event()
    workers = [
        threading.Thread(target=_http, args=(a, recorder, kind, n, stop), daemon=True)
        for kind in ("plain", "rpc", "keyed")
        for n in range(2)
    ]
    workers += [threading.Thread(target=_ws, args=(a, recorder, n, stop), daemon=True) for n in range(2)]
    for w in workers:
        w.start()
    try:
        wait_for(
            lambda: all(recorder.count(k) >= 25 for k in KINDS),
            "the upstream has received every kind of traffic",
            timeout=90,
        )
    finally:
        a.stop(signal.SIGKILL)  # mid-load: requests and messages are in flight everywhere
        time.sleep(0.3)
        stop.set()
        for w in workers:
            w.join(30)

    received = recorder.all()
    a.start()
    logged = _logged_nonces(a)
    missing = sorted(received - logged)
    assert not missing, f"the upstream saw {len(missing)} request(s) with no intent in the log: {missing[:5]}"
    assert all(recorder.count(k) >= 25 for k in KINDS)
    assert a.log("--state", "pending") == []
    with contextlib.suppress(Exception):
        a.stop()
    assert a.cli("verify").returncode == 0

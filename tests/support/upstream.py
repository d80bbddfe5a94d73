"""A real HTTP(S) server on loopback that records every request it receives (its effects)."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Seen:
    """One request as the upstream received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Upstream:
    """The recording server's address and what it has received so far.

    Paths choose the answer: `/status/N` answers N, `/hold...` waits until `release` is set (or a
    minute passes), `/big/N` answers N bytes; anything else answers JSON naming the request."""

    port: int
    scheme: str
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    on_request: Callable[[Seen], None] | None = None
    release: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        """Base URL of the server."""
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def effects(self, method: str | None = None) -> list[Seen]:
        """Requests received so far, optionally only one method."""
        with self.lock:
            return [s for s in self.seen if method is None or s.method == method]


def recording_handler(up: Upstream) -> type[BaseHTTPRequestHandler]:
    """The request handler that records into `up` and answers as `Upstream` describes."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            seen = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            with up.lock:
                up.seen.append(seen)
                n = len(up.seen)
            if up.on_request is not None:
                up.on_request(seen)
            status = 200
            if self.path.startswith("/status/"):
                status = int(self.path.partition("?")[0].split("/")[2])
            if self.path.startswith("/hold"):
                # Keeps the request open until the test releases it (or a minute passes).
                up.release.wait(60)
            if self.path.startswith("/big/"):
                payload = b"x" * int(self.path.split("/")[2])
            else:
                payload = json.dumps(
                    {"method": self.command, "path": self.path, "n": n, "size": len(body)}
                ).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Set-Cookie", "session=upstream-secret-cookie")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _any

    return Handler


@contextmanager
def serving(
    handler: type[BaseHTTPRequestHandler],
    port: int,
    *,
    tls: ssl.SSLContext | None = None,
    release: threading.Event | None = None,
) -> Iterator[None]:
    """Serve `handler` on loopback `port` in a thread; on the way out set `release` (so held
    requests finish) and stop the server."""
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield
    finally:
        if release is not None:
            release.set()
        server.shutdown()
        server.server_close()


@contextmanager
def running(up: Upstream, tls: ssl.SSLContext | None = None) -> Iterator[Upstream]:
    """`up` served on its port (over TLS with `tls`) until the block ends."""
    with serving(recording_handler(up), up.port, tls=tls, release=up.release):
        yield up


def plain_upstream() -> contextlib.AbstractContextManager[Upstream]:
    """A plain HTTP upstream on a free port, for module-scoped fixtures and tests that need two."""
    return running(Upstream(free_port(), "http"))

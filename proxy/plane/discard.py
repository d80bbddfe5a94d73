"""Where the body of a refused upload goes: nowhere, in bounded memory.

mitmproxy reads a request's whole body before it sends an answer the gate sets, so a refusal of
a streaming upload would hold the whole upload in memory first. Instead, the gate points a
refused upload at this loopback endpoint and lets it stream: the endpoint reads the body and
drops it chunk by chunk, then answers with the refusal the gate registered for it (by a
one-time token in a header). Nothing reaches the upstream, and the client gets the refusal in
its own protocol, whatever the body's size.
"""

from __future__ import annotations

import asyncio
import logging
import secrets

import h11
from mitmproxy import http

logger = logging.getLogger(__name__)

TOKEN_HEADER = "X-Airlock-Discard"
HOST = "127.0.0.1"
_READ = 64 * 1024


class Discard:
    """The loopback endpoint refused uploads stream into, and the refusals it answers with."""

    def __init__(self) -> None:
        self.port: int | None = None
        self._server: asyncio.Server | None = None
        self._starting = asyncio.Lock()
        self._answers: dict[str, http.Response] = {}

    def owns(self, host: str, port: int) -> bool:
        """True for this endpoint's address (the one connection egress lets reach loopback for
        it), while it has a refusal to give."""
        return bool(self._answers) and host == HOST and port == self.port

    async def redirect(self, flow: http.HTTPFlow) -> None:
        """Send a refused upload's body here instead of buffering it: the answer the gate set
        becomes this endpoint's answer to it."""
        refusal = flow.response
        assert refusal is not None
        await self._start()
        token = secrets.token_urlsafe(16)
        self._answers[token] = refusal
        flow.response = None
        request = flow.request
        request.scheme, request.host, request.port = "http", HOST, self.port or 0
        request.headers[TOKEN_HEADER] = token
        request.stream = True

    async def _start(self) -> None:
        async with self._starting:
            if self._server is None:
                self._server = await asyncio.start_server(self._serve, HOST, 0)
                self.port = int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        answer: http.Response | None = None
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(_READ))
                    continue
                if isinstance(event, h11.Request):
                    token = dict((k.decode().lower(), v.decode()) for k, v in event.headers).get(
                        TOKEN_HEADER.lower(), ""
                    )
                    answer = self._answers.pop(token, None)
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    break
                # h11.Data: the body, dropped as it comes
            response = answer or http.Response.make(404, b"", {"Content-Type": "text/plain"})
            headers = [(k, v) for k, v in response.headers.items() if k.lower() != "content-length"]
            body = response.raw_content or b""
            headers.append(("Content-Length", str(len(body))))
            writer.write(conn.send(h11.Response(status_code=response.status_code, headers=headers)) or b"")
            writer.write(conn.send(h11.Data(data=body)) or b"")
            writer.write(conn.send(h11.EndOfMessage()) or b"")
            await writer.drain()
        except (h11.RemoteProtocolError, h11.LocalProtocolError, ConnectionError) as e:
            logger.info("a refused upload's connection ended early: %s", e)
        finally:
            writer.close()

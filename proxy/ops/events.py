"""GET /v1/events: the log's new entries as server-sent events, resumable with Last-Event-ID.

One tail thread reads each new entry once (proxy/ops/tail.py); the event loop hands each batch
to every watcher's buffer. A buffer is bounded: a watcher that falls `BUFFER` entries behind
is told so in its stream (`event: dropped`, with the id to resume from) and closed, and the
proxy goes on as if it had never been there. A watcher that sends `Last-Event-ID` first gets
the entries after it, read from the log on a thread, then the live ones, without gaps or
repeats. Each entry is one event: `id:` its sequence number, `data:` the entry as JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque

import orjson
from aiohttp import web

from store import Entry, Log

from .tail import Tail

BUFFER = 4096  # entries a watcher may be behind the log before it is dropped (> tail.CHUNK)
BACKLOG_CHUNK = 256  # entries read from the log at once for a watcher that resumes
WATCHERS = 64  # watchers at once; more get 503
KEEPALIVE = 15.0  # seconds of quiet before a comment line keeps the connection open


class Watcher:
    """One connected watcher: the entries it has yet to be sent, and whether it fell behind."""

    def __init__(self) -> None:
        self.buffer: deque[Event] = deque()
        self.wake = asyncio.Event()
        self.dropped = False

    def take(self) -> list[Event]:
        """The buffered events, oldest first, and an empty buffer."""
        taken = list(self.buffer)
        self.buffer.clear()
        self.wake.clear()
        return taken

    def rejoin(self) -> None:
        """Take buffering up again after falling behind while the log was being read for it (the
        entries it missed are read from the log)."""
        self.buffer.clear()
        self.dropped = False


class Events:
    """The watchers of one control API and the entries the tail hands them."""

    def __init__(self, log: Log, tail: Tail):
        self.log = log
        self.tail = tail
        self.loop: asyncio.AbstractEventLoop | None = None
        self.published = 0  # the last entry handed to the watchers
        self.closing = False
        self._watchers: set[Watcher] = set()
        tail.follow(self._from_tail)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the tail, handing its entries to watchers on `loop` (the one running now)."""
        # The loop first: a batch the tail reads at once is not lost. Whatever it has read by
        # the next line is in the log, where a watcher that asks for it finds it.
        self.loop = loop
        self.tail.start()
        self.published = self.tail.seq

    def _from_tail(self, entries: list[Entry]) -> None:
        # On the tail's thread: each entry encoded once for every watcher, and one wake-up of
        # the loop per batch.
        batch = [encoded(e) for e in entries]
        if self.loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody watches
                self.loop.call_soon_threadsafe(self._publish, batch)

    def _publish(self, batch: list[Event]) -> None:
        self.published = batch[-1][0]
        for watcher in self._watchers:
            if watcher.dropped:
                continue
            if len(watcher.buffer) + len(batch) > BUFFER:
                watcher.dropped = True
            else:
                watcher.buffer.extend(batch)
            watcher.wake.set()

    def watch(self) -> Watcher | None:
        """A new watcher, given every entry published from now on; None when there are too many."""
        if len(self._watchers) >= WATCHERS:
            return None
        watcher = Watcher()
        self._watchers.add(watcher)
        return watcher

    def leave(self, watcher: Watcher) -> None:
        """Forget a watcher that has gone."""
        self._watchers.discard(watcher)

    def close(self) -> None:
        """End every stream (the control API is shutting down)."""
        self.closing = True
        for watcher in self._watchers:
            watcher.wake.set()

    def backlog(self, after: int, upto: int) -> list[Event]:
        """Up to BACKLOG_CHUNK entries after `after` and at most `upto`, as events (reads the
        log: call it on a thread)."""
        entries = itertools.takewhile(lambda e: e.seq <= upto, self.log.entries(after + 1))
        return [encoded(e) for e in itertools.islice(entries, BACKLOG_CHUNK)]


# An entry as a watcher is sent it: its sequence number and its server-sent event.
Event = tuple[int, bytes]


def encoded(entry: Entry) -> Event:
    """One entry as a server-sent event."""
    return entry.seq, b"id: %d\ndata: %s\n\n" % (entry.seq, orjson.dumps(entry.as_dict()))


def dropped(last: int) -> bytes:
    """The event that ends the stream of a watcher that fell behind."""
    message = (
        f"this watcher fell {BUFFER} entries behind the log and was dropped so that the proxy "
        f"is not slowed; reconnect with Last-Event-ID: {last} to resume where it stopped"
    )
    body = {"error": "too_slow", "message": message, "last_event_id": last}
    return b"event: dropped\ndata: %s\n\n" % orjson.dumps(body)


EVENTS = web.AppKey("events", Events)


def _last_event_id(request: web.Request) -> int | None:
    raw = request.headers.get("Last-Event-ID")
    if raw is None or not raw.strip():
        return None
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise web.HTTPBadRequest(
            text=orjson.dumps(
                {"error": "bad_request", "message": "Last-Event-ID must be the id of an event (a number)"}
            ).decode(),
            content_type="application/json",
        )
    return value


async def stream(request: web.Request) -> web.StreamResponse:
    """GET /v1/events: new entries as they are written; with `Last-Event-ID: N`, the entries
    after N first."""
    events = request.app[EVENTS]
    after = _last_event_id(request)
    watcher = events.watch()
    if watcher is None:
        return web.json_response(
            {"error": "too_many_watchers", "message": f"{WATCHERS} watchers are connected; close one"},
            status=503,
        )
    try:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        await response.write(b": watching the log\n\n")
        with contextlib.suppress(ConnectionError):
            await _send(events, watcher, response, events.published if after is None else after)
        return response
    finally:
        events.leave(watcher)


async def _send(events: Events, watcher: Watcher, response: web.StreamResponse, sent: int) -> None:
    # What the log held when the watcher came (and whatever the buffer lost meanwhile): from the
    # log, on a thread. Live entries up to `sent` are then skipped, so none is sent twice.
    while sent < events.published and not events.closing:
        chunk = await asyncio.to_thread(events.backlog, sent, events.published)
        if not chunk:
            break
        await response.write(b"".join(text for _, text in chunk))
        sent = chunk[-1][0]
        if watcher.dropped:
            watcher.rejoin()
    while not events.closing:
        try:
            await asyncio.wait_for(watcher.wake.wait(), KEEPALIVE)
        except TimeoutError:
            await response.write(b": keepalive\n\n")
            continue
        batch = [(seq, text) for seq, text in watcher.take() if seq > sent]
        if batch:
            await response.write(b"".join(text for _, text in batch))
            sent = batch[-1][0]
        if watcher.dropped:
            await response.write(dropped(sent))
            return

"""Server-sent events read incrementally, as the WHATWG event-stream format defines them.

Chunks may split anywhere (inside a line, between `\\r` and `\\n`); only the partial line and
the event being built are kept, and an event larger than `limit` is dropped with a problem
instead of growing without bound.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Event:
    """One dispatched event: its type (`message` when none is named) and its data."""

    type: str
    data: str


class EventStream:
    """Turns chunks of an event stream into events."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.problem: str | None = None
        self._line = bytearray()
        self._size = 0  # bytes in the event being built
        self._type = ""
        self._data: list[str] = []
        self._after_cr = False  # the last chunk ended in `\r`: a `\n` first in the next one ends no line
        self._dropping = False  # the event being built is past the limit: skip it

    def feed(self, chunk: bytes) -> list[Event]:
        """The events the chunk completes."""
        events: list[Event] = []
        start = 0
        if self._after_cr and chunk[:1] == b"\n":
            start = 1
        self._after_cr = False
        n = len(chunk)
        while start < n:
            lf = chunk.find(b"\n", start)
            cr = chunk.find(b"\r", start)
            ends = [i for i in (lf, cr) if i >= 0]
            if not ends:
                self._keep(chunk[start:])
                break
            end = min(ends)
            self._keep(chunk[start:end])
            self._line_done(events)
            if chunk[end : end + 1] == b"\r":
                if end + 1 == n:
                    self._after_cr = True
                elif chunk[end + 1 : end + 2] == b"\n":
                    end += 1
            start = end + 1
        return events

    def _keep(self, part: bytes) -> None:
        if self._dropping:
            return
        if len(self._line) + self._size + len(part) > self.limit:
            self._drop()
            return
        self._line += part

    def _drop(self) -> None:
        self._dropping = True
        self._line.clear()
        self._data.clear()
        self._size = 0
        self.problem = self.problem or f"an event is larger than {self.limit} bytes: it was not read"

    def _line_done(self, events: list[Event]) -> None:
        line = self._line.decode("utf-8", "replace")
        self._line.clear()
        if not line:  # a blank line dispatches the event
            if self._data and not self._dropping:
                events.append(Event(self._type or "message", "\n".join(self._data)))
            self._type, self._data, self._size, self._dropping = "", [], 0, False
            return
        if self._dropping or line.startswith(":"):
            return
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
            self._size += len(value) + 1
        elif name == "event":
            self._type = value

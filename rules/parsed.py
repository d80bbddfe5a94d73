"""Request bodies read as JSON once: `ParsedJson`, and `BODIES`, the bounded owner of the
readings that the rules and the proxy (redaction, MCP messages) share.

A body that looks like JSON but that Python's parser rejects (trailing data, an integer past
4300 digits, invalid UTF-8, nesting past `MAX_DEPTH`) is *ambiguous*: other parsers may accept
it and act on it (see rules.body).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

MAX_DEPTH = 64  # nesting levels of a JSON document that rules read
BOUND = 16  # bodies whose readings BODIES keeps: those of the requests being decided now


@dataclass(frozen=True, slots=True)
class ParsedJson:
    """A body read as JSON: Python's reading (the last of repeated keys wins), or why it cannot
    be read unambiguously."""

    doc: Any = None
    problem: str | None = None
    found: bool = False  # the body is a JSON document


def _parse(body: bytes) -> ParsedJson:
    try:
        doc = json.loads(body)
    except RecursionError:
        return ParsedJson(problem=f"its JSON nests deeper than {MAX_DEPTH} levels")
    except ValueError as e:
        reason = str(e).split(":")[0] if "digits" not in str(e) else "an integer has more than 4300 digits"
        if isinstance(e, UnicodeDecodeError):
            reason = "it is not valid UTF-8"
        return ParsedJson(problem=f"it is not JSON that every parser reads alike ({reason})")
    return ParsedJson(doc=doc, found=True)


class ParsedBodies:
    """The JSON readings of the last `bound` distinct bodies, by their exact bytes: a body is
    parsed once while it is among them; past the bound the least recently read is dropped."""

    def __init__(self, bound: int = BOUND) -> None:
        if bound < 1:
            raise ValueError(f"bound {bound}: keep at least one body")
        self.bound = bound
        self.parses = 0  # bodies parsed, for the promise that a kept body is not parsed again
        self._readings: OrderedDict[bytes, ParsedJson] = OrderedDict()
        self._lock = threading.Lock()  # a reader in another thread never sees the order half-moved

    def __len__(self) -> int:
        return len(self._readings)

    def reading(self, body: bytes) -> ParsedJson:
        """The body's JSON reading, or why it is ambiguous: parsed on first sight, kept after."""
        with self._lock:
            kept = self._readings.get(body)
            if kept is not None:
                self._readings.move_to_end(body)
                return kept
        parsed = _parse(body)  # outside the lock: a large body must not stall other readers
        with self._lock:
            self.parses += 1
            self._readings[body] = parsed
            while len(self._readings) > self.bound:
                self._readings.popitem(last=False)
        return parsed


BODIES = ParsedBodies()


def json_of(body: bytes) -> Any:
    """The body parsed as JSON through BODIES (the last of repeated keys wins), or None when it
    is not JSON that every parser reads alike."""
    return BODIES.reading(body).doc

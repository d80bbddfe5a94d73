"""A model call's answer read as it passes: the tokens it used, the tool calls it proposes.

The gate puts an AnswerReader in the answer's path: it is called with each chunk of the
(decoded) body and passes every chunk on unchanged. How the body is framed comes from its
Content-Type: server-sent events (Anthropic, OpenAI and Gemini streams), AWS's binary event
stream (Bedrock's streams), or one JSON document (every answer that does not stream, and
Gemini's stream without `alt=sse`, a JSON array read element by element). Memory is bounded
whatever the answer's size: a JSON document or event is kept up to `LIMIT`, tool calls'
argument text up to `ARGUMENTS_LIMIT` in all. A reader never raises: what it cannot read it
names in `ModelAnswer.problem`.
"""

from __future__ import annotations

import codecs
import json
import logging
from collections.abc import Callable
from typing import Any

from botocore.eventstream import EventStreamBuffer, EventStreamError, ParserError

from proxy.core.proposals import ModelAnswer
from rules import Inference

from . import providers
from .shapes import CHAT, COMPLETIONS, CONVERSE, GENERATE, INVOKE, MESSAGES, RESPONSES
from .sse import EventStream
from .tally import Tally

logger = logging.getLogger(__name__)

LIMIT = 8 * 1024 * 1024  # a JSON answer, one event, one element of a JSON array stream
ARGUMENTS_LIMIT = 8 * 1024 * 1024  # the argument text of all an answer's tool calls

SSE = "text/event-stream"
EVENTSTREAM = "application/vnd.amazon.eventstream"

Document = Callable[[Tally, dict[str, Any]], None]
# Which reader takes a whole answer, and which an event of a stream, for each API. APIs not
# listed (the token counts) answer with no usage and no calls.
WHOLE: dict[str, Document] = {
    MESSAGES: providers.anthropic_message,
    CHAT: providers.chat_completion,
    COMPLETIONS: providers.chat_completion,
    RESPONSES: providers.response,
    GENERATE: providers.gemini,
    CONVERSE: providers.converse,
    INVOKE: providers.invoked,
}
STREAMED: dict[str, Document] = {
    MESSAGES: providers.anthropic_event,
    CHAT: providers.chat_completion,
    COMPLETIONS: providers.chat_completion,
    RESPONSES: providers.response_event,
    GENERATE: providers.gemini,
}
FRAMED: dict[str, Callable[[Tally, str, dict[str, Any]], None]] = {
    CONVERSE: providers.converse_event,
    INVOKE: providers.invoked_chunk,
}


class AnswerReader:
    """Reads one model call's answer, chunk by chunk, as it passes."""

    def __init__(self, inference: Inference, content_type: str) -> None:
        self.inference = inference
        self.tally = Tally(arguments_limit=ARGUMENTS_LIMIT)
        kind = content_type.split(";", 1)[0].strip().lower()
        self._framing: _Framing
        if kind == SSE:
            self._framing = _Events(self.tally, STREAMED.get(inference.api))
        elif kind == EVENTSTREAM:
            self._framing = _Frames(self.tally, FRAMED.get(inference.api))
        else:
            self._framing = _Json(self.tally, WHOLE.get(inference.api), STREAMED.get(inference.api))
        self._failed = False

    def __call__(self, chunk: bytes) -> bytes:
        """Read `chunk` and return it unchanged."""
        if chunk and not self._failed:
            try:
                self._framing.feed(chunk)
            except Exception:  # a reader's own failure must never touch the answer
                logger.exception("a model answer could not be read")
                self._failed = True
                self.tally.note("Airlock could not read the answer past this point")
        return chunk

    def result(self) -> ModelAnswer:
        """What the answer said, as far as it has passed: call it once, when the answer has
        ended or failed (a JSON answer is read only then)."""
        try:
            self._framing.finish()
            return ModelAnswer(self.tally.usage(), self.tally.calls(), self.tally.model, self.tally.problem)
        except Exception:
            logger.exception("a model answer could not be read")
            return ModelAnswer(problem="Airlock could not read the answer")


class _Framing:
    def __init__(self, tally: Tally) -> None:
        self.tally = tally

    def feed(self, chunk: bytes) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """Read what is left (a whole JSON answer is read only here)."""


def _document(tally: Tally, text: str | bytes, read: Document | None) -> None:
    if read is None:
        return
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as e:
        tally.note(f"the answer holds JSON that cannot be read: {e}")
        return
    if isinstance(doc, dict):
        read(tally, doc)


class _Events(_Framing):
    """Server-sent events, each a JSON document (OpenAI's closing `[DONE]` is none)."""

    def __init__(self, tally: Tally, read: Document | None) -> None:
        super().__init__(tally)
        self.read = read
        self.stream = EventStream(LIMIT)

    def feed(self, chunk: bytes) -> None:
        for event in self.stream.feed(chunk):
            if event.data.strip() != "[DONE]":
                _document(self.tally, event.data, self.read)
        if self.stream.problem is not None:
            self.tally.note(self.stream.problem)


class _Frames(_Framing):
    """AWS's binary event stream: each message a JSON payload named by its `:event-type`."""

    def __init__(self, tally: Tally, read: Callable[[Tally, str, dict[str, Any]], None] | None) -> None:
        super().__init__(tally)
        self.read = read
        self.buffer = EventStreamBuffer()
        self.broken = False

    def feed(self, chunk: bytes) -> None:
        if self.broken:
            return
        self.buffer.add_data(chunk)
        try:
            for message in self.buffer:
                self._message(message.headers, message.payload)
        except (ParserError, EventStreamError) as e:
            self.broken = True
            self.tally.note(f"the event stream is broken: {e}")

    def _message(self, headers: dict[str, Any], payload: bytes) -> None:
        if headers.get(":message-type", "event") != "event" or self.read is None:
            return  # an exception's message: the answer failed, it proposes nothing
        try:
            doc = json.loads(payload) if payload else {}
        except (ValueError, RecursionError):
            self.tally.note(f"a {headers.get(':event-type')} event is not JSON")
            return
        if isinstance(doc, dict):
            self.read(self.tally, str(headers.get(":event-type", "")), doc)


class _Json(_Framing):
    """One JSON document kept whole up to LIMIT and read at the end, or a JSON array (Gemini's
    stream without SSE) read element by element as each completes."""

    def __init__(self, tally: Tally, whole: Document | None, element: Document | None) -> None:
        super().__init__(tally)
        self.whole = whole
        self.element = element
        self.parts: list[str] = []  # the text kept, in pieces: joining on each chunk would copy it all
        self.size = 0
        self.text = codecs.getincrementaldecoder("utf-8")("replace")  # a chunk may end mid-character
        self.over = False
        self.array: bool | None = None  # unknown until the first character that is not space
        self.done = False
        self._decoder = json.JSONDecoder()

    def feed(self, chunk: bytes) -> None:
        if self.over or self.done:
            return
        if self.size + len(chunk) > LIMIT:
            self.over = True
            self.parts, self.size = [], 0
            self.tally.note(f"the answer is larger than {LIMIT} bytes: it was not read")
            return
        text = self.text.decode(chunk)
        self.parts.append(text)
        self.size += len(chunk)
        if self.array is None and (head := text.lstrip()):
            self.array = head.startswith("[")
        if self.array and "}" in text:
            self._elements()

    def _elements(self) -> None:
        """Read every element the text kept completes, and keep only what follows them."""
        text = "".join(self.parts)
        at = 0
        while True:
            while at < len(text) and text[at] in " \t\r\n,[":
                at += 1
            if at >= len(text):
                break
            if text[at] == "]":
                self.done = True
                break
            try:
                doc, at = self._decoder.raw_decode(text, at)
            except ValueError:
                break  # not complete yet
            if isinstance(doc, dict) and self.element is not None:
                self.element(self.tally, doc)
        rest = text[at:]
        self.parts, self.size = [rest], len(rest.encode())

    def finish(self) -> None:
        if self.over or self.done:
            return
        self.done = True
        text = "".join(self.parts) + self.text.decode(b"", final=True)
        self.parts, self.size = [], 0
        if self.array:
            if text.strip(" \t\r\n,]"):
                self.tally.note("the answer's JSON array ends before its last element does")
        elif text.strip():
            _document(self.tally, text, self.whole)

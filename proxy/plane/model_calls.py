"""A model call's answer, read as it passes: the tokens it used and the tool calls it proposes.

The bytes pass on to the agent untouched; a copy of each chunk is decoded from the answer's
Content-Encoding and fed to the provider's reader (proxy/plane/adapters/llm). Nothing here may
fail the answer: a reader that cannot read says why (`ModelAnswer.problem`).
"""

from __future__ import annotations

import dataclasses
import logging

from mitmproxy import http

from proxy.core.proposals import ModelAnswer, estimate_usage
from rules import Inference

from .adapters.encoding import Unpacking
from .adapters.llm import AnswerReader
from .adapters.llm.shapes import CHAT, COMPLETIONS, CONVERSE, GENERATE, INVOKE, MESSAGES, RESPONSES

logger = logging.getLogger(__name__)

# The APIs whose answers generate tokens (the token counts do not).
GENERATING = frozenset({MESSAGES, CHAT, COMPLETIONS, RESPONSES, GENERATE, CONVERSE, INVOKE})


class AnswerTap:
    """Reads one model call's answer on its way to the agent."""

    def __init__(self, inference: Inference, response: http.Response):
        self.inference = inference
        self.unpacking = Unpacking(response.headers.get("content-encoding"))
        self.reader = AnswerReader(inference, response.headers.get("content-type", ""))
        self.fed = False

    def __call__(self, chunk: bytes) -> bytes:
        """Pass `chunk` on unchanged, reading a decoded copy of it."""
        self.fed = True
        try:
            decoded = self.unpacking(chunk)
            if decoded:
                self.reader(decoded)
        except Exception:  # a reader's bug must never break the answer
            logger.exception("a model answer could not be read")
            self.unpacking.problem = self.unpacking.problem or "airlock's reader failed"
        return chunk

    def answer(self, status: int, *, request_bytes: int, answer_bytes: int) -> ModelAnswer:
        """What the answer said, as far as it passed. A successful answer of an API that
        generates tokens but reports none (an OpenAI stream without `include_usage`) is counted
        by estimate from the bytes, so that leaving usage out never stretches a budget."""
        try:
            read = self.reader.result()
        except Exception:
            logger.exception("a model answer could not be read")
            read = ModelAnswer(problem="airlock's reader failed")
        if self.unpacking.problem is not None and read.problem is None:
            read = dataclasses.replace(read, problem=self.unpacking.problem)
        if read.usage is None and 200 <= status < 300 and self.inference.api in GENERATING:
            read = dataclasses.replace(read, usage=estimate_usage(request_bytes, answer_bytes))
        return read

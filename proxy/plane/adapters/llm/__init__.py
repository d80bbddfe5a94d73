"""The model-call adapter: requests to the model APIs agents use read as `llm` actions with the
effect `inference` (classify.py), and the answers they get read for usage and the tool calls
the model proposed (answers.py)."""

from __future__ import annotations

from .answers import ARGUMENTS_LIMIT, LIMIT, AnswerReader
from .classify import PROTOCOL, Declared, classified

__all__ = ["ARGUMENTS_LIMIT", "LIMIT", "PROTOCOL", "AnswerReader", "Declared", "classified"]

"""Tool calls a model proposed, and the actions that carry them out.

A model's answer may propose tool calls (a name and arguments). When an action of the same
agent later calls that tool with the same arguments, its intent names the model call that
proposed it: the log then answers which model output asked for an action. Arguments are
compared by digest, over their canonical JSON form, so a model's `{"b":1,"a":2}` is the MCP
client's `{"a": 2, "b": 1}`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def arguments_digest(arguments: Any) -> str:
    """SHA-256 of arguments in canonical JSON (sorted keys, no spaces); a string that holds a
    JSON document (as OpenAI sends arguments) is read as that document first."""
    if isinstance(arguments, str | bytes):
        try:
            arguments = json.loads(arguments)
        except (ValueError, RecursionError):
            pass  # not JSON: the string itself is the arguments
    try:
        encoded = json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        encoded = repr(arguments)
    return hashlib.sha256(encoded.encode()).hexdigest()

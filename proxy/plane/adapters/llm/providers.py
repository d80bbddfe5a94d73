"""What each model API's answers say, document by document: a whole answer, or one event of a
stream. Each reader takes what it knows from a document into a Tally and ignores the rest; a
document of an unexpected shape adds nothing.

Token counts become Usage in one sense whatever the provider: `input_tokens` is every token of
the prompt, cached or not; `output_tokens` every token generated, reasoning included;
`cached_tokens` the part of the input read from the provider's cache. (Anthropic and Bedrock
report cache reads and writes beside their input count, Gemini its thinking beside its output.)
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from proxy.core.proposals import Usage

from .tally import Tally, count


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


# ---- counting ---------------------------------------------------------------------------------


def anthropic_usage(u: Mapping[str, Any]) -> Usage:
    """Anthropic Messages: cache reads and writes are counted beside `input_tokens`."""
    cached = count(u, "cache_read_input_tokens")
    prompt = count(u, "input_tokens", "cache_creation_input_tokens") + cached
    return Usage(prompt, count(u, "output_tokens"), cached)


def openai_usage(u: Mapping[str, Any]) -> Usage:
    """OpenAI Chat Completions and Completions: `prompt_tokens` includes cached tokens."""
    return Usage(
        count(u, "prompt_tokens"),
        count(u, "completion_tokens"),
        count(u, "prompt_tokens_details.cached_tokens"),
    )


def responses_usage(u: Mapping[str, Any]) -> Usage:
    """OpenAI Responses."""
    return Usage(
        count(u, "input_tokens"), count(u, "output_tokens"), count(u, "input_tokens_details.cached_tokens")
    )


def gemini_usage(u: Mapping[str, Any]) -> Usage:
    """Gemini: the prompt count includes cached content; thinking is counted beside output."""
    return Usage(
        count(u, "promptTokenCount", "toolUsePromptTokenCount"),
        count(u, "candidatesTokenCount", "thoughtsTokenCount"),
        count(u, "cachedContentTokenCount"),
    )


def converse_usage(u: Mapping[str, Any]) -> Usage:
    """Bedrock Converse: cache reads and writes are counted beside `inputTokens`."""
    cached = count(u, "cacheReadInputTokens")
    return Usage(count(u, "inputTokens", "cacheWriteInputTokens") + cached, count(u, "outputTokens"), cached)


def bedrock_metrics_usage(u: Mapping[str, Any]) -> Usage:
    """Bedrock's own invocation metrics, which close every InvokeModel stream."""
    cached = count(u, "cacheReadInputTokenCount")
    prompt = count(u, "inputTokenCount", "cacheWriteInputTokenCount") + cached
    return Usage(prompt, count(u, "outputTokenCount"), cached)


def llama_usage(u: Mapping[str, Any]) -> Usage:
    """Meta Llama's InvokeModel body."""
    return Usage(count(u, "prompt_token_count"), count(u, "generation_token_count"))


# ---- Anthropic Messages -----------------------------------------------------------------------

TOOL_USE = "tool_use"  # server_tool_use and mcp_tool_use run at the provider: no agent action


def anthropic_message(t: Tally, doc: dict[str, Any]) -> None:
    """A whole Messages answer (also the message in a stream's `message_start`)."""
    t.saw_model(doc.get("model"))
    if "usage" in doc:
        t.saw_usage(doc["usage"], anthropic_usage)
    for i, block in enumerate(_list(doc.get("content"))):
        block = _dict(block)
        if block.get("type") == TOOL_USE:
            t.call(("block", i), name=block.get("name"), id=block.get("id"), given=block.get("input"))


def anthropic_event(t: Tally, doc: dict[str, Any]) -> None:
    """One event of a Messages stream."""
    kind = doc.get("type")
    if kind == "message_start":
        anthropic_message(t, _dict(doc.get("message")))
    elif kind == "content_block_start":
        block = _dict(doc.get("content_block"))
        if block.get("type") == TOOL_USE:
            t.call(
                ("block", doc.get("index")),
                name=block.get("name"),
                id=block.get("id"),
                given=block.get("input"),
            )
    elif kind == "content_block_delta":
        delta = _dict(doc.get("delta"))
        if delta.get("type") == "input_json_delta":
            t.arguments(("block", doc.get("index")), delta.get("partial_json"))
    elif kind == "message_delta" and "usage" in doc:
        t.saw_usage(doc["usage"], anthropic_usage)


# ---- OpenAI Chat Completions and Completions --------------------------------------------------


def chat_completion(t: Tally, doc: dict[str, Any]) -> None:
    """A whole Chat Completions answer, or one chunk of its stream (`delta` for `message`)."""
    t.saw_model(doc.get("model"))
    if isinstance(doc.get("usage"), dict):
        t.saw_usage(doc["usage"], openai_usage)
    for position, choice in enumerate(_list(doc.get("choices"))):
        choice = _dict(choice)
        n = choice.get("index", position)
        message = _dict(choice.get("message") or choice.get("delta"))
        streamed = "delta" in choice
        for j, call in enumerate(_list(message.get("tool_calls"))):
            call = _dict(call)
            key = ("tool", n, call.get("index", j) if streamed else j)
            function = _dict(call.get("function") or call.get("custom"))
            text = function.get("arguments", function.get("input"))
            if streamed:
                t.call(key, name=function.get("name"), id=call.get("id"))
                t.arguments(key, text)
            else:
                t.call(key, name=function.get("name"), id=call.get("id"), given=text)
        legacy = _dict(message.get("function_call"))  # before tool_calls: one function call
        if legacy:
            t.call(("function", n), name=legacy.get("name"))
            t.arguments(("function", n), legacy.get("arguments"))


# ---- OpenAI Responses -------------------------------------------------------------------------

CALL_ITEMS = {"function_call": "arguments", "custom_tool_call": "input"}


def _response_item(t: Tally, key: Any, item: dict[str, Any]) -> None:
    field = CALL_ITEMS.get(item.get("type", ""))
    if field is not None:
        t.call(("item", key), name=item.get("name"), id=item.get("call_id"), given=item.get(field) or None)


def response(t: Tally, doc: dict[str, Any]) -> None:
    """A whole Responses answer (also the response a stream's last event carries)."""
    t.saw_model(doc.get("model"))
    if isinstance(doc.get("usage"), dict):
        t.saw_usage(doc["usage"], responses_usage)
    for i, item in enumerate(_list(doc.get("output"))):
        _response_item(t, i, _dict(item))


def response_event(t: Tally, doc: dict[str, Any]) -> None:
    """One event of a Responses stream."""
    kind = doc.get("type", "")
    if kind in (
        "response.created",
        "response.in_progress",
        "response.completed",
        "response.incomplete",
        "response.failed",
    ):
        response(t, _dict(doc.get("response")))
    elif kind in ("response.output_item.added", "response.output_item.done"):
        _response_item(t, doc.get("output_index"), _dict(doc.get("item")))
    elif kind in ("response.function_call_arguments.delta", "response.custom_tool_call_input.delta"):
        t.arguments(("item", doc.get("output_index")), doc.get("delta"))
    elif kind == "response.function_call_arguments.done":
        t.call(("item", doc.get("output_index")), given=doc.get("arguments"))


# ---- Gemini -----------------------------------------------------------------------------------


def gemini(t: Tally, doc: dict[str, Any]) -> None:
    """A generateContent answer, or one of a stream's (each carries whole function calls, and
    the usage so far)."""
    t.saw_model(doc.get("modelVersion"))
    if isinstance(doc.get("usageMetadata"), dict):
        t.saw_usage(doc["usageMetadata"], gemini_usage)
    for candidate in _list(doc.get("candidates")):
        for part in _list(_dict(_dict(candidate).get("content")).get("parts")):
            function = _dict(_dict(part).get("functionCall"))
            if function:
                t.call(
                    object(),  # each part carries one whole call
                    name=function.get("name"),
                    id=function.get("id"),
                    given=function.get("args", {}),
                )


# ---- Bedrock ----------------------------------------------------------------------------------


def converse(t: Tally, doc: dict[str, Any]) -> None:
    """A whole Converse answer."""
    if isinstance(doc.get("usage"), dict):
        t.saw_usage(doc["usage"], converse_usage)
    content = _dict(_dict(doc.get("output")).get("message")).get("content")
    for i, block in enumerate(_list(content)):
        use = _dict(_dict(block).get("toolUse"))
        if use:
            t.call(("block", i), name=use.get("name"), id=use.get("toolUseId"), given=use.get("input"))


def converse_event(t: Tally, kind: str, doc: dict[str, Any]) -> None:
    """One event of a ConverseStream answer, by its `:event-type`."""
    if kind == "contentBlockStart":
        use = _dict(_dict(doc.get("start")).get("toolUse"))
        if use:
            t.call(("block", doc.get("contentBlockIndex")), name=use.get("name"), id=use.get("toolUseId"))
    elif kind == "contentBlockDelta":
        use = _dict(_dict(doc.get("delta")).get("toolUse"))
        t.arguments(("block", doc.get("contentBlockIndex")), use.get("input"))
    elif kind == "metadata" and isinstance(doc.get("usage"), dict):
        t.saw_usage(doc["usage"], converse_usage)


METRICS = "amazon-bedrock-invocationMetrics"


def invoked(t: Tally, doc: dict[str, Any]) -> None:
    """A whole InvokeModel answer: the model family's own body, read by its shape (Anthropic's
    Messages, Amazon Nova's Converse, OpenAI's chat completions, Meta Llama's counts)."""
    usage = _dict(doc.get("usage"))
    if doc.get("type") == "message" or "input_tokens" in usage:
        anthropic_message(t, doc)
    elif "inputTokens" in usage:
        converse(t, doc)
    elif "choices" in doc:
        chat_completion(t, doc)
    elif "prompt_token_count" in doc:
        t.saw_usage(doc, llama_usage)


def invoked_chunk(t: Tally, kind: str, doc: dict[str, Any]) -> None:
    """One event of an InvokeModelWithResponseStream answer: a `chunk` carries the model
    family's own event, base64-encoded, and the last one Bedrock's invocation metrics."""
    if kind != "chunk" or not isinstance(doc.get("bytes"), str):
        return
    try:
        inner = json.loads(base64.b64decode(doc["bytes"], validate=True))
    except (ValueError, RecursionError):
        t.note("a chunk of the stream is not base64-encoded JSON")
        return
    if not isinstance(inner, dict):
        return
    if str(inner.get("type", "")).startswith(("message_", "content_block_")):
        anthropic_event(t, inner)
    elif "choices" in inner:
        chat_completion(t, inner)
    if isinstance(inner.get(METRICS), dict):
        t.saw_usage(inner[METRICS], bedrock_metrics_usage)

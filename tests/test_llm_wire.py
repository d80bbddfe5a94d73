"""Model calls on the wire: which requests are calls to a model (protocol llm, effect
inference), what their answers say (usage, the tool calls the model proposed), and a local
server that answers as the providers do.

A real provider cannot be reached from here (this machine has no network but package
registries), so the answers read here are the providers' published wire formats: recorded
shapes of Anthropic Messages, OpenAI Chat Completions and Responses, Gemini generateContent and
Bedrock Converse, and the local server in tests/support/models.py, which the official `openai`
and `anthropic` SDKs are shown to accept as they would a real provider.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import botocore.session
import openai
import pytest
from botocore.awsrequest import AWSPreparedRequest
from mitmproxy import http

from proxy.plane.adapters import cloud
from proxy.plane.adapters.http import from_request
from rules import Action, Effect, Inference, Ruleset
from tests.support.models import ModelServer, ToolCall, Turn, serving_models

INFERENCE, READ, WRITE, DESTRUCTIVE = Effect.INFERENCE, Effect.READ, Effect.WRITE, Effect.DESTRUCTIVE
DECLARED = "llm.test:8000"  # named in `llm: endpoints`: an OpenAI-compatible server
GATEWAY = "gateway.test"  # named without a port: any port


@pytest.fixture(scope="module")
def ruleset(tmp_path_factory: pytest.TempPathFactory) -> Ruleset:
    """No rules; two hosts named as model endpoints."""
    path = tmp_path_factory.mktemp("llm") / "rules.yaml"
    path.write_text(json.dumps({"version": 1, "llm": {"endpoints": [DECLARED, GATEWAY]}, "rules": []}))
    return Ruleset.load(path)


def read(
    ruleset: Ruleset, method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
) -> Action:
    """The action the proxy reads from this request (the HTTP adapter, then the cloud ones)."""
    content = body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
    sent: dict[str | bytes, str | bytes] = {"content-type": "application/json"}
    sent.update(headers or {})
    request = http.Request.make(method, url, b"", sent)
    request.raw_content = content  # as sent: already encoded when a Content-Encoding is named
    return cloud.classified(from_request(request, agent="agent"), ruleset)


# ---- classification ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """A request, and what it must read as (None: not a model call, `effect` its method's)."""

    method: str
    url: str
    body: Any
    inference: Inference | None
    effect: Effect = INFERENCE


CALLS = [
    # Anthropic Messages, streamed and not, and its token count
    Call(
        "POST",
        "https://api.anthropic.com/v1/messages",
        {"model": "claude-sonnet-4-6", "max_tokens": 9},
        Inference("anthropic", "messages", "claude-sonnet-4-6", False),
    ),
    Call(
        "POST",
        "https://api.anthropic.com/v1/messages?beta=true",
        {"model": "claude-haiku-4-5", "stream": True},
        Inference("anthropic", "messages", "claude-haiku-4-5", True),
    ),
    Call(
        "POST",
        "https://api.anthropic.com/v1/messages/count_tokens",
        {"model": "claude-opus-4-1"},
        Inference("anthropic", "count_tokens", "claude-opus-4-1", False),
    ),
    Call("POST", "https://api.anthropic.com/v1/messages/batches", {"requests": []}, None, WRITE),
    Call("DELETE", "https://api.anthropic.com/v1/messages/batches/msgbatch_1", None, None, DESTRUCTIVE),
    Call("POST", "https://api.anthropic.com/v1/files", b"data", None, WRITE),
    # OpenAI Chat Completions, legacy Completions, Responses
    Call(
        "POST",
        "https://api.openai.com/v1/chat/completions",
        {"model": "gpt-4o", "messages": []},
        Inference("openai", "chat.completions", "gpt-4o", False),
    ),
    Call(
        "POST",
        "https://api.openai.com/v1/chat/completions",
        {"model": "gpt-4o-mini", "stream": True},
        Inference("openai", "chat.completions", "gpt-4o-mini", True),
    ),
    Call(
        "POST",
        "https://api.openai.com/v1/completions",
        {"model": "gpt-3.5-turbo-instruct", "prompt": "x"},
        Inference("openai", "completions", "gpt-3.5-turbo-instruct", False),
    ),
    Call(
        "POST",
        "https://api.openai.com/v1/responses",
        {"model": "gpt-5", "input": "hi", "stream": True},
        Inference("openai", "responses", "gpt-5", True),
    ),
    Call("POST", "https://api.openai.com/v1/chat/completions/chatcmpl-1", {"metadata": {}}, None, WRITE),
    Call("DELETE", "https://api.openai.com/v1/responses/resp_1", None, None, DESTRUCTIVE),
    Call("POST", "https://api.openai.com/v1/responses/resp_1/cancel", None, None, WRITE),
    Call("GET", "https://api.openai.com/v1/responses/resp_1", None, None, READ),
    Call("POST", "https://api.openai.com/v1/files", b"--x--", None, WRITE),
    Call("POST", "https://api.openai.com/v1/fine_tuning/jobs", {"model": "gpt-4o"}, None, WRITE),
    Call("POST", "https://api.openai.com/v1/batches", {"endpoint": "/v1/chat/completions"}, None, WRITE),
    Call("POST", "https://api.openai.com/v1/threads/thread_1/messages", {"role": "user"}, None, WRITE),
    Call("POST", "https://api.openai.com/openai/v1/chat/completions", {"model": "gpt-4o"}, None, WRITE),
    # Gemini: the model and the stream in the path
    Call(
        "POST",
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent",
        {"contents": []},
        Inference("gemini", "generateContent", "gemini-2.5-flash", False),
    ),
    Call(
        "POST",
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
        {"contents": []},
        Inference("gemini", "generateContent", "gemini-2.5-pro", True),
    ),
    Call(
        "POST",
        "https://generativelanguage.googleapis.com/v1/models/gemini-2.0-flash%3AgenerateContent",
        {"contents": []},
        Inference("gemini", "generateContent", "gemini-2.0-flash", False),
    ),
    Call(
        "POST",
        "https://generativelanguage.googleapis.com/v1beta/tunedModels/mine:generateContent",
        {},
        Inference("gemini", "generateContent", "tunedModels/mine", False),
    ),
    Call(
        "POST",
        "https://generativelanguage.googleapis.com/v1beta/openai/chat/completions",
        {"model": "gemini-2.5-flash"},
        Inference("gemini", "chat.completions", "gemini-2.5-flash", False),
    ),
    Call(
        "POST",
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:embedContent",
        {},
        None,
        WRITE,
    ),
    Call("POST", "https://generativelanguage.googleapis.com/upload/v1beta/files", b"x", None, WRITE),
    Call(
        "DELETE",
        "https://generativelanguage.googleapis.com/v1beta/cachedContents/c1",
        None,
        None,
        DESTRUCTIVE,
    ),
    # A declared endpoint: the provider from the path's shape, any prefix in front
    Call(
        "POST",
        f"http://{DECLARED}/v1/chat/completions",
        {"model": "llama3", "stream": True},
        Inference("openai-compatible", "chat.completions", "llama3", True),
    ),
    Call(
        "POST",
        f"http://{DECLARED}/openai/v1/chat/completions",
        {"model": "qwen"},
        Inference("openai-compatible", "chat.completions", "qwen", False),
    ),
    Call(
        "POST",
        f"http://{DECLARED}/api/v1/completions",
        {"model": "qwen"},
        Inference("openai-compatible", "completions", "qwen", False),
    ),
    Call(
        "POST",
        f"http://{DECLARED}/v1/responses",
        {"model": "gpt-oss"},
        Inference("openai-compatible", "responses", "gpt-oss", False),
    ),
    Call(
        "POST",
        f"http://{DECLARED}/anthropic/v1/messages",
        {"model": "claude", "stream": True},
        Inference("anthropic", "messages", "claude", True),
    ),
    Call(
        "POST",
        f"http://{DECLARED}/gemini/v1beta/models/gemma:streamGenerateContent",
        {},
        Inference("gemini", "generateContent", "gemma", True),
    ),
    Call(
        "POST",
        f"https://{GATEWAY}/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21",
        {"messages": []},
        Inference("openai-compatible", "chat.completions", "gpt-4o-prod", False),
    ),
    Call(
        "POST",
        f"https://{GATEWAY}:8443/v1/chat/completions",
        {"model": "m"},
        Inference("openai-compatible", "chat.completions", "m", False),
    ),
    Call("POST", f"https://{GATEWAY}/v1/threads/thread_1/messages", {"role": "user"}, None, WRITE),
    Call("POST", f"https://{GATEWAY}/v1/files", {}, None, WRITE),
    Call("DELETE", f"https://{GATEWAY}/v1/responses/resp_1", None, None, DESTRUCTIVE),
    Call("GET", f"http://{DECLARED}/v1/models", None, None, READ),
    # The same shapes anywhere else are plain HTTP: a POST stays a write
    Call("POST", "http://llm.test:9000/v1/chat/completions", {"model": "llama3"}, None, WRITE),
    Call("POST", "https://example.com/v1/messages", {"model": "claude"}, None, WRITE),
    Call("POST", "https://example.com/v1beta/models/gemini-2.5-flash:generateContent", {}, None, WRITE),
    Call("POST", "http://127.0.0.1:8000/v1/chat/completions", {"model": "m"}, None, WRITE),
    Call("POST", "https://api.openai.com.example.com/v1/chat/completions", {"model": "m"}, None, WRITE),
]


@pytest.mark.parametrize("call", CALLS, ids=lambda c: f"{c.method} {c.url}")
def test_classification(ruleset: Ruleset, call: Call) -> None:
    action = read(ruleset, call.method, call.url, call.body)
    assert action.inference == call.inference
    assert action.effect is call.effect
    assert action.protocol == ("llm" if call.inference is not None else "http")


def test_a_request_not_read_as_a_model_call_is_the_same_object(ruleset: Ruleset) -> None:
    from proxy.plane.adapters import llm

    action = from_request(http.Request.make("POST", "https://example.com/v1/messages", b"{}"), agent="a")
    assert llm.classified(action, declared=ruleset.llm_endpoint) is action


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'"text"',
        b"",
        b'{"messages": []}',
        b'{"model": 7, "stream": "yes"}',
        b"{broken",
    ],
    ids=["text", "array", "string", "empty", "no-model", "wrong-types", "broken"],
)
def test_a_body_that_names_no_model_is_still_a_model_call(ruleset: Ruleset, body: bytes) -> None:
    action = read(ruleset, "POST", "https://api.openai.com/v1/chat/completions", body)
    assert action.effect is INFERENCE
    assert action.inference == Inference("openai", "chat.completions", None, False)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_compressed_body_is_read_once_decoded(ruleset: Ruleset, encoding: str) -> None:
    import zlib

    raw = json.dumps({"model": "claude-opus-4-1", "stream": True}).encode()
    body = gzip.compress(raw) if encoding == "gzip" else zlib.compress(raw)
    action = read(
        ruleset, "POST", "https://api.anthropic.com/v1/messages", body, {"content-encoding": encoding}
    )
    assert action.inference == Inference("anthropic", "messages", "claude-opus-4-1", True)


def test_a_body_that_cannot_be_decoded_names_no_model(ruleset: Ruleset) -> None:
    action = read(
        ruleset,
        "POST",
        "https://api.anthropic.com/v1/messages",
        b"\x1f\x8bnot gzip",
        {"content-encoding": "gzip"},
    )
    assert action.effect is INFERENCE and action.body_problem is not None
    assert action.inference == Inference("anthropic", "messages", None, False)


def test_two_models_in_one_body_are_each_decided(ruleset: Ruleset) -> None:
    """Duplicate keys: a last-wins server calls one model, a first-wins server the other."""
    body = b'{"model": "claude-haiku-4-5", "model": "claude-opus-4-1"}'
    action = read(ruleset, "POST", "https://api.anthropic.com/v1/messages", body)
    models = {action.inference.model if action.inference else None}
    models |= {o.inference.model for o in action.others if o.inference}
    assert models == {"claude-haiku-4-5", "claude-opus-4-1"}
    assert all(o.effect is INFERENCE and o.protocol == "llm" for o in action.others)


@pytest.mark.parametrize(
    ("url", "headers"),
    [
        ("https://api.openai.com/v1/chat/completions", {"x-http-method-override": "DELETE"}),
        ("https://api.openai.com/v1/chat/completions?_method=PUT", {}),
        ("https://api.openai.com/v1/chat/completions/..;/../files", {}),
        ("https://api.openai.com/v1/chat/completions", {"x-original-url": "/v1/files/file-1"}),
        (f"http://{DECLARED}/v1/chat/completions", {"x-http-method-override": "DELETE"}),
    ],
    ids=["override-header", "override-query", "path-parameter", "rewrite-header", "declared-override"],
)
def test_a_request_an_upstream_could_read_otherwise_keeps_its_methods_effect(
    ruleset: Ruleset, url: str, headers: dict[str, str]
) -> None:
    action = read(ruleset, "POST", url, {"model": "gpt-4o"}, headers)
    assert action.protocol == "http" and action.inference is None
    assert action.effect in (WRITE, DESTRUCTIVE)


# ---- Bedrock, as botocore signs it ------------------------------------------------------------


class _Sent(Exception):
    """Raised from botocore's before-send to keep the request it made instead of sending it."""

    def __init__(self, request: AWSPreparedRequest) -> None:
        super().__init__("kept")
        self.request = request


def bedrock(method: str, endpoint: str | None = None, **params: Any) -> http.Request:
    """The request botocore signs for `bedrock-runtime.METHOD(**params)` (fake credentials)."""
    client = botocore.session.Session().create_client(
        "bedrock-runtime",
        region_name="us-west-2",
        endpoint_url=endpoint,
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
    )

    def keep(request: AWSPreparedRequest, **_: Any) -> None:
        raise _Sent(request)

    client.meta.events.register("before-send", keep)
    with pytest.raises(_Sent) as sent:
        getattr(client, method)(**params)
    req = sent.value.request
    body = req.body if isinstance(req.body, bytes) else (req.body or "").encode()
    headers: dict[str | bytes, str | bytes] = dict(req.headers.items())
    return http.Request.make(req.method, req.url, body, headers)


MESSAGES = [{"role": "user", "content": [{"text": "hello"}]}]
PROFILE = "arn:aws:bedrock:us-west-2:123456789012:inference-profile/us.anthropic.claude-sonnet-4-6-v1:0"


@pytest.mark.parametrize(
    ("method", "params", "inference"),
    [
        (
            "converse",
            {"modelId": "anthropic.claude-3-haiku-20240307-v1:0", "messages": MESSAGES},
            Inference("bedrock", "converse", "anthropic.claude-3-haiku-20240307-v1:0", False),
        ),
        (
            "converse_stream",
            {"modelId": PROFILE, "messages": MESSAGES},
            Inference("bedrock", "converse", PROFILE, True),
        ),
        (
            "invoke_model",
            {"modelId": "amazon.nova-lite-v1:0", "body": b"{}"},
            Inference("bedrock", "invoke", "amazon.nova-lite-v1:0", False),
        ),
        (
            "invoke_model_with_response_stream",
            {"modelId": "meta.llama3-8b-instruct-v1:0", "body": b"{}"},
            Inference("bedrock", "invoke", "meta.llama3-8b-instruct-v1:0", True),
        ),
    ],
    ids=["converse", "converse-stream", "invoke", "invoke-stream"],
)
@pytest.mark.parametrize(
    "endpoint",
    [
        None,
        "https://bedrock-runtime-fips.us-west-2.amazonaws.com",
        "https://vpce-0abc-12345678.bedrock-runtime.us-west-2.vpce.amazonaws.com",
        f"http://{DECLARED}",
    ],
    ids=["own", "fips", "vpc", "declared"],
)
def test_bedrock_model_calls(
    ruleset: Ruleset, method: str, params: dict[str, Any], inference: Inference, endpoint: str | None
) -> None:
    action = cloud.classified(from_request(bedrock(method, endpoint, **params), agent="agent"), ruleset)
    assert (action.protocol, action.effect, action.inference) == ("llm", INFERENCE, inference)
    # What the AWS adapter read stays: rules on service and operation still match.
    assert (action.service, action.region) == ("bedrock", "us-west-2")
    assert action.operation is not None and action.operation.startswith(("Converse", "InvokeModel"))


def test_bedrock_elsewhere_and_other_operations_stay_aws(ruleset: Ruleset) -> None:
    elsewhere = bedrock("converse", "http://emulator.test:4566", modelId="m", messages=MESSAGES)
    guardrail = bedrock(
        "apply_guardrail", guardrailIdentifier="g", guardrailVersion="1", source="INPUT", content=[]
    )
    for request in (elsewhere, guardrail):
        action = cloud.classified(from_request(request, agent="agent"), ruleset)
        assert (action.protocol, action.inference, action.effect) == ("aws", None, WRITE)


def test_a_rule_on_the_provider_and_model_decides_the_call(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    rules = [{"id": "no-opus", "match": {"protocol": "llm", "model": "*opus*"}, "action": "deny"}]
    path.write_text(json.dumps({"version": 1, "egress": {"allow": ["api.anthropic.com"]}, "rules": rules}))
    ruleset = Ruleset.load(path)
    opus = read(ruleset, "POST", "https://api.anthropic.com/v1/messages", {"model": "claude-opus-4-1"})
    haiku = read(ruleset, "POST", "https://api.anthropic.com/v1/messages", {"model": "claude-haiku-4-5"})
    assert ruleset.evaluate(opus).rule == "no-opus" and ruleset.evaluate(opus).refused
    assert ruleset.evaluate(haiku).rule != "no-opus"


# ---- the local provider, as the official SDKs see it ------------------------------------------


@pytest.fixture(scope="module")
def models() -> Iterator[ModelServer]:
    """The local provider (tests/support/models.py), reached directly: no proxy here."""
    with serving_models() as server:
        yield server


NOTE = ToolCall("delete_note", {"name": "groceries", "force": True})
SEARCH = ToolCall("search_notes", {"query": "milk", "limit": 3})
TOOLS_OPENAI = [
    {"type": "function", "function": {"name": t.name, "parameters": {"type": "object"}}}
    for t in (NOTE, SEARCH)
]
TOOLS_ANTHROPIC = [{"name": t.name, "input_schema": {"type": "object"}} for t in (NOTE, SEARCH)]
TWO_CALLS = Turn(text="", calls=(NOTE, SEARCH), input_tokens=120, output_tokens=31, cached_tokens=64)


# The SDKs' clients are typed loosely here: the tests read their answers as an agent would.
def openai_client(models: ModelServer) -> Any:
    return openai.OpenAI(base_url=models.openai_url, api_key="sk-local", max_retries=0)


def anthropic_client(models: ModelServer) -> Any:
    return anthropic.Anthropic(base_url=models.url, api_key="sk-ant-local", max_retries=0)


def test_openai_sdk_chat_completions(models: ModelServer) -> None:
    models.answer(TWO_CALLS)
    done = openai_client(models).chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "tidy up"}],
        tools=TOOLS_OPENAI,
    )
    calls = done.choices[0].message.tool_calls or []
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        (NOTE.name, NOTE.arguments),
        (SEARCH.name, SEARCH.arguments),
    ]
    assert done.usage is not None and (done.usage.prompt_tokens, done.usage.completion_tokens) == (120, 31)
    assert models.requests()[-1].json["tools"][0]["function"]["name"] == "delete_note"


def test_openai_sdk_chat_completions_streamed(models: ModelServer) -> None:
    models.answer(TWO_CALLS)
    stream = openai_client(models).chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "tidy up"}],
        tools=TOOLS_OPENAI,
        stream=True,
        stream_options={"include_usage": True},
    )
    arguments: dict[int, str] = {}
    names: dict[int, str] = {}
    usage = None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                if call.function and call.function.name:
                    names[call.index] = call.function.name
                if call.function and call.function.arguments:
                    arguments[call.index] = arguments.get(call.index, "") + call.function.arguments
    assert [(names[i], json.loads(arguments[i])) for i in sorted(names)] == [
        (NOTE.name, NOTE.arguments),
        (SEARCH.name, SEARCH.arguments),
    ]
    assert usage is not None and usage.total_tokens == 151


def test_openai_sdk_chat_stream_helper_and_text(models: ModelServer) -> None:
    models.answer(Turn(text="Milk, eggs, bread.", output_tokens=5))
    with openai_client(models).chat.completions.stream(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "list"}],
        stream_options={"include_usage": True},
    ) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.content == "Milk, eggs, bread."
    assert final.usage is not None and final.usage.completion_tokens == 5


def test_openai_sdk_responses(models: ModelServer) -> None:
    models.answer(TWO_CALLS)
    done = openai_client(models).responses.create(model="gpt-5", input="tidy up", tools=[])
    calls = [item for item in done.output if item.type == "function_call"]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        (NOTE.name, NOTE.arguments),
        (SEARCH.name, SEARCH.arguments),
    ]
    assert done.usage is not None and done.usage.input_tokens_details.cached_tokens == 64


def test_openai_sdk_responses_streamed(models: ModelServer) -> None:
    models.answer(Turn(text="Done.", calls=(NOTE,), input_tokens=40, output_tokens=9))
    with openai_client(models).responses.stream(model="gpt-5", input="tidy up") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.delta" in kinds and kinds[-1] == "response.completed"
    assert final.output_text == "Done."
    calls = [item for item in final.output if item.type == "function_call"]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [(NOTE.name, NOTE.arguments)]
    assert final.usage is not None and final.usage.output_tokens == 9


def test_anthropic_sdk_messages(models: ModelServer) -> None:
    models.answer(TWO_CALLS)
    done = anthropic_client(models).messages.create(
        model="claude-sonnet-4-6",
        max_tokens=256,
        messages=[{"role": "user", "content": "tidy up"}],
        tools=TOOLS_ANTHROPIC,
    )
    uses = [b for b in done.content if b.type == "tool_use"]
    assert [(u.name, u.input) for u in uses] == [(NOTE.name, NOTE.arguments), (SEARCH.name, SEARCH.arguments)]
    assert (done.usage.input_tokens, done.usage.cache_read_input_tokens, done.usage.output_tokens) == (
        56,
        64,
        31,
    )
    assert done.stop_reason == "tool_use" and done.model == "claude-sonnet-4-6"


def test_anthropic_sdk_messages_streamed(models: ModelServer) -> None:
    models.answer(TWO_CALLS)
    stream = anthropic_client(models).messages.create(
        model="claude-haiku-4-5",
        max_tokens=256,
        messages=[{"role": "user", "content": "tidy up"}],
        tools=TOOLS_ANTHROPIC,
        stream=True,
    )
    kinds = [event.type for event in stream]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop" and "content_block_delta" in kinds


def test_anthropic_sdk_messages_stream_helper(models: ModelServer) -> None:
    models.answer(Turn(text="On it.", calls=(NOTE,), input_tokens=30, output_tokens=12))
    with anthropic_client(models).messages.stream(
        model="claude-opus-4-1",
        max_tokens=256,
        messages=[{"role": "user", "content": "tidy up"}],
        tools=TOOLS_ANTHROPIC,
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "On it."
    uses = [b for b in final.content if b.type == "tool_use"]
    assert [(u.name, u.input) for u in uses] == [(NOTE.name, NOTE.arguments)]
    assert (final.usage.input_tokens, final.usage.output_tokens) == (30, 12)


def test_the_server_records_requests_and_answers_errors_as_the_provider_does(models: ModelServer) -> None:
    models.answer(Turn(status=429))
    with pytest.raises(anthropic.RateLimitError):
        anthropic_client(models).messages.create(
            model="claude-haiku-4-5", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        )
    seen = models.requests("/v1/messages")[-1]
    assert "sk-ant-local" in (seen.headers.get("x-api-key"), seen.headers.get("authorization", "")[7:])
    assert seen.json["max_tokens"] == 8 and seen.at > 0
    with pytest.raises(openai.NotFoundError):
        openai_client(models).files.list()
    assert models.requests()[-1].method == "GET"

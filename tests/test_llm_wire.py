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

import base64
import gzip
import itertools
import json
import random
import threading
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import botocore.session
import httpx
import openai
import pytest
from botocore.awsrequest import AWSPreparedRequest
from mitmproxy import http

from proxy.core.proposals import ModelAnswer, Usage, arguments_digest
from proxy.plane.adapters import cloud
from proxy.plane.adapters.http import from_request
from proxy.plane.adapters.llm import ARGUMENTS_LIMIT, LIMIT, AnswerReader
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
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:countTokens",
        {"contents": []},
        Inference("gemini", "countTokens", "gemini-2.5-flash", False),
    ),
    Call(
        "POST",
        "https://api.openai.com/v1/responses/input_tokens",
        {"model": "gpt-5", "input": "hi"},
        Inference("openai", "responses.input_tokens", "gpt-5", False),
    ),
    Call("POST", "https://api.openai.com/v1/embeddings", {"model": "text-embedding-3-small"}, None, WRITE),
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


def test_kubernetes_paths_stay_kubernetes_except_on_a_model_endpoint(ruleset: Ruleset) -> None:
    """`/api/v1/...` is a Kubernetes path anywhere but where the rules name a model endpoint."""
    kube = read(ruleset, "POST", "https://k8s.test:6443/api/v1/namespaces/default/configmaps", {"a": 1})
    assert (kube.protocol, kube.inference) == ("k8s", None)
    model = read(ruleset, "POST", f"http://{DECLARED}/api/v1/chat/completions", {"model": "m"})
    assert (model.protocol, model.kube) == ("llm", None)


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
    assert action.others == ()  # no other reading that a write rule could refuse it under
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


# ---- answers: what a model's response says ----------------------------------------------------


def sse(*events: tuple[str | None, Any], newline: str = "\n") -> bytes:
    """Server-sent events as providers write them (Gemini ends its lines with CRLF)."""
    out = ""
    for name, data in events:
        head = f"event: {name}{newline}" if name else ""
        body = data if isinstance(data, str) else json.dumps(data)
        out += f"{head}data: {body}{newline}{newline}"
    return out.encode()


def frame(event_type: str, payload: Any, message_type: str = "event") -> bytes:
    """One message of AWS's event stream encoding (application/vnd.amazon.eventstream): a
    prelude with its CRC32, string headers, the JSON payload, and the message's CRC32."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    fields = {":event-type": event_type, ":content-type": "application/json", ":message-type": message_type}
    headers = b"".join(
        bytes([len(k)]) + k.encode() + b"\x07" + len(v.encode()).to_bytes(2, "big") + v.encode()
        for k, v in fields.items()
    )
    prelude = (12 + len(headers) + len(body) + 4).to_bytes(4, "big") + len(headers).to_bytes(4, "big")
    message = prelude + zlib.crc32(prelude).to_bytes(4, "big") + headers + body
    return message + zlib.crc32(message).to_bytes(4, "big")


def chunk_of(inner: dict[str, Any]) -> bytes:
    """An InvokeModelWithResponseStream `chunk`: the model's own event, base64-encoded."""
    return frame("chunk", {"bytes": base64.b64encode(json.dumps(inner).encode()).decode(), "p": "abcd"})


def deltas(text: str, size: int = 5) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


WEATHER = {"location": "San Francisco, CA", "unit": "fahrenheit"}
LIGHTS = {"brightness": 50, "color_temp": "warm"}


@dataclass(frozen=True)
class Recorded:
    """An answer as a provider sends it (shapes from the providers' API references), and what
    reading it must give: usage (input, output, cached), tool calls (name, arguments, id), model."""

    name: str
    inference: Inference
    content_type: str
    body: bytes
    usage: tuple[int, int, int] | None
    calls: tuple[tuple[str, Any, str | None], ...]
    model: str | None


ANTHROPIC_STREAM = sse(
    (
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": "msg_014p7gG3wDgGV9EUtLvnow3U",
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-4-6",
                "stop_sequence": None,
                "content": [],
                "stop_reason": None,
                "usage": {
                    "input_tokens": 472,
                    "output_tokens": 2,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 128,
                },
            },
        },
    ),
    (
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    ),
    ("ping", {"type": "ping"}),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": "Okay, let's check"},
        },
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    (
        "content_block_start",
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {
                "type": "tool_use",
                "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                "name": "get_weather",
                "input": {},
            },
        },
    ),
    *[
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": p},
            },
        )
        for p in ["", *deltas(json.dumps(WEATHER))]
    ],
    ("content_block_stop", {"type": "content_block_stop", "index": 1}),
    (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {"output_tokens": 89},
        },
    ),
    ("message_stop", {"type": "message_stop"}),
)

OPENAI_STREAM = sse(
    *[
        (
            None,
            {
                "id": "chatcmpl-9",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": "gpt-4o-2024-08-06",
                "choices": [{"index": 0, "delta": d, "finish_reason": None}],
                "usage": None,
            },
        )
        for d in [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_DdmO9pD3xa9XTPNJ32zg2hcA",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    }
                ],
            },
            *[
                {"tool_calls": [{"index": 0, "function": {"arguments": p}}]}
                for p in deltas(json.dumps(WEATHER))
            ],
            {
                "tool_calls": [
                    {
                        "index": 1,
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "set_light", "arguments": ""},
                    }
                ]
            },
            *[
                {"tool_calls": [{"index": 1, "function": {"arguments": p}}]}
                for p in deltas(json.dumps(LIGHTS))
            ],
        ]
    ],
    (
        None,
        {
            "id": "chatcmpl-9",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "gpt-4o-2024-08-06",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}],
            "usage": None,
        },
    ),
    (
        None,
        {
            "id": "chatcmpl-9",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "gpt-4o-2024-08-06",
            "choices": [],
            "usage": {
                "prompt_tokens": 70,
                "completion_tokens": 18,
                "total_tokens": 88,
                "prompt_tokens_details": {"cached_tokens": 32},
            },
        },
    ),
    (None, "[DONE]"),
)

_FC = {"type": "function_call", "id": "fc_12345xyz", "call_id": "call_12345xyz", "name": "get_weather"}
RESPONSES_STREAM = sse(
    (
        "response.created",
        {
            "type": "response.created",
            "sequence_number": 0,
            "response": {
                "id": "resp_1",
                "object": "response",
                "status": "in_progress",
                "model": "gpt-5-2025-08-07",
                "output": [],
                "usage": None,
            },
        },
    ),
    (
        "response.output_item.added",
        {
            "type": "response.output_item.added",
            "sequence_number": 1,
            "output_index": 0,
            "item": _FC | {"arguments": "", "status": "in_progress"},
        },
    ),
    *[
        (
            "response.function_call_arguments.delta",
            {
                "type": "response.function_call_arguments.delta",
                "sequence_number": 2,
                "item_id": "fc_12345xyz",
                "output_index": 0,
                "delta": p,
            },
        )
        for p in deltas(json.dumps(WEATHER))
    ],
    (
        "response.function_call_arguments.done",
        {
            "type": "response.function_call_arguments.done",
            "sequence_number": 9,
            "item_id": "fc_12345xyz",
            "output_index": 0,
            "arguments": json.dumps(WEATHER),
        },
    ),
    (
        "response.output_item.done",
        {
            "type": "response.output_item.done",
            "sequence_number": 10,
            "output_index": 0,
            "item": _FC | {"arguments": json.dumps(WEATHER), "status": "completed"},
        },
    ),
    (
        "response.completed",
        {
            "type": "response.completed",
            "sequence_number": 11,
            "response": {
                "id": "resp_1",
                "object": "response",
                "status": "completed",
                "model": "gpt-5-2025-08-07",
                "output": [_FC | {"arguments": json.dumps(WEATHER), "status": "completed"}],
                "usage": {
                    "input_tokens": 291,
                    "input_tokens_details": {"cached_tokens": 0},
                    "output_tokens": 23,
                    "output_tokens_details": {"reasoning_tokens": 0},
                    "total_tokens": 314,
                },
            },
        },
    ),
)


def _gemini(parts: list[dict[str, Any]], usage: dict[str, int]) -> dict[str, Any]:
    return {
        "candidates": [{"content": {"parts": parts, "role": "model"}, "index": 0}],
        "usageMetadata": usage,
        "modelVersion": "gemini-2.5-flash",
    }


GEMINI_EVENTS = [
    _gemini(
        [{"text": "Turning"}], {"promptTokenCount": 95, "candidatesTokenCount": 2, "totalTokenCount": 97}
    ),
    _gemini(
        [
            {"functionCall": {"name": "set_light", "args": LIGHTS}},
            {"functionCall": {"name": "get_weather", "args": WEATHER}},
        ],
        {
            "promptTokenCount": 95,
            "candidatesTokenCount": 18,
            "thoughtsTokenCount": 40,
            "cachedContentTokenCount": 60,
            "totalTokenCount": 153,
        },
    ),
]

CONVERSE = {
    "output": {
        "message": {
            "role": "assistant",
            "content": [
                {"text": "Let me look."},
                {
                    "toolUse": {
                        "toolUseId": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q",
                        "name": "top_song",
                        "input": {"sign": "WZPZ"},
                    }
                },
            ],
        }
    },
    "stopReason": "tool_use",
    "usage": {"inputTokens": 375, "outputTokens": 36, "totalTokens": 411, "cacheReadInputTokens": 100},
    "metrics": {"latencyMs": 2145},
}

CONVERSE_STREAM = b"".join(
    [
        frame("messageStart", {"role": "assistant", "p": "abcdefgh"}),
        frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Let me look."}}),
        frame("contentBlockStop", {"contentBlockIndex": 0}),
        frame(
            "contentBlockStart",
            {
                "contentBlockIndex": 1,
                "start": {"toolUse": {"toolUseId": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "name": "top_song"}},
            },
        ),
        *[
            frame("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": p}}})
            for p in deltas(json.dumps({"sign": "WZPZ"}))
        ],
        frame("contentBlockStop", {"contentBlockIndex": 1}),
        frame("messageStop", {"stopReason": "tool_use"}),
        frame(
            "metadata",
            {
                "usage": {"inputTokens": 375, "outputTokens": 36, "totalTokens": 411},
                "metrics": {"latencyMs": 2145},
            },
        ),
    ]
)

INVOKE_STREAM = b"".join(
    [
        chunk_of(
            {
                "type": "message_start",
                "message": {
                    "id": "msg_bdrk_1",
                    "type": "message",
                    "role": "assistant",
                    "model": "claude-haiku-4-5-20251001",
                    "content": [],
                    "usage": {"input_tokens": 20, "output_tokens": 1},
                },
            }
        ),
        chunk_of(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {
                    "type": "tool_use",
                    "id": "toolu_bdrk_1",
                    "name": "get_weather",
                    "input": {},
                },
            }
        ),
        *[
            chunk_of(
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "input_json_delta", "partial_json": p},
                }
            )
            for p in deltas(json.dumps(WEATHER))
        ],
        chunk_of({"type": "content_block_stop", "index": 0}),
        chunk_of(
            {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 40}}
        ),
        chunk_of(
            {
                "type": "message_stop",
                "amazon-bedrock-invocationMetrics": {
                    "inputTokenCount": 20,
                    "outputTokenCount": 41,
                    "invocationLatency": 900,
                    "firstByteLatency": 300,
                },
            }
        ),
    ]
)

JSON, SSE, AWS = "application/json", "text/event-stream; charset=utf-8", "application/vnd.amazon.eventstream"
GET_WEATHER = ("get_weather", WEATHER)

RECORDED = [
    Recorded(
        "anthropic",
        Inference("anthropic", "messages", "claude-sonnet-4-6"),
        JSON,
        json.dumps(
            {
                "id": "msg_01Aq9w938a90dw8q",
                "model": "claude-sonnet-4-6",
                "stop_reason": "tool_use",
                "role": "assistant",
                "type": "message",
                "content": [
                    {"type": "text", "text": "I'll check the weather."},
                    {
                        "type": "tool_use",
                        "id": "toolu_01A09q90qw90lq917835lq9",
                        "name": "get_weather",
                        "input": WEATHER,
                    },
                ],
                "usage": {
                    "input_tokens": 472,
                    "output_tokens": 89,
                    "cache_creation_input_tokens": 10,
                    "cache_read_input_tokens": 100,
                },
            }
        ).encode(),
        (582, 89, 100),
        ((*GET_WEATHER, "toolu_01A09q90qw90lq917835lq9"),),
        "claude-sonnet-4-6",
    ),
    Recorded(
        "anthropic-stream",
        Inference("anthropic", "messages", "claude-sonnet-4-6", True),
        SSE,
        ANTHROPIC_STREAM,
        (600, 89, 128),
        ((*GET_WEATHER, "toolu_01T1x1fJ34qAmk2tNTrN7Up6"),),
        "claude-sonnet-4-6",
    ),
    Recorded(
        "openai-chat",
        Inference("openai", "chat.completions", "gpt-4o"),
        JSON,
        json.dumps(
            {
                "id": "chatcmpl-abc123",
                "object": "chat.completion",
                "created": 1699896916,
                "model": "gpt-4o-2024-08-06",
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "tool_calls",
                        "message": {
                            "role": "assistant",
                            "content": None,
                            "tool_calls": [
                                {
                                    "id": "call_abc123",
                                    "type": "function",
                                    "function": {"name": "get_weather", "arguments": json.dumps(WEATHER)},
                                }
                            ],
                        },
                    }
                ],
                "usage": {
                    "prompt_tokens": 82,
                    "completion_tokens": 17,
                    "total_tokens": 99,
                    "prompt_tokens_details": {"cached_tokens": 0},
                },
            }
        ).encode(),
        (82, 17, 0),
        ((*GET_WEATHER, "call_abc123"),),
        "gpt-4o-2024-08-06",
    ),
    Recorded(
        "openai-chat-stream",
        Inference("openai", "chat.completions", "gpt-4o", True),
        SSE,
        OPENAI_STREAM,
        (70, 18, 32),
        ((*GET_WEATHER, "call_DdmO9pD3xa9XTPNJ32zg2hcA"), ("set_light", LIGHTS, "call_2")),
        "gpt-4o-2024-08-06",
    ),
    Recorded(
        "openai-completions",
        Inference("openai", "completions", "gpt-3.5-turbo-instruct"),
        JSON,
        json.dumps(
            {
                "id": "cmpl-1",
                "object": "text_completion",
                "model": "gpt-3.5-turbo-instruct",
                "choices": [{"text": "This is a test.", "index": 0, "finish_reason": "length"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
            }
        ).encode(),
        (5, 7, 0),
        (),
        "gpt-3.5-turbo-instruct",
    ),
    Recorded(
        "openai-responses",
        Inference("openai", "responses", "gpt-5"),
        JSON,
        json.dumps(
            {
                "id": "resp_1",
                "object": "response",
                "status": "completed",
                "model": "gpt-5-2025-08-07",
                "output": [
                    {"type": "reasoning", "id": "rs_1", "summary": []},
                    _FC | {"arguments": json.dumps(WEATHER), "status": "completed"},
                ],
                "usage": {
                    "input_tokens": 291,
                    "input_tokens_details": {"cached_tokens": 256},
                    "output_tokens": 23,
                    "total_tokens": 314,
                },
            }
        ).encode(),
        (291, 23, 256),
        ((*GET_WEATHER, "call_12345xyz"),),
        "gpt-5-2025-08-07",
    ),
    Recorded(
        "openai-responses-stream",
        Inference("openai", "responses", "gpt-5", True),
        SSE,
        RESPONSES_STREAM,
        (291, 23, 0),
        ((*GET_WEATHER, "call_12345xyz"),),
        "gpt-5-2025-08-07",
    ),
    Recorded(
        "gemini",
        Inference("gemini", "generateContent", "gemini-2.5-flash"),
        JSON,
        json.dumps(GEMINI_EVENTS[1]).encode(),
        (95, 58, 60),
        (("set_light", LIGHTS, None), (*GET_WEATHER, None)),
        "gemini-2.5-flash",
    ),
    Recorded(
        "gemini-sse",
        Inference("gemini", "generateContent", "gemini-2.5-flash", True),
        SSE,
        sse(*[(None, e) for e in GEMINI_EVENTS], newline="\r\n"),
        (95, 58, 60),
        (("set_light", LIGHTS, None), (*GET_WEATHER, None)),
        "gemini-2.5-flash",
    ),
    Recorded(
        "gemini-array",
        Inference("gemini", "generateContent", "gemini-2.5-flash", True),
        JSON,
        ("[" + ",\r\n".join(json.dumps(e, indent=2) for e in GEMINI_EVENTS) + "]").encode(),
        (95, 58, 60),
        (("set_light", LIGHTS, None), (*GET_WEATHER, None)),
        "gemini-2.5-flash",
    ),
    Recorded(
        "gemini-openai",
        Inference("gemini", "chat.completions", "gemini-2.5-flash"),
        JSON,
        json.dumps(
            {
                "object": "chat.completion",
                "model": "gemini-2.5-flash",
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "tool_calls": [
                                {
                                    "id": "function-call-1",
                                    "type": "function",
                                    "function": {"name": "get_weather", "arguments": json.dumps(WEATHER)},
                                }
                            ],
                        },
                        "finish_reason": "tool_calls",
                    }
                ],
                "usage": {"prompt_tokens": 40, "completion_tokens": 9, "total_tokens": 49},
            }
        ).encode(),
        (40, 9, 0),
        ((*GET_WEATHER, "function-call-1"),),
        "gemini-2.5-flash",
    ),
    Recorded(
        "bedrock-converse",
        Inference("bedrock", "converse", "anthropic.claude-3-haiku-20240307-v1:0"),
        JSON,
        json.dumps(CONVERSE).encode(),
        (475, 36, 100),
        (("top_song", {"sign": "WZPZ"}, "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q"),),
        None,
    ),
    Recorded(
        "bedrock-converse-stream",
        Inference("bedrock", "converse", "m", True),
        AWS,
        CONVERSE_STREAM,
        (375, 36, 0),
        (("top_song", {"sign": "WZPZ"}, "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q"),),
        None,
    ),
    Recorded(
        "bedrock-invoke-anthropic",
        Inference("bedrock", "invoke", "us.anthropic.claude-haiku-4-5"),
        JSON,
        json.dumps(
            {
                "id": "msg_bdrk_1",
                "type": "message",
                "role": "assistant",
                "model": "claude-haiku-4-5",
                "content": [
                    {"type": "tool_use", "id": "toolu_bdrk_1", "name": "get_weather", "input": WEATHER}
                ],
                "usage": {"input_tokens": 20, "output_tokens": 41},
            }
        ).encode(),
        (20, 41, 0),
        ((*GET_WEATHER, "toolu_bdrk_1"),),
        "claude-haiku-4-5",
    ),
    Recorded(
        "bedrock-invoke-llama",
        Inference("bedrock", "invoke", "meta.llama3-8b-instruct-v1:0"),
        JSON,
        json.dumps(
            {
                "generation": "Hi.",
                "prompt_token_count": 11,
                "generation_token_count": 3,
                "stop_reason": "stop",
            }
        ).encode(),
        (11, 3, 0),
        (),
        None,
    ),
    Recorded(
        "bedrock-invoke-stream",
        Inference("bedrock", "invoke", "anthropic.claude-haiku-4-5", True),
        AWS,
        INVOKE_STREAM,
        (20, 41, 0),
        ((*GET_WEATHER, "toolu_bdrk_1"),),
        "claude-haiku-4-5-20251001",
    ),
    Recorded(
        "count-tokens",
        Inference("anthropic", "count_tokens", "claude-opus-4-1"),
        JSON,
        b'{"input_tokens": 2095}',
        None,
        (),
        None,
    ),
]


def feed(reader: AnswerReader, body: bytes, cuts: list[int]) -> None:
    """Feed `body` cut at these offsets; every chunk must come back unchanged (the same bytes)."""
    passed = []
    for start, end in itertools.pairwise([0, *cuts, len(body)]):
        chunk = body[start:end]
        out = reader(chunk)
        assert out is chunk
        passed.append(out)
    assert b"".join(passed) == body


def expect(answer: ModelAnswer, recorded: Recorded) -> None:
    assert answer.problem is None
    usage = answer.usage
    assert (
        None if usage is None else (usage.input_tokens, usage.output_tokens, usage.cached_tokens)
    ) == recorded.usage
    assert tuple((c.name, c.arguments, c.id) for c in answer.calls) == recorded.calls
    assert answer.model == recorded.model
    for call, (_, arguments, _) in zip(answer.calls, recorded.calls, strict=True):
        assert call.digest == arguments_digest(arguments) == arguments_digest(json.dumps(arguments))


@pytest.mark.parametrize("recorded", RECORDED, ids=lambda r: r.name)
def test_an_answer_read_whole(recorded: Recorded) -> None:
    reader = AnswerReader(recorded.inference, recorded.content_type)
    feed(reader, recorded.body, [])
    expect(reader.result(), recorded)


@pytest.mark.parametrize("recorded", RECORDED, ids=lambda r: r.name)
def test_an_answer_cut_at_every_offset(recorded: Recorded) -> None:
    for cut in range(1, len(recorded.body)):
        reader = AnswerReader(recorded.inference, recorded.content_type)
        feed(reader, recorded.body, [cut])
        expect(reader.result(), recorded)


@pytest.mark.parametrize("recorded", RECORDED, ids=lambda r: r.name)
def test_an_answer_in_random_pieces_and_bytes(recorded: Recorded) -> None:
    rng = random.Random(recorded.name)
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(recorded.body)), min(40, len(recorded.body) - 1)))
        reader = AnswerReader(recorded.inference, recorded.content_type)
        feed(reader, recorded.body, cuts)
        expect(reader.result(), recorded)
    reader = AnswerReader(recorded.inference, recorded.content_type)
    feed(reader, recorded.body, list(range(1, len(recorded.body))))
    expect(reader.result(), recorded)


def test_an_answer_cut_short_says_what_it_saw() -> None:
    """A stream that ends mid-way (a proxy killed, a client gone): the usage and calls so far."""
    body = ANTHROPIC_STREAM
    cut = body.index(b'"partial_json": " Fr') if b'"partial_json": " Fr' in body else len(body) * 2 // 3
    reader = AnswerReader(Inference("anthropic", "messages", "claude-sonnet-4-6", True), SSE)
    feed(reader, body[:cut], [])
    answer = reader.result()
    assert answer.usage is not None and answer.usage.input_tokens == 600
    assert [c.name for c in answer.calls] == ["get_weather"]
    assert isinstance(answer.calls[0].arguments, str)  # the arguments' text so far, not yet JSON


@pytest.mark.parametrize(
    ("inference", "content_type", "body", "problem"),
    [
        (Inference("openai", "chat.completions"), JSON, b'{"usage": {"prompt_tokens": 1', "cannot be read"),
        (Inference("anthropic", "messages"), JSON, b"<html>502 Bad Gateway</html>", "cannot be read"),
        (
            Inference("anthropic", "messages", stream=True),
            SSE,
            sse(
                ("message_start", "{not json"),
                ("message_delta", {"type": "message_delta", "usage": {"output_tokens": 3}}),
            ),
            "cannot be read",
        ),
        (
            Inference("gemini", "generateContent", stream=True),
            JSON,
            b'[{"candidates": []},\r\n{"usageMeta',
            "ends before",
        ),
        (
            Inference("bedrock", "converse", stream=True),
            AWS,
            frame("metadata", {"usage": {}})[:-1] + b"\x00",
            "event stream is broken",
        ),
        (
            Inference("bedrock", "invoke", stream=True),
            AWS,
            frame("chunk", {"bytes": "%%%not base64"}),
            "base64",
        ),
    ],
    ids=["truncated-json", "html", "broken-event", "broken-array", "bad-crc", "bad-base64"],
)
def test_an_answer_that_cannot_be_read_says_why_and_passes_unchanged(
    inference: Inference, content_type: str, body: bytes, problem: str
) -> None:
    for cuts in ([], list(range(1, len(body)))):
        reader = AnswerReader(inference, content_type)
        feed(reader, body, cuts)
        answer = reader.result()
        assert answer.problem is not None and problem in answer.problem


def test_a_later_event_is_read_after_a_broken_one() -> None:
    body = sse(
        ("message_start", "{not json"),
        ("message_delta", {"type": "message_delta", "usage": {"output_tokens": 3}}),
    )
    reader = AnswerReader(Inference("anthropic", "messages", stream=True), SSE)
    feed(reader, body, [])
    assert reader.result().usage == Usage(0, 3, 0)


def test_garbage_never_raises() -> None:
    rng = random.Random(17)
    for inference in (
        Inference("anthropic", "messages", stream=True),
        Inference("bedrock", "converse", stream=True),
        Inference("openai", "responses"),
        Inference("gemini", "generateContent", stream=True),
    ):
        for content_type in (SSE, AWS, JSON, ""):
            body = bytes(rng.randrange(256) for _ in range(4096))
            reader = AnswerReader(inference, content_type)
            feed(reader, body, sorted(rng.sample(range(1, 4096), 50)))
            assert isinstance(reader.result(), ModelAnswer)


MiB = 1024 * 1024


def _peak(run: Callable[[], None]) -> int:
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_an_oversized_json_answer_is_not_kept() -> None:
    """64 MiB of JSON in 1 MiB chunks: the reader keeps at most its limit, then gives up."""
    piece = b" " * MiB
    reader = AnswerReader(Inference("openai", "chat.completions"), JSON)

    def run() -> None:
        reader(b'{"usage": {"prompt_tokens": 5, "completion_tokens": 1}, "pad": "')
        for _ in range(64):
            assert reader(piece) is piece
        reader(b'"}')

    assert _peak(run) < LIMIT + 4 * MiB
    answer = reader.result()
    assert answer.problem is not None and "larger than" in answer.problem and answer.usage is None


def test_a_long_stream_is_read_in_bounded_memory() -> None:
    """A 64 MiB text stream with a tool call and usage at its end: everything is read, little is kept."""
    delta = sse(
        *[
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": "x" * 1000},
                },
            )
        ]
        * 1000
    )
    tool = {"type": "tool_use", "id": "toolu_9", "name": "delete_note", "input": {}}
    tail = sse(
        ("content_block_start", {"type": "content_block_start", "index": 1, "content_block": tool}),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": '{"name": "a"}'},
            },
        ),
        ("message_delta", {"type": "message_delta", "usage": {"output_tokens": 16000000}}),
    )
    reader = AnswerReader(Inference("anthropic", "messages", stream=True), SSE)

    def run() -> None:
        for _ in range(64 * MiB // len(delta)):
            reader(delta)
        reader(tail)

    assert _peak(run) < 4 * MiB
    answer = reader.result()
    assert answer.problem is None and answer.usage == Usage(0, 16000000, 0)
    assert [(c.name, c.arguments) for c in answer.calls] == [("delete_note", {"name": "a"})]


def test_an_oversized_event_is_skipped_and_the_rest_read() -> None:
    huge = sse(
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "y" * (LIMIT + 10)},
            },
        )
    )
    usage = sse(("message_delta", {"type": "message_delta", "usage": {"output_tokens": 7}}))
    body = huge + usage
    reader = AnswerReader(Inference("anthropic", "messages", stream=True), SSE)

    def run() -> None:
        for start in range(0, len(body), MiB):
            chunk = body[start : start + MiB]
            assert reader(chunk) is chunk

    assert _peak(run) < LIMIT + 4 * MiB
    answer = reader.result()
    assert answer.problem is not None and "larger than" in answer.problem
    assert answer.usage == Usage(0, 7, 0)


def test_tool_call_arguments_past_the_limit_are_not_kept() -> None:
    big = json.dumps({"text": "z" * ARGUMENTS_LIMIT})
    chunks = [
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "write_note", "arguments": ""},
                            }
                        ]
                    },
                }
            ]
        }
    ]
    chunks += [
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": p}}]}}]}
        for p in (big[i : i + MiB] for i in range(0, len(big), MiB))
    ]
    chunks += [
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [
                            {
                                "index": 1,
                                "id": "call_2",
                                "type": "function",
                                "function": {"name": "list_notes", "arguments": "{}"},
                            }
                        ]
                    },
                }
            ]
        }
    ]
    reader = AnswerReader(Inference("openai", "chat.completions", stream=True), SSE)
    feed(reader, sse(*[(None, c) for c in chunks]), [])
    answer = reader.result()
    assert answer.problem is not None and "arguments" in answer.problem
    assert [(c.name, c.arguments) for c in answer.calls] == [("write_note", None), ("list_notes", {})]


# ---- the local provider's answers, read as the proxy reads them -------------------------------

SCRIPTED = Turn(text="Tidying.", calls=(NOTE, SEARCH), input_tokens=300, output_tokens=45, cached_tokens=100)


@pytest.mark.parametrize(
    ("path", "body", "inference"),
    [
        (
            "/v1/messages",
            {"model": "claude-haiku-4-5"},
            Inference("anthropic", "messages", "claude-haiku-4-5"),
        ),
        (
            "/v1/messages",
            {"model": "claude-haiku-4-5", "stream": True},
            Inference("anthropic", "messages", "claude-haiku-4-5", True),
        ),
        ("/v1/chat/completions", {"model": "gpt-4o"}, Inference("openai", "chat.completions", "gpt-4o")),
        (
            "/v1/chat/completions",
            {"model": "gpt-4o", "stream": True, "stream_options": {"include_usage": True}},
            Inference("openai", "chat.completions", "gpt-4o", True),
        ),
        ("/v1/responses", {"model": "gpt-5"}, Inference("openai", "responses", "gpt-5")),
        (
            "/v1/responses",
            {"model": "gpt-5", "stream": True},
            Inference("openai", "responses", "gpt-5", True),
        ),
        (
            "/v1beta/models/gemini-2.5-flash:generateContent",
            {},
            Inference("gemini", "generateContent", "gemini-2.5-flash"),
        ),
        (
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            {},
            Inference("gemini", "generateContent", "gemini-2.5-flash", True),
        ),
        (
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
            {},
            Inference("gemini", "generateContent", "gemini-2.5-flash", True),
        ),
    ],
    ids=[
        "anthropic",
        "anthropic-stream",
        "chat",
        "chat-stream",
        "responses",
        "responses-stream",
        "gemini",
        "gemini-sse",
        "gemini-array",
    ],
)
def test_the_local_providers_answers_read_as_scripted(
    models: ModelServer, path: str, body: dict[str, Any], inference: Inference
) -> None:
    models.answer(SCRIPTED)
    with httpx.stream("POST", models.url + path, json=body) as answer:
        reader = AnswerReader(inference, answer.headers["content-type"])
        for chunk in answer.iter_raw():
            assert reader(chunk) is chunk
    read = reader.result()
    assert read.problem is None
    assert read.usage == Usage(300, 45, 100)
    assert [(c.name, c.arguments) for c in read.calls] == [
        (NOTE.name, NOTE.arguments),
        (SEARCH.name, SEARCH.arguments),
    ]


def test_a_held_stream_waits_until_released(models: ModelServer) -> None:
    release = threading.Event()
    models.holding.clear()
    models.answer(Turn(hold=release))
    got: list[bytes] = []
    with httpx.stream("POST", models.url + "/v1/messages", json={"model": "m", "stream": True}) as answer:
        chunks = answer.iter_raw()
        got.append(next(chunks))
        assert models.holding.wait(10)
        assert b"message_start" in got[0] and b"message_stop" not in got[0]
        release.set()
        got.extend(chunks)
    assert b"message_stop" in b"".join(got)

"""The agent's own model calls through the real proxy: the official `openai` and `anthropic`
SDKs (and plain requests for Gemini) through `airlock run` to the local model provider
(tests/support/models.py: a real provider cannot be reached from here, and that server answers
in the providers' published wire formats).

A model call is `protocol: llm` with the effect `inference`: logged without its prompt, not
fsynced before it goes, never in doubt after a crash; its outcome holds the tokens it used and
the tool calls its answer proposed; a budget refuses the call past it; and an MCP tool call
that carries out a proposed call names the model call that proposed it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from .support import Airlock, Upstream, wait_for
from .support.mcp_http import NotesServer, call, connect, note, run
from .support.models import ModelServer, ToolCall, Turn, serving_models
from .support.notes import NO_DELETES, assert_denied

RULES = """\
version: 1
egress:
  allow: [127.0.0.1]
llm:
  endpoints: ["127.0.0.1:{port}"]
rules:
{rules}
"""

NOTE_TOOLS_OPENAI = [
    {"type": "function", "function": {"name": "delete_note", "parameters": {"type": "object"}}}
]
NOTE_TOOLS_ANTHROPIC = [{"name": "delete_note", "input_schema": {"type": "object"}}]
PROMPT: Any = [{"role": "user", "content": "tidy up my notes"}]


def rules(models: ModelServer, *extra: str) -> str:
    body = "".join(f"  {line}\n" for rule in extra for line in rule.strip().splitlines())
    return RULES.format(port=models.port, rules=body.rstrip("\n") or "  []")


@pytest.fixture(scope="module")
def models() -> Iterator[ModelServer]:
    with serving_models() as server:
        yield server


def openai_client(a: Airlock, models: ModelServer) -> Any:
    return openai.OpenAI(
        base_url=models.openai_url,
        api_key="sk-test-openai",
        max_retries=0,
        http_client=openai.DefaultHttpxClient(proxy=a.proxy),
    )


def anthropic_client(a: Airlock, models: ModelServer) -> Any:
    return anthropic.Anthropic(
        base_url=models.url,
        api_key="sk-ant-test",
        max_retries=0,
        http_client=anthropic.DefaultHttpxClient(proxy=a.proxy),
    )


def model_calls(a: Airlock) -> list[dict[str, Any]]:
    return [x for x in a.log() if x.get("protocol") == "llm"]


def settled(a: Airlock, n: int) -> list[dict[str, Any]]:
    """The log's model calls once there are `n` and none is pending."""
    found: list[dict[str, Any]] = []

    def done() -> bool:
        found[:] = model_calls(a)
        return len(found) == n and all(x["state"] != "pending" for x in found)

    wait_for(done, f"{n} model calls are settled in the log")
    return found


def entries(a: Airlock, action_id: int) -> list[dict[str, Any]]:
    shown = json.loads(a.cli("show", str(action_id), "--json").stdout)
    return list(shown["entries"])


def outcome_of(a: Airlock, action_id: int) -> dict[str, Any]:
    return next(e["data"] for e in entries(a, action_id) if e["kind"] == "outcome")


def intent_of(a: Airlock, action_id: int) -> dict[str, Any]:
    return next(e["data"] for e in entries(a, action_id) if e["kind"] == "intent")


# ---- one model call per API, streamed and not -------------------------------------------------


def openai_chat(a: Airlock, models: ModelServer) -> None:
    done = openai_client(a, models).chat.completions.create(model="gpt-4o", messages=PROMPT)
    assert done.choices[0].message.content == "Hello from the model."


def openai_chat_streamed(a: Airlock, models: ModelServer) -> None:
    stream = openai_client(a, models).chat.completions.create(
        model="gpt-4o", messages=PROMPT, stream=True, stream_options={"include_usage": True}
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Hello from the model."


def openai_responses(a: Airlock, models: ModelServer) -> None:
    done = openai_client(a, models).responses.create(model="gpt-4o", input="tidy up my notes")
    assert done.output_text == "Hello from the model."


def openai_responses_streamed(a: Airlock, models: ModelServer) -> None:
    stream = openai_client(a, models).responses.create(model="gpt-4o", input="tidy up", stream=True)
    kinds = [event.type for event in stream]
    assert kinds[-1] == "response.completed"


def anthropic_messages(a: Airlock, models: ModelServer) -> None:
    done = anthropic_client(a, models).messages.create(
        model="claude-sonnet-4-6", max_tokens=100, messages=PROMPT
    )
    assert done.content[0].text == "Hello from the model."


def anthropic_messages_streamed(a: Airlock, models: ModelServer) -> None:
    with anthropic_client(a, models).messages.stream(
        model="claude-sonnet-4-6", max_tokens=100, messages=PROMPT
    ) as stream:
        assert "".join(stream.text_stream) == "Hello from the model."


def gemini(a: Airlock, models: ModelServer) -> None:
    r = requests.post(
        f"{models.url}/v1beta/models/gemini-2.5-flash:generateContent",
        json={"contents": [{"parts": [{"text": "tidy up"}]}]},
        headers={"x-goog-api-key": "AIza-test"},
        proxies=a.proxies,
        timeout=30,
    )
    assert r.status_code == 200, r.text


CALLS: dict[str, tuple[Callable[[Airlock, ModelServer], None], str, str, str, bool]] = {
    # name: (the call, provider, api, model, stream)
    "openai-chat": (openai_chat, "openai-compatible", "chat.completions", "gpt-4o", False),
    "openai-chat-stream": (openai_chat_streamed, "openai-compatible", "chat.completions", "gpt-4o", True),
    "openai-responses": (openai_responses, "openai-compatible", "responses", "gpt-4o", False),
    "openai-responses-stream": (openai_responses_streamed, "openai-compatible", "responses", "gpt-4o", True),
    "anthropic": (anthropic_messages, "anthropic", "messages", "claude-sonnet-4-6", False),
    "anthropic-stream": (anthropic_messages_streamed, "anthropic", "messages", "claude-sonnet-4-6", True),
    "gemini": (gemini, "gemini", "generateContent", "gemini-2.5-flash", False),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_a_model_call_is_an_inference_logged_with_its_usage_and_without_its_prompt(
    name: str, models: ModelServer, make_airlock: Callable[..., Airlock]
) -> None:
    send, provider, api, model, stream = CALLS[name]
    a = make_airlock(rules=rules(models))
    before = len(models.requests())
    models.answer(Turn(input_tokens=321, output_tokens=45))
    send(a, models)
    [logged] = settled(a, 1)
    assert (logged["effect"], logged["state"], logged["status"]) == ("inference", "committed", 200)
    assert (logged["provider"], logged["model"], logged["stream"]) == (provider, model, stream)
    assert logged["tokens"] == 366 and logged["inert"] is True
    [received] = models.requests()[before:]
    assert received.json is not None and "tidy up" in json.dumps(received.json)  # the prompt went
    intent = intent_of(a, logged["id"])
    assert intent["action"]["inference"] == {
        "provider": provider,
        "api": api,
        "model": model,
        "stream": stream,
    }
    body = intent["action"]["body"]
    assert body["size"] == len(received.body) and "text" not in body and "base64" not in body
    assert "tidy up" not in json.dumps(entries(a, logged["id"]))  # the prompt was not kept
    answer = outcome_of(a, logged["id"])["answer"]
    assert answer["usage"] == {"input": 321, "output": 45, "total": 366}


def test_a_model_call_goes_on_while_the_log_cannot_commit_and_a_write_does_not(
    models: ModelServer, upstream: Upstream, make_airlock: Callable[..., Airlock]
) -> None:
    """No fsync before a model call goes: with the log's write lock held by another process
    (every commit waits for it), a model call is answered in full while a POST to another
    upstream does not even reach it; both are logged once the lock is released."""
    a = make_airlock(rules=rules(models, "- {id: ok, match: {host: 127.0.0.1}, action: allow}"))
    openai_chat(a, models)  # the log has written before: the lock is the only thing in the way
    settled(a, 1)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_WRITE_LOCK, str(a.data / "log")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    posted: list[int] = []
    writer = threading.Thread(
        target=lambda: posted.append(
            requests.post(f"{upstream.url}/items", json={"a": 1}, proxies=a.proxies, timeout=60).status_code
        )
    )
    try:
        writer.start()
        before = len(models.requests())
        models.answer(Turn(input_tokens=5, output_tokens=7))
        openai_chat(a, models)  # answered although no commit can happen
        assert len(models.requests()) == before + 1
        assert not upstream.seen  # the write waits for its intent to be durable
        assert writer.is_alive()
    finally:
        holder.communicate("", timeout=30)
    writer.join(60)
    assert posted == [200] and len(upstream.seen) == 1
    calls = settled(a, 2)
    assert [c["tokens"] for c in calls] == [20, 12]


HOLD_WRITE_LOCK = """
import sys, lmdb
env = lmdb.open(sys.argv[1], max_dbs=32, map_size=1 << 36)
txn = env.begin(write=True)   # LMDB's one writer lock, across processes
print("held", flush=True)
sys.stdin.read()
txn.abort()
"""


# ---- budgets -------------------------------------------------------------------------------

BUDGET = """\
- id: model-budget
  match: {protocol: llm}
  budget: {tokens: 30, per: 1h}
"""


def test_a_budget_refuses_the_calls_after_the_one_that_spent_it(
    models: ModelServer, make_airlock: Callable[..., Airlock]
) -> None:
    a = make_airlock(rules=rules(models, BUDGET))
    before = len(models.requests())
    models.answer(Turn(input_tokens=12, output_tokens=8), Turn(input_tokens=12, output_tokens=8))
    openai_chat(a, models)  # 20 of 30
    anthropic_messages(a, models)  # 40: it ran, its size could not be known before its answer
    settled(a, 2)
    with pytest.raises(openai.RateLimitError) as refused:
        openai_chat(a, models)
    assert refused.value.status_code == 429
    retry = int(refused.value.response.headers["Retry-After"])
    assert 3500 < retry <= 3600
    message = refused.value.message
    assert "token budget of rule model-budget is spent" in message and "40 tokens" in message
    with pytest.raises(anthropic.RateLimitError) as also:
        anthropic_messages(a, models)
    assert "rule model-budget" in str(also.value)
    assert len(models.requests()) == before + 2  # the refused calls never reached the provider
    calls = model_calls(a)
    assert [(c["state"], c.get("rule")) for c in calls[2:]] == [("denied", "model-budget")] * 2
    assert intent_of(a, calls[2]["id"])["decision"]["message"].startswith("the token budget")
    # The metrics count the tokens each answer reported, by agent, provider and model.
    scraped = requests.get(f"{a.control}/metrics", headers={"Authorization": f"Bearer {a.token}"}, timeout=10)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(scraped.text)
        for s in family.samples
    }
    key = (("agent", "anonymous"), ("kind", "input"), ("model", "gpt-4o"), ("provider", "openai-compatible"))
    assert samples[("airlock_model_tokens_total", key)] == 12


def test_an_agent_budget_is_the_agents_own(models: ModelServer, make_airlock: Callable[..., Airlock]) -> None:
    a = make_airlock(rules=rules(models, BUDGET))
    models.answer(Turn(input_tokens=30, output_tokens=1))

    def chat(agent: str) -> None:
        client = openai.OpenAI(
            base_url=models.openai_url,
            api_key="sk-test",
            max_retries=0,
            http_client=openai.DefaultHttpxClient(proxy=a.proxy, headers={"X-Airlock-Agent": agent}),
        )
        client.chat.completions.create(model="gpt-4o", messages=PROMPT)

    chat("planner")
    settled(a, 1)
    with pytest.raises(openai.RateLimitError):
        chat("planner")
    chat("coder")  # another agent, another account


# ---- refusals in the provider's shape ------------------------------------------------------

NO_OPUS = """\
- id: no-big-models
  match: {protocol: llm, model: "claude-opus-*"}
  action: deny
  message: Use a smaller model for this job.
"""


def test_a_refused_model_call_is_an_error_its_sdk_raises_with_the_rules_message(
    models: ModelServer, make_airlock: Callable[..., Airlock]
) -> None:
    a = make_airlock(rules=rules(models, NO_OPUS))
    before = len(models.requests())
    with pytest.raises(anthropic.PermissionDeniedError) as refused:
        anthropic_client(a, models).messages.create(model="Claude-Opus-4-1", max_tokens=10, messages=PROMPT)
    assert refused.value.status_code == 403
    assert "Use a smaller model for this job." in str(refused.value) and "rule no-big-models" in str(
        refused.value
    )
    anthropic_messages(a, models)  # sonnet passes
    assert len(models.requests()) == before + 1


# ---- a crash mid-stream --------------------------------------------------------------------


def test_a_model_call_cut_by_a_crash_is_failed_not_in_doubt(
    models: ModelServer, make_airlock: Callable[..., Airlock]
) -> None:
    a = make_airlock(rules=rules(models))
    release = threading.Event()
    models.holding.clear()
    models.answer(Turn(hold=release))
    broken: list[BaseException] = []

    def stream() -> None:
        try:
            anthropic_messages_streamed(a, models)
        except BaseException as e:
            broken.append(e)

    client = threading.Thread(target=stream)
    client.start()
    try:
        wait_for(models.holding.is_set, "the provider has sent the first events and holds the stream")
        wait_for(lambda: [c["state"] for c in model_calls(a)] == ["pending"], "the intent is in the log")
        a.stop(9)
    finally:
        release.set()
        client.join(30)
    assert broken  # the agent saw its stream break
    a.start()
    [call] = model_calls(a)
    assert call["state"] == "failed" and not a.log("--state", "in_doubt")
    recovery = entries(a, call["id"])[-1]
    assert recovery["kind"] == "recovery" and "not in doubt" in recovery["data"]["reason"]


# ---- what the model proposed, and the action that carried it out ---------------------------


def propose_with_anthropic(a: Airlock, models: ModelServer, name: str) -> str:
    models.answer(Turn(text="", calls=(ToolCall("delete_note", {"name": name}, "toolu_01"),)))
    done = anthropic_client(a, models).messages.create(
        model="claude-sonnet-4-6", max_tokens=100, messages=PROMPT, tools=NOTE_TOOLS_ANTHROPIC
    )
    [use] = [b for b in done.content if b.type == "tool_use"]
    return str(use.input["name"])


def propose_with_openai_stream(a: Airlock, models: ModelServer, name: str) -> str:
    models.answer(Turn(text="", calls=(ToolCall("delete_note", {"name": name}, "call_01"),)))
    stream = openai_client(a, models).chat.completions.create(
        model="gpt-4o", messages=PROMPT, tools=NOTE_TOOLS_OPENAI, stream=True
    )
    arguments = "".join(
        call.function.arguments or ""
        for chunk in stream
        for choice in chunk.choices
        for call in choice.delta.tool_calls or []
        if call.function
    )
    return str(json.loads(arguments)["name"])


def propose_with_responses(a: Airlock, models: ModelServer, name: str) -> str:
    models.answer(Turn(text="", calls=(ToolCall("delete_note", {"name": name}, "call_02"),)))
    done = openai_client(a, models).responses.create(model="gpt-4o", input="tidy up", tools=NOTE_TOOLS_OPENAI)
    [item] = [o for o in done.output if o.type == "function_call"]
    return str(json.loads(item.arguments)["name"])


PROPOSERS = {
    "anthropic": (propose_with_anthropic, "toolu_01"),
    "openai-stream": (propose_with_openai_stream, "call_01"),
    "responses": (propose_with_responses, "call_02"),
}


@pytest.mark.parametrize("proposer", list(PROPOSERS))
def test_the_mcp_call_a_model_proposed_names_the_model_call_in_airlock_show(
    proposer: str,
    models: ModelServer,
    notes_server: Callable[[str], NotesServer],
    make_airlock: Callable[..., Airlock],
) -> None:
    propose, call_id = PROPOSERS[proposer]
    server = notes_server("json")
    a = make_airlock(rules=rules(models, NO_DELETES))
    name = note()
    assert propose(a, models, name) == name
    [turn] = settled(a, 1)
    proposed = outcome_of(a, turn["id"])["answer"]["proposed"]
    assert [(p["tool"], p.get("id")) for p in proposed] == [("delete_note", call_id)]
    assert "arguments" not in proposed[0] and name not in json.dumps(proposed)  # digest only

    async def agent() -> tuple[int, int | None]:
        async with connect("json", server.url, a.proxy) as s:
            denied = assert_denied(await call(s, "delete_note", name=name), "notes-are-kept", "never deleted")
            other = await call(s, "read_note", name=name)  # nobody proposed this one
            return denied, 0 if not other.is_error else None

    denied, _ = run(agent())
    shown = a.cli("show", str(denied)).stdout
    assert f"proposed by model call {turn['id']}: its answer asked for tool delete_note ({call_id})" in shown
    [deleted] = [x for x in a.log() if x.get("tool") == "delete_note"]
    assert deleted["proposed_by"] == turn["id"]
    [read] = [x for x in a.log() if x.get("tool") == "read_note"]
    assert "proposed_by" not in read
    assert server.effects(name) == []


def test_another_agent_or_other_arguments_are_not_linked(
    models: ModelServer, notes_server: Callable[[str], NotesServer], make_airlock: Callable[..., Airlock]
) -> None:
    server = notes_server("json")
    a = make_airlock(rules=rules(models))
    name = note()
    propose_with_anthropic(a, models, name)
    settled(a, 1)

    async def agent() -> None:
        async with connect("json", server.url, a.proxy) as s:
            await call(s, "delete_note", name=name + "-other")

    run(agent())
    [deleted] = [x for x in a.log() if x.get("tool") == "delete_note"]
    assert "proposed_by" not in deleted


def test_keep_prompts_keeps_them_redacted_with_the_proposed_arguments(
    models: ModelServer, make_airlock: Callable[..., Airlock]
) -> None:
    a = make_airlock(rules=rules(models), extra=("--keep-prompts",))
    models.answer(
        Turn(text="", calls=(ToolCall("delete_note", {"name": "groceries", "password": "hunter2"}),))
    )
    openai_client(a, models).chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "tidy up"}],
        tools=NOTE_TOOLS_OPENAI,
        extra_body={"metadata": {"api_key": "sk-live-abcdefghijklmnopqrstuvwx"}},
    )
    [turn] = settled(a, 1)
    body = intent_of(a, turn["id"])["action"]["body"]
    assert "tidy up" in body["text"] and body.get("redacted") is True
    assert "sk-live-abcdefghijklmnopqrstuvwx" not in json.dumps(entries(a, turn["id"]))
    [proposed] = outcome_of(a, turn["id"])["answer"]["proposed"]
    assert proposed["arguments"]["name"] == "groceries" and proposed["arguments"]["password"] != "hunter2"


def test_a_rule_keeps_the_prompts_of_the_calls_it_matches(
    models: ModelServer, make_airlock: Callable[..., Airlock]
) -> None:
    keep = "- {id: keep-claude, match: {provider: anthropic}, keep: prompts}"
    a = make_airlock(rules=rules(models, keep))
    anthropic_messages(a, models)
    openai_chat(a, models)
    kept = {c["provider"]: "text" in intent_of(a, c["id"])["action"]["body"] for c in settled(a, 2)}
    assert kept == {"anthropic": True, "openai-compatible": False}


def test_an_undeclared_host_is_plain_http_and_its_post_a_write(
    models: ModelServer, make_airlock: Callable[..., Airlock]
) -> None:
    """A model API's path on a host the rules do not name is no model call: the POST stays a
    write, made durable first, and its body is kept as a write's."""
    a = make_airlock(rules=RULES.format(port=1, rules="  []"))
    openai_chat(a, models)
    [logged] = [x for x in a.log() if x["method"] == "POST"]
    assert (logged["protocol"], logged["effect"]) == ("http", "write")
    assert "text" in intent_of(a, logged["id"])["action"]["body"]


def test_httpx_streams_arrive_as_they_are_sent(
    models: ModelServer, make_airlock: Callable[..., Airlock]
) -> None:
    """The first events of a held stream reach the agent before the stream ends: the reader
    does not buffer the answer."""
    a = make_airlock(rules=rules(models))
    release = threading.Event()
    models.holding.clear()
    models.answer(Turn(hold=release))
    body = {"model": "gpt-4o", "messages": PROMPT, "stream": True, "stream_options": {"include_usage": True}}
    try:
        with (
            httpx.Client(proxy=a.proxy, timeout=30) as client,
            client.stream("POST", f"{models.openai_url}/chat/completions", json=body) as r,
        ):
            lines = r.iter_lines()
            first = next(lines)
            assert first.startswith("data: ")  # while the provider still holds the rest
            release.set()
            rest = list(lines)
        assert "data: [DONE]" in rest
    finally:
        release.set()
    [logged] = settled(a, 1)
    assert logged["stream"] is True and logged["tokens"] == 20


def test_a_stream_that_reports_no_usage_is_counted_by_estimate_against_its_budget(
    models: ModelServer, make_airlock: Callable[..., Airlock]
) -> None:
    """An OpenAI stream without `include_usage` says nothing of its tokens: they are estimated
    from the bytes on the high side, so leaving usage out does not escape a budget."""
    a = make_airlock(rules=rules(models, BUDGET))
    stream = openai_client(a, models).chat.completions.create(model="gpt-4o", messages=PROMPT, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Hello from the model."
    [logged] = settled(a, 1)
    usage = outcome_of(a, logged["id"])["answer"]["usage"]
    assert usage["estimated"] is True and usage["total"] > 30  # more than the budget holds
    with pytest.raises(openai.RateLimitError):
        openai_chat(a, models)


CARRIER = """\
- id: http-tool
  match: {host: 127.0.0.1, method: DELETE}
  proposed_as: [http_request]
"""


def test_an_http_request_a_proposed_tool_call_carried_out_names_the_model_call(
    models: ModelServer, upstream: Upstream, make_airlock: Callable[..., Airlock]
) -> None:
    """Where a rule names the tool that carries requests out, the request curl sends for a
    proposed `http_request` call names the model call in the log."""
    a = make_airlock(rules=rules(models, CARRIER))
    url = f"{upstream.url}/items/42"
    models.answer(
        Turn(text="", calls=(ToolCall("http_request", {"method": "DELETE", "url": url}, "call_9"),))
    )
    openai_client(a, models).chat.completions.create(model="gpt-4o", messages=PROMPT, tools=NOTE_TOOLS_OPENAI)
    [turn] = settled(a, 1)
    done = subprocess.run(["curl", "-s", "-x", a.proxy, "-X", "DELETE", url], capture_output=True, timeout=30)
    assert done.returncode == 0 and [s.method for s in upstream.seen] == ["DELETE"]
    [deleted] = [x for x in a.log() if x["method"] == "DELETE"]
    assert deleted["proposed_by"] == turn["id"]
    shown = a.cli("show", str(deleted["id"])).stdout
    assert f"proposed by model call {turn['id']}: its answer asked for tool http_request (call_9)" in shown

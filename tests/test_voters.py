"""Automated voters: webhooks and a model (a fake OpenAI-compatible chat completions server)
declared in the rules are asked once when an action is held, through the real proxy; a valid
answer is their vote, anything else is no vote (a `voter_error` entry) and never an approval."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from aiohttp import web

from rules import RulesError, Ruleset

from .support import Airlock, Upstream, free_port, wait_for

SECRET = "s3cret-voter-token"


@dataclass
class Voters:
    """Webhook and model voters on loopback, and every question they were asked."""

    port: int
    asked: list[tuple[str, dict[str, str], Any]] = field(default_factory=list)
    released: threading.Event = field(default_factory=threading.Event)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def questions(self, path: str) -> list[Any]:
        return [body for p, _, body in self.asked if p == path]


def _completion(content: str) -> web.Response:
    message = {"role": "assistant", "content": content}
    return web.json_response({"object": "chat.completion", "choices": [{"index": 0, "message": message}]})


def _app(voters: Voters) -> web.Application:
    async def webhook(request: web.Request) -> web.StreamResponse:
        voters.asked.append((request.path, dict(request.headers), await request.json()))
        name = request.match_info["name"]
        if name == "approve":
            return web.json_response({"vote": "approve", "reason": "change ticket 881 is open"})
        if name == "deny":
            return web.json_response({"vote": "deny", "reason": "nothing is deleted on a Friday"})
        if name == "hang":
            while not voters.released.is_set():  # past the voter's timeout, until the test ends
                await asyncio.sleep(0.05)
        if name == "error":
            return web.json_response({"vote": "approve", "reason": "a 500 is no vote"}, status=500)
        return web.Response(text="sure, go ahead")  # garbage

    async def model(request: web.Request) -> web.StreamResponse:
        voters.asked.append((request.path, dict(request.headers), await request.json()))
        name = request.match_info["name"]
        if name == "approve":
            return _completion('```json\n{"vote": "approve", "reason": "a scratch item"}\n```')
        if name == "deny":
            return _completion('{"vote": "deny", "reason": "the item is in production"}')
        return _completion('I think this is fine. {"vote": "approve", "reason": "ok"}')

    app = web.Application()
    app.router.add_post("/hook/{name}", webhook)
    app.router.add_post("/model/{name}/v1/chat/completions", model)
    return app


@pytest.fixture
def voters() -> Iterator[Voters]:
    found = Voters(free_port())
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(_app(found), access_log=None)

    async def start() -> None:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", found.port).start()

    loop.run_until_complete(start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield found
    found.released.set()
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def rules(v: Voters) -> str:
    return f"""\
version: 1
egress: {{allow: [127.0.0.1]}}
voters:
  approver: {{url: "{v.url("/hook/approve")}", headers: {{Authorization: "Bearer ${{VOTER_TOKEN}}"}}}}
  denier: {{url: "{v.url("/hook/deny")}"}}
  hanger: {{url: "{v.url("/hook/hang")}", timeout: 500ms}}
  babbler: {{url: "{v.url("/hook/garbage")}"}}
  failer: {{url: "{v.url("/hook/error")}"}}
  unset: {{url: "{v.url("/hook/approve")}", headers: {{X-Token: "${{VOTER_TOKEN_NOT_SET}}"}}}}
  model-yes:
    kind: llm
    url: "{v.url("/model/approve/v1/chat/completions")}"
    model: judge-1
    instructions: Approve deletions of scratch items only.
  model-no:
    kind: llm
    url: "{v.url("/model/deny/v1/chat/completions")}"
    model: judge-1
    instructions: Approve deletions of scratch items only.
  model-rambling:
    kind: llm
    url: "{v.url("/model/ramble/v1/chat/completions")}"
    model: judge-1
    instructions: Approve deletions of scratch items only.
rules:
  - id: approved
    match: {{method: DELETE, path: "/a/*"}}
    action: hold
    hold: {{voters: [approver], wait: 30s}}
  - id: denied
    match: {{method: DELETE, path: "/d/*"}}
    action: hold
    hold: {{voters: [denier], wait: 30s}}
  - id: no-votes
    match: {{method: DELETE, path: "/n/*"}}
    action: hold
    hold: {{voters: [hanger, babbler, failer, unset], quorum: 1, wait: 0s}}
  - id: model-yes
    match: {{method: DELETE, path: "/my/*"}}
    action: hold
    hold: {{voters: [model-yes], wait: 30s}}
  - id: model-no
    match: {{method: DELETE, path: "/mn/*"}}
    action: hold
    hold: {{voters: [model-no], wait: 30s}}
  - id: model-rambling
    match: {{method: DELETE, path: "/mr/*"}}
    action: hold
    hold: {{voters: [model-rambling], wait: 0s}}
  - id: two
    match: {{method: DELETE, path: "/two/*"}}
    action: hold
    message: Two must agree.
    hold: {{voters: [approver, alice], quorum: 2, wait: 0s}}
"""


@pytest.fixture
def voted(make_airlock: Callable[..., Airlock], voters: Voters, monkeypatch: pytest.MonkeyPatch) -> Airlock:
    monkeypatch.setenv("VOTER_TOKEN", SECRET)  # the proxy's environment names the secret
    return make_airlock(rules=rules(voters))


def delete(a: Airlock, upstream: Upstream, path: str) -> requests.Response:
    return requests.delete(f"{upstream.url}{path}", proxies=a.proxies, timeout=60)


def shown(a: Airlock, action_id: int) -> dict[str, Any]:
    return dict(json.loads(a.cli("show", str(action_id), "--json").stdout))


def entries(a: Airlock, action_id: int, kind: str) -> list[dict[str, Any]]:
    return [e["data"] for e in shown(a, action_id)["entries"] if e["kind"] == kind]


def test_a_webhook_approves_and_the_held_delete_runs_once(
    voted: Airlock, voters: Voters, upstream: Upstream
) -> None:
    r = delete(voted, upstream, "/a/7")
    assert r.status_code == 200, r.text
    assert [s.path for s in upstream.effects("DELETE")] == ["/a/7"]
    [question] = voters.questions("/hook/approve")
    action_id = question["action_id"]
    assert question["rule"] == "approved" and "until voters approve" in question["message"]
    assert question["action"]["method"] == "DELETE" and question["action"]["url"].endswith("/a/7")
    [(_, sent, _)] = voters.asked
    assert sent["Authorization"] == f"Bearer {SECRET}"  # ${VOTER_TOKEN} read from the environment
    whole = shown(voted, action_id)
    assert whole["action"]["state"] == "committed"
    assert entries(voted, action_id, "vote") == [
        {"voter": "approver", "vote": "approve", "reason": "change ticket 881 is open"}
    ]
    assert SECRET not in json.dumps(whole)


def test_a_webhook_denies_and_the_delete_never_runs(
    voted: Airlock, voters: Voters, upstream: Upstream
) -> None:
    r = delete(voted, upstream, "/d/7")
    assert r.status_code == 403
    assert "denier denied: nothing is deleted on a Friday" in r.json()["message"]
    assert upstream.effects("DELETE") == []
    assert shown(voted, r.json()["action_id"])["action"]["state"] == "aborted"


def test_a_voter_that_hangs_errs_or_answers_garbage_is_no_vote(
    voted: Airlock, voters: Voters, upstream: Upstream
) -> None:
    r = delete(voted, upstream, "/n/7")
    assert r.status_code == 503 and r.json()["error"] == "held"
    action_id = r.json()["action_id"]
    wait_for(lambda: len(entries(voted, action_id, "voter_error")) == 4, "every voter gave no vote")
    errors = {e["voter"]: e["error"] for e in entries(voted, action_id, "voter_error")}
    assert errors["hanger"] == "no answer within its timeout of 0.5s"
    assert errors["babbler"] == "its answer is not JSON: 'sure, go ahead'"
    assert errors["failer"].startswith("it answered 500:")
    assert "VOTER_TOKEN_NOT_SET is not set" in errors["unset"]
    assert voters.questions("/hook/approve") == []  # the unset variable: never asked
    assert shown(voted, action_id)["action"]["state"] == "held"
    assert entries(voted, action_id, "vote") == []
    again = delete(voted, upstream, "/n/7")  # joins the held action: still held, never run
    assert again.status_code == 503 and again.json()["action_id"] == action_id
    assert upstream.effects("DELETE") == []


def test_a_model_approves_inside_a_json_fence(voted: Airlock, voters: Voters, upstream: Upstream) -> None:
    r = delete(voted, upstream, "/my/scratch-1")
    assert r.status_code == 200, r.text
    assert len(upstream.effects("DELETE")) == 1
    [asked] = voters.questions("/model/approve/v1/chat/completions")
    assert asked["model"] == "judge-1"
    system, user = asked["messages"]
    assert system["role"] == "system" and system["content"].startswith(
        "Approve deletions of scratch items only."
    )
    assert '"vote"' in system["content"]
    question = json.loads(user["content"])
    assert question["action"]["url"].endswith("/my/scratch-1") and question["rule"] == "model-yes"
    assert entries(voted, question["action_id"], "vote")[0]["reason"] == "a scratch item"


def test_a_model_denies(voted: Airlock, voters: Voters, upstream: Upstream) -> None:
    r = delete(voted, upstream, "/mn/prod-1")
    assert r.status_code == 403
    assert "model-no denied: the item is in production" in r.json()["message"]
    assert upstream.effects("DELETE") == []


def test_a_model_answer_with_prose_around_the_json_is_no_vote(
    voted: Airlock, voters: Voters, upstream: Upstream
) -> None:
    r = delete(voted, upstream, "/mr/1")
    assert r.status_code == 503
    action_id = r.json()["action_id"]
    wait_for(lambda: entries(voted, action_id, "voter_error") != [], "the model's answer is refused")
    [error] = entries(voted, action_id, "voter_error")
    assert error["voter"] == "model-rambling" and error["kind"] == "llm"
    assert error["error"].startswith("the model's message is not the JSON answer")
    assert shown(voted, action_id)["action"]["state"] == "held"
    assert upstream.effects("DELETE") == []


def test_a_quorum_of_two_takes_the_webhook_and_a_person(
    voted: Airlock, voters: Voters, upstream: Upstream
) -> None:
    r = delete(voted, upstream, "/two/7")
    assert r.status_code == 503
    action_id = r.json()["action_id"]
    wait_for(lambda: entries(voted, action_id, "vote") != [], "the webhook voted")
    assert shown(voted, action_id)["action"]["state"] == "held"  # one approval of two
    voted.cli("approve", str(action_id), "--voter", "alice", "--reason", "agreed")
    assert shown(voted, action_id)["action"]["state"] == "approved"
    assert upstream.effects("DELETE") == []
    again = delete(voted, upstream, "/two/7")  # the same request carries the approved action out
    assert again.status_code == 200
    assert len(upstream.effects("DELETE")) == 1
    [decided] = entries(voted, action_id, "decision")
    assert decided["decision"] == "commit" and "alice, approver" in decided["why"]


def _load(tmp_path: Path, *texts: str) -> Ruleset:
    for i, text in enumerate(texts):
        (tmp_path / f"{i}.yaml").write_text(text)
    return Ruleset.load(tmp_path)


def test_voters_are_declared_in_the_rules(tmp_path: Path) -> None:
    ruleset = _load(
        tmp_path,
        'version: 1\nvoters:\n  hook: {url: "https://votes.example/hook", timeout: 3s}\n'
        '  judge: {kind: llm, url: "https://llm.example/v1/chat/completions", model: m, '
        "instructions: be careful}\n",
    )
    assert ruleset.voters["hook"].timeout == 3.0 and ruleset.voters["hook"].kind == "webhook"
    assert ruleset.voters["judge"].timeout == 30.0 and ruleset.voters["judge"].model == "m"


@pytest.mark.parametrize(
    ("texts", "problem"),
    [
        (['voters: {judge: {kind: llm, url: "https://x.example/v1"}}'], "needs model and instructions"),
        (['voters: {hook: {url: "https://x.example", model: m}}'], "belong to a voter with kind: llm"),
        (["voters: {hook: {url: ftp.example}}"], "voters.hook.url"),
        (["voters: {hook: {}}"], "url"),
        (['voters: {hook: {url: "https://x.example"}}'] * 2, "voter 'hook' is already declared in"),
    ],
)
def test_a_wrong_voter_is_a_problem_naming_it(tmp_path: Path, texts: list[str], problem: str) -> None:
    with pytest.raises(RulesError) as e:
        _load(tmp_path, *(f"version: 1\n{t}\n" for t in texts))
    assert problem in str(e.value)

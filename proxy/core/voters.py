"""Asking the automated voters a hold names: each declared voter (a webhook, or a model behind
an OpenAI-compatible chat completions URL) is asked once, concurrently, when an action is held.

A valid answer is cast as that voter's vote (`votes.cast`, in a thread). Anything else (no
answer within the voter's timeout, a connection error, a status other than 2xx, an answer that
does not parse, a header naming an unset environment variable) is no vote, never an approval:
it is logged as a `voter_error` entry of the action, naming the voter and why, and the action's
state does not change.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp

from rules import Voter
from store import ActionRef, Log, Record, StateError, StoreError

from . import envheaders, votes
from .redact import text

logger = logging.getLogger(__name__)

_FENCE = re.compile(r"```(?:json)?\s*\n(.*?)\n?```", re.DOTALL)
SHOWN = 200  # characters of an answer that does not parse kept in its voter_error entry

ANSWER_FORMAT = (
    "Answer with one JSON object and nothing else: "
    '{"vote": "approve" or "deny", "reason": "why, in one sentence"}.'
)


class NoVote(ValueError):
    """A voter's answer that is not a vote; the message says why, in one line."""


def question(action_id: int, intent: Mapping[str, Any]) -> dict[str, Any]:
    """What a voter is asked: the action as its intent logged it (redacted), the rule that held
    it and the rule's message."""
    decided = intent.get("decision", {})
    return {
        "action_id": action_id,
        "action": intent.get("action"),
        "rule": decided.get("rule"),
        "message": decided.get("message", ""),
    }


def headers(voter: Voter) -> dict[str, str]:
    """The voter's headers, `${NAME}` replaced by the environment's value (LookupError when unset)."""
    return envheaders.resolved(voter.headers, f"voter {voter.name}")


def body(voter: Voter, asked: dict[str, Any]) -> dict[str, Any]:
    """The JSON POSTed to the voter: the question itself, or for a model a chat completion request."""
    if voter.kind != "llm":
        return asked
    return {
        "model": voter.model,
        "messages": [
            {"role": "system", "content": f"{voter.instructions}\n\n{ANSWER_FORMAT}"},
            {"role": "user", "content": json.dumps(asked, sort_keys=True)},
        ],
    }


def vote_of(answer: Any) -> tuple[str, str]:
    """The (vote, reason) a voter's decoded JSON answer holds; NoVote when it holds none."""
    if not isinstance(answer, dict):
        raise NoVote("the answer is not a JSON object")
    choice, reason = answer.get("vote"), answer.get("reason", "")
    if choice not in (votes.APPROVE, votes.DENY):
        raise NoVote(f"its vote is {choice!r}, not {votes.APPROVE!r} or {votes.DENY!r}")
    if not isinstance(reason, str):
        raise NoVote("its reason is not a string")
    return choice, reason


def model_vote(completion: Any) -> tuple[str, str]:
    """The (vote, reason) in a chat completion: the assistant's content must be the JSON answer,
    alone or alone inside a ```json fence."""
    try:
        content = completion["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise NoVote("the answer is not a chat completion with a message") from None
    if not isinstance(content, str):
        raise NoVote("the model's message has no text")
    stripped = content.strip()
    fenced = _FENCE.fullmatch(stripped)
    try:
        return vote_of(json.loads(fenced[1] if fenced else stripped))
    except json.JSONDecodeError:
        raise NoVote(f"the model's message is not the JSON answer: {_shown(stripped)}") from None


async def answer(session: aiohttp.ClientSession, voter: Voter, asked: dict[str, Any]) -> tuple[str, str]:
    """Ask one voter; its (vote, reason), or NoVote saying why there is none."""
    try:
        sent = headers(voter)
    except LookupError as e:
        raise NoVote(str(e)) from None
    timeout = aiohttp.ClientTimeout(total=voter.timeout)
    try:
        async with session.post(voter.url, json=body(voter, asked), headers=sent, timeout=timeout) as r:
            raw = await r.text(errors="replace")
            if not 200 <= r.status < 300:
                raise NoVote(f"it answered {r.status}: {_shown(raw)}")
    except TimeoutError:
        raise NoVote(f"no answer within its timeout of {voter.timeout:g}s") from None
    except aiohttp.ClientError as e:
        raise NoVote(f"it could not be asked: {type(e).__name__}: {e}".rstrip(": ")) from None
    try:
        decoded = json.loads(raw)
    except json.JSONDecodeError:
        raise NoVote(f"its answer is not JSON: {_shown(raw)}") from None
    return model_vote(decoded) if voter.kind == "llm" else vote_of(decoded)


def voter_error(action_id: int, voter: Voter, why: str) -> Record:
    """The entry saying a voter was asked and gave no vote (the action's state is unchanged)."""
    return Record(
        kind="voter_error",
        action=ActionRef(action_id),
        data={"voter": voter.name, "kind": voter.kind, "error": text(why)},
    )


async def ask_one(
    session: aiohttp.ClientSession, log: Log, action_id: int, voter: Voter, asked: dict[str, Any]
) -> None:
    """Ask one voter and cast its vote, or log why it gave none."""
    try:
        choice, reason = await answer(session, voter, asked)
    except Exception as e:  # whatever went wrong, it is no vote
        why = str(e) if isinstance(e, NoVote) else f"it could not be asked: {type(e).__name__}: {e}"
        record = voter_error(action_id, voter, why)
        try:
            await log.append(record)
        except StoreError as failed:
            logger.warning(
                "voter %s gave no vote on action %s (%s); not logged: %s", voter.name, action_id, e, failed
            )
        return
    try:
        await asyncio.to_thread(votes.cast, log, action_id, voter.name, choice, reason)
    except (StateError, votes.VoteRefused) as e:
        logger.info("the vote of %s on action %s does not count: %s", voter.name, action_id, e)
    except StoreError as e:
        logger.warning("the vote of %s on action %s was not logged: %s", voter.name, action_id, e)


async def ask(log: Log, action_id: int, voters: Sequence[Voter], intent: Mapping[str, Any]) -> None:
    """Ask every voter, concurrently, for its vote on the held action `action_id`."""
    asked = question(action_id, intent)
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(ask_one(session, log, action_id, v, asked) for v in voters))


def _shown(raw: str) -> str:
    raw = " ".join(raw.split())
    return repr(raw[:SHOWN] + ("..." if len(raw) > SHOWN else ""))

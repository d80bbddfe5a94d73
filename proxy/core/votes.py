"""Votes and decisions on held actions: a voter appends a `vote`; the vote that completes a
quorum of approvals from distinct voters is followed by a `decision` to commit, and any deny by
a decision to abort. The first decision wins: a decision (or a vote) applies only to an action
still held, which the log checks in the same transaction that writes it.

A decision is bound to the request the action holds (its fingerprint) and to the rules digest
it was held under, both copied from its intent. Voting is synchronous (the CLI votes from its
own process; the control API from a thread): every step is a read or a durable append.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

from rules import Hold
from store import ActionRef, Entry, Fence, Log, Record, State, StateError, UnknownAction

from .redact import text

APPROVE, DENY = "approve", "deny"
TIMEOUT_VOTER = "airlock"  # who decides when no decision came in time


class VoteRefused(ValueError):
    """A vote that does not count: the voter is not one the hold names."""


@dataclass(frozen=True)
class Cast:
    """What a vote did: its entry, and the decision it completed (None: more votes are due)."""

    vote: Entry
    decision: Entry | None


def vote(action_id: int, voter: str, choice: str, reason: str) -> Record:
    """A voter's vote on a held action (valid only while it is held)."""
    return Record(
        kind="vote",
        action=ActionRef(action_id),
        if_state=State.HELD,
        data={"voter": voter, "vote": choice, "reason": text(reason)},
    )


def decision(action_id: int, *, commit: bool, why: str, by: str, held: dict[str, Any]) -> Record:
    """The decision on a held action: commit (it is approved, and runs when its request is
    sent) or abort. Bound to its request's fingerprint and the rules it was held under."""
    outcome = "commit" if commit else "abort"
    return Record(
        kind="decision",
        action=ActionRef(action_id),
        state=State.APPROVED if commit else State.ABORTED,
        if_state=State.HELD,
        data={
            "decision": outcome,
            "why": text(why),
            "by": by,
            "request": held.get("fingerprint"),
            "rules": held.get("rules"),
        },
        summary={"decision": outcome, "decided_by": by},
    )


def expired(action_id: int, state: State, held: dict[str, Any]) -> Record:
    """The abort of a held action no decision reached in time, or of an approved one that was
    not sent again before its hold ended: fail closed."""
    why = (
        "no decision before the hold's timeout"
        if state is State.HELD
        else "approved, but its request was not sent again before the hold's timeout"
    )
    return dataclasses.replace(
        decision(action_id, commit=False, why=why, by=TIMEOUT_VOTER, held=held), if_state=state
    )


def execution(action_id: int, decided: int | None, fence: Fence | None = None) -> Record:
    """An approved action's request goes upstream: once, by whichever request is first. With
    `fence` (the session of the request that runs it) it runs only while that session is
    current: a zombie's held action approved after a takeover does not run when it asks again."""
    return Record(
        kind="execute",
        action=ActionRef(action_id),
        state=State.PENDING,
        if_state=State.APPROVED,
        data={"decision": decided},
        unless_frozen=True,  # an operator's freeze stops approved actions too
        fence=fence,
    )


def held_intent(log: Log, action_id: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A held action's index and the hold its intent recorded; UnknownAction when there is no
    such action, StateError when it was never held."""
    index = log.action(action_id, whole=True)
    if index is None:
        raise UnknownAction(f"no action {action_id} in the log")
    first = log.entry(index["entries"][0])
    held = first.data.get("hold") if first is not None else None
    if not isinstance(held, dict):
        raise StateError(f"action {action_id} was never held for votes")
    return index, held | {"rules": first.data.get("rules") if first is not None else None}


def tally(log: Log, index: dict[str, Any]) -> tuple[set[str], list[dict[str, Any]]]:
    """The distinct voters who approved a held action, and the denials (with their reasons)."""
    approved: set[str] = set()
    denied: list[dict[str, Any]] = []
    for seq in index["entries"]:
        entry = log.entry(seq)
        if entry is None or entry.kind != "vote":
            continue
        if entry.data.get("vote") == APPROVE:
            approved.add(str(entry.data.get("voter")))
        else:
            denied.append(dict(entry.data))
    return approved, denied


def cast(log: Log, action_id: int, voter: str, choice: str, reason: str = "") -> Cast:
    """Vote on a held action and, when the vote decides it, write the decision. A vote on an
    action that is not held (decided, or never held) is a StateError; one from a voter the
    hold does not name is VoteRefused."""
    if choice not in (APPROVE, DENY):
        raise ValueError(f"a vote is {APPROVE!r} or {DENY!r}, not {choice!r}")
    index, held = held_intent(log, action_id)
    policy = Hold.from_dict(held)
    if not policy.may_vote(voter):
        raise VoteRefused(
            f"{voter} is not a voter of action {action_id}'s hold (its voters: {', '.join(policy.voters)})"
        )
    if index["state"] != State.HELD:
        raise StateError(f"action {action_id} is {index['state']}: it was decided already")
    cast_vote = log.append_blocking(vote(action_id, voter, choice, reason))
    index = log.action(action_id, whole=True) or index
    approved, denied = tally(log, index)
    verdict: Record | None = None
    if denied:
        why = "; ".join(f"{d.get('voter')} denied: {d.get('reason') or 'no reason given'}" for d in denied)
        verdict = decision(action_id, commit=False, why=why, by=voter, held=held)
    elif len(approved) >= policy.quorum:
        why = f"approved by {', '.join(sorted(approved))} ({len(approved)} of {policy.quorum} needed)"
        verdict = decision(action_id, commit=True, why=why, by=voter, held=held)
    if verdict is None:
        return Cast(cast_vote, None)
    try:
        return Cast(cast_vote, log.append_blocking(verdict))
    except StateError:
        return Cast(cast_vote, None)  # another vote decided it first: the first decision wins


def expire(log: Log, now: float | None = None) -> list[int]:
    """Abort every held or approved action whose hold has ended; return their ids. Its cost
    grows with the actions held now, not with the log."""
    now = time.time() if now is None else now
    ended = []
    for state in (State.HELD, State.APPROVED):
        for index in list(log.actions(state.value)):
            until = index.get("hold_until")
            if not isinstance(until, int | float) or until > now:
                continue
            try:
                _, held = held_intent(log, index["id"])
                log.append_blocking(expired(index["id"], state, held))
            except StateError:
                continue  # decided meanwhile
            ended.append(index["id"])
    return ended


def pending(log: Log) -> list[dict[str, Any]]:
    """The held actions, oldest first, each with its votes so far."""
    out = []
    for index in log.actions(State.HELD.value):
        whole = log.action(index["id"], whole=True) or index
        approved, denied = tally(log, whole)
        first = log.entry(whole["entries"][0])
        said = first.data.get("decision", {}) if first is not None else {}
        out.append(
            whole
            | {
                "message": said.get("message", "") if isinstance(said, dict) else "",
                "approved_by": sorted(approved),
                "denied_by": [d.get("voter") for d in denied],
            }
        )
    return out

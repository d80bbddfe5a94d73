"""Held actions on the proxy's side: a held action is parked (its intent in state `held`, its
request kept waiting up to the hold's `wait`), joined by the same request sent again, and run
once when a commit decision comes.

The request waits by reading its action's state (cheap: one index read every HOLD_POLL
seconds), so a vote from any process (the CLI, the control API) decides it. The same request
from the same agent (the same fingerprint) joins the action it made: while held it waits on it,
once approved it runs it (once: the log lets only one request move it from approved to
pending), once aborted it gets the abort. Holds made by another process, or before a restart,
are found through the log's index of held and approved actions.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from rules import Action, Decision, Hold, Voter, fingerprint, signed_stably
from store import ActionRef, Fence, Log, Record, State, StateError, StoreError

from . import contention, votes
from . import voters as automated
from .redact import Redactor

logger = logging.getLogger(__name__)

HOLD_POLL = 0.05

# Headers that differ between attempts of one request (dates, retry counts, request and trace
# ids, framing): left out of what makes a retry the same request.
VOLATILE = frozenset(
    {
        "content-length",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "date",
        "x-amz-date",
        "amz-sdk-request",
        "amz-sdk-invocation-id",
        "x-stainless-retry-count",
        "x-request-id",
        "traceparent",
        "tracestate",
    }
)  # seconds between looks at a waiting action's state


class Fate(StrEnum):
    """What becomes of a held request."""

    RUN = "run"  # approved: it goes upstream now, as the action `action_id`
    ABORTED = "aborted"  # a decision (or the timeout) aborted it
    WAITING = "waiting"  # no decision within `wait`: the agent is told to come back


@dataclass(frozen=True)
class Parked:
    """A held request's fate, the action it belongs to, and for an abort why."""

    fate: Fate
    action_id: int
    why: str = ""


class Holds:
    """Parks held requests in the log and waits for their decisions."""

    def __init__(
        self,
        log: Log,
        intent: Callable[[Action, Decision, ActionRef, dict[str, Any]], Record],
        voters: Callable[[], Mapping[str, Voter]] = dict,
        redactor: Callable[[], Redactor] = Redactor,
    ):
        self.log = log
        self.intent = intent  # the intent record of a held action (the admission's, redacted)
        self.voters = voters  # the automated voters the rules declare now, by name
        self.redactor = redactor  # the rules' redaction: which headers carry credentials
        self._key = secrets.token_bytes(32)  # keys the credentials' part of a mark: see `mark`
        self._made: dict[str, tuple[int, float]] = {}  # fingerprint -> (action id, hold ends)
        self._asking: set[asyncio.Task[None]] = set()

    async def park(self, action: Action, decision: Decision) -> Parked:
        """Hold `action` (or join the held action its request already made) and wait for the
        decision up to the hold's `wait`."""
        policy = decision.hold or Hold()
        mark = self.mark(action)
        found = self._joined(mark)
        if found is None:
            ref = ActionRef()
            until = time.time() + policy.timeout
            held = policy.as_dict() | {"until": until, "fingerprint": mark}
            intent = self.intent(action, decision, ref, held)
            await self.log.append(intent)
            assert ref.id is not None
            found = ref.id
            self._made[mark] = (found, until)
            self._ask(found, policy, intent)
        return await self._wait(found, time.monotonic() + policy.wait, contention.fence_of(action))

    def _ask(self, action_id: int, policy: Hold, intent: Record) -> None:
        """Ask the declared voters the hold names for their votes, off the request's path."""
        declared = self.voters()
        asked = [declared[name] for name in policy.voters if name in declared]
        if not asked:
            return
        asking = automated.ask(self.log, action_id, asked, intent.data)
        task = asyncio.create_task(asking, name=f"ask the voters of action {action_id}")
        self._asking.add(task)
        task.add_done_callback(self._asking.discard)

    def mark(self, action: Action) -> str:
        """What makes a request the same as a held one: its agent, its fingerprint (method, URL,
        canonical body), its headers but those that change on every attempt (a header may pick
        the tenant or account an action lands on), and, when it carries credentials, a keyed
        digest of them, so that an approval given for one request never runs as another. The key lives in
        this process only (the log keeps no digest of a credential): a held request with
        credentials is joined only while this proxy runs."""
        redactor = self.redactor()
        kept = {k.lower(): v for k, v in action.headers.items() if k.lower() not in VOLATILE}
        # The headers as the log shows them (credentials redacted): a plain digest reveals nothing.
        shown = hashlib.sha256(repr(sorted(redactor.headers(kept).items())).encode()).hexdigest()
        plain = f"{action.agent}|{fingerprint(action)}|{shown[:32]}"
        # A signature made afresh for each attempt (AWS's) counts by who signed, not by its bytes.
        creds = sorted((k, signed_stably(v)) for k, v in kept.items() if redactor.secret_header(k))
        if not creds:
            return plain
        return f"{plain}|{hmac.new(self._key, repr(creds).encode(), hashlib.sha256).hexdigest()}"

    def _joined(self, mark: str) -> int | None:
        """The held or approved action this request already made, if any (or one it made that
        was aborted while its hold lasts: the request gets that abort)."""
        now = time.time()
        for key, (_, until) in list(self._made.items()):
            if until < now:
                del self._made[key]
        made = self._made.get(mark)
        if made is not None:
            index = self.log.action(made[0])
            if index is not None and index["state"] in (State.HELD, State.APPROVED, State.ABORTED):
                return made[0]
        for state in (State.HELD, State.APPROVED):  # made elsewhere, or before a restart
            for index in self.log.actions(state.value):
                if index.get("fingerprint") == mark:
                    return int(index["id"])
        return None

    async def _wait(self, action_id: int, deadline: float, fence: Fence | None) -> Parked:
        while True:
            index = self.log.action(action_id)
            state = index["state"] if index is not None else None
            if state == State.APPROVED:
                try:
                    await self.log.append(votes.execution(action_id, _last_decision(self.log, index), fence))
                    return Parked(Fate.RUN, action_id)
                except StateError:
                    pass  # another request ran it first, or the hold just ended
            elif state == State.ABORTED:
                return Parked(Fate.ABORTED, action_id, _why_aborted(self.log, index))
            elif state != State.HELD:
                why = f"action {action_id} already ran ({state}); send a new request for a new action"
                return Parked(Fate.ABORTED, action_id, why)
            if time.monotonic() >= deadline:
                return Parked(Fate.WAITING, action_id)
            await asyncio.sleep(HOLD_POLL)

    async def expire(self) -> list[int]:
        """Abort the held and approved actions whose hold has ended (off the event loop)."""
        return await asyncio.to_thread(votes.expire, self.log)

    async def keep_expiring(self, every: float = 1.0) -> None:
        """Run `expire` every `every` seconds until cancelled."""
        while True:
            try:
                await self.expire()
            except StoreError as e:
                logger.error("held actions past their timeout could not be aborted yet: %s", e)
            await asyncio.sleep(every)


def _last_decision(log: Log, index: dict[str, Any] | None) -> int | None:
    entries = (log.action(index["id"], whole=True) or index)["entries"] if index is not None else []
    return next((seq for seq in reversed(entries) if (e := log.entry(seq)) and e.kind == "decision"), None)


def _why_aborted(log: Log, index: dict[str, Any] | None) -> str:
    if index is None:
        return "aborted"
    for seq in reversed((log.action(index["id"], whole=True) or index)["entries"]):
        entry = log.entry(seq)
        if entry is not None and entry.kind in ("decision", "resolution"):
            return str(entry.data.get("why") or entry.data.get("note") or "aborted")
    return "aborted"

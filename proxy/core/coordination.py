"""The one seam for coordination between agents: sessions and their epochs, locks, and limit
counters, behind `Coordination`, which the gate calls and never looks behind.

`Embedded` keeps them in the log's data dir (store/sessions.py, store/locks.py,
store/limits.py): every Airlock process on the host appends to that one LMDB environment, so
they share epochs, locks and counts, and all survive restarts (a lock only while its holder
lives). The fence, the lock and the counts are checked and applied in the transaction that
writes the intent, so nothing slips in between a check and the intent it admits.

How a shared implementation (etcd, for many sidecars on many hosts) replaces it without
touching the gate: it implements the same methods and raises the same refusals (Fenced,
Locked, LimitReached from store), so the gate's handling stays as it is.
- `admit` runs one etcd transaction before the local append: compare the agent's epoch key
  with the fence's epoch (else Fenced, quoting the epoch's history kept beside it), compare
  the lock key is absent or the claim's holder's (else Locked), and put it under a lease (the
  hold, or a short lease the sidecar keeps alive while the action runs, so a dead sidecar's
  locks lapse), and add the counts as keys under leases of the window's length, comparing the
  count in the window first (else LimitReached). Only then the intent is appended to the
  local log with the same record fields, and a failed local append gives the lock and
  counts back. That etcd transaction is the durable step a takeover serializes against.
- `settle` (and `settle_soon`, from a task of its own) deletes the action's lock key in etcd
  when it holds it, then appends the outcome.
- `start_session` and `takeover` increment the epoch key in one etcd transaction and record
  the epoch etcd gave in the local `session_started` or `takeover` entry (the trail); tokens'
  digests and sessions live in etcd so any sidecar finds a session by its token.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Protocol

from store import (
    Entry,
    Fence,
    LimitCheck,
    LockClaim,
    LockInfo,
    Log,
    Record,
    SessionInfo,
    release_lock,
    session_ended,
    session_started,
    takeover,
)


class Coordination(Protocol):
    """Epochs, locks and limit counters shared by every sidecar that coordinates through it.

    Refusals are store's: Fenced (the session is stale), Locked (another live holder has the
    key), LimitReached (the intent would cross a limit); when one is raised, nothing of the
    intent was written or counted."""

    async def admit(
        self,
        intent: Record,
        *,
        fence: Fence | None = None,
        lock: LockClaim | None = None,
        limits: tuple[LimitCheck, ...] = (),
    ) -> Entry:
        """Append `intent` once its session's fence holds, its lock is taken and its limits
        are counted, all in the step that makes it durable; return its entry."""
        ...

    async def settle(self, outcome: Record) -> Entry:
        """Append an action's outcome; it releases the lock the action held for its duration."""
        ...

    def settle_soon(self, outcome: Record) -> None:
        """Queue an action's outcome without waiting for it (it shares the log's next commit);
        the lock the action held is released when it is written."""
        ...

    async def start_session(self, name: str, token_digest: str, ttl: float | None = None) -> SessionInfo:
        """A new session of agent `name` (its token kept only as `token_digest`, its SHA-256),
        at the name's next epoch: every older session of the name is fenced."""
        ...

    async def takeover(self, name: str, by: str) -> int:
        """Operator `by` fences every session of agent `name`; return the name's new epoch."""
        ...

    async def end_session(self, session_id: str) -> None:
        """End a session: its actions are refused and its locks free from now on."""
        ...

    async def release(self, key: str, holder: str) -> None:
        """Release the lock `holder` holds on `key` (StateError if it holds none)."""
        ...

    async def session_by_token(self, token_digest: str) -> SessionInfo | None:
        """The session whose token has SHA-256 `token_digest`, stale or not (see `stale()`)."""
        ...

    async def sessions(self, name: str | None = None) -> list[SessionInfo]:
        """Every session known (of agent `name` only, if given)."""
        ...

    async def locks(self) -> list[LockInfo]:
        """Every lock known, each saying whether it binds now."""
        ...


class Embedded:
    """Coordination kept in the log of one data dir, shared by every Airlock process on it."""

    def __init__(self, log: Log):
        self.log = log

    async def admit(
        self,
        intent: Record,
        *,
        fence: Fence | None = None,
        lock: LockClaim | None = None,
        limits: tuple[LimitCheck, ...] = (),
    ) -> Entry:
        """Append `intent` with its fence, lock and limits, checked in the transaction that
        writes it (store/append.py)."""
        return await self.log.append(replace(intent, fence=fence, lock=lock, limits=limits))

    async def settle(self, outcome: Record) -> Entry:
        """Append the outcome (the writer releases the action's lock in the same transaction)."""
        return await self.log.append(outcome)

    def settle_soon(self, outcome: Record) -> None:
        """Queue the outcome for the next commit (the writer releases the lock in it)."""
        self.log.append_soon(outcome)

    async def start_session(self, name: str, token_digest: str, ttl: float | None = None) -> SessionInfo:
        """Append a `session_started` entry; the writer gives it the name's next epoch."""
        entry = await self.log.append(session_started(name, token_digest, ttl))
        started = await asyncio.to_thread(self.log.session, entry.data["session"])
        assert started is not None  # written just now, in this data dir
        return started

    async def takeover(self, name: str, by: str) -> int:
        """Append a `takeover` entry; return the epoch the writer gave it."""
        entry = await self.log.append(takeover(name, by=by))
        epoch: int = entry.data["epoch"]
        return epoch

    async def end_session(self, session_id: str) -> None:
        """Append a `session_ended` entry."""
        await self.log.append(session_ended(session_id))

    async def release(self, key: str, holder: str) -> None:
        """Append a `lock_released` entry (refused unless `holder` holds `key`)."""
        await self.log.append(release_lock(key, holder))

    async def session_by_token(self, token_digest: str) -> SessionInfo | None:
        """One read of the log (no write, no fsync)."""
        return self.log.session_by_token(token_digest)

    async def sessions(self, name: str | None = None) -> list[SessionInfo]:
        """The sessions in the log, read off the event loop (their number may grow)."""
        return await asyncio.to_thread(self.log.sessions, name)

    async def locks(self) -> list[LockInfo]:
        """The lock records in the log, read off the event loop (liveness tests touch files)."""
        return await asyncio.to_thread(self.log.locks)

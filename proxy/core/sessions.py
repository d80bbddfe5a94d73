"""Starting, ending and taking over agents' sessions, the same from the command line and the
control API: each is one record in the log, and the log's session table is what every Airlock
process on the data dir checks credentials and fences against."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import store
from store import Log, Record, SessionInfo, session_ended, session_started

from .credentials import mint_token, token_digest


@dataclass(frozen=True)
class Minted:
    """A new session and its token: the one time the token exists outside the agent."""

    session: SessionInfo
    token: str


@dataclass(frozen=True)
class Start:
    """The record that starts a session, and the token whose digest it holds."""

    record: Record
    token: str

    def minted(self, log: Log) -> Minted:
        """The session the record started, once the log holds it."""
        found = log.session_by_token(token_digest(self.token))
        if found is None:
            raise LookupError("the log does not hold the session just started")
        return Minted(found, self.token)


def start(name: str, ttl: float | None = None) -> Start:
    """A new session for agent `name` (expiring after `ttl` seconds, if given): its epoch is the
    name's next, which fences every older session of the name."""
    token = mint_token()
    return Start(session_started(name, token_digest(token), ttl), token)


def ended(session_id: str) -> Record:
    """The record that ends a session: its credentials stop passing, its held locks are freed."""
    return session_ended(session_id)


def takeover(name: str, by: str) -> Record:
    """The record that moves `name`'s epoch on without a new session, fencing all of its sessions."""
    return store.takeover(name, by=by)


def live(log: Log, name: str) -> list[SessionInfo]:
    """The sessions of `name` that have not ended or expired (fenced ones included)."""
    now = time.time()
    return [s for s in log.sessions(name) if s.ended is None and (s.expires is None or s.expires > now)]


def as_json(info: SessionInfo) -> dict[str, Any]:
    """A session as `airlock session list --json` and the control API show it (never its
    token's digest), with `fenced`: whether a newer session or a takeover superseded it."""
    return info.as_dict() | {"fenced": info.current_epoch > info.epoch}

"""Agent sessions and their epochs: who an agent is now, and which of its sessions are stale.

Each agent name has an epoch. A `session_started` entry opens a session of the name at the
name's epoch + 1, and a `takeover` entry (an operator's) moves the epoch on without one: both
fence every older session of the name. A `session_ended` entry ends one. The epoch is assigned
in the transaction that writes the entry (`prepare`), so sessions started at once, by one
process or several, get distinct epochs. A session's token is kept only as its SHA-256.

The databases are a function of those entries (`apply`, replayed by `verify` over the chain):
`sessions` holds `s` + id -> the session, and `t` + token digest -> the id; `epochs` holds
name -> the current epoch, and name + NUL + epoch -> what moved the name to that epoch (which
session or takeover, when), the history a fenced session's refusal quotes.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import lmdb
import orjson

from .coordinated import Fence, Fenced, when
from .entry import Entry
from .errors import Altered, StateError, StoreError
from .record import Record
from .stored import as_bytes, seq_key
from .view import View

SESSION_STARTED = "session_started"
TAKEOVER = "takeover"
SESSION_ENDED = "session_ended"
KINDS = frozenset({SESSION_STARTED, TAKEOVER, SESSION_ENDED})
SESSIONS, EPOCHS = b"sessions", b"epochs"
_DIGEST = re.compile(r"[0-9a-f]{64}")
MAX_NAME_BYTES = 200  # an agent name is part of a database key


@dataclass(frozen=True)
class SessionInfo:
    """A session as the log holds it: its agent, epoch, times, and when and by what it was
    superseded (`superseded_by`: the newer session's id, or None for an operator's takeover,
    whose operator `taken_over_by` names)."""

    id: str
    agent: str
    epoch: int
    created: float
    expires: float | None
    ended: float | None
    current_epoch: int
    superseded_at: float | None = None
    superseded_by: str | None = None
    taken_over_by: str | None = None

    def stale(self, now: float | None = None) -> str | None:
        """Why the session can act no more (superseded, ended, expired), or None while it can."""
        now = time.time() if now is None else now
        who = f"session {self.id} of agent {self.agent}"
        if self.current_epoch > self.epoch:
            at = when(self.superseded_at) if self.superseded_at is not None else "an unknown time"
            by = (
                f"session {self.superseded_by}"
                if self.superseded_by is not None
                else f"a takeover by {self.taken_over_by or 'an unnamed operator'}"
            )
            return f"{who} was superseded at {at} by {by} (epoch {self.epoch + 1})"
        if self.ended is not None:
            return f"{who} ended at {when(self.ended)}"
        if self.expires is not None and self.expires <= now:
            return f"{who} expired at {when(self.expires)}"
        return None

    def as_dict(self) -> dict[str, Any]:
        """The session as a JSON-ready mapping (with `live`: whether it can act now)."""
        return {
            "id": self.id,
            "agent": self.agent,
            "epoch": self.epoch,
            "created": self.created,
            "expires": self.expires,
            "ended": self.ended,
            "current_epoch": self.current_epoch,
            "superseded_at": self.superseded_at,
            "superseded_by": self.superseded_by,
            "taken_over_by": self.taken_over_by,
            "live": self.stale() is None,
        }


# ---- the records ---------------------------------------------------------------------------


def new_session_id() -> str:
    """A fresh session id: `s-` and 16 random hex digits."""
    return "s-" + secrets.token_hex(8)


def _name(name: str) -> str:
    if not name or "\0" in name or len(name.encode()) > MAX_NAME_BYTES:
        raise StoreError(f"{name!r} is not an agent name (1 to {MAX_NAME_BYTES} bytes, no NUL)")
    return name


def session_started(name: str, token_digest: str, ttl: float | None = None) -> Record:
    """A new session for agent `name` (its id in the entry's `session`), whose token has SHA-256
    `token_digest`, expiring `ttl` seconds after it starts (None: never); its epoch (the entry's
    `epoch`) is the name's epoch + 1, which fences every older session of the name."""
    if not _DIGEST.fullmatch(token_digest):
        raise StoreError("a session's token digest must be a SHA-256 in 64 lowercase hex digits")
    if ttl is not None and ttl <= 0:
        raise StoreError(f"a session's ttl must be above 0 seconds, not {ttl}")
    data = {"agent": _name(name), "session": new_session_id(), "token_sha256": token_digest, "ttl": ttl}
    return Record(kind=SESSION_STARTED, data=data)


def takeover(name: str, by: str) -> Record:
    """An operator `by` moves agent `name`'s epoch on (the entry's `epoch`) without a new
    session: every session of the name is fenced."""
    return Record(kind=TAKEOVER, data={"agent": _name(name), "by": by})


def session_ended(session_id: str) -> Record:
    """Session `session_id` ends: its actions are refused from now on and its locks are free."""
    return Record(kind=SESSION_ENDED, data={"session": session_id})


def changes_sessions(body: dict[str, Any]) -> bool:
    """True for the body of an entry that starts or ends a session or moves an epoch."""
    return body.get("kind") in KINDS and body.get("action") is None


# ---- the databases -------------------------------------------------------------------------


class Rows(Protocol):
    """Where the session records live: the log's databases, or a replay's dictionary."""

    def get(self, db: bytes, key: bytes) -> dict[str, Any] | str | int | None:
        """The record under `key` in `db`, if any."""
        ...

    def put(self, db: bytes, key: bytes, value: dict[str, Any] | str | int) -> None:
        """Write the record under `key` in `db`."""
        ...


class Stored:
    """The session records in the log's databases, inside transaction `txn`."""

    def __init__(self, txn: lmdb.Transaction, dbs: dict[bytes, Any]):
        self.txn = txn
        self.dbs = dbs

    def get(self, db: bytes, key: bytes) -> dict[str, Any] | str | int | None:
        """The record under `key` in `db`, if any (Altered if it is not JSON)."""
        if db not in self.dbs:
            return None  # an older airlock's log, opened read-only: no sessions yet
        raw = self.txn.get(key, db=self.dbs[db])
        if raw is None:
            return None
        try:
            value: dict[str, Any] | str | int = orjson.loads(as_bytes(raw))
        except ValueError:
            raise Altered(f"the {db.decode()} record {key!r} is not a valid record") from None
        return value

    def put(self, db: bytes, key: bytes, value: dict[str, Any] | str | int) -> None:
        """Write the record under `key` in `db`."""
        self.txn.put(key, orjson.dumps(value), db=self.dbs[db])


def session_key(session_id: str) -> bytes:
    """The `sessions` key of a session."""
    return b"s" + session_id.encode()


def token_key(digest: str) -> bytes:
    """The `sessions` key of a token digest (its value: the session id)."""
    return b"t" + digest.encode()


def history_key(name: str, epoch: int) -> bytes:
    """The `epochs` key of what moved agent `name` to `epoch`."""
    return name.encode() + b"\0" + seq_key(epoch)


def epoch_of(rows: Rows, name: str) -> int:
    """Agent `name`'s current epoch (0 before its first session or takeover)."""
    record = rows.get(EPOCHS, name.encode())
    if record is None:
        return 0
    if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
        raise Altered(f"the epoch record of agent {name!r} is not a valid record")
    return int(record["epoch"])


def _session(rows: Rows, session_id: str) -> dict[str, Any] | None:
    record = rows.get(SESSIONS, session_key(session_id))
    if record is None:
        return None
    if (
        not isinstance(record, dict)
        or not isinstance(record.get("agent"), str)
        or not isinstance(record.get("epoch"), int)
    ):
        raise Altered(f"the record of session {session_id} is not a valid record")
    return record


def prepare(rows: Rows, body: dict[str, Any]) -> None:
    """Before a session entry is sealed: give a start or takeover its epoch (the name's + 1);
    refuse to end a session that does not exist or has ended (StateError)."""
    data = body["data"]
    if body["kind"] in (SESSION_STARTED, TAKEOVER):
        data["epoch"] = epoch_of(rows, data["agent"]) + 1
        if (
            body["kind"] == SESSION_STARTED
            and rows.get(SESSIONS, token_key(data["token_sha256"])) is not None
        ):
            raise StateError("a session with this token exists already: mint a new token")
        return
    session = _session(rows, data["session"])
    if session is None:
        raise StateError(f"there is no session {data['session']}")
    if session.get("ended") is not None:
        raise StateError(f"session {data['session']} ended already, at {when(session['ended'])}")
    data["agent"] = session["agent"]


def apply(rows: Rows, entry: Entry) -> None:
    """Keep what a session entry says in the session databases (also how verify replays them)."""
    data = entry.data
    if entry.kind in (SESSION_STARTED, TAKEOVER):
        name, epoch = data["agent"], data["epoch"]
        rows.put(EPOCHS, name.encode(), {"epoch": epoch, "entry": entry.seq})
        moved = {"entry": entry.seq, "ts": entry.ts, "session": data.get("session"), "by": data.get("by")}
        rows.put(EPOCHS, history_key(name, epoch), moved)
        if entry.kind == SESSION_STARTED:
            ttl = data.get("ttl")
            session = {
                "id": data["session"],
                "agent": name,
                "epoch": epoch,
                "token_sha256": data["token_sha256"],
                "created": entry.ts,
                "expires": entry.ts + ttl if isinstance(ttl, int | float) else None,
                "entry": entry.seq,
                "ended": None,
                "ended_entry": None,
            }
            rows.put(SESSIONS, session_key(data["session"]), session)
            rows.put(SESSIONS, token_key(data["token_sha256"]), data["session"])
        return
    found = rows.get(SESSIONS, session_key(data["session"]))
    session = dict(found) if isinstance(found, dict) else {"id": data["session"]}
    rows.put(SESSIONS, session_key(data["session"]), session | {"ended": entry.ts, "ended_entry": entry.seq})


# ---- reading -------------------------------------------------------------------------------


def info(rows: Rows, session_id: str) -> SessionInfo | None:
    """Session `session_id` as the databases hold it, with what superseded it (None: unknown)."""
    record = _session(rows, session_id)
    if record is None:
        return None
    name, epoch = record["agent"], record["epoch"]
    current = epoch_of(rows, name)
    at = by = operator = None
    if current > epoch:
        moved = rows.get(EPOCHS, history_key(name, epoch + 1))
        if isinstance(moved, dict):
            at, by, operator = moved.get("ts"), moved.get("session"), moved.get("by")
    return SessionInfo(
        id=session_id,
        agent=name,
        epoch=epoch,
        created=record.get("created", 0.0),
        expires=record.get("expires"),
        ended=record.get("ended"),
        current_epoch=current,
        superseded_at=at,
        superseded_by=by,
        taken_over_by=operator,
    )


def by_token(rows: Rows, digest: str) -> SessionInfo | None:
    """The session whose token has SHA-256 `digest`, if any (stale or not: see `stale`)."""
    session_id = rows.get(SESSIONS, token_key(digest))
    return info(rows, session_id) if isinstance(session_id, str) else None


def every(view: View, name: str | None = None) -> Iterator[SessionInfo]:
    """Every session the log holds (of agent `name` only, if given), oldest epoch first per name."""
    if SESSIONS not in view.dbs:
        return
    rows = Stored(view.txn, view.dbs)
    found: list[SessionInfo] = []
    cur = view.txn.cursor(db=view.dbs[SESSIONS])
    if cur.set_range(b"s"):
        for raw_key in cur.iternext(values=False):
            key = as_bytes(raw_key)
            if not key.startswith(b"s"):
                break
            session = info(rows, key[1:].decode())
            if session is not None and (name is None or session.agent == name):
                found.append(session)
    yield from sorted(found, key=lambda s: (s.agent, s.epoch))


def refuse_if_fenced(rows: Rows, fence: Fence, now: float) -> None:
    """Raise Fenced when the fence's session is stale: superseded, ended or expired (or unknown,
    or not the agent and epoch the fence names)."""
    session = info(rows, fence.session)
    if session is None:
        raise Fenced(
            f"session {fence.session} of agent {fence.agent} is not in the log: start a new session",
            fence,
            epoch=epoch_of(rows, fence.agent),
        )
    if (session.agent, session.epoch) != (fence.agent, fence.epoch):
        raise Fenced(
            f"session {fence.session} is of agent {session.agent} at epoch {session.epoch}, "
            f"not of agent {fence.agent} at epoch {fence.epoch}",
            fence,
            epoch=session.current_epoch,
        )
    reason = session.stale(now)
    if reason is not None:
        by = session.superseded_by or (
            f"takeover by {session.taken_over_by}" if session.current_epoch > session.epoch else None
        )
        raise Fenced(reason, fence, epoch=session.current_epoch, by=by, at=session.superseded_at)


def stale(rows: Rows, session_id: str, now: float) -> bool:
    """True when session `session_id` can act no more (or is unknown)."""
    session = info(rows, session_id)
    return session is None or session.stale(now) is not None

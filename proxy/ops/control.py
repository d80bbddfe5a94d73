"""The control API (aiohttp): health, the log, resolutions and the freeze; loopback and a token
by default."""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from proxy.core import freeze, records, votes
from proxy.core.reload import RulesReloader
from rules import RulesError
from store import Altered, Log, NoLog, Query, State, StateError, StoreError, UnknownAction, parse_head

from . import agents, approvals, events
from .events import EVENTS, Events
from .metrics import CONTENT_TYPE, Metrics
from .readiness import Readiness
from .tail import Tail
from .times import parse_time
from .unauthorized import UnauthorizedLog

LOG = web.AppKey("log", Log)
RELOADER = web.AppKey("reloader", RulesReloader)
TOKEN = web.AppKey("token", str)
VERIFYING = web.AppKey("verifying", asyncio.Lock)
METRICS = web.AppKey("metrics", Metrics)
READINESS = web.AppKey("readiness", Readiness)
TAIL = web.AppKey("tail", Tail)
UNAUTHORIZED = web.AppKey("unauthorized", UnauthorizedLog)
# The probes only: /metrics needs the token too (docs/control-api.md#metrics says why).
OPEN_PATHS = frozenset({"/healthz", "/readyz"}) | approvals.PATHS
STATES = frozenset(State)
MAX_ID = (1 << 63) - 1

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, error: str, message: str) -> web.Response:
    return web.json_response({"error": error, "message": message}, status=status)


@web.middleware
async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every path but the probes needs `Authorization: Bearer <token from the data dir>`; a
    request without it is refused (401) and logged, never with what it sent."""
    if request.path in OPEN_PATHS:
        return await handler(request)
    sent = request.headers.get("Authorization")
    scheme, _, given = (sent or "").partition(" ")
    # The scheme name is case-insensitive (RFC 9110); the token itself is not.
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), request.app[TOKEN].encode()):
        credential = (
            "none" if sent is None else "wrong" if scheme.lower() == "bearer" and given else "malformed"
        )
        request.app[METRICS].unauthorized.inc()
        request.app[UNAUTHORIZED].refused(request.method, request.path, request.remote, credential)
        return _error(401, "unauthorized", "send Authorization: Bearer <token from DATA/control.token>")
    return await handler(request)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn store errors into JSON answers instead of tracebacks."""
    try:
        return await handler(request)
    except UnknownAction as e:
        return _error(404, "not_found", str(e))
    except Altered as e:
        return _error(500, "log_altered", str(e))
    except StateError as e:
        return _error(409, "conflict", str(e))
    except StoreError as e:
        return _error(503, "log_unavailable", str(e))


async def health(request: web.Request) -> web.Response:
    """Liveness and readiness: the log answers."""
    try:
        seq, _ = request.app[LOG].head()
    except (NoLog, StoreError) as e:
        return _error(503, "log_unavailable", str(e))
    return web.json_response({"ok": True, "entries": seq})


async def ready(request: web.Request) -> web.Response:
    """GET /readyz: 200 while the log can be written and rules are loaded, else 503 and why."""
    problem = await request.app[READINESS].problem()
    if problem is not None:
        return _error(503, "not_ready", problem)
    return web.json_response({"ready": True})


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: the Prometheus text format (the gauges read the log: on a thread)."""
    try:
        text = await asyncio.to_thread(request.app[METRICS].exposition)
    except StoreError as e:
        return _error(503, "log_unavailable", f"the metrics read the log, which cannot be read: {e}")
    return web.Response(body=text, headers={"Content-Type": CONTENT_TYPE})


async def _following(app: web.Application) -> AsyncIterator[None]:
    """The tail follows the log while the app runs; its readers are the metrics and events."""
    app[EVENTS].start(asyncio.get_running_loop())  # and the tail with it
    yield
    app[EVENTS].close()
    await asyncio.to_thread(app[TAIL].stop)


async def _end_streams(app: web.Application) -> None:
    # Before aiohttp waits for open requests to end: event streams never would.
    app[EVENTS].close()


def _bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(
        text=json.dumps({"error": "bad_request", "message": message}), content_type="application/json"
    )


def _int_param(request: web.Request, name: str, default: int, least: int = 0) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _bad_request(f"{name} must be an integer") from None
    if not least <= value <= MAX_ID:
        raise _bad_request(f"{name} must be between {least} and {MAX_ID}")
    return value


async def list_actions(request: web.Request) -> web.Response:
    """GET /v1/actions?limit=N&before=ID: action summaries, newest first, at most N (1 or more,
    default 100: `limit=0` is a 400, as a page of nothing would read as an empty log), with ids
    below `before`; `next` is the `before` of the following page (null on the last). Filters
    `state`, `agent`, `rule`, `host`, `since` (ISO 8601 or an age: `2h`), each read from an index.
    `after=ID` instead: oldest first from the action after ID; `newest=K`: oldest first among
    the newest K (both filter by `state` only)."""
    limit = _int_param(request, "limit", 100, least=1)
    state = request.query.get("state")
    if state is not None and state not in STATES:
        raise _bad_request(f"state must be one of {', '.join(sorted(STATES))}")
    log = request.app[LOG]
    if "after" in request.query or "newest" in request.query:
        return await _oldest_first(request, log, state, limit)
    since = None
    if "since" in request.query:
        try:
            since = parse_time(request.query["since"])
        except ValueError as e:
            raise _bad_request(f"since: {e}") from None
    before = _int_param(request, "before", MAX_ID, least=1)
    fields = {name: request.query.get(name) for name in ("agent", "rule", "host")}
    query = Query(limit=limit + 1, before=before, since=since, state=state, **fields)
    # Each action is rebuilt from its entries: work that grows with `limit` stays off the loop.
    found = await asyncio.to_thread(log.newest, query)
    following = found[limit - 1]["id"] if len(found) > limit else None
    return web.json_response({"actions": found[:limit], "next": following})


async def _oldest_first(request: web.Request, log: Log, state: str | None, limit: int) -> web.Response:
    """The pages of `after=ID` and `newest=K`, oldest first."""
    if any(name in request.query for name in ("before", "since", "agent", "rule", "host")):
        raise _bad_request("before, since, agent, rule and host page newest first: drop after and newest")
    after = _int_param(request, "after", 0)
    if "newest" in request.query:
        newest = _int_param(request, "newest", 100, least=1)
        after = max(0, await asyncio.to_thread(log.last_action) - newest)
    found = await asyncio.to_thread(lambda: list(itertools.islice(log.actions(state, after=after), limit)))
    return web.json_response({"actions": found})


def _action_id(request: web.Request) -> int:
    action_id = int(request.match_info["id"])
    if not 1 <= action_id <= MAX_ID:
        raise UnknownAction(f"no action {action_id} in the log")
    return action_id


async def show_action(request: web.Request) -> web.Response:
    """GET /v1/actions/{id}: one action with all its entries."""
    log = request.app[LOG]
    action_id = _action_id(request)

    def read() -> tuple[dict[str, object] | None, list[dict[str, object]]]:
        # Its entries, each checked to be sealed and linked to its neighbours (as `airlock show`).
        found = log.action_entries(action_id)
        if found is None:
            return None, []
        return found[0], [e.as_dict() for e in found[1]]

    index, entries = await asyncio.to_thread(read)
    if index is None:
        raise UnknownAction(f"no action {action_id} in the log")
    return web.json_response({"action": index, "entries": entries})


async def resolve_action(request: web.Request) -> web.Response:
    """POST /v1/actions/{id}/resolve {"executed": bool, "note": str}: resolve an in-doubt action."""
    try:
        body = await request.json()
        executed = body["executed"]
        if not isinstance(executed, bool):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        return _error(400, "bad_request", 'send {"executed": true|false, "note": "..."}')
    record = records.resolution(
        _action_id(request), executed=executed, note=str(body.get("note", "")), by="control-api"
    )
    entry = await request.app[LOG].append(record)
    return web.json_response({"entry": entry.as_dict()})


async def list_pending(request: web.Request) -> web.Response:
    """GET /v1/pending: the actions held for votes, oldest first, with their votes so far."""
    held = await asyncio.to_thread(votes.pending, request.app[LOG])
    return web.json_response({"pending": held})


async def vote_on_action(request: web.Request) -> web.Response:
    """POST /v1/actions/{id}/votes {"vote": "approve"|"deny", "voter": str, "reason": str}: a vote
    on a held action, and the decision it completed, if any. 404 for no such action, 409 for an
    action not held (decided already), 403 for a voter the hold does not name."""
    shape = 'send a JSON object: {"vote": "approve"|"deny", "voter": "name", "reason": "..."}'
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "bad_request", shape)
    if not isinstance(body, dict):
        return _error(400, "bad_request", shape)
    for field, valid in (
        ("vote", lambda v: v in (votes.APPROVE, votes.DENY)),
        ("voter", lambda v: isinstance(v, str) and v.strip() != ""),
        ("reason", lambda v: isinstance(v, str)),
    ):
        if (field in body or field != "reason") and not valid(body.get(field)):
            wanted = {"vote": '"approve" or "deny"', "voter": "a non-empty name", "reason": "a string"}[field]
            return _error(400, "bad_request", f"field {field}: must be {wanted}")
    try:
        ballot = (_action_id(request), body["voter"], body["vote"], body.get("reason", ""))
        cast = await asyncio.to_thread(votes.cast, request.app[LOG], *ballot)
    except votes.VoteRefused as e:
        return _error(403, "not_a_voter", str(e))
    decision = cast.decision.as_dict() if cast.decision is not None else None
    return web.json_response({"vote": cast.vote.as_dict(), "decision": decision})


async def verify(request: web.Request) -> web.Response:
    """GET /v1/verify?expect=SEQ:HASH: check the chain and every index against it, and the head
    it ends at; with `expect`, also that the log still holds that entry."""
    expect = None
    if "expect" in request.query:
        try:
            expect = parse_head(request.query["expect"])
        except ValueError as e:
            raise _bad_request(f"expect: {e}") from None
    # The check reads the whole log: in a thread, so the proxy and /healthz answer meanwhile,
    # and one at a time, so that asking again and again does not pile up threads.
    async with request.app[VERIFYING]:
        verdict = await asyncio.to_thread(request.app[LOG].verify, expect)
    return web.json_response(
        {
            "ok": verdict.ok,
            "checked": verdict.checked,
            "bad_seq": verdict.bad_seq,
            "reason": verdict.reason,
            "head": {"seq": verdict.head_seq, "hash": verdict.head_hash},
        }
    )


def _freeze_state(log: Log) -> dict[str, object]:
    state = log.frozen()
    return {"frozen": state is not None} | (state.as_dict() if state is not None else {})


async def _operator_body(request: web.Request) -> tuple[str, str]:
    """Who asks and why, from an optional JSON body {"by": str, "reason": str}."""
    if not await request.read():
        return "control-api", ""
    try:
        body = await request.json()
    except ValueError:
        raise _bad_request('send a JSON object: {"reason": "...", "by": "..."} (both optional)') from None
    if not isinstance(body, dict):
        raise _bad_request('send a JSON object: {"reason": "...", "by": "..."} (both optional)')
    by, reason = body.get("by", "control-api"), body.get("reason", "")
    for name, value in (("by", by), ("reason", reason)):
        if not isinstance(value, str):
            raise _bad_request(f"{name} must be a string")
    if not by.strip():
        raise _bad_request("by must name who acts, or be left out")
    return by, reason


async def show_freeze(request: web.Request) -> web.Response:
    """GET /v1/freeze: whether the log is frozen, and by whom, since when and why."""
    return web.json_response(_freeze_state(request.app[LOG]))


async def freeze_log(request: web.Request) -> web.Response:
    """POST /v1/freeze {"reason": str, "by": str}: refuse every write and destructive action
    (503 `frozen`) until a thaw; 409 if the log is frozen already."""
    by, reason = await _operator_body(request)
    log = request.app[LOG]
    entry = await log.append(freeze.freeze(by, reason))
    return web.json_response(_freeze_state(log) | {"entry": entry.seq})


async def thaw_log(request: web.Request) -> web.Response:
    """POST /v1/thaw {"reason": str, "by": str}: lift the freeze; 409 if the log is not frozen."""
    by, reason = await _operator_body(request)
    log = request.app[LOG]
    entry = await log.append(freeze.thaw(by, reason))
    return web.json_response(_freeze_state(log) | {"entry": entry.seq})


def _rules_state(reloader: RulesReloader) -> dict[str, object]:
    current = reloader.current
    return {
        "digest": current.digest,
        "sources": [str(p) for p in current.sources],
        "rules": len(current.rules),
        "last_error": reloader.last_error,
    }


async def show_rules(request: web.Request) -> web.Response:
    """GET /v1/rules: the rules in force and the last reload error, if any."""
    return web.json_response(_rules_state(request.app[RELOADER]))


async def reload_rules(request: web.Request) -> web.Response:
    """POST /v1/rules/reload: load the rule files again; 422 keeps the old rules and says why."""
    reloader = request.app[RELOADER]
    try:
        await reloader.reload("control API")
    except RulesError as e:
        return web.json_response(
            {"error": "invalid_rules", "message": f"{e}; the previous rules stay in force"}
            | _rules_state(reloader),
            status=422,
        )
    return web.json_response(_rules_state(reloader))


def make_app(log: Log, token: str, reloader: RulesReloader) -> web.Application:
    """The control API application over one log and the rules it keeps current."""
    app = web.Application(middlewares=[json_errors, require_token])
    app[LOG] = log
    app[agents.LOG] = log
    app[TOKEN] = token
    app[RELOADER] = reloader
    app[VERIFYING] = asyncio.Lock()
    app[METRICS] = Metrics(log, reloader)
    app[READINESS] = Readiness(log, reloader)
    app[UNAUTHORIZED] = UnauthorizedLog(log)
    app[TAIL] = Tail(log)
    app[TAIL].follow(app[METRICS].read)
    app[EVENTS] = Events(log, app[TAIL])
    app.cleanup_ctx.append(_following)
    app.on_shutdown.append(_end_streams)
    app.add_routes(
        [
            web.get("/healthz", health),
            *approvals.routes(),
            web.get("/readyz", ready),
            web.get("/metrics", metrics),
            web.get("/v1/events", events.stream),
            web.get("/v1/actions", list_actions),
            web.get(r"/v1/actions/{id:\d+}", show_action),
            web.post(r"/v1/actions/{id:\d+}/resolve", resolve_action),
            web.post(r"/v1/actions/{id:\d+}/votes", vote_on_action),
            web.get("/v1/pending", list_pending),
            web.get("/v1/verify", verify),
            web.get("/v1/rules", show_rules),
            web.post("/v1/rules/reload", reload_rules),
            web.get("/v1/freeze", show_freeze),
            web.post("/v1/freeze", freeze_log),
            web.post("/v1/thaw", thaw_log),
            *agents.routes(),
        ]
    )
    return app

"""The control API's sessions and takeovers: `POST /v1/sessions` starts a session and answers
its token (the only time it is shown), `GET /v1/sessions` lists them, and
`POST /v1/agents/{name}/takeover` fences every session of an agent. The log is found under the
application key the control API keeps it at."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from proxy.core import sessions
from store import Log

LOG = web.AppKey("agents.log", Log)


def routes() -> list[web.RouteDef]:
    """The routes for sessions and takeovers."""
    return [
        web.post("/v1/sessions", start_session),
        web.get("/v1/sessions", list_sessions),
        web.post(r"/v1/agents/{name}/takeover", take_over),
    ]


def _bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(
        text=json.dumps({"error": "bad_request", "message": message}), content_type="application/json"
    )


async def _object(request: web.Request, shape: str) -> dict[str, Any]:
    """The request's JSON object (an empty body is an empty object)."""
    if not await request.read():
        return {}
    try:
        body = await request.json()
    except ValueError:
        raise _bad_request(f"send a JSON object: {shape}") from None
    if not isinstance(body, dict):
        raise _bad_request(f"send a JSON object: {shape}")
    return body


def _name(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.strip() or not value.isprintable():
        raise _bad_request(f"{what} must name an agent (e.g. billing-bot)")
    return value


async def start_session(request: web.Request) -> web.Response:
    """POST /v1/sessions {"agent": NAME, "ttl": SECONDS}: a new session (fencing the agent's older
    ones); 201 with its id, epoch and token (`credentials` is NAME:TOKEN, for a proxy URL
    http://NAME:TOKEN@HOST:PORT or the X-Airlock-Session header)."""
    shape = '{"agent": "NAME", "ttl": SECONDS (optional)}'
    body = await _object(request, shape)
    name = _name(body.get("agent"), "agent")
    ttl = body.get("ttl")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl <= 0):
        raise _bad_request("ttl must be a positive number of seconds, or be left out")
    log = request.app[LOG]
    start = sessions.start(name, float(ttl) if ttl is not None else None)
    await log.append(start.record)
    minted = start.minted(log)
    shown = sessions.as_json(minted.session)
    return web.json_response(
        shown | {"token": minted.token, "credentials": f"{name}:{minted.token}"}, status=201
    )


async def list_sessions(request: web.Request) -> web.Response:
    """GET /v1/sessions?agent=NAME: sessions, oldest first (never their tokens), and whether
    each is fenced."""
    log = request.app[LOG]
    name = request.query.get("agent")
    return web.json_response({"sessions": [sessions.as_json(s) for s in log.sessions(name)]})


async def take_over(request: web.Request) -> web.Response:
    """POST /v1/agents/{name}/takeover {"by": str}: move the agent's epoch on, fencing every
    session of it; answers the new epoch and the sessions it fenced."""
    body = await _object(request, '{"by": "WHO"} (optional)')
    by = _name(body.get("by", "control-api"), "by")
    name = _name(request.match_info["name"], "the path")
    log = request.app[LOG]
    before = sessions.live(log, name)
    entry = await log.append(sessions.takeover(name, by))
    epoch = log.epoch(name)
    fenced = [s.id for s in before if s.epoch < epoch]
    return web.json_response({"agent": name, "epoch": epoch, "by": by, "fenced": fenced, "entry": entry.seq})

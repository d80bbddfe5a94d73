"""The gate: the mitmproxy addon that classifies, decides, logs and only then lets a request go.

Order per request: classify into an Action, decide with the rules, write the intent (durably
before anything goes upstream when the action mutates), forward, then write the outcome when
the response has passed through in full.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Coroutine, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from mitmproxy import http
from mitmproxy.net.http import url
from mitmproxy.proxy.mode_specs import ProxyMode, TransparentMode

from proxy.core import records
from proxy.core.admission import Admission, Answer
from proxy.core.keys import DedupPolicy
from proxy.core.tracking import Tracking
from proxy.mcp import messages as mcp
from proxy.mcp.evidence import SESSION_HEADER, Evidence, Introduction
from proxy.mcp.readings import server_of
from proxy.mcp.toolcalls import ToolCalls
from proxy.plane.adapters.http import AGENT_HEADER, classify, header_map
from rules import Action, Decision, Inference, Ruleset, Verdict
from store import Log

from . import answers, replays, uploads
from .discard import Discard
from .egress import Egress
from .identity import Identities, identified
from .model_calls import AnswerTap
from .streams import EventStream, Exchange, json_answer, receive_json
from .triage import Route, Triage, triage

logger = logging.getLogger(__name__)

TRACK = "airlock.tracking"
MCP = "airlock.mcp"
INTRODUCTION = "airlock.introduction"  # `initialize` requests to a server not yet shown to be MCP
ANSWER = "airlock.answer"  # a model call's answer, read as it passes
STREAM_ABOVE = 256 * 1024


class Guard(Protocol):
    """A check that refuses a request outright before the gate decides it (another protocol,
    names that disagree with the destination), run by the gate's own hooks in order."""

    def request(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        """None when the request may go on to the gate; else the coroutine that refuses it."""

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """Look at the answer before anything else reads it (and kill the flow if it must)."""


class Gate:
    """Decides every request against the rules and writes it to the log around forwarding."""

    def __init__(
        self,
        log: Log,
        ruleset: Ruleset,
        *,
        agent: str,
        bodies: records.BodyPolicy,
        upstreams: dict[ProxyMode, str] | None = None,
        dedup: DedupPolicy | None = None,
        reads_pass_unlogged: bool = False,
        stream_above: int = uploads.DEFAULT_ABOVE,
        agent_uids: dict[int, str] | None = None,
    ):
        self.agent = agent
        self.stream_above = stream_above  # request bodies past this stream upstream unread
        self.upstreams = upstreams or {}
        self.admission = Admission(
            log,
            ruleset,
            bodies=bodies,
            policy=dedup or DedupPolicy(),
            reads_pass_unlogged=reads_pass_unlogged,
        )
        self.calls = ToolCalls(self.admission)
        self.discard = Discard()  # where a refused upload's body goes instead of into memory
        self.egress = Egress(lambda: self.ruleset, discard=self.discard)
        # Who sent each request (its CONNECT's credentials kept per connection: a child addon).
        self.identities = Identities(log, self.admission, self.upstreams, agent=agent, by_uid=agent_uids)
        # Registered with the gate as its child addon: mitmproxy runs a child's hooks right after
        # its parent's, so every connection the gate lets open is pinned to a checked address.
        self.addons = [self.egress, self.identities]
        self.evidence = Evidence()  # which servers have shown they are MCP
        # Run from the gate's hooks rather than as addons of their own: every addon hook costs
        # each request a dispatch, and the guards must run before the gate anyway.
        self.guards: Sequence[Guard] = ()

    def guard_with(self, *guards: Guard) -> None:
        """Run `guards`, in order, before the gate decides each request."""
        self.guards = guards

    @property
    def ruleset(self) -> Ruleset:
        """The rules in force."""
        return self.admission.ruleset

    def use_rules(self, ruleset: Ruleset) -> None:
        """Decide from now on with `ruleset`."""
        self.admission.use_rules(ruleset)

    def triage(self, action: Action) -> Triage:
        """What a request is and how the rules decide it (the path `rules explain` takes too)."""
        return triage(action, self.ruleset, evidence=self.evidence, catalog=self.calls.catalog)

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Decide a request whose body must stream (proxy/plane/uploads.py) on its headers, and
        only once its intent is written let the stream start: nothing goes upstream before."""
        upload = uploads.upload_of(flow.request, self.stream_above)
        if upload is None or flow.response or flow.error or not flow.live:
            return
        await self._decide(flow, upload)
        if flow.error:
            return
        if flow.response:
            # Refused: mitmproxy would read the whole body before answering. It streams into
            # a loopback endpoint that drops it and answers with the refusal instead.
            await self.discard.redirect(flow)
            return
        try:
            if (rechecking := self.egress.request(flow)) is not None:
                await rechecking  # its open connections checked now: its `request` hook is too late
            meter = uploads.stream_through(flow.request)
            tracking: Tracking | None = flow.metadata.get(TRACK)
            if tracking is not None:
                tracking.upload = meter
        except Exception:
            logger.exception("could not stream %s %s", flow.request.method, flow.request.pretty_url)
            flow.request.stream = False
            _fail_tracked(self.admission, flow, "airlock could not stream this request")
            flow.response = answers.internal_error(
                "airlock could not stream this request; it was not forwarded"
            )

    async def request(self, flow: http.HTTPFlow) -> None:
        """Decide and log a request before it may go upstream; on any failure, refuse it."""
        if flow.request.stream:
            return  # decided at its headers, and streamed upstream since
        await self._decide(flow)

    async def _decide(self, flow: http.HTTPFlow, upload: uploads.Upload | None = None) -> None:
        """Decide and log a request, whole or (`upload`) without its streaming body."""
        if flow.response or flow.error or not flow.live:
            return
        identity = await self.identities.request(flow)
        if identity is None:
            return  # its credentials prove nothing: refused (407) and logged
        for guard in self.guards:
            if (refusing := guard.request(flow)) is not None:
                await refusing
            if flow.response or flow.error:
                return
        try:
            upstream = self.upstreams.get(flow.client_conn.proxy_mode)
            if isinstance(flow.client_conn.proxy_mode, TransparentMode):
                _name_by_host_header(flow)
            action = identified(classify(flow, agent=identity.name, upstream=upstream), identity)
            if upload is not None:
                action = uploads.unseen(action, upload, self.stream_above)
            flow.request.headers.pop(AGENT_HEADER, None)
            if upstream is None:
                action = await self.egress.resolved(action)  # egress checks the addresses too
            read = self.triage(action)
            if read.route is Route.MCP:
                await self._mcp(flow, read)
                return
            if read.route is Route.MALFORMED:
                answer = await self.admission.refuse(read.action, read.decision, 400)
                error = mcp.rpc_error(None, mcp.INVALID_REQUEST, f"{answer.decision.message} (airlock)")
                flow.response = json_answer([error], batch=False, status=400)
                return
            keep = self.admission.policy.reply_limit
            admitted = await self.admission.admit(read.action, read.decision, keep=keep)
            if isinstance(admitted, Answer):
                flow.response = _http_answer(admitted, read.action)
                return
            flow.metadata[TRACK] = admitted
            if read.introduction is not None:
                flow.metadata[INTRODUCTION] = read.introduction
        except Exception:
            # mitmproxy forwards a flow whose hook raised: never let that happen unlogged.
            logger.exception("could not decide %s %s", flow.request.method, flow.request.pretty_url)
            _fail_tracked(self.admission, flow, "airlock could not decide this request")
            flow.response = answers.internal_error(
                "airlock could not decide or log this request; it was not forwarded"
            )

    async def _mcp(self, flow: http.HTTPFlow, read: Triage) -> None:
        """Gate a POST of JSON-RPC messages to a server shown to be MCP."""
        assert read.messages is not None
        action = read.action
        url = flow.request.url
        legacy = self.calls.is_session(url)
        exchange = Exchange(url if legacy else f"flow:{flow.id}", server_of(action), action, not legacy)
        answers = await self.calls.send(
            read.messages, action, channel=exchange.channel, server=exchange.server, readings=read.readings
        )
        if answers is None:
            flow.metadata[MCP] = exchange
        elif legacy and answers:
            # Legacy SSE clients read answers on their stream only: the server answers pings
            # in place of the refused requests, and the stream carries the real answers.
            flow.request.content = self.calls.stand_in(exchange.channel, answers)
        else:
            flow.response = json_answer(answers, batch=(action.body or b"").lstrip()[:1] == b"[")

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """Stream large or open-ended response bodies through a meter instead of buffering them;
        read MCP event streams on the way. Any failure here still writes an outcome."""
        with self._failure_recorded(flow, "the response headers"):
            self._responseheaders(flow)

    def _responseheaders(self, flow: http.HTTPFlow) -> None:
        for guard in self.guards:
            guard.responseheaders(flow)
        if flow.response is None or flow.error:
            return
        tracking = flow.metadata.get(TRACK)
        exchange: Exchange | None = flow.metadata.get(MCP)
        introduction: Introduction | None = flow.metadata.get(INTRODUCTION)
        session = flow.response.headers.get(SESSION_HEADER)
        if exchange is not None and session:
            self.evidence.session(exchange.action, session)  # a server shown to be MCP issued it
        if tracking is not None and tracking.model_call is not None:
            self._read_answer(flow, tracking, tracking.model_call.inference)
            return
        if "text/event-stream" in flow.response.headers.get("content-type", ""):
            if exchange is not None or tracking is not None:
                flow.response.stream = EventStream(
                    self.calls,
                    url=flow.request.url,
                    action=exchange.action if exchange else classify(flow, agent=self.agent),
                    channel=exchange.channel if exchange else None,
                    evidence=self.evidence,
                    introduction=(introduction, session) if introduction is not None else None,
                    meter=tracking.meter if tracking else None,
                )
            return
        if tracking is None:
            return
        length = flow.response.headers.get("content-length", "")
        # Small bodies of known length pass whole: streaming them costs more than it saves.
        # A body that may prove a server is MCP is read whole (it is a small JSON answer).
        if introduction is None and (not length.isdigit() or int(length) > STREAM_ABOVE):
            flow.response.stream = tracking.meter

    def _read_answer(self, flow: http.HTTPFlow, tracking: Tracking, inference: Inference) -> None:
        """Read a model call's answer as it passes (streamed unless small and of known length)."""
        assert flow.response is not None
        tap = flow.metadata[ANSWER] = AnswerTap(inference, flow.response)
        length = flow.response.headers.get("content-length", "")
        streams = "text/event-stream" in flow.response.headers.get("content-type", "")
        if streams or not length.isdigit() or int(length) > STREAM_ABOVE:
            meter = tracking.meter
            flow.response.stream = lambda chunk: meter(tap(chunk))

    def response(self, flow: http.HTTPFlow) -> None:
        """Write the outcome once the whole response has passed; any failure reading the
        response still writes one (an error outcome naming the failure)."""
        with self._failure_recorded(flow, "the response"):
            self._response(flow)

    def _response(self, flow: http.HTTPFlow) -> None:
        introduction: Introduction | None = flow.metadata.pop(INTRODUCTION, None)
        if introduction is not None and flow.response is not None and not flow.response.stream:
            _introduce(introduction, flow.response)
        exchange: Exchange | None = flow.metadata.get(MCP)
        if exchange is not None and flow.response is not None:
            receive_json(self.calls, exchange, flow.response)
            flow.metadata.pop(MCP, None)
            if exchange.own_channel:
                status = flow.response.status_code
                self.calls.close(exchange.channel, f"the server answered {status} without a response")
        tracking: Tracking | None = flow.metadata.get(TRACK)
        if tracking is not None and flow.response is not None:
            self._record_response(flow, tracking)
            flow.metadata.pop(TRACK, None)

    @contextmanager
    def _failure_recorded(self, flow: http.HTTPFlow, what: str) -> Iterator[None]:
        """A hook after forwarding that fails still writes an outcome, naming what failed."""
        try:
            yield
        except Exception as e:
            logger.exception("could not read %s of %s", what, flow.request.pretty_url)
            self._record_failure(flow, f"airlock could not read {what}: {e!r}")

    def _record_failure(self, flow: http.HTTPFlow, error: str) -> None:
        """Write an error outcome for whatever this flow still owes: its action, and the calls
        it carried. The answer itself passes on as the server sent it."""
        flow.metadata.pop(INTRODUCTION, None)
        try:
            _end_stream(flow, error)
            exchange: Exchange | None = flow.metadata.pop(MCP, None)
            if exchange is not None and exchange.own_channel:
                self.calls.close(exchange.channel, error)
        except Exception:
            logger.exception("the calls of %s could not all be completed", flow.request.pretty_url)
        tracking: Tracking | None = flow.metadata.pop(TRACK, None)
        if tracking is not None:
            status = flow.response.status_code if flow.response is not None else None
            _finish_broken(self.admission, tracking, status, error)

    def _record_response(self, flow: http.HTTPFlow, tracking: Tracking, error: str | None = None) -> None:
        assert flow.response is not None
        meter = tracking.meter
        tap: AnswerTap | None = flow.metadata.pop(ANSWER, None)
        if not meter.size and flow.response.raw_content:
            meter(flow.response.raw_content)  # not streamed: the whole body is here
            if tap is not None and not tap.fed:
                tap(flow.response.raw_content)
        reply = None
        if tracking.keyed is not None and error is None:
            reply = replays.reply_of(flow.response, meter.kept)
        self.admission.finish(
            tracking,
            flow.response.status_code,
            headers=header_map(flow.response.headers),
            reply=reply,
            error=error,
            answer=None
            if tap is None
            else tap.answer(
                flow.response.status_code,
                request_bytes=len(flow.request.raw_content or b""),
                answer_bytes=meter.size,
            ),
        )

    def error(self, flow: http.HTTPFlow) -> None:
        """Write a failure outcome for a request that got no response (or whose response broke)."""
        message = flow.error.msg if flow.error else "unknown error"
        try:
            self._error(flow, message)
        except Exception as e:
            logger.exception("could not record the failure of %s", flow.request.pretty_url)
            self._record_failure(flow, f"{message}; airlock could not record it in full: {e!r}")

    def _error(self, flow: http.HTTPFlow, message: str) -> None:
        flow.metadata.pop(INTRODUCTION, None)
        _end_stream(flow, message)
        exchange: Exchange | None = flow.metadata.pop(MCP, None)
        if exchange is not None and exchange.own_channel:
            self.calls.close(exchange.channel, message)
        tracking: Tracking | None = flow.metadata.get(TRACK)
        if tracking is None:
            return
        if flow.response is not None:
            # The upstream answered, then the stream broke: the action did reach it.
            self._record_response(flow, tracking, error=message)
        else:
            if flow.server_conn.timestamp_tcp_setup is not None:
                message += " (after connecting to the upstream)"
            self.admission.fail(tracking, message)
        flow.metadata.pop(TRACK, None)


def _introduce(introduction: Introduction, response: http.Response) -> None:
    """Read a whole JSON answer for an InitializeResult that shows the server is MCP."""
    if "application/json" not in response.headers.get("content-type", ""):
        return
    try:
        body = json.loads(response.get_content(strict=False) or b"")
    except (ValueError, RecursionError):
        return  # not JSON (or too deep to read): shows nothing
    session = response.headers.get(SESSION_HEADER)
    for message in body if isinstance(body, list) else [body]:
        introduction.answered(message, session)


def _end_stream(flow: http.HTTPFlow, error: str) -> None:
    """An event stream that broke off: the calls still due on its channel get no answer."""
    stream = flow.response.stream if flow.response is not None else None
    if isinstance(stream, EventStream):  # not a Meter, nor a plain pass-through
        stream.end(error)


def _finish_broken(admission: Admission, tracking: Tracking, status: int | None, error: str) -> None:
    """The outcome of an action whose response could not be read: as answered if it was, else
    as failed; if even that cannot be written, the failure is said in the process log."""
    try:
        if status is not None:
            admission.finish(tracking, status, headers={}, error=error)
            return
    except Exception:
        logger.exception("the outcome of an action could not be written as answered")
    try:
        admission.fail(tracking, error)
    except Exception:
        logger.exception("the outcome of an action was not written")


def _fail_tracked(admission: Admission, flow: http.HTTPFlow, error: str) -> None:
    """A request refused after its intent was written: its action failed without going out."""
    tracking: Tracking | None = flow.metadata.pop(TRACK, None)
    if tracking is not None:
        _finish_broken(admission, tracking, None, f"{error}; it was not forwarded")


def _name_by_host_header(flow: http.HTTPFlow) -> None:
    """A redirected connection names only an address: decide the request by the host it names
    (its Host header), and connect to that host, not to the address the client picked."""
    try:
        host, _ = url.parse_authority(flow.request.host_header or "", check=True)
    except ValueError:
        return  # no usable Host header: the bare address is the destination
    flow.request.data.host = host


def _http_answer(answer: Answer, action: Action) -> http.Response:
    """An Answer as the HTTP response the client gets."""
    if answer.reply is not None and answer.replay_of is not None:
        replayed = replays.replay(answer.reply, answer.replay_of)
        if replayed is not None:
            return replayed
        decision = Decision(
            Verdict.DENY,
            answer.decision.rule,
            f"action {answer.replay_of} already took effect, and its response cannot be replayed "
            "over HTTP; do not retry",
            "idempotency_key_completed",
        )
        return answers.refusal(decision, answer.action_id, 409, action=action)
    return answers.refusal(answer.decision, answer.action_id, answer.status, answer.headers, action=action)

"""The proxy process: mitmproxy's data plane with the gate, and the control API, in one loop."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import TYPE_CHECKING

from aiohttp import web
from mitmproxy import master, options
from mitmproxy.addons import (
    core,
    disable_h2c,
    next_layer,
    proxyserver,
    tlsconfig,
    update_alt_svc,
)
from mitmproxy.proxy.mode_specs import ProxyMode

from proxy.core.recheck import recheck_in_doubt
from proxy.core.reload import RulesReloader
from proxy.errors import StartupError
from proxy.ops.anchor import anchor_for
from proxy.ops.checkpoints import Cadence, Checkpoints, signer_for
from proxy.ops.config import Address, RunConfig
from proxy.ops.control import METRICS, make_app
from proxy.ops.datadir import DataDir
from proxy.ops.keysweep import schedule_sweep
from proxy.ops.logroom import CHECK_SECONDS, NEARLY_FULL, LogRoom, full_at_start
from proxy.ops.metrics import Metrics
from proxy.ops.retention import RUN_SECONDS as RETAIN_SECONDS
from proxy.ops.retention import Retainer, shipped_floor
from proxy.ops.upkeep import Upkeep
from rules import Ruleset
from store import Log, Retention, StoreFull

from .basepaths import BasePaths
from .ca import ensure_ca, install_ca
from .clients import Clients
from .fronting import Fronting
from .gate import Gate
from .tunnels import Tunnels
from .upgrades import Upgrades
from .websocket import WebSockets

if TYPE_CHECKING:
    from proxy.ops.shipping import Shipper

logger = logging.getLogger("airlock")


def modes(cfg: RunConfig) -> tuple[list[str], dict[ProxyMode, str]]:
    """mitmproxy mode specs for the forward listener and every named upstream."""
    specs = [f"regular@{cfg.listen}"]
    if cfg.transparent is not None:
        specs.append(f"transparent@{cfg.transparent}")
    named: dict[ProxyMode, str] = {}
    for up in cfg.upstreams:
        spec = f"reverse:{up.origin}@{Address(cfg.listen.host, up.port)}"  # its path: BasePaths
        specs.append(spec)
        named[ProxyMode.parse(spec)] = up.name
    return specs, named


def data_plane() -> list[object]:
    """The mitmproxy addons Airlock needs, and no others.

    Not the default set: playback, map local/remote, body and header rewriting, sticky
    cookies, scripts and the onboarding app would each be a path that the gate does not see,
    and every hook of every flow would pay for them. mitmproxy's `block_global` is replaced
    by a rule per listener (proxy/plane/clients.py), and its DNS resolver is left out: DNS is never
    answered by the proxy (proxy/plane/tunnels.py refuses it).
    """
    return [
        core.Core(),
        Clients(),  # refuse public clients of a listener open on every interface
        disable_h2c.DisableH2C(),  # no cleartext HTTP/2 upgrades past the gate
        proxyserver.Proxyserver(),
        next_layer.NextLayer(),
        tlsconfig.TlsConfig(),
        update_alt_svc.UpdateAltSvc(),  # keep reverse-mode clients on the reverse port
    ]


def gated(gate: Gate, named: dict[ProxyMode, str], agent: str) -> list[object]:
    """Airlock's own addons, in the order their hooks must run: tunnels (what a connection may
    carry), WebSocket messages (whose addon reads the agent header before the gate removes it),
    and the gate with its guards (other protocols, mismatched names: refused before it decides)
    and its child addon, egress, that pins each connection it lets open."""
    admission = gate.admission
    gate.guard_with(Upgrades(admission, named, agent=agent), Fronting(admission, named, agent=agent))
    return [
        Tunnels(admission, lambda: gate.ruleset, gate.egress, agent=agent),
        WebSockets(admission, named, gate.calls.catalog, agent=agent),
        gate,
    ]


def configure(opts: options.Options, cfg: RunConfig, data: DataDir, specs: list[str]) -> None:
    """Set the mitmproxy options Airlock runs with (after the addons that declare them loaded)."""
    opts.update(
        mode=specs,
        confdir=str(data.ca),
        # Connect upstream only once the gate has let a request through.
        connection_strategy="lazy",
        # After a 101 that is not a WebSocket, close instead of relaying bytes nobody reads.
        rawtcp=False,
        upstream_cert=False,
        ssl_verify_upstream_trusted_ca=str(cfg.upstream_ca) if cfg.upstream_ca else None,
    )


def build(cfg: RunConfig, data: DataDir, log: Log, ruleset: Ruleset) -> tuple[master.Master, Gate]:
    """The mitmproxy master `serve` runs: the data plane, then the gate and its company, and
    the options they run with. Listeners open when it runs."""
    specs, named = modes(cfg)
    m = master.Master(options.Options())
    m.addons.add(*data_plane())
    gate = Gate(
        log,
        ruleset,
        agent=cfg.agent,
        bodies=cfg.body_limit,
        upstreams=named,
        reads_pass_unlogged=cfg.reads_when_log_down == "pass",
        stream_above=cfg.stream_above,
        agent_uids=cfg.agent_uids,
    )
    m.addons.add(BasePaths.of(named, cfg.upstreams))  # first: every later hook sees the upstream's path
    m.addons.add(*gated(gate, named, cfg.agent))
    listeners = [cfg.control, cfg.listen, *([cfg.transparent] if cfg.transparent else [])]
    ports = [(cfg.listen.host, up.port) for up in cfg.upstreams]
    gate.egress.refuse_own([(a.host, a.port) for a in listeners] + ports)
    configure(m.options, cfg, data, specs)
    return m, gate


async def serve(cfg: RunConfig) -> None:
    """Run until SIGINT or SIGTERM; raise StartupError if anything cannot start."""
    data = DataDir(cfg.data)
    data.prepare()
    ruleset = Ruleset.load(cfg.rules)
    if cfg.ca is not None:
        install_ca(data.ca, cfg.ca)
    ensure_ca(data.ca)
    token = data.control_token(cfg.control_token)
    log = Log.open(data.log, max_size=cfg.log_max_size)
    try:
        log.start()
    except StoreFull as e:
        log.close()
        raise StartupError(full_at_start(log)) from e
    retainer = _retainer(cfg, data, log)
    if retainer is not None and log.usage().used_fraction >= NEARLY_FULL:
        # Make room before the first request rather than after it: a full log refuses them all.
        await asyncio.to_thread(retainer.run)
    if log.usage().used_fraction >= 1.0:  # over its limit (a smaller --log-max-size than before)
        log.close()
        raise StartupError(full_at_start(log, retained=retainer is not None))
    chores = upkeep(cfg, log)
    if retainer is not None:
        # A short retention is looked after more often (a quarter of it, at least every half second).
        every = min(RETAIN_SECONDS, max(cfg.retain / 4, 0.5)) if cfg.retain is not None else RETAIN_SECONDS
        chores.every("prune the log", every, retainer.run, first=0)
    try:
        m, gate = build(cfg, data, log, ruleset)
        chores.start()

        # Listeners first: the control API's /healthz answers only once the proxy does.
        # mitmproxy's own complaint about a busy port would repeat ours: keep it quiet here.
        mitm_log = logging.getLogger("mitmproxy")
        level = mitm_log.level
        mitm_log.setLevel(logging.CRITICAL)
        try:
            await _start_listeners(m, cfg)
        finally:
            mitm_log.setLevel(level)
        reloader = RulesReloader(cfg.rules, log, gate.use_rules, ruleset)
        try:
            await reloader.record("start")
        except StoreFull as e:
            raise StartupError(full_at_start(log)) from e
        app = make_app(log, token, reloader)
        gate.admission.decided = app[METRICS].decided
        gate.admission.used = app[METRICS].used
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        shipper = _shipper(cfg, log, app[METRICS])
        if retainer is not None:
            app[METRICS].watch_retention(retainer)
        checkpoints = _checkpoints(cfg, data, log, app[METRICS])
        try:
            site = web.TCPSite(runner, cfg.control.host, cfg.control.port)
            try:
                await site.start()
            except OSError as e:
                raise StartupError(
                    f"cannot listen on {cfg.control} for the control API: {e.strerror or e}; "
                    "pick another with --control"
                ) from e
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, m.shutdown)
            loop.add_signal_handler(signal.SIGHUP, reloader.trigger, "SIGHUP")
            tasks = [
                asyncio.create_task(
                    reloader.watch(cfg.rules_poll) if cfg.rules_poll > 0 else asyncio.Event().wait(),
                    name="rules watcher",
                ),
                asyncio.create_task(_recheck(log, cfg), name="verify in-doubt actions"),
                asyncio.create_task(
                    gate.admission.holds.keep_expiring(), name="end holds past their timeout"
                ),
            ]
            logger.info(
                "airlock: proxy on %s, control API on %s, data in %s, rules %s",
                cfg.listen,
                cfg.control,
                cfg.data,
                cfg.rules,
            )
            for up in cfg.upstreams:
                logger.info("airlock: upstream %s on port %d -> %s", up.name, up.port, up.url)
            try:
                await m.run()
            finally:
                for task in tasks:
                    task.cancel()
        finally:
            await runner.cleanup()
            if shipper is not None:
                await asyncio.to_thread(shipper.stop)
            await asyncio.to_thread(checkpoints.stop)  # before the log closes: it writes to it
    finally:
        chores.stop()  # before the log closes: a chore may be reading or writing it
        log.close()


def upkeep(cfg: RunConfig, log: Log) -> Upkeep:
    """The log's chores this process runs on the upkeep thread (proxy/ops/upkeep.py)."""
    chores = Upkeep()
    schedule_sweep(chores, log)
    room = LogRoom(log)
    room.check()  # at once: a log already nearly full is said at start
    chores.every("watch the log's room", CHECK_SECONDS, room.check)
    return chores


def _retainer(cfg: RunConfig, data: DataDir, log: Log) -> Retainer | None:
    """With --retain or --retain-size, retention: signed with the data dir's key, archiving to
    --archive, never past what the collector has yet to ship."""
    policy = Retention(max_age=cfg.retain, max_bytes=cfg.retain_size)
    if not policy.active:
        return None
    floor = None
    if cfg.otlp_endpoint is not None:
        from proxy.ops.shipping import CURSOR  # OpenTelemetry loads only when the log is shipped

        floor = shipped_floor(log, CURSOR)
    signer = signer_for(data)
    return Retainer(log, policy, archive=cfg.archive, sign=signer.sign, floor=floor or (lambda: None))


def _shipper(cfg: RunConfig, log: Log, metrics: Metrics) -> Shipper | None:
    """With --otlp-endpoint, the shipper of the log, started and watched by the metrics."""
    if cfg.otlp_endpoint is None:
        return None
    from proxy.ops.shipping import Shipper  # OpenTelemetry loads only when the log is shipped

    shipper = Shipper(log, cfg.otlp_endpoint)
    metrics.watch_shipping(shipper)
    shipper.start()
    return shipper


def _checkpoints(cfg: RunConfig, data: DataDir, log: Log, metrics: Metrics) -> Checkpoints:
    """The writer of signed checkpoints (off with --checkpoint-every 0 --checkpoint-interval 0),
    started, sending each to --checkpoint-to if given."""
    failed = metrics.checkpoint_send_failures.inc
    anchor = anchor_for(cfg.checkpoint_to, failed) if cfg.checkpoint_to else None
    checkpoints = Checkpoints(
        log, signer_for(data), Cadence(cfg.checkpoint_every, cfg.checkpoint_interval), anchor
    )
    checkpoints.start()
    return checkpoints


async def _recheck(log: Log, cfg: RunConfig) -> None:
    try:
        await recheck_in_doubt(log, cafile=cfg.upstream_ca)
    except Exception:
        logger.exception("airlock: verifying in-doubt actions failed; they stay in doubt")


LISTENER_FLAGS = {"regular": "--listen", "transparent": "--transparent", "reverse": "--upstream"}


async def _start_listeners(m: master.Master, cfg: RunConfig) -> None:
    proxyserver = m.addons.get("proxyserver")
    if await proxyserver.setup_servers():
        return
    for server in proxyserver.servers:
        if server.last_exception is not None:
            err = server.last_exception
            # mitmproxy's message repeats the address; the system's reason is the news.
            errno = err.errno if isinstance(err, OSError) else None
            reason = os.strerror(errno) if errno else str(err.__cause__ or err)
            flag = LISTENER_FLAGS.get(server.mode.type_name, "--listen")
            raise StartupError(
                f"cannot start {server.mode.description.lower()} on "
                f"{server.mode.listen_host(cfg.listen.host) or cfg.listen.host}:"
                f"{server.mode.listen_port()}: {reason}; pick another address or port with {flag}"
            )
    raise StartupError("the proxy listeners did not start; see the messages above")

"""`airlock run` (the proxy and its control API) and `airlock mcp` (an MCP server on stdio
behind the gate)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any

from proxy.core.records import BodyPolicy
from proxy.ops.config import (
    STREAM_ABOVE,
    ConfigError,
    RunConfig,
    parse_address,
    parse_age,
    parse_agent_uid,
    parse_body_limit,
    parse_count,
    parse_otlp_endpoint,
    parse_seconds,
    parse_server_name,
    parse_size,
    parse_upstream,
)
from proxy.ops.datadir import DataDir
from rules import Effect

from .args import (
    Commands,
    UserError,
    address_arg,
    agent_arg,
    command_line,
    data_arg,
    rules_arg,
    rules_poll_arg,
    typed,
)


def add(sub: Commands) -> None:
    """The commands that run Airlock: `run` and `mcp`."""
    run = sub.add_parser("run", help="run the proxy and the control API")
    data_arg(run)
    address_arg(run, "--listen", RunConfig.listen, "forward proxy address")
    address_arg(run, "--control", RunConfig.control, "control API address")
    rules_arg(run)
    run.add_argument(
        "--upstream",
        type=typed(parse_upstream),
        action="append",
        default=[],
        metavar="NAME=URL@PORT",
        help="serve URL in reverse mode on local PORT (repeatable). A path in URL is a base path: "
        "with tools=http://h:9000/mcp@9001, GET / on 9001 reaches /mcp (the URL as written) and "
        "GET /x reaches /mcp/x; rules and the log see the path the upstream receives",
    )
    agent_arg(
        run,
        "the agent of requests that carry no credentials (default anonymous; a session's proxy URL "
        "names its own, see `airlock session new`; a request's X-Airlock-Agent is only a claim)",
    )
    run.add_argument(
        "--agent-uid",
        dest="agent_uids",
        type=typed(parse_agent_uid),
        action="append",
        default=[],
        metavar="UID=NAME",
        help="under transparent capture, connections from user UID are agent NAME's (repeatable)",
    )
    run.add_argument(
        "--body-limit",
        type=typed(parse_body_limit),
        action=BodyLimits,
        default=BodyPolicy(),
        metavar="[EFFECT=]SIZE",
        help="request body bytes kept in the log, for every effect not named or for one effect "
        "(read, inference, write, destructive; repeatable); size and digest always kept "
        "(default 64KiB, read=0, inference=0)",
    )
    run.add_argument(
        "--keep-prompts",
        action=KeepPrompts,
        dest="body_limit",
        help="keep model calls' prompts and the arguments of the tool calls their answers propose "
        "in the log, redacted, as much as a write's body (by default only size and digest)",
    )
    run.add_argument(
        "--stream-above",
        type=typed(parse_size),
        default=STREAM_ABOVE,
        metavar="SIZE",
        help="request bodies larger than SIZE, or sent chunked, stream upstream in bounded memory, "
        "decided on their headers: rules that must read a body refuse them when they mutate "
        "(default 8MiB)",
    )
    run.add_argument(
        "--log-max-size",
        type=typed(parse_size),
        default=64 << 30,
        metavar="SIZE",
        help="largest the log may grow before requests get 503 (default 64GiB)",
    )
    run.add_argument(
        "--reads-when-log-down",
        choices=["refuse", "pass"],
        default="refuse",
        help="when the log cannot be written: refuse reads too (default; a read can carry data out, "
        "and the trail is the product), or let them pass unlogged",
    )
    rules_poll_arg(
        run, "how often to check the rule files for changes (default 1; 0: only SIGHUP and the API reload)"
    )
    run.add_argument(
        "--transparent",
        type=typed(parse_address),
        metavar="HOST:PORT",
        help="also accept connections redirected here by iptables (see `airlock capture`)",
    )
    run.add_argument(
        "--ca",
        type=Path,
        metavar="FILE",
        help="use this CA (PEM: private key and certificate) instead of minting one in the data dir",
    )
    run.add_argument(
        "--control-token",
        type=Path,
        metavar="FILE",
        help="read the control API token from FILE (default: DATA/control.token, created if missing)",
    )
    run.add_argument(
        "--upstream-ca",
        type=Path,
        action="append",
        default=[],
        metavar="FILE|DIR",
        help="a CA certificate (PEM) trusted for upstream TLS besides the public CAs, e.g. an internal "
        "CA; a directory: its *.pem, *.crt and *.cer files (repeatable: all are trusted together)",
    )
    run.add_argument(
        "--retain",
        type=typed(parse_age),
        metavar="AGE",
        help="prune closed actions older than AGE (e.g. 7d, 12h) in the background; actions in doubt, "
        "held or pending, and live idempotency keys, are kept (see docs/log.md)",
    )
    run.add_argument(
        "--retain-size",
        type=typed(parse_size),
        metavar="SIZE",
        help="prune the oldest closed actions while the log uses more than SIZE (e.g. 4GiB); "
        "below --log-max-size, so room is made before the log is full",
    )
    run.add_argument(
        "--archive",
        type=Path,
        metavar="DIR",
        help="write what retention prunes to DIR first, as gzip JSON lines with their chain hashes "
        "(`airlock verify --archive DIR` checks them)",
    )
    run.add_argument(
        "--otlp-endpoint",
        type=typed(parse_otlp_endpoint),
        metavar="URL",
        help="ship every entry of the log to this OpenTelemetry collector (OTLP/HTTP, e.g. "
        "http://127.0.0.1:4318; no path: /v1/logs), resuming where it stopped after a restart",
    )
    run.add_argument(
        "--checkpoint-every",
        type=typed(parse_count),
        default=RunConfig.checkpoint_every,
        metavar="N",
        help=f"write a signed checkpoint every N entries (default {RunConfig.checkpoint_every}; 0: off)",
    )
    run.add_argument(
        "--checkpoint-interval",
        type=typed(parse_seconds),
        default=RunConfig.checkpoint_interval,
        metavar="SECONDS",
        help="and at least this often when anything was written "
        f"(default {RunConfig.checkpoint_interval:g}; 0: by count only)",
    )
    run.add_argument(
        "--checkpoint-to",
        type=typed(checkpoint_target),
        metavar="URL|FILE",
        help="send each checkpoint off the host: POST it as JSON to URL, or append it as a line to "
        "FILE, kept where this host cannot rewrite it (`airlock verify --checkpoints FILE` checks it)",
    )
    run.set_defaults(func=cmd_run)

    mcp = sub.add_parser(
        "mcp", help="run an MCP server on stdio with airlock between it and the host (the host spawns this)"
    )
    data_arg(mcp)
    rules_arg(mcp)
    agent_arg(mcp, "agent name recorded on the server's actions")
    rules_poll_arg(mcp, "how often to check the rule files for changes (default 1; 0: never)")
    mcp.add_argument(
        "--name",
        type=typed(parse_server_name),
        help="the server's name: its actions' URL is stdio:NAME and rules match it as `path: /NAME` "
        "(default: the command's file name, e.g. npx)",
    )
    mcp.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ARGS", help="the MCP server to run")
    mcp.set_defaults(func=cmd_mcp)


def checkpoint_target(text: str) -> object:
    """--checkpoint-to URL|FILE, parsed by proxy.ops.anchor, which (with the HTTP client it sends
    checkpoints with) loads only when the flag is given."""
    from proxy.ops.anchor import parse_target

    return parse_target(text)


class BodyLimits(argparse.Action):
    """--body-limit, repeatable: each SIZE or EFFECT=SIZE changes the policy the flags before made."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        value: Any,
        option: str | None = None,
    ) -> None:
        effect, size = value
        policy: BodyPolicy = getattr(namespace, self.dest)
        setattr(namespace, self.dest, policy.with_limit(Effect(effect) if effect else None, size))


class KeepPrompts(argparse.Action):
    """--keep-prompts: model calls keep as much of their bodies as the policy's limit."""

    def __init__(self, option_strings: list[str], dest: str, **kw: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, **kw)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        value: Any,
        option: str | None = None,
    ) -> None:
        policy: BodyPolicy = getattr(namespace, self.dest)
        setattr(namespace, self.dest, policy.with_limit(Effect.INFERENCE, policy.limit))


def cmd_run(args: argparse.Namespace) -> int:
    """Run the proxy until interrupted."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("mitmproxy").setLevel(logging.WARNING)
    # Every flag of `run` whose name is a RunConfig field is that field.
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig) if hasattr(args, f.name)}
    cfg = RunConfig(
        **given
        | {
            "data": Path(args.data),
            "upstreams": tuple(args.upstream),
            "upstream_ca": None,
            "agent_uids": dict(args.agent_uids),
        }
    )
    ports = [cfg.listen.port, cfg.control.port, *(u.port for u in cfg.upstreams)]
    ports += [cfg.transparent.port] if cfg.transparent else []
    if len(set(ports)) != len(ports):
        raise UserError(f"ports must differ: --listen, --control, --transparent and --upstream use {ports}")
    if cfg.retain_size is not None and cfg.retain_size >= cfg.log_max_size:
        raise UserError(
            f"--retain-size ({cfg.retain_size} bytes) must be below --log-max-size ({cfg.log_max_size} "
            "bytes): retention makes room before the log is full"
        )
    if cfg.archive is not None and cfg.retain is None and cfg.retain_size is None:
        raise UserError("--archive keeps what retention prunes: give --retain AGE or --retain-size SIZE too")
    names = [u.name for u in cfg.upstreams]
    if len(set(names)) != len(names):
        again = sorted({n for n in names if names.count(n) > 1})
        raise UserError(f"--upstream names must differ (the log names upstreams by them): {', '.join(again)}")
    if args.upstream_ca:
        from proxy.ops.trust import write_bundle  # X.509 loads only for the flag that needs it

        data = DataDir(cfg.data)
        data.prepare()
        try:
            cfg = dataclasses.replace(cfg, upstream_ca=write_bundle(args.upstream_ca, data.upstream_ca))
        except ConfigError as e:
            raise UserError(str(e)) from e
    from proxy.plane.server import serve  # mitmproxy loads only for the command that runs it

    asyncio.run(serve(cfg))
    return 0


def cmd_mcp(args: argparse.Namespace) -> int:
    """Run an MCP server on stdio behind the gate; exit with its exit code."""
    cmd = command_line(args, "airlock mcp -- CMD ARGS...")
    # stdout is the protocol: everything airlock says goes to stderr.
    logging.basicConfig(level=logging.WARNING, format="airlock: %(message)s", stream=sys.stderr)
    from proxy.mcp.stdio import StdioConfig, serve_stdio

    cfg = StdioConfig(
        command=cmd,
        data=Path(args.data),
        rules=args.rules,
        agent=args.agent,
        rules_poll=args.rules_poll,
        name=args.name,
    )
    return asyncio.run(serve_stdio(cfg))

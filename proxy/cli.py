"""The `airlock` command: run the proxy, read and verify the log, resolve actions, exec agents."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from proxy.ops.config import (
    TRANSPARENT,
    Address,
    ConfigError,
    RunConfig,
    default_data,
    parse_address,
    parse_agent,
    parse_http_url,
    parse_port,
    parse_resolver,
    parse_seconds,
    parse_size,
    parse_uid,
    parse_upstream,
)
from proxy.ops.datadir import DataDir, DataDirError
from proxy.ops.trust import write_bundle
from proxy.routing.environ import agent_environment
from rules import RulesError, Ruleset, default_path
from store import Log, NoLog, State, StateError, StoreError, UnknownAction, parse_head

from .core import records
from .errors import CAFileError, StartupError
from .ops import logview


class UserError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, not a usage dump."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.set_defaults(command_parser=self)  # the innermost command's parser: its own wins

    def parse(self, args: Sequence[str] | None = None) -> argparse.Namespace:
        """Parse the command line `args`; arguments the command does not take are reported by
        that command."""
        given = sys.argv[1:] if args is None else list(args)
        if given and given[0].startswith("-") and given[0] not in ("-h", "--help"):
            flag = given[0].partition("=")[0]
            self.error(f"{flag} goes after the command: {self.prog} COMMAND {flag} ...")
        parsed, extra = self.parse_known_args(given)
        if extra:
            parsed.command_parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return parsed

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _typed(parse: Callable[[str], object]) -> Callable[[str], object]:
    def convert(text: str) -> object:
        try:
            return parse(text)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from e

    return convert


def _data_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        default=default_data(),
        metavar="DIR",
        help="data directory: log, CA, control token (default: $AIRLOCK_DATA or ./airlock-data)",
    )


def _address_arg(p: argparse.ArgumentParser, flag: str, default: Address, what: str) -> None:
    p.add_argument(
        flag,
        type=_typed(parse_address),
        default=default,
        metavar="HOST:PORT",
        help=f"{what} (default {default})",
    )


def _rules_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--rules",
        type=Path,
        default=default_path(),
        metavar="PATH",
        help="rule file or directory of *.yaml (default: the shipped rules/default.yaml)",
    )


def _agent_arg(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument(
        "--agent", type=_typed(parse_agent), default=os.environ.get("AIRLOCK_AGENT") or "agent", help=help
    )


def _rules_poll_arg(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--rules-poll", type=_typed(parse_seconds), default=1.0, metavar="SECONDS", help=help)


def _commands(parser: Parser, dest: str) -> argparse._SubParsersAction[Parser]:
    """The subcommands of `parser`; given none, it prints its usage and names them."""
    sub = parser.add_subparsers(dest=dest, parser_class=Parser, metavar="COMMAND")

    def missing(args: argparse.Namespace) -> int:
        parser.print_usage(sys.stderr)
        names = ", ".join(sub.choices)
        parser.exit(2, f"{parser.prog}: error: a command is needed: {names} (see {parser.prog} --help)\n")

    parser.set_defaults(func=missing)
    return sub


def build_parser() -> Parser:
    """The command line: one subcommand per task."""
    parser = Parser(prog="airlock", description="A gate between AI agents and what they act on.")
    sub = _commands(parser, "command")

    run = sub.add_parser("run", help="run the proxy and the control API")
    _data_arg(run)
    _address_arg(run, "--listen", RunConfig.listen, "forward proxy address")
    _address_arg(run, "--control", RunConfig.control, "control API address")
    _rules_arg(run)
    run.add_argument(
        "--upstream",
        type=_typed(parse_upstream),
        action="append",
        default=[],
        metavar="NAME=URL@PORT",
        help="serve URL in reverse mode on local PORT (repeatable). A path in URL is a base path: "
        "with tools=http://h:9000/mcp@9001, GET / on 9001 reaches /mcp (the URL as written) and "
        "GET /x reaches /mcp/x; rules and the log see the path the upstream receives",
    )
    _agent_arg(run, "agent name recorded on actions (a request may say X-Airlock-Agent)")
    run.add_argument(
        "--body-limit",
        type=_typed(parse_size),
        default=64 * 1024,
        metavar="SIZE",
        help="request body bytes kept in the log; digest always kept (default 64KiB)",
    )
    run.add_argument(
        "--log-max-size",
        type=_typed(parse_size),
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
    _rules_poll_arg(
        run, "how often to check the rule files for changes (default 1; 0: only SIGHUP and the API reload)"
    )
    run.add_argument(
        "--transparent",
        type=_typed(parse_address),
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
    run.set_defaults(func=cmd_run)

    log = sub.add_parser("log", help="list actions, newest last")
    _data_arg(log)
    log.add_argument("--json", action="store_true", help="one JSON object per line")
    log.add_argument("--follow", "-f", action="store_true", help="keep printing actions as they change")
    log.add_argument("--state", choices=[s.value for s in State], help="only actions in this state")
    log.set_defaults(func=cmd_log)

    show = sub.add_parser("show", help="one action with all its entries")
    _data_arg(show)
    show.add_argument("id", type=int, help="action id")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=cmd_show)

    verify = sub.add_parser(
        "verify", help="check the log's hash chain and every index against it; exit 1 if altered"
    )
    _data_arg(verify)
    verify.add_argument(
        "--expect",
        metavar="SEQ:HASH",
        help="a head printed by an earlier verify and kept elsewhere: fail if the log no longer holds it",
    )
    verify.set_defaults(func=cmd_verify)

    resolve = sub.add_parser("resolve", help="resolve an in_doubt action: record whether it took effect")
    _data_arg(resolve)
    resolve.add_argument("id", type=int, help="action id")
    how = resolve.add_mutually_exclusive_group(required=True)
    how.add_argument("--executed", action="store_true", help="it did take effect upstream")
    how.add_argument("--not-executed", action="store_true", help="it did not take effect upstream")
    resolve.add_argument("--note", default="", help="why you know")
    resolve.set_defaults(func=cmd_resolve)

    rules_cmd = sub.add_parser("rules", help="check rule files, or explain how they decide an action")
    rules_sub = _commands(rules_cmd, "rules_command")
    check = rules_sub.add_parser("check", help="validate rule files; exit 1 with file:line:col on error")
    check.add_argument("path", nargs="?", type=Path, default=default_path(), help="file or directory")
    check.set_defaults(func=cmd_rules_check)
    explain = rules_sub.add_parser("explain", help="show the action, every matching rule and the decision")
    explain.add_argument(
        "--rules", type=Path, default=default_path(), metavar="PATH", help="file or directory"
    )
    explain.add_argument("--method", help="HTTP method (default GET, or POST with --tool)")
    explain.add_argument(
        "--url",
        type=_typed(parse_http_url),
        required=True,
        help="full URL, e.g. https://api.example.com/v1/items",
    )
    explain.add_argument("--header", action="append", default=[], metavar="K:V", help="a header (repeatable)")
    explain.add_argument("--body", metavar="@FILE|TEXT", help="request body, or @FILE to read it")
    explain.add_argument("--tool", help="an MCP tool call: the tool's name")
    explain.add_argument("--args", metavar="JSON", help="an MCP tool call: its arguments")
    explain.add_argument(
        "--effect",
        choices=["read", "write", "destructive"],
        help="the effect the method (or with --tool, the server's annotations) would give",
    )
    explain.add_argument(
        "--mcp",
        action="store_true",
        help="the server has shown it is MCP (answered initialize) and issued any Mcp-Session-Id given: "
        "the body is read as MCP messages, as the proxy reads them then",
    )
    _agent_arg(explain, "agent name")
    explain.add_argument("--json", action="store_true", help="print JSON")
    explain.set_defaults(func=cmd_rules_explain)

    ca = sub.add_parser("ca", help="print the CA certificate path (creating the CA if needed)")
    _data_arg(ca)
    ca.set_defaults(func=cmd_ca)

    mcp = sub.add_parser(
        "mcp", help="run an MCP server on stdio with airlock between it and the host (the host spawns this)"
    )
    _data_arg(mcp)
    _rules_arg(mcp)
    _agent_arg(mcp, "agent name recorded on the server's actions")
    _rules_poll_arg(mcp, "how often to check the rule files for changes (default 1; 0: never)")
    mcp.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ARGS", help="the MCP server to run")
    mcp.set_defaults(func=cmd_mcp)

    ex = sub.add_parser("exec", help="run a command with its traffic routed through the proxy")
    _data_arg(ex)
    _address_arg(ex, "--listen", RunConfig.listen, "the proxy's address")
    ex.add_argument(
        "--isolate",
        action="store_true",
        help="run it as an unprivileged user in namespaces whose only way out is airlock's transparent "
        "listener, with airlock's files hidden (Linux, root); proxy variables are then not needed",
    )
    _address_arg(ex, "--transparent", TRANSPARENT, "with --isolate: the proxy's --transparent address")
    ex.add_argument(
        "--user",
        help="with --isolate: run the command as this unprivileged user (name or UID; default nobody; "
        "never root, nor a user who could change airlock's files)",
    )
    ex.add_argument(
        "--rules",
        type=Path,
        default=default_path(),
        metavar="PATH",
        help="with --isolate: the rule file or directory `airlock run` uses, hidden from the command "
        "(default: the shipped rules/default.yaml)",
    )
    ex.add_argument(
        "--hide",
        type=Path,
        action="append",
        default=[],
        metavar="PATH",
        help="with --isolate: another path of airlock's to hide from the command, e.g. the --ca or "
        "--control-token file of `airlock run` (repeatable; --data and --rules are always hidden)",
    )
    ex.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ARGS", help="command to run")
    ex.set_defaults(func=cmd_exec)

    cap = sub.add_parser(
        "capture",
        help="install iptables rules that send a user's TCP through --transparent (Linux, root)",
    )
    cap.add_argument(
        "--uid", type=_typed(parse_uid), required=True, help="the agent's user ID (not airlock's)"
    )
    cap.add_argument(
        "--port", type=_typed(parse_port), required=True, help="airlock's --transparent port on 127.0.0.1"
    )
    cap.add_argument(
        "--dns",
        type=_typed(parse_resolver),
        action="append",
        default=None,
        metavar="ADDRESS",
        help="a resolver the user may query on port 53 (repeatable; default: /etc/resolv.conf's)",
    )
    cap.add_argument("--remove", action="store_true", help="remove the rules instead")
    cap.set_defaults(func=cmd_capture)
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    """Run the proxy until interrupted."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("mitmproxy").setLevel(logging.WARNING)
    # Every flag of `run` whose name is a RunConfig field is that field.
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig) if hasattr(args, f.name)}
    cfg = RunConfig(
        **given | {"data": Path(args.data), "upstreams": tuple(args.upstream), "upstream_ca": None}
    )
    ports = [cfg.listen.port, cfg.control.port, *(u.port for u in cfg.upstreams)]
    ports += [cfg.transparent.port] if cfg.transparent else []
    if len(set(ports)) != len(ports):
        raise UserError(f"ports must differ: --listen, --control, --transparent and --upstream use {ports}")
    names = [u.name for u in cfg.upstreams]
    if len(set(names)) != len(names):
        again = sorted({n for n in names if names.count(n) > 1})
        raise UserError(f"--upstream names must differ (the log names upstreams by them): {', '.join(again)}")
    if args.upstream_ca:
        data = DataDir(cfg.data)
        data.prepare()
        try:
            cfg = dataclasses.replace(cfg, upstream_ca=write_bundle(args.upstream_ca, data.upstream_ca))
        except ConfigError as e:
            raise UserError(str(e)) from e
    from proxy.plane.server import serve  # mitmproxy loads only for the command that runs it

    asyncio.run(serve(cfg))
    return 0


def _open_log(args: argparse.Namespace) -> Log:
    data = DataDir(args.data)
    data.check()
    return Log.open(data.log, readonly=True)


def cmd_log(args: argparse.Namespace) -> int:
    """Print actions; with --follow, keep printing them as entries arrive."""
    log = _open_log(args)
    fmt = logview.as_json if args.json else logview.as_line
    last, _ = log.head()  # taken first, so nothing written while listing is missed
    for index in log.actions(args.state, whole=True):
        print(fmt(index), flush=False)
    sys.stdout.flush()
    if not args.follow:
        return 0
    try:
        while True:
            time.sleep(0.2)
            for entry in log.entries(last + 1):
                last = entry.seq
                if entry.action is None:
                    continue
                changed = log.action(entry.action)
                if changed is not None and (args.state is None or changed["state"] == args.state):
                    print(fmt(changed), flush=True)
    except KeyboardInterrupt:
        return 0


def cmd_show(args: argparse.Namespace) -> int:
    """Print one action and every entry about it."""
    log = _open_log(args)
    found = log.action(args.id, whole=True)
    if found is None:
        raise UserError(f"no action {args.id} in the log at {args.data}")
    index = found
    entries = [e for seq in index["entries"] if (e := log.entry(seq)) is not None]
    if args.json:
        print(json.dumps({"action": index, "entries": [e.as_dict() for e in entries]}, indent=2))
    else:
        print(logview.describe(index, entries))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Check the chain and every index against it; print the head verified, or exit 1 naming
    the first disagreement."""
    expect = None
    if args.expect is not None:
        try:
            expect = parse_head(args.expect)
        except ValueError as e:
            raise UserError(f"--expect {e}") from None
    verdict = _open_log(args).verify(expect)
    if verdict.ok:
        note = ""
        if verdict.unchecked:
            note = (
                f"; {verdict.unchecked} action(s) from before index checks "
                "(an older airlock wrote them: their summaries are not checked)"
            )
        print(f"ok: {verdict.checked} entries verified; head {verdict.head_seq}:{verdict.head_hash}{note}")
        return 0
    before = f" ({verdict.checked} entries before it verified)" if verdict.bad_seq is not None else ""
    print(f"altered: {verdict.reason}{before}")
    return 1


def cmd_resolve(args: argparse.Namespace) -> int:
    """Record an operator's resolution of an in_doubt action."""
    data = DataDir(args.data)
    data.check()
    if not (data.log / "data.mdb").exists():
        raise UserError(f"no log at {data.log}: nothing to resolve")
    log = Log.open(data.log)
    try:
        if log.action(args.id) is None:
            raise UserError(f"no action {args.id} in the log at {args.data}")
        log.start()
        who = os.environ.get("USER") or os.environ.get("LOGNAME") or "operator"
        record = records.resolution(args.id, executed=args.executed, note=args.note, by=who)
        try:
            entry = log.append_blocking(record)
        except (StateError, UnknownAction) as e:
            raise UserError(str(e)) from e
    finally:
        log.close()
    verdict = "executed" if args.executed else "not executed"
    print(f"action {args.id} resolved as {verdict} (entry {entry.seq})")
    return 0


def cmd_rules_check(args: argparse.Namespace) -> int:
    """Validate rule files; exit 1 naming file, line, column and field if they are not valid."""
    try:
        ruleset = Ruleset.load(args.path)
    except RulesError as e:
        print(f"invalid: {e}", file=sys.stderr)
        return 1
    files = ", ".join(str(p) for p in ruleset.sources)
    print(f"ok: {len(ruleset.rules)} rules in {files} (digest {ruleset.digest[:12]})")
    return 0


def cmd_rules_explain(args: argparse.Namespace) -> int:
    """Print how the proxy would read the request, every rule that matched, and the decision."""
    from proxy.plane.explain import ExplainError, body_argument, explain_request, header_arguments, render

    ruleset = Ruleset.load(args.rules)
    try:
        read = explain_request(
            ruleset,
            method=args.method,
            url=args.url,
            headers=header_arguments(args.header),
            body=body_argument(args.body),
            agent=args.agent,
            tool=args.tool,
            args=args.args,
            effect=args.effect,
            is_mcp=args.mcp,
        )
    except ExplainError as e:
        raise UserError(str(e)) from e
    print(render(read, ruleset, as_json=args.json))
    return 0


def cmd_ca(args: argparse.Namespace) -> int:
    """Print the CA certificate's path."""
    from proxy.plane.ca import ensure_ca

    data = DataDir(args.data)
    data.prepare()
    print(ensure_ca(data.ca))
    return 0


def _command(args: argparse.Namespace, usage: str) -> list[str]:
    cmd: list[str] = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise UserError(f"{args.command} needs a command: {usage}")
    return cmd


def cmd_mcp(args: argparse.Namespace) -> int:
    """Run an MCP server on stdio behind the gate; exit with its exit code."""
    cmd = _command(args, "airlock mcp -- CMD ARGS...")
    # stdout is the protocol: everything airlock says goes to stderr.
    logging.basicConfig(level=logging.WARNING, format="airlock: %(message)s", stream=sys.stderr)
    from proxy.mcp.stdio import StdioConfig, serve_stdio

    cfg = StdioConfig(
        command=cmd, data=Path(args.data), rules=args.rules, agent=args.agent, rules_poll=args.rules_poll
    )
    return asyncio.run(serve_stdio(cfg))


def cmd_capture(args: argparse.Namespace) -> int:
    """Install (or remove) the capture rules for one user."""
    from proxy.routing.capture import Capture, CaptureError, install, remove, resolvers

    capture = Capture(args.uid, args.port, tuple(args.dns if args.dns is not None else resolvers()))
    try:
        used = remove(capture) if args.remove else install(capture)
    except CaptureError as e:
        raise UserError(str(e)) from e
    done = "removed" if args.remove else f"installed: TCP of uid {args.uid} goes to 127.0.0.1:{args.port}"
    print(f"airlock capture: {done} ({', '.join(used)})")
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    """Replace this process with the command, its environment pointed at the proxy (or, with
    --isolate, run it in a namespace that can reach nothing but the proxy)."""
    cmd = _command(args, "airlock exec -- CMD ARGS...")
    from proxy.plane.ca import ensure_ca

    data = DataDir(args.data)
    data.prepare()
    cert = ensure_ca(data.ca)
    if args.isolate:
        from proxy.routing.isolate import IsolateError, Isolation, run_isolated

        private = (data.root.resolve(), args.rules.resolve(), *(p.resolve() for p in args.hide))
        isolation = Isolation(args.transparent, cert, private, args.user)
        try:
            return asyncio.run(run_isolated(cmd, os.environ, isolation))
        except IsolateError as e:
            raise UserError(str(e)) from e
    env = agent_environment(os.environ, f"http://{args.listen}", cert)
    try:
        os.execvpe(cmd[0], cmd, env)
    except FileNotFoundError:
        print(f"airlock exec: command not found: {cmd[0]}", file=sys.stderr)
        return 127
    except PermissionError:
        print(f"airlock exec: permission denied: {cmd[0]}", file=sys.stderr)
        return 126


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `airlock` command."""
    args = build_parser().parse(argv)
    try:
        return int(args.func(args))
    except (UserError, RulesError, DataDirError, StartupError, NoLog, StoreError, CAFileError) as e:
        command = " ".join(filter(None, [args.command, getattr(args, "rules_command", None)]))
        print(f"airlock {command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

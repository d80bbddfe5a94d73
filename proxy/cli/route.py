"""Routing an agent through Airlock: `exec` (proxy variables and CA trust, or isolation),
`capture` (iptables for one user), and `ca` (the CA clients trust)."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from proxy.ops.config import (
    TRANSPARENT,
    Address,
    RunConfig,
    parse_agent,
    parse_port,
    parse_resolver,
    parse_uid,
)
from proxy.ops.datadir import DataDir
from proxy.routing.environ import agent_environment
from rules import default_path

from .args import Commands, UserError, address_arg, command_line, data_arg, typed


def add(sub: Commands) -> None:
    """`exec`, `capture` and `ca`."""
    ex = sub.add_parser("exec", help="run a command with its traffic routed through the running proxy")
    data_arg(ex)
    address_arg(ex, "--listen", RunConfig.listen, "the proxy's address")
    ex.add_argument(
        "--isolate",
        action="store_true",
        help="run it as an unprivileged user in namespaces whose only way out is airlock's transparent "
        "listener, with airlock's files hidden (Linux, root); proxy variables are then not needed",
    )
    address_arg(ex, "--transparent", TRANSPARENT, "with --isolate: the proxy's --transparent address")
    ex.add_argument(
        "--agent",
        type=typed(parse_agent),
        default=None,
        metavar="NAME",
        help="start a session for agent NAME (fencing its older ones), put its credentials in the proxy "
        "variables, and end it when the command exits (default: no session; the proxy's --agent)",
    )
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
        "--uid", type=typed(parse_uid), required=True, help="the agent's user ID (not airlock's)"
    )
    cap.add_argument(
        "--port", type=typed(parse_port), required=True, help="airlock's --transparent port on 127.0.0.1"
    )
    cap.add_argument(
        "--dns",
        type=typed(parse_resolver),
        action="append",
        default=None,
        metavar="ADDRESS",
        help="a resolver the user may query on port 53 (repeatable; default: /etc/resolv.conf's)",
    )
    cap.add_argument("--remove", action="store_true", help="remove the rules instead")
    cap.set_defaults(func=cmd_capture)
    ca = sub.add_parser("ca", help="print the CA certificate path (creating the CA if needed)")
    data_arg(ca)
    ca.set_defaults(func=cmd_ca)


def cmd_exec(args: argparse.Namespace) -> int:
    """Replace this process with the command, its environment pointed at the proxy (or, with
    --isolate, run it in a namespace that can reach nothing but the proxy). The proxy must be
    running: exec trusts its CA (from its data dir) and checks it is listening."""
    cmd = command_line(args, "airlock exec -- CMD ARGS...")
    from proxy.plane.ca import cert_path

    data = DataDir(args.data)
    data.check()  # read only: the data dir is the running proxy's to create and tighten
    cert = cert_path(data.ca).resolve()  # absolute: the command may change directory
    if not cert.is_file():
        raise UserError(
            f"no proxy CA in {data.ca.resolve()}: exec trusts the CA of the `airlock run` that uses this "
            "--data; start it first, or give exec that proxy's --data"
        )
    listener = args.transparent if args.isolate else args.listen
    if not listening(listener):
        flag = "--transparent" if args.isolate else "--listen"
        raise UserError(
            f"no proxy is listening on {listener}: start `airlock run` first, or give exec its {flag} address"
        )
    if args.isolate and args.agent is not None:
        raise UserError(
            "--agent gives credentials in proxy variables, which --isolate does not use: name the isolated "
            "command's agent with `airlock run --agent`, or run it without --isolate"
        )
    if args.isolate:
        from proxy.routing.isolate import IsolateError, Isolation, run_isolated

        private = (data.root.resolve(), args.rules.resolve(), *(p.resolve() for p in args.hide))
        isolation = Isolation(args.transparent, cert, private, args.user)
        try:
            return asyncio.run(run_isolated(cmd, os.environ, isolation))
        except IsolateError as e:
            raise UserError(str(e)) from e
    if args.agent is not None:
        return run_as_session(cmd, args, cert)
    env = agent_environment(os.environ, f"http://{args.listen}", cert)
    try:
        os.execvpe(cmd[0], cmd, env)
    except FileNotFoundError:
        print(f"airlock exec: command not found: {cmd[0]}", file=sys.stderr)
        return 127
    except PermissionError:
        print(f"airlock exec: permission denied: {cmd[0]}", file=sys.stderr)
        return 126


def run_as_session(cmd: list[str], args: argparse.Namespace, cert: Path) -> int:
    """Run the command with a new session's credentials in its proxy variables; end the session
    when it exits, whatever way it exits. Signals this process gets are passed on to it."""
    from proxy.core import sessions
    from proxy.core.credentials import proxy_url

    from .args import writing

    start = sessions.start(args.agent)
    with writing(args.data, missing="start `airlock run` with this --data first") as log:
        log.append_blocking(start.record)
        session = start.minted(log).session
    try:
        url = proxy_url(args.agent, start.token, args.listen.host, args.listen.port)
        env = agent_environment(os.environ, url, cert)
        try:
            child = subprocess.Popen(cmd, env=env)
        except FileNotFoundError:
            print(f"airlock exec: command not found: {cmd[0]}", file=sys.stderr)
            return 127
        except PermissionError:
            print(f"airlock exec: permission denied: {cmd[0]}", file=sys.stderr)
            return 126
        passed = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
        previous = {s: signal.signal(s, lambda n, _f: child.send_signal(n)) for s in passed}
        try:
            code = child.wait()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        return 128 - code if code < 0 else code
    finally:
        with writing(args.data, missing="its session could not be ended") as log:
            log.append_blocking(sessions.ended(session.id))


def listening(address: Address) -> bool:
    """True when something accepts TCP connections at `address` (a wildcard means this host)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(address.host, address.host)
    try:
        with socket.create_connection((host, address.port), timeout=2):
            return True
    except OSError:
        return False


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


def cmd_ca(args: argparse.Namespace) -> int:
    """Print the CA certificate's path."""
    from proxy.plane.ca import ensure_ca

    data = DataDir(args.data)
    data.prepare()
    print(ensure_ca(data.ca))
    return 0

"""Agents' sessions from the command line: `session new`, `session list`, `session end` and
`takeover`. Each writes to the log of the data dir, as `approve` does; the running proxy checks
credentials against the same log."""

from __future__ import annotations

import argparse
import json
import time

from proxy.core import sessions
from proxy.core.credentials import proxy_url
from proxy.ops.config import RunConfig, parse_age, parse_agent
from store import when

from .args import Commands, UserError, address_arg, commands, data_arg, operator, typed, writing
from .log import open_log


def add(sub: Commands) -> None:
    """`session` (new, list, end) and `takeover`."""
    group = sub.add_parser("session", help="start, list and end agents' sessions (their proxy credentials)")
    which = commands(group, "session_command")

    new = which.add_parser(
        "new",
        help="start a session for an agent: print a proxy URL with its credentials, then the session id "
        "(the name's older sessions are fenced)",
    )
    data_arg(new)
    address_arg(new, "--listen", RunConfig.listen, "the proxy's address, for the URL")
    new.add_argument("name", type=typed(parse_agent), help="the agent's name")
    new.add_argument(
        "--ttl",
        type=typed(parse_age),
        default=None,
        metavar="DURATION",
        help="expire after this long (e.g. 90s, 8h, 7d)",
    )
    new.set_defaults(func=cmd_new)

    listing = which.add_parser("list", help="list sessions: id, agent, epoch, and whether each is live")
    data_arg(listing)
    listing.add_argument("name", nargs="?", default=None, help="only this agent's sessions")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(func=cmd_list)

    end = which.add_parser("end", help="end a session: its credentials stop working at once")
    data_arg(end)
    end.add_argument("id", help="the session's id (see `airlock session list`)")
    end.set_defaults(func=cmd_end)

    take = sub.add_parser(
        "takeover", help="fence every session of an agent (its epoch moves on): their requests are refused"
    )
    data_arg(take)
    take.add_argument("name", type=typed(parse_agent), help="the agent's name")
    take.add_argument("--by", default=None, help="who takes over (default: $USER)")
    take.set_defaults(func=cmd_takeover)


def cmd_new(args: argparse.Namespace) -> int:
    """Start a session; print its proxy URL and its id, one a line, and nothing else."""
    start = sessions.start(args.name, args.ttl)
    with writing(args.data, missing=None) as log:
        log.append_blocking(start.record)
        minted = start.minted(log)
    print(proxy_url(args.name, minted.token, args.listen.host, args.listen.port))
    print(minted.session.id)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """Print sessions, oldest first."""
    log = open_log(args)
    now = time.time()
    for info in log.sessions(args.name):
        current = info.current_epoch
        if args.json:
            print(json.dumps(sessions.as_json(info)))
            continue
        if info.ended is not None:
            state = f"ended {when(info.ended)}"
        elif info.expires is not None and info.expires <= now:
            state = f"expired {when(info.expires)}"
        elif info.epoch < current:
            state = f"fenced (epoch now {current})"
        else:
            state = "live" + (f" until {when(info.expires)}" if info.expires is not None else "")
        print(f"{info.id}  {info.agent}  epoch {info.epoch}  started {when(info.created)}  {state}")
    return 0


def cmd_end(args: argparse.Namespace) -> int:
    """End a session."""
    with writing(args.data, missing="no session to end") as log:
        info = log.session(args.id)
        if info is None:
            raise UserError(f"no session {args.id} (see `airlock session list`)")
        if info.ended is not None:
            raise UserError(f"session {args.id} ended already, at {when(info.ended)}")
        log.append_blocking(sessions.ended(args.id))
    print(f"session {args.id} of agent {info.agent} ended")
    return 0


def cmd_takeover(args: argparse.Namespace) -> int:
    """Move an agent's epoch on; print the sessions it fenced."""
    by = args.by or operator()
    with writing(args.data, missing=None) as log:
        before = sessions.live(log, args.name)
        log.append_blocking(sessions.takeover(args.name, by))
        epoch = log.epoch(args.name)
    fenced = [s for s in before if s.epoch < epoch]
    print(f"agent {args.name} taken over by {by}: epoch {epoch}")
    for s in fenced:
        print(f"fenced {s.id} (epoch {s.epoch})")
    if not fenced:
        print("no live session was fenced")
    return 0

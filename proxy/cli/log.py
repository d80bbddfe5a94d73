"""The log's commands: `log`, `show`, `verify`, and `resolve` for an action left in doubt."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from proxy.core import records
from proxy.ops import logview
from proxy.ops.datadir import DataDir
from proxy.ops.times import parse_time
from store import Log, Query, State, check_archive, parse_head

from . import key
from .args import Commands, UserError, data_arg, operator, writing

NEWEST = 20  # actions `airlock log` prints unless told otherwise
FOLLOW_TICK = 0.25  # seconds between reads of the head while following


def add(sub: Commands) -> None:
    """The commands that read the log, and `resolve`."""
    log = sub.add_parser("log", help="list the newest actions, newest last")
    data_arg(log)
    log.add_argument("--json", action="store_true", help="one JSON object per line")
    log.add_argument("--follow", "-f", action="store_true", help="keep printing actions as they change")
    how_many = log.add_mutually_exclusive_group()
    how_many.add_argument(
        "-n", type=int, default=NEWEST, metavar="N", help=f"the newest N actions (default {NEWEST})"
    )
    how_many.add_argument(
        "--all",
        action="store_true",
        help="every action, checked against the whole chain (reads the whole log)",
    )
    log.add_argument(
        "--since", metavar="TIME", help="only actions opened since TIME (ISO 8601, or an age: 2h, 7d)"
    )
    log.add_argument("--state", choices=[s.value for s in State], help="only actions in this state")
    log.add_argument("--agent", help="only actions of this agent")
    log.add_argument("--rule", help="only actions this rule decided")
    log.add_argument("--host", help="only actions to this host")
    log.set_defaults(func=cmd_log)

    show = sub.add_parser("show", help="one action with all its entries")
    data_arg(show)
    show.add_argument("id", type=int, help="action id")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=cmd_show)

    verify = sub.add_parser(
        "verify", help="check the log's hash chain and every index against it; exit 1 if altered"
    )
    data_arg(verify)
    verify.add_argument(
        "--archive",
        type=Path,
        metavar="DIR",
        help="also check the archive retention wrote to DIR: every segment, and that it joins the "
        "log where the log starts (on its own when there is no log at --data)",
    )
    verify.add_argument(
        "--expect",
        metavar="SEQ:HASH",
        help="a head printed by an earlier verify and kept elsewhere: fail if the log no longer holds it",
    )
    key.add_verify_flags(verify)
    verify.set_defaults(func=cmd_verify)

    resolve = sub.add_parser("resolve", help="resolve an in_doubt action: record whether it took effect")
    data_arg(resolve)
    resolve.add_argument("id", type=int, help="action id")
    how = resolve.add_mutually_exclusive_group(required=True)
    how.add_argument("--executed", action="store_true", help="it did take effect upstream")
    how.add_argument("--not-executed", action="store_true", help="it did not take effect upstream")
    resolve.add_argument("--note", default="", help="why you know")
    resolve.set_defaults(func=cmd_resolve)


def open_log(args: argparse.Namespace) -> Log:
    data = DataDir(args.data)
    data.check()
    return Log.open(data.log, readonly=True)


def cmd_log(args: argparse.Namespace) -> int:
    """Print the newest actions that match (or, with --all, every one); with --follow, keep
    printing them as entries arrive."""
    log = open_log(args)
    query = _query(args)
    fmt = logview.as_json if args.json else logview.as_line
    last, _ = log.head()  # taken first, so nothing written while listing is missed
    if args.all:
        fields = query.fields()
        for index in log.actions(args.state, whole=True):
            if _matches(index, query, fields):
                print(fmt(index), flush=False)
    else:
        for index in reversed(log.newest(query)):
            print(fmt(index), flush=False)
    sys.stdout.flush()
    if not args.follow:
        return 0
    with contextlib.suppress(KeyboardInterrupt):
        _follow(log, last, query, fmt)
    return 0


def _query(args: argparse.Namespace) -> Query:
    if not args.all and args.n < 1:
        raise UserError(f"-n {args.n}: give 1 or more (or --all for every action)")
    since = None
    if args.since is not None:
        try:
            since = parse_time(args.since)
        except ValueError as e:
            raise UserError(f"--since {e}") from None
    return Query(
        limit=None if args.all else args.n,
        since=since,
        state=args.state,
        agent=args.agent,
        rule=args.rule,
        host=args.host,
    )


def _matches(index: dict[str, Any], query: Query, fields: dict[str, str]) -> bool:
    if query.since is not None and index["ts"] < query.since:
        return False
    if query.state is not None and index.get("state") != query.state:
        return False
    return all(index.get(name) == value for name, value in fields.items())


def _follow(log: Log, last: int, query: Query, fmt: Callable[[dict[str, Any]], str]) -> None:
    """Print each action that changes after entry `last` and matches `query`. While nothing is
    written a tick reads the head and nothing else."""
    fields = query.fields()
    while True:
        time.sleep(FOLLOW_TICK)
        if log.head()[0] == last:
            continue
        for entry in log.entries(last + 1):
            last = entry.seq
            if entry.action is None:
                continue
            changed = log.action(entry.action)
            if changed is not None and _matches(changed, query, fields):
                print(fmt(changed), flush=True)


def cmd_show(args: argparse.Namespace) -> int:
    """Print one action and every entry about it, each checked where it sits in the chain."""
    log = open_log(args)
    found = log.action_entries(args.id)
    if found is None:
        kept = log.pruned()
        if 1 <= args.id < kept.first_action and not kept.keeps_action(args.id):
            raise UserError(
                f"action {args.id} was pruned by retention (the log at {args.data} keeps actions from "
                f"{kept.first_action} on); `airlock verify --archive DIR` checks the archive that holds it"
            )
        raise UserError(f"no action {args.id} in the log at {args.data}")
    index, entries = found
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
    if args.archive is not None and not (Path(args.data) / "log" / "data.mdb").exists():
        return _archive_alone(args)
    log = open_log(args)
    verdict = key.verified(args, log, expect)
    if verdict.ok and args.archive is not None:
        archived = check_archive(args.archive, log, key.given_key(args))
        if not archived.ok:
            print(f"altered: archive {args.archive}: {archived.reason}")
            return 1
        print(
            f"ok: archive {args.archive}: entries {archived.first}-{archived.last} in {archived.segments} "
            f"segment(s), joined to the log at entry {archived.last + 1}"
        )
    if verdict.ok:
        note = ""
        if verdict.unchecked:
            note = (
                f"; {verdict.unchecked} action(s) from before index checks "
                "(an older airlock wrote them: their summaries are not checked)"
            )
        if verdict.start > 1:
            note += f"; the log starts at entry {verdict.start} (retention pruned what came before" + (
                f", keeping {verdict.kept} open entries below it)" if verdict.kept else ")"
            )
        note += key.described(args, verdict)
        print(f"ok: {verdict.checked} entries verified; head {verdict.head_seq}:{verdict.head_hash}{note}")
        return 0
    before = f" ({verdict.checked} entries before it verified)" if verdict.bad_seq is not None else ""
    print(f"altered: {verdict.reason}{before}")
    return 1


def _archive_alone(args: argparse.Namespace) -> int:
    """`verify --archive DIR` with no log at --data: the archive on its own."""
    archived = check_archive(args.archive, None, key.given_key(args))
    if not archived.ok:
        print(f"altered: archive {args.archive}: {archived.reason}")
        return 1
    print(
        f"ok: archive {args.archive}: entries {archived.first}-{archived.last} in {archived.segments} "
        "segment(s) verified (no log at --data to join them to)"
    )
    return 0


def cmd_resolve(args: argparse.Namespace) -> int:
    """Record an operator's resolution of an in_doubt action."""
    with writing(args.data, missing="nothing to resolve") as log:
        if log.action(args.id) is None:
            raise UserError(f"no action {args.id} in the log at {args.data}")
        record = records.resolution(args.id, executed=args.executed, note=args.note, by=operator())
        entry = log.append_blocking(record)  # a StateError is the user's: main prints it
    verdict = "executed" if args.executed else "not executed"
    print(f"action {args.id} resolved as {verdict} (entry {entry.seq})")
    return 0

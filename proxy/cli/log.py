"""The log's commands: `log`, `show`, `verify`, and `resolve` for an action left in doubt."""

from __future__ import annotations

import argparse
import json
import sys
import time

from proxy.core import records
from proxy.ops import logview
from proxy.ops.datadir import DataDir
from store import Log, State, parse_head

from .args import Commands, UserError, data_arg, operator, writing


def add(sub: Commands) -> None:
    """The commands that read the log, and `resolve`."""
    log = sub.add_parser("log", help="list actions, newest last")
    data_arg(log)
    log.add_argument("--json", action="store_true", help="one JSON object per line")
    log.add_argument("--follow", "-f", action="store_true", help="keep printing actions as they change")
    log.add_argument("--state", choices=[s.value for s in State], help="only actions in this state")
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
        "--expect",
        metavar="SEQ:HASH",
        help="a head printed by an earlier verify and kept elsewhere: fail if the log no longer holds it",
    )
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
    """Print actions; with --follow, keep printing them as entries arrive."""
    log = open_log(args)
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
    log = open_log(args)
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
    verdict = open_log(args).verify(expect)
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
    with writing(args.data, missing="nothing to resolve") as log:
        if log.action(args.id) is None:
            raise UserError(f"no action {args.id} in the log at {args.data}")
        record = records.resolution(args.id, executed=args.executed, note=args.note, by=operator())
        entry = log.append_blocking(record)  # a StateError is the user's: main prints it
    verdict = "executed" if args.executed else "not executed"
    print(f"action {args.id} resolved as {verdict} (entry {entry.seq})")
    return 0

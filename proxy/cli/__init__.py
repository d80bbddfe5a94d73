"""The `airlock` command: run the proxy, read and verify the log, resolve actions, check and
explain rules, and route agents. One module per family of commands; each adds its own."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from proxy.errors import CAFileError, StartupError
from proxy.ops.datadir import DataDirError
from rules import RulesError
from store import NoLog, StoreError

from . import export, freeze, key, log, route, rules, run, sessions, votes
from .args import Parser, UserError, commands


def build_parser() -> Parser:
    """The command line: one subcommand per task."""
    parser = Parser(prog="airlock", description="A gate between AI agents and what they act on.")
    sub = commands(parser, "command")
    run.add(sub)
    log.add(sub)
    key.add(sub)
    export.add(sub)
    votes.add(sub)
    freeze.add(sub)
    rules.add(sub)
    route.add(sub)
    sessions.add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `airlock` command."""
    args = build_parser().parse(argv)
    try:
        return int(args.func(args))
    except (UserError, RulesError, DataDirError, StartupError, NoLog, StoreError, CAFileError) as e:
        command = " ".join(
            filter(
                None,
                [args.command, getattr(args, "rules_command", None), getattr(args, "session_command", None)],
            )
        )
        print(f"airlock {command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

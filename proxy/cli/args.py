"""What every command of the `airlock` command line shares: one-line errors, the flags several
commands take, and command groups that name their commands when given none."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from proxy.ops.config import Address, ConfigError, default_data, parse_address, parse_agent, parse_seconds
from proxy.ops.datadir import DataDir
from rules import default_path
from store import Log


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


def typed(parse: Callable[[str], object]) -> Callable[[str], object]:
    """An argparse type from a parser of the run configuration: its errors become argparse's."""

    def convert(text: str) -> object:
        try:
            return parse(text)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from e

    return convert


def data_arg(p: argparse.ArgumentParser) -> None:
    """--data DIR."""
    p.add_argument(
        "--data",
        default=default_data(),
        metavar="DIR",
        help="data directory: log, CA, control token (default: $AIRLOCK_DATA or ./airlock-data)",
    )


def address_arg(p: argparse.ArgumentParser, flag: str, default: Address, what: str) -> None:
    """A HOST:PORT flag."""
    p.add_argument(
        flag,
        type=typed(parse_address),
        default=default,
        metavar="HOST:PORT",
        help=f"{what} (default {default})",
    )


def rules_arg(p: argparse.ArgumentParser) -> None:
    """--rules PATH."""
    p.add_argument(
        "--rules",
        type=Path,
        default=default_path(),
        metavar="PATH",
        help="rule file or directory of *.yaml (default: the shipped rules/default.yaml)",
    )


def agent_arg(p: argparse.ArgumentParser, help: str) -> None:
    """--agent NAME."""
    p.add_argument(
        "--agent", type=typed(parse_agent), default=os.environ.get("AIRLOCK_AGENT") or "anonymous", help=help
    )


def rules_poll_arg(p: argparse.ArgumentParser, help: str) -> None:
    """--rules-poll SECONDS."""
    p.add_argument("--rules-poll", type=typed(parse_seconds), default=1.0, metavar="SECONDS", help=help)


def commands(parser: Parser, dest: str) -> Commands:
    """The subcommands of `parser`; given none, it prints its usage and names them."""
    sub = parser.add_subparsers(dest=dest, parser_class=Parser, metavar="COMMAND")

    def missing(args: argparse.Namespace) -> int:
        parser.print_usage(sys.stderr)
        names = ", ".join(sub.choices)
        parser.exit(2, f"{parser.prog}: error: a command is needed: {names} (see {parser.prog} --help)\n")

    parser.set_defaults(func=missing)
    return sub


type Commands = argparse._SubParsersAction[Parser]  # the subcommands of a command group


def command_line(args: argparse.Namespace, usage: str) -> list[str]:
    """The command after `--` that `airlock mcp` or `airlock exec` runs."""
    cmd: list[str] = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise UserError(f"{args.command} needs a command: {usage}")
    return cmd


@contextmanager
def writing(data_dir: str, *, missing: str | None) -> Iterator[Log]:
    """The log of `data_dir` with this process's writer started, closed when the block ends.
    `missing` says why an absent log is an error (None: create it, as the proxy would)."""
    data = DataDir(data_dir)
    if missing is None:
        data.prepare()
    else:
        data.check()
        if not (data.log / "data.mdb").exists():
            raise UserError(f"no log at {data.log}: {missing}")
    log = Log.open(data.log)
    try:
        log.start()
        yield log
    finally:
        log.close()


def operator() -> str:
    """The name the CLI records for whoever runs it: $USER (or $LOGNAME), else `operator`."""
    return os.environ.get("USER") or os.environ.get("LOGNAME") or "operator"

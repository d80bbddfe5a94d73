"""`airlock export`: the log's entries in a time window, to stdout, as JSON lines (hashes
included, so the chain can be checked elsewhere) or as OTLP/JSON log records."""

from __future__ import annotations

import argparse
import sys
import time

from proxy.ops import export
from proxy.ops.times import parse_time

from .args import Commands, UserError, data_arg
from .log import open_log


def add(sub: Commands) -> None:
    """The `export` command."""
    out = sub.add_parser("export", help="write the log's entries in a time window to stdout (jsonl or otlp)")
    data_arg(out)
    out.add_argument(
        "--since",
        metavar="T",
        help="from this time on: ISO 8601 (2026-11-30T14:00:00Z; no zone: UTC) or an age (2h, 7d)",
    )
    out.add_argument("--until", metavar="T", help="up to this time, included (same forms as --since)")
    out.add_argument(
        "--format",
        choices=sorted(export.FORMATS),
        default="jsonl",
        help="jsonl: each entry as `airlock show --json` prints it, with its hashes (default); "
        "otlp: OTLP/JSON, one ExportLogsServiceRequest a line, named as --otlp-endpoint ships them",
    )
    out.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    """Write the window's entries to stdout, oldest first."""
    now = time.time()
    since, until = (
        _moment(flag, text, now) for flag, text in (("--since", args.since), ("--until", args.until))
    )
    if since is not None and until is not None and since > until:
        raise UserError(f"--since {args.since} is after --until {args.until}: nothing is between them")
    log = open_log(args)
    write = export.FORMATS[args.format]
    write(export.between(log, since, until), sys.stdout.buffer)
    sys.stdout.buffer.flush()
    return 0


def _moment(flag: str, text: str | None, now: float) -> float | None:
    if text is None:
        return None
    try:
        return parse_time(text, now)
    except ValueError as e:
        raise UserError(f"{flag} {e}") from None

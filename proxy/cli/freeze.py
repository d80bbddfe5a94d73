"""The operator's stop button: `freeze` refuses every write and destructive action until `thaw`.

Both write to the log from this process, as `resolve` does; a running proxy or `airlock mcp` on
the same data dir refuses the next mutating action, as its log writer reads the freeze in the
same transaction as that action's intent.
"""

from __future__ import annotations

import argparse

from proxy.core import freeze
from store import Entry, FreezeState, Record

from .args import Commands, data_arg, operator, writing


def add(sub: Commands) -> None:
    """`freeze` and `thaw`."""
    stop = sub.add_parser(
        "freeze", help="refuse every write and destructive action (503 frozen) until `airlock thaw`"
    )
    data_arg(stop)
    stop.add_argument("--reason", default="", help="why: agents and the log are told")
    stop.set_defaults(func=cmd_freeze)

    go = sub.add_parser("thaw", help="lift a freeze: writes and destructive actions follow the rules again")
    data_arg(go)
    go.add_argument("--reason", default="", help="why it is safe again")
    go.set_defaults(func=cmd_thaw)


def _append(data: str, record: Record, missing: str | None) -> tuple[Entry, FreezeState | None]:
    """Write `record` durably; the entry and the freeze in force after it."""
    with writing(data, missing=missing) as log:
        return log.append_blocking(record), log.frozen()


def cmd_freeze(args: argparse.Namespace) -> int:
    """Freeze the log (creating it if the proxy has not run yet), as the user running this."""
    entry, state = _append(args.data, freeze.freeze(operator(), args.reason), None)
    assert state is not None and state.seq == entry.seq
    print(
        f"frozen: {freeze.describe(state)}; every write and destructive action is refused (503) "
        "until `airlock thaw`"
    )
    return 0


def cmd_thaw(args: argparse.Namespace) -> int:
    """Lift the freeze, as the user running this."""
    entry, _ = _append(args.data, freeze.thaw(operator(), args.reason), "it was never frozen")
    print(f"thawed by {entry.data['by']} (log entry {entry.seq}): actions follow the rules again")
    return 0

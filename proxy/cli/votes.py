"""Voting on held actions from the command line: `pending`, `approve` and `deny`. A vote is
written to the log from this process, as `resolve` is; the proxy waiting on the action sees it."""

from __future__ import annotations

import argparse
import json

from proxy.core import votes
from proxy.ops import logview

from .args import Commands, UserError, data_arg, operator, writing
from .log import open_log


def add(sub: Commands) -> None:
    """`pending`, `approve` and `deny`."""
    pending = sub.add_parser("pending", help="list the actions held for votes, with their votes so far")
    data_arg(pending)
    pending.add_argument("--json", action="store_true", help="one JSON object per line")
    pending.set_defaults(func=cmd_pending)
    for name, choice, what in (
        ("approve", votes.APPROVE, "approve a held action (enough approvals commit it: it runs)"),
        ("deny", votes.DENY, "deny a held action (one deny aborts it: it never runs)"),
    ):
        p = sub.add_parser(name, help=what)
        data_arg(p)
        p.add_argument("id", type=int, help="action id (see `airlock pending`)")
        p.add_argument("--reason", default="", help="why: logged with the vote, shown to the agent on a deny")
        p.add_argument("--voter", default=None, help="the voter's name (default: $USER)")
        p.set_defaults(func=cmd_vote, choice=choice)


def cmd_pending(args: argparse.Namespace) -> int:
    """Print the held actions, oldest first."""
    for held in votes.pending(open_log(args)):
        if args.json:
            print(logview.as_json(held))
        else:
            approved = ", ".join(held["approved_by"]) or "none"
            print(f"{logview.as_line(held)}  approved by: {approved}")
    return 0


def cmd_vote(args: argparse.Namespace) -> int:
    """Vote on a held action; say whether the vote decided it."""
    voter = args.voter or operator()
    with writing(args.data, missing="nothing is held") as log:
        try:
            cast = votes.cast(log, args.id, voter, args.choice, args.reason)
        except (votes.VoteRefused, ValueError) as e:
            raise UserError(str(e)) from e
    said = f"{voter} voted {args.choice} on action {args.id} (entry {cast.vote.seq})"
    if cast.decision is None:
        print(f"{said}; more votes are needed")
    else:
        decided = json.dumps(cast.decision.data.get("why"))
        print(f"{said}; decision: {cast.decision.data.get('decision')} ({decided[1:-1]})")
    return 0

"""`airlock rules check` and `airlock rules explain`: rule files validated, and a request
decided without sending it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from proxy.ops.config import parse_http_url
from rules import RulesError, Ruleset, default_path

from .args import Commands, UserError, agent_arg, commands, typed


def add(sub: Commands) -> None:
    """`rules` and its commands."""
    rules_cmd = sub.add_parser("rules", help="check rule files, or explain how they decide an action")
    rules_sub = commands(rules_cmd, "rules_command")
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
        type=typed(parse_http_url),
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
    agent_arg(explain, "agent name")
    explain.add_argument("--json", action="store_true", help="print JSON")
    explain.set_defaults(func=cmd_rules_explain)


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

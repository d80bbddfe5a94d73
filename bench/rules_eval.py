"""What deciding one action costs with 1,000 rules: `Ruleset.evaluate`, indexed vs two baselines.

Usage: ``.venv/bin/python bench/rules_eval.py [--repeats R] [--batch-ms MS]``

A 1,000-rule YAML file is written to a temporary directory and loaded with `Ruleset.load`, so
the real loader, schema validation and host index are used. The rules are meant to look like a
large deployment's:

  900 rules naming literal hosts   three per service, svc-0001.internal.example ... svc-0300
   60 rules with host globs        *.corp-00.example ... *.corp-59.example
   40 rules naming no host         method, path, effect, text, body and args JSON Schemas,
                                   headers, query, agent, tool, AWS, k8s, any/all/not

with deny, hold, log and allow verdicts mixed, and an egress allowlist of globs and hosts that
lets every host used here through. Four typical actions are decided: a POST with a small JSON
body to one of the services, a GET to a host no rule names, a DELETE that a deny rule matches,
and an MCP tool call.

Each action is decided three ways in the same run:

  indexed   the 1,000 rules as loaded: only the rules indexed under the action's host, plus
            every rule that names no literal host, are tried
  linear    the same 1,000 rules without the index: every rule's `matches(action)` is tried,
            then the same winner selection and egress check (`Ruleset.explain` unchanged)
  empty     no rules at all, the same egress allowlist: the floor of `evaluate`

Timing: `time.perf_counter_ns` around a batch of calls sized to take about `--batch-ms`; the
best of `--repeats` batches is kept, and the rulesets and actions take turns within each
repeat, so a burst of noise on a small shared machine does not favour one of them. The garbage
collector is off while timing, as `timeit` does. The project's target is under 100 µs per
action for 1,000 rules. This is a measurement, not a test: it exits 0 once it has measured,
whether the target is met or not.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rules import Action, Decision, Effect, Rule, Ruleset

TARGET_US = 100.0  # the project's goal for one `evaluate` with 1,000 rules
SERVICES = 300  # hosts named literally, three rules each: 900 rules
HOST_GLOB_RULES = 60
TOTAL_RULES = 1000
LOAD_REPEATS = 3

Spec = dict[str, Any]


# ---- the rule file ------------------------------------------------------------------------


def service(i: int) -> str:
    """The literal host of service number `i`."""
    return f"svc-{i:04d}.internal.example"


def service_rules(i: int) -> list[Spec]:
    """The three rules of one service: deletes, forced writes and report reads."""
    host = service(i)
    reads: Spec = {"host": host, "method": "GET", "path": {"regex": r"^/v1/reports/\d+$"}}
    if i % 4 == 0:
        reads["host"] = [host, f"svc-{i:04d}-canary.internal.example"]
    if i % 3 == 0:
        reads["headers"] = {"X-Env": "prod*"}
    return [
        {
            "id": f"svc-{i:04d}-no-deletes",
            "match": {"host": host, "method": "DELETE", "path": "/v1/*"},
            "action": "hold" if i % 5 == 0 else "deny",
            "message": f"Deleting from {host} is reserved for its owners.",
        },
        {
            "id": f"svc-{i:04d}-forced-writes",
            "match": {
                "host": host,
                "method": ["POST", "PUT", "PATCH"],
                "path": "/v1/items*",
                "body": {"type": "object", "properties": {"force": {"const": True}}, "required": ["force"]},
            },
            "action": "hold" if i % 2 else "deny",
        },
        {
            "id": f"svc-{i:04d}-report-reads",
            "match": reads,
            "action": "allow" if i % 7 == 0 else "log",
        },
    ]


def host_glob_rule(j: int) -> Spec:
    """One rule for every host of a corporate domain, four kinds in turn."""
    host = f"*.corp-{j:02d}.example"
    kinds: list[tuple[Spec, str]] = [
        ({"method": "DELETE"}, "deny"),
        ({"effect": "write", "path": "/api/*/admin*"}, "hold"),
        (
            {
                "method": ["PUT", "PATCH"],
                "body": {"properties": {"replicas": {"minimum": 51}}, "required": ["replicas"]},
            },
            "deny",
        ),
        ({"agent": "batch-*", "effect": ["write", "destructive"]}, "log"),
    ]
    match, verdict = kinds[j % len(kinds)]
    return {"id": f"corp-{j:02d}-{verdict}", "match": {"host": host, **match}, "action": verdict}


# Rules naming no host, as (match, verdict): two of each kind, as different teams would write them.
HOSTLESS: list[tuple[Spec, str]] = [
    ({"method": "DELETE", "path": "/admin/*"}, "deny"),
    ({"method": "DELETE", "path": "/internal/*"}, "deny"),
    ({"text": r"(?i)\bdrop\s+table\b"}, "deny"),
    ({"text": r"(?i)\btruncate\s+table\b"}, "deny"),
    (
        {
            "method": ["POST", "PUT", "PATCH"],
            "body": {"properties": {"force": {"const": True}}, "required": ["force"]},
        },
        "deny",
    ),
    (
        {
            "method": ["POST", "PUT"],
            "body": {"properties": {"skip_checks": {"const": True}}, "required": ["skip_checks"]},
        },
        "hold",
    ),
    ({"effect": "write", "headers": {"X-Env": "prod*"}}, "hold"),
    ({"effect": "write", "headers": {"X-Tenant": "acme-*"}}, "log"),
    ({"query": {"dry_run": "true"}}, "allow"),
    ({"query": {"preview": ["1", "true"]}}, "allow"),
    (
        {
            "protocol": "mcp",
            "tool": "send_email",
            "not": {"args": {"properties": {"to": {"pattern": r"@example\.com$"}}}},
        },
        "deny",
    ),
    (
        {
            "protocol": "mcp",
            "tool": "post_message",
            "not": {"args": {"properties": {"channel": {"pattern": "^#agents-"}}}},
        },
        "deny",
    ),
    (
        {
            "protocol": "mcp",
            "tool": "fs_*",
            "args": {"properties": {"path": {"pattern": "^/etc/"}}, "required": ["path"]},
        },
        "deny",
    ),
    (
        {
            "protocol": "mcp",
            "tool": "shell_*",
            "args": {"properties": {"command": {"pattern": r"\brm\s+-rf\b"}}},
        },
        "deny",
    ),
    ({"agent": "planner-*", "any": [{"effect": "write"}, {"effect": "destructive"}]}, "deny"),
    ({"agent": "reviewer-*", "any": [{"effect": "write"}, {"effect": "destructive"}]}, "deny"),
    ({"effect": ["write", "destructive"], "port": 8443, "not": {"path": {"regex": "^/healthz$"}}}, "log"),
    ({"effect": ["write", "destructive"], "port": 9443, "not": {"path": {"regex": "^/readyz$"}}}, "log"),
    ({"protocol": "aws", "service": "s3", "operation": "Delete*"}, "deny"),
    ({"protocol": "aws", "service": "dynamodb", "operation": "DeleteTable"}, "deny"),
    ({"protocol": "k8s", "method": "DELETE", "path": "/api/v1/namespaces/*"}, "hold"),
    ({"protocol": "k8s", "method": "DELETE", "path": "/apis/apps/v1/namespaces/*/deployments/*"}, "hold"),
    ({"path": {"regex": r"/secrets?/"}}, "log"),
    ({"path": {"regex": r"/\.env$"}}, "deny"),
    (
        {
            "all": [
                {"method": "POST"},
                {"path": "/v1/payments*"},
                {
                    "body": {
                        "properties": {"amount": {"type": "number", "minimum": 10000}},
                        "required": ["amount"],
                    }
                },
            ]
        },
        "hold",
    ),
    (
        {
            "all": [
                {"method": "POST"},
                {"path": "/v1/refunds*"},
                {
                    "body": {
                        "properties": {"amount": {"type": "number", "minimum": 1000}},
                        "required": ["amount"],
                    }
                },
            ]
        },
        "hold",
    ),
    ({"headers": {"Authorization": "Basic *"}}, "log"),
    ({"headers": {"User-Agent": "curl/*"}}, "log"),
    ({"effect": "write"}, "log"),
    ({"effect": "destructive"}, "log"),
    ({"any": [{"text": "BEGIN RSA PRIVATE KEY"}, {"text": "AKIA[0-9A-Z]{16}"}]}, "deny"),
    ({"any": [{"text": "ghp_[A-Za-z0-9]{36}"}, {"text": "xox[bap]-"}]}, "deny"),
    ({"agent": "ci-*", "method": ["PUT", "PATCH"], "path": "/v1/config*"}, "hold"),
    ({"agent": "deploy-*", "method": ["PUT", "PATCH"], "path": "/v1/config*"}, "hold"),
    ({"protocol": "mcp", "tool": ["read_*", "list_*", "search_*"]}, "allow"),
    ({"protocol": "mcp", "tool": ["get_*", "describe_*"]}, "allow"),
    ({"method": "GET", "query": {"export": "all"}}, "hold"),
    ({"method": "GET", "query": {"limit": "[0-9][0-9][0-9][0-9]*"}}, "log"),
    ({"effect": "destructive", "not": {"agent": ["agent", "planner-*", "ci-*"]}}, "deny"),
    (
        {"effect": "destructive", "not": {"agent": ["agent", "planner-*", "ci-*", "deploy-*", "reviewer-*"]}},
        "hold",
    ),
]


def hostless_rules() -> list[Spec]:
    """The rules that name no host."""
    return [
        {"id": f"general-{n:02d}-{verdict}", "match": match, "action": verdict}
        for n, (match, verdict) in enumerate(HOSTLESS)
    ]


EGRESS: list[Any] = [
    {"host": "*.internal.example", "ports": [443, 8443]},
    "*.corp-*.example",
    "mcp.tools.example",
    "static.cdn.example",
    "api.github.com",
    "registry.npmjs.org:443",
    "*.amazonaws.com",
    "localhost",
]


def rule_file(rules: list[Spec]) -> Spec:
    """A complete rule file (version 1) with the shared egress allowlist and defaults."""
    return {
        "version": 1,
        "egress": {"action": "enforce", "allow": EGRESS},
        "defaults": {"read": "allow", "write": "allow", "destructive": "hold"},
        "rules": rules,
    }


def thousand_rules() -> list[Spec]:
    """The 1,000 rules, in the order a large rule file might list them."""
    rules = [r for i in range(1, SERVICES + 1) for r in service_rules(i)]
    rules += [host_glob_rule(j) for j in range(HOST_GLOB_RULES)]
    rules += hostless_rules()
    if len(rules) != TOTAL_RULES:
        raise AssertionError(f"built {len(rules)} rules, meant {TOTAL_RULES}")
    return rules


def write_yaml(path: Path, content: Spec) -> Path:
    """Write a rule file as YAML and return its path."""
    path.write_text(yaml.safe_dump(content, sort_keys=False, width=200))
    return path


# ---- the rulesets -------------------------------------------------------------------------


class LinearScan(Ruleset):
    """The same rules without the host index: every rule is a candidate for every action."""

    def candidates(self, action: Action) -> Iterable[Rule]:
        """Every rule, in file order."""
        return self.rules


def timed_load(cls: type[Ruleset], path: Path, times: int) -> tuple[Ruleset, float]:
    """Load a rule file `times` times (at least once); the ruleset and the best load time in ms."""
    loads = []
    for _ in range(max(times, 1)):
        start = time.perf_counter_ns()
        ruleset = cls.load(path)
        loads.append((time.perf_counter_ns() - start) / 1e6)
    return ruleset, min(loads)


# ---- the actions --------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One typical action to decide, with a short name for the report."""

    name: str
    action: Action


def typical_actions() -> list[Case]:
    """A service write, an unnamed host, a denied delete and an MCP tool call."""
    json_headers = {"content-type": "application/json", "user-agent": "agent-sdk/1.4", "accept": "*/*"}
    body = json.dumps({"name": "widget", "qty": 3, "tags": ["bench"], "owner": "agent-007"}).encode()
    call = {"to": "someone@elsewhere.org", "subject": "Weekly report", "body": "Numbers attached."}
    rpc = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": "send_email", "arguments": call},
    }
    return [
        Case(
            "POST JSON to a service",
            Action(
                "POST", "https", service(123), 443, "/v1/items", Effect.WRITE, headers=json_headers, body=body
            ),
        ),
        Case(
            "GET, host no rule names",
            Action("GET", "https", "static.cdn.example", 443, "/assets/app.js", Effect.READ, query="v=42"),
        ),
        Case(
            "DELETE, a deny rule",
            Action(
                "DELETE", "https", service(42), 443, "/v1/items/7", Effect.DESTRUCTIVE, headers=json_headers
            ),
        ),
        Case(
            "MCP tools/call",
            Action(
                "POST",
                "https",
                "mcp.tools.example",
                443,
                "/mcp",
                Effect.WRITE,
                protocol="mcp",
                headers=json_headers,
                body=json.dumps(rpc).encode(),
                tool="send_email",
                args=call,
            ),
        ),
    ]


# ---- timing -------------------------------------------------------------------------------


def batch_ns(evaluate: Callable[[Action], Decision], action: Action, n: int) -> int:
    """Nanoseconds for `n` calls of `evaluate(action)`."""
    start = time.perf_counter_ns()
    for _ in range(n):
        evaluate(action)
    return time.perf_counter_ns() - start


def batch_size(evaluate: Callable[[Action], Decision], action: Action, batch_ms: float) -> int:
    """How many calls take about `batch_ms`, from a short trial (which also warms up)."""
    trial = 20
    per_call = max(batch_ns(evaluate, action, trial) / trial, 1.0)
    return max(trial, int(batch_ms * 1e6 / per_call))


def best_us(
    rulesets: dict[str, Ruleset], cases: list[Case], repeats: int, batch_ms: float
) -> dict[tuple[str, str], float]:
    """Best µs per call of every ruleset on every action; they take turns within a repeat."""
    pairs = [(name, case) for case in cases for name in rulesets]
    sizes = {(n, c.name): batch_size(rulesets[n].evaluate, c.action, batch_ms) for n, c in pairs}
    best = {key: float("inf") for key in sizes}
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            for name, case in pairs:
                key = (name, case.name)
                took = batch_ns(rulesets[name].evaluate, case.action, sizes[key])
                best[key] = min(best[key], took / sizes[key] / 1000)
    finally:
        if gc_was_on:
            gc.enable()
    return best


# ---- the report ---------------------------------------------------------------------------


def verdict(met: bool) -> str:
    """How the target is reported."""
    return "target met" if met else "target missed"


def describe(decision: Decision) -> str:
    """A decision in a few words: verdict and deciding rule."""
    return f"{decision.verdict.value} ({decision.rule or 'default'})"


def print_setup(ruleset: Ruleset, load_ms: float, cases: list[Case]) -> None:
    """The rules, the load time and, per action, how many rules the index leaves to try."""
    literal = sum(r.hosts is not None for r in ruleset.rules)
    print(
        f"{len(ruleset.rules)} rules: {literal} indexed by literal host, "
        f"{len(ruleset.rules) - literal} tried for every action (host globs or no host)"
    )
    print(f"Load (YAML, schema validation, compile, index), best of {LOAD_REPEATS}: {load_ms:.1f} ms")
    print()
    for case in cases:
        tried = sum(1 for _ in ruleset.candidates(case.action))
        matched = ruleset.explain(case.action).matched
        print(
            f"  {case.name:<24} candidates {tried:>4}  matching {len(matched)}  "
            f"decision {describe(ruleset.evaluate(case.action))}"
        )


KINDS = ("indexed", "linear", "empty")


def row(label: str, idx: float, lin: float, emp: float) -> str:
    """One line of the table: µs per action for each ruleset and the two comparisons."""
    return f"{label:<24} {idx:>10.2f} {lin:>10.2f} {emp:>9.2f} {lin / idx:>13.1f}x {idx - emp:>12.2f}"


def print_table(best: dict[tuple[str, str], float], cases: list[Case]) -> None:
    """µs per action for every ruleset, and the indexed one against both baselines."""
    print()
    print(
        f"{'action':<24} {'indexed µs':>10} {'linear µs':>10} {'empty µs':>9} "
        f"{'linear/indexed':>14} {'rules add µs':>12}"
    )
    print("-" * 84)
    for case in cases:
        idx, lin, emp = (best[(kind, case.name)] for kind in KINDS)
        print(row(case.name, idx, lin, emp))
    print("-" * 84)
    idx, lin, emp = (statistics.fmean(best[(kind, c.name)] for c in cases) for kind in KINDS)
    print(row("mean of the actions", idx, lin, emp))


def print_ratios(best: dict[tuple[str, str], float], cases: list[Case]) -> None:
    """The index's speed-up over the linear scan, and the target."""
    indexed = {c.name: best[("indexed", c.name)] for c in cases}
    linear = {c.name: best[("linear", c.name)] for c in cases}
    speedups = [linear[name] / indexed[name] for name in indexed]
    mean = statistics.fmean(indexed.values())
    slowest = max(indexed, key=indexed.__getitem__)
    print()
    print("Ratios:")
    print(
        f"  indexed vs linear scan of the same {TOTAL_RULES} rules: "
        f"{statistics.fmean(linear.values()) / mean:.1f}x faster on the mean "
        f"({min(speedups):.1f}x to {max(speedups):.1f}x per action)"
    )
    print(
        f"  indexed, mean of the actions: {mean:.2f} µs/action "
        f"(target < {TARGET_US:.0f} µs): {verdict(mean < TARGET_US)}"
    )
    print(
        f"  indexed, slowest action ({slowest}): {indexed[slowest]:.2f} µs "
        f"(target < {TARGET_US:.0f} µs): {verdict(indexed[slowest] < TARGET_US)}"
    )


def check_same_decisions(indexed: Ruleset, linear: Ruleset, cases: list[Case]) -> None:
    """Warn if the index changes any decision: it must only skip rules that cannot match."""
    for case in cases:
        a, b = indexed.evaluate(case.action), linear.evaluate(case.action)
        if a != b:
            print(f"WARNING: {case.name}: indexed decides {describe(a)}, linear {describe(b)}")


# ---- command line -------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """Flags of the benchmark."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="timed batches per ruleset and action (default 5)")
    p.add_argument("--batch-ms", type=float, default=150.0, help="length of one batch in ms (default 150)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Write the rule files, load them, time every ruleset on every action, print the report."""
    args = build_parser().parse_args(argv)
    if args.repeats < 1 or args.batch_ms <= 0:
        build_parser().error("--repeats must be at least 1 and --batch-ms positive")
    began = time.monotonic()
    cases = typical_actions()
    with tempfile.TemporaryDirectory(prefix="airlock-rules-bench-") as tmp:
        big = write_yaml(Path(tmp) / "rules.yaml", rule_file(thousand_rules()))
        none = write_yaml(Path(tmp) / "empty.yaml", rule_file([]))
        indexed, load_ms = timed_load(Ruleset, big, LOAD_REPEATS)
        linear, _ = timed_load(LinearScan, big, 1)
        empty, _ = timed_load(Ruleset, none, 1)
    print(
        f"Ruleset.evaluate with {TOTAL_RULES} rules; best of {args.repeats} batches of "
        f"~{args.batch_ms:.0f} ms per ruleset and action; Python {sys.version.split()[0]}"
    )
    print_setup(indexed, load_ms, cases)
    check_same_decisions(indexed, linear, cases)
    rulesets = dict(zip(KINDS, (indexed, linear, empty), strict=True))
    best = best_us(rulesets, cases, args.repeats, args.batch_ms)
    print_table(best, cases)
    print_ratios(best, cases)
    print(f"\nTook {time.monotonic() - began:.1f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

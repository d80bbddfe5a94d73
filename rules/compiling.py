"""Compiling rule files into rules: each document's rules, egress entries, defaults and secret
headers, gathered into one `Compiled`, with every problem found on the way.

A part of a document that the schema finds wrong is not compiled (its problems are reported
already); every other part is, so one pass reports every mistake in every file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

from .action import Effect
from .addresses import Range
from .allowlist import Allowlist, HostEntry, entry_of
from .budgets import parse_budget
from .decision import PRECEDENCE, Verdict
from .holds import Hold, parse_hold
from .limits import parse_limit, parse_lock
from .match import compile_match, is_literal, strings
from .repeats import parse_dedup, parse_storm
from .rule import Rule
from .source import Document, Problem
from .voters import Voter, parse_voter, voter_problem

# Fields that are the same for every call to one tool of one server: a deny rule that looks
# only at these refuses every call to the tools it matches.
_PER_TOOL = frozenset({"agent", "protocol", "host", "port", "method", "path", "service", "tool", "effect"})


@dataclass
class Compiled:
    """Everything the rule files say, compiled: the rules in file order, the egress entries,
    the defaults (the strictest across files) and the secret headers."""

    rules: list[Rule] = field(default_factory=list)
    hosts: list[HostEntry] = field(default_factory=list)
    ranges: list[Range] = field(default_factory=list)
    egress_modes: list[str] = field(default_factory=list)
    defaults: dict[Effect, Verdict] = field(default_factory=dict)
    hold: Hold | None = None  # the top-level `hold`: the policy of holds that set none
    voters: dict[str, Voter] = field(default_factory=dict)  # the declared automated voters
    secrets: set[str] = field(default_factory=set)
    aws_endpoints: list[str] = field(default_factory=list)  # host globs that serve AWS's APIs
    llm_endpoints: list[str] = field(default_factory=list)  # host globs that serve model APIs
    problems: list[Problem] = field(default_factory=list)
    _seen: dict[str, Path] = field(default_factory=dict, init=False, repr=False)  # id: its file
    _voters_seen: dict[str, Path] = field(default_factory=dict, init=False, repr=False)

    def allowlist(self) -> Allowlist:
        """The egress allowlist; report mode only if every file that names a mode says report."""
        report = bool(self.egress_modes) and all(m == "report" for m in self.egress_modes)
        return Allowlist(self.hosts, self.ranges, report=report)

    def add(self, doc: Document) -> None:
        """Compile one document into this whole, keeping its problems in the order of the file."""
        found = list(doc.problems)
        content = doc.content
        if doc.valid(["egress"]):
            egress = content.get("egress", {})
            for entry in map(entry_of, egress.get("allow", [])):
                if isinstance(entry, Range):
                    self.ranges.append(entry)
                else:
                    self.hosts.append(entry)
            if "action" in egress:
                self.egress_modes.append(egress["action"])
        if doc.valid(["defaults"]):
            for effect, verdict in content.get("defaults", {}).items():
                current = self.defaults.get(Effect(effect))
                # Across files the strictest default wins, like the rules themselves.
                if current is None or PRECEDENCE[Verdict(verdict)] > PRECEDENCE[current]:
                    self.defaults[Effect(effect)] = Verdict(verdict)
        if doc.valid(["hold"]) and "hold" in content:
            if self.hold is not None:
                found.append(doc.problem(["hold"], "hold settings are given in more than one rule file"))
            else:
                self.hold = parse_hold(content["hold"])
        voters = content.get("voters", {})
        for name, spec in voters.items() if isinstance(voters, dict) else ():
            if doc.valid(["voters", name]):
                found.extend(self._voter(doc, name, spec))
        if doc.valid(["aws"]):
            self.aws_endpoints.extend(h.lower() for h in content.get("aws", {}).get("endpoints", []))
        if doc.valid(["llm"]):
            self.llm_endpoints.extend(h.lower() for h in content.get("llm", {}).get("endpoints", []))
        if doc.valid(["secrets"]):
            self.secrets.update(h.lower() for h in content.get("secrets", {}).get("headers", []))
        specs = content.get("rules", [])
        for i, spec in enumerate(specs if isinstance(specs, list) else []):
            if doc.valid(["rules", i]):  # each rule the schema takes is checked on its own
                found.extend(self._rule(doc, i, spec))
        self.problems.extend(sorted(found, key=lambda p: (p.line, p.column)))

    def _voter(self, doc: Document, name: str, spec: dict[str, Any]) -> list[Problem]:
        """Declare the document's voter `name`, or say what is wrong with it."""
        if name in self._voters_seen:
            where = self._voters_seen[name]
            return [doc.problem(["voters", name], f"voter {name!r} is already declared in {where}")]
        if (problem := voter_problem(spec)) is not None:
            return [doc.problem(["voters", name], problem)]
        self._voters_seen[name] = doc.path
        self.voters[name] = parse_voter(name, spec)
        return []

    def _rule(self, doc: Document, i: int, spec: dict[str, Any]) -> list[Problem]:
        """Compile the document's rule `i`, or say what is wrong with it."""
        problems = []
        if spec["id"] in self._seen:
            problems.append(
                doc.problem(
                    ["rules", i, "id"],
                    f"{spec['id']!r} is already defined in {self._seen[spec['id']]}; rule ids must be unique",
                )
            )
        else:
            self._seen[spec["id"]] = doc.path
        match = spec["match"]
        problems.extend(_schema_problems(doc, ["rules", i, "match"], match))
        if "effect" in spec and _names(match, "effect"):
            problems.append(
                doc.problem(
                    ["rules", i, "match"],
                    "a rule that sets effect cannot also match on effect; match the tool, host or method",
                )
            )
        dedup = None
        try:
            dedup = parse_dedup(spec["id"], spec["dedup"]) if "dedup" in spec else None
        except ValueError as e:
            problems.append(doc.problem(["rules", i, "dedup", "key"], str(e)))
        lock = None
        try:
            lock = parse_lock(spec["id"], spec["lock"]) if "lock" in spec else None
        except ValueError as e:
            where: list[str | int] = ["rules", i, "lock"]
            if isinstance(spec["lock"], dict):
                where.append("key")
            problems.append(doc.problem(where, str(e)))
        if "hold" in spec and spec.get("action") != "hold":
            problems.append(
                doc.problem(["rules", i, "hold"], "hold settings belong to a rule with action: hold")
            )
        if problems:
            return problems
        methods = _literal_set(match, "method", str.upper)
        protocols = _literal_set(match, "protocol", str.lower)
        # Literal methods and protocols are checked by Rule.matches before the rest: not twice.
        prechecked = {k for k, v in (("method", methods), ("protocol", protocols)) if v is not None}
        rest = {k: v for k, v in match.items() if k not in prechecked}
        verdict = Verdict(spec["action"]) if "action" in spec else None
        # Rules that refuse, or make an action count as destructive, hold under any reading.
        widen = verdict in (Verdict.DENY, Verdict.HOLD) or spec.get("effect") == "destructive"
        self.rules.append(
            Rule(
                id=spec["id"],
                verdict=verdict,
                message=spec.get("message", ""),
                description=spec.get("description", ""),
                source=doc.path,
                position=len(self.rules),
                test=compile_match(rest, widen=widen),
                hosts=_host_keys(match),
                methods=methods,
                protocols=protocols,
                dedup=dedup,
                storm=parse_storm(spec["id"], spec["storm"]) if "storm" in spec else None,
                hold=parse_hold(spec["hold"]) if "hold" in spec else None,
                hides=spec.get("action") == "deny" and spec.get("hide", True) and _per_tool(match),
                effect=Effect(spec["effect"]) if "effect" in spec else None,
                widen=widen,
                budget=parse_budget(spec["id"], spec["budget"]) if "budget" in spec else None,
                keep_prompts=spec.get("keep") == "prompts",
                lock=lock,
                limit=parse_limit(spec["id"], spec["limit"]) if "limit" in spec else None,
                proposed_as=tuple(strings(spec.get("proposed_as", []))),
            )
        )
        return []


def _literal_set(spec: dict[str, Any], key: str, fold: Callable[[str], str]) -> frozenset[str] | None:
    if key not in spec:
        return None
    values = strings(spec[key])
    if not all(is_literal(v) for v in values):
        return None
    return frozenset(fold(v) for v in values)


def _host_keys(spec: dict[str, Any]) -> frozenset[str] | None:
    """Index keys for a rule's hosts: literal hosts, and `*.domain` globs as `*.domain`."""
    if "host" not in spec:
        return None
    keys = []
    for pattern in (p.lower() for p in strings(spec["host"])):
        if is_literal(pattern) or (pattern.startswith("*.") and is_literal(pattern[2:])):
            keys.append(pattern)
        else:
            return None
    return frozenset(keys)


def _per_tool(match: dict[str, Any]) -> bool:
    for key, value in match.items():
        if key in ("all", "any"):
            if not all(_per_tool(m) for m in value):
                return False
        elif key == "not":
            if not _per_tool(value):
                return False
        elif key not in _PER_TOOL:
            return False
    return True


def _names(match: dict[str, Any], key: str) -> bool:
    """True when the match, or a match nested in it, tests `key`."""
    nested = [*match.get("all", []), *match.get("any", []), *([match["not"]] if "not" in match else [])]
    return key in match or any(_names(m, key) for m in nested)


def _schema_problems(doc: Document, steps: list[str | int], match: dict[str, Any]) -> list[Problem]:
    """The `body` and `args` fields of a match (nested ones too) that are not JSON Schemas."""
    problems = []
    for key in ("body", "args"):
        if key in match:
            try:
                jsonschema.Draft202012Validator.check_schema(match[key])
            except jsonschema.SchemaError as e:
                problems.append(doc.problem([*steps, key], f"not a valid JSON Schema: {e.message}"))
    for key in ("all", "any"):
        for i, inner in enumerate(match.get(key, [])):
            problems.extend(_schema_problems(doc, [*steps, key, i], inner))
    if "not" in match:
        problems.extend(_schema_problems(doc, [*steps, "not"], match["not"]))
    return problems

"""The Ruleset: rules loaded from YAML files, and the one function that decides an Action."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from .action import Action
from .decision import Decision, Verdict
from .source import RulesError, files, read

_PRECEDENCE = {Verdict.ALLOW: 0, Verdict.LOG: 1, Verdict.HOLD: 2, Verdict.DENY: 3}
EGRESS_RULE = "egress"

Matcher = Callable[[Action], bool]


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _globs(patterns: Iterable[str], fold: bool) -> Callable[[str], bool]:
    pats = [p.lower() for p in patterns] if fold else list(patterns)
    if fold:
        return lambda v: any(fnmatchcase(v.lower(), p) for p in pats)
    return lambda v: any(fnmatchcase(v, p) for p in pats)


def _compile_match(match: dict[str, Any]) -> list[Matcher]:
    tests: list[Matcher] = []
    if "agent" in match:
        agent = _globs(_as_list(match["agent"]), fold=False)
        tests.append(lambda a: agent(a.agent))
    if "host" in match:
        host = _globs(_as_list(match["host"]), fold=True)
        tests.append(lambda a: host(a.host))
    if "method" in match:
        methods = {m.upper() for m in _as_list(match["method"])}
        tests.append(lambda a: a.method.upper() in methods)
    if "path" in match:
        path = _globs(_as_list(match["path"]), fold=False)
        tests.append(lambda a: path(a.path))
    if "effect" in match:
        effects = set(_as_list(match["effect"]))
        tests.append(lambda a: a.effect.value in effects)
    return tests


@dataclass(frozen=True)
class Rule:
    """One rule: an id, what it matches, and what happens to the actions it matches."""

    id: str
    verdict: Verdict
    message: str
    description: str
    source: Path
    tests: tuple[Matcher, ...]

    def matches(self, action: Action) -> bool:
        """True when every field of the rule's `match` holds for the action."""
        return all(test(action) for test in self.tests)


class Ruleset:
    """Every rule from one rules path, with the egress allowlist and the extra secret headers."""

    def __init__(
        self,
        rules: list[Rule],
        *,
        egress_allow: list[str],
        egress_report: bool,
        secret_headers: frozenset[str],
        digest: str,
        sources: list[Path],
    ):
        self.rules = rules
        self.egress_allow = egress_allow
        self.egress_report = egress_report
        self.secret_headers = secret_headers
        self.digest = digest
        self.sources = sources
        self._egress = _globs(egress_allow, fold=True)

    @classmethod
    def load(cls, path: Path | str) -> Ruleset:
        """Load and validate a rule file, or every *.yaml in a directory; raise RulesError."""
        path = Path(path)
        docs = [read(p) for p in files(path)]
        rules: list[Rule] = []
        seen: dict[str, Path] = {}
        allow: list[str] = []
        report = False
        secrets: set[str] = set()
        for doc in docs:
            egress = doc.content.get("egress", {})
            allow.extend(egress.get("allow", []))
            report = report or egress.get("action") == "report"
            secrets.update(h.lower() for h in doc.content.get("secrets", {}).get("headers", []))
            for i, spec in enumerate(doc.content.get("rules", [])):
                if spec["id"] in seen:
                    raise RulesError(
                        f"{doc.path}: rules[{i}].id: {spec['id']!r} is already defined in "
                        f"{seen[spec['id']]}; rule ids must be unique"
                    )
                seen[spec["id"]] = doc.path
                rules.append(
                    Rule(
                        id=spec["id"],
                        verdict=Verdict(spec["action"]),
                        message=spec.get("message", ""),
                        description=spec.get("description", ""),
                        source=doc.path,
                        tests=tuple(_compile_match(spec["match"])),
                    )
                )
        digest = hashlib.sha256("".join(d.digest for d in docs).encode()).hexdigest()
        return cls(
            rules,
            egress_allow=allow,
            egress_report=report,
            secret_headers=frozenset(secrets),
            digest=digest,
            sources=[d.path for d in docs],
        )

    def egress_allows(self, host: str) -> bool:
        """True when the host is on the egress allowlist."""
        return self._egress(host)

    def evaluate(self, action: Action) -> Decision:
        """Decide an action: egress first, then every matching rule; deny beats hold beats allow."""
        # A named upstream (reverse mode) was chosen by the operator on the command line.
        if action.upstream is None and not self.egress_allows(action.host):
            message = (
                f"{action.host} is not on the egress allowlist; "
                "add it to egress.allow in the rules if the agent should reach it"
            )
            if not self.egress_report:
                return Decision(Verdict.DENY, EGRESS_RULE, message, "egress_denied")
            return Decision(Verdict.LOG, EGRESS_RULE, f"report only: {message}")
        matched = [r for r in self.rules if r.matches(action)]
        if not matched:
            return Decision(Verdict.ALLOW)
        rule = max(matched, key=lambda r: _PRECEDENCE[r.verdict])
        if rule.verdict is Verdict.DENY:
            message = rule.message or f"rule {rule.id} denies this action"
            return Decision(Verdict.DENY, rule.id, message, "denied")
        if rule.verdict is Verdict.HOLD:
            # Votes are not available yet: a held action is refused, and says so.
            message = (rule.message + " " if rule.message else "") + (
                f"rule {rule.id} holds this action for votes, which this proxy cannot take yet; "
                "it was not executed"
            )
            return Decision(Verdict.DENY, rule.id, message, "held")
        return Decision(rule.verdict, rule.id, rule.message)

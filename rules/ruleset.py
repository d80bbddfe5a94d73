"""The Ruleset: every rule from one rules path, indexed, and how it decides an Action.

Deciding: egress first (is the host, and port, reachable at all?), then every rule whose
`match` holds; the strictest verdict wins (deny > hold > log > allow), so adding an allow rule
can never unlock what a deny rule blocks. No match falls to `defaults` for the action's effect.
Rules whose top-level match names only literal hosts or `*.domain` globs are indexed by host
and domain, so most rules are never looked at for a given action; a rule's literal methods and
protocols are checked before the rest of its match.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .action import Action
from .addresses import Address
from .compiling import Compiled
from .decision import PRECEDENCE, Decision, Verdict
from .holds import DEFAULT_HOLD, Hold
from .match import globs
from .readings import KINDS, readings_of, unseen_body
from .rule import Rule
from .source import RulesError, files, read


@dataclass(frozen=True)
class Explanation:
    """Why an action got its decision: the egress check, every matching rule, the decision."""

    action: Action
    egress: str  # allowed, refused, reported, upstream
    matched: list[Rule]
    decision: Decision
    reason: str


def _lookup_keys(host: str) -> list[str]:
    """The index keys an action's host can be filed under: itself and `*.` each parent domain."""
    host = host.lower()
    keys = [host]
    rest = host
    while "." in rest:
        rest = rest.split(".", 1)[1]
        keys.append(f"*.{rest}")
    return keys


AMBIGUOUS = "ambiguous"  # a rule matched only because the body it reads cannot be read


def _reading(rule: Rule, action: Action) -> str | None:
    """Which reading of the action a widened rule matched: None for the action as sent,
    AMBIGUOUS when only an unreadable body made it match, else words naming the reading."""
    r = readings_of(action)
    if not rule.widen or not r.several():
        return None
    try:
        r.only, r.assume_unknown = frozenset(), False
        if rule.matches(action):
            return None
        r.only = None
        if not rule.matches(action):
            return AMBIGUOUS
        needed = set(KINDS)
        for kind in KINDS:  # drop each kind of reading the match does without
            r.only = frozenset(needed - {kind})
            if rule.matches(action):
                needed.discard(kind)
        return " and ".join(_READING_WORDS[k](action) for k in KINDS if k in needed)
    finally:
        r.only, r.assume_unknown = None, True


_READING_WORDS: dict[str, Callable[[Action], str]] = {
    "method": lambda a: (
        "the method "
        + " or ".join(readings_of(a).methods[1:])
        + " that a method-override header or _method field names"
    ),
    "path": lambda a: (
        "the path as other servers resolve it (" + ", ".join(readings_of(a).paths) + "), or without case"
    ),
    "agent": lambda a: f"the configured agent {a.configured_agent}, which the request named {a.agent}",
    "body": lambda a: (
        "another reading of the body (form or multipart fields, typed values, "
        "the first of repeated JSON keys, or its decoded text)"
    ),
}


def _ambiguous(rule: Rule, action: Action) -> Decision:
    r = readings_of(action)
    why = r.problem or r.args_problem or "it cannot be read"
    if unseen_body(action):
        return Decision(
            Verdict.DENY,
            rule.id,
            f"rule {rule.id} must read the body of this request, and {why}; nothing was forwarded",
            "body_unread",
        )
    return Decision(
        Verdict.DENY,
        rule.id,
        f"rule {rule.id} must read the body of this request, and it cannot be read "
        f"unambiguously: {why}; it was not forwarded. Send one plain JSON document in UTF-8 "
        "(no repeated keys, nothing after it), a form or a multipart body, uncompressed or "
        "compressed with gzip, deflate, br or zstd",
        "ambiguous_body",
    )


class Ruleset:
    """Every rule from one rules path, with the egress allowlist, defaults and secret headers."""

    def __init__(self, compiled: Compiled, *, digest: str, sources: list[Path]):
        self.rules = compiled.rules
        self.defaults = compiled.defaults
        self.hold = compiled.hold or DEFAULT_HOLD  # the policy of holds that set none
        self.voters = compiled.voters  # the automated voters, by name
        self.secret_headers = frozenset(compiled.secrets)
        self._aws_endpoints = globs(compiled.aws_endpoints, fold=True)
        self._llm_endpoints = globs(compiled.llm_endpoints, fold=True)
        self.allowlist = compiled.allowlist()
        self.egress_report = self.allowlist.report
        self.digest = digest
        self.sources = sources
        self._effects = [r for r in self.rules if r.effect is not None]
        self._by_host: dict[str, list[Rule]] = {}
        self._any_host: list[Rule] = []
        for rule in self.rules:
            if rule.hosts is None:
                self._any_host.append(rule)
            else:
                for host in rule.hosts:
                    self._by_host.setdefault(host, []).append(rule)

    @classmethod
    def load(cls, path: Path | str) -> Ruleset:
        """Load and validate a rule file, or every *.yaml in a directory; RulesError names every
        problem found in every file, one a line."""
        compiled = Compiled()
        problems: list[str] = []
        digests, sources = [], []
        for source in files(Path(path)):
            try:
                doc = read(source)
            except RulesError as e:
                problems.extend(e.problems)
                continue
            compiled.add(doc)
            digests.append(doc.digest)
            sources.append(doc.path)
        problems.extend(p.text for p in compiled.problems)
        if problems:
            raise RulesError(*problems)
        digest = hashlib.sha256("".join(digests).encode()).hexdigest()
        return cls(compiled, digest=digest, sources=sources)

    # ---- egress: the allowlist's answers, asked of the Ruleset the proxy holds ---------------

    def aws_endpoint(self, host: str, port: int) -> bool:
        """True when the rules name `host` (or `host:port`) as an endpoint that serves AWS's APIs
        as AWS does (`aws: endpoints`)."""
        return self._aws_endpoints(host) or self._aws_endpoints(f"{host}:{port}")

    def llm_endpoint(self, host: str, port: int) -> bool:
        """True when the rules name `host` (or `host:port`) as serving a model API (`llm:
        endpoints`): an OpenAI-compatible server, a gateway, a local model."""
        return self._llm_endpoints(host) or self._llm_endpoints(f"{host}:{port}")

    def egress_allows(self, host: str, port: int | None = None) -> bool:
        """True when the host (and port) is on the egress allowlist (see Allowlist.allows)."""
        return self.allowlist.allows(host, port)

    def egress_refusal(self, host: str, port: int | None) -> str | None:
        """Why the allowlist refuses the host (and port), or None when it allows it."""
        return self.allowlist.refusal(host, port)

    def range_allows(self, address: Address, port: int | None) -> bool:
        """True when a range entry of the allowlist holds the address (and port)."""
        return self.allowlist.range_allows(address, port)

    def address_refusal(self, host: str, address: Address, port: int | None) -> str | None:
        """Why the connection for `host` may not go to `address`, or None when it may."""
        return self.allowlist.address_refusal(host, address, port)

    def check_address(
        self, decision: Decision, host: str, port: int, addresses: list[Address]
    ) -> tuple[Address | None, Decision]:
        """The address a connection for `host` may go to and the decision once the addresses
        are known (see Allowlist.check_address)."""
        return self.allowlist.check_address(decision, host, port, addresses)

    def egress_decision(self, action: Action) -> Decision | None:
        """What egress says of the action: None when it may go, else a refusal or, in report
        mode, a log entry (see Allowlist.decision)."""
        return self.allowlist.decision(action)

    # ---- the rules ---------------------------------------------------------------------------

    def candidates(self, action: Action) -> Iterable[Rule]:
        """The rules that can match the action: those filed under its host or a parent domain,
        and the unindexed rest (a rule filed under several keys is yielded once)."""
        seen: set[int] = set()
        for key in _lookup_keys(action.host):
            for rule in self._by_host.get(key, ()):
                if rule.position not in seen:
                    seen.add(rule.position)
                    yield rule
        yield from self._any_host

    def hidden_by(self, action: Action) -> Rule | None:
        """The deny rule that refuses every call to the action's tool whatever its arguments,
        if one does and may hide the tool from `tools/list`."""
        action = self.effective(action)
        return next((r for r in self.candidates(action) if r.hides and r.matches(action)), None)

    def effective(self, action: Action) -> Action:
        """The action with the effect its first matching `effect` rule gives it, if any: the
        method or a server's tool annotations are only hints the operator may overrule."""
        rule = self._effect_rule(action)
        if rule is None or rule.effect is None:
            return action
        return dataclasses.replace(action, effect=rule.effect)

    def _effect_rule(self, action: Action) -> Rule | None:
        return next((r for r in self._effects if r.matches(action)), None)

    def decide(self, action: Action) -> tuple[Action, Decision]:
        """The action as the rules see it (its effect overruled where a rule says so) and its
        decision (see the module docstring for the order)."""
        explained = self.explain(action, complete=False)
        return explained.action, explained.decision

    def evaluate(self, action: Action) -> Decision:
        """The decision alone, for callers that need not see the action as the rules do (the
        benchmark, tests); the proxy calls `decide`."""
        return self.decide(action)[1]

    def explain(self, action: Action, *, complete: bool = True) -> Explanation:
        """Decide an action and say why: egress, every matching rule, the winner or the default.

        With `complete=False` an action that egress refuses is not matched against the rules.
        """
        setter = self._effect_rule(action)
        if setter is not None and setter.effect is not None:
            action = dataclasses.replace(action, effect=setter.effect)
        said = self.egress_decision(action)
        matched: list[Rule] = []
        if said is None or complete or not said.refused:
            matched = sorted(
                (r for r in self.candidates(action) if r.matches(action)), key=lambda r: r.position
            )
        egress, reported = "allowed", None
        if action.upstream is not None:
            egress = "upstream"  # a named upstream was chosen by the operator on the command line
        elif said is not None and said.refused:
            target = f"{action.host}:{action.port}"
            return Explanation(action, "refused", matched, said, f"egress refuses {target}")
        elif said is not None:
            egress, reported = "reported", said
        deciding = [r for r in matched if r.verdict is not None]
        if deciding:
            winner = max(deciding, key=lambda r: (PRECEDENCE[r.verdict or Verdict.ALLOW], -r.position))
            assert winner.verdict is not None
            decision = self._decision(winner.verdict, winner.id, winner.message, winner.hold or self.hold)
            others = len(deciding) - 1
            reason = f"rule {winner.id} ({winner.verdict.value}) decides" + (
                f"; {others} other matching rule(s) are not stricter" if others else ""
            )
            reading = _reading(winner, action)
            if reading is AMBIGUOUS:
                decision = _ambiguous(winner, action)
                reason += "; it must read the body, which cannot be read unambiguously"
            elif reading:
                reason += f"; it matches {reading}"
        else:
            verdict = self.defaults.get(action.effect, Verdict.ALLOW)
            rule_id = None if verdict is Verdict.ALLOW else f"defaults.{action.effect.value}"
            decision = self._decision(verdict, rule_id, "", self.hold)
            reason = f"no rule matched; defaults.{action.effect.value} is {verdict.value}"
        if setter is not None:
            reason = f"rule {setter.id} makes it {action.effect.value}; {reason}"
        if reported is not None and not decision.refused:
            decision = reported
            reason += "; egress is in report mode and would refuse the host"
        dedup = next((r.dedup for r in matched if r.dedup is not None), None)
        storm = next((r.storm for r in matched if r.storm is not None), None)
        budgets = tuple(r.budget for r in matched if r.budget is not None)
        keep_prompts = any(r.keep_prompts for r in matched)
        lock = next((r.lock for r in matched if r.lock is not None), None)
        limits = tuple(r.limit for r in matched if r.limit is not None)
        proposed_as = tuple(t for r in matched for t in r.proposed_as)
        if dedup or storm or budgets or keep_prompts or lock or limits or proposed_as:
            decision = dataclasses.replace(
                decision,
                dedup=dedup,
                storm=storm,
                budgets=budgets,
                keep_prompts=keep_prompts,
                lock=lock,
                limits=limits,
                proposed_as=proposed_as,
            )
        return Explanation(action, egress, matched, decision, reason)

    @staticmethod
    def _decision(verdict: Verdict, rule: str | None, message: str, hold: Hold) -> Decision:
        if verdict is Verdict.DENY:
            return Decision(Verdict.DENY, rule, message or f"rule {rule} denies this action", "denied")
        if verdict is Verdict.HOLD:
            held = message or f"{rule} holds this action until voters approve it"
            return Decision(Verdict.HOLD, rule, held, "held", hold=hold)
        return Decision(verdict, rule, message)

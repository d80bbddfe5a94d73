"""The Ruleset: rules loaded from YAML files, and the one function that decides an Action.

Evaluation: egress first (is the host, and port, reachable at all?), then every rule whose
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

from .action import Action, Effect
from .addresses import Address, Range, address_of, network_of, non_public
from .decision import Decision, Verdict
from .dedup import Dedup, Storm, parse_dedup, parse_storm
from .match import Predicate, compile_match, globs, is_literal, strings
from .readings import KINDS, readings_of
from .source import Document, files, read

PRECEDENCE = {Verdict.ALLOW: 0, Verdict.LOG: 1, Verdict.HOLD: 2, Verdict.DENY: 3}
EGRESS_RULE = "egress"
UNREFUSED = Decision(Verdict.ALLOW, None, "")  # what egress says of a destination it lets go


@dataclass(frozen=True)
class Rule:
    """One rule: an id, what it matches, and what happens to the actions it matches.

    A rule without a verdict only modifies its actions: how repeats are handled (`dedup`,
    `storm`) or which effect they count as (`effect`), and leaves the verdict to the other
    rules and the defaults.
    """

    id: str
    verdict: Verdict | None
    message: str
    description: str
    source: Path
    position: int
    test: Predicate
    hosts: frozenset[str] | None = None  # index keys: literal hosts and "*.domain" globs
    methods: frozenset[str] | None = None
    protocols: frozenset[str] | None = None
    dedup: Dedup | None = None
    storm: Storm | None = None
    hides: bool = False  # a deny rule that refuses every call to a tool: hide the tool
    effect: Effect | None = None  # the effect the matched actions are treated as
    widen: bool = False  # any reading of the action matches (deny, hold): see rules.readings

    def matches(self, action: Action) -> bool:
        """True when every field of the rule's `match` holds for the action (for a deny or hold
        rule under any reading of it, for the others under every reading)."""
        if self.methods is not None:
            sent = action.method.upper() in self.methods
            # The method as sent decides a deny it is in and an allow it is not in; otherwise
            # the other readings of the method (overrides) decide, when there are any.
            if sent is not self.widen:
                others = readings_of(action).methods[1:]
                if self.widen:
                    if not others or not any(m in self.methods for m in others):
                        return False
                elif others and not all(m in self.methods for m in others):
                    return False
            elif not sent:
                return False
        if self.protocols is not None and action.protocol not in self.protocols:
            return False
        return self.test(action)


@dataclass(frozen=True)
class Explanation:
    """Why an action got its decision: the egress check, every matching rule, the decision."""

    action: Action
    egress: str  # allowed, refused, reported, upstream
    matched: list[Rule]
    decision: Decision
    reason: str


@dataclass(frozen=True)
class _Egress:
    test: Callable[[str | None], bool]
    ports: frozenset[int] | None
    literal: str | None = None  # the host, when the entry is not a glob


@dataclass
class _Parts:
    rules: list[Rule] = field(default_factory=list)
    egress: list[_Egress] = field(default_factory=list)
    ranges: list[Range] = field(default_factory=list)
    egress_modes: list[str] = field(default_factory=list)
    defaults: dict[Effect, Verdict] = field(default_factory=dict)
    secrets: set[str] = field(default_factory=set)


def _egress_entry(entry: str | dict[str, Any]) -> _Egress | Range:
    if isinstance(entry, str) and (network := network_of(entry)) is not None:
        return Range(network, None)  # an address or range alone (an IPv6 one has colons)
    if isinstance(entry, dict):
        host, ports = entry["host"], frozenset(entry["ports"]) if "ports" in entry else None
    else:
        head, sep, port = entry.rpartition(":")
        if sep and port.isdigit() and head and ":" not in head.strip("[]").replace("::", ""):
            host, ports = head.strip("[]"), frozenset({int(port)})
        else:
            host, ports = entry, None
    if (network := network_of(host)) is not None:
        return Range(network, ports)
    return _Egress(globs([host], fold=True), ports, host.lower() if is_literal(host) else None)


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


def _lookup_keys(host: str) -> list[str]:
    """The index keys an action's host can be filed under: itself and `*.` each parent domain."""
    host = host.lower()
    keys = [host]
    rest = host
    while "." in rest:
        rest = rest.split(".", 1)[1]
        keys.append(f"*.{rest}")
    return keys


# Fields that are the same for every call to one tool of one server: a deny rule that looks
# only at these refuses every call to the tools it matches.
_PER_TOOL = frozenset({"agent", "protocol", "host", "port", "method", "path", "service", "tool", "effect"})


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


def _check_schemas(doc: Document, steps: list[str | int], match: dict[str, Any]) -> None:
    for key in ("body", "args"):
        if key in match:
            try:
                jsonschema.Draft202012Validator.check_schema(match[key])
            except jsonschema.SchemaError as e:
                raise doc.error([*steps, key], f"not a valid JSON Schema: {e.message}") from e
    for key in ("all", "any"):
        for i, inner in enumerate(match.get(key, [])):
            _check_schemas(doc, [*steps, key, i], inner)
    if "not" in match:
        _check_schemas(doc, [*steps, "not"], match["not"])


def _add_document(parts: _Parts, doc: Document, seen: dict[str, Path]) -> None:
    content = doc.content
    egress = content.get("egress", {})
    for entry in map(_egress_entry, egress.get("allow", [])):
        if isinstance(entry, Range):
            parts.ranges.append(entry)
        else:
            parts.egress.append(entry)
    if "action" in egress:
        parts.egress_modes.append(egress["action"])
    for effect, verdict in content.get("defaults", {}).items():
        current = parts.defaults.get(Effect(effect))
        # Across files the strictest default wins, like the rules themselves.
        if current is None or PRECEDENCE[Verdict(verdict)] > PRECEDENCE[current]:
            parts.defaults[Effect(effect)] = Verdict(verdict)
    parts.secrets.update(h.lower() for h in content.get("secrets", {}).get("headers", []))
    for i, spec in enumerate(content.get("rules", [])):
        if spec["id"] in seen:
            raise doc.error(
                ["rules", i, "id"],
                f"{spec['id']!r} is already defined in {seen[spec['id']]}; rule ids must be unique",
            )
        seen[spec["id"]] = doc.path
        match = spec["match"]
        _check_schemas(doc, ["rules", i, "match"], match)
        methods = _literal_set(match, "method", str.upper)
        protocols = _literal_set(match, "protocol", str.lower)
        # Literal methods and protocols are checked by Rule.matches before the rest: not twice.
        prechecked = {k for k, v in (("method", methods), ("protocol", protocols)) if v is not None}
        rest = {k: v for k, v in match.items() if k not in prechecked}
        if "effect" in spec and _names(match, "effect"):
            raise doc.error(
                ["rules", i, "match"],
                "a rule that sets effect cannot also match on effect; match the tool, host or method",
            )
        verdict = Verdict(spec["action"]) if "action" in spec else None
        # Rules that refuse, or make an action count as destructive, hold under any reading.
        widen = verdict in (Verdict.DENY, Verdict.HOLD) or spec.get("effect") == "destructive"
        try:
            dedup = parse_dedup(spec["id"], spec["dedup"]) if "dedup" in spec else None
        except ValueError as e:
            raise doc.error(["rules", i, "dedup", "key"], str(e)) from e
        parts.rules.append(
            Rule(
                id=spec["id"],
                verdict=verdict,
                message=spec.get("message", ""),
                description=spec.get("description", ""),
                source=doc.path,
                position=len(parts.rules),
                test=compile_match(rest, widen=widen),
                hosts=_host_keys(match),
                methods=methods,
                protocols=protocols,
                dedup=dedup,
                storm=parse_storm(spec["id"], spec["storm"]) if "storm" in spec else None,
                hides=spec.get("action") == "deny" and spec.get("hide", True) and _per_tool(match),
                effect=Effect(spec["effect"]) if "effect" in spec else None,
                widen=widen,
            )
        )


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
    return Decision(
        Verdict.DENY,
        rule.id,
        f"rule {rule.id} must read the body of this request, and it cannot be read "
        f"unambiguously: {why}; it was not forwarded. Send one plain JSON document in UTF-8 "
        "(no repeated keys, nothing after it), a form or a multipart body, uncompressed or "
        "compressed with gzip, deflate, br or zstd",
        "ambiguous_body",
    )


def _add_range(address: Address) -> str:
    prefix = 32 if address.version == 4 else 128
    return f"add a range such as {address}/{prefix} to egress.allow if the agent should reach it"


class Ruleset:
    """Every rule from one rules path, with the egress allowlist, defaults and secret headers."""

    def __init__(self, parts: _Parts, *, digest: str, sources: list[Path]):
        self.rules = parts.rules
        self.defaults = parts.defaults
        self.secret_headers = frozenset(parts.secrets)
        # Report mode only if every file that says anything about it says report.
        self.egress_report = bool(parts.egress_modes) and all(m == "report" for m in parts.egress_modes)
        self.digest = digest
        self.sources = sources
        # Literal hosts allowed on any port answer from a set; the rest are tested one by one.
        self._egress_any_port = frozenset(e.literal for e in parts.egress if e.literal and e.ports is None)
        self._egress = [e for e in parts.egress if not (e.literal and e.ports is None)]
        self._ranges = parts.ranges
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
        """Load and validate a rule file, or every *.yaml in a directory; raise RulesError."""
        docs = [read(p) for p in files(Path(path))]
        parts = _Parts()
        seen: dict[str, Path] = {}
        for doc in docs:
            _add_document(parts, doc, seen)
        digest = hashlib.sha256("".join(d.digest for d in docs).encode()).hexdigest()
        return cls(parts, digest=digest, sources=[d.path for d in docs])

    def egress_allows(self, host: str, port: int | None = None) -> bool:
        """True when the host (and port, where the entry names ports) is on the allowlist: a
        name by the name entries, a bare IP address only by a range entry."""
        if (address := address_of(host)) is not None:
            return self.range_allows(address, port)
        if host.lower() in self._egress_any_port:
            return True
        return any(e.test(host) and (e.ports is None or port in e.ports) for e in self._egress)

    def egress_refusal(self, host: str, port: int | None) -> str | None:
        """Why the allowlist refuses the host (and port), or None when it allows it."""
        if self.egress_allows(host, port):
            return None
        if (address := address_of(host)) is not None:
            return f"{host}:{port} is a bare IP address, not on the egress allowlist; " + _add_range(address)
        return (
            f"{host}:{port} is not on the egress allowlist; "
            "add it to egress.allow in the rules if the agent should reach it"
        )

    def range_allows(self, address: Address, port: int | None) -> bool:
        """True when a range entry of the allowlist holds the address (and port)."""
        return any(r.allows(address, port) for r in self._ranges)

    def address_refusal(self, host: str, address: Address, port: int | None) -> str | None:
        """Why the connection for `host` may not go to `address`, or None when it may: a range
        entry allows any address; otherwise a name reaches only public addresses."""
        if self.range_allows(address, port):
            return None
        if address_of(host) is not None:
            return f"{host}:{port} is a bare IP address, not on the egress allowlist; " + _add_range(address)
        kind = non_public(address)
        if kind is None:
            return None
        return f"{host} resolves to {address}, a {kind} address; " + _add_range(address)

    def check_address(
        self, decision: Decision, host: str, port: int, addresses: list[Address]
    ) -> tuple[Address | None, Decision]:
        """The address a connection for `host` may go to (the first the rules allow) and the
        decision once the addresses are known: a refusal when none is allowed (a log entry
        saying so in report mode)."""
        refusals = []
        for address in addresses:
            if (why := self.address_refusal(host, address, port)) is None:
                return address, decision
            refusals.append(why)
        if not refusals or decision.refused:
            return None, decision
        if self.egress_report:
            return addresses[0], Decision(Verdict.LOG, EGRESS_RULE, f"report only: {refusals[0]}")
        return None, Decision(Verdict.DENY, EGRESS_RULE, "; ".join(dict.fromkeys(refusals)), "egress_denied")

    def egress_decision(self, action: Action) -> Decision | None:
        """What egress says of the action: None when it may go (a named upstream always may),
        else a refusal, or in report mode a log entry saying what would be refused. The host
        is checked by name and, where the action carries them, by its addresses."""
        if action.upstream is not None:
            return None
        message = self.egress_refusal(action.host, action.port)
        if message is None:
            if not action.addresses:
                return None
            _, by_address = self.check_address(UNREFUSED, action.host, action.port, list(action.addresses))
            return None if by_address is UNREFUSED else by_address
        if self.egress_report:
            return Decision(Verdict.LOG, EGRESS_RULE, f"report only: {message}")
        return Decision(Verdict.DENY, EGRESS_RULE, message, "egress_denied")

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
        """Decide an action (see the module docstring for the order)."""
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
            decision = self._decision(winner.verdict, winner.id, winner.message)
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
            decision = self._decision(verdict, rule_id, "")
            reason = f"no rule matched; defaults.{action.effect.value} is {verdict.value}"
        if setter is not None:
            reason = f"rule {setter.id} makes it {action.effect.value}; {reason}"
        if reported is not None and not decision.refused:
            decision = reported
            reason += "; egress is in report mode and would refuse the host"
        dedup = next((r.dedup for r in matched if r.dedup is not None), None)
        storm = next((r.storm for r in matched if r.storm is not None), None)
        if dedup is not None or storm is not None:
            decision = dataclasses.replace(decision, dedup=dedup, storm=storm)
        return Explanation(action, egress, matched, decision, reason)

    @staticmethod
    def _decision(verdict: Verdict, rule: str | None, message: str) -> Decision:
        if verdict is Verdict.DENY:
            return Decision(Verdict.DENY, rule, message or f"rule {rule} denies this action", "denied")
        if verdict is Verdict.HOLD:
            # Votes are not available yet: a held action is refused, and says so.
            held = (
                f"{rule} holds this action for votes, which this proxy cannot take yet; it was not executed"
            )
            return Decision(Verdict.DENY, rule, f"{message} {held}".strip(), "held")
        return Decision(verdict, rule, message)

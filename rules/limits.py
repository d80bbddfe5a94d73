"""What a rule says about coordination between agents: a lock its actions hold, and a limit on
how many of them pass per sliding window (the proxy enforces both in the step that writes an
action's intent: proxy/core/coordination.py)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .action import Action
from .decision import Verdict
from .repeats import seconds
from .templates import KeyTemplate

DEFAULT_LOCK_WAIT = 30.0  # seconds a second action on a locked key waits before it is refused


@dataclass(frozen=True, slots=True)
class Lock:
    """A lock on the key `key` renders for an action, held across every agent for the action's
    duration, or with `hold` for that long across the actions of one session; a second action
    on the key waits up to `wait` seconds, then is refused (409). An action whose key cannot be
    rendered (a field it names is missing) locks the rule as a whole."""

    rule: str
    key: KeyTemplate
    wait: float = DEFAULT_LOCK_WAIT
    hold: float | None = None

    def key_of(self, action: Action) -> str:
        """The lock's key for an action."""
        rendered = self.key.render(action)
        return f"{self.rule}|{rendered}" if rendered is not None else f"{self.rule}|*"


class LimitScope(StrEnum):
    """Whose actions share one count."""

    AGENT = "agent"
    SESSION = "session"
    RULE = "rule"
    TARGET = "target"


@dataclass(frozen=True, slots=True)
class Limit:
    """At most `count` matching actions per `per` seconds, sliding, per `scope`; the action that
    would cross it is denied or held (`then`). A batch counts as its size."""

    rule: str
    count: int
    per: float
    scope: LimitScope = LimitScope.AGENT
    then: Verdict = Verdict.DENY

    def counts(self, action: Action) -> list[tuple[str, int]]:
        """The counters an action adds to and by how much: one per target for `target` scope
        (each target once), else one counter by the batch's size."""
        base = f"{self.rule}|{self.scope.value}"
        if self.scope is LimitScope.TARGET:
            return [(f"{base}|{t}", 1) for t in sorted(set(action.targets))] or [
                (f"{base}|{action.host}{action.path}", 1)
            ]
        weight = max(action.count or len(action.targets) or 1, 1)
        if self.scope is LimitScope.AGENT:
            return [(f"{base}|{action.agent}", weight)]
        if self.scope is LimitScope.SESSION:
            return [(f"{base}|{action.session or action.agent}", weight)]
        return [(base, weight)]


def parse_lock(rule: str, spec: str | dict[str, Any]) -> Lock:
    """A rule's `lock` value (schema-checked): a key template, or {key, wait, hold}."""
    if isinstance(spec, str):
        return Lock(rule, KeyTemplate(spec))
    hold = spec.get("hold")
    return Lock(
        rule,
        KeyTemplate(spec["key"]),
        seconds(spec.get("wait", DEFAULT_LOCK_WAIT)),
        seconds(hold) if hold is not None else None,
    )


def parse_limit(rule: str, spec: dict[str, Any]) -> Limit:
    """A rule's `limit` value (schema-checked)."""
    return Limit(
        rule,
        int(spec["count"]),
        seconds(spec["per"]),
        LimitScope(spec.get("scope", "agent")),
        Verdict(spec.get("then", "deny")),
    )

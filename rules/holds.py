"""A rule's hold policy: how many distinct voters must approve a held action, who may vote, how
long it may wait for a decision, and how long the agent's request waits on its connection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .repeats import seconds

DEFAULT_TIMEOUT = 15 * 60.0
DEFAULT_WAIT = 25.0


@dataclass(frozen=True, slots=True)
class Hold:
    """`quorum` approvals from distinct voters commit (any deny aborts); `voters`, when given,
    are the only names whose votes count; no decision by `timeout` seconds aborts; the agent's
    connection waits up to `wait` seconds for the decision."""

    quorum: int = 1
    voters: tuple[str, ...] = ()
    timeout: float = DEFAULT_TIMEOUT
    wait: float = DEFAULT_WAIT

    def may_vote(self, voter: str) -> bool:
        """True when `voter`'s vote counts under this policy."""
        return not self.voters or voter in self.voters

    def as_dict(self) -> dict[str, Any]:
        """The policy as the log records it with a held action's intent."""
        return {
            "quorum": self.quorum,
            "voters": list(self.voters),
            "timeout": self.timeout,
            "wait": self.wait,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Hold:
        """The policy a held action's intent recorded."""
        return cls(
            quorum=int(data.get("quorum", 1)),
            voters=tuple(str(v) for v in data.get("voters", ())),
            timeout=float(data.get("timeout", DEFAULT_TIMEOUT)),
            wait=float(data.get("wait", DEFAULT_WAIT)),
        )


DEFAULT_HOLD = Hold()


def parse_hold(spec: dict[str, Any]) -> Hold:
    """A rule's `hold` mapping (validated by the schema)."""
    return Hold(
        quorum=int(spec.get("quorum", 1)),
        voters=tuple(spec.get("voters", ())),
        timeout=seconds(spec["timeout"]) if "timeout" in spec else DEFAULT_TIMEOUT,
        wait=seconds(spec["wait"]) if "wait" in spec else DEFAULT_WAIT,
    )

"""Automated voters a rules file declares: a webhook, or a model speaking the OpenAI-compatible
chat completions API. A hold's `voters` list names them (and people); when an action is held,
the proxy asks each declared voter the hold names for its vote (see proxy/core/voters.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .repeats import seconds

WEBHOOK, LLM = "webhook", "llm"
DEFAULT_TIMEOUTS = {WEBHOOK: 10.0, LLM: 30.0}


@dataclass(frozen=True)
class Voter:
    """A declared voter: where it is asked (`url`), how long its answer may take, and the
    headers sent with the question (a value may name an environment variable as `${NAME}`,
    read when the question is sent). A model voter also names its `model` and `instructions`."""

    name: str
    url: str
    kind: str = WEBHOOK
    timeout: float = DEFAULT_TIMEOUTS[WEBHOOK]
    headers: Mapping[str, str] = field(default_factory=dict)
    model: str = ""
    instructions: str = ""


def parse_voter(name: str, spec: dict[str, Any]) -> Voter:
    """A `voters` entry (validated by the schema; a model voter's model and instructions are
    checked by the compiler)."""
    kind = spec.get("kind", WEBHOOK)
    return Voter(
        name=name,
        url=spec["url"],
        kind=kind,
        timeout=seconds(spec["timeout"]) if "timeout" in spec else DEFAULT_TIMEOUTS[kind],
        headers=dict(spec.get("headers", {})),
        model=spec.get("model", ""),
        instructions=spec.get("instructions", ""),
    )


def voter_problem(spec: dict[str, Any]) -> str | None:
    """What is wrong with a `voters` entry the schema takes, or None."""
    if spec.get("kind", WEBHOOK) == LLM:
        missing = [k for k in ("model", "instructions") if not spec.get(k)]
        if missing:
            return f"a voter of kind llm needs {' and '.join(missing)}"
    elif "model" in spec or "instructions" in spec:
        return "model and instructions belong to a voter with kind: llm"
    return None

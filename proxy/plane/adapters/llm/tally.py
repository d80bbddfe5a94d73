"""What a model's answer has said so far: the usage it reported, the tool calls it proposed
(their argument text kept within a budget), and the model that answered."""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.core.proposals import ProposedCall, Usage

# How a provider's usage fields become Usage: each provider counts cached input its own way.
Counting = Callable[[Mapping[str, Any]], Usage]


@dataclass
class _Call:
    name: str = ""
    id: str | None = None
    given: Any = None  # arguments given whole (Anthropic's start block, Gemini's args)
    text: list[str] = field(default_factory=list)  # argument fragments, in order
    dropped: bool = False  # its argument text went past the budget


class Tally:
    """The answer as read so far. `arguments_limit` bounds the argument text kept across all
    the calls, and `calls_limit` the number of calls."""

    def __init__(self, *, arguments_limit: int, calls_limit: int = 1024) -> None:
        self.model: str | None = None
        self.problem: str | None = None
        self._usage: dict[str, Any] | None = None
        self._counting: Counting | None = None
        self._calls: dict[Hashable, _Call] = {}
        self._arguments_left = arguments_limit
        self._calls_limit = calls_limit

    def note(self, problem: str) -> None:
        """Record why (part of) the answer could not be read; the first reason stays."""
        self.problem = self.problem or problem

    def saw_model(self, model: Any) -> None:
        """The model the answer names, when it names one."""
        if isinstance(model, str) and model:
            self.model = model

    def saw_usage(self, fields: Any, counting: Counting) -> None:
        """Usage fields from the answer: later fields of the same kind update earlier ones (a
        stream's final event completes its first)."""
        if not isinstance(fields, dict):
            return
        if self._counting is not counting or self._usage is None:
            self._usage, self._counting = {}, counting
        self._usage.update(fields)

    def usage(self) -> Usage | None:
        """The usage reported, in Airlock's terms; None when the answer reported none."""
        if self._usage is None or self._counting is None:
            return None
        return self._counting(self._usage)

    def call(self, key: Hashable, *, name: Any = None, id: Any = None, given: Any = None) -> None:
        """A tool call starts (or is told again, whole): its name, id and any arguments given."""
        found = self._calls.get(key)
        if found is None:
            if len(self._calls) >= self._calls_limit:
                self.note(
                    f"the answer proposes more than {self._calls_limit} tool calls: the rest were not kept"
                )
                return
            found = self._calls[key] = _Call()
        if isinstance(name, str) and name:
            found.name = name
        if isinstance(id, str) and id:
            found.id = id
        if given is not None:
            self._arguments_left += sum(len(t) for t in found.text)
            found.text = []
            if isinstance(given, str):
                self.arguments(key, given)
            else:
                found.given = given

    def arguments(self, key: Hashable, fragment: Any) -> None:
        """More of a tool call's argument text."""
        found = self._calls.get(key)
        if found is None or found.dropped or not isinstance(fragment, str) or not fragment:
            return
        if len(fragment) > self._arguments_left:
            found.dropped = True
            self._arguments_left += sum(len(t) for t in found.text)
            found.text = []
            self.note("a tool call's arguments are larger than the answer reader keeps: they were not kept")
            return
        self._arguments_left -= len(fragment)
        found.text.append(fragment)

    def calls(self) -> tuple[ProposedCall, ...]:
        """The tool calls proposed so far, in the order they started."""
        out = []
        for found in self._calls.values():
            if not found.name:
                continue
            arguments = None if found.dropped else parsed("".join(found.text)) if found.text else found.given
            out.append(ProposedCall(found.name, arguments, found.id))
        return tuple(out)


def parsed(text: str) -> Any:
    """Arguments sent as text: the JSON document they hold, or the text itself."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


def count(fields: Mapping[str, Any], *names: str) -> int:
    """The sum of the named fields that are counts (a dotted name reaches into an object)."""
    total = 0
    for name in names:
        value: Any = fields
        for part in name.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            total += value
    return total

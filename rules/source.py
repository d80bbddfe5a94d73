"""Reading rule files: YAML in, validated documents out, errors as `file:line:col: field: why`."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

# libyaml's parser where PyYAML was built with it (several times faster), else the pure one.
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class RulesError(Exception):
    """Rule files that are missing, unreadable or invalid: every problem found, one a line, each
    naming file, line and field."""

    def __init__(self, *problems: str):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Problem:
    """One mistake in a rule file: the line saying where and why, and its place for ordering."""

    text: str  # file:line:col: field: why
    line: int = 0
    column: int = 0


@dataclass(frozen=True)
class Document:
    """One parsed rule file checked against the schema, with its YAML nodes for pointing at
    lines and what the schema found wrong."""

    path: Path
    content: dict[str, Any]
    digest: str
    node: yaml.Node | None = None
    problems: tuple[Problem, ...] = ()  # what the schema finds wrong, in the order of the file
    invalid: tuple[tuple[str | int, ...], ...] = ()  # the fields it finds wrong, as steps

    def problem(self, steps: list[str | int], message: str) -> Problem:
        """A problem with the value at `steps`, as `file:line:col: field: message`."""
        return _problem(self.path, _node_at(self.node, steps), _field(steps), message)

    def valid(self, steps: list[str | int]) -> bool:
        """True when the schema finds nothing wrong in the value at `steps` or in a value that
        holds it (a mistake of the whole document, such as an unknown top-level key, leaves each
        part valid)."""
        at = tuple(steps)
        return not any(i and (at[: len(i)] == i or i[: len(at)] == at) for i in self.invalid)


@cache
def schema() -> dict[str, Any]:
    """The JSON Schema every rule file must satisfy (shipped as rules/schema.json)."""
    loaded: dict[str, Any] = json.loads(resources.files("rules").joinpath("schema.json").read_text())
    return loaded


def files(path: Path) -> list[Path]:
    """The rule files a path names: the file itself, or every *.yaml in a directory by name."""
    if path.is_dir():
        found = rule_files_in(path)
        if not found:
            raise RulesError(f"{path}: no *.yaml or *.yml rule files in this directory")
        return found
    if not path.exists():
        raise RulesError(f"{path}: no such rule file; pass an existing file or directory to --rules")
    return [path]


def rule_files_in(path: Path) -> list[Path]:
    """The rule files of a directory: every *.yaml and *.yml, in name order."""
    return sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def read(path: Path) -> Document:
    """Parse one rule file and check it against the schema; its `problems` say what the schema
    finds wrong. RulesError when it cannot be read or parsed at all."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise RulesError(f"{path}: cannot read the rule file: {e}") from e
    try:
        # One parse: the nodes (for line numbers in errors) and the data built from them.
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            content = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e)
        raise RulesError(f"{where}: not valid YAML: {problem}") from e
    if not isinstance(content, dict):
        raise RulesError(f"{path}:1:1: a rule file must be a mapping with at least 'version: 1'")
    validator = jsonschema.Draft202012Validator(schema(), format_checker=jsonschema.FormatChecker())
    # Each error the schema finds, at its most telling alternative: one problem per mistake.
    errors = [jsonschema.exceptions.best_match([e]) for e in validator.iter_errors(content)]
    found = {p.text: p for p in (_describe(path, node, e) for e in errors if e is not None)}
    return Document(
        path,
        content,
        hashlib.sha256(text.encode()).hexdigest(),
        node,
        problems=tuple(sorted(found.values(), key=lambda p: (p.line, p.column))),
        invalid=tuple(tuple(e.absolute_path) for e in errors if e is not None),
    )


def _field(steps: list[str | int]) -> str:
    return "".join(f"[{s}]" if isinstance(s, int) else f".{s}" for s in steps).lstrip(".") or "(top)"


def _problem(path: Path, node: yaml.Node | None, field: str, message: str) -> Problem:
    mark = node.start_mark if node is not None else None
    if mark is None:
        return Problem(f"{path}: {field}: {message}")
    line, column = mark.line + 1, mark.column + 1
    return Problem(f"{path}:{line}:{column}: {field}: {message}", line, column)


def _node_at(root: yaml.Node | None, steps: list[str | int]) -> yaml.Node | None:
    node = root
    for step in steps:
        if isinstance(node, yaml.MappingNode):
            value = next((v for k, v in node.value if k.value == step), None)
            if value is None:
                break
            node = value
        elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value):
            node = node.value[step]
        else:
            break
    return node


def _describe(path: Path, root: yaml.Node | None, error: jsonschema.ValidationError) -> Problem:
    steps: list[str | int] = list(error.absolute_path)
    node = _node_at(root, steps)
    field, message = _field(steps), error.message
    if error.validator == "additionalProperties" and isinstance(node, yaml.MappingNode):
        # Point at the unknown key itself, not at the mapping that holds it.
        known = set(error.schema.get("properties", {}))
        unknown = next((k for k, _ in node.value if k.value not in known), None)
        if unknown is not None:
            node = unknown
            field = _field([*steps, unknown.value])
            message = f"unknown key {unknown.value!r} (known: {', '.join(sorted(known))})"
    elif error.validator == "enum":
        message = f"{error.instance!r} is not one of {', '.join(map(str, error.validator_value))}"
    elif error.validator == "format" and error.validator_value == "regex":
        message = f"{error.instance!r} is not a valid regular expression"
    elif error.validator == "pattern" and "title" in error.schema:
        message = f"{error.instance!r} is not {error.schema['title']}"
    elif error.validator in ("anyOf", "oneOf"):
        message = _alternatives(error)
    return _problem(path, node, field, message)


def _alternatives(error: jsonschema.ValidationError) -> str:
    """`needs one of: a, b` for alternatives of required keys, else what the value may be."""
    branches: list[dict[str, Any]] = error.validator_value
    if all(set(b) == {"required"} for b in branches):
        return "needs one of: " + ", ".join(k for b in branches for k in b["required"])
    kinds = []
    for b in branches:
        if "const" in b:
            kinds.append(repr(b["const"]))
        elif "enum" in b:
            kinds.extend(repr(v) for v in b["enum"])
        elif "type" in b:
            kinds.append({"object": "a mapping", "array": "a list"}.get(b["type"], f"a {b['type']}"))
    if not kinds:
        return str(error.message)
    return f"{error.instance!r} is not valid here: use " + " or ".join(kinds)

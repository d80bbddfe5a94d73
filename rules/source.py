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


class RulesError(Exception):
    """A rule file is missing, unreadable or invalid; the message names file, line and field."""


@dataclass(frozen=True)
class Document:
    """One parsed and validated rule file."""

    path: Path
    content: dict[str, Any]
    digest: str


@cache
def schema() -> dict[str, Any]:
    """The JSON Schema every rule file must satisfy (shipped as rules/schema.json)."""
    loaded: dict[str, Any] = json.loads(resources.files("rules").joinpath("schema.json").read_text())
    return loaded


def files(path: Path) -> list[Path]:
    """The rule files a path names: the file itself, or every *.yaml in a directory by name."""
    if path.is_dir():
        found = sorted(p for p in path.glob("*.yaml") if p.is_file())
        if not found:
            raise RulesError(f"{path}: no *.yaml rule files in this directory")
        return found
    if not path.exists():
        raise RulesError(f"{path}: no such rule file; pass an existing file or directory to --rules")
    return [path]


def read(path: Path) -> Document:
    """Parse and validate one rule file."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise RulesError(f"{path}: cannot read the rule file: {e}") from e
    try:
        node = yaml.compose(text)
        content = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e)
        raise RulesError(f"{where}: not valid YAML: {problem}") from e
    if not isinstance(content, dict):
        raise RulesError(f"{path}:1:1: a rule file must be a mapping with at least 'version: 1'")
    validator = jsonschema.Draft202012Validator(schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(content))
    if error is not None:
        raise RulesError(_describe(path, node, error))
    return Document(path, content, hashlib.sha256(text.encode()).hexdigest())


def _describe(path: Path, root: yaml.Node | None, error: jsonschema.ValidationError) -> str:
    steps = list(error.absolute_path)
    field = "".join(f"[{s}]" if isinstance(s, int) else f".{s}" for s in steps).lstrip(".") or "(top)"
    node, key_node = root, None
    for step in steps:
        if isinstance(node, yaml.MappingNode):
            pair = next(((k, v) for k, v in node.value if k.value == step), None)
            if pair is None:
                break
            key_node, node = pair
        elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value):
            key_node, node = None, node.value[step]
        else:
            break
    message = error.message
    if error.validator == "additionalProperties" and isinstance(node, yaml.MappingNode):
        # Point at the unknown key itself, not at the mapping that holds it.
        known = set(error.schema.get("properties", {}))
        unknown = next((k for k, _ in node.value if k.value not in known), None)
        if unknown is not None:
            node = unknown
            field = f"{field}.{unknown.value}" if steps else unknown.value
            message = f"unknown key {unknown.value!r} (known: {', '.join(sorted(known))})"
    elif error.validator == "enum":
        message = f"{error.instance!r} is not one of {', '.join(map(str, error.validator_value))}"
    at = node if node is not None else key_node
    mark = at.start_mark if at is not None else None
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
    return f"{where}: {field}: {message}"

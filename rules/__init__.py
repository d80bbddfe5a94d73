"""The rule engine: the normalized Action, rule files and their schema, and the evaluator.

Knows nothing of flows or LMDB; the proxy builds an Action and asks `Ruleset.evaluate`.
"""

from importlib import resources
from pathlib import Path

from .action import Action, Effect
from .decision import Decision, Verdict
from .ruleset import EGRESS_RULE, Explanation, Rule, Ruleset
from .source import RulesError, rule_files_in


def default_path() -> Path:
    """The shipped starter rule file, rules/default.yaml."""
    return Path(str(resources.files("rules").joinpath("default.yaml")))


__all__ = [
    "EGRESS_RULE",
    "Action",
    "Decision",
    "Effect",
    "Explanation",
    "Rule",
    "RulesError",
    "Ruleset",
    "Verdict",
    "default_path",
    "rule_files_in",
]

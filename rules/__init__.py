"""The rule engine: the normalized Action, rule files and their schema, and the evaluator.

Knows nothing of flows or LMDB; the proxy builds an Action and asks `Ruleset.decide` (or
`Ruleset.explain`, which also says why). Everything outside the package imports from here.
"""

from importlib import resources
from pathlib import Path

from .action import Action, Effect, Inference, Kube
from .addresses import Address, address_of, non_public
from .allowlist import EGRESS_RULE, Allowlist
from .body import bom_codec
from .budgets import Budget, BudgetScope
from .decision import ALLOWED, PRECEDENCE, Decision, Verdict
from .holds import DEFAULT_HOLD, Hold
from .limits import Limit, LimitScope, Lock
from .parsed import BODIES, ParsedBodies, ParsedJson, json_of
from .readings import Readings, readings_of
from .repeats import (
    Dedup,
    StatusSet,
    Storm,
    VerifyRead,
    duration_text,
    fingerprint,
    parse_dedup,
    seconds,
    signed_stably,
)
from .rule import Rule
from .ruleset import Explanation, Ruleset
from .source import RulesError, rule_files_in
from .templates import KeyTemplate, origin
from .voters import Voter


def default_path() -> Path:
    """The shipped starter rule file, rules/default.yaml."""
    return Path(str(resources.files("rules").joinpath("default.yaml")))


__all__ = [
    "ALLOWED",
    "BODIES",
    "DEFAULT_HOLD",
    "EGRESS_RULE",
    "PRECEDENCE",
    "Action",
    "Address",
    "Allowlist",
    "Budget",
    "BudgetScope",
    "Decision",
    "Dedup",
    "Effect",
    "Explanation",
    "Hold",
    "Inference",
    "KeyTemplate",
    "Kube",
    "Limit",
    "LimitScope",
    "Lock",
    "ParsedBodies",
    "ParsedJson",
    "Readings",
    "Rule",
    "RulesError",
    "Ruleset",
    "StatusSet",
    "Storm",
    "Verdict",
    "VerifyRead",
    "Voter",
    "address_of",
    "bom_codec",
    "default_path",
    "duration_text",
    "fingerprint",
    "json_of",
    "non_public",
    "origin",
    "parse_dedup",
    "readings_of",
    "rule_files_in",
    "seconds",
    "signed_stably",
]

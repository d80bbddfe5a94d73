"""The log: an append-only, hash-chained sequence of entries in LMDB, and its indexes.

Knows nothing of HTTP or rules: it stores plain records about numbered actions.
"""

from .entry import Entry
from .errors import Altered, NoLog, StateError, StoreError, StoreFull, UnknownAction
from .keys import Claim, KeyTaken, Settle
from .log import ActionRef, Log, Record
from .states import State
from .verify import Verdict, parse_head

__all__ = [
    "ActionRef",
    "Altered",
    "Claim",
    "Entry",
    "KeyTaken",
    "Log",
    "NoLog",
    "Record",
    "Settle",
    "State",
    "StateError",
    "StoreError",
    "StoreFull",
    "UnknownAction",
    "Verdict",
    "parse_head",
]

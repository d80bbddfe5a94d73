"""The log: an append-only, hash-chained sequence of entries in LMDB, and its indexes.

Knows nothing of HTTP or rules: it stores plain records about numbered actions.
"""

from .errors import NoLog, StateError, StoreError, StoreFull, UnknownAction
from .keys import Claim, KeyTaken, Settle
from .log import ActionRef, Entry, Log, Record, Verdict
from .states import State

__all__ = [
    "ActionRef",
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
]

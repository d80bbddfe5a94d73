"""The log: an append-only, hash-chained sequence of entries in LMDB, and its indexes.

Knows nothing of HTTP or rules: it stores plain records about numbered actions.
"""

from .entry import Entry
from .errors import Altered, NoLog, StateError, StoreError, StoreFull, UnknownAction
from .freeze import FreezeState, Frozen
from .keys import Claim, KeyOutcome, KeyTaken
from .log import Log
from .query import Query
from .record import ActionRef, Record
from .signing import Signer, parse_public, public_text, signature_ok
from .states import State
from .verify import ChainReport, parse_head

__all__ = [
    "ActionRef",
    "Altered",
    "ChainReport",
    "Claim",
    "Entry",
    "FreezeState",
    "Frozen",
    "KeyOutcome",
    "KeyTaken",
    "Log",
    "NoLog",
    "Query",
    "Record",
    "Signer",
    "State",
    "StateError",
    "StoreError",
    "StoreFull",
    "UnknownAction",
    "parse_head",
    "parse_public",
    "public_text",
    "signature_ok",
]

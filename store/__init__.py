"""The log: an append-only, hash-chained sequence of entries in LMDB, and its indexes.

Knows nothing of HTTP or rules: it stores plain records about numbered actions.
"""

from .checkpoints import record as checkpoint_record
from .coordinated import Fence, Fenced, LimitCheck, LimitReached, LockClaim, Locked, when
from .entry import Entry
from .errors import Altered, NoLog, StateError, StoreError, StoreFull, UnknownAction
from .freeze import FreezeState, Frozen
from .keys import Claim, KeyOutcome, KeyTaken
from .locks import LockInfo
from .locks import release as release_lock
from .log import Log
from .prune import Retention, removed_bytes
from .pruned import Pruned
from .query import Query
from .record import ActionRef, Record
from .recovery import INERT
from .sessions import SessionInfo, session_ended, session_started, takeover
from .signing import (
    KEY_FILE,
    SIGNATURE,
    PublicKey,
    Signer,
    parse_public,
    public_text,
    signature_ok,
    signed_payload,
)
from .states import State
from .usage import Usage
from .verify import ChainReport, parse_head
from .verify_archive import ArchiveReport, check_archive

__all__ = [
    "INERT",
    "KEY_FILE",
    "SIGNATURE",
    "ActionRef",
    "Altered",
    "ArchiveReport",
    "ChainReport",
    "Claim",
    "Entry",
    "Fence",
    "Fenced",
    "FreezeState",
    "Frozen",
    "KeyOutcome",
    "KeyTaken",
    "LimitCheck",
    "LimitReached",
    "LockClaim",
    "LockInfo",
    "Locked",
    "Log",
    "NoLog",
    "Pruned",
    "PublicKey",
    "Query",
    "Record",
    "Retention",
    "SessionInfo",
    "Signer",
    "State",
    "StateError",
    "StoreError",
    "StoreFull",
    "UnknownAction",
    "Usage",
    "check_archive",
    "checkpoint_record",
    "parse_head",
    "parse_public",
    "public_text",
    "release_lock",
    "removed_bytes",
    "session_ended",
    "session_started",
    "signature_ok",
    "signed_payload",
    "takeover",
    "when",
]

"""What a caller asks the log to append: a record about an action, before it is an entry."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .coordinated import MAX_COORD_KEY_BYTES, Fence, LimitCheck, LockClaim
from .errors import StoreError, UnknownAction
from .keys import MAX_KEY_BYTES, Claim, KeyOutcome
from .states import State
from .stored import in_range

if TYPE_CHECKING:
    from .entry import Entry
    from .view import View


@dataclass
class ActionRef:
    """A handle on an action; the writer fills in `id` when the action's first entry is written."""

    id: int | None = None


@dataclass(frozen=True)
class Record:
    """An entry to append: what happened, to which action, the state it moves to, and the
    summary fields it sets on the action's index (hashed into the entry with the rest).

    `new_action` makes it the first entry of a new action (the writer assigns the id and may
    claim `claim`'s idempotency key, else KeyTaken); `if_state` applies it only to an action in
    that state now (else StateError); `key_outcome` keeps or releases the action's key;
    `unless_frozen` writes it only while the log is not frozen (else Frozen); `sign` signs the
    entry in the transaction that writes it (store/signing.py: the signature covers its seq,
    the hash before it, its kind and data) and the signature is kept in its data; `then` makes
    further changes in the transaction that writes the entry, once it is written (a prune's
    deletions): if it raises, neither the entry nor the changes are kept.

    Coordination (store/coordinated.py), checked and applied in the transaction that writes the
    entry, in this order, all or nothing: `fence` refuses it (Fenced) when its session is stale;
    `lock` takes a lock (else Locked); `limits` count its weight (else LimitReached, naming
    the first limit it would cross). The entry's data records them (`fence`, `lock`, `limits`)."""

    kind: str
    action: ActionRef | None = None
    state: State | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    summary: Mapping[str, Any] = field(default_factory=dict)
    new_action: bool = False
    if_state: State | None = None
    claim: Claim | None = None
    key_outcome: KeyOutcome | None = None
    unless_frozen: bool = False
    sign: Callable[[bytes], str] | None = None
    then: Callable[[View, Entry], None] | None = None
    fence: Fence | None = None
    lock: LockClaim | None = None
    limits: tuple[LimitCheck, ...] = ()

    def check(self) -> None:
        """Refuse a record that cannot be written, before it joins a transaction."""
        ref = self.action
        if ref is not None and not self.new_action and ref.id is not None and not in_range(ref.id):
            raise UnknownAction(f"no action {ref.id} in the log")
        if self.claim is not None and len(self.claim.key.encode()) > MAX_KEY_BYTES:
            raise StoreError(f"an idempotency key longer than {MAX_KEY_BYTES} bytes cannot be stored")
        keys = ([self.lock.key] if self.lock is not None else []) + [limit.key for limit in self.limits]
        if any(len(key.encode()) > MAX_COORD_KEY_BYTES for key in keys):
            raise StoreError(f"a lock or limit key longer than {MAX_COORD_KEY_BYTES} bytes cannot be stored")
        if self.lock is not None and self.lock.hold is None and ref is None:
            raise StoreError("a lock for an action's duration needs an action")
        if any(limit.weight < 0 or limit.maximum < 0 or limit.window <= 0 for limit in self.limits):
            raise StoreError("a limit needs a weight and maximum of at least 0 and a window above 0")

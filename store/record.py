"""What a caller asks the log to append: a record about an action, before it is an entry."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

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
    deletions): if it raises, neither the entry nor the changes are kept."""

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

    def check(self) -> None:
        """Refuse a record that cannot be written, before it joins a transaction."""
        ref = self.action
        if ref is not None and not self.new_action and ref.id is not None and not in_range(ref.id):
            raise UnknownAction(f"no action {ref.id} in the log")
        if self.claim is not None and len(self.claim.key.encode()) > MAX_KEY_BYTES:
            raise StoreError(f"an idempotency key longer than {MAX_KEY_BYTES} bytes cannot be stored")

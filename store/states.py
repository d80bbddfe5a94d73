"""The one vocabulary of action states, and which moves between them the log accepts."""

from enum import StrEnum


class State(StrEnum):
    """Where an action stands; every entry that moves an action names its new state."""

    PENDING = "pending"  # intent durable, request in flight
    COMMITTED = "committed"  # outcome recorded, whatever the status code
    FAILED = "failed"  # no response: upstream error or timeout
    DENIED = "denied"  # refused before anything went upstream
    IN_DOUBT = "in_doubt"  # intent durable, outcome never recorded (crash)
    HELD = "held"  # waiting for votes
    APPROVED = "approved"  # a commit decision: it runs when its request is sent (again)
    ABORTED = "aborted"  # will not (or did not) run: rejected, or resolved as not executed
    FENCED = "fenced"  # refused because its agent session is stale
    REPLAYED = "replayed"  # answered from the log instead of executing again


# A new action may start in any of these states.
INITIAL = frozenset({State.PENDING, State.DENIED, State.HELD, State.FENCED, State.REPLAYED})

# Moves an existing action may make; anything else is refused by the writer.
MOVES: dict[State, frozenset[State]] = {
    State.PENDING: frozenset({State.COMMITTED, State.FAILED, State.IN_DOUBT}),
    # A decision moves a held action: commit to approved, abort to aborted; an approved action
    # runs once (pending) or, not sent again before its hold's timeout, is aborted.
    State.HELD: frozenset({State.APPROVED, State.ABORTED}),
    State.APPROVED: frozenset({State.PENDING, State.ABORTED}),
    State.IN_DOUBT: frozenset({State.COMMITTED, State.ABORTED}),
}

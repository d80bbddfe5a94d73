"""Errors the log raises; each says what failed and what to do next."""


class StoreError(Exception):
    """The log could not be read or written."""


class StoreFull(StoreError):
    """The log's map is full and could not grow: nothing more can be made durable."""


class NoLog(StoreError):
    """There is no log at the given place yet."""


class StateError(StoreError):
    """An entry asked for a move between states that the log does not allow."""


class UnknownAction(StoreError):
    """An entry named an action the log has never seen."""


class Altered(StoreError):
    """A record of the log is malformed or disagrees with the chain: the file was altered or damaged."""

    def __init__(self, what: str):
        super().__init__(f"the log was altered or damaged: {what}; run `airlock verify` for details")
        self.what = what

"""Errors of the proxy process that are the user's to fix."""


class StartupError(Exception):
    """The proxy could not start; the message says what to change."""


class CAFileError(ValueError):
    """A CA file given on the command line is unusable; the message names it."""

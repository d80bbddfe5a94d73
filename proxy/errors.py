"""Errors of the proxy process that are the user's to fix."""


class StartupError(Exception):
    """The proxy could not start; the message says what to change."""

"""Routing agents through Airlock: the environment for `exec`, transparent capture, and isolation
in a network namespace."""

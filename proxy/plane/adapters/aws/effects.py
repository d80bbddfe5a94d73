"""The effect of an AWS operation, from its name: reads for Get*, List*, Describe*, Head*,
Query, Scan, BatchGet*, Select*; destructive for Delete*, Terminate*, Remove*, Drop*, Purge*,
Detach*, Revoke*; every other operation writes (PutObject onto a key that exists is not guessed)."""

from __future__ import annotations

import re

from rules import Effect

_READ = re.compile(r"^(?:(?:Get|List|Describe|Head|BatchGet|Select)(?:[A-Z0-9]|$)|Query$|Scan$)")
_DESTRUCTIVE = re.compile(r"^(?:Delete|Terminate|Remove|Drop|Purge|Detach|Revoke)(?:[A-Z0-9]|$)")


def effect_of(operation: str) -> Effect:
    """What an operation does to the world, read from its name."""
    if _DESTRUCTIVE.match(operation):
        return Effect.DESTRUCTIVE
    if _READ.match(operation):
        return Effect.READ
    return Effect.WRITE

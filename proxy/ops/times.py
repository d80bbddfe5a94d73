"""Points in time as a person gives them: an ISO 8601 time, or an age before now (`30m`, `2h`,
`7d`). `airlock log --since`, the control API's `since` and `airlock export --since` read them
here, so each takes the same forms."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

_AGE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> float:
    """A length of time in seconds: a number and a unit (s, m, h, d, w), e.g. 90s, 2h, 7d;
    ValueError saying the form."""
    age = _AGE.fullmatch(text.strip())
    if age is None:
        raise ValueError(f"{text!r} is not an age (a number and s, m, h, d or w, e.g. 2h or 7d)")
    return float(age[1]) * _SECONDS[age[2]]


def parse_time(text: str, now: float | None = None) -> float:
    """The Unix time `text` names: an ISO 8601 time (UTC unless it gives an offset) or an age
    before `now` (default: the clock now); ValueError saying which forms are taken."""
    given = text.strip()
    if _AGE.fullmatch(given):
        return (time.time() if now is None else now) - parse_age(given)
    try:
        moment = datetime.fromisoformat(given)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a time (ISO 8601, e.g. 2026-11-30T14:00:00Z) nor an age "
            "(a number and s, m, h, d or w, e.g. 2h or 7d)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()

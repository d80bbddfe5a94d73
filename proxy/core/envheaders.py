"""Header values that name environment variables as `${NAME}`: how a verify read or a voter
sends a credential the log never holds. The values are read when the request is sent."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def resolved(templates: Mapping[str, str], named_by: str) -> dict[str, str]:
    """The headers with each `${NAME}` replaced by the environment's value; LookupError naming
    the variable and `named_by` (who declared the header) when one is not set."""

    def value(m: re.Match[str]) -> str:
        if m[1] not in os.environ:
            raise LookupError(f"environment variable {m[1]} is not set (named by a header of {named_by})")
        return os.environ[m[1]]

    return {name: _ENV.sub(value, template) for name, template in templates.items()}

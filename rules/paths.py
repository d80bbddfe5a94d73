"""A request path as the servers behind the proxy could resolve it.

The first reading is the standard one (percent-escapes decoded, dot segments removed, repeated
slashes collapsed). The others are what common servers make of the same bytes: escapes decoded
again (`%252e%252e`), escapes decoded only inside a segment so an encoded `%2f` stays part of it,
`;` parameters cut from each segment (Tomcat, Spring: `/a/..;/prod`), and backslashes read as
slashes (IIS). Case is not a reading here: match fields compare paths without case as well.
"""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import unquote

MAX_DECODES = 3  # percent-decoding rounds tried for double (and triple) encoded paths


def _resolve(segments: list[str], trailing: bool) -> str:
    out: list[str] = []
    for segment in segments:
        if segment == "..":
            if out:
                out.pop()
        elif segment not in ("", "."):
            out.append(segment)
    return "/" + "/".join(out) + ("/" if trailing and out else "")


@lru_cache(maxsize=256)
def normalized_path(path: str) -> str:
    """The path as a server resolves it: percent-escapes decoded, dot segments removed and
    repeated slashes collapsed, so an encoded or padded path cannot slip past a path rule."""
    decoded = unquote(path)
    return _resolve(decoded.split("/"), decoded.endswith("/"))


def _decoded_again(path: str) -> str:
    for _ in range(MAX_DECODES):
        decoded = unquote(path)
        if decoded == path:
            break
        path = decoded
    return path


def _variants(raw: str) -> list[tuple[str, bool]]:
    """(text to split on "/", already percent-decoded) for each decoding a server may apply."""
    return [(raw, False), (_decoded_again(raw), True)]


@lru_cache(maxsize=256)
def path_readings(path: str) -> tuple[str, ...]:
    """Every path a common upstream could resolve `path` to, the standard reading first."""
    out = [normalized_path(path)]
    for raw in (path, path.replace("\\", "/")):
        for text, decoded in _variants(raw):
            for cut in (False, True):
                segments = text.split("/")
                if not decoded:
                    segments = [unquote(s) for s in segments]  # "%2f" stays inside its segment
                if cut:
                    segments = [s.split(";", 1)[0] for s in segments]
                out.append(_resolve(segments, text.endswith("/")))
                if decoded:
                    # The decoded text may hold new slashes and backslashes: read them too.
                    alt = [p.split(";", 1)[0] if cut else p for p in text.replace("\\", "/").split("/")]
                    out.append(_resolve(alt, text.endswith("/")))
    return tuple(dict.fromkeys(out))

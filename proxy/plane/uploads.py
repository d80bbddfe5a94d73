"""Request bodies too large to read whole: decided at their headers, then streamed upstream.

mitmproxy reads a request body whole before its `request` hook, so a large upload would sit in
memory whole (and the gate would read it whole again). A body whose Content-Length is past the
limit (`airlock run --stream-above`), or that declares no length (HTTP/1 chunked), is instead
decided when its headers arrive, without its body: the action records that its body streams
unread, so a deny or hold rule that must read a body (`body`, `text`, `args`, a `target` named
in the body) counts it as matching when the action mutates, and refuses it, saying which limit
to raise. Once the intent is written (durably, for a mutating action), mitmproxy streams the
body upstream chunk by chunk through a meter, and the outcome records its size and SHA-256.

mitmproxy cannot turn a body it has started to buffer into a stream with a hook before the
headers go upstream (its `stream_large_bodies` sends them unannounced), so a chunked body is
decided at its headers whatever its size.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from mitmproxy import http

from proxy.core.tracking import Meter
from proxy.ops.config import STREAM_ABOVE
from rules import Action

DEFAULT_ABOVE = STREAM_ABOVE  # bytes of a request body read whole; past this it streams unread


@dataclass(frozen=True, slots=True)
class Upload:
    """A request body that streams: its declared length (None: sent chunked, length unknown)."""

    length: int | None

    def problem(self, above: int) -> str:
        """Why rules cannot read this body, and what to do about it."""
        if self.length is None:
            return (
                "its body streams unread (sent chunked, with no Content-Length); send it with a "
                f"Content-Length within --stream-above ({size_text(above)}) to let rules read it"
            )
        return (
            f"its body ({self.length} bytes) streams past the {size_text(above)} inspection limit "
            "unread; raise --stream-above to let rules read it"
        )


def upload_of(request: http.Request, above: int) -> Upload | None:
    """The upload a request's body is when it must stream rather than be read whole, else None."""
    length = request.headers.get("content-length")
    if length is not None:
        length = length.strip()
        # A malformed length is mitmproxy's to refuse; it is not an upload.
        return Upload(int(length)) if length.isdigit() and int(length) > above else None
    if request.is_http2 or request.is_http3:
        # Without a length, HTTP/2 and 3 do not say in the headers whether a body follows:
        # such a body is read whole, as any other.
        return None
    chunked = "chunked" in request.headers.get("transfer-encoding", "").lower()
    return Upload(None) if chunked else None


def unseen(action: Action, upload: Upload, above: int) -> Action:
    """The action decided without its body, saying why the body was not read."""
    return dataclasses.replace(action, body=None, body_problem=upload.problem(above), body_streamed=True)


def stream_through(request: http.Request) -> Meter:
    """Let the request's body stream upstream through a new meter, which counts and hashes it."""
    meter = Meter()
    request.stream = meter
    return meter


def size_text(size: int) -> str:
    """A byte count as people write limits: 8 MiB, 512 KiB, 1000 bytes."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} bytes"

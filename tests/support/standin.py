"""A stand-in for AWS's answer, for tests that catch botocore's requests before they leave (AWS
cannot be reached from here): an empty success body each protocol's parser takes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


class RawBody:
    """The raw body of the stand-in answer: what botocore reads as the response stream."""

    def __init__(self, body: bytes = b"") -> None:
        self.body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        """The body in one chunk."""
        yield self.body


def empty_success(protocol: str, operation: str) -> bytes:
    """An empty success body botocore parses without complaint for the service's protocol."""
    if protocol == "query":
        return f"<{operation}Response><{operation}Result/></{operation}Response>".encode()
    if protocol in ("rest-xml", "ec2"):
        return b"<Response/>"
    return b"{}"

"""A request body's Content-Encoding undone, within bounds.

Layers are undone last first (`Content-Encoding: gzip, br` was gzipped, then brotli'd), at most
`MAX_LAYERS` of them, each incrementally with an output cap, so a compressed body that expands
past `MAX_DECODED` is given up on after that many bytes, not expanded in full. A body that cannot
be decoded keeps its bytes as sent, with the reason: rules that must read it refuse a mutating
action (rules.readings).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import brotli  # type: ignore[import-untyped]

try:
    from compression import zstd  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # Python before 3.14
    from backports import zstd  # type: ignore[import-not-found,no-redef,unused-ignore]

MAX_LAYERS = 3
MAX_DECODED = 16 * 1024 * 1024  # bytes a request body may expand to
_CHUNK = 64 * 1024


class Undecodable(ValueError):
    """A body that cannot be decoded within bounds; the message says why."""


@dataclass(frozen=True, slots=True)
class Decoded:
    """The body to read, and why it is the body as sent when it could not be decoded."""

    body: bytes
    problem: str | None = None


def _zlib(data: bytes, wbits: int, limit: int, *, members: bool = False) -> bytes:
    out = bytearray()
    rest = data
    while rest:
        d = zlib.decompressobj(wbits)
        tail = rest
        while tail:
            out += d.decompress(tail, limit + 1 - len(out))
            if len(out) > limit:
                raise Undecodable(f"it expands past {limit} bytes")
            tail = d.unconsumed_tail
        if not d.eof:
            raise Undecodable("its compressed data ends early")
        # gzip readers go on to the next member of a multi-member stream; zlib readers stop.
        rest = d.unused_data if members else b""
    return bytes(out)


def _gzip(data: bytes, limit: int) -> bytes:
    return _zlib(data, 32 + zlib.MAX_WBITS, limit, members=True)  # a gzip or a zlib header


def _deflate(data: bytes, limit: int) -> bytes:
    try:
        return _zlib(data, zlib.MAX_WBITS, limit)
    except zlib.error:
        return _zlib(data, -zlib.MAX_WBITS, limit)  # raw deflate, as some clients send it


def _brotli(data: bytes, limit: int) -> bytes:
    d = brotli.Decompressor()
    out = bytearray(d.process(data, output_buffer_limit=limit + 1))
    while len(out) <= limit and not d.is_finished():
        more = d.process(b"", output_buffer_limit=limit + 1 - len(out))
        if not more:
            raise Undecodable("its compressed data ends early")
        out += more
    if len(out) > limit:
        raise Undecodable(f"it expands past {limit} bytes")
    return bytes(out)


def _zstd(data: bytes, limit: int) -> bytes:
    out = bytearray()
    rest = data
    while rest:
        d = zstd.ZstdDecompressor()
        out += d.decompress(rest, max_length=limit + 1 - len(out))
        while len(out) <= limit and not d.eof and d.needs_input is False:
            out += d.decompress(b"", max_length=limit + 1 - len(out))
        if len(out) > limit:
            raise Undecodable(f"it expands past {limit} bytes")
        if not d.eof:
            raise Undecodable("its compressed data ends early")
        rest = d.unused_data
    return bytes(out)


DECODERS: dict[str, Callable[[bytes, int], bytes]] = {
    "gzip": _gzip,
    "x-gzip": _gzip,
    "deflate": _deflate,
    "br": _brotli,
    "zstd": _zstd,
}


def layers(content_encoding: str | None) -> list[str]:
    """The encodings applied, in the order they were applied (`identity` left out)."""
    names = [n.strip().lower() for n in (content_encoding or "").split(",")]
    return [n for n in names if n and n != "identity"]


def decode(body: bytes, content_encoding: str | None, *, limit: int = MAX_DECODED) -> Decoded:
    """The body with every layer of its Content-Encoding undone, or as sent with the reason."""
    applied = layers(content_encoding)
    if not applied:
        return Decoded(body)
    header = f"Content-Encoding: {content_encoding}"
    if len(applied) > MAX_LAYERS:
        return Decoded(body, f"{header} has {len(applied)} layers, more than {MAX_LAYERS}")
    unknown = [n for n in applied if n not in DECODERS]
    if unknown:
        return Decoded(body, f"{header} names {unknown[0]!r}, an encoding airlock cannot decode")
    out = body
    try:
        for name in reversed(applied):
            out = DECODERS[name](out, limit)
    except Undecodable as e:
        return Decoded(body, f"the body ({header}) cannot be decoded: {e}")
    except (zlib.error, brotli.error, zstd.ZstdError) as e:
        return Decoded(body, f"the body ({header}) cannot be decoded: {e}")
    return Decoded(out)


class Unpacking:
    """A response body's Content-Encoding undone chunk by chunk, for a reader of the answer (the
    bytes passed on are never touched). One layer at most; a chunk that would expand past
    `limit` bytes, data that is corrupt, or an encoding it does not know make it stop, with
    the reason in `problem`, and give nothing more."""

    def __init__(self, content_encoding: str | None, *, limit: int = MAX_DECODED):
        self.limit = limit
        self.problem: str | None = None
        applied = layers(content_encoding)
        self._step: Callable[[bytes], bytes] | None = None
        if len(applied) > 1:
            self.problem = f"Content-Encoding: {content_encoding} has more than one layer"
        elif applied and applied[0] in ("gzip", "x-gzip", "deflate"):
            wbits = 32 + zlib.MAX_WBITS if applied[0] != "deflate" else zlib.MAX_WBITS
            z = zlib.decompressobj(wbits)
            self._step = lambda chunk: self._capped(z.decompress(chunk, limit + 1), bool(z.unconsumed_tail))
        elif applied and applied[0] == "br":
            b = brotli.Decompressor()
            self._step = lambda chunk: self._capped(b.process(chunk, output_buffer_limit=limit + 1), False)
        elif applied and applied[0] == "zstd":
            d = zstd.ZstdDecompressor()
            self._step = lambda chunk: self._capped(d.decompress(chunk, max_length=limit + 1), False)
        elif applied:
            self.problem = f"Content-Encoding: {content_encoding} is an encoding airlock cannot decode"

    def _capped(self, out: bytes, more: bool) -> bytes:
        if more or len(out) > self.limit:
            raise Undecodable(f"a chunk expands past {self.limit} bytes")
        return out

    def __call__(self, chunk: bytes) -> bytes:
        """The decoded bytes of the next chunk (none once it has stopped)."""
        if self.problem is not None:
            return b""
        if self._step is None:
            return chunk
        try:
            return self._step(chunk)
        except (Undecodable, zlib.error, brotli.error, zstd.ZstdError, EOFError) as e:
            self.problem = f"the answer cannot be decoded: {e}"
            return b""

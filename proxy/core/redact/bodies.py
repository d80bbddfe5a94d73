"""Request and response bodies redacted by what they are: JSON field by field, forms and
multipart parts by name, other text and binary data by value shape."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from rules import bom_codec

from .names import REDACTED, secret_field, secret_name
from .shapes import EVERYTHING, Look, text
from .values import query, walk


def body(data: bytes, content_type: str, *, parsed: Callable[[bytes], Any] | None = None) -> bytes:
    """A body (or the part of it the log keeps) with its credentials replaced: JSON field by field
    at any depth, forms and multipart parts by field name, other text and the printable runs of
    binary data by value shape. `parsed` is a JSON parser whose results may be shared. Text in
    UTF-16 or UTF-32 (by its BOM or charset) that had credentials comes back as UTF-8."""
    ctype = content_type.lower()
    if "multipart/form-data" in ctype and (boundary := _boundary(content_type)):
        return _multipart(data, boundary)
    decoded = _text_of(data, ctype)
    if decoded is None:
        # Binary: look for token shapes in its printable runs (latin-1 maps bytes one to one).
        as_latin = data.decode("latin-1")
        redacted = text(as_latin)
        return data if redacted is as_latin else redacted.encode("latin-1", errors="replace")
    if decoded.lstrip("\ufeff \t\r\n")[:1] in ("{", "["):
        value = (parsed or _loads)(data)
        if value is not None:
            return _json(data, decoded, value)
    redacted = query(decoded) if "x-www-form-urlencoded" in ctype else text(decoded)
    return data if redacted == decoded else redacted.encode()


def _json(data: bytes, raw: str, value: Any) -> bytes:
    # Every secret name holds a stem and every shape an anchor, so a look at the raw text says
    # what to search for; only a \u escape could hide them from it.
    look = EVERYTHING if "\\u" in raw else Look.at(raw)
    if not look:
        return data
    if _walk_may_change(raw, look):
        redacted = walk(value, look)
        if redacted is not value:
            return json.dumps(redacted, ensure_ascii=False, separators=(",", ":")).encode()
    # The walk saw the parsed document, in which a repeated key hides the values before it: the
    # raw text is searched too.
    cleaned = text(raw, look)
    return data if cleaned == raw else cleaned.encode()


# Past this many strings holding a credential word (or escaped quotes passed to find one's ends),
# walking the JSON is the cheaper way.
_STRINGS_LOOKED_AT = 64
_ESCAPED_QUOTES = 32
_FIELD_END = re.compile(r"[ \t\r\n]*:")


def _walk_may_change(raw: str, look: Look) -> bool:
    """False when a walk for `look`, which found only credential words, would change nothing:
    every string of the JSON text `raw` holding one of the words is a field name that is not a
    credential's or a value with no credential pair. Outside its strings JSON has only numbers,
    true, false and null, so every such word stands in one."""
    if look.shapes or look.stems is None:
        return True
    lowered = raw.lower()
    if len(lowered) != len(raw):
        return True
    seen: set[int] = set()
    for stem in look.stems:
        at = lowered.find(stem)
        while at >= 0:
            start, end = _quote_before(raw, at), _quote_after(raw, at)
            if start < 0 or end < 0:
                return True
            if start not in seen:
                if len(seen) >= _STRINGS_LOOKED_AT:
                    return True
                seen.add(start)
                string = _loads(raw[start : end + 1].encode())
                if type(string) is not str:
                    return True
                if _FIELD_END.match(raw, end + 1):
                    if secret_field(string):
                        return True
                elif text(string, look) != string:
                    return True
            at = lowered.find(stem, end + 1)
    return False


def _quote_before(raw: str, at: int) -> int:
    """Where the string of a JSON text around `at` opens (the first quote before it that no
    backslash escapes), or -1 (also past _ESCAPED_QUOTES escaped ones)."""
    quote = raw.rfind('"', 0, at)
    for _ in range(_ESCAPED_QUOTES):
        if quote <= 0 or not _escaped(raw, quote):
            return quote
        quote = raw.rfind('"', 0, quote)
    return -1


def _quote_after(raw: str, at: int) -> int:
    """Where the string of a JSON text around `at` closes, or -1 (also past _ESCAPED_QUOTES
    escaped ones)."""
    quote = raw.find('"', at)
    for _ in range(_ESCAPED_QUOTES):
        if quote < 0 or not _escaped(raw, quote):
            return quote
        quote = raw.find('"', quote + 1)
    return -1


def _escaped(raw: str, at: int) -> bool:
    backslashes = 0
    while at - backslashes > 0 and raw[at - backslashes - 1] == "\\":
        backslashes += 1
    return backslashes % 2 == 1


_CHARSET = re.compile(r"charset=\"?(utf-?(?:16|32)(?:-?[lb]e)?)", re.I)


def _text_of(data: bytes, ctype: str) -> str | None:
    """The body as text (UTF-16/32 by charset or BOM, else UTF-8), or None when it is binary."""
    m = _CHARSET.search(ctype)
    codec = m[1] if m else bom_codec(data)
    try:
        return data.decode() if codec is None else data.decode(codec, errors="replace")
    except (UnicodeDecodeError, LookupError):
        return None


def _loads(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None


_BOUNDARY = re.compile(r"boundary=(?:\"([^\"]+)\"|([^\s;]+))", re.I)
_PART_NAME = re.compile(rb"content-disposition:[^\r\n]*?\bname=\"([^\"]*)\"", re.I)


def _boundary(content_type: str) -> bytes | None:
    m = _BOUNDARY.search(content_type)
    return (m[1] or m[2]).encode("latin-1") if m else None


def _multipart(data: bytes, boundary: bytes) -> bytes:
    delimiter = b"--" + boundary
    parts = data.split(delimiter)
    for i, part in enumerate(parts):
        head, sep, content = part.partition(b"\r\n\r\n")
        if not sep:
            continue
        m = _PART_NAME.search(head)
        if m and secret_name(m[1].decode("latin-1"), field=False):
            tail = b"\r\n" if content.endswith(b"\r\n") else b""
            parts[i] = head + sep + REDACTED.encode() + tail
        else:
            parts[i] = head + sep + body(content, "")
    return delimiter.join(parts)

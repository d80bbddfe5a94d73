"""A request body as the documents and texts an upstream could read from it.

JSON is read with Python's parser; a body that looks like JSON (or says it is) but that parser
rejects (trailing data, an integer past 4300 digits, invalid UTF-8, ...), or that nests deeper
than `MAX_DEPTH`, is *ambiguous*: other parsers (Node's `JSON.parse`, lenient .NET or Go
readers) may accept it and act on it. Duplicate keys are not ambiguous for `body` rules: both
the first-wins and the last-wins documents are readings. Forms and multipart fields are read as
strings, plus one reading in which `true`/`false` and numbers are typed, as frameworks that bind
fields to types do.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import re
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl

from .parsed import BODIES, MAX_DEPTH

MULTIPART_TEXT = 4096  # a file part this small and in UTF-8 is read as a field too

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# Unambiguous at every step (no two parts can take the same characters): linear on any input.
_QUERY_LIKE = re.compile(r"[^=&\s{}\[\]\"]+=[^&\s]*(?:&[^=&\s]*(?:=[^&\s]*)?)*")
_NUMBER = re.compile(r"-?(?:0|[1-9]\d{0,15})(?:\.\d{1,15})?")


class _Repeats:
    seen = False

    def last(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(pairs)
        if len(out) != len(pairs):
            self.seen = True
        return out

    @staticmethod
    def first(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            out.setdefault(k, v)
        return out


def _depth_exceeds(doc: Any, limit: int) -> bool:
    stack = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth > limit:
                return True
            children = node.values() if isinstance(node, dict) else node
            stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def bom_codec(data: bytes) -> str | None:
    """The encoding a byte-order mark at the start of `data` names, if there is one."""
    return next((codec for bom, codec in _BOMS if data.startswith(bom)), None)


def looks_like_json(body: bytes) -> bool:
    """True when the body starts (after a byte-order mark and white space) like a JSON object or
    array, in UTF-8, UTF-16 or UTF-32."""
    head = body[:64]
    for bom, _ in _BOMS:
        if head.startswith(bom):
            head = head[len(bom) :]
            break
    head = head.replace(b"\x00", b"").lstrip()
    return head[:1] in (b"{", b"[")


@lru_cache(maxsize=16)
def too_deep(body: bytes) -> bool:
    """True when a body read as JSON nests deeper than MAX_DEPTH (cached)."""
    if body.count(b"[") + body.count(b"{") <= MAX_DEPTH:
        return False
    return _depth_exceeds(BODIES.reading(body).doc, MAX_DEPTH)


@lru_cache(maxsize=16)
def first_wins(body: bytes) -> Any:
    """The document a first-wins parser reads from a JSON body in which some object repeats a
    key, or None when no key repeats (cached; only for a body read as JSON)."""
    repeats = _Repeats()
    json.loads(body, object_pairs_hook=repeats.last)
    return json.loads(body, object_pairs_hook=_Repeats.first) if repeats.seen else None


def written(doc: Any) -> str:
    """A document as compact JSON text with its escapes resolved (what a `text` rule reads of
    `"DROP\\u0020TABLE"` is `DROP TABLE`)."""
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"), default=str)


def strings_in(doc: Any) -> str:
    """Every key and string value of a document, one per line, as the upstream reads them (a
    JSON-escaped tab or newline is a tab or newline here)."""
    out: list[str] = []
    stack = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, dict):
            for k, v in reversed(node.items()):
                stack.append(v)
                stack.append(k)
        elif isinstance(node, list):
            stack.extend(reversed(node))
    return "\n".join(out)


def media_type(content_type: str | None) -> tuple[str, dict[str, str]]:
    """The media type (lower case) and its parameters (names lower case, values unquoted)."""
    if not content_type:
        return "", {}
    kind, *params = content_type.split(";")
    out = {}
    for p in params:
        name, _, value = p.partition("=")
        out[name.strip().lower()] = value.strip().strip('"')
    return kind.strip().lower(), out


def declares_json(kind: str) -> bool:
    """True for `application/json`, `text/json` and `*/*+json` media types."""
    return kind.endswith("/json") or kind.endswith("+json")


def _codec(name: str | None) -> str | None:
    if not name:
        return None
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def texts(body: bytes, charset: str | None) -> list[str]:
    """The body as text under every decoding an upstream could pick: UTF-8 of the raw bytes, the
    byte-order mark's encoding, the declared charset, and UTF-16/32 as JSON detects it."""
    out = [body.decode("utf-8", "replace")]
    chosen = {"utf-8"}
    marked = bom_codec(body)
    if marked is not None:
        chosen.add(marked)
        out.append(body.decode(marked, "replace"))
    declared = _codec(charset)
    if declared is not None and declared not in chosen:
        chosen.add(declared)
        with contextlib.suppress(LookupError, ValueError):  # rot13, base64: not text encodings
            out.append(body.decode(declared, "replace"))
    if b"\x00" in body[:4]:
        detected = json.detect_encoding(body)
        if detected not in chosen:
            out.append(body.decode(detected, "replace"))
    return list(dict.fromkeys(out))


def looks_like_query(text: str) -> bool:
    """True when a body reads as `name=value&...`, whatever its content type says."""
    return _QUERY_LIKE.fullmatch(text.strip()) is not None


def _typed(value: str) -> Any:
    low = value.lower()
    if low in ("true", "false"):
        return low == "true"
    if _NUMBER.fullmatch(value):
        return float(value) if "." in value else int(value)
    return value


def field_documents(fields: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Form or multipart fields as documents: strings with the first and with the last value of a
    repeated name winning, and the same with `true`/`false` and numbers typed."""
    last = dict(fields)
    docs: list[dict[str, Any]] = [last]
    if len(last) != len(fields):
        first: dict[str, str] = {}
        for k, v in fields:
            first.setdefault(k, v)
        docs.append(first)
    if any("[" in k for k, _ in fields):
        docs.append(_nested(fields))
    typed = [_typed_doc(d) for d in docs]
    docs += [t for t, d in zip(typed, docs, strict=True) if t != d]
    return docs


_BRACKETS = re.compile(r"\[([^\[\]]*)\]")


def _nested(fields: list[tuple[str, str]]) -> dict[str, Any]:
    """Fields as PHP, Rails and Express (qs) read bracketed names: `a[b]=1` is {"a": {"b": "1"}},
    `a[]=1&a[]=2` is {"a": ["1", "2"]}; a name that clashes with an earlier shape is skipped."""
    out: dict[str, Any] = {}
    for name, value in fields:
        head, bracket, _ = name.partition("[")
        keys = [head, *_BRACKETS.findall(name[len(head) :])] if bracket else [name]
        del keys[MAX_DEPTH:]  # servers cap the nesting too (PHP at 64, qs at 5)
        node: Any = out
        for i, key in enumerate(keys):
            last = i == len(keys) - 1
            if isinstance(node, list):
                if key:
                    break  # a[]=1 then a[x]=2: shapes clash, as servers differ on it
                if last:
                    node.append(value)
                else:
                    node.append({})
                    node = node[-1]
                continue
            if not isinstance(node, dict):
                break
            nxt = keys[i + 1] if not last else None
            if last:
                node[key] = value
            else:
                node = node.setdefault(key, [] if nxt == "" else {})
    return out


def _typed_doc(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {k: _typed_doc(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_typed_doc(v) for v in doc]
    return _typed(doc) if isinstance(doc, str) else doc


def form_fields(text: str) -> list[tuple[str, str]]:
    """The name/value pairs of a `application/x-www-form-urlencoded` text."""
    return parse_qsl(text.strip(), keep_blank_values=True, errors="replace")


class Malformed(ValueError):
    """A multipart body that cannot be split into parts; the message says why."""


def multipart_fields(body: bytes, boundary: str | None) -> list[tuple[str, str]]:
    """The fields of a `multipart/form-data` body: text fields, and files small enough and in
    UTF-8 (a file's contents are otherwise not read). Raise Malformed when it cannot be split."""
    if not boundary:
        raise Malformed("it is multipart without a boundary")
    delimiter = b"--" + boundary.encode("latin-1", "replace")
    chunks = body.split(delimiter)
    if len(chunks) < 3 or not chunks[-1].startswith(b"--"):
        raise Malformed("its multipart parts are not closed by the boundary")
    out = []
    for chunk in chunks[1:-1]:
        head, sep, content = chunk.lstrip(b"\r\n").partition(b"\r\n\r\n")
        if not sep:
            head, sep, content = chunk.lstrip(b"\n").partition(b"\n\n")
        if not sep:
            raise Malformed("a multipart part has no blank line after its headers")
        content = content.removesuffix(b"\n").removesuffix(b"\r")
        disposition = next(
            (
                line
                for line in head.decode("latin-1").splitlines()
                if line.lower().startswith("content-disposition")
            ),
            "",
        )
        _, params = media_type(disposition.partition(":")[2])
        name = params.get("name")
        if name is None:
            continue
        if "filename" in params and len(content) > MULTIPART_TEXT:
            continue
        try:
            out.append((name, content.decode("utf-8")))
        except UnicodeDecodeError:
            if "filename" not in params:
                out.append((name, content.decode("utf-8", "replace")))
    return out

"""Redaction: credentials are replaced before anything about a request is written.

Two tests find a credential. Its NAME: a header, query parameter, form or multipart field, JSON
field or tool argument whose name has a word such as token, secret, password, key, auth,
credential, session, signature or cookie in it (`Api-Key`, `X-Vault-Token`, `refresh_token`,
`clientSecret`). Its VALUE: anything with the shape of a well-known token (AWS key ids, bearer
and basic credentials, JWTs, PEM private keys, GitHub, GitLab, Slack, Stripe, OpenAI, Anthropic
and Google keys, `user:password@` in URLs), wherever it appears in a string the log keeps.

A bare `key` or `code` is a credential in a query string, a form or a header (`?key=` is how
Google takes API keys, `code` is an OAuth grant), not as a JSON field, where it usually names
a record (DynamoDB's `Key`) or a program: there only the value shapes apply.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import quote_plus, unquote_plus

from rules import bom_codec

REDACTED = "[redacted]"

# Headers that are credentials whatever the name test says (kept for rules that name them).
SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-amz-security-token", "x-api-key"}
)

# Words that make a name a credential's, wherever they stand in it.
_SECRET_WORDS = frozenset(
    {
        "auth",
        "authorization",
        "authentication",
        "apikey",
        "bearer",
        "cookie",
        "cookies",
        "credential",
        "credentials",
        "jwt",
        "otp",
        "passphrase",
        "passwd",
        "password",
        "passwords",
        "pwd",
        "secret",
        "secrets",
        "session",
        "sig",
        "signature",
        "token",
        "verifier",
    }
)
# Run-together names (`accesstoken`, `clientsecret`) end in one of these.
_SECRET_ENDINGS = (
    "token",
    "secret",
    "password",
    "passwd",
    "apikey",
    "privatekey",
    "secretkey",
    "accesskey",
    "credential",
    "credentials",
    "signature",
    "cookie",
    "sessionid",
    "sessionkey",
)
# `key` is a credential unless the word before it says what kind of non-secret key it is.
_KEY_WORDS = frozenset({"key", "keys"})
_PLAIN_KEYS = frozenset(
    {"idempotency", "idempotent", "public", "socket", "websocket", "partition", "sort", "primary"}
    | {"foreign", "cache", "dedup", "deduplication", "routing", "object", "hash", "row", "range"}
)
# Names that are credentials only in query strings, forms and headers (see the module's note).
_LOOSE = frozenset({"key", "code", "device_code"})

_PARTS = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")
_SEPARATORS = re.compile(r"[^A-Za-z0-9]+")


@lru_cache(maxsize=4096)
def _words(name: str) -> tuple[str, ...]:
    return tuple(w.lower() for piece in _SEPARATORS.split(name) for w in _PARTS.findall(piece))


def secret_name(name: str, *, field: bool = True) -> bool:
    """True for a name that carries a credential. `field`: the name is a JSON field or tool
    argument, where a bare `key` or `code` is not one (in a query, form or header it is)."""
    return _secret_field(name) if field else _secret_param(name)


@lru_cache(maxsize=4096)
def _secret_field(name: str) -> bool:
    words = _words(name)
    for i, word in enumerate(words):
        if word in _SECRET_WORDS or word.endswith(_SECRET_ENDINGS):
            return True
        if word in _KEY_WORDS and i > 0 and words[i - 1] not in _PLAIN_KEYS:
            return True
    return False


@lru_cache(maxsize=4096)
def _secret_param(name: str) -> bool:
    return "_".join(_words(name)) in _LOOSE or _secret_field(name)


# ---- value shapes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """A token format: `needs`, characters a string holds wherever a match is, and `anchors`,
    literals one of which any match contains (cheap first looks: a character is found at memory
    speed, a literal at about a byte a nanosecond, the pattern far slower); and the pattern,
    whose group 1, if it has one, is kept in front of the redaction."""

    anchors: tuple[str, ...]
    pattern: re.Pattern[str]
    needs: tuple[str, ...] = ()

    def occurs(self, value: str) -> bool:
        """False when `value` cannot hold a match (True does not say it does)."""
        for c in self.needs:
            if c not in value:
                return False
        return any(a in value for a in self.anchors)

    def sub(self, value: str) -> str:
        """`value` with every match replaced."""
        if self.pattern.groups:
            return self.pattern.sub(lambda m: m[1] + REDACTED, value)
        return self.pattern.sub(REDACTED, value)


def _shape(anchors: str, pattern: str, needs: str = "") -> Shape:
    return Shape(tuple(anchors.split()), re.compile(pattern, re.DOTALL | re.ASCII), tuple(needs))


SHAPES = (
    _shape(
        "PRIVATE",
        r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY-----(?:.*?-----END[A-Z0-9 ]{0,40}PRIVATE KEY-----|.*)",
        "V-",
    ),
    _shape("earer EARER", r"\b(?:[Bb]earer|BEARER)\s+[A-Za-z0-9\-._~+/]{8,}=*"),
    # Basic credentials are base64: a digit, +, / or =, or lower case before upper case (not prose).
    _shape("asic ASIC", r"\b(?:[Bb]asic|BASIC)\s+(?=[A-Za-z]*[0-9+/=]|[A-Z]?[a-z]+[A-Z])[A-Za-z0-9+/]{8,}=*"),
    _shape("eyJ", r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*", "J."),
    _shape("AKIA ASIA ABIA ACCA", r"\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b", "A"),
    _shape("gh github_pat_", r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})", "_"),
    _shape("glpat-", r"\bglpat-[A-Za-z0-9_-]{20,}", "-"),
    _shape("xox", r"\bxox[abposr]-[A-Za-z0-9-]{10,}", "x-"),
    _shape("hooks.slack.com", r"(hooks\.slack\.com/services/)[A-Za-z0-9/_-]+", "/"),
    _shape(
        "_live_ _test_ whsec_", r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{10,}|\bwhsec_[A-Za-z0-9]{10,}", "_"
    ),
    _shape("sk-", r"\bsk-[A-Za-z0-9_-]{20,}", "-"),
    _shape("AIza", r"\bAIza[0-9A-Za-z_-]{35}", "zI"),
    _shape(":AA", r"(?<![0-9])[0-9]{8,10}:AA[A-Za-z0-9_-]{33}", "A:"),  # Telegram bot tokens
    _shape("@", r"(://)[^/?#\s@\"'<>]{1,256}(?=@[A-Za-z0-9\[])", ":/"),  # userinfo in a URL
)

# `name=value` and `name: value` in free text are found from the credential words in their names
# (then the whole name is tested, so `max_tokens=100` stays).
_STEMS = (
    "pass",
    "pwd",
    "secret",
    "token",
    "key",
    "auth",
    "credential",
    "session",
    "sig",
    "cookie",
    "bearer",
    "jwt",
    "otp",
    "verifier",
)
_NAME = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
_VALUE = re.compile(
    r"[\"']?\s{0,4}[:=]\s{0,4}"
    r"(\"(?:[^\"\\\n]|\\.){0,4096}\"|'[^'\n]{0,4096}'"
    r"|(?:(?i:bearer|basic|token|digest)\s+)?[^\s\"'&,;<>(){}\[\]]+)"
)


# A stem is looked for only where every letter of it occurs (each a memory-speed look).
_STEM_LETTERS = {stem: frozenset(stem) for stem in _STEMS}
_LETTERS = "".join(sorted(set().union(*_STEM_LETTERS.values())))


def _stems(lowered: str) -> list[str]:
    """The stems that occur in a lower-cased text."""
    have = {c for c in _LETTERS if c in lowered}
    return [stem for stem, letters in _STEM_LETTERS.items() if letters <= have and stem in lowered]


def _pairs_possible(value: str) -> bool:
    # A pair has a `:` or `=` after its name (see _VALUE), and a JSON field name has a `:`.
    return ":" in value or "=" in value


def _trie(words: Iterable[str]) -> str:
    """One pattern matching any of `words`, factored by prefix (the regex engine tries the
    alternatives of a branch one by one at every position)."""
    tree: dict[str, Any] = {}
    for word in words:
        node = tree
        for c in word:
            node = node.setdefault(c, {})
        node[""] = {}

    def pattern(node: dict[str, Any]) -> str:
        if "" in node:  # a shorter word is enough to say one occurs
            return ""
        alternatives = [re.escape(c) + pattern(child) for c, child in sorted(node.items())]
        return alternatives[0] if len(alternatives) == 1 else f"(?:{'|'.join(alternatives)})"

    return pattern(tree)


# Short strings (headers, URL parts, most JSON strings) get one look for any anchor or stem, in
# lower case: cheaper below this length than a look for each.
_ANY = re.compile(_trie({*(a.lower() for s in SHAPES for a in s.anchors), *_STEMS}))
_SHORT = 256


@dataclass(frozen=True)
class Look:
    """Which shapes, and whether credential words, occur in a text: a string taken from it can
    only hold those (`EVERYTHING`: nothing is known about the string)."""

    shapes: tuple[Shape, ...]
    pairs: bool
    stems: tuple[str, ...] | None = None  # the stems that occur (None: not looked for)

    @staticmethod
    def at(value: str) -> Look:
        """What occurs in `value`."""
        if len(value) <= _SHORT and _ANY.search(value.lower()) is None:
            return NOTHING
        shapes = tuple(s for s in SHAPES if s.occurs(value))
        stems = tuple(_stems(value.lower())) if _pairs_possible(value) else ()
        return Look(shapes, bool(stems), stems)

    def __bool__(self) -> bool:
        return bool(self.shapes) or self.pairs


EVERYTHING = Look(SHAPES, True)
NOTHING = Look((), False, ())


# Short strings seen to hold no anchor and no stem: header values, paths and field values repeat
# from one request to the next. Only such strings are kept, never one that held a credential.
_CLEAN: set[str] = set()
_CLEAN_KEPT = 4096


def text(value: str, look: Look | None = None) -> str:
    """A string with every credential-shaped part replaced (token formats, `password=...`)."""
    if len(value) <= _SHORT:
        if value in _CLEAN:
            return value
        if _ANY.search(value.lower()) is None:
            if len(_CLEAN) >= _CLEAN_KEPT:
                _CLEAN.clear()
            _CLEAN.add(value)
            return value
    out = value
    for shape in SHAPES if look is None else look.shapes:
        if shape.occurs(out):
            out = shape.sub(out)
    if look is None or look.pairs:
        out = _pairs(out, None if look is None else look.stems)
    return value if out == value else out


def _pairs(value: str, stems: Iterable[str] | None = None) -> str:
    """`value` with the values of its credential pairs replaced; `stems`: those that may occur
    in it (a look at a text it was taken from found them)."""
    if not _pairs_possible(value):
        return value
    lowered = value.lower()
    if len(lowered) != len(value):  # a character whose lower case is longer: stay on the original
        lowered = value
    spans: set[tuple[int, int]] = set()
    for stem in _stems(lowered) if stems is None else stems:
        at = lowered.find(stem)
        while at >= 0:
            start, end = at, at + len(stem)
            while start > 0 and value[start - 1] in _NAME:
                start -= 1
            while end < len(value) and value[end] in _NAME:
                end += 1
            m = _VALUE.match(value, end)
            if m is not None and secret_name(value[start:end]):
                quoted = m[1][0] in "\"'"
                spans.add((m.start(1) + quoted, m.end(1) - quoted))
            at = lowered.find(stem, end)
    if not spans:
        return value
    out, last = [], 0
    for start, end in sorted(spans):
        if start >= last:
            out += [value[last:start], REDACTED]
            last = end
    out.append(value[last:])
    return "".join(out)


# ---- structured values -----------------------------------------------------------------------


def walk(value: Any, look: Look | None = None) -> Any:
    """A JSON value with credential-named fields replaced at any depth and credential-shaped
    strings redacted; the value itself when nothing changed (it is never modified). `look`:
    what occurs in the text the value was parsed from (strings are then only searched for that)."""
    look = EVERYTHING if look is None else look
    if isinstance(value, str):
        return text(value, look)
    if isinstance(value, dict | list):
        return _Walk(look).value(value)
    return value


class _Walk:
    """One walk over a parsed value; plain type checks and a per-walk cache of field names keep
    it cheap on bodies of thousands of fields."""

    def __init__(self, look: Look):
        self.look = look
        self.scan = bool(look)
        self.pairs_only = not look.shapes
        self.names: dict[Any, bool] = {}

    def value(self, value: Any) -> Any:
        t = type(value)
        if t is dict:
            return self.fields(value)
        if t is list:
            return self.items(value)
        if t is str:
            return self.string(value)
        if isinstance(value, dict):
            return self.fields(value)
        return self.items(value) if isinstance(value, list) else value

    def string(self, value: str) -> str:
        # With no token shape about, only a `name=value` or `name: value` pair can be a secret.
        if not self.scan or (self.pairs_only and "=" not in value and ":" not in value):
            return value
        return text(value, self.look)

    def element(self, value: Any) -> Any:
        """A field's value or a list's item, redacted; itself when nothing in it changed."""
        t = type(value)
        if t is str:
            return self.string(value)
        if t is int or t is float or value is None or t is bool:
            return value
        return self.value(value)

    def fields(self, value: dict[Any, Any]) -> dict[Any, Any]:
        out = None
        names, element = self.names, self.element
        for k, v in value.items():
            secret = names.get(k)
            if secret is None:
                secret = names[k] = _secret_field(k if type(k) is str else str(k))
            new = REDACTED if secret else element(v)
            if new is not v:
                if out is None:
                    out = dict(value)
                out[k] = new
        return value if out is None else out

    def items(self, value: list[Any]) -> list[Any]:
        out = None
        element = self.element
        for i, v in enumerate(value):
            new = element(v)
            if new is not v:
                if out is None:
                    out = list(value)
                out[i] = new
        return value if out is None else out


def query(raw: str) -> str:
    """A query string (or form body) with credential parameters replaced; unchanged pairs keep
    their original encoding."""
    if not raw:
        return raw
    pieces = raw.split("&")
    changed = False
    for i, piece in enumerate(pieces):
        name, eq, value = piece.partition("=")
        plain_name = unquote_plus(name)
        if secret_name(plain_name, field=False):
            new = f"{name}={REDACTED}"
        elif not eq:
            new = piece if text(plain_name) == plain_name else REDACTED
        else:
            plain = unquote_plus(value)
            redacted = text(plain)
            new = piece if redacted == plain else f"{name}={quote_plus(redacted, safe='[]')}"
        if new != piece:
            pieces[i], changed = new, True
    return "&".join(pieces) if changed else raw


def url(raw: str) -> str:
    """A URL with credentials in its userinfo, path and query replaced."""
    head, sep, rest = raw.partition("?")
    return f"{text(head)}?{query(rest)}" if sep else text(raw)


class Redactor:
    """Redacts credentials by name and by shape; `extra_headers` (from the rules) are redacted
    whatever their name."""

    def __init__(self, extra_headers: Iterable[str] = ()):
        self.headers_secret = SECRET_HEADERS | {h.lower() for h in extra_headers}

    def secret_header(self, name: str) -> bool:
        """True for a header whose value is a credential."""
        return name.lower() in self.headers_secret or secret_name(name, field=False)

    def headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        """A copy of the headers with credential values replaced."""
        return {
            k: REDACTED if self.secret_header(k) else (url(v) if "://" in v or "?" in v else text(v))
            for k, v in headers.items()
        }

    def args(self, value: object) -> object:
        """Tool arguments with credential-named fields and credential-shaped strings replaced."""
        return walk(value)

    def url(self, raw: str) -> str:
        """A URL with credentials in its userinfo, path and query replaced."""
        return url(raw)


# ---- bodies ----------------------------------------------------------------------------------


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
                    if _secret_field(string):
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

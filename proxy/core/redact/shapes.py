"""Value shapes: the token formats found in any text, and `name=value` pairs whose name is a
credential's; what to look for in a text, found once."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .names import REDACTED, secret_name


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

"""Structured values redacted: parsed JSON at any depth, query strings and URLs, headers, tool
arguments."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote_plus, unquote_plus

from .names import REDACTED, SECRET_HEADERS, secret_field, secret_name
from .shapes import EVERYTHING, Look, text


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
                secret = names[k] = secret_field(k if type(k) is str else str(k))
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

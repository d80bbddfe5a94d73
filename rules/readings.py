"""Every reading of one action that a common upstream could make, computed once and lazily.

Upstreams read one request differently: a method-override header or `_method` field turns a
POST into a DELETE, Tomcat cuts `;` parameters from a path, Express ignores its case, a form or
multipart body carries the same fields as JSON, duplicate JSON keys are read first-wins or
last-wins, a UTF-16 body is text only once decoded. Deny and hold rules match if any reading
matches; allow and log rules only if every reading does (so a second reading can neither
escape a deny nor earn an allow). A body that a rule must read but that cannot be read
unambiguously (`problem`) counts as matching for a deny or hold rule of a mutating action, and
refuses it as ambiguous.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

from . import body as bodies
from .action import Action
from .parsed import BODIES, MAX_DEPTH, ParsedJson
from .paths import path_readings

OVERRIDE_HEADERS = ("x-http-method-override", "x-http-method", "x-method-override")
OVERRIDE_FIELD = "_method"
# Headers that some stacks (Symfony, IIS URL Rewrite) route by instead of the request line.
REWRITE_HEADERS = ("x-original-url", "x-rewrite-url")
KINDS = ("method", "path", "agent", "body")  # the kinds of reading an explanation can name

_NONE: tuple[Any, ...] = ()


def unseen_body(action: Action) -> bool:
    """True when the action's body was not read at all (it streamed upstream past the limit
    the proxy reads whole): `body_problem` says so, and there is no body to read."""
    return action.body_streamed and action.body is None


def carries_body(action: Action) -> bool:
    """True when the action has a body for rules to read, readable or not (one that streamed
    unread counts: a rule that must read it cannot)."""
    return bool(action.body) or unseen_body(action)


class Readings:
    """The readings of one action; each kind is computed on first use."""

    __slots__ = (
        "_action",
        "_agents",
        "_decoded",
        "_documents",
        "_forms",
        "_json",
        "_methods",
        "_paths",
        "_problem",
        "_texts",
        "_type",
        "assume_unknown",
        "only",
    )

    def __init__(self, action: Action):
        self._action = action
        self._methods: tuple[str, ...] | None = None
        self._paths: tuple[str, ...] | None = None
        self._agents: tuple[str, ...] | None = None
        self._documents: tuple[Any, ...] | None = None
        self._forms: tuple[Any, ...] | None = None
        self._texts: tuple[str, ...] | None = None
        self._json: ParsedJson | None = None
        self._type: tuple[str, dict[str, str]] | None = None
        self._decoded: list[str] | None = None
        self._problem: str | bool | None = False  # False: not computed yet
        # While explaining: the kinds allowed more than their first reading (None: all), and
        # whether an unreadable body may count as matching.
        self.only: frozenset[str] | None = None
        self.assume_unknown = True

    def several(self) -> bool:
        """True when some reading computed so far has more than one value, or the body has a
        problem: only then can a rule have matched anything but the action as sent."""
        if self._problem not in (False, None):
            return True
        computed = (self._methods, self._paths, self._agents, self._documents, self._texts)
        if any(values is not None and len(values) > 1 for values in computed):
            return True
        # A path with capitals may have matched without case.
        return self._paths is not None and self._paths[0] != self._paths[0].lower()

    def _first(self, kind: str, values: tuple[Any, ...]) -> tuple[Any, ...]:
        if self.only is None:
            return values
        return values if kind in self.only else values[:1]

    # ---- methods -------------------------------------------------------------------------

    @property
    def methods(self) -> tuple[str, ...]:
        """The method as sent, then each method an override header or `_method` field names."""
        if self._methods is None:
            self._methods = method_readings(self._action, self._documents_all)
        return self._methods if self.only is None else self._first("method", self._methods)

    # ---- paths ---------------------------------------------------------------------------

    @property
    def paths(self) -> tuple[str, ...]:
        """The standard resolution of the path, then every other way a server resolves it, and
        the paths an `X-Original-URL` or `X-Rewrite-URL` header names."""
        if self._paths is None:
            paths = path_readings(self._action.path)
            for name in REWRITE_HEADERS:
                if value := self._action.headers.get(name):
                    paths += path_readings(value.partition("?")[0] or "/")
            self._paths = tuple(dict.fromkeys(paths))
        return self._paths if self.only is None else self._first("path", self._paths)

    @property
    def fold_paths(self) -> bool:
        """True when paths may also match without case (a reading of Express, IIS)."""
        return self.only is None or "path" in self.only

    # ---- agents --------------------------------------------------------------------------

    @property
    def agents(self) -> tuple[str, ...]:
        """The agent the action is recorded under and, when that name is a claim, the agent the
        operator configured: a deny on either name holds."""
        if self._agents is None:
            a = self._action
            self._agents = (a.agent,) if a.configured_agent is None else (a.agent, a.configured_agent)
        return self._agents if self.only is None else self._first("agent", self._agents)

    # ---- the body ------------------------------------------------------------------------

    def _media(self) -> tuple[str, dict[str, str]]:
        if self._type is None:
            self._type = bodies.media_type(self._action.headers.get("content-type"))
        return self._type

    def _parsed(self) -> ParsedJson | None:
        body = self._action.body
        if not body:
            return None
        if self._json is None:
            kind, _ = self._media()
            if bodies.declares_json(kind) or bodies.looks_like_json(body):
                self._json = BODIES.reading(body)
            else:
                self._json = ParsedJson()
        return self._json

    @property
    def problem(self) -> str | None:
        """Why the body cannot be read unambiguously (an undecodable encoding, JSON that parsers
        read differently, a broken multipart body), or None."""
        if self._problem is False:
            self._problem = self._find_problem()
        assert self._problem is not True
        return self._problem

    def _find_problem(self) -> str | None:
        if self._action.body_problem is not None:
            return self._action.body_problem
        parsed = self._parsed()
        if parsed is not None and parsed.problem is not None:
            return parsed.problem
        if parsed is not None and parsed.found and self._action.body and bodies.too_deep(self._action.body):
            return f"its JSON nests deeper than {MAX_DEPTH} levels"
        kind, params = self._media()
        if kind == "multipart/form-data" and self._action.body:
            try:
                bodies.multipart_fields(self._action.body, params.get("boundary"))
            except bodies.Malformed as e:
                return str(e)
        return None

    @property
    def args_problem(self) -> str | None:
        """Why tool names and arguments read from this body are ambiguous: any body problem, or
        duplicate JSON keys (a first-wins server may call another tool than a last-wins one)."""
        problem = self.problem
        if problem is not None:
            return problem
        if self._first_wins() is not None:
            return "its JSON repeats a key, which parsers read differently (first or last wins)"
        return None

    def _first_wins(self) -> Any:
        parsed = self._parsed()
        if parsed is None or not parsed.found or self._action.body is None:
            return None
        return bodies.first_wins(self._action.body)

    def unknown(self) -> bool:
        """True when an unreadable body may count as matching a deny or hold rule: the action
        mutates and the caller is not asking what the readable parts alone match."""
        return self.assume_unknown and self._action.effect.mutating

    def _form_documents(self) -> tuple[Any, ...]:
        if self._forms is None:
            self._forms = self._read_forms()
        return self._forms

    def _read_forms(self) -> tuple[Any, ...]:
        body = self._action.body
        if not body or self.problem is not None:
            return _NONE
        kind, params = self._media()
        if kind == "multipart/form-data":
            return tuple(bodies.field_documents(bodies.multipart_fields(body, params.get("boundary"))))
        form = kind == "application/x-www-form-urlencoded"
        if not form and self._parsed() is not None and self._parsed_found():
            return _NONE  # a JSON document is not also a query string
        docs: list[Any] = []
        for text in self._decodings():  # a declared charset is a reading, not the only one
            if form or bodies.looks_like_query(text):
                docs += bodies.field_documents(bodies.form_fields(text))
        return tuple(docs)

    def _parsed_found(self) -> bool:
        parsed = self._parsed()
        return parsed is not None and parsed.found

    def _decodings(self) -> list[str]:
        if self._decoded is None:
            _, params = self._media()
            self._decoded = bodies.texts(self._action.body or b"", params.get("charset"))
        return self._decoded

    @property
    def documents(self) -> tuple[Any, ...]:
        """The body as documents for `body` rules: its JSON readings, then its form or multipart
        fields (empty when the body has a problem: see `problem`)."""
        return self._first("body", self._documents_all())

    def _documents_all(self) -> tuple[Any, ...]:
        if self._documents is None:
            parsed = self._parsed()
            found: tuple[Any, ...] = _NONE
            if parsed is not None and parsed.found and self.problem is None:
                first = self._first_wins()
                found = (parsed.doc,) if first is None else (parsed.doc, first)
            self._documents = found + self._form_documents()
        return self._documents

    @property
    def texts(self) -> tuple[str, ...]:
        """The body as text for `text` rules: the raw bytes as UTF-8, each other decoding of its
        bytes, and each document written out with its escapes resolved."""
        if self._texts is None:
            body = self._action.body
            if not body or self.problem is not None:
                self._texts = _NONE
            else:
                out = list(self._decodings())
                if self._form_documents():
                    out += [unquote_plus(t) for t in out if "%" in t or "+" in t]
                if len(out) > 1 or "\\" in out[0]:
                    # Escapes resolved: only a body with a backslash (or another decoding) has any.
                    for doc in self._documents_all():
                        out += (bodies.written(doc), bodies.strings_in(doc))
                self._texts = tuple(dict.fromkeys(out))
        return self._first("body", self._texts)


def method_readings(action: Action, documents: Callable[[], tuple[Any, ...]]) -> tuple[str, ...]:
    """The method as sent, then the methods its override headers, its query's and its body's
    `_method` name (a form's, or a JSON body's, which Laravel reads): upper case, each once."""
    found = [action.method.upper()]
    for name in OVERRIDE_HEADERS:
        value = action.headers.get(name)
        if value:
            found += [v.strip().upper() for v in value.split(",") if v.strip()]
    if OVERRIDE_FIELD in action.query:
        found += [v.strip().upper() for k, v in parse_qsl(action.query) if k == OVERRIDE_FIELD and v.strip()]
    if action.body and OVERRIDE_FIELD.encode() in action.body:
        for doc in documents():
            value = doc.get(OVERRIDE_FIELD) if isinstance(doc, dict) else None
            if isinstance(value, str) and value.strip():
                found.append(value.strip().upper())
    return tuple(dict.fromkeys(found))


def readings_of(action: Action) -> Readings:
    """The action's readings, made on first use and kept with the action."""
    try:
        found: Readings = action.memo["readings"]
    except KeyError:
        found = action.memo["readings"] = Readings(action)
    return found

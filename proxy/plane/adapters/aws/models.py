"""AWS's service models, as botocore ships them: which models a signing name may mean, and, per
model, how its requests name their operation (its protocol, JSON target prefix, API version, the
method and URI template of each REST operation) and which input members name resources.

The index (signing name and endpoint prefix to the models behind them) reads only the models'
metadata, once per process; a model's operations are read the first time a request needs them,
and kept. The index is built when the first request that may be AWS's needs it (about 0.1 s,
once a process): building it at start made every `airlock run` pay for it, AWS or not.
"""

from __future__ import annotations

import gzip
import json
import re
import threading
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import botocore
import orjson

DATA = Path(botocore.__file__).parent / "data"
MODEL_FILES = ("service-2.json.gz", "service-2.json")

# Members whose values name the resources an operation touches (TableName, InstanceIds,
# QueueUrl, FunctionName, RoleArn, Bucket, Key, ...).
_IDENTIFIER = re.compile(r"(Name|Names|Id|Ids|Arn|Arns|Url|Urls|Identifier|Identifiers|Bucket|Key)$")
_NOT_IDENTIFIER = frozenset(
    {"ClientRequestToken", "ClientToken", "NextToken", "IdempotencyToken", "KmsKeyId"}
)


@dataclass(frozen=True)
class Member:
    """One input member that names a resource: where the request carries it and as what name."""

    name: str
    location: str | None  # "uri", "querystring", "header", or None for the body
    wire: str  # the name on the wire (its locationName, else its name)
    listed: bool  # a list of values (InstanceIds): the request may name many
    required: bool


@dataclass(frozen=True)
class RestOperation:
    """A REST operation: its method, the path its URI template matches, and the query keys the
    template requires (`?tagging`, `?list-type=2`)."""

    name: str
    method: str
    path: re.Pattern[str]
    labels: tuple[str, ...]  # the template's labels, in order
    query: frozenset[str]  # the query keys the route requires
    values: tuple[tuple[str, str], ...]  # and the value some of them must have (`list-type=2`)
    headers: frozenset[str]  # headers the operation requires (x-amz-copy-source), lower case
    literal: int  # characters of the template that are not labels: the more, the more specific


@dataclass
class Model:
    """One service model: its protocol, how its requests name operations, and its operations'
    resource-naming members (read on first use)."""

    name: str  # botocore's name for the service (s3, dynamodb, elbv2)
    path: Path
    metadata: dict[str, Any]
    _operations: dict[str, Any] | None = field(default=None, repr=False)
    _shapes: dict[str, Any] | None = field(default=None, repr=False)
    _rest: dict[str, Routes] | None = field(default=None, repr=False)
    _members: dict[str, tuple[Member, ...]] = field(default_factory=dict, repr=False)
    _sensitive: dict[str, frozenset[str]] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def protocol(self) -> str:
        """rest-xml, rest-json, json, query or ec2."""
        protocols = self.metadata.get("protocols") or [self.metadata.get("protocol", "rest-json")]
        return str(protocols[0])

    @property
    def target_prefix(self) -> str | None:
        """The prefix of `X-Amz-Target` for the JSON protocol (DynamoDB_20120810)."""
        return self.metadata.get("targetPrefix")

    @property
    def version(self) -> str:
        """The API version (the query protocols' `Version=`)."""
        return str(self.metadata.get("apiVersion", ""))

    @property
    def endpoint_prefix(self) -> str:
        """The first label of the service's own endpoint hosts (s3, dynamodb, ec2)."""
        return str(self.metadata.get("endpointPrefix", self.name))

    def _load(self) -> None:
        with self._lock:
            if self._operations is None:
                whole = _read(self.path)
                self._shapes = whole.get("shapes", {})
                self._operations = whole.get("operations", {})

    @property
    def operations(self) -> dict[str, Any]:
        """The model's operations by name, read on first use."""
        if self._operations is None:
            self._load()
        assert self._operations is not None
        return self._operations

    def has(self, operation: str) -> bool:
        """True when the model defines `operation`."""
        return operation in self.operations

    def routes(self, method: str, keys: Iterable[str]) -> list[RestOperation]:
        """The REST routes of one method that need no query key but those in `keys` (not yet
        checked against the path or headers), the most specific first."""
        if self._rest is None:
            ops = self.operations.items()
            routes = [_route(name, op["http"], self._required(op)) for name, op in ops if "http" in op]
            routes.sort(key=lambda r: (-len(r.query) - len(r.headers), -r.literal, -len(r.path.pattern)))
            by_method: dict[str, Routes] = {}
            for rank, route in enumerate(routes):
                by_method.setdefault(route.method, Routes()).add(rank, route)
            self._rest = by_method
        routes_of = self._rest.get(method)
        return routes_of.fitting(keys) if routes_of is not None else []

    def _required(self, operation: dict[str, Any]) -> list[tuple[str, str]]:
        """The required query and header members of an operation's input: (location, name)."""
        shape = (self._shapes or {}).get(operation.get("input", {}).get("shape", ""), {})
        members = shape.get("members", {})
        return [
            (members[n]["location"], members[n].get("locationName", n))
            for n in shape.get("required", [])
            if n in members and members[n].get("location") in ("querystring", "header")
        ]

    def sensitive(self, operation: str) -> frozenset[str]:
        """The names (as sent) of the input's members, at any depth, that the model marks
        sensitive or whose shape it does: their values are secrets."""
        try:
            return self._sensitive[operation]
        except KeyError:
            shape = self.operations.get(operation, {}).get("input", {}).get("shape")
            found = self._sensitive[operation] = frozenset(_sensitive(self._shapes or {}, shape))
            return found

    def members(self, operation: str) -> tuple[Member, ...]:
        """The members of an operation's input that name resources: the required ones, or when
        none is required, the others."""
        try:
            return self._members[operation]
        except KeyError:
            found = self._members[operation] = _members(self, operation)
            return found


@dataclass
class Routes:
    """One method's routes, indexed by the query keys they need: a request is tried only against
    the routes whose keys it carries (most routes of S3 need a flag such as `?tagging`)."""

    plain: list[tuple[int, RestOperation]] = field(default_factory=list)
    by_key: dict[str, list[tuple[int, RestOperation]]] = field(default_factory=dict)

    def add(self, rank: int, route: RestOperation) -> None:
        """Index a route under one of the keys it needs (any one: all are checked later)."""
        if route.query:
            self.by_key.setdefault(min(route.query), []).append((rank, route))
        else:
            self.plain.append((rank, route))

    def fitting(self, keys: Iterable[str]) -> list[RestOperation]:
        """The routes that need no key outside `keys`, in rank order."""
        found = list(self.plain)
        given = frozenset(keys)
        for key in given:
            found += [(r, route) for r, route in self.by_key.get(key, ()) if route.query <= given]
        if len(found) != len(self.plain):
            found.sort(key=lambda pair: pair[0])
        return [route for _, route in found]


def _read(path: Path) -> dict[str, Any]:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    found: dict[str, Any] = orjson.loads(raw)
    return found


_HEAD = 4096  # bytes of a model file that hold its metadata (it comes first)
_DECODER = json.JSONDecoder()


def _metadata(path: Path) -> dict[str, Any]:
    """A model's metadata, read from the head of its file (a few KB of several hundred): the
    index of every model costs tens of milliseconds, not the whole models' parse."""
    with path.open("rb") as f:
        head = f.read(_HEAD)
    if path.suffix == ".gz":
        head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head)
    text = head.decode("utf-8", "replace")
    try:
        found, _ = _DECODER.raw_decode(text, text.index("{", text.index('"metadata"')))
    except ValueError:
        found = None
    if isinstance(found, dict):
        return found
    metadata: dict[str, Any] = _read(path).get("metadata", {})  # an unusual file: read it whole
    return metadata


_LABEL = re.compile(r"\{([^}]+?)(\+?)\}")


def _route(name: str, http: dict[str, Any], required: list[tuple[str, str]]) -> RestOperation:
    uri = str(http.get("requestUri", "/"))
    path, _, query = uri.partition("?")
    pattern, labels, last, literal = [], [], 0, 0
    for m in _LABEL.finditer(path):
        pattern.append(re.escape(path[last : m.start()]))
        literal += m.start() - last
        pattern.append("(.+)" if m.group(2) else "([^/]+)")
        labels.append(m.group(1))
        last = m.end()
    pattern.append(re.escape(path[last:]))
    literal += len(path) - last
    # A template that ends in a label (or is "/") also takes a trailing slash: `/bucket/`.
    regex = "".join(pattern).rstrip("/") or ""
    keys: list[tuple[str, str | None]] = []
    for part in filter(None, query.split("&")):
        key, sep, value = part.partition("=")
        if key != "x-id":  # botocore's own marker: other clients leave it out
            keys.append((key, value if sep else None))
    keys += [(n, None) for where, n in required if where == "querystring" and n not in dict(keys)]
    values = tuple((k, v) for k, v in keys if v is not None)
    return RestOperation(
        name=name,
        method=str(http.get("method", "POST")).upper(),
        path=re.compile(f"{regex}/?"),
        labels=tuple(labels),
        query=frozenset(k for k, _ in keys),
        values=values,
        headers=frozenset(n.lower() for where, n in required if where == "header"),
        literal=literal,
    )


def _sensitive(shapes: dict[str, Any], start: str | None) -> set[str]:
    found: set[str] = set()
    seen: set[str] = set()
    todo = [start] if start else []
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        shape = shapes.get(name, {})
        for key in ("member", "key", "value"):  # a list's items, a map's keys and values
            if isinstance(shape.get(key), dict) and "shape" in shape[key]:
                todo.append(shape[key]["shape"])
        for member_name, spec in shape.get("members", {}).items():
            target = spec.get("shape", "")
            if spec.get("sensitive") or shapes.get(target, {}).get("sensitive"):
                found.update({member_name, spec.get("locationName", member_name)})
            else:
                todo.append(target)
    return found


def _members(model: Model, operation: str) -> tuple[Member, ...]:
    op = model.operations.get(operation, {})
    shape_name = op.get("input", {}).get("shape")
    shapes = model._shapes or {}
    shape = shapes.get(shape_name, {}) if shape_name else {}
    required = set(shape.get("required", []))
    found = []
    for name, spec in shape.get("members", {}).items():
        if not _IDENTIFIER.search(name) or name in _NOT_IDENTIFIER:
            continue
        kind = shapes.get(spec.get("shape"), {}).get("type")
        if kind not in ("string", "list"):
            continue
        wire = spec.get("locationName", name)
        found.append(Member(name, spec.get("location"), wire, kind == "list", name in required))
    # The required members say what the operation is about; the optional ones only when none is.
    named = tuple(m for m in found if m.required)
    return named or tuple(found)


@dataclass(frozen=True)
class Index:
    """Which models a signing name (the credential scope's service) or an endpoint prefix (the
    first label of an AWS host) may mean: botocore's newest version of each service."""

    by_signing: dict[str, tuple[Model, ...]]
    by_endpoint: dict[str, tuple[Model, ...]]

    def signed(self, name: str) -> tuple[Model, ...]:
        """The models a request signed for `name` may be for."""
        return self.by_signing.get(name.lower(), ())

    def hosted(self, prefix: str) -> tuple[Model, ...]:
        """The models whose endpoints start with `prefix`."""
        return self.by_endpoint.get(prefix.lower(), ())


_index_lock = threading.Lock()


@cache
def _index() -> Index:
    signing: dict[str, list[Model]] = {}
    endpoint: dict[str, list[Model]] = {}
    for service in sorted(p for p in DATA.iterdir() if p.is_dir()):
        path = _newest(service)
        if path is None:
            continue
        metadata = _metadata(path)
        model = Model(service.name, path, metadata)
        signing.setdefault(str(metadata.get("signingName") or model.endpoint_prefix), []).append(model)
        endpoint.setdefault(model.endpoint_prefix, []).append(model)
    return Index(
        {k: _own_first(k, v) for k, v in signing.items()},
        {k: _own_first(k, v) for k, v in endpoint.items()},
    )


def _own_first(key: str, models: list[Model]) -> tuple[Model, ...]:
    """The model named like the key first (s3 before s3control): it decides ties."""
    return tuple(sorted(models, key=lambda m: m.name != key))


def _newest(service: Path) -> Path | None:
    for version in sorted((p for p in service.iterdir() if p.is_dir()), reverse=True):
        for name in MODEL_FILES:
            if (version / name).is_file():
                return version / name
    return None


def index() -> Index:
    """The index of every model, built on first use (about 50 ms) and kept."""
    with _index_lock:
        return _index()

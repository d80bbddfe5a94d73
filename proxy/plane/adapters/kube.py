"""The Kubernetes adapter: a request to a Kubernetes API resource path becomes a `k8s` Action.

The path is read as the API server's RequestInfoFactory reads it (k8s.io/apiserver, package
endpoints/request): `/api/v1/...` for the core group, `/apis/GROUP/VERSION/...` for the others,
an optional `watch` or `proxy` verb segment, `namespaces/NS/`, then `resource/name/subresource`.
The verb comes from the method (GET and HEAD: get, or list and watch without a name; POST:
create; PUT: update; PATCH: patch; DELETE: delete, or deletecollection without a name).
Discovery and other non-resource paths (`/api`, `/apis`, `/version`, `/openapi/v2`, `/healthz`)
stay plain HTTP. The effect is the verb's, never lower than the method's (which already counts
method-override headers), so classifying never makes a request count for less.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any
from urllib.parse import parse_qsl

from rules import Action, Effect, Kube, readings_of

PROTOCOL = "k8s"

VERB_EFFECTS = {
    "get": Effect.READ,
    "list": Effect.READ,
    "watch": Effect.READ,
    "create": Effect.WRITE,
    "update": Effect.WRITE,
    "patch": Effect.WRITE,
    "delete": Effect.DESTRUCTIVE,
    "deletecollection": Effect.DESTRUCTIVE,
}
# Verbs not listed (proxy, and the method of a request the API server names no verb for) count
# as writes: what a proxied request does is the upstream's business.

METHOD_VERBS = {
    "GET": "get",
    "HEAD": "get",
    "POST": "create",
    "PUT": "update",
    "PATCH": "patch",
    "DELETE": "delete",
}

# Subresources whose create removes something: an eviction deletes its pod.
DESTROYING = frozenset({"eviction"})
# Subresources that open a session in a container or onto its ports: at least a write, whatever
# the method (WebSocket clients open exec and attach with a GET).
CONNECTING = frozenset({"exec", "attach", "portforward"})

_SPECIAL_VERBS = frozenset({"proxy", "watch"})  # /api/v1/watch/..., /api/v1/proxy/...
_NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})  # /api/v1/namespaces/NS/status
# An API version as Kubernetes writes them: v1, v2beta1, v1alpha3. A path with anything else
# there is some other HTTP API under /api or /apis.
_VERSION = re.compile(r"v[1-9][0-9]*(?:(?:alpha|beta)[1-9][0-9]*)?")
_NAME = "metadata.name"


def classified(action: Action) -> Action:
    """The action read as a Kubernetes API request when its path is a resource path; otherwise
    the action unchanged (as are actions another adapter has already read). A method-override
    header the API server ignores but a proxy in front of it may honour gives another reading."""
    if action.protocol != "http":
        return action
    readings = readings_of(action)
    path = readings.paths[0]
    kube = request_info(action.method, path, action.query)
    if kube is None:
        return action
    others = []
    for method in readings.methods[1:]:
        other = request_info(method, path, action.query)
        if other is not None and other != kube:
            others.append(_reading(action, other, ()))
    return _reading(action, kube, tuple(others))


def _reading(action: Action, kube: Kube, others: tuple[Action, ...]) -> Action:
    return dataclasses.replace(
        action,
        protocol=PROTOCOL,
        kube=kube,
        targets=targets_of(kube, action),
        effect=action.effect.stricter(effect_of(kube)),
        others=action.others + others,
    )


def request_info(method: str, path: str, query: str = "") -> Kube | None:
    """The Kubernetes request a method and resolved path name, or None for a non-resource path."""
    parts = [p for p in path.split("/") if p]
    if len(parts) < 3 or parts[0] not in ("api", "apis"):
        return None
    group = ""
    rest = parts[1:]
    if parts[0] == "apis":
        if len(rest) < 3:
            return None
        group, rest = rest[0], rest[1:]
    version, rest = rest[0], rest[1:]
    # The core group has only ever had v1; the API server answers 404 to anything else there.
    if not _VERSION.fullmatch(version) or (not group and version != "v1"):
        return None
    if rest[0] in _SPECIAL_VERBS:
        if len(rest) < 2:
            return None  # the API server cannot tell a kind from `/api/v1/watch` alone
        verb, rest = rest[0], rest[1:]
    else:
        verb = METHOD_VERBS.get(method.upper(), method.lower())
    namespace = None
    if rest[0] == "namespaces" and len(rest) > 1:
        namespace = rest[1]
        if len(rest) > 2 and rest[2] not in _NAMESPACE_SUBRESOURCES:
            rest = rest[2:]  # namespaces/NS/RESOURCE/...: the resource is the next segment
    subresource = rest[2] if len(rest) >= 3 and verb != "proxy" else None
    name = rest[1] if len(rest) >= 2 else None
    resource = rest[0]
    if name is None and verb == "get":
        params = _params(query)
        verb = "watch" if _truth(params.get("watch")) else "list"
        name = _selected_name(params.get("fieldSelector"))
    if name is None and verb == "delete":
        verb = "deletecollection"
    return Kube(verb, resource, version, group, subresource, namespace, name)


def effect_of(kube: Kube) -> Effect:
    """What a Kubernetes request does, by its verb and subresource."""
    if kube.subresource in DESTROYING and kube.verb == "create":
        return Effect.DESTRUCTIVE
    effect = VERB_EFFECTS.get(kube.verb, Effect.WRITE)
    if kube.subresource in CONNECTING:
        effect = effect.stricter(Effect.WRITE)
    return effect


def targets_of(kube: Kube, action: Action) -> tuple[str, ...]:
    """`namespace/name`, or `name` for a cluster-scoped resource (a namespace is one, though the
    API server files it under itself); `namespace/*` or `*` for a collection. A create without
    a name in its path names what the JSON body's `metadata.name` says (every reading of it)."""
    names: tuple[str, ...] = (kube.name,) if kube.name is not None else ()
    if not names and kube.verb == "create" and action.body:
        found = (_metadata_name(doc) for doc in readings_of(action).documents)
        names = tuple(dict.fromkeys(n for n in found if n is not None))
    namespace = None if kube.resource == "namespaces" else kube.namespace
    return tuple(f"{namespace}/{n}" if namespace is not None else n for n in names or ("*",))


def _metadata_name(doc: Any) -> str | None:
    metadata = doc.get("metadata") if isinstance(doc, dict) else None
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return name if isinstance(name, str) and name else None


def _params(query: str) -> dict[str, str]:
    # The API server decodes list options from the first value of each parameter.
    out: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        out.setdefault(key, value)
    return out


def _truth(value: str | None) -> bool:
    # As the API server converts a query parameter to a bool: present and neither "0" nor
    # "false" (any case) is true, even when empty.
    return value is not None and value != "0" and value.lower() != "false"


def _selected_name(selector: str | None) -> str | None:
    """The name a list or watch is narrowed to by `fieldSelector=metadata.name=NAME`."""
    if not selector:
        return None
    for term in selector.split(","):
        for op in ("==", "="):
            field, sep, value = term.partition(op)
            if sep and field.strip() == _NAME and not field.endswith("!"):
                value = value.strip()
                if value and value not in (".", "..") and "/" not in value and "%" not in value:
                    return value
                return None
    return None

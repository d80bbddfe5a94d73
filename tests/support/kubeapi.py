"""A small Kubernetes API server on loopback that records every request it receives.

A real API server cannot run here: this environment has no kube-apiserver binary, no etcd and
no cluster (Debian ships only the client, kubectl). So this server answers as the API server
does for the calls the tests make, and no more: discovery (`/api`, `/apis`, `/version`; no
OpenAPI, so kubectl falls back to what it knows), and for namespaces, configmaps, pods and
deployments: get, list, watch, create, update, patch (JSON merge and strategic merge treated
alike, server-side apply as create-or-merge), delete, deletecollection, and the deployments'
`scale` subresource. Objects live in memory; errors are `Status` objects as the API server
sends them.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import yaml

from .upstream import free_port


@dataclass(frozen=True)
class Kind:
    """A resource the server serves: its group/version, plural, kind and scope."""

    group_version: str
    resource: str
    kind: str
    namespaced: bool
    short: tuple[str, ...] = ()

    @property
    def prefix(self) -> str:
        """The path its group/version lives under: `/api/v1` or `/apis/apps/v1`."""
        return "/api/v1" if self.group_version == "v1" else f"/apis/{self.group_version}"


KINDS = (
    Kind("v1", "namespaces", "Namespace", namespaced=False, short=("ns",)),
    Kind("v1", "configmaps", "ConfigMap", namespaced=True, short=("cm",)),
    Kind("v1", "pods", "Pod", namespaced=True, short=("po",)),
    Kind("apps/v1", "deployments", "Deployment", namespaced=True, short=("deploy",)),
)
VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


@dataclass(frozen=True)
class Received:
    """One request as the server received it."""

    method: str
    path: str
    query: dict[str, str]
    body: bytes
    headers: dict[str, str]


@dataclass
class KubeApi:
    """The server's address, its objects, and every request it has received."""

    port: int = field(default_factory=free_port)
    received: list[Received] = field(default_factory=list)
    objects: dict[tuple[str, str, str | None, str], dict[str, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    watchers: list[tuple[str, str, str | None, queue.Queue[dict[str, Any] | None]]] = field(
        default_factory=list
    )
    version: int = 1

    @property
    def url(self) -> str:
        """Base URL of the server."""
        return f"http://127.0.0.1:{self.port}"

    def requests(self, method: str | None = None, path: str | None = None) -> list[Received]:
        """Requests received so far, optionally only one method and path."""
        with self.lock:
            return [
                r
                for r in self.received
                if (method is None or r.method == method) and (path is None or r.path == path)
            ]

    def put(self, kind: str, obj: dict[str, Any]) -> None:
        """Store an object of resource `kind` (`deployments`) as if it had been created."""
        self.store(_kind(kind), obj)

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The stored object, or None."""
        k = _kind(kind)
        with self.lock:
            return self.objects.get((k.group_version, k.resource, namespace, name))

    def store(self, kind: Kind, obj: dict[str, Any], event: str = "ADDED") -> dict[str, Any]:
        """Keep `obj` (its metadata completed) and tell the watchers of its collection."""
        meta = obj.setdefault("metadata", {})
        obj["apiVersion"], obj["kind"] = kind.group_version, kind.kind
        with self.lock:
            self.version += 1
            meta["resourceVersion"] = str(self.version)
            meta.setdefault("uid", f"uid-{self.version}")
            meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
            if not kind.namespaced:
                meta.pop("namespace", None)
            key = (kind.group_version, kind.resource, meta.get("namespace"), meta["name"])
            event = "MODIFIED" if key in self.objects and event == "ADDED" else event
            self.objects[key] = obj
            self._notify(kind, meta.get("namespace"), {"type": event, "object": obj})
        return obj

    def remove(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any] | None:
        """Delete one object; None when there was none."""
        with self.lock:
            obj = self.objects.pop((kind.group_version, kind.resource, namespace, name), None)
            if obj is not None:
                self._notify(kind, namespace, {"type": "DELETED", "object": obj})
            return obj

    def items(self, kind: Kind, namespace: str | None) -> list[dict[str, Any]]:
        """The objects of a collection (every namespace's when `namespace` is None)."""
        with self.lock:
            return [
                o
                for (gv, res, ns, _), o in sorted(self.objects.items(), key=lambda kv: str(kv[0]))
                if gv == kind.group_version and res == kind.resource and namespace in (None, ns)
            ]

    def _notify(self, kind: Kind, namespace: str | None, event: dict[str, Any]) -> None:
        for gv, resource, ns, events in self.watchers:
            if (gv, resource) == (kind.group_version, kind.resource) and ns in (None, namespace):
                events.put(json.loads(json.dumps(event)))

    def close_watches(self) -> None:
        """End every open watch."""
        with self.lock:
            for *_, events in self.watchers:
                events.put(None)


def _kind(resource: str) -> Kind:
    return next(k for k in KINDS if k.resource == resource)


def status(code: int, reason: str, message: str, **details: Any) -> dict[str, Any]:
    """A `Status` object as the API server sends one."""
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "code": code}
    body |= {"status": "Success" if code < 400 else "Failure", "message": message, "reason": reason}
    return body | ({"details": details} if details else {})


def merged(target: Any, patch: Any) -> Any:
    """A JSON merge patch (RFC 7386) applied to `target`; strategic merge patches of the fields
    these tests touch read the same."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merged(out.get(key), value)
    return out


def _discovery(api: KubeApi, path: str) -> dict[str, Any] | None:
    if path == "/version":
        return {"major": "1", "minor": "32", "gitVersion": "v1.32.0", "platform": "linux/amd64"}
    if path == "/api":
        cidrs = [{"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{api.port}"}]
        return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": cidrs}
    if path == "/apis":
        groups = sorted({k.group_version for k in KINDS if k.group_version != "v1"})
        return {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [
                {
                    "name": gv.split("/")[0],
                    "versions": [{"groupVersion": gv, "version": gv.split("/")[1]}],
                    "preferredVersion": {"groupVersion": gv, "version": gv.split("/")[1]},
                }
                for gv in groups
            ],
        }
    for gv in {k.group_version for k in KINDS}:
        if path == _kind(next(k.resource for k in KINDS if k.group_version == gv)).prefix:
            resources: list[dict[str, Any]] = []
            for k in KINDS:
                if k.group_version == gv:
                    resources.append(
                        {
                            "name": k.resource,
                            "singularName": k.kind.lower(),
                            "namespaced": k.namespaced,
                            "kind": k.kind,
                            "verbs": VERBS,
                            "shortNames": list(k.short),
                        }
                    )
                    if k.resource == "deployments":
                        scale = {"name": "deployments/scale", "singularName": "", "namespaced": True}
                        scale |= {"group": "autoscaling", "version": "v1", "kind": "Scale"}
                        resources.append(scale | {"verbs": ["get", "patch", "update"]})
            return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}
    return None


def _route(path: str) -> tuple[Kind, str | None, str | None, str | None] | None:
    """(kind, namespace, name, subresource) of a resource path this server serves."""
    for k in sorted(KINDS, key=lambda k: not k.namespaced):  # namespaces/NS/... first
        if not path.startswith(k.prefix + "/"):
            continue
        parts = path[len(k.prefix) + 1 :].split("/")
        namespace = None
        if k.namespaced and len(parts) >= 3 and parts[0] == "namespaces":
            namespace, parts = parts[1], parts[2:]
        if parts[0] != k.resource or len(parts) > 3:
            continue
        return k, namespace, parts[1] if len(parts) > 1 else None, parts[2] if len(parts) > 2 else None
    return None


def _handler(api: KubeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, code: int, body: dict[str, Any]) -> None:
            payload = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        def _any(self) -> None:
            url = urlsplit(self.path)
            query = dict(parse_qsl(url.query, keep_blank_values=True))
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            with api.lock:
                api.received.append(Received(self.command, url.path, query, body, headers))
            found = _discovery(api, url.path) if self.command in ("GET", "HEAD") else None
            if found is not None:
                return self._send(200, found)
            route = _route(url.path)
            if route is None:
                return self._send(
                    404, status(404, "NotFound", "the server could not find the requested resource")
                )
            kind, namespace, name, sub = route
            try:
                doc = yaml.safe_load(body) if body else None
            except yaml.YAMLError as e:
                return self._send(400, status(400, "BadRequest", f"the body is not JSON or YAML: {e}"))
            self._serve(kind, namespace, name, sub, query, headers, doc)

        def _serve(
            self,
            kind: Kind,
            namespace: str | None,
            name: str | None,
            sub: str | None,
            query: dict[str, str],
            headers: dict[str, str],
            doc: Any,
        ) -> None:
            method = self.command
            if name is None:
                if method in ("GET", "HEAD"):
                    if query.get("watch") not in (None, "0", "false"):
                        return self._watch(kind, namespace, query)
                    return self._send(200, self._list(kind, namespace, query))
                if method == "POST":
                    return self._create(kind, namespace, doc)
                if method == "DELETE":
                    out = self._list(kind, namespace, query)
                    for item in out["items"]:
                        api.remove(kind, namespace, item["metadata"]["name"])
                    return self._send(200, out)
                return self._send(405, status(405, "MethodNotAllowed", f"{method} on a collection"))
            current = api.get(kind.resource, namespace, name)
            missing = status(
                404, "NotFound", f'{kind.resource} "{name}" not found', name=name, kind=kind.resource
            )
            if sub == "scale":
                return self._scale(kind, current, doc, missing)
            if method in ("GET", "HEAD"):
                return self._send(200, current) if current else self._send(404, missing)
            if method == "DELETE":
                gone = api.remove(kind, namespace, name)
                if gone is None:
                    return self._send(404, missing)
                return self._send(
                    200, status(200, "", "", name=name, kind=kind.resource, uid=gone["metadata"]["uid"])
                )
            if method == "PUT" and isinstance(doc, dict):
                if current is None:
                    return self._send(404, missing)
                return self._send(
                    200,
                    api.store(kind, doc | {"metadata": doc.get("metadata", {}) | {"namespace": namespace}}),
                )
            if method == "PATCH" and isinstance(doc, dict):
                applying = headers.get("content-type", "").startswith("application/apply-patch")
                if current is None and not applying:
                    return self._send(404, missing)
                obj = merged(current or {}, doc)
                obj["metadata"] = dict(obj.get("metadata") or {}) | {"name": name, "namespace": namespace}
                return self._send(201 if current is None else 200, api.store(kind, obj))
            return self._send(405, status(405, "MethodNotAllowed", f"{method} on {kind.resource}"))

        def _list(self, kind: Kind, namespace: str | None, query: dict[str, str]) -> dict[str, Any]:
            items = api.items(kind, namespace)
            selector = query.get("fieldSelector", "")
            if selector.startswith("metadata.name="):
                items = [i for i in items if i["metadata"]["name"] == selector.partition("=")[2]]
            meta = {"resourceVersion": str(api.version)}
            return {
                "kind": f"{kind.kind}List",
                "apiVersion": kind.group_version,
                "metadata": meta,
                "items": items,
            }

        def _create(self, kind: Kind, namespace: str | None, doc: Any) -> None:
            if not isinstance(doc, dict) or not (doc.get("metadata") or {}).get("name"):
                return self._send(422, status(422, "Invalid", f"{kind.kind} has no metadata.name"))
            meta = dict(doc["metadata"]) | ({"namespace": namespace} if namespace else {})
            if api.get(kind.resource, namespace, meta["name"]) is not None:
                message = f'{kind.resource} "{meta["name"]}" already exists'
                return self._send(409, status(409, "AlreadyExists", message, name=meta["name"]))
            self._send(201, api.store(kind, doc | {"metadata": meta}))

        def _scale(
            self, kind: Kind, current: dict[str, Any] | None, doc: Any, missing: dict[str, Any]
        ) -> None:
            if current is None:
                return self._send(404, missing)
            if self.command in ("PATCH", "PUT") and isinstance(doc, dict):
                replicas = (doc.get("spec") or {}).get("replicas")
                if isinstance(replicas, int):
                    current = api.store(kind, merged(current, {"spec": {"replicas": replicas}}))
            meta = {k: current["metadata"][k] for k in ("name", "namespace", "resourceVersion")}
            replicas = (current.get("spec") or {}).get("replicas", 1)
            scale = {"kind": "Scale", "apiVersion": "autoscaling/v1", "metadata": meta}
            self._send(200, scale | {"spec": {"replicas": replicas}, "status": {"replicas": replicas}})

        def _watch(self, kind: Kind, namespace: str | None, query: dict[str, str]) -> None:
            events: queue.Queue[dict[str, Any] | None] = queue.Queue()
            with api.lock:
                api.watchers.append((kind.group_version, kind.resource, namespace, events))
            if query.get("resourceVersion") in (None, "", "0"):
                for item in api.items(kind, namespace):
                    events.put({"type": "ADDED", "object": item})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                while (event := events.get()) is not None:
                    line = json.dumps(event).encode() + b"\n"
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass  # the client went away
            finally:
                with api.lock:
                    api.watchers[:] = [w for w in api.watchers if w[3] is not events]
            self.close_connection = True

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _any

    return Handler


@contextmanager
def serving_kube(api: KubeApi | None = None) -> Iterator[KubeApi]:
    """A KubeApi served on loopback in a thread until the block ends (open watches are ended)."""
    api = api or KubeApi()
    server = ThreadingHTTPServer(("127.0.0.1", api.port), _handler(api))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield api
    finally:
        api.close_watches()
        server.shutdown()
        server.server_close()

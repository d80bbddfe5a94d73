"""Kubernetes API requests read as the API server reads them: the classifier over paths, the
starter pack's verdicts, and real kubectl and the official Python client through a real
`airlock run` to a Kubernetes API server on loopback.

The API server is tests/support/kubeapi.py, a stand-in: no kube-apiserver binary, etcd or
cluster can run here (Debian ships only the client). kubectl and the Python client are real.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from mitmproxy import http

from proxy.plane.adapters.http import from_request
from proxy.plane.adapters.kube import classified
from proxy.plane.explain import explain_request
from rules import Action, Effect, Kube, Ruleset, Verdict

from .support import AIRLOCK, Airlock, environ_without_proxy, started_airlock, wait_for
from .support.kubeapi import KubeApi, serving_kube

READ, WRITE, DESTRUCTIVE = R, W, D = Effect.READ, Effect.WRITE, Effect.DESTRUCTIVE
ROOT = Path(__file__).resolve().parent.parent
PACK = ROOT / "rules" / "kubernetes.yaml"
API = "https://cluster.test:6443"


def action_of(method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None) -> Action:
    """The plain HTTP Action of a request, as the proxy's HTTP adapter reads it."""
    fields = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    req = http.Request.make(method, f"{API}{target}", body, fields)
    return from_request(req, agent="agent")


# ---- the classifier ---------------------------------------------------------------------------

# (request, then the Kubernetes request it reads as: "verb group/version resource[/subresource]
# namespace name" with - for none, its target, its effect)
CASES: list[tuple[str, str, str, Effect]] = [
    # core group, namespaced
    ("GET /api/v1/namespaces/dev/pods/web-1", "get v1 pods dev web-1", "dev/web-1", R),
    ("HEAD /api/v1/namespaces/dev/pods/web-1", "get v1 pods dev web-1", "dev/web-1", R),
    ("GET /api/v1/namespaces/dev/pods?limit=500", "list v1 pods dev -", "dev/*", R),
    ("GET /api/v1/pods", "list v1 pods - -", "*", R),
    ("PUT /api/v1/namespaces/dev/configmaps/cfg", "update v1 configmaps dev cfg", "dev/cfg", W),
    ("PATCH /api/v1/namespaces/dev/configmaps/cfg", "patch v1 configmaps dev cfg", "dev/cfg", W),
    ("DELETE /api/v1/namespaces/prod/configmaps/cfg", "delete v1 configmaps prod cfg", "prod/cfg", D),
    # grouped resources
    ("GET /apis/apps/v1/namespaces/prod/deployments/api", "get apps/v1 deployments prod api", "prod/api", R),
    (
        "DELETE /apis/apps/v1/namespaces/prod/deployments/api",
        "delete apps/v1 deployments prod api",
        "prod/api",
        D,
    ),
    ("POST /apis/batch/v1/namespaces/ci/jobs", "create batch/v1 jobs ci -", "ci/*", W),
    ("GET /apis/example.com/v1beta2/namespaces/a/widgets/w", "get example.com/v1beta2 widgets a w", "a/w", R),
    # cluster-scoped resources, and the namespace object (which the API server files under itself)
    ("GET /api/v1/nodes/node-1", "get v1 nodes - node-1", "node-1", R),
    (
        "DELETE /apis/rbac.authorization.k8s.io/v1/clusterroles/admin",
        "delete rbac.authorization.k8s.io/v1 clusterroles - admin",
        "admin",
        D,
    ),
    ("GET /api/v1/namespaces", "list v1 namespaces - -", "*", R),
    ("DELETE /api/v1/namespaces/prod", "delete v1 namespaces prod prod", "prod", D),
    ("PUT /api/v1/namespaces/prod/finalize", "update v1 namespaces/finalize prod prod", "prod", W),
    ("GET /api/v1/namespaces/prod/status", "get v1 namespaces/status prod prod", "prod", R),
    # subresources
    (
        "PUT /apis/apps/v1/namespaces/dev/deployments/web/status",
        "update apps/v1 deployments/status dev web",
        "dev/web",
        W,
    ),
    (
        "PATCH /apis/apps/v1/namespaces/dev/deployments/web/scale",
        "patch apps/v1 deployments/scale dev web",
        "dev/web",
        W,
    ),
    (
        "POST /api/v1/namespaces/dev/pods/web-1/exec?command=sh",
        "create v1 pods/exec dev web-1",
        "dev/web-1",
        W,
    ),
    # a WebSocket client opens exec with a GET: still a session in the container
    ("GET /api/v1/namespaces/dev/pods/web-1/exec?command=sh", "get v1 pods/exec dev web-1", "dev/web-1", W),
    ("GET /api/v1/namespaces/dev/pods/web-1/log?follow=true", "get v1 pods/log dev web-1", "dev/web-1", R),
    (
        "POST /api/v1/namespaces/prod/pods/web-1/eviction",
        "create v1 pods/eviction prod web-1",
        "prod/web-1",
        D,
    ),
    # watches: the query parameter (any value but 0 or false) and the legacy /watch/ prefix
    ("GET /api/v1/namespaces/dev/pods?watch=true", "watch v1 pods dev -", "dev/*", R),
    ("GET /api/v1/namespaces/dev/pods?watch=1&resourceVersion=5", "watch v1 pods dev -", "dev/*", R),
    ("GET /api/v1/namespaces/dev/pods?watch=false", "list v1 pods dev -", "dev/*", R),
    ("GET /api/v1/namespaces/dev/pods?watch=0", "list v1 pods dev -", "dev/*", R),
    ("GET /api/v1/watch/namespaces/dev/pods", "watch v1 pods dev -", "dev/*", R),
    (
        "GET /apis/apps/v1/watch/namespaces/dev/deployments/web",
        "watch apps/v1 deployments dev web",
        "dev/web",
        R,
    ),
    # a list or watch narrowed to one name names it
    (
        "GET /api/v1/namespaces/dev/pods?fieldSelector=metadata.name%3Dweb-1&watch=true",
        "watch v1 pods dev web-1",
        "dev/web-1",
        R,
    ),
    # collections
    ("DELETE /api/v1/namespaces/dev/pods", "deletecollection v1 pods dev -", "dev/*", D),
    (
        "DELETE /apis/apps/v1/namespaces/prod/deployments?labelSelector=app%3Dapi",
        "deletecollection apps/v1 deployments prod -",
        "prod/*",
        D,
    ),
    # the legacy proxy verb: what it does is the method's
    ("GET /api/v1/proxy/namespaces/dev/services/web/healthz", "proxy v1 services dev web", "dev/web", W),
    # paths resolved as the server resolves them
    ("DELETE /api/v1/namespaces/dev/../prod/pods/x", "delete v1 pods prod x", "prod/x", D),
    ("DELETE /api/v1/namespaces/%70rod/pods/x", "delete v1 pods prod x", "prod/x", D),
]


@pytest.mark.parametrize(("request_line", "kube", "target", "effect"), CASES, ids=[c[0] for c in CASES])
def test_resource_paths_are_read_as_the_api_server_reads_them(
    request_line: str, kube: str, target: str, effect: Effect
) -> None:
    method, _, path = request_line.partition(" ")
    read = classified(action_of(method, path))
    verb, group_version, resources, namespace, name = kube.split()
    group, _, version = group_version.rpartition("/")
    resource, _, subresource = resources.partition("/")
    assert read.protocol == "k8s"
    assert read.kube == Kube(
        verb,
        resource,
        version,
        group,
        subresource or None,
        None if namespace == "-" else namespace,
        None if name == "-" else name,
    )
    assert read.targets == (target,)
    assert read.effect is effect


@pytest.mark.parametrize(
    "target",
    [
        "/api",
        "/api/v1",
        "/apis",
        "/apis/apps",
        "/apis/apps/v1",
        "/version",
        "/openapi/v2",
        "/openapi/v3/apis/apps/v1",
        "/healthz",
        "/readyz",
        "/api/v1/watch",
        "/api/users/42",  # no API version there: some other HTTP API
        "/api/v3/repos/octo/hello",  # the core group has only v1
        "/apis/billing/latest/invoices/7",
    ],
)
def test_non_resource_paths_stay_plain_http(target: str) -> None:
    plain = action_of("GET", target)
    assert classified(plain) is plain


def test_a_create_names_what_its_body_names() -> None:
    cm = json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}}).encode()
    read = classified(
        action_of("POST", "/api/v1/namespaces/dev/configmaps", cm, {"content-type": "application/json"})
    )
    assert read.kube is not None and (read.kube.verb, read.kube.name) == ("create", None)
    assert read.targets == ("dev/cfg",)
    ns = classified(action_of("POST", "/api/v1/namespaces", b'{"metadata": {"name": "team-a"}}'))
    assert ns.targets == ("team-a",)
    generated = b'{"metadata": {"generateName": "job-"}}'
    assert classified(action_of("POST", "/apis/batch/v1/namespaces/ci/jobs", generated)).targets == ("ci/*",)
    # Parsers that keep the first or the last of a repeated key read different names: both count.
    twice = b'{"metadata": {"name": "harmless", "name": "prod-db"}}'
    assert set(classified(action_of("POST", "/api/v1/namespaces/dev/configmaps", twice)).targets) == {
        "dev/harmless",
        "dev/prod-db",
    }


def test_the_effect_is_never_lower_than_the_methods() -> None:
    # A method override the API server ignores: a proxy in front of it may honour it.
    overridden = classified(
        action_of(
            "POST", "/apis/apps/v1/namespaces/prod/deployments", b"{}", {"X-HTTP-Method-Override": "DELETE"}
        )
    )
    assert overridden.effect is DESTRUCTIVE
    assert overridden.kube is not None and overridden.kube.verb == "create"
    assert [o.kube.verb for o in overridden.others if o.kube] == ["deletecollection"]
    # An unknown method is a write, whatever the path.
    odd = classified(action_of("PURGE", "/api/v1/namespaces/dev/pods/x"))
    assert odd.kube is not None and odd.kube.verb == "purge" and odd.effect is WRITE


def test_an_action_another_adapter_read_is_left_alone() -> None:
    aws = dataclasses.replace(action_of("GET", "/api/v1/namespaces/dev/pods/x"), protocol="aws")
    assert classified(aws) is aws


# ---- the starter pack -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pack() -> Ruleset:
    """rules/kubernetes.yaml as shipped, with this test's API server allowed."""
    return Ruleset.load(PACK)


def verdict(ruleset: Ruleset, method: str, target: str, body: bytes = b"") -> tuple[Verdict, str | None]:
    """How the proxy's own triage decides a request to the API server on localhost."""
    read = explain_request(
        ruleset,
        method=method,
        url=f"https://localhost:6443{target}",
        headers=[("Content-Type", "application/json")] if body else [],
        body=body,
        agent="agent",
    )
    return read.decision.verdict, read.decision.rule


@pytest.mark.parametrize(
    ("method", "target", "expected"),
    [
        ("GET", "/apis/apps/v1/namespaces/prod/deployments/api", (Verdict.ALLOW, "k8s-reads")),
        ("GET", "/api/v1/namespaces/prod/pods?watch=true", (Verdict.ALLOW, "k8s-reads")),
        ("GET", "/api/v1/namespaces/dev/secrets/db", (Verdict.LOG, "k8s-secret-reads-marked")),
        ("PATCH", "/apis/apps/v1/namespaces/prod/deployments/api/scale", (Verdict.ALLOW, None)),
        ("DELETE", "/apis/apps/v1/namespaces/dev/deployments/api", (Verdict.HOLD, "k8s-deletes-held")),
        ("DELETE", "/api/v1/namespaces/dev/pods", (Verdict.HOLD, "k8s-deletes-held")),
        ("POST", "/api/v1/namespaces/dev/pods/web-1/eviction", (Verdict.HOLD, "k8s-deletes-held")),
        ("POST", "/api/v1/namespaces/dev/pods/web-1/exec?command=sh", (Verdict.HOLD, "k8s-sessions-held")),
        ("GET", "/api/v1/namespaces/dev/pods/web-1/exec?command=sh", (Verdict.HOLD, "k8s-sessions-held")),
        ("POST", "/api/v1/namespaces/dev/pods/web-1/portforward", (Verdict.HOLD, "k8s-sessions-held")),
        (
            "POST",
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            (Verdict.HOLD, "k8s-rbac-changes-held"),
        ),
        ("GET", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", (Verdict.ALLOW, "k8s-reads")),
        ("DELETE", "/api/v1/namespaces/dev", (Verdict.DENY, "k8s-no-namespace-deletes")),
        (
            "DELETE",
            "/apis/apps/v1/namespaces/prod/deployments/api",
            (Verdict.DENY, "k8s-no-production-deletes"),
        ),
        ("DELETE", "/api/v1/namespaces/production/configmaps", (Verdict.DENY, "k8s-no-production-deletes")),
        (
            "POST",
            "/api/v1/namespaces/prod-eu/pods/web-1/eviction",
            (Verdict.DENY, "k8s-no-production-deletes"),
        ),
    ],
)
def test_the_pack_decides_as_it_promises(
    pack: Ruleset, method: str, target: str, expected: tuple[Verdict, str | None]
) -> None:
    verdict_, rule = verdict(pack, method, target)
    assert verdict_ is expected[0]
    if expected[1] is not None:
        assert rule == expected[1]


def test_the_pack_explained_on_the_command_line(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            AIRLOCK,
            "rules",
            "explain",
            "--rules",
            str(PACK),
            "--method",
            "DELETE",
            "--url",
            "https://localhost:6443/apis/apps/v1/namespaces/prod/deployments/api",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    shown = json.loads(out.stdout)
    assert shown["decision"]["verdict"] == "deny" and shown["decision"]["rule"] == "k8s-no-production-deletes"
    assert shown["action"]["protocol"] == "k8s"


# ---- kubectl and the Python client through a real proxy -----------------------------------------

RULES = """\
version: 1
egress:
  allow: [localhost, 127.0.0.1]
defaults: {read: allow, write: allow, destructive: allow}
rules:
  - id: no-prod-deletes
    description: Agents never delete anything in the prod namespace.
    match: {protocol: k8s, verb: delete, namespace: prod}
    action: deny
    message: Deleting in prod is not allowed; ask an operator to do it.
"""


def deployment(name: str, namespace: str) -> dict[str, Any]:
    """A Deployment of one replica, as complete as clients that validate it expect."""
    labels = {"app": name}
    pod = {"metadata": {"labels": labels}, "spec": {"containers": [{"name": name, "image": "nginx:1.27"}]}}
    spec = {"replicas": 1, "selector": {"matchLabels": labels}, "template": pod}
    return {"metadata": {"name": name, "namespace": namespace}, "spec": spec}


@pytest.fixture(scope="module")
def cluster() -> Iterator[KubeApi]:
    """The API server, with namespaces dev and prod and a deployment `api` in each."""
    with serving_kube() as api:
        for ns in ("dev", "prod"):
            api.put("namespaces", {"metadata": {"name": ns}})
            api.put("deployments", deployment("api", ns))
        yield api


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Airlock]:
    """One `airlock run` for the module, denying deletes in prod."""
    a = started_airlock(tmp_path_factory.mktemp("airlock"), RULES)
    try:
        yield a
    finally:
        a.stop()


@pytest.fixture(scope="module")
def kubectl_env(tmp_path_factory: pytest.TempPathFactory, cluster: KubeApi, proxy: Airlock) -> dict[str, str]:
    """An environment whose kubeconfig reaches the API server through the proxy (`proxy-url`)."""
    home = tmp_path_factory.mktemp("home")
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": cluster.url, "proxy-url": proxy.proxy}}],
        "users": [{"name": "agent", "user": {"token": "not-a-real-token"}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": "agent", "namespace": "dev"}}],
        "current-context": "local",
    }
    (home / "kubeconfig").write_text(json.dumps(config))
    return environ_without_proxy() | {"HOME": str(home), "KUBECONFIG": str(home / "kubeconfig")}


def kubectl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run the real kubectl."""
    return subprocess.run(["kubectl", *args], capture_output=True, text=True, env=env, timeout=60)


def logged_since(a: Airlock, first: int) -> list[dict[str, Any]]:
    """The actions logged with an id of at least `first`."""
    return [x for x in a.log() if int(x["id"]) >= first]


def next_id(a: Airlock) -> int:
    """The id the next logged action will get."""
    return max((int(x["id"]) for x in a.log()), default=0) + 1


def kube_fields(entry: dict[str, Any]) -> tuple[Any, ...]:
    """What the log says a Kubernetes action was."""
    return (entry["protocol"], entry["verb"], entry["resource"], entry.get("namespace"), entry.get("name"))


def test_kubectl_get_list_apply_scale_and_delete_are_logged(
    kubectl_env: dict[str, str], cluster: KubeApi, proxy: Airlock, tmp_path: Path
) -> None:
    first = next_id(proxy)
    out = kubectl(kubectl_env, "get", "deployments", "-o", "name")
    assert out.returncode == 0 and out.stdout.split() == ["deployment.apps/api"], out.stderr
    out = kubectl(kubectl_env, "get", "deployment", "api", "-o", "jsonpath={.spec.replicas}")
    assert out.returncode == 0 and out.stdout == "1", out.stderr

    manifest = tmp_path / "settings.yaml"
    manifest.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {level: debug}\n")
    out = kubectl(kubectl_env, "apply", "--validate=false", "-f", str(manifest))
    assert out.returncode == 0 and out.stdout.strip() == "configmap/settings created", out.stderr
    manifest.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {level: info}\n")
    out = kubectl(kubectl_env, "apply", "--server-side", "--validate=false", "-f", str(manifest))
    assert out.returncode == 0 and out.stdout.strip() == "configmap/settings serverside-applied", out.stderr
    stored = cluster.get("configmaps", "dev", "settings")
    assert stored is not None and stored["data"] == {"level": "info"}

    out = kubectl(kubectl_env, "scale", "deployment", "api", "--replicas=3")
    assert out.returncode == 0 and out.stdout.strip() == "deployment.apps/api scaled", out.stderr
    scaled = cluster.get("deployments", "dev", "api")
    assert scaled is not None and scaled["spec"]["replicas"] == 3

    out = kubectl(kubectl_env, "delete", "configmap", "settings")
    assert out.returncode == 0 and out.stdout.strip() == 'configmap "settings" deleted', out.stderr
    assert cluster.get("configmaps", "dev", "settings") is None
    assert cluster.requests("DELETE", "/api/v1/namespaces/dev/configmaps/settings")

    kube = [x for x in logged_since(proxy, first) if x["protocol"] == "k8s"]
    seen = [kube_fields(x) for x in kube]
    for expected in [
        ("k8s", "list", "deployments", "dev", None),
        ("k8s", "get", "deployments", "dev", "api"),
        ("k8s", "create", "configmaps", "dev", None),
        ("k8s", "patch", "configmaps", "dev", "settings"),
        ("k8s", "delete", "configmaps", "dev", "settings"),
    ]:
        assert expected in seen, (expected, seen)
    # kubectl patches the scale subresource (older ones, Debian's 1.20, may read and update it).
    assert {x["verb"] for x in kube if x["resource"] == "deployments/scale"} & {"patch", "update"}
    create = next(x for x in kube if x["verb"] == "create")
    assert create["targets"] == ["dev/settings"] and create["effect"] == "write"
    delete = next(x for x in kube if x["verb"] == "delete")
    assert delete["targets"] == ["dev/settings"] and delete["effect"] == "destructive"
    assert delete["state"] == "committed" and delete["status"] == 200
    # Discovery is plain HTTP: the API server's own paths, not resources.
    plain = {
        x["url"].removeprefix(cluster.url) for x in logged_since(proxy, first) if x["protocol"] == "http"
    }
    assert plain <= {
        "/version?timeout=5s",
        "/api?timeout=32s",
        "/apis?timeout=32s",
        "/api/v1?timeout=32s",
        "/apis/apps/v1?timeout=32s",
        "/openapi/v3?timeout=32s",
        "/openapi/v2?timeout=32s",
    }, plain


def test_kubectl_delete_in_prod_is_refused_and_in_dev_passes(
    kubectl_env: dict[str, str], cluster: KubeApi, proxy: Airlock
) -> None:
    cluster.put("configmaps", {"metadata": {"name": "flags", "namespace": "prod"}})
    cluster.put("configmaps", {"metadata": {"name": "flags", "namespace": "dev"}})
    first = next_id(proxy)
    out = kubectl(kubectl_env, "delete", "configmap", "flags", "-n", "prod")
    assert out.returncode != 0
    assert "Error from server (Forbidden)" in out.stderr, out.stderr
    assert "Deleting in prod is not allowed; ask an operator to do it." in out.stderr
    assert not cluster.requests("DELETE", "/api/v1/namespaces/prod/configmaps/flags")
    assert cluster.get("configmaps", "prod", "flags") is not None

    out = kubectl(kubectl_env, "delete", "configmap", "flags", "-n", "dev")
    assert out.returncode == 0 and out.stdout.strip() == 'configmap "flags" deleted', out.stderr
    assert cluster.requests("DELETE", "/api/v1/namespaces/dev/configmaps/flags")

    deletes = [x for x in logged_since(proxy, first) if x["protocol"] == "k8s" and x["verb"] == "delete"]
    assert [(x["namespace"], x["state"]) for x in deletes] == [("prod", "denied"), ("dev", "committed")]
    denied = json.loads(proxy.cli("show", str(deletes[0]["id"]), "--json").stdout)
    assert denied["entries"][0]["data"]["decision"]["rule"] == "no-prod-deletes"
    text = proxy.cli("log", "--all").stdout
    assert "k8s delete configmaps prod/flags" in text and "k8s delete configmaps dev/flags" in text


def test_the_python_client_through_the_proxy(cluster: KubeApi, proxy: Airlock) -> None:
    config = k8s.Configuration(host=cluster.url)
    config.proxy = proxy.proxy
    config.api_key = {"authorization": "Bearer not-a-real-token"}
    first = next_id(proxy)
    with k8s.ApiClient(config) as api_client:
        apps, core = k8s.AppsV1Api(api_client), k8s.CoreV1Api(api_client)
        listed = apps.list_namespaced_deployment("prod").items
        assert [d.metadata.name if d.metadata else None for d in listed] == ["api"]
        assert apps.read_namespaced_deployment("api", "prod").spec.replicas == 1
        body = k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="from-python"), data={"k": "v"})
        core.create_namespaced_config_map("prod", body)
        apps.patch_namespaced_deployment_scale("api", "prod", {"spec": {"replicas": 2}})
        with pytest.raises(k8s.ApiException) as refused:
            core.delete_namespaced_config_map("from-python", "prod")
        core.create_namespaced_config_map("dev", body)
        core.delete_namespaced_config_map("from-python", "dev")
    assert refused.value.status == 403
    status = json.loads(refused.value.body or "null")
    assert (status["kind"], status["status"], status["reason"], status["code"]) == (
        "Status",
        "Failure",
        "Forbidden",
        403,
    )
    assert "Deleting in prod is not allowed; ask an operator to do it." in status["message"]
    assert cluster.get("configmaps", "prod", "from-python") is not None
    assert cluster.get("deployments", "prod", "api")["spec"]["replicas"] == 2  # type: ignore[index]

    seen = [(*kube_fields(x), x["state"]) for x in logged_since(proxy, first)]
    assert seen == [
        ("k8s", "list", "deployments", "prod", None, "committed"),
        ("k8s", "get", "deployments", "prod", "api", "committed"),
        ("k8s", "create", "configmaps", "prod", None, "committed"),
        ("k8s", "patch", "deployments/scale", "prod", "api", "committed"),
        ("k8s", "delete", "configmaps", "prod", "from-python", "denied"),
        ("k8s", "create", "configmaps", "dev", None, "committed"),
        ("k8s", "delete", "configmaps", "dev", "from-python", "committed"),
    ]
    assert cluster.get("configmaps", "dev", "from-python") is None


def test_a_watch_keeps_streaming_through_the_proxy(
    kubectl_env: dict[str, str], cluster: KubeApi, proxy: Airlock
) -> None:
    cluster.put("configmaps", {"metadata": {"name": "before", "namespace": "dev"}})
    first = next_id(proxy)
    lines: list[str] = []
    watch = subprocess.Popen(
        ["kubectl", "get", "configmaps", "--watch", "-o", "name"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=kubectl_env,
    )

    def read() -> None:
        assert watch.stdout is not None
        for line in watch.stdout:
            lines.append(line.strip())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_for(lambda: "configmap/before" in lines, "kubectl lists what is there")
        wait_for(lambda: bool(cluster.watchers), "kubectl watches the collection")
        # A change after the watch began reaches kubectl through the open stream.
        cluster.put("configmaps", {"metadata": {"name": "after", "namespace": "dev"}})
        wait_for(lambda: "configmap/after" in lines, "the watch passes the new object on")
    finally:
        watch.kill()
        watch.wait(10)
        reader.join(10)
    watches = [x for x in logged_since(proxy, first) if x["protocol"] == "k8s" and x["verb"] == "watch"]
    assert [(x["resource"], x["namespace"], x["effect"]) for x in watches] == [("configmaps", "dev", "read")]

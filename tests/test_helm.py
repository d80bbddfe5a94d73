"""The Helm chart and the Dockerfile, offline: Helm's own engine renders and lints the chart
(helm-python-sdk binds Helm's Go SDK), every object is validated against Kubernetes' schemas
(kubernetes-validate, strict), and the security properties are asserted on what was rendered.

Offline rendering has no cluster, so `lookup` finds nothing: the chart's reuse of an existing
Secret on upgrade is the one branch these tests cannot reach.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate.utils as kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from dockerfile_parse import DockerfileParser  # type: ignore[import-untyped]
from mitmproxy.certs import CertStore

from proxy.cli import build_parser
from proxy.ops.datadir import DataDir
from proxy.plane.ca import BASENAME, KEY_SIZE, cert_path, install_ca
from proxy.routing.environ import BYPASS_VARS, CA_VARS, PROXY_VARS
from rules import Ruleset

from .support import pem_of_key, self_signed_ca

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "airlock"
RELEASE = "planner"
NAMESPACE = "agents"
PROXY_URL = "http://127.0.0.1:8080"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion: native sidecars) and the
# newest whose schemas kubernetes-validate ships.
KUBE_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())

Obj = dict[str, Any]

RULES_EGRESS = """\
version: 1
egress:
  allow: [api.github.com, "*.amazonaws.com"]
defaults: {destructive: hold}
"""
RULES_DENY = """\
version: 1
rules:
  - id: no-force
    match: {method: [POST, PUT], body: {required: [force]}}
    action: deny
    message: Forced updates are not allowed.
"""

# The value sets every test renders: the defaults and one for each optional feature.
CASES: dict[str, Obj] = {
    "defaults": {},
    # Helm merges maps into the defaults: null drops the chart's default.yaml.
    "rules-inline": {
        "rules": {"files": {"default.yaml": None, "10-egress.yaml": RULES_EGRESS, "20-deny.yaml": RULES_DENY}}
    },
    "existing-claim": {"persistence": {"existingClaim": "planner-log"}},
    "network-policy": {"networkPolicy": {"enabled": True, "egressPorts": [443, 8443]}},
    "retention": {
        "airlock": {
            "retain": "7d",
            "retainSize": "6GiB",
            "archive": "/archive",
            "otlpEndpoint": "http://otel-collector.observability:4318",
        }
    },
}


@dataclass
class Rendered:
    """One render of the chart: its objects, and NOTES.txt."""

    objects: list[Obj]
    notes: str

    def all(self, kind: str) -> list[Obj]:
        """Every object of one kind."""
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str) -> Obj:
        """The only object of one kind."""
        found = self.all(kind)
        assert len(found) == 1, f"expected one {kind}, rendered {len(found)}"
        return found[0]

    @property
    def pod(self) -> Obj:
        """The pod spec of the Deployment."""
        spec: Obj = self.one("Deployment")["spec"]["template"]["spec"]
        return spec

    def container(self, name: str) -> Obj:
        """A container or init container of the pod by name."""
        for c in self.pod.get("initContainers", []) + self.pod["containers"]:
            if c["name"] == name:
                return dict(c)
        raise AssertionError(f"no container {name!r} in the pod")

    def volume(self, name: str) -> Obj:
        """A pod volume by name."""
        for v in self.pod["volumes"]:
            if v["name"] == name:
                return dict(v)
        raise AssertionError(f"no volume {name!r} in the pod")


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(chart: helm.Chart, values: Obj | None = None) -> Rendered:
    """Render the chart as `helm install planner -n agents` would, and parse every manifest."""
    manifests = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects: list[Obj] = []
    notes = ""
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return Rendered(objects, notes)


@pytest.fixture(scope="module", params=list(CASES))
def case(request: pytest.FixtureRequest, chart: helm.Chart) -> tuple[str, Rendered]:
    name: str = request.param
    return name, render(chart, CASES[name])


@pytest.fixture(scope="module")
def default(chart: helm.Chart) -> Rendered:
    return render(chart)


def env_of(container: Obj) -> dict[str, str]:
    """A container's literal environment variables."""
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def arg_after(args: list[str], flag: str) -> str:
    """The value given to `flag` in an argument list."""
    assert flag in args, f"{flag} missing from {args}"
    return args[args.index(flag) + 1]


# ---- the engine's verdicts: lint and Kubernetes' schemas ------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_lint_is_clean(name: str) -> None:
    report = helm.lint(CHART, CASES[name], strict=True, namespace=NAMESPACE, kube_version="v1.29.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, report


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
def test_every_object_is_valid_kubernetes(case: tuple[str, Rendered], kube: str) -> None:
    _, rendered = case
    assert rendered.objects
    for obj in rendered.objects:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, kube, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = "/".join(str(p) for p in e.path)
            pytest.fail(f"{where} is not valid Kubernetes {kube} at {path}: {e.message}")
        assert obj["metadata"]["namespace"] == NAMESPACE, where
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE, where
        assert labels["app.kubernetes.io/managed-by"] == "Helm", where


def test_objects_of_each_value_set(chart: helm.Chart) -> None:
    kinds = {name: sorted(o["kind"] for o in render(chart, values).objects) for name, values in CASES.items()}
    base = ["ConfigMap", "Deployment", "PersistentVolumeClaim", "Secret", "ServiceAccount"]
    assert kinds == {
        "defaults": base,
        "rules-inline": base,
        "existing-claim": [k for k in base if k != "PersistentVolumeClaim"],
        "network-policy": sorted([*base, "NetworkPolicy"]),
        "retention": base,
    }


# ---- the pod's security properties ------------------------------------------------------------


def test_agent_container_is_unprivileged(case: tuple[str, Rendered]) -> None:
    _, r = case
    agent = r.container("agent")
    sc = agent["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["runAsNonRoot"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["privileged"] is False
    airlock_uid = r.container("airlock")["securityContext"]["runAsUser"]
    assert sc["runAsUser"] == 1000 and sc["runAsUser"] not in (0, airlock_uid)
    assert r.pod["shareProcessNamespace"] is False
    assert r.pod["automountServiceAccountToken"] is False


def test_only_capture_adds_network_capabilities(case: tuple[str, Rendered]) -> None:
    _, r = case
    capture = r.container("capture")
    sc = capture["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]}
    assert sc["runAsUser"] == 0 and sc["allowPrivilegeEscalation"] is False
    assert capture["args"] == ["capture", "--uid", "1000", "--port", "8082"]
    for c in r.pod["initContainers"] + r.pod["containers"]:
        if c["name"] != "capture":
            caps = c["securityContext"]["capabilities"]
            assert "add" not in caps and caps["drop"] == ["ALL"], c["name"]
            assert c["securityContext"]["runAsNonRoot"] is True, c["name"]


def test_airlock_is_a_native_sidecar_after_capture(case: tuple[str, Rendered]) -> None:
    _, r = case
    init = r.pod["initContainers"]
    assert [c["name"] for c in init] == ["capture", "airlock"]
    assert init[1]["restartPolicy"] == "Always"
    assert "restartPolicy" not in init[0]
    assert [c["name"] for c in r.pod["containers"]] == ["agent"]
    airlock = r.container("airlock")
    assert airlock["securityContext"]["runAsUser"] == 10001
    assert airlock["securityContext"]["readOnlyRootFilesystem"] is True
    assert airlock["args"][0] == "run"
    assert arg_after(airlock["args"], "--listen") == "127.0.0.1:8080"
    assert arg_after(airlock["args"], "--control") == "127.0.0.1:8081"
    assert arg_after(airlock["args"], "--transparent") == "127.0.0.1:8082"
    assert arg_after(airlock["args"], "--agent") == RELEASE
    assert r.one("Deployment")["spec"]["strategy"] == {"type": "Recreate"}


def test_agent_environment_routes_through_the_proxy(case: tuple[str, Rendered]) -> None:
    _, r = case
    agent = r.container("agent")
    env = env_of(agent)
    assert {k: env.get(k) for k in PROXY_VARS} == dict.fromkeys(PROXY_VARS, PROXY_URL)
    assert not set(BYPASS_VARS) & set(env)
    ca_files = {env[k] for k in CA_VARS}
    assert len(ca_files) == 1, f"every CA variable names the same file: {ca_files}"
    ca_file = ca_files.pop()
    # The file is in a mount whose volume is the Secret's public certificate alone.
    mount = next(m for m in agent["volumeMounts"] if ca_file.startswith(m["mountPath"].rstrip("/") + "/"))
    volume = r.volume(mount["name"])
    assert volume["secret"]["items"] == [{"key": "ca.crt", "path": Path(ca_file).name}]
    assert mount["readOnly"] is True


def test_agent_never_mounts_the_ca_key_the_token_or_the_log(case: tuple[str, Rendered]) -> None:
    _, r = case
    airlock = r.container("airlock")
    secret = r.volume("airlock-secret")["secret"]
    assert {item["key"] for item in secret["items"]} == {"ca.pem", "control-token"}
    # Readable by Airlock's group (the pod's fsGroup), by no one else.
    assert secret["defaultMode"] == 0o440
    assert r.pod["securityContext"]["fsGroup"] == airlock["securityContext"]["runAsGroup"]
    assert arg_after(airlock["args"], "--ca") == "/etc/airlock/secret/ca.pem"
    assert arg_after(airlock["args"], "--control-token") == "/etc/airlock/secret/control-token"
    assert {m["name"] for m in r.container("agent")["volumeMounts"]} == {"airlock-ca"}
    data = next(m for m in airlock["volumeMounts"] if m["name"] == "data")
    assert data["mountPath"] == arg_after(airlock["args"], "--data") == "/data"


def test_rules_are_a_mounted_directory(case: tuple[str, Rendered]) -> None:
    name, r = case
    airlock = r.container("airlock")
    rules_dir = arg_after(airlock["args"], "--rules")
    mount = next(m for m in airlock["volumeMounts"] if m["mountPath"] == rules_dir)
    assert "subPath" not in mount and "subPathExpr" not in mount
    configmap = r.one("ConfigMap")
    assert r.volume(mount["name"])["configMap"]["name"] == configmap["metadata"]["name"]
    expected = ["10-egress.yaml", "20-deny.yaml"] if name == "rules-inline" else ["default.yaml"]
    assert sorted(configmap["data"]) == expected


def test_probes_hit_healthz_on_the_control_api(case: tuple[str, Rendered]) -> None:
    _, r = case
    airlock = r.container("airlock")
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = airlock[kind]["exec"]["command"]
        assert command[:2] == ["python", "-c"], kind
        assert "http://127.0.0.1:8081/healthz" in command[2], kind
    for c in r.pod["containers"]:
        assert "startupProbe" not in c and "readinessProbe" not in c


def test_every_container_has_requests_and_limits(case: tuple[str, Rendered]) -> None:
    _, r = case
    for c in r.pod["initContainers"] + r.pod["containers"]:
        resources = c["resources"]
        for part in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources[part]), (c["name"], part)


def test_log_volume_is_the_claim(case: tuple[str, Rendered]) -> None:
    name, r = case
    claim = r.volume("data")["persistentVolumeClaim"]["claimName"]
    if name == "existing-claim":
        assert claim == "planner-log"
        assert not r.all("PersistentVolumeClaim")
    else:
        pvc = r.one("PersistentVolumeClaim")
        assert claim == pvc["metadata"]["name"] == "planner-airlock-data"
        assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
        assert pvc["spec"]["resources"]["requests"]["storage"] == "10Gi"
        assert "storageClassName" not in pvc["spec"]


def test_network_policy_allows_dns_and_the_egress_ports(case: tuple[str, Rendered]) -> None:
    name, r = case
    if name != "network-policy":
        assert not r.all("NetworkPolicy")
        return
    policy = r.one("NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Egress"]
    pod_labels = r.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    ports = [{(p["protocol"], p["port"]) for p in rule["ports"]} for rule in policy["egress"]]
    assert ports == [{("UDP", 53), ("TCP", 53)}, {("TCP", 443), ("TCP", 8443)}]
    assert all("to" not in rule for rule in policy["egress"])


def test_network_policy_without_ports_allows_dns_only(chart: helm.Chart) -> None:
    r = render(chart, {"networkPolicy": {"enabled": True, "egressPorts": []}})
    # A rule without ports would allow every port: none is rendered.
    assert r.one("NetworkPolicy")["spec"]["egress"] == [
        {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}
    ]


def test_checksum_annotation_is_opt_in(chart: helm.Chart, default: Rendered) -> None:
    def annotations(r: Rendered) -> dict[str, str]:
        found: dict[str, str] = r.one("Deployment")["spec"]["template"]["metadata"].get("annotations", {})
        return found

    assert annotations(default) == {}
    checksum = annotations(render(chart, {"rules": {"checksumAnnotation": True}}))["checksum/rules"]
    assert re.fullmatch(r"[0-9a-f]{64}", checksum)
    changed = render(chart, {"rules": {"checksumAnnotation": True, "files": {"extra.yaml": RULES_DENY}}})
    assert annotations(changed)["checksum/rules"] != checksum
    # An existing ConfigMap is not the chart's to hash: it reloads live.
    existing = render(chart, {"rules": {"checksumAnnotation": True, "existingConfigMap": "team-rules"}})
    assert annotations(existing) == {}
    assert not existing.all("ConfigMap")
    assert existing.volume("rules")["configMap"]["name"] == "team-rules"


# ---- what the objects hold works with Airlock itself -----------------------------------------


def test_rules_in_the_configmap_load_in_airlock(case: tuple[str, Rendered], tmp_path: Path) -> None:
    _, r = case
    for file, text in r.one("ConfigMap")["data"].items():
        (tmp_path / file).write_text(text)
    ruleset = Ruleset.load(tmp_path)
    assert ruleset.digest


def test_secret_holds_a_ca_mitmproxy_intercepts_with(default: Rendered, tmp_path: Path) -> None:
    data = {k: base64.b64decode(v) for k, v in default.one("Secret")["data"].items()}
    assert set(data) == {"ca.pem", "ca.crt", "control-token"}
    assert len(data["control-token"]) >= 32
    (tmp_path / "control-token").write_bytes(data["control-token"])
    assert (
        DataDir(tmp_path / "data").control_token(tmp_path / "control-token") == data["control-token"].decode()
    )
    assert b"PRIVATE KEY" not in data["ca.crt"]
    ca = x509.load_pem_x509_certificate(data["ca.crt"])
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.subject.rfc4514_string() == f"CN=Airlock CA {NAMESPACE}/{RELEASE}"
    assert_mitmproxy_intercepts_with(data["ca.pem"], ca, tmp_path)


def assert_mitmproxy_intercepts_with(ca_pem: bytes, ca: x509.Certificate, directory: Path) -> None:
    """`airlock run --ca` installs `ca_pem` in a data dir with the certificate agents trust
    beside it, and mitmproxy signs the certificates it makes for hosts with it."""
    (directory / "ca.pem").write_bytes(ca_pem)
    data_ca = directory / "data" / "ca"
    install_ca(data_ca, directory / "ca.pem")
    assert x509.load_pem_x509_certificate(cert_path(data_ca).read_bytes()) == ca
    store = CertStore.from_store(data_ca, BASENAME, KEY_SIZE)
    assert store.default_ca.to_cryptography() == ca
    leaf = store.get_cert("api.github.com", [x509.DNSName("api.github.com")]).cert.to_cryptography()
    leaf.verify_directly_issued_by(ca)


def test_secret_uses_a_given_ca_and_token(chart: helm.Chart, tmp_path: Path) -> None:
    key, cert = self_signed_ca("Corp interception CA")
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = pem_of_key(key).decode()
    token = "t0ken-" + "x" * 30
    values = {"secret": {"ca": {"cert": cert_pem, "key": key_pem}, "controlToken": token}}
    data = {k: base64.b64decode(v).decode() for k, v in render(chart, values).one("Secret")["data"].items()}
    assert data == {
        "ca.pem": f"{key_pem.strip()}\n{cert_pem.strip()}\n",
        "ca.crt": cert_pem,
        "control-token": token,
    }
    assert_mitmproxy_intercepts_with(data["ca.pem"].encode(), cert, tmp_path)


def test_existing_secret_is_used_not_created(chart: helm.Chart) -> None:
    r = render(chart, {"secret": {"existingSecret": "planner-ca"}})
    assert not r.all("Secret")
    assert r.volume("airlock-secret")["secret"]["secretName"] == "planner-ca"
    assert r.volume("airlock-ca")["secret"]["secretName"] == "planner-ca"


class Healthz(BaseHTTPRequestHandler):
    """A stand-in for the control API's /healthz whose answer the test sets."""

    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_probe_command_passes_only_while_healthz_answers(chart: helm.Chart) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Healthz)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        r = render(chart, {"airlock": {"ports": {"control": port}}})
        command = [sys.executable, *r.container("airlock")["livenessProbe"]["exec"]["command"][1:]]
        # Proxy variables in the sidecar's environment must not send the probe elsewhere.
        env = {**os.environ, "HTTP_PROXY": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}
        assert subprocess.run(command, env=env, capture_output=True, timeout=30).returncode == 0
        Healthz.status = 503
        assert subprocess.run(command, env=env, capture_output=True, timeout=30).returncode != 0
    finally:
        Healthz.status = 200
        server.shutdown()
        server.server_close()


def test_retention_values_become_flags(chart: helm.Chart, default: Rendered) -> None:
    """Retention is on by default (the log makes room below its limit); the values set its flags."""
    args = default.container("airlock")["args"]
    assert args[args.index("--retain-size") + 1] == "8GiB" and "--retain" not in args
    rendered = render(chart, CASES["retention"])
    args = rendered.container("airlock")["args"]
    flags = ("--retain", "--retain-size", "--archive", "--otlp-endpoint")
    given = {flag: args[args.index(flag) + 1] for flag in flags}
    assert given == {
        "--retain": "7d",
        "--retain-size": "6GiB",
        "--archive": "/archive",
        "--otlp-endpoint": "http://otel-collector.observability:4318",
    }
    build_parser().parse_args(args)


@pytest.mark.parametrize("container", ["airlock", "capture"])
def test_chart_arguments_parse_with_the_airlock_cli(default: Rendered, container: str) -> None:
    """Every command and flag the chart passes is one the CLI takes: a chart the CLI would
    refuse fails here, never at a pod's start."""
    parser = build_parser()
    args = default.container(container)["args"]
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    sub = subcommands.get(args[0])
    assert sub is not None, f"the chart runs `airlock {args[0]}`, a command the CLI does not have"
    flags = [a.partition("=")[0] for a in args if a.startswith("--")]
    missing = [f for f in flags if f not in sub._option_string_actions]
    assert not missing, (
        f"the chart passes {', '.join(missing)} to `airlock {args[0]}`, which does not take them"
    )
    try:
        parser.parse_args(args)
    except SystemExit as e:
        pytest.fail(f"`airlock {' '.join(args)}` is refused by the CLI (exit {e.code})")


# ---- bad values fail at install time, with a message ------------------------------------------

# Refused by values.schema.json: `helm install`, `helm template` and `helm lint` all say so.
BAD_VALUES = [
    ({"agent": {"uid": "1000"}}, "at '/agent/uid': got string, want integer"),
    ({"airlock": {"uid": 0}}, "at '/airlock/uid': minimum: got 0, want 1"),
    ({"persistence": {"size": "-1Gi"}}, "at '/persistence/size': '-1Gi' does not match pattern"),
    ({"agnet": {"uid": 1000}}, "additional properties 'agnet' not allowed"),
    ({"agent": {"image": {"repository": ""}}}, "at '/agent/image/repository': minLength"),
    ({"agent": {"resources": None}}, "at '/agent': missing property 'resources'"),
    ({"persistence": {"accessModes": ["ReadWriteMany"]}}, "at '/persistence/accessModes/0'"),
    ({"networkPolicy": {"egressPorts": [70000]}}, "at '/networkPolicy/egressPorts/0': maximum"),
    ({"secret": {"ca": {"cert": "-----BEGIN CERTIFICATE-----\n"}}}, "at '/secret/ca/key': minLength"),
    ({"rules": {"files": {"rules.txt": "version: 1"}}}, "'rules.txt' does not match pattern"),
    ({"airlock": {"retain": "7 days"}}, "at '/airlock/retain': '7 days' does not match pattern"),
]
# Refused by the chart's own checks across fields (`fail` in _helpers.tpl). Helm's lint mode
# turns `fail` into a log line, so only rendering (install, upgrade, template) stops on these.
BAD_COMBINATIONS = [
    ({"agent": {"uid": 10001}}, "agent.uid and airlock.uid are both 10001"),
    ({"agent": {"env": [{"name": "NO_PROXY", "value": "*"}]}}, "agent.env sets NO_PROXY"),
    ({"agent": {"env": [{"name": "SSL_CERT_FILE", "value": "/x"}]}}, "agent.env sets SSL_CERT_FILE"),
    ({"airlock": {"extraArgs": ["--listen=0.0.0.0:8080"]}}, "airlock.extraArgs has --listen=0.0.0.0:8080"),
    ({"airlock": {"ports": {"control": 8080}}}, "airlock.ports must be three different ports"),
    ({"replicaCount": 2}, "replicaCount is 2 but persistence is enabled"),
    ({"rules": {"files": {"default.yaml": None}}}, "rules.files is empty"),
    (
        {"agent": {"volumeMounts": [{"name": "airlock-secret", "mountPath": "/run/secret"}]}},
        'agent.volumeMounts mounts the chart\'s volume "airlock-secret"',
    ),
    ({"agent": {"envFrom": [{"secretRef": {"name": "planner-airlock"}}]}}, "agent.envFrom reads Secret"),
    (
        {
            "agent": {
                "env": [
                    {"name": "K", "valueFrom": {"secretKeyRef": {"name": "planner-airlock", "key": "ca.pem"}}}
                ]
            }
        },
        "agent.env K reads Secret planner-airlock",
    ),
]


@pytest.mark.parametrize(("values", "message"), BAD_VALUES, ids=[m for _, m in BAD_VALUES])
def test_bad_values_are_refused_with_a_message(chart: helm.Chart, values: Obj, message: str) -> None:
    with pytest.raises(helm.HelmValuesError) as refused:
        render(chart, values)
    assert message in str(refused.value)
    report = helm.lint(CHART, values, namespace=NAMESPACE)
    assert any(message in e for e in report["errors"]), report["errors"]


@pytest.mark.parametrize(("values", "message"), BAD_COMBINATIONS, ids=[m for _, m in BAD_COMBINATIONS])
def test_bad_combinations_are_refused_with_a_message(chart: helm.Chart, values: Obj, message: str) -> None:
    with pytest.raises(helm.HelmRenderError) as refused:
        render(chart, values)
    assert message in str(refused.value)


def test_more_replicas_need_a_log_per_pod(chart: helm.Chart) -> None:
    r = render(chart, {"replicaCount": 3, "persistence": {"enabled": False}})
    assert r.one("Deployment")["spec"]["replicas"] == 3
    assert r.volume("data") == {"name": "data", "emptyDir": {}}
    assert not r.all("PersistentVolumeClaim")
    assert "lost with the pod" in r.notes


# ---- values.yaml documents every field ----------------------------------------------------------


def test_values_yaml_has_a_comment_on_every_field() -> None:
    """Every key has a comment on its line or right above, except Kubernetes' own resource
    fields and the text of the rule files."""
    undocumented = []
    lines = (CHART / "values.yaml").read_text().splitlines()
    block_indent: int | None = None
    previous = ""
    for number, line in enumerate(lines, 1):
        indent = len(line) - len(line.lstrip())
        if block_indent is not None and (not line.strip() or indent > block_indent):
            continue  # inside a block scalar (a rule file's text)
        block_indent = None
        key = re.match(r"\s*([A-Za-z][\w.-]*):(\s|$)", line)
        kubernetes_own = key is not None and key[1] in ("requests", "limits", "cpu", "memory")
        commented = "#" in line or previous.lstrip().startswith("#")
        if key and not kubernetes_own and not commented:
            undocumented.append(f"values.yaml:{number}: {key[1]}")
        if re.search(r":\s*[|>][-+]?\s*(#.*)?$", line):
            block_indent = indent
        if line.strip():
            previous = line
    assert not undocumented, "\n".join(undocumented)


def test_chart_defaults_match_the_project() -> None:
    chart_meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart_meta["appVersion"] == project["version"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["image"]["repository"] == "ghcr.io/airlock-dev/airlock"
    assert values["image"]["tag"] == ""  # the appVersion
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"


def test_images_default_to_the_app_version_and_pin_by_digest(chart: helm.Chart, default: Rendered) -> None:
    version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert default.container("capture")["image"] == f"ghcr.io/airlock-dev/airlock:{version}"
    assert default.container("airlock")["image"] == f"ghcr.io/airlock-dev/airlock:{version}"
    digest = "sha256:" + "ab" * 32
    pinned = render(
        chart, {"image": {"digest": digest}, "agent": {"image": {"repository": "corp/agent", "tag": 7}}}
    )
    assert pinned.container("airlock")["image"] == f"ghcr.io/airlock-dev/airlock@{digest}"
    assert pinned.container("agent")["image"] == "corp/agent:7"


# ---- the Dockerfile -----------------------------------------------------------------------------


def dockerfile() -> DockerfileParser:
    return DockerfileParser(fileobj=io.BytesIO((ROOT / "Dockerfile").read_bytes()))


def instructions(parsed: DockerfileParser, name: str) -> list[str]:
    return [str(i["value"]) for i in parsed.structure if i["instruction"] == name]


def test_dockerfile_runs_airlock_as_a_non_root_user() -> None:
    parsed = dockerfile()
    assert parsed.baseimage == "python:3.13-slim"
    users = instructions(parsed, "USER")
    assert users and users[-1].split(":")[0] == "10001"
    chart_values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert chart_values["airlock"]["uid"] == 10001
    assert instructions(parsed, "VOLUME") == ["/data"]
    assert parsed.envs["AIRLOCK_DATA"] == "/data"
    assert json.loads(instructions(parsed, "ENTRYPOINT")[-1]) == ["airlock"]
    runs = " ".join(instructions(parsed, "RUN"))
    assert re.search(r"apt-get install [^&]*\biptables\b", runs)
    assert re.search(r"pip install (--\S+ )*\.(\s|$)", runs)
    assert re.search(r"useradd [^&]*--uid 10001 [^&]*\bairlock\b", runs)
    # The default command is one `airlock run` accepts.
    cmd = json.loads(instructions(parsed, "CMD")[-1])
    assert cmd[0] == "run"
    build_parser().parse_args(cmd)


def test_dockerfile_copies_what_pip_install_needs() -> None:
    parsed = dockerfile()
    copied = {src.rstrip("/") for value in instructions(parsed, "COPY") for src in value.split()[:-1]}
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    found = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]  # e.g. "proxy*"
    packages = {p.split(".")[0].rstrip("*") for p in found}
    needed = {"pyproject.toml", pyproject["project"]["readme"], *packages}
    assert needed <= copied
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    ignored = [line for line in ignored if line and not line.startswith("#")]
    assert {".venv", ".git", "airlock-data", ".mypy_cache", ".pytest_cache"} <= set(ignored)
    assert not needed & set(ignored)


# ---- the helm binary, where there is one ----------------------------------------------------------


@pytest.mark.skipif(shutil.which("helm") is None, reason="no helm binary on PATH")
def test_helm_binary_lints_and_renders_the_same_objects(default: Rendered) -> None:
    helm_bin = str(shutil.which("helm"))
    subprocess.run([helm_bin, "lint", "--strict", str(CHART)], check=True, capture_output=True, timeout=60)
    out = subprocess.run(
        [helm_bin, "template", RELEASE, str(CHART), "--namespace", NAMESPACE],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    kinds = sorted(doc["kind"] for doc in yaml.safe_load_all(out) if doc)
    assert kinds == sorted(o["kind"] for o in default.objects)

"""The environment `airlock exec` gives a command: proxy variables and CA trust for every client."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy")
CA_VARS = (
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "AWS_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    # Less common clients that bring their own CA setting.
    "PIP_CERT",
    "HTTPLIB2_CA_CERTS",
    "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
    "CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE",
    "NIX_SSL_CERT_FILE",
    "DENO_CERT",
)
BYPASS_VARS = ("NO_PROXY", "no_proxy")
# Node 24's built-in fetch and http use the proxy variables only when this is set.
NODE_PROXY = {"NODE_USE_ENV_PROXY": "1"}


def agent_environment(base: Mapping[str, str], proxy_url: str, ca_cert: Path) -> dict[str, str]:
    """`base` with every request routed through `proxy_url` and `ca_cert` trusted."""
    env = captured_environment(base, ca_cert)
    env.update({k: proxy_url for k in PROXY_VARS})
    env.update(NODE_PROXY)
    return env


def captured_environment(base: Mapping[str, str], ca_cert: Path) -> dict[str, str]:
    """`base` for a command whose connections are captured: no proxy settings (airlock is in
    the way already), and `ca_cert` trusted."""
    env = {k: v for k, v in base.items() if k not in BYPASS_VARS and k not in PROXY_VARS}
    env.update({k: str(ca_cert) for k in CA_VARS})
    return env


def for_user(env: Mapping[str, str], name: str, home: str) -> dict[str, str]:
    """`env` for a command run as user `name`, whose home is `home`."""
    return {**env, "USER": name, "LOGNAME": name, "HOME": home}

"""A real moto server (AWS's APIs, emulated) on loopback, over HTTP or HTTPS, and the AWS clients
that reach it: boto3 in this process and the `aws` CLI as a process, through Airlock or directly.

Only fake credentials exist here; no client reads ~/.aws or the instance metadata service."""

from __future__ import annotations

import datetime
import ipaddress
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import requests
from botocore.config import Config
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .airlock import Airlock
from .ca import UpstreamCA, pem_of_key
from .upstream import free_port

MOTO_SERVER = str(Path(sys.executable).parent / "moto_server")
AWS_CLI = str(Path(sys.executable).parent / "aws")
REGION = "us-east-1"
ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "testing-secret-key"

# One attempt per call: a refusal must reach the test as the client first saw it, and a retry
# would add actions to the log the test did not make.
_ONE_ATTEMPT = {"total_max_attempts": 1, "mode": "standard"}


@dataclass
class Moto:
    """A running moto_server process and how to reach it."""

    port: int
    scheme: str
    proc: subprocess.Popen[bytes]
    output: Path
    ca: Path | None = None  # the CA its certificate comes from (HTTPS only)

    @property
    def url(self) -> str:
        """The endpoint URL clients are given."""
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def direct(self, service: str) -> Any:
        """A boto3 client that talks to moto without any proxy: what moto holds, as the test
        checks it behind Airlock's back."""
        return _session().client(
            service,
            endpoint_url=self.url,
            verify=str(self.ca) if self.ca else True,
            config=Config(retries=_ONE_ATTEMPT, proxies={}),
        )

    def stop(self) -> None:
        """Stop the server and wait for it."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def strict_upstream_ca(directory: Path) -> UpstreamCA:
    """A CA and a server certificate for 127.0.0.1 with the extensions Python's strict X.509
    checks ask for (key identifiers, key usage), so boto3 itself can verify moto directly."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "airlock test moto CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(cert_sign=True), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = UpstreamCA(directory / "moto-ca.pem", directory / "moto.pem", directory / "moto.key")
    paths.cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.server_key.write_bytes(pem_of_key(key))
    return paths


def _usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _ready(m: Moto) -> bool:
    try:
        return requests.get(f"{m.url}/moto-api/data.json", timeout=1, verify=str(m.ca) if m.ca else True).ok
    except requests.ConnectionError:
        return False


@contextmanager
def moto_server(directory: Path, tls: UpstreamCA | None = None) -> Iterator[Moto]:
    """moto_server on a free loopback port until the block ends: plain HTTP, or HTTPS with the
    server certificate of `tls` (a CA the proxy is told to trust with --upstream-ca)."""
    port = free_port()
    cmd = [MOTO_SERVER, "-H", "127.0.0.1", "-p", str(port)]
    if tls is not None:
        cmd += ["-c", str(tls.server_cert), "-k", str(tls.server_key)]
    output = directory / f"moto-{port}.out"
    with output.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=_no_aws_environ())
    m = Moto(port, "https" if tls else "http", proc, output, tls.cert if tls else None)
    try:
        deadline = time.monotonic() + 30
        while not _ready(m):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto_server did not start: {output.read_text()}")
            time.sleep(0.05)
        yield m
    finally:
        m.stop()


def _no_aws_environ() -> dict[str, str]:
    """The test process environment without proxy settings or anything AWS reads."""
    return {
        k: v
        for k, v in os.environ.items()
        if "proxy" not in k.lower() and not k.upper().startswith(("AWS_", "BOTO"))
    }


def aws_environ(airlock: Airlock | None, home: Path) -> dict[str, str]:
    """The environment of an AWS client process: fake credentials, a region, no config of the
    user's (HOME is `home`), and Airlock as its proxy, trusting Airlock's CA for HTTPS."""
    env = _no_aws_environ()
    env.update(
        HOME=str(home),
        AWS_ACCESS_KEY_ID=ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=SECRET_KEY,
        AWS_DEFAULT_REGION=REGION,
        AWS_CONFIG_FILE=str(home / "aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(home / "aws-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
        AWS_MAX_ATTEMPTS="1",
        AWS_RETRY_MODE="standard",
        AWS_PAGER="",
    )
    if airlock is not None:
        env.update(HTTP_PROXY=airlock.proxy, HTTPS_PROXY=airlock.proxy, AWS_CA_BUNDLE=str(airlock.ca_cert))
    return env


def aws_cli(
    airlock: Airlock, moto: Moto, home: Path, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run the real `aws` CLI with `args` against `moto`, through `airlock`."""
    proc = subprocess.run(
        [AWS_CLI, "--endpoint-url", moto.url, "--output", "json", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=aws_environ(airlock, home),
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"aws {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


def proxied(airlock: Airlock, moto: Moto, service: str) -> Any:
    """A boto3 client for `service` on `moto` that goes through `airlock` (and trusts Airlock's
    CA when moto serves HTTPS)."""
    return _session().client(
        service,
        endpoint_url=moto.url,
        verify=str(airlock.ca_cert),
        config=Config(retries=_ONE_ATTEMPT, proxies=airlock.proxies),
    )


@cache
def _session() -> boto3.session.Session:
    """The boto3 session with the fake credentials and the region, reading no config or
    credentials file of the user's (one per process: it loads each service model once)."""
    core = botocore.session.Session()
    core.set_config_variable("config_file", os.devnull)
    core.set_config_variable("credentials_file", os.devnull)
    return boto3.session.Session(
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name=REGION,
        botocore_session=core,
    )

"""The interception CA: created by mitmproxy's CertStore in the data dir, key mode 0600, or
installed there from a PEM file the operator provides (e.g. from a Kubernetes Secret)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from mitmproxy.certs import CertStore

from proxy.errors import CAFileError
from proxy.ops.datadir import keep_private

BASENAME = "mitmproxy"  # mitmproxy looks for <confdir>/mitmproxy-ca.pem
KEY_SIZE = 2048


def ensure_ca(directory: Path) -> Path:
    """Create the CA in `directory` if it is missing and return the CA certificate's path."""
    directory.mkdir(parents=True, exist_ok=True)
    # Two commands starting at once on a fresh data dir must not each mint their own CA.
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        CertStore.from_store(directory, BASENAME, KEY_SIZE)
        keep_private(directory)  # the data dir's files are its user's only, the certificate too
    return cert_path(directory)


def cert_path(directory: Path) -> Path:
    """Where the CA certificate (public part only) is, for clients to trust."""
    return directory / f"{BASENAME}-ca-cert.pem"


def install_ca(directory: Path, source: Path) -> None:
    """Make `source` (a PEM file with the CA's private key and certificate) the CA in
    `directory`, with the public certificate beside it for clients; nothing changes if it
    already is."""
    try:
        pem = source.read_bytes()
    except OSError as e:
        raise CAFileError(f"--ca {source}: cannot read it: {e.strerror or e}") from e
    try:
        serialization.load_pem_private_key(pem, password=None)
        cert = x509.load_pem_x509_certificate(pem)
    except (ValueError, TypeError) as e:
        raise CAFileError(
            f"--ca {source}: not a PEM file with an unencrypted private key and a certificate ({e})"
        ) from e
    directory.mkdir(parents=True, exist_ok=True)
    key_file = directory / f"{BASENAME}-ca.pem"
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if key_file.exists() and key_file.read_bytes() == pem:
            return
        for stale in directory.glob(f"{BASENAME}-ca*"):
            stale.unlink()
        _write(key_file, pem, 0o600)
        _write(cert_path(directory), cert.public_bytes(serialization.Encoding.PEM), 0o600)


def _write(path: Path, content: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(content)

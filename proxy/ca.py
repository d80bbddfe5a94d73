"""The interception CA: created by mitmproxy's CertStore in the data dir, key mode 0600."""

from __future__ import annotations

import fcntl
from pathlib import Path

from mitmproxy.certs import CertStore

BASENAME = "mitmproxy"  # mitmproxy looks for <confdir>/mitmproxy-ca.pem
KEY_SIZE = 2048


def ensure_ca(directory: Path) -> Path:
    """Create the CA in `directory` if it is missing and return the CA certificate's path."""
    directory.mkdir(parents=True, exist_ok=True)
    # Two commands starting at once on a fresh data dir must not each mint their own CA.
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        CertStore.from_store(directory, BASENAME, KEY_SIZE)
    return cert_path(directory)


def cert_path(directory: Path) -> Path:
    """Where the CA certificate (public part only) is, for clients to trust."""
    return directory / f"{BASENAME}-ca-cert.pem"

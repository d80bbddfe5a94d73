"""The CAs trusted for upstream TLS: the public ones mitmproxy trusts by default, and every
`--upstream-ca` given (a PEM file, or a directory of them), checked and joined into one bundle
in the data dir."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import certifi
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from proxy.ops.config import ConfigError

SUFFIXES = (".pem", ".crt", ".cer")


def certificate_files(source: Path) -> list[Path]:
    """The PEM files `--upstream-ca source` names: the file itself, or a directory's *.pem,
    *.crt and *.cer files."""
    if not source.exists():
        raise ConfigError(f"--upstream-ca {source}: no such file or directory")
    if not source.is_dir():
        return [source]
    found = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
    if found:
        return found
    raise ConfigError(f"--upstream-ca {source}: no *.pem, *.crt or *.cer files in this directory")


def read_certificates(path: Path) -> bytes:
    """The PEM certificates in `path`, checked to parse, as PEM."""
    try:
        pem = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"--upstream-ca {path}: cannot read it: {e.strerror or e}") from e
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise ConfigError(
            f"--upstream-ca {path}: no PEM certificate in it; give the CA's certificate "
            "(-----BEGIN CERTIFICATE-----)"
        ) from None
    return b"".join(c.public_bytes(Encoding.PEM) for c in certs)


def write_bundle(sources: Sequence[Path], bundle: Path) -> Path | None:
    """Write the public CAs and every CA in `sources` to `bundle` (mode 0600) and return it;
    None when no CA is given (mitmproxy then trusts the public ones itself)."""
    if not sources:
        return None
    given = [read_certificates(f) for source in sources for f in certificate_files(source)]
    content = Path(certifi.where()).read_bytes().rstrip(b"\n") + b"\n" + b"".join(given)
    partial = bundle.with_name(f".{bundle.name}.{os.getpid()}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(content)
    partial.replace(bundle)
    return bundle

"""The log's signing key: an Ed25519 key in the data dir that signs checkpoint and prune entries.

A signed entry's signature covers its own sequence number, the hash of the entry before it, its
kind and its data (without the signature), so a signature vouches for the whole chain up to it:
whoever holds only the public key can tell that the chain it continues was the one the key's
holder saw. The private key never leaves the data dir (0600); `public_text` is the form to paste
elsewhere (`ed25519:` and the raw public key in base64).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import StoreError
from .signed import SIGNATURE, signed_payload

KEY_FILE = "signing.key"

__all__ = [
    "KEY_FILE",
    "SIGNATURE",
    "PublicKey",
    "Signer",
    "parse_public",
    "public_text",
    "signature_ok",
    "signed_payload",
]

_PREFIX = "ed25519:"

type PublicKey = Ed25519PublicKey  # what `parse_public` returns and verification takes


class Signer:
    """The private half of the log's key: signs payloads, tells its public half."""

    def __init__(self, key: Ed25519PrivateKey, path: Path):
        self._key = key
        self.path = path

    @classmethod
    def load(cls, data_dir: Path) -> Signer:
        """The key kept in `data_dir`; StoreError if there is none or it cannot be read."""
        path = Path(data_dir) / KEY_FILE
        try:
            pem = path.read_bytes()
        except FileNotFoundError:
            raise StoreError(
                f"no signing key at {path}: `airlock run` or `airlock key` with this data dir creates one"
            ) from None
        except OSError as e:
            raise StoreError(f"cannot read the signing key {path}: {e.strerror or e}") from e
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as e:
            raise StoreError(f"the signing key {path} is not a PEM Ed25519 private key: {e}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise StoreError(f"the signing key {path} is not an Ed25519 key")
        return cls(key, path)

    @classmethod
    def load_or_create(cls, data_dir: Path) -> Signer:
        """The key kept in `data_dir`, created (0600, atomically: a key once made is never
        replaced) when there is none."""
        path = Path(data_dir) / KEY_FILE
        if not path.exists():
            _create(path)
        return cls.load(data_dir)

    def sign(self, payload: bytes) -> str:
        """The signature of `payload`, in base64."""
        return base64.b64encode(self._key.sign(payload)).decode()

    def public(self) -> Ed25519PublicKey:
        """The public half of the key."""
        return self._key.public_key()

    def public_text(self) -> str:
        """The public key as a person pastes it: `ed25519:` and the raw key in base64."""
        return public_text(self.public())


def public_text(key: Ed25519PublicKey) -> str:
    """A public key's pasteable form, `ed25519:<base64 of the 32 raw bytes>`."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return _PREFIX + base64.b64encode(raw).decode()


def parse_public(text: str) -> Ed25519PublicKey:
    """A public key from its pasteable form; ValueError saying what is wrong."""
    text = text.strip()
    if not text.startswith(_PREFIX):
        raise ValueError(
            f"{text[:40]!r} is not a public key: it must start with {_PREFIX!r} (see `airlock key`)"
        )
    try:
        raw = base64.b64decode(text[len(_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            f"{text[:40]!r}: the part after {_PREFIX!r} is not base64 (see `airlock key`)"
        ) from None
    if len(raw) != 32:
        raise ValueError(f"{text[:40]!r}: an Ed25519 public key is 32 bytes, this is {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def signature_ok(key: Ed25519PublicKey, payload: bytes, signature: Any) -> bool:
    """True when `signature` (base64) is `key`'s signature of `payload`."""
    if not isinstance(signature, str):
        return False
    try:
        key.verify(base64.b64decode(signature, validate=True), payload)
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def _create(path: Path) -> None:
    """Write a new key to `path` unless one appears there first: written whole to a private
    temporary file, synced, then linked into place (a link never replaces a file)."""
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    tmp = path.with_name(f".{KEY_FILE}.{os.getpid()}.{os.urandom(4).hex()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(FileExistsError):  # another process made one first: keep it
            os.link(tmp, path)
        _sync_dir(path.parent)
    except OSError as e:
        raise StoreError(
            f"cannot create the signing key {path}: {e.strerror or e}: make the data dir writable"
        ) from e
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

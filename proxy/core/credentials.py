"""A session's credentials: an agent name and a random token, given to the agent in its proxy URL
(`http://NAME:TOKEN@HOST:PORT`, which clients send as `Proxy-Authorization: Basic ...`) or, in
reverse mode, in the `X-Airlock-Session: NAME:TOKEN` header. The log keeps only the token's
SHA-256 digest, so reading the log never yields a token that works."""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from dataclasses import dataclass
from urllib.parse import quote

SESSION_HEADER = "x-airlock-session"  # reverse mode: `NAME:TOKEN`
PROXY_AUTHORIZATION = "proxy-authorization"
TOKEN_BYTES = 32


class BadCredentials(ValueError):
    """Credentials that cannot be read: the message says what is wrong with them."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """An agent name and the token of one of its sessions, as the agent sent them."""

    name: str
    token: str

    @property
    def digest(self) -> str:
        """The token's digest, as the log keeps it."""
        return token_digest(self.token)


def mint_token() -> str:
    """A new session token: 32 random bytes, URL-safe (it goes into a proxy URL as is)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_digest(token: str) -> str:
    """The SHA-256 of a token, in hex: the only form of it the log keeps."""
    return hashlib.sha256(token.encode()).hexdigest()


def proxy_url(name: str, token: str, host: str, port: int) -> str:
    """The proxy URL that carries a session's credentials (the name percent-encoded)."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{quote(name, safe='')}:{token}@{host}:{port}"


def from_basic(value: str) -> Credentials:
    """The credentials in a `Proxy-Authorization: Basic base64(NAME:TOKEN)` header's value."""
    scheme, _, encoded = value.strip().partition(" ")
    if scheme.lower() != "basic":
        raise BadCredentials(
            f"Proxy-Authorization uses the {scheme or 'empty'!r} scheme; airlock takes Basic credentials "
            "(a proxy URL http://NAME:TOKEN@HOST:PORT)"
        )
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise BadCredentials(
            "Proxy-Authorization is not valid Basic credentials (base64 of NAME:TOKEN)"
        ) from None
    return from_pair(decoded, "Proxy-Authorization")


def from_pair(text: str, where: str) -> Credentials:
    """The credentials in `NAME:TOKEN` (the form `X-Airlock-Session` carries)."""
    name, colon, token = text.strip().rpartition(":")
    if not colon or not name or not token:
        raise BadCredentials(f"{where} does not hold NAME:TOKEN")
    return Credentials(name, token)

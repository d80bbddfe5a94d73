"""Redaction: credentials are replaced before anything about a request is written."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from urllib.parse import parse_qsl, urlencode

REDACTED = "[redacted]"

SECRET_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-amz-security-token",
        "x-api-key",
    }
)

# Query parameters that carry credentials (presigned URLs, OAuth, API keys).
SECRET_PARAMS = frozenset(
    {
        "access_token",
        "api_key",
        "apikey",
        "client_secret",
        "password",
        "token",
        "x-amz-credential",
        "x-amz-security-token",
        "x-amz-signature",
        "x-goog-signature",
        "sig",
        "signature",
    }
)


# Words that make an argument's name a credential's (tool arguments are free-form).
SECRET_WORDS = ("password", "secret", "token", "api_key", "apikey", "credential", "authorization")


def secret_name(name: str) -> bool:
    """True for a parameter or argument name that carries a credential."""
    lowered = name.lower()
    return lowered in SECRET_PARAMS or any(w in lowered for w in SECRET_WORDS)


class Redactor:
    """Redacts the built-in secret headers and query parameters, plus headers the rules name."""

    def __init__(self, extra_headers: Iterable[str] = ()):
        self.headers_secret = SECRET_HEADERS | {h.lower() for h in extra_headers}

    def headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        """A copy of the headers with secret values replaced."""
        return {k: REDACTED if k.lower() in self.headers_secret else v for k, v in headers.items()}

    def args(self, value: object) -> object:
        """Tool arguments with the values of credential-named fields replaced, at any depth."""
        if isinstance(value, dict):
            return {k: REDACTED if secret_name(str(k)) else self.args(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.args(v) for v in value]
        return value

    def query(self, query: str) -> str:
        """A query string with secret parameter values replaced."""
        if not query:
            return query
        pairs = parse_qsl(query, keep_blank_values=True)
        if not any(k.lower() in SECRET_PARAMS for k, _ in pairs):
            return query
        return urlencode([(k, REDACTED if k.lower() in SECRET_PARAMS else v) for k, v in pairs])

"""Who a request to AWS says it is for: the service and region of its SigV4 credential scope,
from its Authorization header or, for a presigned URL, its query."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl

# `AWS4-HMAC-SHA256 Credential=AKID/20261130/us-east-1/s3/aws4_request, SignedHeaders=..., ...`;
# SigV4a (`AWS4-ECDSA-P256-SHA256`) has no region in its scope: the region set is a header.
_SCHEME = re.compile(r"^\s*AWS4-[A-Z0-9-]+\s+(.*)$", re.IGNORECASE | re.DOTALL)
_CREDENTIAL = re.compile(r"(?:^|[\s,])Credential\s*=\s*([^,\s]+)", re.IGNORECASE)


@dataclass(frozen=True)
class Scope:
    """The service a request is signed for and the region, where the scope names one."""

    service: str
    region: str | None
    presigned: bool = False


def scope_of(headers: Mapping[str, str], query: str) -> Scope | None:
    """The credential scope of a signed request, or None when it is not signed for AWS."""
    auth = headers.get("authorization", "")
    if (m := _SCHEME.match(auth)) and (c := _CREDENTIAL.search(m.group(1))):
        return _scope(c.group(1), headers)
    if auth[:4].upper() == "AWS ":  # S3's signature version 2
        return Scope("s3", None)
    if "X-Amz-Credential" in query or "x-amz-credential" in query.lower():
        params = {k.lower(): v for k, v in parse_qsl(query, keep_blank_values=True)}
        if credential := params.get("x-amz-credential"):
            return _scope(credential, headers, presigned=True)
    if "Signature" in query and "AWSAccessKeyId" in query:
        params = dict(parse_qsl(query, keep_blank_values=True))
        if "Signature" in params and "AWSAccessKeyId" in params and "SignatureVersion" not in params:
            return Scope("s3", None, presigned=True)  # S3's presigned URLs of version 2
    return None


def _scope(credential: str, headers: Mapping[str, str], *, presigned: bool = False) -> Scope | None:
    parts = credential.split("/")
    if len(parts) >= 5:  # KEY/DATE/REGION/SERVICE/aws4_request (a key id never holds a slash)
        return Scope(parts[-2].lower(), parts[-3].lower() or None, presigned)
    if len(parts) == 4:  # SigV4a: KEY/DATE/SERVICE/aws4_request
        region_set = headers.get("x-amz-region-set")
        return Scope(parts[-2].lower(), region_set.lower() if region_set else None, presigned)
    return None

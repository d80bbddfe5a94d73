"""AWS's own endpoint hosts: whether a host is the endpoint of a service (and so reads requests as
the service's model says), and which S3 bucket a host names."""

from __future__ import annotations

from rules import address_of

SUFFIXES = (".amazonaws.com", ".amazonaws.com.cn", ".api.aws")


def aws_labels(host: str) -> list[str] | None:
    """The labels of an AWS host before its domain (`dynamodb.us-east-1`), or None for another."""
    host = host.lower().rstrip(".")
    for suffix in SUFFIXES:
        if host.endswith(suffix):
            return host[: -len(suffix)].split(".")
    return None


def _s3_label(label: str) -> bool:
    return label == "s3" or (label.startswith("s3-") and not label.startswith("s3-control"))


def s3_at(labels: list[str]) -> int | None:
    """Where S3's own label (`s3`, `s3-fips`, `s3-us-west-2`, `s3-accelerate`) is among an AWS
    host's labels: the rightmost one, since a bucket's name may hold dots and such labels."""
    for i in range(len(labels) - 1, -1, -1):
        if _s3_label(labels[i]):
            return i
    return None


def own_endpoint(host: str, endpoint_prefix: str) -> bool:
    """True when `host` is AWS's own endpoint for a service with this endpoint prefix:
    `dynamodb.us-east-1.amazonaws.com`, `ec2-fips...`, a VPC endpoint `vpce-....dynamodb...`, and
    for S3 the virtual-hosted `bucket.s3.region.amazonaws.com` too. API Gateway, Lambda function
    URLs and other hosts under an AWS domain that serve a customer's own code are not."""
    labels = aws_labels(host)
    if not labels:
        return False
    own = {endpoint_prefix, f"{endpoint_prefix}-fips"}
    if endpoint_prefix == "s3":
        return s3_at(labels) is not None
    if labels[0] in own:
        return True
    return len(labels) > 1 and labels[0].startswith("vpce-") and labels[1] in own


def bucket_of_host(host: str) -> str | None:
    """The bucket an AWS S3 host names (virtual-hosted addressing), or None (path-style)."""
    labels = aws_labels(host)
    if not labels:
        return None
    at = s3_at(labels)
    return ".".join(labels[:at]) if at else None


def may_name_bucket(host: str) -> bool:
    """True when a host that is not AWS's could still name a bucket to an S3-compatible server
    (virtual-hosted under its domain, or the bucket itself behind a CNAME): not an address, not a
    single label like localhost."""
    return address_of(host) is None and "." in host.strip(".")


def endpoint_prefix_of(host: str) -> str | None:
    """The endpoint prefix an AWS host starts with (`sqs` of sqs.us-east-1.amazonaws.com)."""
    labels = aws_labels(host)
    if not labels:
        return None
    if bucket_of_host(host) is not None or labels[0] == "s3" or labels[0].startswith("s3-"):
        return "s3"
    first = labels[1] if labels[0].startswith("vpce-") and len(labels) > 1 else labels[0]
    return first.removesuffix("-fips")

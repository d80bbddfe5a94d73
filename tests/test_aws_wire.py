"""A signed AWS request reaches its upstream byte for byte: Airlock reads the call (service,
operation, targets) but changes nothing of what was signed, so AWS's signature check still
passes behind it.

boto3 signs each request and sends it through a real `airlock run` to a recording server on
loopback (it stands in for AWS, which cannot be reached from here; it answers every request with
a small JSON body, which some SDK parsers reject: the tests look at the wire, not the answer).
Each request botocore prepared is kept with a `before-send` handler that lets it go on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.awsrequest import AWSPreparedRequest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from botocore.parsers import ResponseParserError

from tests.support import Airlock, Upstream, plain_upstream, wait_for

RULES = """\
version: 1
egress:
  allow: [127.0.0.1]
aws:
  endpoints: ["127.0.0.1"]
defaults: {read: allow, write: allow, destructive: allow}
"""

# (service, call, parameters, operation, targets)
CALLS: list[tuple[str, str, dict[str, Any], str, list[str]]] = [
    ("s3", "put_object", {"Bucket": "reports", "Key": "2026/q3 final.csv", "Body": b"a,b\n1,2\n"},
     "PutObject", ["reports/2026/q3 final.csv"]),
    ("s3", "delete_objects", {"Bucket": "reports", "Delete": {"Objects": [{"Key": "a"}, {"Key": "b"}]}},
     "DeleteObjects", ["reports/a", "reports/b"]),
    ("dynamodb", "put_item", {"TableName": "orders", "Item": {"id": {"S": "42"}, "note": {"S": "ünï"}}},
     "PutItem", ["orders"]),
    ("ec2", "terminate_instances", {"InstanceIds": ["i-0abc", "i-0def"]}, "TerminateInstances",
     ["i-0abc", "i-0def"]),
    ("sqs", "send_message", {"QueueUrl": "http://127.0.0.1/123456789012/jobs", "MessageBody": "run"},
     "SendMessage", ["http://127.0.0.1/123456789012/jobs"]),
]  # fmt: skip


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with plain_upstream() as up:
        yield up


def _client(service: str, airlock: Airlock, up: Upstream, sent: list[AWSPreparedRequest]) -> Any:
    client = boto3.client(
        service,
        endpoint_url=up.url,
        region_name="eu-west-1",
        aws_access_key_id="AKIAIOSFODNN7EXAMPLE",
        aws_secret_access_key="wire-test-secret",
        config=Config(
            proxies={"http": airlock.proxy, "https": airlock.proxy},
            retries={"total_max_attempts": 1, "mode": "standard"},
            s3={"addressing_style": "path"},
        ),
    )
    keep: Callable[..., None] = lambda request, **_: sent.append(request)  # noqa: E731
    client.meta.events.register("before-send", keep)
    return client


def _bytes(body: Any) -> bytes:
    if hasattr(body, "getvalue"):
        return bytes(body.getvalue())
    return body if isinstance(body, bytes) else (body or "").encode()


@pytest.mark.parametrize(
    ("service", "call", "params", "operation", "targets"), CALLS, ids=[c[1] for c in CALLS]
)
def test_a_signed_request_arrives_as_it_was_signed(
    make_airlock: Callable[..., Airlock],
    upstream: Upstream,
    service: str,
    call: str,
    params: dict[str, Any],
    operation: str,
    targets: list[str],
) -> None:
    airlock = make_airlock(RULES)
    sent: list[AWSPreparedRequest] = []
    before = len(upstream.seen)
    # The stand-in's answer is not AWS's: only the request matters here.
    with contextlib.suppress(ClientError, BotoCoreError, ResponseParserError):
        getattr(_client(service, airlock, upstream, sent), call)(**params)
    assert len(sent) == 1
    request = sent[0]
    wait_for(lambda: len(upstream.seen) > before, what="the request to reach the upstream")
    received = upstream.seen[before]
    body = _bytes(request.body)
    url = request.url.removeprefix(upstream.url)
    assert (received.method, received.path, received.body) == (request.method, url, body)
    sent_headers = {k.lower(): v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}
    # `Expect: 100-continue` is answered hop by hop (the proxy says continue itself); SigV4 never
    # signs it. Every other header arrives as sent, the signed ones and the signature included.
    assert sent_headers.pop("expect", "100-continue") == "100-continue"
    sent_headers.setdefault("host", urlsplit(request.url).netloc)  # the HTTP client adds it
    signed = sent_headers["authorization"].partition("SignedHeaders=")[2].partition(",")[0].split(";")
    assert set(signed) <= set(sent_headers)
    assert {k: received.headers.get(k) for k in sent_headers} == sent_headers
    assert "x-airlock-rule" not in received.headers
    # And the log knows the call for what it is.
    [logged] = [e for e in airlock.log() if e.get("protocol") == "aws"]
    assert (logged["service"], logged["operation"], logged["targets"]) == (service, operation, targets)
    assert logged["region"] == "eu-west-1"
    assert logged["state"] == "committed"

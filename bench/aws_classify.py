"""What reading a request as an AWS call costs: the AWS classifier against the plain HTTP adapter.

Usage: ``.venv/bin/python bench/aws_classify.py [--repeats R] [--batch-ms MS]``

Requests are made by botocore (fake credentials, SigV4, to AWS's real endpoints) and caught
before they are sent by a `before-send` handler, so nothing goes to the network:

  S3, REST         GetObject (virtual-host), PutObject (path-style, aws-chunked body),
                   DeleteObjects of 3 keys (an XML body read for its keys)
  DynamoDB, JSON   GetItem, BatchWriteItem over 2 tables (X-Amz-Target, targets from the body)
  EC2, query       DescribeInstances, TerminateInstances of 3 ids (Action= in a form body)
  not AWS          a JSON POST to a host that is not AWS's, with no signature

Each request becomes a mitmproxy `http.Request`, and is timed three ways in the same run:

  http        `from_request`: the plain HTTP adapter's Action (what every request costs)
  aws         `proxy.plane.adapters.aws.classified` on that Action: the classifier alone
  both        the two in turn: what the gate spends on a request before the rules

botocore's service models are read by the classifier, not per request: the index of every
model's metadata when it is first needed (once per process, by the first request that may be AWS's),
and each service's operations the first time a request for that service arrives. The script
counts the model files read, and times the index, the first request of each service and the
steady state apart.

Timing: `time.perf_counter_ns` around a batch of calls sized to take about `--batch-ms`; the
best of `--repeats` batches is kept, and the ways and requests take turns within each repeat.
The garbage collector is off while timing, as `timeit` does. This is a measurement, not a test:
it exits 0 once it has measured.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import botocore
import botocore.session
from botocore.awsrequest import AWSPreparedRequest, AWSResponse
from botocore.config import Config
from mitmproxy import http

from proxy.plane.adapters import aws
from proxy.plane.adapters.aws import models
from proxy.plane.adapters.http import from_request
from rules import Action

# ---- counting the model files the classifier reads --------------------------------------------

READS = {"files": 0, "heads": 0}
_read = models._read
_metadata = models._metadata


def _counted(path: Path) -> dict[str, Any]:
    READS["files"] += 1
    return _read(path)


def _head_counted(path: Path) -> dict[str, Any]:
    READS["heads"] += 1
    return _metadata(path)


models._read = _counted  # count the files read whole, do not change what is read
models._metadata = _head_counted  # and the heads the index reads


def reads() -> int:
    """Model files the classifier has read so far."""
    return READS["files"]


# ---- requests, as botocore makes them ---------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One request to classify, with a short name for the report."""

    name: str
    request: http.Request


class _Answer:
    """The raw body of the stand-in answer botocore reads."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        """The body in one chunk."""
        yield self.body


def _answer(protocol: str, operation: str) -> bytes:
    if protocol == "query":
        return f"<{operation}Response><{operation}Result/></{operation}Response>".encode()
    return b"<Response/>" if protocol in ("rest-xml", "ec2") else b"{}"


def _body(request: AWSPreparedRequest) -> bytes:
    body = request.body
    if body is None:
        return b""
    if hasattr(body, "read"):
        return bytes(body.read())
    return body.encode() if isinstance(body, str) else bytes(body)


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


class Signer:
    """botocore clients with fake credentials whose requests are kept, not sent."""

    def __init__(self) -> None:
        self.session = botocore.session.Session()
        self.sent: list[http.Request] = []

    def client(self, service: str, region: str, **config: Any) -> Any:
        """A client whose requests end up in `sent`."""
        client = self.session.create_client(
            service,
            region_name=region,
            aws_access_key_id="AKIDEXAMPLE",
            aws_secret_access_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            config=Config(**config),
        )
        protocol = client.meta.service_model.protocol

        def send(request: AWSPreparedRequest, event_name: str, **_: Any) -> AWSResponse:
            fields = [
                (_text(k).encode("latin-1"), _text(v).encode("latin-1")) for k, v in request.headers.items()
            ]
            made = http.Request.make(request.method, request.url, _body(request), http.Headers(fields))
            self.sent.append(made)
            return AWSResponse(
                request.url, 200, {}, _Answer(_answer(protocol, event_name.rsplit(".", 1)[-1]))
            )

        client.meta.events.register("before-send", send)
        return client

    def last(self) -> http.Request:
        """The request the last call made."""
        return self.sent[-1]


def typical_requests() -> list[Case]:
    """S3 REST, DynamoDB JSON and EC2 query requests, and one request that is not AWS's."""
    signer = Signer()
    virtual = signer.client("s3", "eu-west-1", s3={"addressing_style": "virtual"})
    path = signer.client("s3", "eu-west-1", s3={"addressing_style": "path"})
    dynamodb = signer.client("dynamodb", "eu-central-1")
    ec2 = signer.client("ec2", "us-west-2")
    ids = ["i-0a1b2c3d4e5f00001", "i-0a1b2c3d4e5f00002", "i-0a1b2c3d4e5f00003"]
    item = {"id": {"S": "42"}}
    made: list[tuple[str, Callable[[], Any]]] = [
        ("s3 GetObject", lambda: virtual.get_object(Bucket="reports-bucket", Key="2026/q3.csv")),
        (
            "s3 PutObject",
            lambda: path.put_object(Bucket="reports-bucket", Key="2026/q3.csv", Body=b"a,b\n1,2\n"),
        ),
        (
            "s3 DeleteObjects (3)",
            lambda: virtual.delete_objects(
                Bucket="reports-bucket", Delete={"Objects": [{"Key": k} for k in ("a.csv", "b.csv", "c.csv")]}
            ),
        ),
        ("dynamodb GetItem", lambda: dynamodb.get_item(TableName="orders", Key=item)),
        (
            "dynamodb BatchWriteItem",
            lambda: dynamodb.batch_write_item(
                RequestItems={
                    "orders": [{"PutRequest": {"Item": item}}, {"PutRequest": {"Item": {"id": {"S": "43"}}}}],
                    "customers": [{"PutRequest": {"Item": item}}],
                }
            ),
        ),
        ("ec2 DescribeInstances", lambda: ec2.describe_instances(InstanceIds=ids[:1])),
        ("ec2 TerminateInstances (3)", lambda: ec2.terminate_instances(InstanceIds=ids)),
    ]
    cases = []
    for name, call in made:
        call()
        cases.append(Case(name, signer.last()))
    body = b'{"name": "widget", "qty": 3, "tags": ["bench"]}'
    headers = http.Headers([(b"content-type", b"application/json")])
    plain = http.Request.make("POST", "https://api.example.com/v1/items", body, headers)
    cases.append(Case("not AWS: POST JSON", plain))
    return cases


# ---- the three ways -----------------------------------------------------------------------------


def not_declared(host: str, port: int) -> bool:
    """No endpoint besides AWS's own serves AWS's APIs here."""
    return False


def plain(request: http.Request) -> Action:
    """The plain HTTP adapter's Action."""
    return from_request(request, agent="agent")


def ways(case: Case) -> dict[str, Callable[[], Action]]:
    """The three ways of reading one request, as calls with nothing left to prepare."""
    action = plain(case.request)
    return {
        "http": lambda: plain(case.request),
        "aws": lambda: aws.classified(action, declared=not_declared),
        "both": lambda: aws.classified(plain(case.request), declared=not_declared),
    }


WAYS = ("http", "aws", "both")


# ---- timing ---------------------------------------------------------------------------------------


def batch_ns(call: Callable[[], Action], n: int) -> int:
    """Nanoseconds for `n` calls."""
    start = time.perf_counter_ns()
    for _ in range(n):
        call()
    return time.perf_counter_ns() - start


def batch_size(call: Callable[[], Action], batch_ms: float) -> int:
    """How many calls take about `batch_ms`, from a short trial (which also warms up)."""
    trial = 20
    per_call = max(batch_ns(call, trial) / trial, 1.0)
    return max(trial, int(batch_ms * 1e6 / per_call))


def best_us(cases: list[Case], repeats: int, batch_ms: float) -> dict[tuple[str, str], float]:
    """Best µs per call of every way on every request; they take turns within a repeat."""
    calls = {(way, case.name): call for case in cases for way, call in ways(case).items()}
    sizes = {key: batch_size(call, batch_ms) for key, call in calls.items()}
    best = {key: float("inf") for key in calls}
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            for key, call in calls.items():
                best[key] = min(best[key], batch_ns(call, sizes[key]) / sizes[key] / 1000)
    finally:
        if gc_was_on:
            gc.enable()
    return best


# ---- the report -----------------------------------------------------------------------------------


def first_reads(cases: list[Case]) -> None:
    """The index, then the first request of each service: what they cost and what they read."""
    before, start = reads(), time.perf_counter_ns()
    index = models.index()
    took = (time.perf_counter_ns() - start) / 1e6
    services = len({m.name for ms in index.by_signing.values() for m in ms})
    heads = READS["heads"]
    print(
        f"Index of the models ({services} services): {took:.0f} ms, "
        f"{heads} heads of model files and {reads() - before} whole files read"
    )
    print()
    print(f"{'first request of its kind':<28} {'ms':>8} {'files read':>10}  read as")
    for case in cases:
        before, start = reads(), time.perf_counter_ns()
        action = aws.classified(plain(case.request), declared=not_declared)
        took = (time.perf_counter_ns() - start) / 1e6
        said = " ".join(str(x) for x in (action.protocol, action.service, action.operation) if x)
        count = f" count {action.count}" if action.count is not None else ""
        print(f"{case.name:<28} {took:>8.2f} {reads() - before:>10}  {said}{count}")


def print_table(best: dict[tuple[str, str], float], cases: list[Case]) -> None:
    """µs per request each way, and the classifier against the plain adapter."""
    print()
    print(f"{'request':<28} {'http µs':>8} {'aws µs':>8} {'both µs':>8} {'aws/http':>9} {'both/http':>10}")
    print("-" * 76)
    for case in cases:
        h, a, b = (best[(way, case.name)] for way in WAYS)
        print(f"{case.name:<28} {h:>8.2f} {a:>8.2f} {b:>8.2f} {a / h:>8.1f}x {b / h:>9.1f}x")
    print("-" * 76)
    signed = [c for c in cases if not c.name.startswith("not AWS")]
    h, a, b = (statistics.fmean(best[(way, c.name)] for c in signed) for way in WAYS)
    print(f"{'mean of the AWS requests':<28} {h:>8.2f} {a:>8.2f} {b:>8.2f} {a / h:>8.1f}x {b / h:>9.1f}x")


# ---- command line -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """Flags of the benchmark."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="timed batches per way and request (default 5)")
    p.add_argument("--batch-ms", type=float, default=100.0, help="length of one batch in ms (default 100)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Make the requests, time the first ones and the steady state, print the report."""
    args = build_parser().parse_args(argv)
    if args.repeats < 1 or args.batch_ms <= 0:
        build_parser().error("--repeats must be at least 1 and --batch-ms positive")
    began = time.monotonic()
    cases = typical_requests()
    print(
        f"The AWS classifier against the plain HTTP adapter; best of {args.repeats} batches of "
        f"~{args.batch_ms:.0f} ms per way and request; Python {sys.version.split()[0]}, "
        f"botocore {botocore.__version__}"
    )
    print()
    first_reads(cases)
    before = reads()
    best = best_us(cases, args.repeats, args.batch_ms)
    timed = sum(1 for _ in best) * args.repeats
    print_table(best, cases)
    print()
    print(f"Model files read while timing ({timed} batches): {reads() - before}")
    print(f"\nTook {time.monotonic() - began:.1f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The AWS classifier over requests botocore signs: the service, operation, region, targets and
effect of each, on AWS's own endpoints and on endpoints of other names, and the ways an agent
could try to step around a deny rule with a request AWS (or something behind an AWS-shaped
host) would read otherwise.

Every request is made by botocore from fake credentials and decided as the proxy decides it
(`explain_request`, the proxy's own triage). Nothing goes to the network: a `before-send`
handler on each client keeps the request botocore prepared and answers it with an empty success
(a stand-in for AWS, which cannot be reached from here), so requests to AWS's real endpoints
(`https://s3.us-east-1.amazonaws.com`, ...) are made exactly as an SDK makes them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import botocore.session
import pytest
from botocore.awsrequest import AWSPreparedRequest, AWSResponse
from botocore.config import Config

from proxy.plane.explain import explain_request
from proxy.plane.triage import Triage
from rules import Action, Effect, Ruleset
from tests.support.standin import RawBody, empty_success

READ, WRITE, DESTRUCTIVE = Effect.READ, Effect.WRITE, Effect.DESTRUCTIVE

# A local emulator's address, not named in `aws: endpoints`: an operation never lowers the
# method's effect there.
CUSTOM = "http://emulator.test:4566"
# The same kind of endpoint, named in `aws: endpoints`: it serves AWS's APIs as AWS does.
DECLARED = "http://moto.test:5000"

EGRESS = ["*.amazonaws.com", "amazonaws.com", "*.test", "test"]


# ---- requests, as botocore makes them ---------------------------------------------------------


@dataclass(frozen=True)
class Signed:
    """A request botocore signed, as it would have gone on the wire."""

    method: str
    url: str
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def host(self) -> str:
        """The host the request goes to."""
        return urlsplit(self.url).hostname or ""


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


def _wire(request: AWSPreparedRequest) -> Signed:
    body = request.body
    if body is None:
        raw = b""
    elif hasattr(body, "read"):  # S3 uploads: an aws-chunked stream with a trailing checksum
        raw = body.read()
    else:
        raw = body.encode() if isinstance(body, str) else bytes(body)
    headers = [(_text(k), _text(v)) for k, v in request.headers.items()]
    return Signed(request.method, request.url, headers, raw)


@dataclass
class _Client:
    client: Any
    sent: list[Signed] = field(default_factory=list)


_SESSION = botocore.session.Session()


@cache
def _client(
    service: str, region: str, endpoint: str | None, addressing: str | None, presign: bool
) -> _Client:
    s3: dict[str, str] = {"addressing_style": addressing} if addressing else {}
    config = Config(s3=s3, retries={"max_attempts": 1}, signature_version="s3v4" if presign else None)
    client = _SESSION.create_client(
        service,
        region_name=region,
        endpoint_url=endpoint,
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        config=config,
    )
    kept = _Client(client)
    protocol = client.meta.service_model.protocol

    def send(request: AWSPreparedRequest, event_name: str, **_: Any) -> AWSResponse:
        kept.sent.append(_wire(request))
        operation = event_name.rsplit(".", 1)[-1]
        return AWSResponse(request.url, 200, {}, RawBody(empty_success(protocol, operation)))

    client.meta.events.register("before-send", send)
    return kept


def sign(
    call: str,
    params: dict[str, Any],
    *,
    region: str = "us-east-1",
    endpoint: str | None = None,
    addressing: str | None = None,
    presign: bool = False,
) -> Signed:
    """The request botocore makes for `service.method(**params)` (or, with `presign`, the URL
    `generate_presigned_url` gives for it, requested with the operation's method)."""
    service, method = call.split(".")
    kept = _client(service, region, endpoint, addressing, presign)
    if presign:
        url = kept.client.generate_presigned_url(method, Params=params, ExpiresIn=300)
        http = kept.client.meta.service_model.operation_model(_operation_name(kept.client, method)).http
        return Signed(http["method"], url, [], b"")
    before = len(kept.sent)
    getattr(kept.client, method)(**params)
    if len(kept.sent) != before + 1:
        raise AssertionError(f"{call} sent {len(kept.sent) - before} requests, not one")
    return kept.sent[-1]


def _operation_name(client: Any, method: str) -> str:
    names: dict[str, str] = client.meta.method_to_api_mapping
    return names[method]


# ---- rules and decisions ----------------------------------------------------------------------


def ruleset_of(directory: Path, rules: list[dict[str, Any]], **top: Any) -> Ruleset:
    """A rule file with these rules (and top-level sections), written and loaded."""
    content = {"version": 1, "egress": {"allow": EGRESS}, **top, "rules": rules}
    path = directory / "rules.yaml"
    path.write_text(json.dumps(content))  # JSON is YAML
    return Ruleset.load(path)


def explain(ruleset: Ruleset, request: Signed) -> Triage:
    """How the proxy reads and decides the request."""
    return explain_request(
        ruleset,
        method=request.method,
        url=request.url,
        headers=request.headers,
        body=request.body,
        agent="agent",
    )


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Ruleset:
    """No rules, no endpoints declared: only AWS's own endpoints serve AWS's APIs."""
    return ruleset_of(tmp_path_factory.mktemp("plain"), [])


@pytest.fixture(scope="module")
def declared(tmp_path_factory: pytest.TempPathFactory) -> Ruleset:
    """No rules; the local emulator at DECLARED serves AWS's APIs as AWS does."""
    host = urlsplit(DECLARED).netloc
    endpoints = [host, f"*.{host}"]  # virtual-host addressing puts the bucket in front
    return ruleset_of(tmp_path_factory.mktemp("declared"), [], aws={"endpoints": endpoints})


# ---- the table --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One operation: how to make it, and what it must be read as. `aws` is its effect where
    the host serves AWS's APIs (AWS's own endpoints, declared ones); `custom` its effect on a
    host that is not known to (never below what the method says)."""

    call: str
    params: dict[str, Any]
    service: str
    operation: str
    region: str
    targets: tuple[str, ...]
    aws: Effect
    custom: Effect
    count: int | None = None
    addressing: str | None = None  # S3: "path" or "virtual"
    presign: bool = False

    @property
    def id(self) -> str:
        """The case's name in test ids."""
        how = "-".join(x for x in (self.addressing, "presigned" if self.presign else None) if x)
        return f"{self.call}[{how}]" if how else self.call


def kind(service: str, region: str) -> Callable[..., Case]:
    """Rows for one service in one region: `row(method, params, operation, targets, aws,
    custom, **more)`."""

    def row(
        method: str, params: dict[str, Any], operation: str, targets: tuple[str, ...], *rest: Any, **more: Any
    ) -> Case:
        return Case(f"{service}.{method}", params, service, operation, region, targets, *rest, **more)

    return row


QUEUE = "https://sqs.us-east-1.amazonaws.com/123456789012/jobs"
ROLE = "arn:aws:iam::123456789012:role/deployer"
POLICY = "arn:aws:iam::aws:policy/ReadOnlyAccess"
ITEM = {"id": {"S": "42"}}
IDS = ("i-0a1b2c3d4e5f00001", "i-0a1b2c3d4e5f00002", "i-0a1b2c3d4e5f00003")
B = "reports-bucket"
K = "reports-bucket/2026/q3.csv"
OBJECT = {"Bucket": B, "Key": "2026/q3.csv"}
BUCKET = {"Bucket": B}
TAGS = {"TagSet": [{"Key": "team", "Value": "data"}]}
POLICY_DOCUMENT = json.dumps({"Version": "2012-10-17", "Statement": []})
ZIP = b"PK\x05\x06" + bytes(18)  # an empty zip archive
SET_N = {"UpdateExpression": "SET n = :n", "ExpressionAttributeValues": {":n": {"N": "1"}}}
BY_ID = {"KeyConditionExpression": "id = :id", "ExpressionAttributeValues": {":id": {"S": "42"}}}
KEYED = {"KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}]}
TYPED = {"AttributeDefinitions": [{"AttributeName": "id", "AttributeType": "S"}]}
VIRTUAL, PATH = {"addressing": "virtual"}, {"addressing": "path"}

# S3: virtual-host and path-style addressing, the legacy global endpoint (us-east-1) and a
# regional one (eu-west-1, presigned URLs)
s3 = kind("s3", "us-east-1")
s3_eu = kind("s3", "eu-west-1")
dynamodb = kind("dynamodb", "eu-central-1")  # JSON with X-Amz-Target: every operation a POST
ec2 = kind("ec2", "us-west-2")  # the query protocol in a form body
iam = kind("iam", "us-east-1")  # a global service, signed for us-east-1
sqs = kind("sqs", "us-east-1")  # JSON with X-Amz-Target in current botocore; queues by URL
sts = kind("sts", "eu-west-1")
lambda_ = kind("lambda", "ap-southeast-2")  # REST with JSON bodies
cloudformation = kind("cloudformation", "us-east-2")  # the query protocol

CASES = [
    s3("get_object", OBJECT, "GetObject", (K,), READ, READ, **VIRTUAL),
    s3("get_object", OBJECT, "GetObject", (K,), READ, READ, **PATH),
    s3("put_object", {**OBJECT, "Body": b"a,b\n1,2\n"}, "PutObject", (K,), WRITE, WRITE, **VIRTUAL),
    s3("put_object", {**OBJECT, "Body": b"a,b\n1,2\n"}, "PutObject", (K,), WRITE, WRITE, **PATH),
    s3("head_object", OBJECT, "HeadObject", (K,), READ, READ, **VIRTUAL),
    s3("list_objects_v2", {**BUCKET, "Prefix": "2026/"}, "ListObjectsV2", (B,), READ, READ, **VIRTUAL),
    s3("list_objects_v2", {**BUCKET, "Prefix": "2026/"}, "ListObjectsV2", (B,), READ, READ, **PATH),
    s3(
        "copy_object",
        {**OBJECT, "CopySource": "archive-bucket/2025/q3.csv"},
        "CopyObject",
        (K, "archive-bucket/2025/q3.csv"),
        WRITE,
        WRITE,
        **VIRTUAL,
    ),
    s3("delete_object", OBJECT, "DeleteObject", (K,), DESTRUCTIVE, DESTRUCTIVE, **VIRTUAL),
    s3("delete_object", OBJECT, "DeleteObject", (K,), DESTRUCTIVE, DESTRUCTIVE, **PATH),
    s3(
        "delete_objects",
        {**BUCKET, "Delete": {"Objects": [{"Key": "a.csv"}, {"Key": "b/c.csv"}, {"Key": "d e.csv"}]}},
        "DeleteObjects",
        (f"{B}/a.csv", f"{B}/b/c.csv", f"{B}/d e.csv"),
        DESTRUCTIVE,
        DESTRUCTIVE,
        count=3,
        **VIRTUAL,
    ),
    s3(
        "delete_objects",
        {**BUCKET, "Delete": {"Objects": [{"Key": "a.csv"}, {"Key": "b.csv"}]}},
        "DeleteObjects",
        (f"{B}/a.csv", f"{B}/b.csv"),
        DESTRUCTIVE,
        DESTRUCTIVE,
        count=2,
        **PATH,
    ),
    s3("create_bucket", BUCKET, "CreateBucket", (B,), WRITE, WRITE, **VIRTUAL),
    s3("create_bucket", BUCKET, "CreateBucket", (B,), WRITE, WRITE, **PATH),
    s3("delete_bucket", BUCKET, "DeleteBucket", (B,), DESTRUCTIVE, DESTRUCTIVE, **VIRTUAL),
    s3(
        "put_bucket_policy",
        {**BUCKET, "Policy": POLICY_DOCUMENT},
        "PutBucketPolicy",
        (B,),
        WRITE,
        WRITE,
        **VIRTUAL,
    ),
    s3("put_bucket_tagging", {**BUCKET, "Tagging": TAGS}, "PutBucketTagging", (B,), WRITE, WRITE, **PATH),
    s3("get_bucket_tagging", BUCKET, "GetBucketTagging", (B,), READ, READ, **VIRTUAL),
    s3("delete_bucket_tagging", BUCKET, "DeleteBucketTagging", (B,), DESTRUCTIVE, DESTRUCTIVE, **VIRTUAL),
    s3("put_object_tagging", {**OBJECT, "Tagging": TAGS}, "PutObjectTagging", (K,), WRITE, WRITE, **VIRTUAL),
    s3("get_object_tagging", OBJECT, "GetObjectTagging", (K,), READ, READ, **PATH),
    s3_eu("get_object", OBJECT, "GetObject", (K,), READ, READ, presign=True, **VIRTUAL),
    s3_eu("delete_object", OBJECT, "DeleteObject", (K,), DESTRUCTIVE, DESTRUCTIVE, presign=True, **PATH),
    s3_eu("put_object", OBJECT, "PutObject", (K,), WRITE, WRITE, presign=True, **VIRTUAL),
    dynamodb("get_item", {"TableName": "orders", "Key": ITEM}, "GetItem", ("orders",), READ, WRITE),
    dynamodb("put_item", {"TableName": "orders", "Item": ITEM}, "PutItem", ("orders",), WRITE, WRITE),
    dynamodb(
        "delete_item",
        {"TableName": "orders", "Key": ITEM},
        "DeleteItem",
        ("orders",),
        DESTRUCTIVE,
        DESTRUCTIVE,
    ),
    dynamodb(
        "update_item", {"TableName": "orders", "Key": ITEM, **SET_N}, "UpdateItem", ("orders",), WRITE, WRITE
    ),
    dynamodb("query", {"TableName": "orders", **BY_ID}, "Query", ("orders",), READ, WRITE),
    dynamodb("scan", {"TableName": "orders"}, "Scan", ("orders",), READ, WRITE),
    dynamodb(
        "batch_get_item",
        {"RequestItems": {"orders": {"Keys": [ITEM]}, "customers": {"Keys": [ITEM, {"id": {"S": "7"}}]}}},
        "BatchGetItem",
        ("orders", "customers"),
        READ,
        WRITE,
        count=3,
    ),
    dynamodb(
        "batch_write_item",
        {
            "RequestItems": {
                "orders": [{"PutRequest": {"Item": ITEM}}, {"PutRequest": {"Item": {"id": {"S": "43"}}}}],
                "customers": [{"PutRequest": {"Item": ITEM}}],
            }
        },
        "BatchWriteItem",
        ("orders", "customers"),
        WRITE,
        WRITE,
        count=3,
    ),
    dynamodb(
        "transact_write_items",
        {
            "TransactItems": [
                {"Put": {"TableName": "orders", "Item": ITEM}},
                {"Update": {"TableName": "customers", "Key": ITEM, **SET_N}},
            ]
        },
        "TransactWriteItems",
        ("orders", "customers"),
        WRITE,
        WRITE,
        count=2,
    ),
    dynamodb(
        "create_table",
        {"TableName": "orders", **KEYED, **TYPED, "BillingMode": "PAY_PER_REQUEST"},
        "CreateTable",
        ("orders",),
        WRITE,
        WRITE,
    ),
    dynamodb("delete_table", {"TableName": "orders"}, "DeleteTable", ("orders",), DESTRUCTIVE, DESTRUCTIVE),
    ec2("describe_instances", {"InstanceIds": IDS[:1]}, "DescribeInstances", IDS[:1], READ, WRITE, count=1),
    ec2(
        "run_instances",
        {"ImageId": "ami-0abcdef1234567890", "MinCount": 1, "MaxCount": 1},
        "RunInstances",
        ("ami-0abcdef1234567890",),
        WRITE,
        WRITE,
    ),
    ec2(
        "terminate_instances",
        {"InstanceIds": IDS},
        "TerminateInstances",
        IDS,
        DESTRUCTIVE,
        DESTRUCTIVE,
        count=3,
    ),
    ec2("stop_instances", {"InstanceIds": IDS[1:]}, "StopInstances", IDS[1:], WRITE, WRITE, count=2),
    iam("list_users", {}, "ListUsers", (), READ, WRITE),
    iam("create_user", {"UserName": "build-bot"}, "CreateUser", ("build-bot",), WRITE, WRITE),
    iam("delete_user", {"UserName": "build-bot"}, "DeleteUser", ("build-bot",), DESTRUCTIVE, DESTRUCTIVE),
    iam(
        "attach_role_policy",
        {"RoleName": "deployer", "PolicyArn": POLICY},
        "AttachRolePolicy",
        ("deployer", POLICY, "ReadOnlyAccess"),  # an ARN, and the name it ends in
        WRITE,
        WRITE,
    ),
    iam(
        "delete_role_policy",
        {"RoleName": "deployer", "PolicyName": "inline"},
        "DeleteRolePolicy",
        ("deployer", "inline"),
        DESTRUCTIVE,
        DESTRUCTIVE,
    ),
    sqs(
        "send_message",
        {"QueueUrl": QUEUE, "MessageBody": "build 7 done"},
        "SendMessage",
        (QUEUE,),
        WRITE,
        WRITE,
    ),
    sqs("receive_message", {"QueueUrl": QUEUE}, "ReceiveMessage", (QUEUE,), WRITE, WRITE),
    sqs("purge_queue", {"QueueUrl": QUEUE}, "PurgeQueue", (QUEUE,), DESTRUCTIVE, DESTRUCTIVE),
    sqs("delete_queue", {"QueueUrl": QUEUE}, "DeleteQueue", (QUEUE,), DESTRUCTIVE, DESTRUCTIVE),
    sts("get_caller_identity", {}, "GetCallerIdentity", (), READ, WRITE),
    sts(
        "assume_role",
        {"RoleArn": ROLE, "RoleSessionName": "agent-session"},
        "AssumeRole",
        (ROLE, "deployer", "agent-session"),
        WRITE,
        WRITE,
    ),
    lambda_(
        "invoke",
        {"FunctionName": "resize-images", "Payload": b"{}"},
        "Invoke",
        ("resize-images",),
        WRITE,
        WRITE,
    ),
    lambda_("get_function", {"FunctionName": "resize-images"}, "GetFunction", ("resize-images",), READ, READ),
    lambda_(
        "delete_function",
        {"FunctionName": "resize-images"},
        "DeleteFunction",
        ("resize-images",),
        DESTRUCTIVE,
        DESTRUCTIVE,
    ),
    lambda_(
        "create_function",
        {
            "FunctionName": "resize-images",
            "Runtime": "python3.12",
            "Role": ROLE,
            "Handler": "app.handler",
            "Code": {"ZipFile": ZIP},
        },
        "CreateFunction",
        ("resize-images",),
        WRITE,
        WRITE,
    ),
    lambda_(
        "update_function_code",
        {"FunctionName": "resize-images", "ZipFile": ZIP},
        "UpdateFunctionCode",
        ("resize-images",),
        WRITE,
        WRITE,
    ),
    cloudformation("describe_stacks", {"StackName": "web"}, "DescribeStacks", ("web",), READ, WRITE),
    cloudformation(
        "create_stack",
        {"StackName": "web", "TemplateURL": "https://templates.s3.amazonaws.com/web.yaml"},
        "CreateStack",
        ("web",),
        WRITE,
        WRITE,
    ),
    cloudformation("delete_stack", {"StackName": "web"}, "DeleteStack", ("web",), DESTRUCTIVE, DESTRUCTIVE),
]


def cases() -> list[Any]:
    """The table as pytest parameters."""
    return [pytest.param(c, id=c.id) for c in CASES]


def test_the_table_covers_forty_operations() -> None:
    operations = {(c.service, c.operation) for c in CASES}
    assert len(operations) >= 40, sorted(operations)
    assert {c.addressing for c in CASES if c.service == "s3"} == {"path", "virtual"}


def _on(case: Case, endpoint: str | None) -> Signed:
    return sign(
        case.call,
        case.params,
        region=case.region,
        endpoint=endpoint,
        addressing=case.addressing,
        presign=case.presign,
    )


def _read_as(action: Action) -> dict[str, Any]:
    return {
        "protocol": action.protocol,
        "service": action.service,
        "operation": action.operation,
        "region": action.region,
        "targets": action.targets,
        "count": action.count,
    }


def _expected(case: Case) -> dict[str, Any]:
    return {
        "protocol": "aws",
        "service": case.service,
        "operation": case.operation,
        "region": case.region,
        "targets": case.targets,
        "count": case.count,
    }


@pytest.mark.parametrize("case", cases())
def test_on_aws_endpoints(plain: Ruleset, case: Case) -> None:
    """On AWS's own endpoint the operation decides the effect, even below the method's."""
    request = _on(case, None)
    assert request.host.endswith(".amazonaws.com")
    action = explain(plain, request).action
    assert _read_as(action) == _expected(case)
    assert action.effect is case.aws


@pytest.mark.parametrize("case", cases())
def test_on_an_endpoint_named_in_the_rules(declared: Ruleset, case: Case) -> None:
    """An endpoint named in `aws: endpoints` is read as AWS's own. Where its host may name an
    S3 bucket (virtual-host addressing), the reading with the bucket in the host is one of
    those decided."""
    read = explain(declared, _on(case, DECLARED))
    if case.addressing == "virtual":
        assert _expected(case) in [_read_as(r.action) for r in read.readings]
    else:
        assert _read_as(read.action) == _expected(case)
    assert read.action.effect is case.aws


@pytest.mark.parametrize("case", cases())
def test_on_an_endpoint_not_named(plain: Ruleset, case: Case) -> None:
    """Elsewhere the request is still read, but its effect is never below the method's: a
    POST GetItem is a write. Where the host may name an S3 bucket, the reading with the bucket
    in the host is one of those decided."""
    request = _on(case, CUSTOM)
    assert request.host.endswith("emulator.test")
    read = explain(plain, request)
    assert read.action.protocol == "aws"
    readings = [(r.action.service, r.action.operation, r.action.targets) for r in read.readings]
    assert (case.service, case.operation, case.targets) in readings
    assert read.action.effect is case.custom


# ---- attacks: a deny rule must not be stepped around; when in doubt, a write ------------------


def deny(directory: Path, match: dict[str, Any], **top: Any) -> Ruleset:
    """Rules with one deny rule, `no`, matching `match`."""
    return ruleset_of(directory, [{"id": "no", "match": match, "action": "deny"}], **top)


def refused_by(read: Triage) -> str | None:
    """The rule that refused the request, or None when it is let through."""
    return read.decision.rule if read.decision.refused else None


GET_ITEM = {"TableName": "orders", "Key": ITEM}


def test_a_json_target_naming_a_read_to_a_host_not_serving_aws_is_a_write(plain: Ruleset) -> None:
    request = sign("dynamodb.get_item", GET_ITEM, endpoint="https://api.example.test")
    assert dict(request.headers)["X-Amz-Target"] == "DynamoDB_20120810.GetItem"
    action = explain(plain, request).action
    assert (action.service, action.operation, action.effect) == ("dynamodb", "GetItem", WRITE)
    assert explain(plain, sign("dynamodb.get_item", GET_ITEM)).action.effect is READ


def test_a_post_to_api_gateway_signed_for_dynamodb_is_a_write(plain: Ruleset) -> None:
    """An API Gateway host is AWS's, but it serves whatever its owner wrote, not DynamoDB."""
    gateway = "https://abc123.execute-api.us-east-1.amazonaws.com"
    request = sign("dynamodb.get_item", GET_ITEM, endpoint=gateway)
    assert "/us-east-1/dynamodb/aws4_request" in dict(request.headers)["Authorization"]
    action = explain(plain, request).action
    assert (action.service, action.operation, action.effect) == ("dynamodb", "GetItem", WRITE)


def test_an_action_in_the_query_does_not_hide_the_one_in_the_body(tmp_path: Path) -> None:
    """EC2 reads the form body's `Action`; a `DescribeInstances` in the query must not make the
    termination a read, nor let it past a deny on TerminateInstances."""
    terminate = sign("ec2.terminate_instances", {"InstanceIds": IDS}, region="us-west-2")
    describe = sign("ec2.describe_instances", {}, region="us-west-2")
    both = Signed("POST", f"{terminate.url}?{describe.body.decode()}", terminate.headers, terminate.body)
    read = explain(deny(tmp_path, {"operation": "TerminateInstances"}), both)
    assert read.action.effect is DESTRUCTIVE
    assert refused_by(read) == "no"
    assert read.deciding.action.operation == "TerminateInstances"
    assert read.deciding.action.targets == IDS
    # The log names the strictest reading, not the one the query happened to carry first.
    assert (read.action.operation, read.action.targets) == ("TerminateInstances", IDS)


def test_a_delete_objects_body_that_is_not_xml_is_refused_by_a_rule_on_targets(tmp_path: Path) -> None:
    rules = deny(tmp_path, {"operation": "DeleteObjects", "target": "scratch-bucket/keep/*"})
    listed = {"Bucket": "scratch-bucket", "Delete": {"Objects": [{"Key": "tmp/a"}, {"Key": "keep/b"}]}}
    request = sign("s3.delete_objects", listed, addressing="virtual")
    assert refused_by(explain(rules, request)) == "no"
    harmless = sign(
        "s3.delete_objects", {**listed, "Delete": {"Objects": [{"Key": "tmp/a"}]}}, addressing="virtual"
    )
    assert refused_by(explain(rules, harmless)) is None
    broken = Signed(request.method, request.url, request.headers, request.body[: len(request.body) // 2])
    read = explain(rules, broken)
    assert read.action.body_problem is not None
    assert refused_by(read) == "no"


@pytest.mark.parametrize(
    ("endpoint", "addressing", "bucket", "key"),
    [
        ("http://storage.test:9000", "virtual", "prod-data", "dev-data/report.csv"),
        ("http://prod-data.storage.test:9000", "path", "dev-data", "report.csv"),
    ],
    ids=["virtual-host", "path-style"],
)
@pytest.mark.parametrize("denied", ["prod-data/*", "dev-data/*"])
def test_a_bucket_in_the_host_or_in_the_path_is_denied_either_way(
    tmp_path: Path, endpoint: str, addressing: str, bucket: str, key: str, denied: str
) -> None:
    """On a host not known to serve S3 as AWS does, `prod-data.storage.test:9000/dev-data/...`
    may be bucket prod-data or bucket dev-data: a deny on either holds."""
    request = sign(
        "s3.delete_object", {"Bucket": bucket, "Key": key}, endpoint=endpoint, addressing=addressing
    )
    assert request.url == "http://prod-data.storage.test:9000/dev-data/report.csv"
    read = explain(deny(tmp_path, {"service": "s3", "target": denied}), request)
    assert refused_by(read) == "no"


def test_a_bucket_under_a_declared_endpoint_is_read_from_the_host_first(declared: Ruleset) -> None:
    """`reports-bucket.moto.test:5000/2026/q3.csv`: under a declared endpoint (moto.test) the
    first label is the bucket, as an SDK addressing it virtually meant and as the endpoint reads
    it; on the endpoint itself the bucket is in the path. A declared endpoint has no other
    readings."""
    request = sign(
        "s3.delete_object",
        {"Bucket": "reports-bucket", "Key": "2026/q3.csv"},
        endpoint=DECLARED,
        addressing="virtual",
    )
    assert request.host == "reports-bucket.moto.test"
    read = explain(declared, request)
    assert (read.action.operation, read.action.targets) == ("DeleteObject", ("reports-bucket/2026/q3.csv",))
    assert read.action.others == ()
    path_style = sign(
        "s3.delete_object",
        {"Bucket": "reports-bucket", "Key": "2026/q3.csv"},
        endpoint=DECLARED,
        addressing="path",
    )
    read = explain(declared, path_style)
    assert (read.action.targets, read.action.others) == (("reports-bucket/2026/q3.csv",), ())


def _sigv4a(request: Signed) -> Signed:
    """The request as SigV4a signs it: algorithm AWS4-ECDSA-P256-SHA256, a scope without region,
    the regions in X-Amz-Region-Set. botocore signs SigV4a only through awscrt, which is not
    installed here, so the SigV4 header botocore made is rewritten into that form."""
    headers = []
    for name, value in request.headers:
        if name.lower() == "authorization":
            credential, rest = value.split(" ", 1)[1].split(", ", 1)
            key, date, _region, service, end = credential.removeprefix("Credential=").split("/")
            value = f"AWS4-ECDSA-P256-SHA256 Credential={key}/{date}/{service}/{end}, {rest}"
        headers.append((name, value))
    headers.append(("X-Amz-Region-Set", "*"))
    return Signed(request.method, request.url, headers, request.body)


def test_a_sigv4a_signature_still_names_the_service(tmp_path: Path) -> None:
    rules = deny(tmp_path, {"service": "dynamodb", "operation": "DeleteItem"})
    delete = sign("dynamodb.delete_item", {"TableName": "orders", "Key": ITEM}, endpoint=CUSTOM)
    request = _sigv4a(delete)
    assert dict(request.headers)["Authorization"].startswith("AWS4-ECDSA-P256-SHA256 Credential=AKIDEXAMPLE/")
    assert "/dynamodb/aws4_request" in dict(request.headers)["Authorization"]
    read = explain(rules, request)
    assert (read.action.service, read.action.operation) == ("dynamodb", "DeleteItem")
    assert refused_by(read) == "no"
    on_aws = explain(rules, _sigv4a(sign("s3.delete_object", OBJECT, addressing="virtual")))
    assert (on_aws.action.service, on_aws.action.operation) == ("s3", "DeleteObject")


def _second_table(request: Signed, table: str) -> Signed:
    """The body with a second `TableName` key: JSON parsers differ on which one counts."""
    document = request.body.decode()
    assert document.endswith("}")
    body = f'{document[:-1]}, "TableName": "{table}"}}'.encode()
    return Signed(request.method, request.url, request.headers, body)


@pytest.mark.parametrize("denied", ["dev-a", "prod-b"])
def test_a_body_naming_two_tables_is_denied_on_either(tmp_path: Path, denied: str) -> None:
    rules = deny(tmp_path, {"service": "dynamodb", "target": denied})
    request = _second_table(sign("dynamodb.delete_item", {"TableName": "dev-a", "Key": ITEM}), "prod-b")
    assert refused_by(explain(rules, request)) == "no"


def test_an_allow_on_some_targets_does_not_allow_a_batch_touching_others(tmp_path: Path) -> None:
    rules = ruleset_of(
        tmp_path,
        [{"id": "dev-tables", "match": {"service": "dynamodb", "target": "dev-*"}, "action": "allow"}],
        defaults={"read": "deny", "write": "deny", "destructive": "deny"},
    )

    def batch(*tables: str) -> Signed:
        items = {t: [{"PutRequest": {"Item": ITEM}}] for t in tables}
        return sign("dynamodb.batch_write_item", {"RequestItems": items})

    allowed = explain(rules, batch("dev-a", "dev-b"))
    assert (allowed.decision.refused, allowed.decision.rule) == (False, "dev-tables")
    mixed = explain(rules, batch("dev-a", "prod-b"))
    assert mixed.action.targets == ("dev-a", "prod-b")
    assert mixed.decision.refused
    assert mixed.decision.rule != "dev-tables"


# ---- resources named another way, deletes inside batches ----------------------------------------


@pytest.mark.parametrize(
    ("call", "params"),
    [
        ("dynamodb.execute_statement", {"Statement": "DELETE FROM \"prod-orders\" WHERE id = '42'"}),
        (
            "dynamodb.delete_item",
            {"TableName": "arn:aws:dynamodb:us-east-1:123456789012:table/prod-orders", "Key": ITEM},
        ),
    ],
    ids=["partiql", "table-arn"],
)
def test_a_deny_on_a_table_holds_however_the_table_is_named(
    tmp_path: Path, call: str, params: dict[str, Any]
) -> None:
    rules = deny(tmp_path, {"service": "dynamodb", "target": "prod-*"})
    assert refused_by(explain(rules, sign(call, params))) == "no"


def test_a_deny_on_a_function_holds_when_it_is_named_by_arn(tmp_path: Path) -> None:
    rules = deny(tmp_path, {"service": "lambda", "target": "prod-*"})
    arn = "arn:aws:lambda:ap-southeast-2:123456789012:function:prod-api"
    assert (
        refused_by(
            explain(rules, sign("lambda.delete_function", {"FunctionName": arn}, region="ap-southeast-2"))
        )
        == "no"
    )


@pytest.mark.parametrize(
    ("call", "params"),
    [
        ("dynamodb.batch_write_item", {"RequestItems": {"orders": [{"DeleteRequest": {"Key": ITEM}}]}}),
        (
            "dynamodb.transact_write_items",
            {"TransactItems": [{"Delete": {"TableName": "orders", "Key": ITEM}}]},
        ),
        ("dynamodb.execute_statement", {"Statement": "DELETE FROM \"orders\" WHERE id = '42'"}),
    ],
    ids=["batch-delete", "transact-delete", "partiql-delete"],
)
def test_deleting_items_in_a_batch_is_destructive(plain: Ruleset, call: str, params: dict[str, Any]) -> None:
    assert explain(plain, sign(call, params)).action.effect is DESTRUCTIVE


def test_a_deny_on_targets_holds_in_any_case_and_an_allow_only_in_the_case_given(tmp_path: Path) -> None:
    denied = deny(tmp_path, {"operation": "dynamodb:DeleteTable", "target": "*-prod"})
    assert refused_by(explain(denied, sign("dynamodb.delete_table", {"TableName": "Orders-Prod"}))) == "no"
    (tmp_path / "allow").mkdir()
    allowing = ruleset_of(
        tmp_path / "allow",
        [{"id": "dev-tables", "match": {"target": "dev-*"}, "action": "allow"}],
        defaults={"destructive": "hold"},
    )
    shouting = explain(allowing, sign("dynamodb.delete_table", {"TableName": "DEV-orders"}))
    assert shouting.decision.rule != "dev-tables"
    assert (
        explain(allowing, sign("dynamodb.delete_table", {"TableName": "dev-orders"})).decision.rule
        == "dev-tables"
    )


def test_a_delete_by_method_override_or_doubled_slash_is_still_a_delete(tmp_path: Path) -> None:
    """A server in front of S3 that honours `X-HTTP-Method-Override`, or one that resolves
    `//bucket/key` as `/bucket/key`, deletes the object: a deny on DeleteObject holds. (The
    requests are botocore's DeleteObject, changed after signing: AWS would refuse the
    signature, but a deny must not depend on that.)"""
    rules = deny(tmp_path, {"operation": "s3:DeleteObject", "target": "prod-users/*"})
    request = sign("s3.delete_object", {"Bucket": "prod-users", "Key": "a.csv"}, addressing="path")
    overridden = Signed(
        "POST", request.url, [*request.headers, ("X-HTTP-Method-Override", "DELETE")], request.body
    )
    read = explain(rules, overridden)
    assert refused_by(read) == "no"
    assert read.action.effect is DESTRUCTIVE
    head, _, path = request.url.partition(".amazonaws.com")
    doubled = Signed("DELETE", f"{head}.amazonaws.com/{path}", request.headers, request.body)
    assert "amazonaws.com//prod-users/a.csv" in doubled.url
    assert refused_by(explain(rules, doubled)) == "no"

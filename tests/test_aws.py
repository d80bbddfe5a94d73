"""AWS calls through the real proxy: the `aws` CLI (awscli from PyPI) and boto3, each through a real
`airlock run` to a real moto server on loopback, over HTTP and over HTTPS with Airlock's CA. The
log names each call's service, operation, resources and effect; rules on operations and resource
globs stop calls before moto sees them, and the clients print Airlock's reason; the shipped
rules/aws.yaml does what it says.

moto stands in for AWS itself, which cannot be reached from here; every request is signed by the
real clients with fake credentials, exactly as they sign for AWS."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from .support import AIRLOCK, Airlock, UpstreamCA, curl, free_port, wait_for
from .support.moto import Moto, aws_cli, moto_server, proxied, strict_upstream_ca

REPO = Path(__file__).resolve().parent.parent

RULES = """\
version: 1
egress:
  allow: [127.0.0.1]
aws:
  endpoints: ["127.0.0.1"]   # moto answers AWS's APIs as AWS does
rules:
  - id: no-prod-object-deletes
    description: objects in production buckets stay
    match:
      operation: [s3:DeleteObject, s3:DeleteObjects]
      target: "prod-*/*"
    action: deny
    message: Objects in production buckets are not deleted by agents; ask the data owner.
  - id: tables-stay
    description: the migration copies tables; it never drops one
    match: {operation: dynamodb:DeleteTable}
    action: deny
    message: Tables are not deleted during the migration; leave the table for an operator.
  - id: no-user-deletes
    match: {operation: iam:DeleteUser}
    action: deny
    message: Users are removed by the identity team; open a ticket with them.
  - id: instances-stay
    match: {operation: ec2:TerminateInstances, target: "i-*"}
    action: deny
    message: Instances are stopped by the on-call engineer; page them instead.
"""

# The same proxy without `aws: endpoints`: moto is then just a host that takes POSTs.
UNDECLARED = """\
version: 1
egress:
  allow: [127.0.0.1]
"""

# Beside rules/aws.yaml: what a team's own file adds (egress, the emulator as an AWS endpoint, and
# holds that answer at once, so a held call returns to the test while it waits for votes).
PACK_LOCAL = """\
version: 1
egress:
  allow: [127.0.0.1]
aws:
  endpoints: ["127.0.0.1"]
defaults: {read: hold}
hold: {wait: 0s}
"""

SCHEMES = ["http", "https"]
KEY_SCHEMA = [{"AttributeName": "id", "KeyType": "HASH"}]
ATTRIBUTES = [{"AttributeName": "id", "AttributeType": "S"}]


def unique(prefix: str) -> str:
    """A bucket, table or queue name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def airlock_with(root: Path, rules: Path, ca: UpstreamCA) -> Airlock:
    """An `airlock run` with these rules that trusts moto's CA for HTTPS upstreams."""
    return Airlock(
        data=root / "data",
        rules=rules,
        port=free_port(),
        control_port=free_port(),
        extra=("--upstream-ca", str(ca.cert)),
        output=root / "airlock.out",
    ).start()


@pytest.fixture(scope="module")
def moto_ca(tmp_path_factory: pytest.TempPathFactory) -> UpstreamCA:
    """The CA of the HTTPS moto server's certificate."""
    return strict_upstream_ca(tmp_path_factory.mktemp("moto-ca"))


@pytest.fixture(scope="module")
def motos(tmp_path_factory: pytest.TempPathFactory, moto_ca: UpstreamCA) -> Iterator[dict[str, Moto]]:
    """One moto server over HTTP and one over HTTPS, for the whole module."""
    root = tmp_path_factory.mktemp("moto")
    with moto_server(root) as plain, moto_server(root, moto_ca) as tls:
        yield {"http": plain, "https": tls}


@pytest.fixture(scope="module")
def airlock(tmp_path_factory: pytest.TempPathFactory, moto_ca: UpstreamCA) -> Iterator[Airlock]:
    """The proxy with RULES, shared by the module: each test reads only the actions it made."""
    root = tmp_path_factory.mktemp("airlock")
    (root / "rules.yaml").write_text(RULES)
    a = airlock_with(root, root / "rules.yaml", moto_ca)
    try:
        yield a
    finally:
        a.stop()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An empty HOME for the `aws` CLI: no config or credentials of the user's."""
    return tmp_path


def mark(a: Airlock) -> int:
    """The id of the newest action so far: what a test's own actions come after."""
    return max((int(e["id"]) for e in a.log()), default=0)


def since(a: Airlock, after: int) -> list[dict[str, Any]]:
    """The actions logged after `after`, oldest first, once each has its outcome (a client has
    its answer just before the outcome is written)."""
    found: list[dict[str, Any]] = []

    def settled() -> bool:
        found[:] = sorted((e for e in a.log() if int(e["id"]) > after), key=lambda e: int(e["id"]))
        return all(e["state"] != "pending" for e in found)

    wait_for(settled, "every action has its outcome")
    return found


def readings(entries: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """(service, operation, targets, effect) of each action, as the log gives them."""
    return [(e.get("service"), e.get("operation"), e.get("targets"), e.get("effect")) for e in entries]


def objects(m: Moto, bucket: str) -> set[str]:
    """The keys moto holds in `bucket`, asked directly (no proxy)."""
    listed = m.direct("s3").list_objects_v2(Bucket=bucket)
    return {o["Key"] for o in listed.get("Contents", [])}


def refusal(e: pytest.ExceptionInfo[ClientError]) -> tuple[str, str]:
    """The error code and message botocore read from a refused call."""
    error = e.value.response["Error"]
    return str(error.get("Code")), str(error.get("Message"))


# ---- what the log says of each call ---------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
def test_s3_calls_from_the_aws_cli_are_logged_as_operations_on_their_objects(
    airlock: Airlock, motos: dict[str, Moto], home: Path, scheme: str
) -> None:
    m = motos[scheme]
    bucket = unique("media")
    (home / "report.txt").write_text("quarterly numbers\n")
    start = mark(airlock)

    def cli(*args: str) -> str:
        return aws_cli(airlock, m, home, "s3api", *args).stdout

    cli("create-bucket", "--bucket", bucket)
    cli("put-object", "--bucket", bucket, "--key", "reports/q3.txt", "--body", str(home / "report.txt"))
    cli(
        "copy-object",
        "--bucket",
        bucket,
        "--key",
        "reports/q3-copy.txt",
        "--copy-source",
        f"{bucket}/reports/q3.txt",
    )
    cli("put-object", "--bucket", bucket, "--key", "reports/q4.txt", "--body", str(home / "report.txt"))
    listed = json.loads(cli("list-objects-v2", "--bucket", bucket))
    cli("get-object", "--bucket", bucket, "--key", "reports/q3.txt", str(home / "got.txt"))
    cli("delete-object", "--bucket", bucket, "--key", "reports/q3.txt")
    cli(
        "delete-objects",
        "--bucket",
        bucket,
        "--delete",
        json.dumps({"Objects": [{"Key": "reports/q3-copy.txt"}, {"Key": "reports/q4.txt"}]}),
    )

    assert {o["Key"] for o in listed["Contents"]} == {
        "reports/q3.txt",
        "reports/q3-copy.txt",
        "reports/q4.txt",
    }
    assert (home / "got.txt").read_text() == "quarterly numbers\n"
    assert objects(m, bucket) == set()
    entries = since(airlock, start)
    assert readings(entries) == [
        ("s3", "CreateBucket", [bucket], "write"),
        ("s3", "PutObject", [f"{bucket}/reports/q3.txt"], "write"),
        ("s3", "CopyObject", entries[2]["targets"], "write"),
        ("s3", "PutObject", [f"{bucket}/reports/q4.txt"], "write"),
        ("s3", "ListObjectsV2", [bucket], "read"),
        ("s3", "GetObject", [f"{bucket}/reports/q3.txt"], "read"),
        ("s3", "DeleteObject", [f"{bucket}/reports/q3.txt"], "destructive"),
        ("s3", "DeleteObjects", [f"{bucket}/reports/q3-copy.txt", f"{bucket}/reports/q4.txt"], "destructive"),
    ]
    # The copy writes its destination; the source it reads is named too.
    assert f"{bucket}/reports/q3-copy.txt" in entries[2]["targets"]
    assert entries[-1]["count"] == 2
    assert {e["protocol"] for e in entries} == {"aws"}
    assert {e["region"] for e in entries} == {"us-east-1"}
    assert {e["state"] for e in entries} == {"committed"}
    assert all(e["url"].startswith(f"{scheme}://127.0.0.1:{m.port}/{bucket}") for e in entries)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_s3_calls_from_boto3_are_logged_as_operations_on_their_objects(
    airlock: Airlock, motos: dict[str, Moto], scheme: str
) -> None:
    m = motos[scheme]
    s3 = proxied(airlock, m, "s3")
    bucket = unique("logs")
    start = mark(airlock)

    s3.create_bucket(Bucket=bucket)
    for key in ("a.log", "b.log", "c.log"):
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    s3.copy_object(Bucket=bucket, Key="a-copy.log", CopySource={"Bucket": bucket, "Key": "a.log"})
    assert s3.get_object(Bucket=bucket, Key="a-copy.log")["Body"].read() == b"a.log"
    s3.delete_object(Bucket=bucket, Key="a.log")
    answer = s3.delete_objects(
        Bucket=bucket, Delete={"Objects": [{"Key": k} for k in ("a-copy.log", "b.log", "c.log")]}
    )

    assert len(answer["Deleted"]) == 3
    assert objects(m, bucket) == set()
    entries = since(airlock, start)
    assert [(e["operation"], e["effect"]) for e in entries] == [
        ("CreateBucket", "write"),
        ("PutObject", "write"),
        ("PutObject", "write"),
        ("PutObject", "write"),
        ("CopyObject", "write"),
        ("GetObject", "read"),
        ("DeleteObject", "destructive"),
        ("DeleteObjects", "destructive"),
    ]
    assert entries[6]["targets"] == [f"{bucket}/a.log"]
    assert entries[7]["targets"] == [f"{bucket}/{k}" for k in ("a-copy.log", "b.log", "c.log")]
    assert entries[7]["count"] == 3


@pytest.mark.parametrize("scheme", SCHEMES)
def test_dynamodb_calls_are_logged_with_their_table_and_a_get_item_is_a_read_on_a_declared_endpoint(
    airlock: Airlock, motos: dict[str, Moto], home: Path, scheme: str
) -> None:
    m = motos[scheme]
    ddb = proxied(airlock, m, "dynamodb")
    table = unique("orders")
    start = mark(airlock)

    aws_cli(
        airlock,
        m,
        home,
        "dynamodb",
        "create-table",
        "--table-name",
        table,
        "--key-schema",
        json.dumps(KEY_SCHEMA),
        "--attribute-definitions",
        json.dumps(ATTRIBUTES),
        "--billing-mode",
        "PAY_PER_REQUEST",
    )
    ddb.put_item(TableName=table, Item={"id": {"S": "o-1"}, "total": {"N": "12"}})
    got = ddb.get_item(TableName=table, Key={"id": {"S": "o-1"}})
    ddb.delete_item(TableName=table, Key={"id": {"S": "o-1"}})
    ddb.batch_write_item(
        RequestItems={table: [{"PutRequest": {"Item": {"id": {"S": f"o-{n}"}}}} for n in range(2, 6)]}
    )

    assert got["Item"]["total"] == {"N": "12"}
    assert m.direct("dynamodb").scan(TableName=table)["Count"] == 4
    entries = since(airlock, start)
    assert readings(entries) == [
        ("dynamodb", "CreateTable", [table], "write"),
        ("dynamodb", "PutItem", [table], "write"),
        ("dynamodb", "GetItem", [table], "read"),
        ("dynamodb", "DeleteItem", [table], "destructive"),
        ("dynamodb", "BatchWriteItem", [table], "write"),
    ]
    assert entries[-1]["count"] == 4
    assert {e["method"] for e in entries} == {"POST"}
    assert {e["state"] for e in entries} == {"committed"}


@pytest.mark.parametrize("scheme", SCHEMES)
def test_sqs_calls_are_logged_with_their_queue(
    airlock: Airlock, motos: dict[str, Moto], home: Path, scheme: str
) -> None:
    m = motos[scheme]
    name = unique("jobs")
    start = mark(airlock)

    url = json.loads(aws_cli(airlock, m, home, "sqs", "create-queue", "--queue-name", name).stdout)[
        "QueueUrl"
    ]
    proxied(airlock, m, "sqs").send_message(QueueUrl=url, MessageBody="resize image 7")

    received = m.direct("sqs").receive_message(QueueUrl=url)["Messages"]
    assert [r["Body"] for r in received] == ["resize image 7"]
    entries = since(airlock, start)
    assert [(e["service"], e["operation"], e["effect"]) for e in entries] == [
        ("sqs", "CreateQueue", "write"),
        ("sqs", "SendMessage", "write"),
    ]
    assert entries[0]["targets"] == [name]
    assert entries[1]["targets"] == [url]


def test_get_item_counts_at_least_as_a_write_where_the_endpoint_is_not_declared_as_aws(
    tmp_path: Path, motos: dict[str, Moto], moto_ca: UpstreamCA
) -> None:
    m = motos["http"]
    table = unique("sessions")
    m.direct("dynamodb").create_table(
        TableName=table, KeySchema=KEY_SCHEMA, AttributeDefinitions=ATTRIBUTES, BillingMode="PAY_PER_REQUEST"
    )
    (tmp_path / "rules.yaml").write_text(UNDECLARED)
    a = airlock_with(tmp_path, tmp_path / "rules.yaml", moto_ca)
    try:
        proxied(a, m, "dynamodb").get_item(TableName=table, Key={"id": {"S": "s-1"}})
        [entry] = a.log()
    finally:
        a.stop()

    # Any host can answer a POST that names GetItem; only a host the rules vouch for is read
    # as AWS reads it.
    assert (entry["service"], entry["operation"], entry["targets"]) == ("dynamodb", "GetItem", [table])
    assert entry["effect"] in ("write", "destructive")


# ---- rules on operations and resources ------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
def test_deletes_in_prod_buckets_are_refused_in_s3s_own_error_shape_and_elsewhere_they_pass(
    airlock: Airlock, motos: dict[str, Moto], scheme: str
) -> None:
    m = motos[scheme]
    direct = m.direct("s3")
    prod, dev = unique("prod-users"), unique("dev-users")
    for bucket in (prod, dev):
        direct.create_bucket(Bucket=bucket)
        for key in ("u/1.json", "u/2.json", "u/3.json"):
            direct.put_object(Bucket=bucket, Key=key, Body=b"{}")
    s3 = proxied(airlock, m, "s3")
    start = mark(airlock)

    with pytest.raises(ClientError) as one:
        s3.delete_object(Bucket=prod, Key="u/1.json")
    with pytest.raises(ClientError) as many:
        s3.delete_objects(Bucket=prod, Delete={"Objects": [{"Key": "u/2.json"}, {"Key": "u/3.json"}]})
    s3.delete_object(Bucket=dev, Key="u/1.json")
    s3.delete_objects(Bucket=dev, Delete={"Objects": [{"Key": "u/2.json"}, {"Key": "u/3.json"}]})

    assert objects(m, prod) == {"u/1.json", "u/2.json", "u/3.json"}
    assert objects(m, dev) == set()
    for refused in (one, many):
        code, message = refusal(refused)
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        assert code == "AccessDenied"
        assert "no-prod-object-deletes" in message
        assert "ask the data owner" in message
    entries = since(airlock, start)
    assert [(e["operation"], e["state"], e["rule"]) for e in entries] == [
        ("DeleteObject", "denied", "no-prod-object-deletes"),
        ("DeleteObjects", "denied", "no-prod-object-deletes"),
        ("DeleteObject", "committed", None),
        ("DeleteObjects", "committed", None),
    ]
    assert entries[1]["targets"] == [f"{prod}/u/2.json", f"{prod}/u/3.json"]
    assert entries[1]["count"] == 2
    lines = airlock.cli("log", "--all").stdout
    assert f"aws s3 DeleteObject {prod}/u/1.json" in lines
    assert f"aws s3 DeleteObjects {prod}/u/2.json" in lines


def test_the_aws_cli_prints_the_rule_and_its_message_when_a_prod_delete_is_refused(
    airlock: Airlock, motos: dict[str, Moto], home: Path
) -> None:
    m = motos["https"]
    prod = unique("prod-invoices")
    m.direct("s3").create_bucket(Bucket=prod)
    m.direct("s3").put_object(Bucket=prod, Key="2026/11.pdf", Body=b"%PDF")

    m.direct("s3").put_object(Bucket=prod, Key="2026/12.pdf", Body=b"%PDF")
    start = mark(airlock)

    api = aws_cli(
        airlock, m, home, "s3api", "delete-object", "--bucket", prod, "--key", "2026/11.pdf", check=False
    )
    rm = aws_cli(airlock, m, home, "s3", "rm", f"s3://{prod}/2026/11.pdf", check=False)
    recursive = aws_cli(airlock, m, home, "s3", "rm", f"s3://{prod}/2026/", "--recursive", check=False)

    assert objects(m, prod) == {"2026/11.pdf", "2026/12.pdf"}
    for proc in (api, rm, recursive):
        assert proc.returncode != 0
        assert "AccessDenied" in proc.stderr
        assert "no-prod-object-deletes" in proc.stderr
        assert "ask the data owner" in proc.stderr
    # `s3 rm --recursive` lists the prefix, then deletes each key it found.
    entries = since(airlock, start)
    listing = next(i for i, e in enumerate(entries) if e["operation"] == "ListObjectsV2")
    assert entries[listing]["state"] == "committed"
    assert sorted((e["operation"], e["state"], *e["targets"]) for e in entries[listing + 1 :]) == [
        ("DeleteObject", "denied", f"{prod}/2026/11.pdf"),
        ("DeleteObject", "denied", f"{prod}/2026/12.pdf"),
    ]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_denied_iam_and_ec2_calls_get_their_protocols_error_codes_and_nothing_changes(
    airlock: Airlock, motos: dict[str, Moto], home: Path, scheme: str
) -> None:
    m = motos[scheme]
    user = unique("ci-deployer")
    m.direct("iam").create_user(UserName=user)
    image = m.direct("ec2").describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    [instance] = m.direct("ec2").run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"]
    start = mark(airlock)

    with pytest.raises(ClientError) as user_delete:
        proxied(airlock, m, "iam").delete_user(UserName=user)
    with pytest.raises(ClientError) as terminate:
        proxied(airlock, m, "ec2").terminate_instances(InstanceIds=[instance["InstanceId"]])
    cli = aws_cli(
        airlock, m, home, "ec2", "terminate-instances", "--instance-ids", instance["InstanceId"], check=False
    )

    assert refusal(user_delete)[0] == "AccessDenied"  # the query protocol's <ErrorResponse>
    assert "no-user-deletes" in refusal(user_delete)[1]
    assert refusal(terminate)[0] == "UnauthorizedOperation"  # EC2's <Response><Errors>
    assert "instances-stay" in refusal(terminate)[1]
    assert cli.returncode != 0
    assert "UnauthorizedOperation" in cli.stderr
    assert "Instances are stopped by the on-call engineer" in cli.stderr
    assert user in {u["UserName"] for u in m.direct("iam").list_users()["Users"]}
    described = m.direct("ec2").describe_instances(InstanceIds=[instance["InstanceId"]])
    assert described["Reservations"][0]["Instances"][0]["State"]["Name"] == "running"
    entries = since(airlock, start)
    assert [(e["service"], e["operation"], e["targets"], e["effect"], e["state"]) for e in entries] == [
        ("iam", "DeleteUser", [user], "destructive", "denied"),
        ("ec2", "TerminateInstances", [instance["InstanceId"]], "destructive", "denied"),
        ("ec2", "TerminateInstances", [instance["InstanceId"]], "destructive", "denied"),
    ]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_presigned_delete_sent_with_curl_is_classified_and_refused_the_same(
    airlock: Airlock, motos: dict[str, Moto], scheme: str
) -> None:
    m = motos[scheme]
    direct = m.direct("s3")
    prod, dev = unique("prod-exports"), unique("dev-exports")
    for bucket in (prod, dev):
        direct.create_bucket(Bucket=bucket)
        direct.put_object(Bucket=bucket, Key="full.csv", Body=b"a,b\n")
    trust = ("--cacert", str(airlock.ca_cert)) if scheme == "https" else ()
    start = mark(airlock)

    def delete(bucket: str) -> tuple[str, str]:
        url = direct.generate_presigned_url(
            "delete_object", Params={"Bucket": bucket, "Key": "full.csv"}, ExpiresIn=300
        )
        proc = curl("-X", "DELETE", "--proxy", airlock.proxy, *trust, "-w", "\n%{http_code}", url)
        body, _, status = proc.stdout.rpartition("\n")
        return status, body

    refused_status, refused_body = delete(prod)
    passed_status, _ = delete(dev)

    assert (refused_status, passed_status) == ("403", "204")
    assert "<Code>AccessDenied</Code>" in refused_body
    assert "no-prod-object-deletes" in refused_body
    assert objects(m, prod) == {"full.csv"}
    assert objects(m, dev) == set()
    entries = since(airlock, start)
    assert [(e["service"], e["operation"], e["targets"], e["effect"], e["state"]) for e in entries] == [
        ("s3", "DeleteObject", [f"{prod}/full.csv"], "destructive", "denied"),
        ("s3", "DeleteObject", [f"{dev}/full.csv"], "destructive", "committed"),
    ]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_migration_copies_every_item_to_a_bucket_and_the_table_delete_is_refused(
    airlock: Airlock, motos: dict[str, Moto], scheme: str
) -> None:
    m = motos[scheme]
    table, bucket = unique("customers"), unique("customers-archive")
    seed = m.direct("dynamodb")
    seed.create_table(
        TableName=table, KeySchema=KEY_SCHEMA, AttributeDefinitions=ATTRIBUTES, BillingMode="PAY_PER_REQUEST"
    )
    for n in range(7):
        seed.put_item(TableName=table, Item={"id": {"S": f"c-{n}"}, "name": {"S": f"customer {n}"}})
    ddb, s3 = proxied(airlock, m, "dynamodb"), proxied(airlock, m, "s3")
    start = mark(airlock)

    # The agent's migration: scan the table page by page, one object per item, then drop it.
    s3.create_bucket(Bucket=bucket)
    for page in ddb.get_paginator("scan").paginate(TableName=table, Limit=3):
        for item in page["Items"]:
            s3.put_object(Bucket=bucket, Key=f"{item['id']['S']}.json", Body=json.dumps(item).encode())
    with pytest.raises(ClientError) as dropped:
        ddb.delete_table(TableName=table)

    code, message = refusal(dropped)
    assert dropped.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert code == "AccessDeniedException"
    assert "tables-stay" in message
    assert "leave the table for an operator" in message
    assert seed.describe_table(TableName=table)["Table"]["ItemCount"] == 7
    assert objects(m, bucket) == {f"c-{n}.json" for n in range(7)}
    entries = since(airlock, start)
    scans = [e for e in entries if e["operation"] == "Scan"]
    puts = [e for e in entries if e["operation"] == "PutObject"]
    assert len(scans) >= 3
    assert {(e["effect"], tuple(e["targets"])) for e in scans} == {("read", (table,))}
    assert sorted(t for e in puts for t in e["targets"]) == sorted(f"{bucket}/c-{n}.json" for n in range(7))
    assert {(e["effect"], e["state"]) for e in puts} == {("write", "committed")}
    last = entries[-1]
    assert (last["operation"], last["targets"], last["effect"], last["state"], last["rule"]) == (
        "DeleteTable",
        [table],
        "destructive",
        "denied",
        "tables-stay",
    )


# ---- the shipped rule pack ------------------------------------------------------------------


@pytest.fixture(scope="module")
def pack(tmp_path_factory: pytest.TempPathFactory, moto_ca: UpstreamCA) -> Iterator[Airlock]:
    """A proxy with rules/aws.yaml as shipped, beside a team's own file (PACK_LOCAL)."""
    root = tmp_path_factory.mktemp("pack")
    rules = root / "rules"
    rules.mkdir()
    shutil.copy(REPO / "rules" / "aws.yaml", rules / "aws.yaml")
    (rules / "local.yaml").write_text(PACK_LOCAL)
    a = airlock_with(root, rules, moto_ca)
    try:
        yield a
    finally:
        a.stop()


def test_the_aws_pack_is_valid_alone_and_beside_a_teams_own_file(pack: Airlock) -> None:
    for path in (REPO / "rules" / "aws.yaml", pack.rules):
        checked = subprocess.run(
            [AIRLOCK, "rules", "check", str(path)], capture_output=True, text=True, timeout=60
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert checked.stdout.startswith("ok: ")


def test_the_aws_pack_lets_reads_pass_and_refuses_production_bucket_and_table_deletes(
    pack: Airlock, motos: dict[str, Moto]
) -> None:
    m = motos["http"]
    direct_s3, direct_ddb = m.direct("s3"), m.direct("dynamodb")
    bucket, table = unique("prod-ledger"), f"{unique('orders')}-prod"
    direct_s3.create_bucket(Bucket=bucket)
    direct_s3.put_object(Bucket=bucket, Key="2026.csv", Body=b"x")
    direct_ddb.create_table(
        TableName=table, KeySchema=KEY_SCHEMA, AttributeDefinitions=ATTRIBUTES, BillingMode="PAY_PER_REQUEST"
    )
    s3, ddb = proxied(pack, m, "s3"), proxied(pack, m, "dynamodb")
    start = mark(pack)

    listed = s3.list_objects_v2(Bucket=bucket)
    described = ddb.describe_table(TableName=table)
    with pytest.raises(ClientError) as bucket_delete:
        s3.delete_bucket(Bucket=bucket)
    with pytest.raises(ClientError) as table_delete:
        ddb.delete_table(TableName=table)

    assert listed["KeyCount"] == 1
    assert described["Table"]["TableName"] == table
    assert bucket in {b["Name"] for b in direct_s3.list_buckets()["Buckets"]}
    assert table in direct_ddb.list_tables()["TableNames"]
    assert "aws-no-prod-bucket-deletes" in refusal(bucket_delete)[1]
    assert "Production buckets are not deleted by agents" in refusal(bucket_delete)[1]
    assert "aws-no-prod-table-deletes" in refusal(table_delete)[1]
    entries = since(pack, start)
    # Reads pass by the pack's rule although this team's default holds reads.
    assert [(e["operation"], e["state"], e["rule"]) for e in entries] == [
        ("ListObjectsV2", "committed", "aws-reads"),
        ("DescribeTable", "committed", "aws-reads"),
        ("DeleteBucket", "denied", "aws-no-prod-bucket-deletes"),
        ("DeleteTable", "denied", "aws-no-prod-table-deletes"),
    ]


def test_the_aws_pack_holds_deletes_terminations_iam_changes_and_key_deletions_for_a_vote(
    pack: Airlock, motos: dict[str, Moto]
) -> None:
    m = motos["http"]
    bucket, table = unique("scratch"), unique("carts")
    m.direct("s3").create_bucket(Bucket=bucket)
    m.direct("s3").put_object(Bucket=bucket, Key="tmp.bin", Body=b"x")
    m.direct("dynamodb").create_table(
        TableName=table, KeySchema=KEY_SCHEMA, AttributeDefinitions=ATTRIBUTES, BillingMode="PAY_PER_REQUEST"
    )
    m.direct("dynamodb").put_item(TableName=table, Item={"id": {"S": "cart-1"}})
    s3, ec2, iam, kms = (proxied(pack, m, s) for s in ("s3", "ec2", "iam", "kms"))
    ddb = proxied(pack, m, "dynamodb")
    instance = "i-0abc1234def567890"
    start = mark(pack)

    held = {
        "aws-deletes-wait": [
            lambda: s3.delete_object(Bucket=bucket, Key="tmp.bin"),
            lambda: s3.delete_bucket(Bucket=bucket),
        ],
        "aws-instance-stops-wait": [lambda: ec2.stop_instances(InstanceIds=[instance])],
        "aws-iam-changes-wait": [lambda: iam.create_user(UserName="deploy-bot")],
        "aws-kms-key-changes-wait": [
            lambda: kms.schedule_key_deletion(
                KeyId="1234abcd-12ab-34cd-56ef-1234567890ab", PendingWindowInDays=7
            )
        ],
    }
    for rule, calls in held.items():
        for call in calls:
            with pytest.raises(ClientError) as waiting:
                call()
            assert waiting.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
            assert rule in refusal(waiting)[1]
    with pytest.raises(ClientError):
        ec2.terminate_instances(InstanceIds=[instance])
    with pytest.raises(ClientError):
        ddb.batch_write_item(
            RequestItems={
                table: [
                    {"PutRequest": {"Item": {"id": {"S": "cart-2"}}}},
                    {"DeleteRequest": {"Key": {"id": {"S": "cart-1"}}}},
                ]
            }
        )
    iam.list_users()
    ddb.batch_write_item(RequestItems={table: [{"PutRequest": {"Item": {"id": {"S": "cart-3"}}}}]})

    assert objects(m, bucket) == {"tmp.bin"}
    assert "deploy-bot" not in {u["UserName"] for u in m.direct("iam").list_users()["Users"]}
    items = m.direct("dynamodb").scan(TableName=table)["Items"]
    assert sorted(i["id"]["S"] for i in items) == ["cart-1", "cart-3"]
    entries = since(pack, start)
    assert [(e["service"], e["operation"], e["state"], e["rule"]) for e in entries[:5]] == [
        ("s3", "DeleteObject", "held", "aws-deletes-wait"),
        ("s3", "DeleteBucket", "held", "aws-deletes-wait"),
        ("ec2", "StopInstances", "held", "aws-instance-stops-wait"),
        ("iam", "CreateUser", "held", "aws-iam-changes-wait"),
        ("kms", "ScheduleKeyDeletion", "held", "aws-kms-key-changes-wait"),
    ]
    terminate, batch, list_users, puts = entries[5:]
    # Two hold rules match a termination; the log names one of them. A batch that deletes an item
    # is destructive, whatever its name says.
    assert (terminate["operation"], terminate["targets"], terminate["state"]) == (
        "TerminateInstances",
        [instance],
        "held",
    )
    assert terminate["rule"] in ("aws-deletes-wait", "aws-instance-stops-wait")
    assert (batch["operation"], batch["targets"], batch["state"]) == ("BatchWriteItem", [table], "held")
    assert (batch["effect"], batch["rule"]) == ("destructive", "aws-deletes-wait")
    assert (list_users["operation"], list_users["state"], list_users["rule"]) == (
        "ListUsers",
        "committed",
        "aws-reads",
    )
    assert (puts["operation"], puts["state"]) == ("BatchWriteItem", "committed")

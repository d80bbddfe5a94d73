"""No secret in the log, whatever the service calls it: AWS's models mark the members that hold
secrets (SSM's parameter `Value`, Lambda's environment `Variables`, Cognito's `Password`), and
the log keeps none of their values, in JSON, form and XML bodies, whole or cut at the body limit.

The end-to-end test runs boto3 through a real `airlock run` to a real moto server; the rest read
the log's records of requests botocore signed."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator

import pytest
from botocore.exceptions import ClientError

from proxy.core.records import BodyPolicy, body_excerpt, describe
from proxy.core.redact import REDACTED, Redactor, named
from rules import Action, Effect
from tests.support import Airlock
from tests.support.moto import Moto, moto_server, proxied

SECRET = "correct-horse-battery-staple"

RULES = """\
version: 1
egress:
  allow: [127.0.0.1]
aws:
  endpoints: ["127.0.0.1"]
defaults: {read: allow, write: allow, destructive: allow}
"""


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    with moto_server(tmp_path_factory.mktemp("moto")) as m:
        yield m


def test_a_secure_string_parameter_is_not_logged(make_airlock: Callable[..., Airlock], moto: Moto) -> None:
    airlock = make_airlock(RULES)
    ssm = proxied(airlock, moto, "ssm")
    ssm.put_parameter(Name="/prod/db/password", Value=SECRET, Type="SecureString")
    lambda_ = proxied(airlock, moto, "lambda")
    # moto may refuse the function (its role and code are made up): the request is what counts.
    with contextlib.suppress(ClientError):
        lambda_.create_function(
            FunctionName="resize",
            Runtime="python3.12",
            Role="arn:aws:iam::123456789012:role/none",
            Handler="app.handler",
            Code={"ZipFile": b"PK-not-really-a-zip"},
            Environment={"Variables": {"DB_URL": f"postgres://app:{SECRET}@db/prod"}},
        )
    assert (
        moto.direct("ssm").get_parameter(Name="/prod/db/password", WithDecryption=True)["Parameter"]["Value"]
        == SECRET
    )
    shown = airlock.cli("log", "--json").stdout
    entries = [json.loads(line) for line in shown.splitlines()]
    put = next(e for e in entries if e.get("operation") == "PutParameter")
    detail = airlock.cli("show", str(put["id"]), "--json").stdout
    assert '"Value":"[redacted]"' in detail.replace(" ", "").replace("\\", "")
    assert "/prod/db/password" in detail  # the parameter's name is not a secret
    created = next(e for e in entries if e.get("operation") == "CreateFunction")
    assert REDACTED in airlock.cli("show", str(created["id"]), "--json").stdout
    everything = airlock.cli("export", check=False).stdout + shown + detail
    assert SECRET not in everything
    assert SECRET not in (airlock.data / "log" / "data.mdb").read_bytes().decode("latin-1")


@pytest.mark.parametrize(
    ("body", "content_type", "kept"),
    [
        (b'{"Name":"/a","Value":"S3CR3T","Type":"SecureString"}', "application/x-amz-json-1.1", "/a"),
        (b'{"Environment":{"Variables":{"A":"S3CR3T"}},"FunctionName":"f"}', "application/json", '"f"'),
        (b"Action=PutParameter&Name=%2Fa&Value=S3CR3T", "application/x-www-form-urlencoded", "Name=%2Fa"),
        (
            b"<Parameter><Name>/a</Name><Value>S3CR3T</Value></Parameter>",
            "application/xml",
            "<Name>/a</Name>",
        ),
        (b'{"Name":"/a","Value":"S3CR3T', "application/x-amz-json-1.1", '"Name":"/a"'),  # cut short
    ],
    ids=["json", "nested", "form", "xml", "cut"],
)
def test_named_fields_are_redacted_in_every_body(body: bytes, content_type: str, kept: str) -> None:
    out = named(body, frozenset({"Value", "Variables"}), content_type).decode()
    assert "S3CR3T" not in out and REDACTED in out and kept in out


def test_a_body_past_the_limit_keeps_no_named_secret() -> None:
    body = json.dumps({"Name": "/a", "Description": "x" * 200, "Value": SECRET + "y" * 400}).encode()
    excerpt = body_excerpt(body, BodyPolicy(limit=240), secret_fields=frozenset({"Value"}))
    assert excerpt["truncated"] and excerpt["redacted"]
    assert "correct-horse" not in json.dumps(excerpt)
    whole = body_excerpt(body, BodyPolicy(), secret_fields=frozenset({"Value"}))
    assert whole["redacted"] and SECRET not in whole["text"]


def test_a_secret_member_in_a_query_string_is_not_logged() -> None:
    """A query protocol's call may come as a GET with its members in the URL: STS's
    `SAMLAssertion` is marked sensitive, though its name says nothing of secrets."""
    action = Action(
        "GET",
        "https",
        "sts.amazonaws.com",
        443,
        "/",
        Effect.WRITE,
        query=f"Action=AssumeRoleWithSAML&SAMLAssertion={SECRET}&RoleArn=arn%3Aaws%3Aiam%3A%3A1%3Arole%2Fr",
        secret_fields=frozenset({"SAMLAssertion"}),
    )
    described = describe(action, redactor=Redactor(), bodies=BodyPolicy())
    assert SECRET not in json.dumps(described)
    assert "SAMLAssertion=[redacted]" in described["url"] and "RoleArn=" in described["url"]

"""A held AWS call can be approved and then runs once. Every attempt of an AWS call is signed
afresh (a new signature each second, a new SDK invocation id), so what makes a retry the same
request as a held one must not be its signature: boto3's own retries join the held action, and
the call sent again after the approval runs it, once, against a real moto server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from rules import Action, Effect, signed_stably
from rules.repeats import fingerprint
from tests.support import Airlock
from tests.support.moto import Moto, moto_server, proxied

RULES = """\
version: 1
egress:
  allow: [127.0.0.1]
aws:
  endpoints: ["127.0.0.1"]
hold: {wait: 0s}
rules:
  - id: object-deletes-wait
    match: {operation: "s3:DeleteObject"}
    action: hold
    message: deleting an object waits for a person's vote
"""


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    with moto_server(tmp_path_factory.mktemp("moto")) as m:
        yield m


def test_an_approved_delete_runs_once_when_sent_again(
    make_airlock: Callable[..., Airlock], moto: Moto
) -> None:
    moto.direct("s3").create_bucket(Bucket="scratch")
    moto.direct("s3").put_object(Bucket="scratch", Key="old.csv", Body=b"x")
    airlock = make_airlock(RULES)
    s3 = proxied(airlock, moto, "s3")
    with pytest.raises(ClientError) as held:
        s3.delete_object(Bucket="scratch", Key="old.csv")
    assert held.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert "waits for a person's vote" in held.value.response["Error"]["Message"]
    [action] = [e for e in airlock.log() if e.get("operation") == "DeleteObject"]
    assert action["state"] == "held"
    airlock.cli("approve", str(action["id"]), "--voter", "alice")
    s3.delete_object(Bucket="scratch", Key="old.csv")  # signed anew: it joins the approved action
    deletes = [e for e in airlock.log() if e.get("operation") == "DeleteObject"]
    assert [(e["id"], e["state"]) for e in deletes] == [(action["id"], "committed")]
    assert moto.direct("s3").list_objects_v2(Bucket="scratch").get("KeyCount") == 0


def _action(query: str = "", authorization: str | None = None) -> Action:
    headers = {"authorization": authorization} if authorization else {}
    return Action(
        "DELETE", "https", "b.s3.amazonaws.com", 443, "/k", Effect.DESTRUCTIVE, query=query, headers=headers
    )


def test_a_presigned_url_signed_again_is_the_same_request(tmp_path: Path) -> None:
    first = (
        "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKID%2F20261130%2Fus-east-1%2Fs3%2Faws4_request"
    )
    first += "&X-Amz-Date=20261130T101500Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature=aa11"
    again = first.replace("20261130T101500Z", "20261201T000001Z").replace("20261130%2F", "20261201%2F")
    again = again.replace("aa11", "bb22")
    other_key = first.replace("AKID", "OTHERKEY")
    assert fingerprint(_action(first)) == fingerprint(_action(again))
    assert fingerprint(_action(first)) != fingerprint(_action(other_key))
    v2 = "AWSAccessKeyId=AKID&Signature=abc%3D&Expires=1796017578"
    assert fingerprint(_action(v2)) == fingerprint(_action(v2.replace("abc", "xyz").replace("578", "999")))


def test_a_signature_counts_by_who_signed_not_by_its_bytes() -> None:
    header = (
        "AWS4-HMAC-SHA256 Credential=AKID/20261130/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-date, "
    )
    one, two = header + "Signature=aa11", header.replace("20261130", "20261201") + "Signature=bb22"
    assert signed_stably(one) == signed_stably(two)
    assert signed_stably(one) != signed_stably(one.replace("AKID", "OTHERKEY"))
    assert signed_stably("AWS AKID:sig1") == signed_stably("AWS AKID:sig2") != signed_stably("AWS OTHER:sig1")
    assert signed_stably("Bearer abc") == "Bearer abc"

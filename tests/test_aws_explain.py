"""`airlock rules explain` on AWS calls: given a request as an SDK sends it (signed by botocore in
the test: a signed header, or a presigned URL), it prints what the call was read as (service,
operation, targets) and how the rules decide it, with no credential in what it prints."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import botocore.session
from botocore.awsrequest import AWSPreparedRequest, AWSResponse

from tests.support import AIRLOCK
from tests.support.standin import RawBody

RULES = """\
version: 1
egress:
  allow: ["*.amazonaws.com"]
rules:
  - id: no-prod-object-deletes
    match: {operation: ["s3:DeleteObject", "s3:DeleteObjects"], target: "prod-*/*"}
    action: deny
    message: objects in production buckets are not deleted by agents
"""
SECRET = "explain-test-secret-key"


def _signed_delete() -> AWSPreparedRequest:
    """botocore's own DeleteObject request, caught before it leaves (AWS is not reachable here)."""
    session = botocore.session.get_session()
    session.set_credentials("AKIAIOSFODNN7EXAMPLE", SECRET, "session-token-value")
    client = session.create_client("s3", region_name="eu-west-1")
    caught: list[AWSPreparedRequest] = []

    def catch(request: AWSPreparedRequest, **_: object) -> AWSResponse:
        caught.append(request)
        return AWSResponse(request.url, 204, {}, RawBody())

    client.meta.events.register("before-send", catch)
    client.delete_object(Bucket="prod-users", Key="exports/all.csv")
    return caught[0]


def _explain(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    return subprocess.run(
        [AIRLOCK, "rules", "explain", "--rules", str(rules), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _header_args(request: AWSPreparedRequest) -> list[str]:
    args = []
    for name, value in request.headers.items():
        text = value.decode() if isinstance(value, bytes) else value
        args += ["--header", f"{name}: {text}"]
    return args


def test_a_signed_delete_is_explained_as_the_operation_it_is(tmp_path: Path) -> None:
    request = _signed_delete()
    shown = _explain(tmp_path, "--method", request.method, "--url", request.url, *_header_args(request))
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[1] == "call: aws s3 DeleteObject prod-users/exports/all.csv"
    assert "decision: deny by no-prod-object-deletes: refused" in lines
    assert SECRET not in shown.stdout and "session-token-value" not in shown.stdout
    as_json = _explain(
        tmp_path, "--method", request.method, "--url", request.url, *_header_args(request), "--json"
    )
    action = json.loads(as_json.stdout)["action"]
    assert (action["protocol"], action["service"], action["operation"], action["region"]) == (
        "aws",
        "s3",
        "DeleteObject",
        "eu-west-1",
    )
    assert action["targets"] == ["prod-users/exports/all.csv"]
    assert action["effect"] == "destructive"


def test_a_presigned_url_is_explained_and_its_signature_not_shown(tmp_path: Path) -> None:
    session = botocore.session.get_session()
    session.set_credentials("AKIAIOSFODNN7EXAMPLE", SECRET)
    client = session.create_client("s3", region_name="eu-west-1")
    url = client.generate_presigned_url("delete_object", Params={"Bucket": "prod-users", "Key": "a.csv"})
    signature = url.rpartition("Signature=")[2]
    shown = _explain(tmp_path, "--method", "DELETE", "--url", url, "--json")
    assert shown.returncode == 0, shown.stderr
    read = json.loads(shown.stdout)
    assert (read["action"]["operation"], read["action"]["targets"]) == ("DeleteObject", ["prod-users/a.csv"])
    assert read["decision"]["rule"] == "no-prod-object-deletes"
    assert signature not in shown.stdout

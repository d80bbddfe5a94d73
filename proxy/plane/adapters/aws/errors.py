"""Refusals as AWS's APIs say no: the error shape each protocol's SDKs parse, so that boto3, the
aws CLI and every other SDK print Airlock's message and rule instead of a bare status code.

rest-xml (S3: `<Error><Code>`; others wrapped in `<ErrorResponse>`), json and rest-json
(`__type` and `message`, with `x-amzn-ErrorType`), query (`<ErrorResponse><Error>`) and ec2
(`<Response><Errors><Error>`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from xml.sax.saxutils import escape

# The code each protocol family uses for a status: S3 and the XML protocols, the JSON ones, EC2.
_CODES: dict[int, tuple[str, str, str]] = {
    400: ("InvalidRequest", "ValidationException", "InvalidParameterValue"),
    403: ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation"),
    409: ("OperationAborted", "ConflictException", "IncorrectState"),
    429: ("SlowDown", "ThrottlingException", "RequestLimitExceeded"),
    500: ("InternalError", "InternalServerError", "InternalError"),
    503: ("ServiceUnavailable", "ServiceUnavailableException", "Unavailable"),
}


@dataclass(frozen=True)
class AwsError:
    """A refusal's body and content type in one AWS protocol."""

    body: bytes
    content_type: str
    headers: dict[str, str]


def code_for(protocol: str, status: int) -> str:
    """The error code an SDK of `protocol` reads for a refusal with this status."""
    xml, js, ec2 = _CODES.get(status, _CODES[403] if status < 500 else _CODES[500])
    if protocol in ("json", "rest-json"):
        return js
    return ec2 if protocol == "ec2" else xml


def aws_error(protocol: str, service: str | None, status: int, message: str, request_id: str) -> AwsError:
    """The error body a client of `protocol` parses, with `message` as its message."""
    code = code_for(protocol, status)
    if protocol in ("json", "rest-json"):
        body = json.dumps({"__type": code, "message": message, "Message": message}).encode()
        content_type = "application/x-amz-json-1.0" if protocol == "json" else "application/json"
        return AwsError(body, content_type, {"x-amzn-ErrorType": code, "x-amzn-RequestId": request_id})
    m, i = escape(message), escape(request_id)
    error = f"<Code>{code}</Code><Message>{m}</Message>"
    if protocol == "ec2":
        text = f"<Response><Errors><Error>{error}</Error></Errors><RequestID>{i}</RequestID></Response>"
    elif service == "s3" and protocol == "rest-xml":
        text = f"<Error>{error}<RequestId>{i}</RequestId></Error>"
    else:  # the query protocols, and the other rest-xml services (Route 53, CloudFront)
        text = f"<ErrorResponse><Error><Type>Sender</Type>{error}</Error><RequestId>{i}</RequestId>"
        text += "</ErrorResponse>"
    body = f'<?xml version="1.0" encoding="UTF-8"?>\n{text}\n'.encode()
    return AwsError(body, "application/xml", {"x-amz-request-id": request_id})

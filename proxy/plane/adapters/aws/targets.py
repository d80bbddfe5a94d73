"""The resources one reading of an AWS request touches, as far as the request says: the labels of
its URI (`bucket/key`, a function name), the resource-naming members of its input in the JSON
body or the query and form fields, and for batches every item (S3 DeleteObjects' keys,
DynamoDB BatchWriteItem's tables and items, EC2's `InstanceId.N`)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from .models import Member
from .operations import Call


class Unreadable(ValueError):
    """A batch's list of resources cannot be read: the message says why."""


@dataclass(frozen=True)
class Touched:
    """The targets of a reading and, for a batch, how many items it touches."""

    targets: tuple[str, ...]
    count: int | None = None


_NUMBERED = re.compile(r"^(.+?)(?:\.member)?\.\d+$")  # InstanceId.1, AttributeNames.member.2


def from_labels(call: Call) -> list[str]:
    """The URI's labels joined (`bucket/key`, `function/alias`): one target."""
    values = [v for v in call.labels.values() if v]
    return ["/".join(values)] if values else []


def from_fields(members: Iterable[Member], fields: dict[str, list[str]]) -> Touched:
    """Targets from query or form fields: `QueueUrl=...`, `InstanceId.1=...&InstanceId.2=...`."""
    by_wire = {m.wire.lower(): m for m in members if m.location in (None, "querystring")}
    by_wire.update({m.name.lower(): m for m in members if m.location in (None, "querystring")})
    targets: list[str] = []
    listed = 0
    for name, values in fields.items():
        m = _NUMBERED.match(name)
        base = m.group(1) if m else name
        member = by_wire.get(base.lower())
        if member is None:
            continue
        targets += values
        listed += len(values) if member.listed else 0
    return Touched(tuple(dict.fromkeys(targets)), listed or None)


def from_documents(members: Iterable[Member], documents: Iterable[Any]) -> Touched:
    """Targets from the JSON body, under every reading of it (first- and last-wins of repeated
    keys): top-level members, DynamoDB's `RequestItems` tables and `TransactItems`."""
    targets: list[str] = []
    count = 0
    for doc in documents:
        if not isinstance(doc, dict):
            continue
        for member in members:
            value = doc.get(member.wire, doc.get(member.name))
            if isinstance(value, str):
                targets.append(value)
            elif isinstance(value, list):
                strings = [v for v in value if isinstance(v, str)]
                targets += strings
                count = max(count, len(strings))
        items = doc.get("RequestItems")
        if isinstance(items, dict):  # BatchWriteItem, BatchGetItem
            targets += [str(t) for t in items]
            count = max(count, sum(_size(v) for v in items.values()))
        transact = doc.get("TransactItems")
        if isinstance(transact, list):  # TransactWriteItems, TransactGetItems
            for item in transact:
                for part in item.values() if isinstance(item, dict) else ():
                    if isinstance(part, dict) and isinstance(part.get("TableName"), str):
                        targets.append(part["TableName"])
            count = max(count, len(transact))
    return Touched(tuple(dict.fromkeys(targets)), count or None)


def _size(value: Any) -> int:
    if isinstance(value, list):
        return len(value)
    if isinstance(value, dict) and isinstance(value.get("Keys"), list):
        return len(value["Keys"])
    return 1


def deleted_keys(bucket: str, body: bytes | None) -> Touched:
    """S3 DeleteObjects: `bucket/key` for each `<Object><Key>` of its XML body."""
    if not body:
        raise Unreadable("its list of objects to delete is empty or missing")
    if b"<!DOCTYPE" in body.upper() or b"<!ENTITY" in body.upper():
        raise Unreadable("its list of objects to delete declares a DOCTYPE or entities")
    try:
        root = ET.fromstring(body)
    except ET.ParseError as e:
        raise Unreadable(f"its list of objects to delete is not XML that can be read: {e}") from e
    keys = [
        key.text or ""
        for obj in root
        if _local(obj.tag) == "Object"
        for key in obj
        if _local(key.tag) == "Key"
    ]
    if _local(root.tag) != "Delete" or not keys:
        raise Unreadable("its list of objects to delete names no <Object><Key>")
    return Touched(tuple(dict.fromkeys(f"{bucket}/{k}" for k in keys)), len(keys))


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def copy_source(header: str | None) -> list[str]:
    """S3 CopyObject and UploadPartCopy read `x-amz-copy-source: /bucket/key?versionId=...`."""
    if not header:
        return []
    source = unquote(header.partition("?")[0]).lstrip("/")
    return [source] if source else []

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
    destroys: bool = False  # a batch or statement deletes something (a DeleteRequest, DELETE FROM)


_NUMBERED = re.compile(r"^(.+?)(?:\.member)?\.\d+$")  # InstanceId.1, AttributeNames.member.2
# PartiQL names its table after FROM, INTO or UPDATE, quoted or not; DELETE deletes.
_PARTIQL_TABLE = re.compile(
    r"""\b(?:from|into|update)\s+(?:"((?:[^"]|"")+)"|'([^']+)'|([A-Za-z0-9_.-]+))""", re.I
)
_PARTIQL_DELETE = re.compile(r"^\W*delete\b", re.I)


def named(targets: Iterable[str]) -> tuple[str, ...]:
    """The targets, and for each ARN the name of the resource it ends in (a table, a function)
    too, so that a rule on names matches a resource named either way."""
    out: list[str] = []
    for target in targets:
        out.append(target)
        if target.startswith("arn:") and target.count(":") >= 5:
            resource = target.split(":", 5)[5]
            _, sep, rest = resource.partition("/") if "/" in resource else resource.partition(":")
            if sep and rest:
                out.append(rest.split("/")[0].split(":")[0])
    return tuple(dict.fromkeys(out))


def statements(doc: dict[str, Any]) -> list[str]:
    """The PartiQL statements of ExecuteStatement, BatchExecuteStatement and ExecuteTransaction."""
    found = [doc["Statement"]] if isinstance(doc.get("Statement"), str) else []
    for key in ("Statements", "TransactStatements"):
        items = doc.get(key)
        for item in items if isinstance(items, list) else ():
            if isinstance(item, dict) and isinstance(item.get("Statement"), str):
                found.append(item["Statement"])
    return found


def partiql(statement: str) -> tuple[list[str], bool]:
    """The tables a PartiQL statement names, and whether it deletes."""
    tables = [next(g for g in m.groups() if g).replace('""', '"') for m in _PARTIQL_TABLE.finditer(statement)]
    return tables, bool(_PARTIQL_DELETE.match(statement))


def from_labels(call: Call) -> list[str]:
    """The URI's labels joined (`bucket/key`, `function/alias`): one target, and a label that is
    an ARN by the name it ends in too."""
    values = [v for v in call.labels.values() if v]
    return list(named(["/".join(values)])) if values else []


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
    return Touched(named(targets), listed or None)


def from_documents(members: Iterable[Member], documents: Iterable[Any]) -> Touched:
    """Targets from the JSON body, under every reading of it (first- and last-wins of repeated
    keys): top-level members, DynamoDB's `RequestItems` tables and `TransactItems`."""
    targets: list[str] = []
    count = 0
    destroys = False
    for doc in documents:
        if not isinstance(doc, dict):
            continue
        said = statements(doc)
        for statement in said:
            tables, deletes = partiql(statement)
            targets += tables
            destroys = destroys or deletes
        count = max(count, len(said) if len(said) > 1 else 0)
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
            destroys = destroys or any(
                isinstance(r, dict) and "DeleteRequest" in r
                for v in items.values()
                for r in (v if isinstance(v, list) else ())
            )
        transact = doc.get("TransactItems")
        if isinstance(transact, list):  # TransactWriteItems, TransactGetItems
            for item in transact:
                for kind, part in item.items() if isinstance(item, dict) else ():
                    if isinstance(part, dict) and isinstance(part.get("TableName"), str):
                        targets.append(part["TableName"])
                    destroys = destroys or kind == "Delete"
            count = max(count, len(transact))
    return Touched(named(targets), count or None, destroys)


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

"""Sending checkpoints off the host (`--checkpoint-to URL|FILE`), and reading them back.

Each checkpoint, once durable, becomes one JSON object: its seq, its own hash, the hash before
it, its time, the public key and the signature. To a FILE it is appended as one line and synced
before the next checkpoint is written; to an http(s) URL it is POSTed by a thread of its own,
retried until the receiver takes it, so a slow or absent receiver never holds up the log. A
copy kept where the agent's host cannot rewrite it makes cutting the log short or rolling it
back to an older copy evident: `airlock verify --checkpoints FILE`.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from proxy.ops.config import ConfigError, parse_http_url
from store import SIGNATURE, Entry, PublicKey, public_text, signature_ok, signed_payload

logger = logging.getLogger(__name__)

PENDING_MAX = 10_000  # checkpoints a URL anchor keeps while its receiver is away; then the oldest go
RETRY_FIRST, RETRY_MAX = 0.5, 60.0  # seconds between attempts, doubling


def line_of(entry: Entry) -> dict[str, Any]:
    """What is sent for a checkpoint entry."""
    return {
        "seq": entry.seq,
        "hash": entry.hash,
        "prev": entry.prev,
        "ts": entry.ts,
        "key": entry.data.get("key"),
        "signature": entry.data.get(SIGNATURE),
    }


class Anchor(Protocol):
    """Somewhere checkpoints are kept off the host."""

    def send(self, entry: Entry) -> None:
        """Keep one checkpoint entry (never raises: a failure is logged and counted)."""

    def close(self) -> None:
        """Stop, after a last try to deliver what is pending."""


def anchor_for(target: str, failed: Callable[[], None]) -> Anchor:
    """The anchor `--checkpoint-to` names: an http(s) URL, else a file; `failed` is called once
    for each delivery that fails."""
    if target.startswith(("http://", "https://")):
        return UrlAnchor(target, failed)
    return FileAnchor(Path(target), failed)


class FileAnchor:
    """Appends each checkpoint as one JSON line to a file and syncs it."""

    def __init__(self, path: Path, failed: Callable[[], None]):
        self.path = path
        self._failed = failed

    def send(self, entry: Entry) -> None:
        """Append and sync the checkpoint's line."""
        data = json.dumps(line_of(entry), sort_keys=True).encode() + b"\n"
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            self._failed()
            logger.error(
                "airlock: checkpoint %d was not written to %s: %s; fix the path given to --checkpoint-to",
                entry.seq,
                self.path,
                e.strerror or e,
            )

    def close(self) -> None:
        """Nothing is pending: every line is synced as it is written."""


class UrlAnchor:
    """POSTs each checkpoint as JSON to a URL from a thread of its own, retrying until a 2xx."""

    def __init__(self, url: str, failed: Callable[[], None], timeout: float = 10.0):
        self.url = url
        self._failed = failed
        self._timeout = timeout
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="airlock-checkpoint-sender", daemon=True)
        self._thread.start()

    def send(self, entry: Entry) -> None:
        """Queue the checkpoint; the sender thread delivers it."""
        if self._queue.qsize() >= PENDING_MAX:
            dropped = self._queue.get_nowait()
            if dropped is not None:
                logger.error(
                    "airlock: checkpoint %s was never delivered to %s: too many pending",
                    dropped["seq"],
                    self.url,
                )
        self._queue.put(line_of(entry))

    def close(self) -> None:
        """Stop the sender: what it cannot deliver in one more try is logged as not sent."""
        self._stopping.set()
        self._queue.put(None)
        self._thread.join(self._timeout + 5)

    def _run(self) -> None:
        while True:
            line = self._queue.get()
            if line is None:
                return
            wait = RETRY_FIRST
            while not self._post(line):
                self._failed()
                if self._stopping.wait(wait):
                    logger.error(
                        "airlock: checkpoint %d was not delivered to %s before stopping",
                        line["seq"],
                        self.url,
                    )
                    break
                wait = min(wait * 2, RETRY_MAX)

    def _post(self, line: dict[str, Any]) -> bool:
        request = urllib.request.Request(
            self.url,
            data=json.dumps(line, sort_keys=True).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as answer:
                return bool(200 <= answer.status < 300)
        except (urllib.error.URLError, OSError, ValueError) as e:
            logger.warning(
                "airlock: checkpoint %d not delivered to %s (%s); retrying", line["seq"], self.url, e
            )
            return False


@dataclass(frozen=True)
class Anchored:
    """One checkpoint as an anchor file keeps it."""

    line: int
    seq: int
    hash: str
    prev: str
    key: str
    signature: str

    def signed_by(self, key: PublicKey) -> bool:
        """True when `key` signed this checkpoint (over its seq, prev and key)."""
        payload = signed_payload(self.seq, self.prev, "checkpoint", {"key": self.key})
        return self.key == public_text(key) and signature_ok(key, payload, self.signature)


class AnchorFileError(ValueError):
    """An anchor file cannot be read; the message names the file, the line and what to do."""


def read_anchored(path: Path) -> list[Anchored]:
    """The checkpoints a `--checkpoint-to` file holds, oldest first; AnchorFileError naming the
    first line that is not one."""
    try:
        text = path.read_text()
    except OSError as e:
        raise AnchorFileError(f"{path}: cannot read it: {e.strerror or e}") from None
    found = []
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            fields = json.loads(raw)
            found.append(
                Anchored(
                    number,
                    _typed(fields, "seq", int),
                    _typed(fields, "hash", str),
                    _typed(fields, "prev", str),
                    _typed(fields, "key", str),
                    _typed(fields, "signature", str),
                )
            )
        except (ValueError, TypeError) as e:
            raise AnchorFileError(
                f"{path}:{number}: not a checkpoint line ({e}): give the file --checkpoint-to wrote"
            ) from None
    if not found:
        raise AnchorFileError(f"{path}: it holds no checkpoint: give the file --checkpoint-to wrote")
    return found


def _typed(fields: Any, name: str, kind: type) -> Any:
    value = fields.get(name) if isinstance(fields, dict) else None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"its {name} is missing or not a {kind.__name__}")
    return value


def parse_target(text: str) -> str:
    """What `--checkpoint-to` names: an http(s) URL with a host, or a file in a directory that
    exists."""
    if "://" in text:
        return parse_http_url(text)
    path = Path(text)
    if not text or path.is_dir():
        raise ConfigError(f"{text!r} is not a URL or a file: give http(s)://HOST/PATH or a file to append to")
    if not path.parent.is_dir():
        raise ConfigError(f"{text!r}: the directory {path.parent} does not exist; create it or pick another")
    return text

"""Rechecking in-doubt actions by asking the upstream, when their rule named a verify read.

On start, every in-doubt action whose intent carries a verify read (see `dedup.verify` in the
rules) gets that read, after its delay: a status the rule counts as executed resolves the
action as executed (its key is spent), one it counts as not executed resolves it as not
executed (its key is free for a retry), and anything else, or no answer, is logged as
inconclusive and leaves the action for an operator. Every read is logged with what it found.
A read goes only to its action's own origin and exactly to the URL stored with the intent; one
that was refused when it was made, or that would go elsewhere, is not sent and is logged as
inconclusive with the reason.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from rules import StatusSet, origin
from store import Log, Record, State, StoreError

from . import envheaders, records

logger = logging.getLogger(__name__)

TIMEOUT = 30.0
BY = "verify"


def in_doubt_reads(log: Log) -> list[tuple[int, dict[str, Any]]]:
    """In-doubt actions that have a verify read, with the read."""
    found = []
    for index in log.actions(State.IN_DOUBT):
        first = log.entry(index["entries"][0])
        read = first.data.get("verify") if first is not None else None
        if read:
            found.append((index["id"], read))
    return found


def _headers(read: dict[str, Any]) -> dict[str, str]:
    return envheaders.resolved(read.get("headers", {}), "the verify read")


def refusal(read: dict[str, Any]) -> str | None:
    """Why a stored read must not be sent (None: it may): it was refused when its action was
    logged, or its URL is not on the action's own origin (scheme, host and port)."""
    if read.get("refused"):
        return str(read["refused"])
    url, own = read.get("url"), read.get("origin")
    if not url or not own:
        return "the read names no URL or no origin to keep it to"
    there = origin(url)
    if there is None or there != origin(own):
        return f"{url} is not on the action's origin {own}"
    return None


async def check(session: aiohttp.ClientSession, action_id: int, read: dict[str, Any]) -> Record:
    """Issue one verify read and say what it means for the action (a read that may not be sent
    is logged as inconclusive, naming why)."""
    method, url = read["method"], read.get("url")
    found: dict[str, Any] = {"method": method, "url": url}
    if (why := refusal(read)) is not None:
        found["error"] = f"not sent: {why}"
        return records.still_in_doubt(action_id, found=found)
    assert url is not None
    try:
        # Sent exactly as stored (encoded=True): no client-side re-quoting or dot-segment
        # resolution may change the path the read was made for.
        target = URL(url, encoded=True)
        async with session.request(method, target, headers=_headers(read), allow_redirects=False) as r:
            found["status"] = r.status
    except LookupError as e:
        found["error"] = str(e)
    except (aiohttp.ClientError, TimeoutError, ValueError) as e:
        found["error"] = f"{type(e).__name__}: {e}".rstrip(": ")
    status = found.get("status")
    if status is not None and status in StatusSet(read["executed"]):
        note = f"{method} {url} answered {status}: the action took effect"
        return records.resolution(action_id, executed=True, note=note, by=BY, found=found)
    if status is not None and status in StatusSet(read["not_executed"]):
        note = f"{method} {url} answered {status}: the action did not take effect"
        return records.resolution(action_id, executed=False, note=note, by=BY, found=found)
    return records.still_in_doubt(action_id, found=found)


async def recheck_in_doubt(log: Log, *, cafile: Path | None = None) -> int:
    """Issue the verify reads of every in-doubt action that has one; return how many were resolved."""
    reads = in_doubt_reads(log)
    if not reads:
        return 0
    # Let requests the stopped proxy had sent reach the upstream before asking about them.
    await asyncio.sleep(max(float(read.get("delay", 0)) for _, read in reads))
    context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    resolved = 0
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(ssl=context)) as session:
        for action_id, read in reads:
            try:
                record = await check(session, action_id, read)
            except Exception as e:  # one malformed stored read must not keep the others in doubt
                found = {"error": f"the stored read could not be made: {type(e).__name__}: {e}"}
                record = records.still_in_doubt(action_id, found=found)
            try:
                await log.append(record)
            except StoreError as e:
                logger.info("verify of action %d not recorded: %s", action_id, e)
                continue
            if record.kind == "resolution":
                resolved += 1
            logger.warning("airlock: in-doubt action %d: %s", action_id, record.data.get("note"))
    return resolved

"""Actions orphaned by dead writers, and the liveness locks that tell the dead from the living.

Every writer holds an exclusive lock on `writers/<id>.lock` in the data dir while it runs. An
action left pending by a writer whose lock nobody holds will never get its outcome from that
writer: the next writer to start records it as in doubt.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

from .append import Appender
from .errors import StoreError
from .liveness import alive
from .record import ActionRef, Record
from .states import State
from .stored import as_bytes, index_record
from .view import View

logger = logging.getLogger(__name__)

# The log's files are readable by airlock's user only: they hold requests and stored replies.
DIR_MODE = 0o700
# An intent's summary field: true when the action changes nothing upstream (a model call), so
# that a writer which stopped before its outcome leaves it failed rather than in doubt.
INERT = "inert"
FILE_MODE = 0o600


class WriterLock:
    """Writer `writer_id`'s liveness lock under `path`/writers, held while the writer runs."""

    def __init__(self, path: Path, writer_id: str):
        self.file = path / "writers" / f"{writer_id}.lock"
        self._fd: int | None = None

    def take(self) -> None:
        """Create the lock file and hold it."""
        # Locked before it has its name, so a recoverer that finds the file finds it locked.
        making = self.file.with_name(f".{self.file.name}")
        self._fd = os.open(making, os.O_CREAT | os.O_RDWR, FILE_MODE)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        os.rename(making, self.file)

    def release(self) -> None:
        """Let go of the lock and remove its file."""
        if self._fd is not None:
            os.close(self._fd)
            self.file.unlink(missing_ok=True)
            self._fd = None


def recover(appender: Appender) -> None:
    """Mark actions left pending by writers that died (no lock held) as in doubt, or failed
    when their intent says they are inert (they change nothing upstream: a model call).

    The scan and the writes share one write transaction, so several processes starting
    at once on one data dir each see the others' recoveries and none moves an action twice.
    """
    living: dict[str, bool] = {}
    dead: set[str] = set()

    def orphans(view: View) -> list[Record]:
        found: list[Record] = []
        prefix = State.PENDING.encode() + b"\0"
        cur = view.txn.cursor(db=view.dbs[b"states"])
        if not cur.set_range(prefix):
            return found
        for raw_key in cur.iternext(values=False):
            key = as_bytes(raw_key)
            if not key.startswith(prefix):
                break
            action_id = int.from_bytes(key[len(prefix) :], "big")
            raw = view.txn.get(key[len(prefix) :], db=view.dbs[b"actions"])
            if raw is None:
                continue
            index = index_record(action_id, as_bytes(raw))
            writer = index["writer"]
            if index["state"] != State.PENDING or writer == appender.writer_id:
                continue
            if writer not in living:
                living[writer] = alive(appender.path, writer)
            if living[writer]:
                continue
            dead.add(writer)
            reason = "its writer stopped before recording an outcome"
            if index.get(INERT):
                # It changed nothing upstream (a model call): nothing is in doubt; it failed.
                state, reason = State.FAILED, f"{reason}; it changes nothing upstream, so it is not in doubt"
            else:
                state = State.IN_DOUBT
            found.append(
                Record(
                    kind="recovery",
                    action=ActionRef(action_id),
                    state=state,
                    if_state=State.PENDING,
                    data={"reason": reason, "writer": writer},
                )
            )
        return found

    results = appender.commit(orphans)
    bad = [r for r in results if isinstance(r, StoreError)]
    if bad:
        raise bad[0]
    if results:
        logger.warning("%d action(s) left pending by a stopped writer are now in_doubt", len(results))
    for writer in dead:
        (appender.path / "writers" / f"{writer}.lock").unlink(missing_ok=True)

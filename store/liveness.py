"""Which writers are alive: every writer holds an exclusive lock on `writers/<id>.lock` in the
data dir while it runs (store/recovery.py), so a lock file nobody holds is a dead writer's."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


def alive(path: Path, writer: str) -> bool:
    """True while writer `writer` holds its lock under `path`/writers."""
    lock = path / "writers" / f"{writer}.lock"
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False

"""The data directory: where the log, the CA and the control token live, readable by
airlock's user only (the log holds requests and stored replies, the CA its private key)."""

from __future__ import annotations

import logging
import os
import secrets
import stat
import tempfile
from pathlib import Path

from store import KEY_FILE

logger = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600


class DataDirError(Exception):
    """The data directory cannot be used; the message says which and what to do."""


class DataDir:
    """Paths inside one data directory (default ./airlock-data, or $AIRLOCK_DATA)."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.log = self.root / "log"
        self.ca = self.root / "ca"
        self.token_file = self.root / "control.token"
        self.upstream_ca = self.root / "upstream-ca.pem"  # the CAs trusted for upstream TLS
        self.signing_key = self.root / KEY_FILE  # signs checkpoints and prunes (store/signing.py)

    def check(self) -> None:
        """Raise DataDirError if the path, or a directory above it, is a file."""
        for path in (self.root, *self.root.parents):
            if path.exists() and not path.is_dir():
                what = "is a file" if path == self.root else f"is under {path}, which is a file"
                raise DataDirError(
                    f"data dir {self.root} {what}; --data needs a directory (created if missing): "
                    "pick another path"
                )

    def prepare(self) -> None:
        """Create the directory if needed (mode 0700), tighten whatever in it others could
        read, and check that it is writable."""
        self.check()
        try:
            self.root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            loosened = restrict(
                self.root, [self.log, self.ca, self.token_file, self.upstream_ca, self.signing_key]
            )
            if loosened:
                logger.warning(
                    "data dir %s: %s could be read by other users; tightened to owner only "
                    "(directories 0700, files 0600)",
                    self.root,
                    ", ".join(loosened[:3]) + (f" and {len(loosened) - 3} more" if len(loosened) > 3 else ""),
                )
            # A probe of its own: several commands may prepare the same directory at once.
            fd, probe = tempfile.mkstemp(dir=self.root, prefix=".write-probe-")
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise DataDirError(
                f"data dir {self.root} is not writable ({e.strerror or e}): "
                "pick another with --data or fix its permissions"
            ) from e

    def control_token(self, given: Path | None = None) -> str:
        """The control API token: read from `given`, or the data dir's, created on first use
        with mode 0600."""
        if given is not None:
            try:
                token = given.read_text().strip()
            except OSError as e:
                raise DataDirError(f"--control-token {given}: cannot read it: {e.strerror or e}") from e
            if not token:
                raise DataDirError(f"--control-token {given}: the file is empty; put the token in it")
            return token
        try:
            return self.token_file.read_text().strip()
        except FileNotFoundError:
            pass
        token = secrets.token_urlsafe(32)
        fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        return token


def restrict(root: Path, parts: list[Path]) -> list[str]:
    """Make `root` and its `parts` (with everything under them) accessible to their owner only
    (directories 0700, files 0600); return what was looser (`path (mode)`, relative to
    `root`), to say so. Other
    files in `root` are not airlock's and are left alone, as are symbolic links and entries
    owned by another user, which this process cannot change."""
    loosened: list[str] = []
    found = [root]
    for part in parts:
        found += [part, *part.rglob("*")] if part.is_dir() else [part]
    for path in found:
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue  # removed meanwhile (a probe, a lock)
        if stat.S_ISLNK(st.st_mode) or st.st_uid != os.geteuid():
            continue
        want = DIR_MODE if stat.S_ISDIR(st.st_mode) else FILE_MODE
        if stat.S_IMODE(st.st_mode) & ~want:
            loosened.append(
                f"{path.relative_to(root) if path != root else '.'} ({stat.S_IMODE(st.st_mode):04o})"
            )
            path.chmod(want)
    return loosened


def keep_private(directory: Path) -> None:
    """Make `directory` and everything in it accessible to its owner only (see `restrict`)."""
    restrict(directory, list(directory.iterdir()))

"""The data directory: where the log, the CA and the control token live."""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path


class DataDirError(Exception):
    """The data directory cannot be used; the message says which and what to do."""


class DataDir:
    """Paths inside one data directory (default ./airlock-data, or $AIRLOCK_DATA)."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.log = self.root / "log"
        self.ca = self.root / "ca"
        self.token_file = self.root / "control.token"

    def prepare(self) -> None:
        """Create the directory if needed and check that it is writable."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
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

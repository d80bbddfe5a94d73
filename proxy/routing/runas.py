"""The user an isolated command runs as: never root, and never one who could change airlock.

Root keeps owning root's files without any capability, and a user who owns (or may write) the
data dir, a rule file, or the code airlock runs could rewrite the rules, read the log or put its
own code in airlock's place. Such users are refused, naming the file.
"""

from __future__ import annotations

import os
import pwd
import stat
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import rules
import store

DEFAULT_USER = "nobody"
NOBODY = 65534  # nobody's UID and GID where the passwd file has no entry for it


class RunAsError(ValueError):
    """The command may not run as that user; the message says why and names the file."""


@dataclass(frozen=True)
class Identity:
    """The user the isolated command runs as."""

    name: str
    uid: int
    gid: int
    home: str


def code_paths() -> list[Path]:
    """Airlock's own packages, checked file by file."""
    return [Path(p).parent for p in (__file__, rules.__file__, store.__file__)]


def import_paths() -> list[Path]:
    """The interpreter and the directories it imports from, checked themselves (whoever may
    write one could put a module or a `.pth` file there); walking them all would take seconds."""
    return [Path(sys.executable), *(Path(p) for p in sys.path if p and Path(p).is_dir())]


def identity(user: str | None) -> Identity:
    """`user` (a name or UID; `nobody` if None) as an Identity; root is refused."""
    given = user or DEFAULT_USER
    try:
        entry = pwd.getpwuid(int(given)) if given.isdigit() else pwd.getpwnam(given)
    except KeyError:
        if given.isdigit():
            found = Identity(given, int(given), int(given), "/tmp")
        elif given == DEFAULT_USER:
            found = Identity(given, NOBODY, NOBODY, "/tmp")
        else:
            raise RunAsError(f"--user {given}: no such user") from None
    else:
        home = entry.pw_dir if Path(entry.pw_dir).is_dir() else "/tmp"
        found = Identity(entry.pw_name, entry.pw_uid, entry.pw_gid, home)
    if found.uid == 0 or found.gid == 0:
        raise RunAsError(
            f"--user {given}: root owns airlock's files and the host's, capabilities or not; "
            f"run the command as an unprivileged user (the default is {DEFAULT_USER})"
        )
    return found


def _why_changeable(who: Identity, st: os.stat_result, *, holds: bool) -> str | None:
    """Why `who` could change a file with status `st` (for a directory that `holds` a path of
    airlock's: replace that path), or None."""
    if stat.S_ISSOCK(st.st_mode) or stat.S_ISLNK(st.st_mode):
        return None  # a socket's mode says who may connect; a link cannot be changed, only replaced
    if st.st_uid == who.uid:
        return f"uid {who.uid} owns it"
    if holds and st.st_mode & stat.S_ISVTX:
        return None  # sticky: only an entry's owner may rename or remove it
    if st.st_gid == who.gid and st.st_mode & stat.S_IWGRP:
        return f"its group {st.st_gid} may write it"
    if st.st_mode & stat.S_IWOTH:
        return "anyone may write it"
    return None


def _governing(path: Path, *, walk: bool) -> Iterator[tuple[Path, bool, str]]:
    """`path`, everything under it if `walk`, and the directory holding it (which could replace
    it), each with whether it holds the path and how it relates to the path."""
    real = Path(os.path.realpath(path))
    yield real.parent, True, f"which holds airlock's {path}"
    yield real, False, "one of airlock's paths"
    if walk and real.is_dir():
        for top, dirs, files in os.walk(real):
            for name in dirs + files:
                yield Path(top, name), False, f"inside airlock's {path}"


def check_out_of_reach(who: Identity, paths: Iterable[Path], shallow: Iterable[Path] = ()) -> None:
    """Refuse to run as `who` if it could change any of `paths` (or what they hold), or any of
    the directories `shallow` themselves."""
    checks = [(p, True) for p in paths] + [(p, False) for p in shallow]
    for path, walk in checks:
        for target, holds, relation in _governing(path, walk=walk):
            try:
                st = os.lstat(target)
            except FileNotFoundError:
                continue
            why = _why_changeable(who, st, holds=holds)
            if why is not None:
                raise RunAsError(
                    f"--user {who.name} could change {target} ({why}), {relation}: "
                    "run the command as another user, or fix that owner and mode"
                )

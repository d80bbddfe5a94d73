"""The way into `airlock exec --isolate`: what stands between the host and the isolated command.

`airlock exec --isolate` runs this file as root (`python -I confine.py ...`, stdlib only, so no
environment variable can change what it imports). It

- joins the network namespace made for the command, whose only way out is airlock;
- makes a mount namespace of its own in which /tmp, /var/tmp, /dev/shm and /run (and /var/run
  where it is not a link) are fresh and empty (no UNIX socket or file the host keeps there can
  be reached) and each of airlock's paths (data dir, rules, any other given) is covered by an
  empty read-only mount; /etc/resolv.conf names the DNS relay, and the CA certificate the
  command must trust is put in /run/airlock;
- makes PID and IPC namespaces, so the command sees and signals only its own processes, shares
  no System V or POSIX IPC with the host, and everything it starts ends when it ends;
- runs the command as an unprivileged user with no capabilities and no way to gain any
  (`setpriv`), in a session (no controlling terminal) and a session keyring of its own, with a
  fresh /proc and read-only /proc/sys and /sys.

Its exit code is the command's (128+N if signal N killed it), or 125 if the confinement could
not be made, after one line on stderr saying why.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

INSIDE = Path("/run/airlock")  # the command's view: what airlock gives it to read
CA_INSIDE = INSIDE / "ca.pem"
RESOLV_CONF = Path("/etc/resolv.conf")
NETNS_DIR = Path("/run/netns")
# Directories the host shares between processes (sockets, shared memory, scratch files): the
# command gets empty ones of its own, with the usual modes.
FRESH = (
    (Path("/tmp"), 0o1777),
    (Path("/var/tmp"), 0o1777),
    (Path("/dev/shm"), 0o1777),
    (Path("/run"), 0o755),
    (Path("/var/run"), 0o755),  # where it is not a link to /run
)
FAILED = 125  # like env(1) and container runtimes: the runner failed, not the command
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x20, 0x1000, 0x4000, 0x40000
SAFE = MS_NOSUID | MS_NODEV
PR_SET_PDEATHSIG = 1
KEYCTL_JOIN_SESSION_KEYRING = 1
SYS_KEYCTL = {"x86_64": 250, "aarch64": 219, "riscv64": 219, "ppc64le": 271, "s390x": 280}

_libc = ctypes.CDLL(None, use_errno=True)


class ConfineError(RuntimeError):
    """The command's confinement could not be made; the message says which step and why."""


@dataclass(frozen=True)
class Confinement:
    """Where and as whom the command runs, and what it must not see."""

    netns: str
    uid: int
    gid: int
    ca_cert: Path
    nameserver: str
    hide: tuple[Path, ...] = ()

    def command(self, cmd: Sequence[str]) -> list[str]:
        """The command line that runs `cmd` confined (as root; this file drops the rest)."""
        argv = [sys.executable, "-I", "-B", str(Path(__file__).resolve()), "--parent", str(os.getpid())]
        argv += ["--netns", self.netns]
        argv += ["--uid", str(self.uid), "--gid", str(self.gid), "--ca-cert", str(self.ca_cert)]
        argv += ["--nameserver", self.nameserver]
        for path in self.hide:
            argv += ["--hide", str(path)]
        return [*argv, "--", *cmd]

    @classmethod
    def parse(cls, argv: Sequence[str]) -> tuple[Confinement, list[str], int]:
        """The confinement, the command and the PID of airlock exec, from a command line made
        by `command`."""
        p = argparse.ArgumentParser(prog="airlock exec --isolate")
        p.add_argument("--parent", type=int, required=True)
        p.add_argument("--netns", required=True)
        p.add_argument("--uid", type=int, required=True)
        p.add_argument("--gid", type=int, required=True)
        p.add_argument("--ca-cert", type=Path, required=True)
        p.add_argument("--nameserver", required=True)
        p.add_argument("--hide", type=Path, action="append", default=[])
        p.add_argument("cmd", nargs=argparse.REMAINDER)
        a = p.parse_args(argv)
        cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
        return cls(a.netns, a.uid, a.gid, a.ca_cert, a.nameserver, tuple(a.hide)), cmd, a.parent


def _mount(source: str | None, target: Path, fstype: str | None, flags: int, data: str = "") -> None:
    done = _libc.mount(
        None if source is None else source.encode(),
        str(target).encode(),
        None if fstype is None else fstype.encode(),
        ctypes.c_ulong(flags),
        data.encode() or None,
    )
    if done != 0:
        errno = ctypes.get_errno()
        what = fstype or ("bind " + str(source) if flags & MS_BIND else "remount")
        raise ConfineError(f"cannot mount {what} on {target}: {os.strerror(errno)}")


def _read_only(target: Path, source: Path | None = None) -> None:
    """Bind `source` (or `target` itself) over `target`, read-only."""
    _mount(str(source or target), target, None, MS_BIND | MS_REC)
    _mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | SAFE | MS_NOEXEC)


def _die_with_parent(parent: int | None = None) -> None:
    # If airlock exec is killed, what it started must not outlive it (nor start, if the parent
    # is gone already).
    _libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if parent is not None and os.getppid() != parent:
        os._exit(FAILED)


def _is_fresh(path: Path, fresh: list[Path]) -> bool:
    return any(path == d or path.is_relative_to(d) for d in fresh)


def _hide(path: Path, blank: Path) -> None:
    """Cover `path` with an empty read-only mount: an empty directory, or an empty file."""
    if path.is_dir():
        _mount("tmpfs", path, "tmpfs", MS_RDONLY | SAFE | MS_NOEXEC, "mode=000,size=4k")
    else:
        _read_only(path, blank)


def _put_resolv_conf(text: str, fresh: list[Path]) -> None:
    """Make /etc/resolv.conf say `text`, wherever its symlinks lead."""
    real = Path(os.path.realpath(RESOLV_CONF))
    staged = INSIDE / "resolv.conf"
    staged.write_text(text)
    staged.chmod(0o644)
    if real.is_file():
        _read_only(real, staged)
    elif _is_fresh(real, fresh):  # a link into /run (systemd-resolved): make the file it names
        real.parent.mkdir(parents=True, exist_ok=True)
        real.write_text(text)
        real.chmod(0o644)
    else:
        raise ConfineError(f"{RESOLV_CONF} is missing: the command would have no nameserver")


def make_view(conf: Confinement, ca_pem: bytes) -> None:
    """In a new mount namespace: fresh shared directories, airlock's paths hidden, the CA
    certificate and resolv.conf in place, /sys read-only."""
    # Resolved before anything is covered: a path under a fresh directory is hidden already.
    hide = [Path(os.path.realpath(p)) for p in conf.hide]
    cwd = os.getcwd()
    _mount(None, Path("/"), None, MS_REC | MS_PRIVATE)  # nothing done here reaches the host
    fresh = []
    for directory, mode in FRESH:
        if directory.is_dir() and not directory.is_symlink():
            _mount("tmpfs", directory, "tmpfs", SAFE, f"mode={mode:o}")
            fresh.append(directory)
    if Path("/run") not in fresh:
        raise ConfineError("/run is not a directory: nowhere to give the command its CA certificate")
    INSIDE.mkdir(mode=0o755)
    CA_INSIDE.write_bytes(ca_pem)
    CA_INSIDE.chmod(0o644)
    blank = INSIDE / ".hidden"
    blank.touch(mode=0o000)
    for path in hide:
        if path.exists() and not _is_fresh(path, fresh):
            _hide(path, blank)
    _put_resolv_conf(f"nameserver {conf.nameserver}\n", fresh)
    # sysfs of the command's own network namespace, read-only.
    _mount("sysfs", Path("/sys"), "sysfs", MS_RDONLY | SAFE | MS_NOEXEC)
    if Path("/dev/mqueue").is_dir():
        _mount("mqueue", Path("/dev/mqueue"), "mqueue", SAFE | MS_NOEXEC)
    # A working directory keeps the directory it was opened on, under any mount made since: go
    # there again through the new view, so a command started in a hidden path sees it hidden.
    try:
        os.chdir(cwd)
    except OSError:
        os.chdir("/")


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


class Relay:
    """Passes the signals that stop a command on to one child process. Callers keep those
    signals blocked until the relay has a child, so none is lost or passed on twice."""

    def __init__(self) -> None:
        self.child: int | None = None
        for sig in FORWARDED:
            signal.signal(sig, self._pass)

    def _pass(self, sig: int, _frame: object) -> None:
        if self.child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.child, sig)

    def fork(self) -> int:
        """fork(). The parent passes signals to the child from now on; the child starts with
        them still blocked, to install its own relay (or let its command have them)."""
        pid = os.fork()
        if pid != 0:
            self.child = pid
            signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
        return pid


def _own_session_keyring() -> None:
    """Join a new, empty session keyring: keys in the session airlock was started from (a
    login's, say) are not the command's to read."""
    number = SYS_KEYCTL.get(os.uname().machine)
    if number is not None:
        _libc.syscall(number, KEYCTL_JOIN_SESSION_KEYRING, None)  # fails only without keyrings


def _become(conf: Confinement, cmd: list[str]) -> NoReturn:
    """Replace this process with `cmd` as the unprivileged user, with no capabilities."""
    _own_session_keyring()
    # A session of its own, so no controlling terminal: it cannot type (TIOCSTI) into the
    # terminal airlock exec was started from, for the shell there to run once it exits.
    os.setsid()
    drop = ["setpriv", f"--reuid={conf.uid}", f"--regid={conf.gid}", "--clear-groups"]
    drop += ["--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]
    for sig in FORWARDED:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)  # a signal kept for it ends it now
    try:
        os.execvp("setpriv", [*drop, *cmd])
    except OSError as e:
        _fail(f"cannot run setpriv: {e.strerror or e}")


def _init(conf: Confinement, cmd: list[str]) -> NoReturn:
    """PID 1 of the command's PID namespace: mount its /proc, start the command, reap orphans,
    and exit with the command's code (which ends every process left in the namespace)."""
    try:
        _die_with_parent()
        _mount("proc", Path("/proc"), "proc", SAFE | MS_NOEXEC)
        _read_only(Path("/proc/sys"))
    except (OSError, ConfineError) as e:
        _fail(str(e))
    relay = Relay()
    child = relay.fork()
    if child == 0:
        _become(conf, cmd)
    while True:
        pid, status = os.wait()
        if pid == child:
            os._exit(_exit_code(status))


def _fail(message: str) -> NoReturn:
    print(f"airlock exec: error: {message}", file=sys.stderr, flush=True)
    os._exit(FAILED)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Confine and run the command; exit with its code."""
    # Signals that would stop the command wait until there is a command to stop.
    signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    conf, cmd, parent = Confinement.parse(sys.argv[1:] if argv is None else argv)
    if not cmd:
        _fail("no command to run")
    try:
        _die_with_parent(parent)
        ca_pem = conf.ca_cert.read_bytes()  # before the data dir is hidden
        fd = os.open(NETNS_DIR / conf.netns, os.O_RDONLY)
        os.setns(fd, os.CLONE_NEWNET)
        os.close(fd)
        os.unshare(os.CLONE_NEWNS | os.CLONE_NEWPID | os.CLONE_NEWIPC)
        make_view(conf, ca_pem)
    except (OSError, ConfineError) as e:
        _fail(str(e))
    init = Relay().fork()
    if init == 0:
        _init(conf, cmd)
    _, status = os.waitpid(init, 0)
    os._exit(_exit_code(status))


if __name__ == "__main__":
    main()

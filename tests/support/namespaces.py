"""Network namespaces, links and processes made by a test, and what they may leave behind: the
capture, isolation and egress-path tests run real namespaces and iptables, as root on Linux."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from proxy.routing.isolate import Link

from .clients import environ_without_proxy

NETNS_ETC = Path("/etc/netns")


def netns_unsupported() -> str | None:
    """Why these tests cannot run here, or None when they can."""
    if not sys.platform.startswith("linux"):
        return "needs Linux (network namespaces and iptables)"
    if os.geteuid() != 0:
        return f"needs root for network namespaces and iptables (running as uid {os.geteuid()})"
    missing = [tool for tool in ("ip", "iptables", "setpriv", "curl") if shutil.which(tool) is None]
    if missing:
        return f"needs {', '.join(missing)} on PATH"
    return None


def sh(*cmd: str) -> str:
    """Run a setup command; fail with its stderr if it fails."""
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"{shlex.join(cmd)} exited {done.returncode}: {done.stderr}"
    return done.stdout


def quiet(*cmd: str) -> str:
    """Run a cleanup or inspection command, whatever it finds."""
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout


class Processes:
    """Processes started by a test, each in a process group of its own; all killed afterwards."""

    def __init__(self, root: Path):
        self.root = root
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, cmd: list[str], name: str) -> subprocess.Popen[bytes]:
        """Start `cmd` with its output in `<root>/<name>.out`."""
        with (self.root / f"{name}.out").open("ab") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=environ_without_proxy(), start_new_session=True
            )
        self.started.append(proc)
        return proc

    def output(self, name: str) -> str:
        """What a process wrote."""
        return (self.root / f"{name}.out").read_text(errors="replace")

    def stop(self) -> None:
        """SIGKILL every process group started (children included)."""
        for proc in self.started:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        self.started.clear()


@dataclass(frozen=True)
class Netns:
    """A network namespace made by the test."""

    name: str

    def exec(self, *cmd: str, uid: int | None = None) -> list[str]:
        """`cmd` run inside the namespace, as `uid` (no groups) if given."""
        user = [] if uid is None else ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
        return ["ip", "netns", "exec", self.name, *user, *cmd]

    def run(self, *cmd: str, uid: int | None = None) -> subprocess.CompletedProcess[str]:
        """Run `cmd` inside the namespace and wait for it."""
        return subprocess.run(
            self.exec(*cmd, uid=uid), capture_output=True, text=True, timeout=30, env=environ_without_proxy()
        )


def add_link(prefix: list[str], name: str, address: str) -> None:
    """A link holding `address`: a dummy interface, or a veth pair (peer `<name>p`) where the
    kernel has no dummy driver. `prefix` runs the commands in a namespace."""
    ends = [name]
    made = subprocess.run([*prefix, "ip", "link", "add", name, "type", "dummy"], capture_output=True)
    if made.returncode != 0:
        sh(*prefix, "ip", "link", "add", name, "type", "veth", "peer", "name", f"{name}p")
        ends.append(f"{name}p")
    sh(*prefix, "ip", "addr", "add", address, "dev", name)
    for end in ends:
        sh(*prefix, "ip", "link", "set", end, "up")


def mentioning(prefix: list[str], word: str) -> list[str]:
    """The iptables (and ip6tables) rules of the nat and filter tables that mention `word`."""
    lines = []
    for tool in ("iptables", "ip6tables"):
        if shutil.which(tool) is None:
            continue
        for table in ("nat", "filter"):
            out = quiet(*prefix, tool, "-w", "-t", table, "-S")
            lines += [f"{tool} -t {table} {line}" for line in out.splitlines() if word in line]
    return lines


@dataclass(frozen=True)
class Traces:
    """What an isolated namespace may leave behind, as seen from where airlock exec ran."""

    netns: frozenset[str]
    links: frozenset[str]
    etc: frozenset[str]
    rules: frozenset[str]

    @classmethod
    def now(cls, prefix: list[str]) -> Traces:
        """The airlock-* namespaces, alh* links, /etc/netns/airlock-* and rules naming alh*."""
        names = [line.split()[0] for line in quiet(*prefix, "ip", "netns", "list").splitlines() if line]
        links = [
            line.split(": ")[1].split("@")[0] for line in quiet(*prefix, "ip", "-o", "link").splitlines()
        ]
        etc = [p.name for p in NETNS_ETC.glob("airlock-*")]
        return cls(
            frozenset(n for n in names if n.startswith("airlock-")),
            frozenset(n for n in links if n.startswith("alh")),
            frozenset(etc),
            frozenset(mentioning(prefix, "alh")),
        )

    def added_since(self, before: Traces) -> dict[str, frozenset[str]]:
        """What is here now and was not before (empty when all was cleaned up)."""
        found = {
            "netns": self.netns - before.netns,
            "links": self.links - before.links,
            "/etc/netns": self.etc - before.etc,
            "iptables": self.rules - before.rules,
        }
        return {k: v for k, v in found.items() if v}


def exec_isolated(
    args: list[str], prefix: list[str], *, timeout: float, cwd: Path | None = None
) -> tuple[Link, subprocess.CompletedProcess[str]]:
    """Run `airlock exec --isolate` (`args`: the whole command line, `prefix` included) in a
    session of its own, to its end; the link it made (named by the PID that ends up as airlock's)
    is left for the caller to check and scrub, unless it ran past `timeout`: then it is killed,
    scrubbed, and the timeout raised."""
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environ_without_proxy(),
        start_new_session=True,
        cwd=cwd,
    )
    link = Link.for_process(proc.pid)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        scrub(prefix, link)
        raise
    return link, subprocess.CompletedProcess(args, proc.returncode, out, err)


def scrub(prefix: list[str], link: Link) -> None:
    """Remove whatever a killed `airlock exec --isolate` left (so a failing test leaves nothing)."""
    for tool in ("iptables", "ip6tables") if shutil.which("ip6tables") else ("iptables",):
        for table in ("nat", "filter"):
            for line in quiet(*prefix, tool, "-w", "-t", table, "-S").splitlines():
                if link.host_if in shlex.split(line) and line.startswith("-A "):
                    quiet(*prefix, tool, "-w", "-t", table, "-D", *shlex.split(line)[1:])
    quiet(*prefix, "ip", "link", "del", link.host_if)
    quiet(*prefix, "ip", "netns", "del", link.name)
    shutil.rmtree(NETNS_ETC / link.name, ignore_errors=True)
    with suppress(OSError):
        Path("/run/netns", link.name).unlink()

"""`airlock capture`: iptables rules that send one user's traffic through airlock, whatever
the programs it runs think of proxy variables.

For the agent's UID, in the current network namespace:

- nat OUTPUT: every TCP connection to anything but loopback is redirected to airlock's
  transparent listener on loopback (`airlock run --transparent 127.0.0.1:PORT`), which
  recovers the original destination and applies the same rules as the forward proxy;
- filter OUTPUT: what remains may go only to loopback, or to the resolvers of
  /etc/resolv.conf on port 53 (UDP and TCP, DNS); everything else (other UDP, QUIC, ICMP,
  raw IP) is rejected.

Airlock itself must run as another user: its own connections are not captured. IPv6 gets the
same rules through ip6tables when the kernel has it. Installing twice replaces the rules;
`--remove` takes them away.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

RESOLV_CONF = Path("/etc/resolv.conf")


class CaptureError(RuntimeError):
    """An iptables command failed; the message names it and what to do."""


@dataclass(frozen=True)
class Family:
    """One IP version's tool and its loopback range."""

    tool: str
    loopback: str
    version: int


FAMILIES = (Family("iptables", "127.0.0.0/8", 4), Family("ip6tables", "::1/128", 6))


def resolvers(path: Path = RESOLV_CONF) -> list[str]:
    """The nameserver addresses of a resolv.conf (none if it is missing)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            found.append(fields[1].split("%")[0])
    return found


@dataclass(frozen=True)
class Capture:
    """The capture rules for one UID, redirected to one transparent listener port."""

    uid: int
    port: int
    dns: tuple[str, ...] = ()

    @property
    def nat_chain(self) -> str:
        """The nat chain that redirects the UID's TCP."""
        return f"AIRLOCK-{self.uid}"

    @property
    def filter_chain(self) -> str:
        """The filter chain that lets only loopback and DNS out."""
        return f"AIRLOCK-{self.uid}-OUT"

    def _owner(self) -> list[str]:
        return ["-m", "owner", "--uid-owner", str(self.uid)]

    def rules(self, family: Family) -> list[list[str]]:
        """The iptables arguments that install the rules, in order."""
        nat, out = self.nat_chain, self.filter_chain
        commands = [
            ["-t", "nat", "-N", nat],
            ["-t", "nat", "-A", nat, "-d", family.loopback, "-j", "RETURN"],
            ["-t", "nat", "-A", nat, "-p", "tcp", "-j", "REDIRECT", "--to-ports", str(self.port)],
            ["-t", "nat", "-A", "OUTPUT", "-p", "tcp", *self._owner(), "-j", nat],
            ["-t", "filter", "-N", out],
            ["-t", "filter", "-A", out, "-d", family.loopback, "-j", "RETURN"],
        ]
        for server in self.dns:
            if ipaddress.ip_address(server).version == family.version:
                for proto in ("udp", "tcp"):
                    commands.append(
                        [
                            "-t",
                            "filter",
                            "-A",
                            out,
                            "-d",
                            server,
                            "-p",
                            proto,
                            "--dport",
                            "53",
                            "-j",
                            "RETURN",
                        ]
                    )
        commands += [
            ["-t", "filter", "-A", out, "-j", "REJECT"],
            ["-t", "filter", "-A", "OUTPUT", *self._owner(), "-j", out],
        ]
        return commands

    def removals(self) -> list[list[str]]:
        """The iptables arguments that take the rules away (each may find nothing to remove)."""
        nat, out = self.nat_chain, self.filter_chain
        return [
            ["-t", "nat", "-D", "OUTPUT", "-p", "tcp", *self._owner(), "-j", nat],
            ["-t", "nat", "-F", nat],
            ["-t", "nat", "-X", nat],
            ["-t", "filter", "-D", "OUTPUT", *self._owner(), "-j", out],
            ["-t", "filter", "-F", out],
            ["-t", "filter", "-X", out],
        ]


def families() -> list[Family]:
    """The IP versions whose tool is installed (IPv4 is required)."""
    if shutil.which("iptables") is None:
        raise CaptureError("iptables is not installed: install it (apt-get install iptables) and run again")
    return [f for f in FAMILIES if f.version == 4 or _usable(f)]


def _usable(family: Family) -> bool:
    if shutil.which(family.tool) is None:
        return False
    probe = subprocess.run([family.tool, "-w", "-t", "nat", "-S", "OUTPUT"], capture_output=True)
    return probe.returncode == 0


def _run(family: Family, args: list[str], *, check: bool) -> None:
    done = subprocess.run([family.tool, "-w", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
        raise CaptureError(
            f"{family.tool} {' '.join(args)}: {reason}; "
            "run as root with NET_ADMIN in the agent's network namespace"
        )


def install(capture: Capture) -> list[str]:
    """Install the rules for every IP version available (replacing earlier ones); the tools used."""
    used = []
    for family in families():
        for args in capture.removals():
            _run(family, args, check=False)
        for args in capture.rules(family):
            _run(family, args, check=True)
        used.append(family.tool)
    return used


def remove(capture: Capture) -> list[str]:
    """Take the rules away; the tools used."""
    used = []
    for family in families():
        for args in capture.removals():
            _run(family, args, check=False)
        used.append(family.tool)
    return used

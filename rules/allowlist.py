"""The egress allowlist: which hosts, ports and addresses an agent may reach at all, and what a
refusal says.

A name entry (`api.example.com`, `*.example.com`, `host:443`, `{host, ports}`) admits the host
by name; the addresses the name resolves to must then be public. A range entry (`10.0.0.0/8`,
`127.0.0.1`, `::1`) admits the addresses in it, public or not, and is the only way to reach a
destination given as a bare IP address. In report mode nothing is refused: what would be is
logged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .action import Action
from .addresses import Address, Range, address_of, described, network_of
from .decision import ALLOWED, Decision, Verdict
from .match import globs, is_literal

EGRESS_RULE = "egress"  # the rule named by decisions egress makes


@dataclass(frozen=True)
class HostEntry:
    """An allowlist entry naming hosts: a glob over the name, and the ports (None: all)."""

    test: Callable[[str | None], bool]
    ports: frozenset[int] | None
    literal: str | None = None  # the host, when the entry is not a glob


def entry_of(entry: str | dict[str, Any]) -> HostEntry | Range:
    """One `egress.allow` entry (schema-checked) as the hosts or the addresses it admits."""
    if isinstance(entry, str) and (network := network_of(entry)) is not None:
        return Range(network, None)  # an address or range alone (an IPv6 one has colons)
    if isinstance(entry, dict):
        host, ports = entry["host"], frozenset(entry["ports"]) if "ports" in entry else None
    else:
        head, sep, port = entry.rpartition(":")
        if sep and port.isdigit() and head and ":" not in head.strip("[]").replace("::", ""):
            host, ports = head.strip("[]"), frozenset({int(port)})
        else:
            host, ports = entry, None
    if (network := network_of(host)) is not None:
        return Range(network, ports)
    return HostEntry(globs([host], fold=True), ports, host.lower() if is_literal(host) else None)


def _add_range(address: Address) -> str:
    prefix = 32 if address.version == 4 else 128
    return f"add a range such as {address}/{prefix} to egress.allow if the agent should reach it"


class Allowlist:
    """The `egress` sections of every rule file: host entries, range entries, and report mode."""

    def __init__(self, hosts: list[HostEntry], ranges: list[Range], *, report: bool):
        self.report = report
        # Literal hosts allowed on any port answer from a set; the rest are tested one by one.
        self._any_port = frozenset(e.literal for e in hosts if e.literal and e.ports is None)
        self._hosts = [e for e in hosts if not (e.literal and e.ports is None)]
        self._ranges = ranges

    def allows(self, host: str, port: int | None = None) -> bool:
        """True when the host (and port, where the entry names ports) is on the allowlist: a
        name by the name entries, a bare IP address only by a range entry."""
        if (address := address_of(host)) is not None:
            return self.range_allows(address, port)
        if host.lower() in self._any_port:
            return True
        return any(e.test(host) and (e.ports is None or port in e.ports) for e in self._hosts)

    def refusal(self, host: str, port: int | None) -> str | None:
        """Why the allowlist refuses the host (and port), or None when it allows it."""
        if self.allows(host, port):
            return None
        if (address := address_of(host)) is not None:
            return f"{host}:{port} is a bare IP address, not on the egress allowlist; " + _add_range(address)
        return (
            f"{host}:{port} is not on the egress allowlist; "
            "add it to egress.allow in the rules if the agent should reach it"
        )

    def range_allows(self, address: Address, port: int | None) -> bool:
        """True when a range entry of the allowlist holds the address (and port)."""
        return any(r.allows(address, port) for r in self._ranges)

    def address_refusal(self, host: str, address: Address, port: int | None) -> str | None:
        """Why the connection for `host` may not go to `address`, or None when it may: a range
        entry allows any address; otherwise a name reaches only public addresses."""
        if self.range_allows(address, port):
            return None
        if address_of(host) is not None:
            return f"{host}:{port} is a bare IP address, not on the egress allowlist; " + _add_range(address)
        what = described(address)
        if what is None:
            return None
        return f"{host} resolves to {address}, {what}; " + _add_range(address)

    def check_address(
        self, decision: Decision, host: str, port: int, addresses: list[Address]
    ) -> tuple[Address | None, Decision]:
        """The address a connection for `host` may go to (the first allowed) and the decision
        once the addresses are known: `decision` itself when an address is allowed or it refused
        already, else a refusal (a log entry saying so in report mode)."""
        refusals = []
        for address in addresses:
            if (why := self.address_refusal(host, address, port)) is None:
                return address, decision
            refusals.append(why)
        if not refusals or decision.refused:
            return None, decision
        if self.report:
            return addresses[0], Decision(Verdict.LOG, EGRESS_RULE, f"report only: {refusals[0]}")
        return None, Decision(Verdict.DENY, EGRESS_RULE, "; ".join(dict.fromkeys(refusals)), "egress_denied")

    def decision(self, action: Action) -> Decision | None:
        """What egress says of the action: None when it may go (a named upstream always may),
        else a refusal, or in report mode a log entry saying what would be refused. The host
        is checked by name and, where the action carries them, by its addresses."""
        if action.upstream is not None:
            return None
        message = self.refusal(action.host, action.port)
        if message is None:
            if not action.addresses:
                return None
            _, by_address = self.check_address(ALLOWED, action.host, action.port, list(action.addresses))
            return None if by_address == ALLOWED else by_address
        if self.report:
            return Decision(Verdict.LOG, EGRESS_RULE, f"report only: {message}")
        return Decision(Verdict.DENY, EGRESS_RULE, message, "egress_denied")

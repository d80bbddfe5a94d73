"""IP addresses in egress rules: which destinations are public, and the ranges rules allow.

A host name on the allowlist reaches the public addresses it resolves to. Loopback, private,
link-local (the cloud metadata services among them), carrier-grade NAT and the other
non-public ranges are reached only through an explicit range in `egress.allow`, and so is any
destination given as a bare IP address.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

type Address = ipaddress.IPv4Address | ipaddress.IPv6Address
type Network = ipaddress.IPv4Network | ipaddress.IPv6Network

METADATA = frozenset(ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "169.254.170.2"))
CGNAT = ipaddress.ip_network("100.64.0.0/10")
NAT64 = ipaddress.ip_network("64:ff9b::/96")  # the well-known prefix: IPv4 reached through a gateway


def address_of(host: str) -> Address | None:
    """The host as an IP address, or None when it is a name (brackets of IPv6 are allowed)."""
    try:
        return _plain(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


def network_of(text: str) -> Network | None:
    """An egress entry as an IP range (`10.0.0.0/8`, `127.0.0.1`, `::1`), or None for a name."""
    try:
        return ipaddress.ip_network(text.strip("[]"), strict=False)
    except ValueError:
        return None


def _plain(address: Address) -> Address:
    """IPv4-mapped (::ffff:10.0.0.1) and NAT64 (64:ff9b::a00:1) addresses count as the IPv4
    address they carry."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def non_public(address: Address) -> str | None:
    """What kind of non-public address this is, or None for a public one."""
    address = _plain(address)
    if address in METADATA:
        return "cloud metadata"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if isinstance(address, ipaddress.IPv4Address) and address in CGNAT:
        return "carrier-grade NAT"
    if address.is_unspecified:
        return "unspecified"
    if address.is_multicast:
        return "multicast"
    if address.is_private:
        return "private"
    if not address.is_global:
        return "reserved"
    return None


@dataclass(frozen=True)
class Range:
    """An egress entry naming IP addresses: a network, and the ports it is open on (None: all)."""

    network: Network
    ports: frozenset[int] | None

    def allows(self, address: Address, port: int | None) -> bool:
        """True when the address is in the range and the port is one it names."""
        return (
            address.version == self.network.version
            and address in self.network
            and (self.ports is None or port in self.ports)
        )

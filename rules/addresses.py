"""IP addresses in egress rules: which destinations are public, and the ranges rules allow.

A host name on the allowlist reaches the public addresses it resolves to. Loopback, private,
link-local (the cloud metadata services among them), carrier-grade NAT, documentation and the
other special-purpose ranges are reached only through an explicit range in `egress.allow`, and
so is any destination given as a bare IP address. Refusals name each range for what it is.
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


# The special-purpose ranges (RFC 6890 and its successors) by what they are, for refusals that
# say why an address is not public; most specific first.
_NAMED: tuple[tuple[Network, str], ...] = tuple(
    (ipaddress.ip_network(net), name)
    for name, nets in (
        ("private", ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")),
        ("unique local", ("fc00::/7",)),  # IPv6's private addresses
        ("documentation", ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")),
        ("benchmarking", ("198.18.0.0/15", "2001:2::/48")),
        ("this-network", ("0.0.0.0/8",)),
        ("broadcast", ("255.255.255.255/32",)),
        ("reserved", ("240.0.0.0/4",)),
        ("discard-only", ("100::/64",)),
        ("local-use NAT64", ("64:ff9b:1::/48",)),
        ("Teredo", ("2001::/32",)),
        ("6to4", ("2002::/16",)),
        ("IETF protocol assignment", ("192.0.0.0/24", "2001::/23")),
    )
    for net in nets
)
_AN = frozenset({"unspecified", "IETF protocol assignment"})  # the kinds said with "an"


def non_public(address: Address) -> str | None:
    """What kind of non-public address this is (loopback, private, link-local, documentation,
    ...), or None for a public one."""
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
    if not address.is_private and address.is_global:
        return None
    named = (name for network, name in _NAMED if address.version == network.version and address in network)
    return next(named, "private" if address.is_private else "reserved")


def described(address: Address) -> str | None:
    """The kind of a non-public address in words, `a loopback address`; None for a public one."""
    kind = non_public(address)
    if kind is None:
        return None
    return f"{'an' if kind in _AN else 'a'} {kind} address"


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

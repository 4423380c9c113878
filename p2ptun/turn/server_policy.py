"""Which peer addresses a TURN server relays to (RFC 8656 §21.3, §9).

A relay that forwards to any address lets a client on the internet reach the server's own
services, its LAN, or multicast groups ("TURN as an open proxy", RFC 8656 §21.3.1 and
§21.3.3). The default policy denies:

- loopback (127.0.0.0/8, ::1), unspecified (0.0.0.0/8, ::);
- private and shared ranges (RFC 1918 10/8, 172.16/12, 192.168/16; RFC 6598 100.64/10;
  IPv6 unique-local fc00::/7);
- link-local (169.254/16, fe80::/10), multicast (224/4, ff00::/8), reserved and broadcast
  (240/4, 255.255.255.255);
- the server's own addresses (its relay address and listen addresses);
- IPv4-mapped and NAT64/IPv4-compatible IPv6 forms of any of the above are judged by the
  embedded IPv4 address.

``allow`` networks (the ``allow_peers`` setting) are checked first and open a range despite
the list above, e.g. a lab or a LAN deployment relaying between private addresses.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_DENY_V4: tuple[ipaddress.IPv4Network, ...] = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # unspecified / "this network"
        "10.0.0.0/8",  # RFC 1918
        "100.64.0.0/10",  # RFC 6598 shared address space
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local
        "172.16.0.0/12",  # RFC 1918
        "192.168.0.0/16",  # RFC 1918
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, includes 255.255.255.255 broadcast
    )
)
DEFAULT_DENY_V6: tuple[ipaddress.IPv6Network, ...] = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "::/128",  # unspecified
        "::1/128",  # loopback
        "fc00::/7",  # unique local (ULA)
        "fe80::/10",  # link-local
        "ff00::/8",  # multicast
    )
)
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_COMPAT = ipaddress.IPv6Network("::/96")


def _parse(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


def _embedded_v4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside an IPv4-mapped, NAT64 or IPv4-compatible IPv6 address."""
    if addr in _MAPPED or addr in _NAT64 or (addr in _COMPAT and int(addr) > 1):
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


@dataclass(frozen=True)
class PeerPolicy:
    """Decides whether a peer IP may get a permission or a channel (RFC 8656 §9.2, §11.2:
    a forbidden peer is answered with 403)."""

    allow: tuple[IPNetwork, ...] = ()
    own_addresses: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def build(cls, allow: Iterable[IPNetwork], own_addresses: Iterable[str]) -> PeerPolicy:
        """A policy with ``allow`` networks opened and ``own_addresses`` (literal IPs; wildcard
        addresses are ignored) denied."""
        own = set()
        for host in own_addresses:
            ip = _parse(host)
            if ip is not None and not ip.is_unspecified:
                own.add(str(ip))
        return cls(tuple(allow), frozenset(own))

    def allowed(self, host: str) -> bool:
        """True if the server may relay to ``host`` (a literal IP address)."""
        ip = _parse(host)
        if ip is None:
            return False
        for net in self.allow:
            if ip.version == net.version and ip in net:
                return True
        if str(ip) in self.own_addresses:
            return False
        if isinstance(ip, ipaddress.IPv6Address):
            inner = _embedded_v4(ip)
            if inner is not None:
                return self.allowed(str(inner))
            return not any(ip in net for net in DEFAULT_DENY_V6)
        return not any(ip in net for net in DEFAULT_DENY_V4)

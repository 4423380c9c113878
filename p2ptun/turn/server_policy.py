"""Which peer addresses a TURN server relays to (RFC 8656 §21.3, §9).

A relay that forwards to any address lets a client on the internet reach the server's own
services, its LAN, or multicast groups ("TURN as an open proxy", RFC 8656 §21.3.1 and
§21.3.3). The default policy relays only to globally reachable unicast addresses: it denies
every block the IANA special-purpose address registries (RFC 6890, with the blocks added since)
mark as not forwardable or not globally reachable —

- IPv4 (:data:`DEFAULT_DENY_V4`): "this network" 0/8, RFC 1918 10/8, 172.16/12, 192.168/16,
  shared address space 100.64/10 (RFC 6598), loopback 127/8, link-local 169.254/16, IETF
  protocol assignments 192.0.0.0/24, the documentation blocks 192.0.2/24, 198.51.100/24,
  203.0.113/24 (RFC 5737), the deprecated 6to4 relay anycast 192.88.99/24 (RFC 7526),
  benchmarking 198.18/15 (RFC 2544), multicast 224/4, reserved 240/4 with the broadcast
  address 255.255.255.255;
- IPv6 (:data:`DEFAULT_DENY_V6`): unspecified ::, loopback ::1, discard-only 100::/64
  (RFC 6666), local-use NAT64 64:ff9b:1::/48 (RFC 8215), IETF protocol assignments 2001::/23
  (Teredo 2001::/32 among them), documentation 2001:db8::/32 and 3fff::/20 (RFC 9637), SRv6
  SIDs 5f00::/16 (RFC 9602), unique-local fc00::/7, link-local fe80::/10, the deprecated
  site-local fec0::/10, multicast ff00::/8;
- IPv6 forms that carry an IPv4 address — IPv4-mapped ::ffff:0:0/96, IPv4-translated
  ::ffff:0:0:0/96, IPv4-compatible ::/96, the NAT64 well-known prefix 64:ff9b::/96 and 6to4
  2002::/16 (bits 16-47) — are judged by that IPv4 address, so no wrapping reaches a denied one;
- the server's own addresses (its relay address and listen addresses).

``allow`` networks (the ``allow_peers`` setting) are checked first and open a range despite the
list above, e.g. a lab or a LAN deployment relaying between private addresses (the NAT lab's
"public" addresses are documentation blocks: its rendezvous opens the sites' ones).
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
        "0.0.0.0/8",  # "this network" (RFC 791)
        "10.0.0.0/8",  # private (RFC 1918)
        "100.64.0.0/10",  # shared address space (RFC 6598)
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local (RFC 3927)
        "172.16.0.0/12",  # private (RFC 1918)
        "192.0.0.0/24",  # IETF protocol assignments (RFC 6890)
        "192.0.2.0/24",  # documentation, TEST-NET-1 (RFC 5737)
        "192.88.99.0/24",  # 6to4 relay anycast, deprecated (RFC 7526)
        "192.168.0.0/16",  # private (RFC 1918)
        "198.18.0.0/15",  # benchmarking (RFC 2544)
        "198.51.100.0/24",  # documentation, TEST-NET-2 (RFC 5737)
        "203.0.113.0/24",  # documentation, TEST-NET-3 (RFC 5737)
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved (RFC 1112), includes 255.255.255.255 broadcast
    )
)
"""IPv4 blocks a TURN relay refuses by default (see the module docstring)."""
DEFAULT_DENY_V6: tuple[ipaddress.IPv6Network, ...] = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "::/128",  # unspecified
        "::1/128",  # loopback
        "64:ff9b:1::/48",  # local-use IPv4/IPv6 translation (RFC 8215)
        "100::/64",  # discard-only (RFC 6666)
        "2001::/23",  # IETF protocol assignments, Teredo 2001::/32 included (RFC 2928, 4380)
        "2001:db8::/32",  # documentation (RFC 3849)
        "3fff::/20",  # documentation (RFC 9637)
        "5f00::/16",  # SRv6 SIDs (RFC 9602)
        "fc00::/7",  # unique local (RFC 4193)
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local, deprecated (RFC 3879)
        "ff00::/8",  # multicast
    )
)
"""IPv6 blocks a TURN relay refuses by default (see the module docstring)."""
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_COMPAT = ipaddress.IPv6Network("::/96")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")


def _parse(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


def _embedded_v4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside an IPv4-mapped, IPv4-translated, NAT64, IPv4-compatible or 6to4
    IPv6 address."""
    if (
        addr in _MAPPED
        or addr in _TRANSLATED
        or addr in _NAT64
        or (addr in _COMPAT and int(addr) > 1)
    ):
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    if addr in _SIX_TO_FOUR:
        return ipaddress.IPv4Address((int(addr) >> 80) & 0xFFFFFFFF)
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
        """True if the server may relay to ``host`` (a literal IP address): to the ``allow``
        networks; else never to its own addresses; else to what the deny lists leave."""
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

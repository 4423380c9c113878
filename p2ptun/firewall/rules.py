"""Firewall rules and their compiled form for one peer.

A :class:`Rule` allows traffic (there are no deny rules: what no rule allows is dropped). It
matches a packet when every part it names matches:

* ``proto``: ``"tcp"``, ``"udp"``, ``"icmp"`` (ICMP and ICMPv6) or ``"any"``;
* ``ports``: the destination port of the packet that opens the flow (inbound: our service's
  port, outbound: the remote one), an inclusive range; None for any port, which also matches
  packets without ports (ICMP, non-first fragments);
* the peer: its name is in ``peers``, or it holds *every* group in ``groups`` (from its
  certificate or its ``[[peer]] groups``). A rule naming neither applies to every peer;
* ``cidrs``: the remote address (inbound: the source, outbound: the destination) is in one of
  them; ``local_cidrs``: our side's address is (useful where a peer routes a subnet). Empty:
  any address.

Rules are compiled once per peer (:func:`compile_for`): those that cannot apply to the peer are
left out, so a packet is compared with the few that can.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from p2ptun.firewall.packet import NO_PORT, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

PROTOCOLS: dict[str, frozenset[int] | None] = {
    "any": None,
    "tcp": frozenset({PROTO_TCP}),
    "udp": frozenset({PROTO_UDP}),
    "icmp": frozenset({PROTO_ICMP, PROTO_ICMPV6}),
}


@dataclass(frozen=True)
class Rule:
    """One allow rule (module docstring)."""

    proto: str = "any"
    ports: tuple[int, int] | None = None
    peers: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    cidrs: tuple[IPNetwork, ...] = ()
    local_cidrs: tuple[IPNetwork, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.proto not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.proto!r}")
        if self.ports is not None:
            lo, hi = self.ports
            if not 0 <= lo <= hi <= 65535:
                raise ValueError(f"bad port range {lo}-{hi}")
            if self.proto == "icmp":
                raise ValueError("ICMP has no ports")

    def applies_to(self, name: str, groups: frozenset[str]) -> bool:
        """Whether this rule can match traffic of the peer ``name`` holding ``groups``."""
        if not self.peers and not self.groups:
            return True
        return name in self.peers or (bool(self.groups) and self.groups <= groups)

    def describe(self) -> str:
        """A short label for status: ``tcp/22 groups=admin``."""
        parts = [self.proto if self.ports is None else f"{self.proto}/{_ports(self.ports)}"]
        if self.peers:
            parts.append("peers=" + ",".join(sorted(self.peers)))
        if self.groups:
            parts.append("groups=" + ",".join(sorted(self.groups)))
        if self.cidrs:
            parts.append("cidr=" + ",".join(str(n) for n in self.cidrs))
        if self.local_cidrs:
            parts.append("local_cidr=" + ",".join(str(n) for n in self.local_cidrs))
        if not self.peers and not self.groups:
            parts.append("any peer")
        return " ".join(parts)


def _ports(ports: tuple[int, int]) -> str:
    lo, hi = ports
    return str(lo) if lo == hi else f"{lo}-{hi}"


ALLOW_ANY = Rule()
ALLOW_ICMP = Rule(proto="icmp")

Prefix = tuple[int, int, int]
"""An address prefix as (address length in bytes, network as an int, mask as an int)."""


def _prefixes(nets: Iterable[IPNetwork]) -> tuple[Prefix, ...]:
    return tuple(
        (4 if n.version == 4 else 16, int(n.network_address), int(n.netmask)) for n in nets
    )


def _in(address: bytes, prefixes: tuple[Prefix, ...]) -> bool:
    value = int.from_bytes(address, "big")
    size = len(address)
    return any(size == s and value & mask == net for s, net, mask in prefixes)


@dataclass(frozen=True, slots=True)
class CompiledRule:
    index: int
    protos: frozenset[int] | None
    lo: int
    hi: int
    cidrs: tuple[Prefix, ...]
    local_cidrs: tuple[Prefix, ...]


def compile_for(
    rules: Iterable[Rule], name: str, groups: frozenset[str]
) -> tuple[CompiledRule, ...]:
    """The rules of one direction that can apply to the peer ``name`` with ``groups``, each
    keeping its index in the full list (for its counters)."""
    return tuple(
        CompiledRule(
            index,
            PROTOCOLS[rule.proto],
            NO_PORT if rule.ports is None else rule.ports[0],
            65535 if rule.ports is None else rule.ports[1],
            _prefixes(rule.cidrs),
            _prefixes(rule.local_cidrs),
        )
        for index, rule in enumerate(rules)
        if rule.applies_to(name, groups)
    )


def first_match(
    rules: tuple[CompiledRule, ...], proto: int, port: int, remote: bytes, local: bytes
) -> int:
    """The index of the first rule allowing a flow of ``proto`` to ``port`` (-1: none) between
    the ``remote`` and ``local`` addresses."""
    for rule in rules:
        protos = rule.protos
        if protos is not None and proto not in protos:
            continue
        if not rule.lo <= port <= rule.hi:
            continue
        if rule.cidrs and not _in(remote, rule.cidrs):
            continue
        if rule.local_cidrs and not _in(local, rule.local_cidrs):
            continue
        return rule.index
    return -1


@dataclass(frozen=True)
class Policy:
    """A whole rule set with the flow table's bounds.

    The default (no ``[firewall]`` section): any outbound flow and its replies, inbound ICMP
    from every peer, nothing else inbound.
    """

    inbound: tuple[Rule, ...] = (ALLOW_ICMP,)
    outbound: tuple[Rule, ...] = (ALLOW_ANY,)
    max_flows: int = 16384
    """Flows tracked in all (each costs a few hundred bytes)."""
    max_flows_per_peer: int = 4096
    """Flows one peer may hold: beyond it, its own least recently seen flow makes room."""
    tcp_timeout: float = 3600.0
    """Idle seconds before a TCP flow is forgotten (30 s once a FIN or RST was seen; every
    protocol's flows get at most 60 s until a packet came back the other way)."""
    udp_timeout: float = 120.0
    """Idle seconds for UDP and any protocol other than TCP and ICMP."""
    icmp_timeout: float = 30.0

    def __post_init__(self) -> None:
        if not 1 <= self.max_flows_per_peer <= self.max_flows:
            raise ValueError("max_flows_per_peer must be between 1 and max_flows")

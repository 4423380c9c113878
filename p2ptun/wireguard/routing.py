"""Cryptokey routing: the allowed-IPs table (whitepaper §2).

Each peer owns a set of IP prefixes. Sending, the destination address of a plaintext packet
selects the peer by longest-prefix match; receiving, a decrypted packet is accepted only if
its source address maps back to the peer whose key decrypted it.

The table keeps one dict per prefix length and family (``masked address → value``) and a list
of the lengths in use, longest first. A lookup walks that list, which is short in practice
(a few distinct lengths), doing one shift and one dict probe per length, straight from the raw
packet bytes.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class _Family(Generic[T]):
    __slots__ = ("bits", "lengths", "tables")

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.tables: dict[int, dict[int, T]] = {}
        self.lengths: list[int] = []

    def _reindex(self) -> None:
        self.lengths = sorted((n for n, t in self.tables.items() if t), reverse=True)

    def insert(self, prefix: int, length: int, value: T) -> None:
        self.tables.setdefault(length, {})[prefix >> (self.bits - length)] = value
        if length not in self.lengths:
            self._reindex()

    def remove(self, prefix: int, length: int) -> T | None:
        table = self.tables.get(length)
        if table is None:
            return None
        value = table.pop(prefix >> (self.bits - length), None)
        if not table:
            del self.tables[length]
            self._reindex()
        return value

    def lookup(self, address: int) -> T | None:
        bits = self.bits
        tables = self.tables
        for length in self.lengths:
            value = tables[length].get(address >> (bits - length))
            if value is not None:
                return value
        return None

    def items(self) -> Iterator[tuple[int, int, T]]:
        for length, table in self.tables.items():
            for key, value in table.items():
                yield (key << (self.bits - length)) if length else 0, length, value


class AllowedIPs(Generic[T]):
    """A longest-prefix-match table from IPv4/IPv6 prefixes to values (peers).

    Inserting a prefix that another value already owns moves it, as ``wg set`` does.
    """

    def __init__(self) -> None:
        self._v4: _Family[T] = _Family(32)
        self._v6: _Family[T] = _Family(128)

    def insert(self, network: str | Network, value: T) -> Network:
        """Map ``network`` (e.g. ``"10.0.0.0/24"``; host bits are ignored) to ``value``."""
        net = ipaddress.ip_network(network, strict=False) if isinstance(network, str) else network
        family = self._v4 if net.version == 4 else self._v6
        family.insert(int(net.network_address), net.prefixlen, value)
        return net

    def remove(self, network: str | Network) -> T | None:
        """Remove ``network``; return the value it mapped to, if any."""
        net = ipaddress.ip_network(network, strict=False) if isinstance(network, str) else network
        family = self._v4 if net.version == 4 else self._v6
        return family.remove(int(net.network_address), net.prefixlen)

    def remove_value(self, value: T) -> None:
        """Remove every prefix mapped to ``value``."""
        for family in (self._v4, self._v6):
            for prefix, length, owner in list(family.items()):
                if owner is value:
                    family.remove(prefix, length)

    def networks(self, value: T) -> list[Network]:
        """The prefixes mapped to ``value``, sorted."""
        out4: list[ipaddress.IPv4Network] = []
        out6: list[ipaddress.IPv6Network] = []
        for prefix, length, owner in self._v4.items():
            if owner is value:
                out4.append(ipaddress.IPv4Network((prefix, length)))
        for prefix, length, owner in self._v6.items():
            if owner is value:
                out6.append(ipaddress.IPv6Network((prefix, length)))
        return [*sorted(out4), *sorted(out6)]

    def lookup(self, address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> T | None:
        """The value of the longest prefix containing ``address``."""
        addr = ipaddress.ip_address(address) if isinstance(address, str) else address
        family = self._v4 if addr.version == 4 else self._v6
        return family.lookup(int(addr))

    def lookup_destination(self, packet: bytes | bytearray | memoryview) -> T | None:
        """Route a plaintext IP packet by its destination address (None if not IP or no route)."""
        if not packet:
            return None
        version = packet[0] >> 4
        if version == 4 and len(packet) >= 20:
            return self._v4.lookup(int.from_bytes(packet[16:20], "big"))
        if version == 6 and len(packet) >= 40:
            return self._v6.lookup(int.from_bytes(packet[24:40], "big"))
        return None

    def lookup_source(self, packet: bytes | bytearray | memoryview) -> T | None:
        """The owner of a decrypted IP packet's source address (None if not IP or unowned)."""
        if not packet:
            return None
        version = packet[0] >> 4
        if version == 4 and len(packet) >= 20:
            return self._v4.lookup(int.from_bytes(packet[12:16], "big"))
        if version == 6 and len(packet) >= 40:
            return self._v6.lookup(int.from_bytes(packet[8:24], "big"))
        return None

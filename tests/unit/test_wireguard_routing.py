"""Cryptokey routing: the allowed-IPs table (whitepaper §2)."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2ptun.wireguard.routing import AllowedIPs


def ip4(src: str, dst: str) -> bytes:
    return struct.pack(
        "!BBHHHBBH4s4s",
        0x45, 0, 20, 0, 0, 64, 17, 0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )  # fmt: skip


def ip6(src: str, dst: str) -> bytes:
    return (
        struct.pack("!IHBB", 6 << 28, 0, 17, 64)
        + ipaddress.IPv6Address(src).packed
        + ipaddress.IPv6Address(dst).packed
    )


def test_longest_prefix_v4() -> None:
    t: AllowedIPs[str] = AllowedIPs()
    t.insert("10.0.0.0/8", "wide")
    t.insert("10.1.0.0/16", "mid")
    t.insert("10.1.2.3/32", "host")
    t.insert("0.0.0.0/0", "default")
    assert t.lookup("10.1.2.3") == "host"
    assert t.lookup("10.1.2.4") == "mid"
    assert t.lookup("10.2.0.1") == "wide"
    assert t.lookup("192.0.2.1") == "default"
    assert t.lookup_destination(ip4("192.0.2.1", "10.1.2.3")) == "host"
    assert t.lookup_source(ip4("10.1.9.9", "192.0.2.1")) == "mid"


def test_longest_prefix_v6_and_families_are_separate() -> None:
    t: AllowedIPs[str] = AllowedIPs()
    t.insert("fd00::/8", "ula")
    t.insert("fd00:1::/32", "site")
    t.insert("fd00:1::5/128", "host")
    assert t.lookup("fd00:1::5") == "host"
    assert t.lookup("fd00:1::6") == "site"
    assert t.lookup("fd99::1") == "ula"
    assert t.lookup("10.0.0.1") is None
    assert t.lookup_destination(ip6("2001:db8::1", "fd00:1::5")) == "host"
    assert t.lookup_source(ip6("fd00:1::7", "2001:db8::1")) == "site"
    t.insert("::/0", "default6")
    assert t.lookup("2001:db8::1") == "default6"
    assert t.lookup("192.0.2.1") is None


def test_host_bits_ignored_and_move_between_owners() -> None:
    t: AllowedIPs[str] = AllowedIPs()
    t.insert("10.0.0.77/24", "a")
    assert t.networks("a") == [ipaddress.ip_network("10.0.0.0/24")]
    t.insert("10.0.0.0/24", "b")  # moved, as `wg set` does
    assert t.networks("a") == []
    assert t.lookup("10.0.0.9") == "b"


def test_remove() -> None:
    t: AllowedIPs[str] = AllowedIPs()
    t.insert("10.0.0.0/24", "a")
    t.insert("10.0.0.0/16", "a")
    t.insert("fd00::/64", "a")
    t.insert("10.9.0.0/16", "b")
    assert t.remove("10.0.0.0/24") == "a"
    assert t.lookup("10.0.0.1") == "a"  # now the /16
    t.remove_value("a")
    assert t.lookup("10.0.0.1") is None and t.lookup("fd00::1") is None
    assert t.lookup("10.9.1.1") == "b"
    assert t.remove("10.0.0.0/24") is None


@pytest.mark.parametrize("packet", [b"", b"\x45" * 10, b"\x60" * 30, b"\x10" * 60])
def test_not_ip_or_short(packet: bytes) -> None:
    t: AllowedIPs[str] = AllowedIPs()
    t.insert("0.0.0.0/0", "x")
    t.insert("::/0", "x")
    assert t.lookup_destination(packet) is None
    assert t.lookup_source(packet) is None


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32), st.integers(0, 5)),
        max_size=30,
    ),
    st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=20),
)
def test_matches_linear_scan(routes: list[tuple[int, int, int]], probes: list[int]) -> None:
    t: AllowedIPs[int] = AllowedIPs()
    table: dict[ipaddress.IPv4Network, int] = {}
    for addr, plen, owner in routes:
        net = ipaddress.IPv4Network((addr, plen), strict=False)
        t.insert(net, owner)
        table[net] = owner
    for probe in probes:
        a = ipaddress.IPv4Address(probe)
        matches = [n for n in table if a in n]
        expected = table[max(matches, key=lambda n: n.prefixlen)] if matches else None
        assert t.lookup(a) == expected

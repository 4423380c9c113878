"""TCP MSS clamping on crafted SYN packets: IPv4 and IPv6, checksums recomputed from scratch."""

from __future__ import annotations

import ipaddress
import struct

from hypothesis import given
from hypothesis import strategies as st

from p2ptun.node.daemon import DEFAULT_MTU, default_mtu
from p2ptun.node.mss import clamp_mss, mss_for_mtu, tcp_offset
from p2ptun.node.wgtunnel import _maybe_syn

SRC4, DST4 = "10.77.0.1", "10.77.0.2"
SRC6, DST6 = "fd00::1", "fd00::2"
SYN, ACK = 0x02, 0x10


def _sum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _pseudo(version: int, src: str, dst: str, length: int) -> bytes:
    s, d = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    if version == 4:
        return s + d + struct.pack("!BBH", 0, 6, length)
    return s + d + struct.pack("!I3xB", length, 6)


def tcp_segment(options: bytes, flags: int = SYN, payload: bytes = b"") -> bytes:
    """A TCP header with ``options`` (padded to 4 bytes), checksum zero."""
    options += b"\0" * (-len(options) % 4)
    doff = (20 + len(options)) // 4
    header = struct.pack("!HHIIBBHHH", 40000, 22, 1, 0, doff << 4, flags, 65535, 0, 0)
    return header + options + payload


def packet(version: int, segment: bytes, *, ext: bytes = b"") -> bytearray:
    """An IP packet around ``segment`` with a correct TCP checksum."""
    if version == 4:
        src, dst = SRC4, DST4
    else:
        src, dst = SRC6, DST6
    csum = ~_sum16(_pseudo(version, src, dst, len(segment)) + segment) & 0xFFFF
    segment = segment[:16] + struct.pack("!H", csum) + segment[18:]
    if version == 4:
        ip = struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            20 + len(segment),
            1,
            0x4000,
            64,
            6,
            0,
            ipaddress.ip_address(src).packed,
            ipaddress.ip_address(dst).packed,
        )
        return bytearray(ip + segment)
    first = 6 if not ext else 0  # hop-by-hop options header first when ext is given
    addrs = ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed
    ip = struct.pack("!IHBB", 0x60000000, len(ext) + len(segment), first, 64) + addrs
    return bytearray(ip + ext + segment)


def tcp_checksum_ok(pkt: bytes) -> bool:
    version = pkt[0] >> 4
    tcp = tcp_offset(pkt, len(pkt))
    if tcp < 0:  # not a SYN: find TCP by hand for these simple packets
        tcp = 20 if version == 4 else 40
    segment = bytes(pkt[tcp:])
    src, dst = (SRC4, DST4) if version == 4 else (SRC6, DST6)
    return _sum16(_pseudo(version, src, dst, len(segment)) + segment) == 0xFFFF


def mss_of(pkt: bytes) -> int | None:
    tcp = tcp_offset(pkt, len(pkt))
    end = tcp + (pkt[tcp + 12] >> 4) * 4
    i = tcp + 20
    while i < end:
        if pkt[i] == 0:
            return None
        if pkt[i] == 1:
            i += 1
            continue
        if pkt[i] == 2:
            return int.from_bytes(pkt[i + 2 : i + 4], "big")
        i += pkt[i + 1]
    return None


MSS4, MSS6 = mss_for_mtu(DEFAULT_MTU)
MSS_OPT = b"\x02\x04\x05\xb4"  # MSS 1460
LINUX_SYN_OPTS = MSS_OPT + b"\x04\x02\x08\x0a" + bytes(8) + b"\x01\x03\x03\x07"


def test_default_mtu() -> None:
    assert DEFAULT_MTU == default_mtu(1500) == 1416
    assert DEFAULT_MTU % 8 == 0
    assert (MSS4, MSS6) == (1376, 1356)


def test_ipv4_syn_clamped_with_valid_checksum() -> None:
    pkt = packet(4, tcp_segment(LINUX_SYN_OPTS))
    assert tcp_checksum_ok(pkt) and mss_of(pkt) == 1460
    assert clamp_mss(pkt, len(pkt), MSS4, MSS6)
    assert mss_of(pkt) == MSS4
    assert tcp_checksum_ok(pkt)


def test_ipv6_syn_ack_clamped_with_valid_checksum() -> None:
    pkt = packet(6, tcp_segment(LINUX_SYN_OPTS, SYN | ACK))
    assert clamp_mss(pkt, len(pkt), MSS4, MSS6)
    assert mss_of(pkt) == MSS6
    assert tcp_checksum_ok(pkt)


def test_ipv6_behind_extension_header() -> None:
    hop_by_hop = bytes([6, 0]) + b"\x01\x04\0\0\0\0"  # next header TCP, PadN
    pkt = packet(6, tcp_segment(MSS_OPT), ext=hop_by_hop)
    assert clamp_mss(pkt, len(pkt), MSS4, MSS6)
    assert mss_of(pkt) == MSS6 and tcp_checksum_ok(pkt)


def test_mss_at_odd_offset() -> None:
    # NOP first: the MSS value straddles two checksum words.
    for version in (4, 6):
        pkt = packet(version, tcp_segment(b"\x01" + MSS_OPT + b"\x01\x01\x01"))
        assert clamp_mss(pkt, len(pkt), MSS4, MSS6)
        assert mss_of(pkt) == (MSS4 if version == 4 else MSS6)
        assert tcp_checksum_ok(pkt)


def test_left_alone() -> None:
    cases = [
        packet(4, tcp_segment(MSS_OPT, ACK)),  # not a SYN
        packet(4, tcp_segment(b"\x02\x04\x04\x00")),  # MSS 1024 already small
        packet(4, tcp_segment(b"\x01\x01\x04\x02")),  # no MSS option
        packet(4, tcp_segment(b"\x00" + MSS_OPT)),  # MSS after end-of-options
        packet(4, tcp_segment(b"\x02\x03\x05\xb4")),  # MSS option with a bad length
        packet(4, tcp_segment(b"\x08\x30" + MSS_OPT)),  # option runs past the header
    ]  # fmt: skip
    for pkt in cases:
        before = bytes(pkt)
        assert not clamp_mss(pkt, len(pkt), MSS4, MSS6)
        assert bytes(pkt) == before
    udp = packet(4, tcp_segment(MSS_OPT))
    udp[9] = 17
    assert not clamp_mss(udp, len(udp), MSS4, MSS6)
    frag = packet(4, tcp_segment(MSS_OPT))
    frag[7] = 1  # fragment offset 8: not the first fragment
    assert not clamp_mss(frag, len(frag), MSS4, MSS6)
    full = packet(4, tcp_segment(LINUX_SYN_OPTS))
    for cut in range(len(full)):  # truncated: never modified, never raises
        part = bytearray(full[:cut])
        assert not clamp_mss(part, cut, MSS4, MSS6)
        assert part == full[:cut]


def test_prefilter_accepts_every_syn() -> None:
    for version in (4, 6):
        pkt = packet(version, tcp_segment(MSS_OPT))
        assert _maybe_syn(pkt)
    assert not _maybe_syn(packet(4, tcp_segment(MSS_OPT, ACK)))


_option = st.one_of(
    st.just(b"\x01"),
    st.binary(min_size=2, max_size=10).map(lambda b: bytes([8, len(b) + 2]) + b),
    st.binary(min_size=0, max_size=6).map(lambda b: bytes([30, len(b) + 2]) + b),
)


@given(
    before=st.lists(_option, max_size=4),
    mss=st.integers(0, 65535),
    version=st.sampled_from([4, 6]),
    payload=st.binary(max_size=9),
)
def test_property_checksum_stays_valid(
    before: list[bytes], mss: int, version: int, payload: bytes
) -> None:
    options = b"".join(before) + b"\x02\x04" + mss.to_bytes(2, "big")
    if len(options) > 40:
        return
    pkt = packet(version, tcp_segment(options, payload=payload))
    limit = MSS4 if version == 4 else MSS6
    changed = clamp_mss(pkt, len(pkt), MSS4, MSS6)
    assert changed == (mss > limit)
    assert mss_of(pkt) == min(mss, limit)
    assert tcp_checksum_ok(pkt)

"""Segmentation and coalescing offloads (p2ptun.net.offload), checked against checksums
computed from scratch with a plain RFC 1071 loop."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2ptun.net.offload import (
    UDP_MAX_SEGMENTS,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
    VIRTIO_NET_HDR_GSO_UDP_L4,
    VNET_HDR,
    ZERO_VNET_HDR,
    TcpCoalescer,
    complete_checksum,
    lone_vnet_header,
    mark_partial,
    offload_wanted,
    ones_sum,
    partial_tcp_checksum,
    segment_tcp,
    segment_udp,
)


def naive_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return total


def tcp_checksum_ok(packet: bytes) -> bool:
    version = packet[0] >> 4
    if version == 4:
        ihl = (packet[0] & 0x0F) * 4
        assert naive_sum(packet[:ihl]) == 0xFFFF, "IPv4 header checksum"
        total = (packet[2] << 8) | packet[3]
        pseudo = packet[12:20] + struct.pack(">BBH", 0, 6, total - ihl)
    else:
        ihl = 40
        total = 40 + ((packet[4] << 8) | packet[5])
        pseudo = packet[8:40] + struct.pack(">IxxxB", total - ihl, 6)
    assert total == len(packet)
    return naive_sum(pseudo + packet[ihl:total]) == 0xFFFF


def fill_tcp_checksum(packet: bytearray) -> bytearray:
    """Set valid IPv4 header and TCP checksums the slow way."""
    version = packet[0] >> 4
    ihl = 20 if version == 4 else 40
    if version == 4:
        packet[10:12] = b"\0\0"
        packet[10:12] = struct.pack(">H", 0xFFFF ^ naive_sum(bytes(packet[:20])))
        pseudo = bytes(packet[12:20]) + struct.pack(">BBH", 0, 6, len(packet) - ihl)
    else:
        pseudo = bytes(packet[8:40]) + struct.pack(">IxxxB", len(packet) - ihl, 6)
    packet[ihl + 16 : ihl + 18] = b"\0\0"
    c = 0xFFFF ^ naive_sum(pseudo + bytes(packet[ihl:]))
    packet[ihl + 16 : ihl + 18] = struct.pack(">H", c)
    return packet


def make_tcp(
    version: int, payload: bytes, seq: int, flags: int = 0x10, options: bytes = b"", ident: int = 7
) -> bytearray:
    thl = 20 + len(options)
    tcp = struct.pack(">HHIIBBHHH", 40000, 5201, seq, 99, (thl // 4) << 4, flags, 512, 0, 0)
    tcp += options + payload
    if version == 4:
        ip = struct.pack(
            ">BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), ident, 0x4000, 64, 6, 0,
            bytes([10, 77, 0, 1]), bytes([10, 77, 0, 2]),
        )  # fmt: skip
    else:
        ip = struct.pack(">IHBB16s16s", 0x60000000, len(tcp), 6, 64, b"\xfd" + bytes(14) + b"\x01",
                         b"\xfd" + bytes(14) + b"\x02")  # fmt: skip
    return fill_tcp_checksum(bytearray(ip + tcp))


@given(st.binary(max_size=3000))
def test_ones_sum_matches_rfc1071(data: bytes) -> None:
    expected = naive_sum(data)
    got = ones_sum(data)
    # 0 and 0xFFFF are the same number in one's complement; all-zero data sums to 0.
    assert got == expected or ({got, expected} == {0, 0xFFFF} and any(data))


@settings(max_examples=60, deadline=None)
@given(
    version=st.sampled_from([4, 6]),
    payload=st.binary(min_size=1, max_size=20000),
    gso=st.integers(min_value=1, max_value=1500),
    seq=st.integers(min_value=0, max_value=0xFFFFFFFF),
    flags=st.sampled_from([0x10, 0x18, 0x19, 0x90, 0x98]),
    options=st.sampled_from([b"", b"\x01\x01\x08\x0a" + bytes(range(8))]),
)
def test_segment_tcp(
    version: int, payload: bytes, gso: int, seq: int, flags: int, options: bytes
) -> None:
    sup = make_tcp(version, payload, seq, flags, options)
    # What the kernel hands over with TSO: a partial checksum; segment_tcp must not care.
    ihl = 20 if version == 4 else 40
    sup[ihl + 16 : ihl + 18] = b"\x12\x34"
    out = bytearray(len(sup) * 2 + 200 * (len(payload) // gso + 1))
    lengths: list[int] = []
    count = segment_tcp(sup, gso, out, lengths)
    assert count == (len(payload) + gso - 1) // gso
    pos = 0
    data = b""
    for i in range(count):
        seg = bytes(out[pos : pos + lengths[i]])
        pos += lengths[i]
        assert tcp_checksum_ok(seg)
        thl = 20 + len(options)
        assert seg[ihl + 20 : ihl + thl] == options
        assert int.from_bytes(seg[ihl + 4 : ihl + 8], "big") == (seq + i * gso) & 0xFFFFFFFF
        f = seg[ihl + 13]
        last = i == count - 1
        assert f & 0x09 == (flags & 0x09 if last else 0)
        assert f & 0x80 == (flags & 0x80 if i == 0 else 0)
        if version == 4:
            assert (seg[4] << 8) | seg[5] == 7 + i
        body = seg[ihl + thl :]
        assert len(body) == (gso if not last else len(payload) - gso * (count - 1))
        data += body
    assert data == payload


def naive_pseudo(packet: bytes) -> int:
    """The kernel's partial checksum for a TCP packet: its pseudo-header sum, from scratch."""
    if packet[0] >> 4 == 4:
        ihl = (packet[0] & 0x0F) * 4
        return naive_sum(packet[12:20] + struct.pack(">BBH", 0, 6, len(packet) - ihl))
    return naive_sum(packet[8:40] + struct.pack(">IxxxB", len(packet) - 40, 6))


@settings(max_examples=60, deadline=None)
@given(
    version=st.sampled_from([4, 6]),
    payload=st.binary(min_size=1, max_size=20000),
    gso=st.integers(min_value=1, max_value=1500),
    seq=st.integers(min_value=0, max_value=0xFFFFFFFF),
    flags=st.sampled_from([0x10, 0x18, 0x19, 0x90]),
)
def test_segment_tcp_partial(version: int, payload: bytes, gso: int, seq: int, flags: int) -> None:
    """With ``partial`` every segment equals the full-checksum segment but for the TCP
    checksum field, which holds the pseudo-header sum: completing it (as the receiving
    kernel does) gives the full checksum, and the receiver recognises it as partial."""
    sup = make_tcp(version, payload, seq, flags)
    ihl = 20 if version == 4 else 40
    size = len(sup) * 2 + 200 * (len(payload) // gso + 1)
    full_out, part_out = bytearray(size), bytearray(size)
    full_len: list[int] = []
    part_len: list[int] = []
    count = segment_tcp(sup, gso, full_out, full_len)
    assert segment_tcp(sup, gso, part_out, part_len, partial=True) == count
    pos = 0
    for i in range(count):
        full = bytes(full_out[pos : pos + full_len[i]])
        part = bytearray(part_out[pos : pos + part_len[i]])
        pos += full_len[i]
        assert part_len[i] == full_len[i]
        assert part[: ihl + 16] == full[: ihl + 16] and part[ihl + 18 :] == full[ihl + 18 :]
        field = (part[ihl + 16] << 8) | part[ihl + 17]
        assert field == naive_pseudo(full) == partial_tcp_checksum(part, version, ihl)
        vnet = VNET_HDR.unpack(lone_vnet_header(part, version, ihl, ihl + 20))
        assert vnet == (VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE, ihl + 20, 0, ihl, 16)
        assert complete_checksum(part, ihl, 16)
        assert tcp_checksum_ok(bytes(part))


@given(st.binary(min_size=0, max_size=3000), st.sampled_from([4, 6]))
def test_mark_partial_and_lone_header(payload: bytes, version: int) -> None:
    """A kernel partial checksum is rewritten to the exact value the receiver recognises; a
    complete checksum is written behind a zero header (the kernel verifies it) unless it
    happens to equal the pseudo-header sum, where completing it changes nothing."""
    ihl = 20 if version == 4 else 40
    full = make_tcp(version, payload, 5)
    pkt = bytearray(full)
    pkt[ihl + 16 : ihl + 18] = b"\xab\xcd"  # whatever the kernel left: it is rewritten
    assert mark_partial(pkt, ihl, 16)
    assert (pkt[ihl + 16] << 8) | pkt[ihl + 17] == naive_pseudo(bytes(full))
    assert lone_vnet_header(pkt, version, ihl, ihl + 20) != ZERO_VNET_HDR
    assert complete_checksum(pkt, ihl, 16) and tcp_checksum_ok(bytes(pkt))
    field = (full[ihl + 16] << 8) | full[ihl + 17]
    header = lone_vnet_header(full, version, ihl, ihl + 20)
    if field != naive_pseudo(bytes(full)):
        assert header == ZERO_VNET_HDR
    else:
        again = bytearray(full)
        assert complete_checksum(again, ihl, 16) and again == full


def test_mark_partial_refuses_what_it_cannot_place() -> None:
    pkt = make_tcp(4, b"x" * 50, 1)
    assert not mark_partial(pkt, 20, 6)  # a UDP-style offset
    assert not mark_partial(pkt, 24, 16)  # not at the TCP header
    udp = bytearray(pkt)
    udp[9] = 17
    assert not mark_partial(udp, 20, 6)
    short = bytearray(pkt)
    short[3] -= 1  # the IP header claims less than was read
    assert not mark_partial(short, 20, 16)


def test_coalescer_writes_lone_partial_segments_for_the_kernel_to_finish() -> None:
    """Segments a peer left partial that cannot merge (a gap, a PSH run of one) go out
    behind a partial-checksum header; complete ones behind a zero header."""
    out = bytearray(10000)
    lengths: list[int] = []
    sup = make_tcp(4, b"z" * 300, 1000, flags=0x18)
    assert segment_tcp(sup, 300, out, lengths, partial=True) == 1
    lone_partial = bytes(out[: lengths[0]])
    lone_full = make_tcp(4, b"y" * 300, 9000, flags=0x18)
    co = TcpCoalescer()
    co.add(lone_partial)
    co.add(lone_full)
    writes = co.flush()
    assert VNET_HDR.unpack(bytes(writes[0][0]))[0] == VIRTIO_NET_HDR_F_NEEDS_CSUM
    assert writes[1] == [ZERO_VNET_HDR, lone_full]


def test_segment_rejects_non_tcp() -> None:
    udp = bytearray(make_tcp(4, b"x" * 100, 1))
    udp[9] = 17
    assert segment_tcp(udp, 10, bytearray(5000), []) == 0


@given(st.binary(min_size=1, max_size=3000), st.sampled_from([4, 6]))
def test_complete_checksum(payload: bytes, version: int) -> None:
    pkt = make_tcp(version, payload, 5)
    ihl = 20 if version == 4 else 40
    good = bytes(pkt)
    # Kernel-style partial checksum: the pseudo-header sum, not complemented.
    if version == 4:
        pseudo = bytes(pkt[12:20]) + struct.pack(">BBH", 0, 6, len(pkt) - ihl)
    else:
        pseudo = bytes(pkt[8:40]) + struct.pack(">IxxxB", len(pkt) - ihl, 6)
    pkt[ihl + 16 : ihl + 18] = struct.pack(">H", naive_sum(pseudo))
    assert complete_checksum(pkt, ihl, 16)
    assert tcp_checksum_ok(bytes(pkt))
    assert naive_sum(bytes(pkt[ihl + 16 : ihl + 18])) in (
        naive_sum(good[ihl + 16 : ihl + 18]),
        0xFFFF ^ 0xFFFF,
        0xFFFF,
    )


def _expand(parts: list[bytes | bytearray | memoryview]) -> tuple[bytes, bytes]:
    blob = b"".join(bytes(p) for p in parts)
    return blob[:10], blob[10:]


@settings(max_examples=60, deadline=None)
@given(
    version=st.sampled_from([4, 6]),
    payload=st.binary(min_size=1, max_size=30000),
    gso=st.integers(min_value=100, max_value=1400),
    psh=st.booleans(),
)
def test_coalesce_undoes_segmentation(version: int, payload: bytes, gso: int, psh: bool) -> None:
    seq = 0xFFFFF000  # wraps for larger payloads
    flags = 0x18 if psh else 0x10
    sup = make_tcp(version, payload, seq, flags, b"\x01\x01\x08\x0a" + bytes(range(8)))
    out = bytearray(len(sup) * 2 + 100 * (len(payload) // gso + 1))
    lengths: list[int] = []
    count = segment_tcp(sup, gso, out, lengths)
    segs = []
    pos = 0
    for i in range(count):
        segs.append(bytes(out[pos : pos + lengths[i]]))
        pos += lengths[i]
    co = TcpCoalescer()
    for seg in segs:
        co.add(seg)
    writes = co.flush()
    assert len(writes) == 1
    vnet, packet = _expand(writes[0])
    ihl = 20 if version == 4 else 40
    if count == 1:
        assert vnet == ZERO_VNET_HDR
        assert packet == segs[0]
        return
    flags_v, gso_type, hdr_len, gso_size, start, offset = VNET_HDR.unpack(vnet)
    assert flags_v == VIRTIO_NET_HDR_F_NEEDS_CSUM
    assert gso_type == (VIRTIO_NET_HDR_GSO_TCPV4 if version == 4 else VIRTIO_NET_HDR_GSO_TCPV6)
    assert (hdr_len, gso_size, start, offset) == (ihl + 32, gso, ihl, 16)
    # The kernel would finish the checksum: do it, then it must verify from scratch, and the
    # packet must be the original super-packet (but for the IPv4 identification).
    full = bytearray(packet)
    assert complete_checksum(full, start, offset)
    assert tcp_checksum_ok(bytes(full))
    assert full[ihl + 13] == flags
    if version == 4:
        assert full[:4] == sup[:4] and full[6:10] == sup[6:10] and full[12:] == sup[12:]
    else:
        assert full == sup
    assert co.merged == count


def test_coalesce_keeps_flows_and_gaps_apart() -> None:
    a1 = make_tcp(4, b"a" * 100, 1000)
    a2 = make_tcp(4, b"a" * 100, 1100)
    gap = make_tcp(4, b"a" * 100, 1300)  # a hole before it
    syn = make_tcp(4, b"", 5, flags=0x02)
    co = TcpCoalescer()
    for p in (a1, a2, gap, syn):
        co.add(p)
    writes = co.flush()
    assert len(writes) == 3
    assert VNET_HDR.unpack(bytes(writes[0][0]))[1] == VIRTIO_NET_HDR_GSO_TCPV4
    assert writes[1] == [ZERO_VNET_HDR, gap]
    assert writes[2] == [ZERO_VNET_HDR, syn]
    assert co.flush() == []


def test_offload_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    for value, expected in (
        ("", (True, True, True, True)),
        ("auto", (True, True, True, True)),
        ("off", (False, False, False, False)),
        ("udp", (True, False, False, False)),
        ("udp, tun", (True, True, False, False)),
        ("udp,tun,tso", (True, True, True, False)),
    ):
        monkeypatch.setenv("P2PTUN_OFFLOAD", value)
        kinds = ("udp", "tun", "tso", "partial")
        assert tuple(offload_wanted(k) for k in kinds) == expected
    monkeypatch.delenv("P2PTUN_OFFLOAD")
    assert offload_wanted("tso")


def make_udp(version: int, payload: bytes, ident: int = 7) -> bytearray:
    """A UDP packet with valid checksums, built the slow way."""
    udp = struct.pack(">HHHH", 40000, 443, 8 + len(payload), 0) + payload
    if version == 4:
        ip = struct.pack(
            ">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), ident, 0x4000, 64, 17, 0,
            bytes([10, 77, 0, 1]), bytes([10, 77, 0, 2]),
        )  # fmt: skip
        ip = ip[:10] + struct.pack(">H", 0xFFFF ^ naive_sum(ip)) + ip[12:]
        pseudo = ip[12:20] + struct.pack(">BBH", 0, 17, len(udp))
    else:
        ip = struct.pack(">IHBB16s16s", 0x60000000, len(udp), 17, 64, b"\xfd" + bytes(14) + b"\x01",
                         b"\xfd" + bytes(14) + b"\x02")  # fmt: skip
        pseudo = ip[8:40] + struct.pack(">IxxxB", len(udp), 17)
    c = 0xFFFF ^ naive_sum(pseudo + udp)
    udp = udp[:6] + struct.pack(">H", c or 0xFFFF) + udp[8:]
    return bytearray(ip + udp)


def udp_checksum_ok(packet: bytes) -> bool:
    ihl = (packet[0] & 0x0F) * 4 if packet[0] >> 4 == 4 else 40
    if packet[0] >> 4 == 4:
        assert naive_sum(packet[:ihl]) == 0xFFFF, "IPv4 header checksum"
        pseudo = packet[12:20] + struct.pack(">BBH", 0, 17, len(packet) - ihl)
    else:
        pseudo = packet[8:40] + struct.pack(">IxxxB", len(packet) - ihl, 17)
    assert (packet[ihl + 4] << 8) | packet[ihl + 5] == len(packet) - ihl
    return naive_sum(pseudo + packet[ihl:]) == 0xFFFF


@settings(max_examples=60, deadline=None)
@given(
    version=st.sampled_from([4, 6]),
    payload=st.binary(min_size=1, max_size=20000),
    gso=st.integers(min_value=1, max_value=1400),
)
def test_segment_udp_and_coalesce_it_back(version: int, payload: bytes, gso: int) -> None:
    """A UDP super-datagram (an application's UDP_SEGMENT send) cuts into datagrams whose
    checksums verify from scratch; a UDP-capable coalescer merges them back into one UDP GSO
    packet that, completed as the kernel would, is the super-datagram again."""
    sup = make_udp(version, payload)
    ihl = 20 if version == 4 else 40
    sup[ihl + 6 : ihl + 8] = b"\x12\x34"  # the kernel's partial checksum: not looked at
    out = bytearray(len(sup) * 2 + 64 * (len(payload) // gso + 1))
    lengths: list[int] = []
    count = segment_udp(sup, gso, out, lengths)
    assert count == (len(payload) + gso - 1) // gso
    datagrams, pos = [], 0
    for i in range(count):
        d = bytes(out[pos : pos + lengths[i]])
        pos += lengths[i]
        assert udp_checksum_ok(d)
        assert d[ihl + 8 :] == payload[i * gso : (i + 1) * gso]
        if version == 4:
            assert (d[4] << 8) | d[5] == 7 + i
        datagrams.append(d)
    co = TcpCoalescer(udp=True)
    for d in datagrams:
        co.add(d)
    writes = co.flush()
    runs = (count + UDP_MAX_SEGMENTS - 1) // UDP_MAX_SEGMENTS
    if len(payload) + ihl + 8 > 65535:
        assert len(writes) >= runs
        return
    assert len(writes) == runs
    if count == 1:
        assert writes[0] == [ZERO_VNET_HDR, datagrams[0]]
        return
    vnet, packet = _expand(writes[0])
    flags, gso_type, hdr_len, gso_size, start, offset = VNET_HDR.unpack(vnet)
    assert (flags, gso_type) == (VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_UDP_L4)
    assert (hdr_len, gso_size, start, offset) == (ihl + 8, gso, ihl, 6)
    full = bytearray(packet)
    assert complete_checksum(full, start, offset)
    assert udp_checksum_ok(bytes(full))
    merged = min(count, UDP_MAX_SEGMENTS)
    assert full[ihl + 8 :] == payload[: merged * gso]


def test_udp_runs_break_on_flow_size_and_tcp() -> None:
    """Only consecutive datagrams of one flow with the run's size merge (a shorter one ends
    the run); a TCP segment or another flow in between closes it; without ``udp`` nothing
    merges."""
    a = [make_udp(4, bytes([i]) * 1000, ident=i) for i in range(3)]
    short = make_udp(4, b"s" * 10)
    other = make_udp(4, b"o" * 1000)
    other[ihl := 20] = 0x9D  # another source port
    other[ihl + 6 : ihl + 8] = b"\0\0"  # (IPv4 UDP: no checksum)
    tcp = make_tcp(4, b"t" * 100, 1)
    co = TcpCoalescer(udp=True)
    for p in (a[0], a[1], short, a[2], other, tcp, a[0], a[1]):
        co.add(p)
    writes = co.flush()
    kinds = [VNET_HDR.unpack(bytes(w[0]))[1] for w in writes]
    assert kinds == [VIRTIO_NET_HDR_GSO_UDP_L4, 0, 0, 0, VIRTIO_NET_HDR_GSO_UDP_L4]
    assert writes[1] == [ZERO_VNET_HDR, a[2]] and writes[2] == [ZERO_VNET_HDR, other]
    assert co.merged == 3 + 2
    plain = TcpCoalescer()
    for p in a:
        plain.add(p)
    assert [w[0] for w in plain.flush()] == [ZERO_VNET_HDR] * 3


def test_segment_udp_rejects_what_it_cannot_cut() -> None:
    assert segment_udp(make_tcp(4, b"x" * 100, 1), 10, bytearray(5000), []) == 0
    assert segment_udp(make_udp(4, b"x" * 100), 0, bytearray(5000), []) == 0
    assert segment_udp(make_udp(4, b"x" * 100), 10, bytearray(50), []) == 0

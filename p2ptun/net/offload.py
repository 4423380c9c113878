"""Segmentation and coalescing offloads for the data path (UDP GSO/GRO, TUN TSO/GRO).

The kernel can move 64 KiB at a time across a system call if both sides agree:

* **TUN TSO** (``IFF_VNET_HDR`` + ``TUNSETOFFLOAD``): a read from the TUN device returns one
  TCP *super-packet* of up to 64 KiB behind a ``struct virtio_net_hdr``. WireGuard encrypts per
  inner packet, so :func:`segment_tcp` cuts it into MSS-sized TCP/IP packets — IP and TCP
  headers fixed, checksums computed from scratch — *before* encryption. A packet with only a
  partial checksum (``VIRTIO_NET_HDR_F_NEEDS_CSUM``) is completed by :func:`complete_checksum`.
* **Partial inner checksums** (between p2ptun peers that both agree, see
  :mod:`p2ptun.signal.features`): :func:`segment_tcp` and :func:`mark_partial` leave each TCP
  segment's checksum *partial* — the pseudo-header sum, as the kernel leaves it — instead of
  summing its payload; the receiver writes such a segment with ``VIRTIO_NET_HDR_F_NEEDS_CSUM``
  (:func:`lone_vnet_header`), as it already does for merged super-packets, so the kernel
  completes the checksum if the packet leaves the host and verifies nothing it did not
  compute when it is delivered locally. WireGuard's AEAD has authenticated every byte. Towards
  any other WireGuard implementation checksums stay complete.
* **TUN GRO**: decrypted TCP segments that continue each other are merged by
  :class:`TcpCoalescer` into one super-packet written with a virtio header (GSO type TCP,
  partial checksum), so the receiving TCP stack handles 64 KiB at once. The parts are written
  with one ``writev``; nothing is copied.
* **TUN USO** (``TUN_F_USO4``/``TUN_F_USO6``, Linux ≥ 6.2): an application that sends UDP with
  ``UDP_SEGMENT`` (QUIC stacks do) hands the TUN device a UDP *super-datagram*;
  :func:`segment_udp` cuts it into its datagrams before encryption. The other way,
  :class:`TcpCoalescer` merges consecutive decrypted datagrams of one UDP flow with equal
  sizes into one UDP GSO packet (``VIRTIO_NET_HDR_GSO_UDP_L4``), one ``writev`` for the run.
* **UDP GSO** (``UDP_SEGMENT``): one ``sendmsg`` carries a run of same-size datagrams to one
  address (see :meth:`p2ptun.net.udp.UdpEndpoint.send_batch`).
* **UDP GRO** (``UDP_GRO``): one ``recvmsg`` may return several datagrams of one flow glued
  together; the ``UDP_GRO`` control message gives their size (every one but the last has it),
  and the wire format is self-delimiting per datagram, so they are split again before
  demultiplexing.

Each offload is probed when the socket or device is set up and falls back to one packet per
system call when the kernel refuses. ``P2PTUN_OFFLOAD=off`` (environment) turns all of them off;
a comma-separated list keeps only the families named: ``udp`` (GSO and GRO), ``tun`` (the virtio
header and GRO on TUN writes), ``tso`` (TSO on TUN reads; needs ``tun``), ``partial`` (partial
inner checksums with p2ptun peers, both ways; needs ``tun``), ``uso`` (UDP segmentation on
the TUN device both ways; needs ``tso``). Tests use it to prove every path.

The functions here are pure byte manipulation (no I/O), so they are tested with hypothesis
against checksums computed from scratch.
"""

from __future__ import annotations

import os
import struct

# <linux/udp.h>
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
UDP_MAX_SEGMENTS = 64
"""The kernel's limit on datagrams per GSO send (``UDP_MAX_SEGMENTS``)."""
MAX_GSO_BYTES = 65000
"""Keep a GSO send's payload below the 64 KiB an IP packet can hold, headers included."""

# <linux/virtio_net.h>
VNET_HDR = struct.Struct("<BBHHHH")
"""``struct virtio_net_hdr``: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset."""
VNET_HDR_LEN = VNET_HDR.size
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_TCPV6 = 4
VIRTIO_NET_HDR_GSO_UDP_L4 = 5
VIRTIO_NET_HDR_GSO_ECN = 0x80
ZERO_VNET_HDR = bytes(VNET_HDR_LEN)

IPPROTO_TCP = 6
IPPROTO_UDP = 17
TCP_CSUM_OFFSET = 16
UDP_CSUM_OFFSET = 6
UDP_HEADER_LEN = 8

_FIN, _SYN, _RST, _PSH, _ACK, _URG, _ECE, _CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80
_MAX_SUPER = 65535
_U16 = struct.Struct(">H")
_U16X2 = struct.Struct(">HH")
_U32 = struct.Struct(">I")


def offload_wanted(kind: str) -> bool:
    """Whether the environment allows offload family ``kind`` (``udp``, ``tun``, ``tso``,
    ``partial`` or ``uso``).

    ``P2PTUN_OFFLOAD`` unset, ``auto`` or ``on``: every offload the kernel accepts;
    ``off``: none; otherwise a comma-separated list of the families to use.
    """
    raw = os.environ.get("P2PTUN_OFFLOAD", "auto").strip().lower()
    if raw in ("", "auto", "on", "1", "yes"):
        return True
    if raw in ("off", "0", "no", "none"):
        return False
    return kind in {part.strip() for part in raw.split(",")}


# -- checksums (RFC 1071) ----------------------------------------------------------------------


def ones_sum(data: bytes | bytearray | memoryview) -> int:
    """The 16-bit one's-complement sum of ``data`` (zero-padded to even length), in 0..0xFFFF.

    2**16 ≡ 1 (mod 0xFFFF), so the big-endian integer of the data is congruent to the sum of
    its 16-bit words: one C-speed conversion and one modulo instead of a Python loop. The
    result is 0 only for all-zero data (end-around carry never yields 0 otherwise).
    """
    n = int.from_bytes(data, "big")
    if len(data) & 1:
        n <<= 8
    r = n % 0xFFFF
    return 0xFFFF if r == 0 and n else r


def fold(total: int) -> int:
    """Fold a sum of :func:`ones_sum` values (any size) back into 0..0xFFFF."""
    r = total % 0xFFFF
    return 0xFFFF if r == 0 and total else r


def pseudo_sum(
    packet: bytes | bytearray | memoryview, version: int, l4_len: int, proto: int = IPPROTO_TCP
) -> int:
    """The pseudo-header sum (addresses, ``proto``, ``l4_len``) of an IP ``packet``."""
    addrs = packet[12:20] if version == 4 else packet[8:40]
    return ones_sum(addrs) + proto + l4_len


def ipv4_header_checksum(buf: bytearray | memoryview, off: int, ihl: int) -> None:
    """Recompute the IPv4 header checksum of the header at ``buf[off:off+ihl]`` in place."""
    buf[off + 10] = 0
    buf[off + 11] = 0
    c = 0xFFFF ^ ones_sum(buf[off : off + ihl])
    buf[off + 10] = c >> 8
    buf[off + 11] = c & 0xFF


def complete_checksum(packet: bytearray | memoryview, csum_start: int, csum_offset: int) -> bool:
    """Finish a partial checksum (``VIRTIO_NET_HDR_F_NEEDS_CSUM``) in place.

    The kernel left the pseudo-header sum in the checksum field; the checksum is the
    complement of the sum from ``csum_start`` to the end. False if the offsets do not fit.
    """
    pos = csum_start + csum_offset
    if csum_start >= len(packet) or pos + 2 > len(packet):
        return False
    c = 0xFFFF ^ ones_sum(packet[csum_start:])
    if c == 0 and csum_offset == 6:  # UDP: 0 means "no checksum"
        c = 0xFFFF
    packet[pos] = c >> 8
    packet[pos + 1] = c & 0xFF
    return True


def partial_tcp_checksum(packet: bytes | bytearray | memoryview, version: int, ihl: int) -> int:
    """The value a partial TCP checksum field holds: the folded pseudo-header sum for the
    packet's addresses and TCP length, not complemented (what the kernel leaves for
    ``CHECKSUM_PARTIAL``)."""
    return fold(pseudo_sum(packet, version, _ip_length(packet, version) - ihl))


def mark_partial(packet: bytearray | memoryview, csum_start: int, csum_offset: int) -> bool:
    """Make a ``VIRTIO_NET_HDR_F_NEEDS_CSUM`` TCP packet's checksum field exactly
    :func:`partial_tcp_checksum` (the value a receiver recognises), without summing its
    payload. False — the caller completes the checksum instead — unless the packet is plain
    TCP (:func:`tcp_headers`) whose partial checksum starts at the TCP header."""
    hdrs = tcp_headers(packet)
    if hdrs is None or csum_offset != TCP_CSUM_OFFSET or csum_start != hdrs[1]:
        return False
    version, ihl, _thl = hdrs
    if _ip_length(packet, version) != len(packet):
        return False
    _U16.pack_into(packet, ihl + TCP_CSUM_OFFSET, partial_tcp_checksum(packet, version, ihl))
    return True


def lone_vnet_header(
    packet: bytes | bytearray | memoryview, version: int, ihl: int, hlen: int
) -> bytes:
    """The virtio header for writing one TCP packet as it came: partial checksum if its
    checksum field holds exactly :func:`partial_tcp_checksum` (a peer left it partial),
    else none (the kernel verifies the full checksum).

    A complete checksum that happens to equal the pseudo-header sum (1 in 65,536) is
    recognised as partial too, which is harmless: completing it from that field gives the
    same complete checksum (the field is the sum the kernel starts from), and a local
    delivery skips a check the AEAD made needless.
    """
    field = (packet[ihl + TCP_CSUM_OFFSET] << 8) | packet[ihl + TCP_CSUM_OFFSET + 1]
    if field != partial_tcp_checksum(packet, version, ihl):
        return ZERO_VNET_HDR
    return VNET_HDR.pack(
        VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE, hlen, 0, ihl, TCP_CSUM_OFFSET
    )


# -- segmentation (TSO on the TUN read side) ---------------------------------------------------


def _plain_ip(
    packet: bytes | bytearray | memoryview, proto: int, min_l4: int
) -> tuple[int, int] | None:
    """``(ip_version, ip_header_len)`` when ``packet`` is IPv4 (not a fragment) or IPv6 (no
    extension header) carrying ``proto`` with room for ``min_l4`` bytes of its header."""
    size = len(packet)
    if size < 20 + min_l4:
        return None
    version = packet[0] >> 4
    if version == 4:
        ihl = (packet[0] & 0x0F) * 4
        if ihl < 20 or packet[9] != proto or (packet[6] & 0x3F) or packet[7]:
            return None
    elif version == 6:
        ihl = 40
        if packet[6] != proto:
            return None
    else:
        return None
    if size < ihl + min_l4:
        return None
    return version, ihl


def tcp_headers(packet: bytes | bytearray | memoryview) -> tuple[int, int, int] | None:
    """``(ip_version, ip_header_len, tcp_header_len)`` of a plain IPv4/IPv6 TCP packet.

    None for anything else (IPv6 extension headers, IPv4 fragments, truncated headers):
    such packets are neither segmented nor coalesced. The IP checks of :func:`_plain_ip`,
    written out: this runs for every TCP packet either way, and the call would add ~90 ns
    (a third of its time).
    """
    size = len(packet)
    if size < 40:
        return None
    version = packet[0] >> 4
    if version == 4:
        ihl = (packet[0] & 0x0F) * 4
        if ihl < 20 or packet[9] != IPPROTO_TCP or (packet[6] & 0x3F) or packet[7]:
            return None
    elif version == 6:
        ihl = 40
        if size < 60 or packet[6] != IPPROTO_TCP:
            return None
    else:
        return None
    if size < ihl + 20:
        return None
    thl = (packet[ihl + 12] >> 4) * 4
    if thl < 20 or size < ihl + thl:
        return None
    return version, ihl, thl


def _ip_length(packet: bytes | bytearray | memoryview, version: int) -> int:
    """The packet length its IP header claims."""
    if version == 4:
        return (packet[2] << 8) | packet[3]
    return 40 + ((packet[4] << 8) | packet[5])


def segment_tcp(
    packet: bytes | bytearray | memoryview,
    gso_size: int,
    out: bytearray,
    lengths: list[int],
    partial: bool = False,
) -> int:
    """Cut TCP super-packet ``packet`` into packets of at most ``gso_size`` payload bytes.

    Segment ``i`` is written to ``out`` right after segment ``i - 1`` (``lengths[i]`` its
    size; ``lengths`` is extended as needed), with the TCP sequence number advanced, FIN and
    PSH only on the last segment, CWR only on the first, the IPv4 identification incremented,
    the lengths set, and the IPv4 header and TCP checksums computed. Returns the number of
    segments, 0 if ``packet`` is not a TCP packet this can cut (the caller drops it). ``out``
    must hold ``len(packet) + segments * headers`` bytes.

    This runs for every segment the node sends, so the checksums are built from parts: the
    header words that are the same in every segment are summed once, and per segment only the
    changed fields and the payload are added (RFC 1071 §2: the sum is commutative). The
    payload is summed little-endian, which is the byte-swapped sum (RFC 1071 §2(B)); a
    little-endian integer needs no padding shift for an odd length, and converting one is
    cheaper than big-endian.

    With ``partial`` the TCP checksums are left partial (:func:`partial_tcp_checksum`, no
    payload sum): only for a peer that agreed to complete them (see the module).
    """
    hdrs = tcp_headers(packet)
    if hdrs is None or gso_size <= 0:
        return 0
    version, ihl, thl = hdrs
    hlen = ihl + thl
    total = min(len(packet), _ip_length(packet, version))
    payload_len = total - hlen
    if payload_len <= 0:
        return 0
    count = (payload_len + gso_size - 1) // gso_size
    if len(out) < payload_len + count * hlen:
        return 0
    while len(lengths) < count:
        lengths.append(0)
    header = bytearray(packet[:hlen])
    seq = int.from_bytes(header[ihl + 4 : ihl + 8], "big")
    flags = header[ihl + 13]
    # Constant parts of the sums: the fields that change per segment are zeroed first.
    if version == 4:
        ip_id = (header[4] << 8) | header[5]
        header[2:6] = b"\0\0\0\0"  # total length, identification
        header[10:12] = b"\0\0"  # header checksum
        ip_base = ones_sum(header[:ihl])
        addr_sum = ones_sum(header[12:20]) + IPPROTO_TCP + thl
    else:
        ip_id = ip_base = 0
        addr_sum = ones_sum(header[8:40]) + IPPROTO_TCP + thl
    header[ihl + 4 : ihl + 8] = b"\0\0\0\0"  # sequence number
    header[ihl + 13] = 0  # flags (the low byte of the data-offset word)
    header[ihl + 16 : ihl + 18] = b"\0\0"  # checksum
    tcp_base = ones_sum(header[ihl:hlen]) + addr_sum
    pseudo = addr_sum  # + chunk: the pseudo-header sum of a segment (its TCP length)
    view = memoryview(out)
    src = memoryview(packet)
    pack_u16 = _U16.pack_into
    pack_u32 = _U32.pack_into
    from_bytes = int.from_bytes
    seq_at = ihl + 4
    flags_at = ihl + 13
    csum_at = ihl + 16
    last = count - 1
    pos = 0
    start = hlen
    for i in range(count):
        chunk = gso_size if i < last else total - start
        size = hlen + chunk
        end = pos + hlen
        view[pos:end] = header
        view[end : end + chunk] = src[start : start + chunk]
        if version == 4:
            ident = (ip_id + i) & 0xFFFF
            acc = ip_base + size + ident
            r = acc % 0xFFFF
            _U16X2.pack_into(out, pos + 2, size, ident)
            pack_u16(out, pos + 10, 0xFFFF ^ (r or 0xFFFF))
        else:
            pack_u16(out, pos + 4, size - 40)
        s = (seq + i * gso_size) & 0xFFFFFFFF
        pack_u32(out, pos + seq_at, s)
        f = flags
        if i:
            f &= ~_CWR
        if i != last:
            f &= ~(_FIN | _PSH)
        out[pos + flags_at] = f
        if partial:
            r = (pseudo + chunk) % 0xFFFF
            pack_u16(out, pos + csum_at, r or 0xFFFF)
        else:
            p = from_bytes(src[start : start + chunk], "little") % 0xFFFF
            acc = tcp_base + chunk + (s >> 16) + (s & 0xFFFF) + f + (((p & 0xFF) << 8) | (p >> 8))
            r = acc % 0xFFFF
            pack_u16(out, pos + csum_at, 0xFFFF ^ (r or 0xFFFF))
        lengths[i] = size
        pos += size
        start += chunk
    return count


def udp_headers(packet: bytes | bytearray | memoryview) -> tuple[int, int] | None:
    """``(ip_version, ip_header_len)`` of a plain IPv4/IPv6 UDP packet whose lengths agree
    with what was read; None for anything else (fragments, extension headers, truncation)."""
    ip = _plain_ip(packet, IPPROTO_UDP, UDP_HEADER_LEN)
    if ip is None:
        return None
    version, ihl = ip
    size = len(packet)
    if _ip_length(packet, version) != size:
        return None
    if (packet[ihl + 4] << 8) | packet[ihl + 5] != size - ihl:
        return None
    return version, ihl


def segment_udp(
    packet: bytes | bytearray | memoryview,
    gso_size: int,
    out: bytearray,
    lengths: list[int],
) -> int:
    """Cut UDP super-datagram ``packet`` (``VIRTIO_NET_HDR_GSO_UDP_L4``) into datagrams of
    ``gso_size`` payload bytes (the last may be shorter), laid out in ``out`` like
    :func:`segment_tcp`'s segments: IP and UDP lengths set, the IPv4 identification
    incremented, the IPv4 header and UDP checksums computed (a zero UDP checksum goes out as
    0xFFFF, RFC 768). Returns the number of datagrams, 0 if ``packet`` is not one this can
    cut."""
    ip = _plain_ip(packet, IPPROTO_UDP, UDP_HEADER_LEN)
    if ip is None or gso_size <= 0:
        return 0
    version, ihl = ip
    hlen = ihl + UDP_HEADER_LEN
    total = min(len(packet), _ip_length(packet, version))
    payload_len = total - hlen
    if payload_len <= 0:
        return 0
    count = (payload_len + gso_size - 1) // gso_size
    if len(out) < payload_len + count * hlen:
        return 0
    while len(lengths) < count:
        lengths.append(0)
    header = bytearray(packet[:hlen])
    if version == 4:
        ip_id = (header[4] << 8) | header[5]
        header[2:6] = b"\0\0\0\0"
        header[10:12] = b"\0\0"
        ip_base = ones_sum(header[:ihl])
        addr_sum = ones_sum(header[12:20]) + IPPROTO_UDP
    else:
        ip_id = ip_base = 0
        addr_sum = ones_sum(header[8:40]) + IPPROTO_UDP
    header[ihl + 4 : ihl + 8] = b"\0\0\0\0"  # length, checksum
    port_sum = ones_sum(header[ihl : ihl + 4])
    view = memoryview(out)
    src = memoryview(packet)
    pack_u16 = _U16.pack_into
    pos = 0
    start = hlen
    for i in range(count):
        chunk = min(gso_size, total - start)
        size = hlen + chunk
        udp_len = UDP_HEADER_LEN + chunk
        view[pos : pos + hlen] = header
        view[pos + hlen : pos + size] = src[start : start + chunk]
        if version == 4:
            ident = (ip_id + i) & 0xFFFF
            r = (ip_base + size + ident) % 0xFFFF
            _U16X2.pack_into(out, pos + 2, size, ident)
            pack_u16(out, pos + 10, 0xFFFF ^ (r or 0xFFFF))
        else:
            pack_u16(out, pos + 4, udp_len)
        pack_u16(out, pos + ihl + 4, udp_len)
        total_sum = addr_sum + port_sum + 2 * udp_len + ones_sum(src[start : start + chunk])
        c = 0xFFFF ^ fold(total_sum)
        pack_u16(out, pos + ihl + UDP_CSUM_OFFSET, c or 0xFFFF)
        lengths[i] = size
        pos += size
        start += chunk
    return count


# -- coalescing (GRO on the TUN write side) ----------------------------------------------------


class TcpCoalescer:
    """Merge consecutive TCP segments of one flow into super-packets for a vnet-header TUN.

    Feed decrypted packets in order with :meth:`add`; :meth:`flush` returns what to write:
    a list of iovec lists, each one ``writev`` to a TUN device opened with ``IFF_VNET_HDR``
    (the virtio header first, then the packet, possibly in pieces). Two segments merge when
    the second continues the first's sequence space, every header byte except the IP
    length/identification/checksum and the TCP sequence number and checksum is equal, the
    earlier segments all carry ``gso_size`` payload bytes and no PSH, and neither carries SYN,
    FIN, RST, URG or CWR. A merged packet goes out as a TCP GSO packet with a partial
    checksum (the kernel verifies nothing it did not compute; WireGuard authenticated the
    bytes). Anything else goes out as it came: a TCP packet whose checksum a peer left
    partial behind a partial-checksum header (:func:`lone_vnet_header`), every other packet
    behind a zero virtio header.
    """

    def __init__(self, udp: bool = False) -> None:
        """``udp``: merge runs of UDP datagrams too (the TUN device takes UDP GSO packets:
        ``TUN_F_USO4``/``TUN_F_USO6``)."""
        self.udp = udp
        self._udp_run = False  # the open run is UDP datagrams, not TCP segments
        self._out: list[list[bytes | bytearray | memoryview]] = []
        self._open: list[bytes | bytearray | memoryview] | None = None
        self._key = b""
        self._version = 0
        self._ihl = 0
        self._hlen = 0
        self._gso = 0
        self._next_seq = 0
        self._size = 0
        self._count = 0
        self._first: bytes | bytearray | memoryview = b""
        self._psh = False
        self.merged = 0
        """Segments that went out inside a super-packet (for counters)."""

    def add(self, packet: bytes | bytearray | memoryview) -> None:
        """Queue one IP packet for writing (merged into the open super-packet if it can)."""
        hdrs = tcp_headers(packet)
        if hdrs is None:
            if self.udp:
                self._add_udp(packet)
                return
            self._close()
            self._out.append([ZERO_VNET_HDR, packet])
            return
        if self._udp_run:
            self._close()
        version, ihl, thl = hdrs
        hlen = ihl + thl
        total = _ip_length(packet, version)
        if total != len(packet):
            self._close()
            self._out.append([ZERO_VNET_HDR, packet])
            return
        payload = total - hlen
        flags = packet[ihl + 13]
        if payload <= 0 or flags & (_SYN | _FIN | _RST | _URG | _CWR) or not flags & _ACK:
            self._close()
            self._out.append([lone_vnet_header(packet, version, ihl, hlen), packet])
            return
        key = self._flow_key(packet, version, ihl, hlen)
        seq = int.from_bytes(packet[ihl + 4 : ihl + 8], "big")
        if (
            self._open is not None
            and key == self._key
            and seq == self._next_seq
            and payload <= self._gso
            and self._size + payload <= _MAX_SUPER
        ):
            self._open.append(memoryview(packet)[hlen:])
            self._size += payload
            self._count += 1
            self._next_seq = (seq + payload) & 0xFFFFFFFF
            if payload < self._gso or flags & _PSH:
                self._psh = bool(flags & _PSH)
                self._close()
            return
        self._close()
        self._open = [packet]
        self._first = packet
        self._key = key
        self._version = version
        self._ihl = ihl
        self._hlen = hlen
        self._gso = payload
        self._size = total
        self._count = 1
        self._next_seq = (seq + payload) & 0xFFFFFFFF
        self._psh = False
        if flags & _PSH:
            self._close()

    def _add_udp(self, packet: bytes | bytearray | memoryview) -> None:
        """A packet that is not TCP: merged into the open UDP run if it continues it (same
        flow, the run's datagram size, within 64 datagrams and 64 KiB), else it closes the
        open run and starts one (if UDP) or goes out alone."""
        hdrs = udp_headers(packet)
        if hdrs is None:
            self._close()
            self._out.append([ZERO_VNET_HDR, packet])
            return
        version, ihl = hdrs
        hlen = ihl + UDP_HEADER_LEN
        payload = len(packet) - hlen
        if payload <= 0:
            self._close()
            self._out.append([ZERO_VNET_HDR, packet])
            return
        key = self._udp_key(packet, version, ihl)
        if (
            self._open is not None
            and self._udp_run
            and key == self._key
            and payload <= self._gso
            and self._count < UDP_MAX_SEGMENTS
            and self._size + payload <= _MAX_SUPER
        ):
            self._open.append(memoryview(packet)[hlen:])
            self._size += payload
            self._count += 1
            if payload < self._gso:
                self._close()  # a shorter datagram can only be the last of a run
            return
        self._close()
        self._open = [packet]
        self._first = packet
        self._key = key
        self._version = version
        self._ihl = ihl
        self._hlen = hlen
        self._gso = payload
        self._size = len(packet)
        self._count = 1
        self._udp_run = True

    @staticmethod
    def _udp_key(packet: bytes | bytearray | memoryview, version: int, ihl: int) -> bytes:
        """The header bytes that must be equal for two datagrams to merge: all but the
        lengths, the IPv4 identification and the checksums."""
        if version == 4:
            return b"".join((packet[0:2], packet[6:10], packet[12:ihl], packet[ihl : ihl + 4]))
        return b"".join((packet[0:4], packet[6:44]))

    def _close_udp(self, parts: list[bytes | bytearray | memoryview]) -> None:
        first = self._first
        version, ihl, hlen, size = self._version, self._ihl, self._hlen, self._size
        if self._count == 1:
            self._out.append([ZERO_VNET_HDR, first])
            return
        header = bytearray(first[:hlen])
        if version == 4:
            _U16.pack_into(header, 2, size)
            ipv4_header_checksum(header, 0, ihl)
        else:
            _U16.pack_into(header, 4, size - 40)
        _U16.pack_into(header, ihl + 4, size - ihl)
        # Partial checksum: the pseudo-header sum, not complemented (the kernel finishes it).
        psum = fold(pseudo_sum(header, version, size - ihl, IPPROTO_UDP))
        _U16.pack_into(header, ihl + UDP_CSUM_OFFSET, psum)
        vnet = VNET_HDR.pack(
            VIRTIO_NET_HDR_F_NEEDS_CSUM,
            VIRTIO_NET_HDR_GSO_UDP_L4,
            hlen,
            self._gso,
            ihl,
            UDP_CSUM_OFFSET,
        )
        parts[0] = memoryview(first)[hlen:]
        self._out.append([vnet, header, *parts])
        self.merged += self._count

    @staticmethod
    def _flow_key(
        packet: bytes | bytearray | memoryview, version: int, ihl: int, hlen: int
    ) -> bytes:
        """The header bytes that must be equal for two segments to merge."""
        if version == 4:
            # version/ihl/tos, flags/fragment, ttl/protocol, addresses, options; TCP: ports,
            # then ack/offset/flags/window, urgent pointer and options.
            return b"".join(
                (
                    packet[0:2],
                    packet[6:10],
                    packet[12:ihl],
                    packet[ihl : ihl + 4],
                    packet[ihl + 8 : ihl + 16],
                    packet[ihl + 18 : hlen],
                )
            )
        return b"".join(
            (
                packet[0:4],
                packet[6:40],
                packet[40:44],
                packet[48:56],
                packet[58:hlen],
            )
        )

    def _close(self) -> None:
        parts = self._open
        if parts is None:
            return
        self._open = None
        if self._udp_run:
            self._udp_run = False
            self._close_udp(parts)
            return
        first = self._first
        version, ihl, hlen = self._version, self._ihl, self._hlen
        if self._count == 1:
            self._out.append([lone_vnet_header(first, version, ihl, hlen), first])
            return
        header = bytearray(first[:hlen])
        size = self._size
        if version == 4:
            header[2] = size >> 8
            header[3] = size & 0xFF
            ipv4_header_checksum(header, 0, ihl)
            gso_type = VIRTIO_NET_HDR_GSO_TCPV4
        else:
            plen = size - 40
            header[4] = plen >> 8
            header[5] = plen & 0xFF
            gso_type = VIRTIO_NET_HDR_GSO_TCPV6
        # Partial checksum: the pseudo-header sum, not complemented (the kernel finishes it).
        psum = fold(pseudo_sum(header, version, size - ihl))
        header[ihl + 16] = psum >> 8
        header[ihl + 17] = psum & 0xFF
        if self._psh:  # PSH of the last segment belongs on the merged packet
            header[ihl + 13] |= _PSH
        vnet = VNET_HDR.pack(
            VIRTIO_NET_HDR_F_NEEDS_CSUM, gso_type, hlen, self._gso, ihl, TCP_CSUM_OFFSET
        )
        parts[0] = memoryview(first)[hlen:]
        self._out.append([vnet, header, *parts])
        self.merged += self._count

    def flush(self) -> list[list[bytes | bytearray | memoryview]]:
        """Close the open super-packet and return every queued write (then forget them)."""
        self._close()
        out, self._out = self._out, []
        return out

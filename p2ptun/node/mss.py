"""TCP MSS clamping for packets entering and leaving the tunnel.

The tunnel's MTU is smaller than the underlay's (the encapsulation costs up to 84 bytes, see
:data:`p2ptun.node.daemon.DEFAULT_MTU`). TCP endpoints normally learn that from the interface
MTU, but a host *behind* a node (routed through it) announces an MSS from its own 1500-byte
link, and path-MTU discovery through NATs and relays is often broken: large segments then
vanish and the connection hangs after the handshake ("black-holes"). Like
``iptables -j TCPMSS --clamp-mss-to-pmtu``, the data path rewrites the MSS option of every TCP
SYN (and SYN-ACK) that crosses the tunnel, in both directions, down to what fits:

* IPv4: ``mtu - 20 (IPv4 header) - 20 (TCP header)``;
* IPv6: ``mtu - 40 (IPv6 header) - 20 (TCP header)``.

Only SYN segments are touched; everything else is left alone after a few byte comparisons, so
the cost on the bulk path is negligible. The TCP checksum is updated incrementally
(RFC 1624, eqn. 3), so the rest of the packet is never re-summed. Malformed or truncated
packets are never modified.
"""

from __future__ import annotations

IPPROTO_TCP = 6
TCP_FLAG_SYN = 0x02
TCPOPT_EOL = 0
TCPOPT_NOP = 1
TCPOPT_MSS = 2

# IPv6 extension headers we step over to find TCP (RFC 8200 §4): hop-by-hop, routing,
# destination options. A fragment header (44) stops the walk: only a first fragment could
# carry the TCP header, and SYNs are never fragmented in practice.
_IPV6_EXT_HEADERS = frozenset({0, 43, 60})
_IPV6_MAX_EXT = 4


def mss_for_mtu(mtu: int) -> tuple[int, int]:
    """The largest MSS values (IPv4, IPv6) for segments that fit in ``mtu``-byte packets."""
    return mtu - 40, mtu - 60


def tcp_offset(packet: bytes | bytearray | memoryview, length: int) -> int:
    """Offset of the TCP header of a SYN segment in ``packet[:length]``, or -1 if the packet
    is not an unfragmented (first-fragment) TCP SYN with a complete header.

    The quick rejections come first: this runs on every packet of the data path.
    """
    if length < 40:
        return -1
    version = packet[0] >> 4
    if version == 4:
        if packet[9] != IPPROTO_TCP:
            return -1
        ihl = (packet[0] & 0x0F) * 4
        if ihl < 20 or (packet[6] & 0x1F) or packet[7]:  # not the first fragment
            return -1
        offset = ihl
    elif version == 6:
        nxt = packet[6]
        offset = 40
        hops = 0
        while nxt != IPPROTO_TCP:
            if nxt not in _IPV6_EXT_HEADERS or hops >= _IPV6_MAX_EXT or offset + 8 > length:
                return -1
            nxt = packet[offset]
            offset += (packet[offset + 1] + 1) * 8
            hops += 1
    else:
        return -1
    if offset + 20 > length or not packet[offset + 13] & TCP_FLAG_SYN:
        return -1
    return offset


def _fold(value: int) -> int:
    while value > 0xFFFF:
        value = (value & 0xFFFF) + (value >> 16)
    return value


def clamp_mss(packet: bytearray | memoryview, length: int, mss4: int, mss6: int) -> bool:
    """Lower the MSS option of a TCP SYN in ``packet[:length]`` (in place) to ``mss4`` (IPv4)
    or ``mss6`` (IPv6). Returns True if the packet was changed.

    Packets that are not SYNs, SYNs without an MSS option, and SYNs already announcing a
    smaller MSS are left as they are. The TCP checksum is patched incrementally.
    """
    tcp = tcp_offset(packet, length)
    if tcp < 0:
        return False
    limit = mss4 if packet[0] >> 4 == 4 else mss6
    header_len = (packet[tcp + 12] >> 4) * 4
    end = tcp + header_len
    if header_len < 20 or end > length:
        return False
    i = tcp + 20
    while i < end:
        kind = packet[i]
        if kind == TCPOPT_EOL:
            return False
        if kind == TCPOPT_NOP:
            i += 1
            continue
        if i + 1 >= end:
            return False
        size = packet[i + 1]
        if size < 2 or i + size > end:
            return False
        if kind == TCPOPT_MSS:
            if size != 4:
                return False
            old = (packet[i + 2] << 8) | packet[i + 3]
            if old <= limit:
                return False
            packet[i + 2] = limit >> 8
            packet[i + 3] = limit & 0xFF
            # The checksum sums 16-bit words at even offsets from the TCP header; a field at
            # an odd offset contributes its bytes swapped (one's-complement sums commute with
            # byte swapping, RFC 1071 §2(B)).
            if (i + 2 - tcp) & 1:
                old = ((old & 0xFF) << 8) | (old >> 8)
                new = ((limit & 0xFF) << 8) | (limit >> 8)
            else:
                new = limit
            checksum = (packet[tcp + 16] << 8) | packet[tcp + 17]
            # RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m')
            total = _fold((~checksum & 0xFFFF) + (~old & 0xFFFF) + new)
            checksum = ~total & 0xFFFF
            packet[tcp + 16] = checksum >> 8
            packet[tcp + 17] = checksum & 0xFF
            return True
        i += size
    return False

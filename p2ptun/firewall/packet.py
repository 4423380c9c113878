"""What the firewall reads of an IP packet: protocol, addresses, ports, fragment state.

The packets are the plaintext WireGuard just authenticated (inbound) or the TUN device gave
us (outbound), so they are well-formed more often than not, but nothing here trusts them:
every read is bounds-checked and a packet the parser cannot place is reported as malformed
(None), which the firewall drops and counts.

* IPv4 (RFC 791 §3.1): the header length from IHL; a fragment with a non-zero offset carries
  no transport header (a *non-first fragment*), the first one (offset 0, MF set) does.
* IPv6 (RFC 8200 §4): the extension headers hop-by-hop (0), routing (43), fragment (44),
  destination options (60) and AH (51, RFC 4302 §2.2: its length counts 32-bit words, minus
  2) are walked, at most :data:`MAX_EXTENSION_HEADERS` of them; a packet with more is
  malformed. A fragment header with a non-zero offset marks a non-first fragment.
* Ports are read for TCP (6), UDP (17), UDP-Lite (136) and SCTP (132), which all start with
  source and destination port; TCP must carry its flags byte too (RFC 9293 §3.1).
  Packets of other protocols (ICMP, ICMPv6, GRE, ...) and non-first fragments get port -1.
"""

from __future__ import annotations

from dataclasses import dataclass

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58
PROTO_SCTP = 132
PROTO_UDPLITE = 136

#: Protocols whose first four bytes are the source and destination port.
PORTED = frozenset({PROTO_TCP, PROTO_UDP, PROTO_SCTP, PROTO_UDPLITE})

_HOP_BY_HOP = 0
_ROUTING = 43
_FRAGMENT = 44
_AH = 51
_DEST_OPTS = 60
_EXTENSIONS = frozenset({_HOP_BY_HOP, _ROUTING, _DEST_OPTS})

MAX_EXTENSION_HEADERS = 8
"""IPv6 extension headers walked before a packet counts as malformed (RFC 8200 §4.1 expects
each at most once or twice; eight is generous and keeps the walk bounded)."""

NO_PORT = -1

TCP_FIN = 0x01
TCP_RST = 0x04


@dataclass(slots=True)
class PacketInfo:
    """The fields the rules and the flow table look at."""

    version: int
    proto: int
    src: bytes
    dst: bytes
    sport: int
    dport: int
    fragment: bool = False
    """A non-first fragment: no transport header, ports unknown (-1)."""
    tcp_flags: int = 0


def parse(packet: bytes | bytearray | memoryview) -> PacketInfo | None:
    """The firewall's view of ``packet`` (exactly one IP packet), or None if it is malformed."""
    size = len(packet)
    if size < 1:
        return None
    version = packet[0] >> 4
    if version == 4:
        if size < 20:
            return None
        ihl = (packet[0] & 0x0F) * 4
        if ihl < 20 or ihl > size:
            return None
        proto = packet[9]
        src = bytes(packet[12:16])
        dst = bytes(packet[16:20])
        offset = ((packet[6] & 0x1F) << 8) | packet[7]
        if offset:
            return PacketInfo(4, proto, src, dst, NO_PORT, NO_PORT, fragment=True)
        return _transport(4, proto, src, dst, packet, ihl, size)
    if version == 6:
        if size < 40:
            return None
        src = bytes(packet[8:24])
        dst = bytes(packet[24:40])
        proto = packet[6]
        off = 40
        for _ in range(MAX_EXTENSION_HEADERS):
            if proto in _EXTENSIONS:
                if off + 2 > size:
                    return None
                proto, off = packet[off], off + (packet[off + 1] + 1) * 8
            elif proto == _FRAGMENT:
                if off + 8 > size:
                    return None
                frag_offset = ((packet[off + 2] << 8) | packet[off + 3]) >> 3
                proto, off = packet[off], off + 8
                if frag_offset:
                    return PacketInfo(6, proto, src, dst, NO_PORT, NO_PORT, fragment=True)
            elif proto == _AH:
                if off + 2 > size:
                    return None
                proto, off = packet[off], off + (packet[off + 1] + 2) * 4
            else:
                break
        else:
            return None
        if off > size:
            return None
        return _transport(6, proto, src, dst, packet, off, size)
    return None


def _transport(
    version: int,
    proto: int,
    src: bytes,
    dst: bytes,
    packet: bytes | bytearray | memoryview,
    off: int,
    size: int,
) -> PacketInfo | None:
    if proto not in PORTED:
        return PacketInfo(version, proto, src, dst, NO_PORT, NO_PORT)
    need = 14 if proto == PROTO_TCP else 4
    if off + need > size:
        return None
    sport = (packet[off] << 8) | packet[off + 1]
    dport = (packet[off + 2] << 8) | packet[off + 3]
    flags = packet[off + 13] if proto == PROTO_TCP else 0
    return PacketInfo(version, proto, src, dst, sport, dport, tcp_flags=flags)

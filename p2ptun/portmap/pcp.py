"""PCP MAP messages (RFC 6887), encoded and decoded without I/O.

Only what a client mapping one UDP port needs: the MAP request (§7.1 common header, §11.1
opcode payload) and its response (§7.2, §11.1). Options are skipped (bounded by the message
size, §7); a response is at most 1100 bytes (§7) and anything larger, shorter, of another
opcode or not a response raises :class:`PcpDecodeError`.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from enum import IntEnum

from p2ptun.errors import DecodeError

#: The PCP server port on the gateway (RFC 6887 §19.1; NAT-PMP's too, RFC 6886 §3).
SERVER_PORT = 5351
#: The version this client speaks (RFC 6887 §7.1).
VERSION = 2
#: Largest PCP message (RFC 6887 §7).
MAX_MESSAGE = 1100
#: MAP opcode (RFC 6887 §19.2).
OPCODE_MAP = 1
#: Protocol number of UDP in the MAP payload (RFC 6887 §11.1: IANA protocol numbers).
PROTOCOL_UDP = 17
NONCE_SIZE = 12

_HEADER = struct.Struct("!BBHI16s")  # request: version, R|opcode, reserved, lifetime, client IP
_RESPONSE_HEADER = struct.Struct("!BBBBII12s")  # §7.2
_MAP = struct.Struct("!12sB3sHH16s")  # §11.1: nonce, protocol, reserved, ports, external IP
RESPONSE_SIZE = _RESPONSE_HEADER.size + _MAP.size  # 60


class PcpDecodeError(DecodeError):
    """A datagram that is not a PCP MAP response we can read."""


class ResultCode(IntEnum):
    """PCP result codes (RFC 6887 §7.4)."""

    SUCCESS = 0
    UNSUPP_VERSION = 1
    NOT_AUTHORIZED = 2
    MALFORMED_REQUEST = 3
    UNSUPP_OPCODE = 4
    UNSUPP_OPTION = 5
    MALFORMED_OPTION = 6
    NETWORK_FAILURE = 7
    NO_RESOURCES = 8
    UNSUPP_PROTOCOL = 9
    USER_EX_QUOTA = 10
    CANNOT_PROVIDE_EXTERNAL = 11
    ADDRESS_MISMATCH = 12
    EXCESSIVE_REMOTE_PEERS = 13


def _ip16(ip: str) -> bytes:
    """An address in PCP's 128-bit form: IPv4 as IPv4-mapped IPv6 (RFC 6887 §5)."""
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv4Address):
        return ipaddress.IPv6Address(f"::ffff:{addr}").packed
    return addr.packed


def _from_ip16(raw: bytes) -> str:
    addr = ipaddress.IPv6Address(raw)
    mapped = addr.ipv4_mapped
    return str(mapped) if mapped is not None else str(addr)


def encode_map(
    nonce: bytes,
    client_ip: str,
    internal_port: int,
    lifetime: int,
    *,
    suggested_port: int = 0,
    suggested_ip: str = "0.0.0.0",
) -> bytes:
    """A MAP request for UDP ``internal_port`` of ``client_ip`` (RFC 6887 §11.1).

    ``lifetime`` 0 deletes the mapping of the same nonce (§15); a suggested external port
    and address of zero let the server choose (§11.1: the all-zeros IPv4-mapped address).
    """
    if len(nonce) != NONCE_SIZE:
        raise ValueError("a PCP mapping nonce is 12 bytes")
    header = _HEADER.pack(VERSION, OPCODE_MAP, 0, lifetime, _ip16(client_ip))
    body = _MAP.pack(
        nonce, PROTOCOL_UDP, b"\0\0\0", internal_port, suggested_port, _ip16(suggested_ip)
    )
    return header + body


@dataclass(frozen=True)
class MapResponse:
    """A MAP response (RFC 6887 §7.2, §11.1). ``version`` is that of the reply: a server of
    another version answers with its own and UNSUPP_VERSION (§9)."""

    version: int
    result: int
    lifetime: int
    epoch: int
    nonce: bytes
    protocol: int
    internal_port: int
    external_port: int
    external_ip: str


def decode_version_reply(data: bytes) -> tuple[int, int] | None:
    """``(version, result)`` of an answer from a server of another version: a NAT-PMP server
    answers a version-2 request with its version 0 and result 1, UNSUPP_VERSION (RFC 6887 §9,
    RFC 6886 §3.5); None when ``data`` is of our version or too short to say."""
    if len(data) < 4 or len(data) > MAX_MESSAGE or data[0] == VERSION:
        return None
    if data[0] == 0:  # NAT-PMP: a 16-bit result code at offset 2
        return 0, int.from_bytes(data[2:4], "big")
    return data[0], data[3]


def decode_map_response(data: bytes) -> MapResponse:
    """Decode a MAP response; raises :class:`PcpDecodeError` for anything else."""
    size = len(data)
    if size > MAX_MESSAGE:
        raise PcpDecodeError(f"PCP message of {size} bytes exceeds {MAX_MESSAGE}")
    if size < RESPONSE_SIZE or size % 4:
        raise PcpDecodeError(f"PCP MAP response of {size} bytes")
    version, op, _, result, lifetime, epoch, _ = _RESPONSE_HEADER.unpack_from(data)
    if version != VERSION:
        raise PcpDecodeError(f"PCP version {version}")
    if not op & 0x80 or op & 0x7F != OPCODE_MAP:
        raise PcpDecodeError(f"not a MAP response (opcode byte {op:#x})")
    nonce, protocol, _, internal, external, ext_ip = _MAP.unpack_from(data, _RESPONSE_HEADER.size)
    # Options (§7.3) follow: each a 4-byte header and a length padded to 4; skipped, but
    # they must fit the message.
    offset = RESPONSE_SIZE
    while offset < size:
        if offset + 4 > size:
            raise PcpDecodeError("truncated PCP option")
        length = int.from_bytes(data[offset + 2 : offset + 4], "big")
        offset += 4 + (length + 3) // 4 * 4
        if offset > size:
            raise PcpDecodeError("PCP option runs past the message")
    return MapResponse(
        version, result, lifetime, epoch, nonce, protocol, internal, external, _from_ip16(ext_ip)
    )


__all__ = [
    "MAX_MESSAGE",
    "NONCE_SIZE",
    "PROTOCOL_UDP",
    "SERVER_PORT",
    "MapResponse",
    "PcpDecodeError",
    "ResultCode",
    "decode_map_response",
    "decode_version_reply",
    "encode_map",
]

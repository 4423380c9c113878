"""NAT-PMP messages (RFC 6886 §3), encoded and decoded without I/O.

The external-address request and response (§3.2) and the UDP mapping request and response
(§3.3; a lifetime of 0 deletes, §3.4). Responses have fixed sizes (12 and 16 bytes); anything
else raises :class:`NatPmpDecodeError`. The server listens on the gateway's port 5351.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from enum import IntEnum

from p2ptun.errors import DecodeError

VERSION = 0
OP_EXTERNAL_ADDRESS = 0
OP_MAP_UDP = 1
#: A response's opcode is the request's plus 128 (RFC 6886 §3.2, §3.3).
RESPONSE_BIT = 0x80

_ADDRESS_RESPONSE = struct.Struct("!BBHI4s")  # §3.2: 12 bytes
_MAP_REQUEST = struct.Struct("!BBHHHI")  # §3.3: 12 bytes
_MAP_RESPONSE = struct.Struct("!BBHIHHI")  # §3.3: 16 bytes


class NatPmpDecodeError(DecodeError):
    """A datagram that is not a NAT-PMP response we can read."""


class ResultCode(IntEnum):
    """NAT-PMP result codes (RFC 6886 §3.5)."""

    SUCCESS = 0
    UNSUPPORTED_VERSION = 1
    NOT_AUTHORIZED = 2
    NETWORK_FAILURE = 3
    OUT_OF_RESOURCES = 4
    UNSUPPORTED_OPCODE = 5


def encode_external_address_request() -> bytes:
    """The external-address request (RFC 6886 §3.2): also the cheapest "is anyone there"."""
    return bytes((VERSION, OP_EXTERNAL_ADDRESS))


def encode_map(internal_port: int, lifetime: int, suggested_port: int = 0) -> bytes:
    """A UDP mapping request (RFC 6886 §3.3); ``lifetime`` 0 with port 0 deletes (§3.4)."""
    return _MAP_REQUEST.pack(VERSION, OP_MAP_UDP, 0, internal_port, suggested_port, lifetime)


@dataclass(frozen=True)
class AddressResponse:
    result: int
    epoch: int
    external_ip: str


@dataclass(frozen=True)
class MapResponse:
    result: int
    epoch: int
    internal_port: int
    external_port: int
    lifetime: int


def decode(data: bytes) -> AddressResponse | MapResponse:
    """Decode a response (RFC 6886 §3.2, §3.3). A short answer with a non-zero result code
    (a server refusing our version or opcode, §3.5) decodes with the fields it lacks as 0."""
    size = len(data)
    if size < 4 or data[0] != VERSION or not data[1] & RESPONSE_BIT:
        raise NatPmpDecodeError("not a NAT-PMP response")
    op = data[1] & 0x7F
    result = int.from_bytes(data[2:4], "big")
    if op == OP_EXTERNAL_ADDRESS:
        if size == _ADDRESS_RESPONSE.size:
            _, _, _, epoch, ip = _ADDRESS_RESPONSE.unpack(data)
            return AddressResponse(result, epoch, str(ipaddress.IPv4Address(ip)))
        if result != ResultCode.SUCCESS and size in (4, 8):
            return AddressResponse(result, 0, "0.0.0.0")
    elif op == OP_MAP_UDP:
        if size == _MAP_RESPONSE.size:
            _, _, _, epoch, internal, external, lifetime = _MAP_RESPONSE.unpack(data)
            return MapResponse(result, epoch, internal, external, lifetime)
        if result != ResultCode.SUCCESS and size in (4, 8):
            return MapResponse(result, 0, 0, 0, 0)
    raise NatPmpDecodeError(f"NAT-PMP response of opcode {op} and {size} bytes")


__all__ = [
    "AddressResponse",
    "MapResponse",
    "NatPmpDecodeError",
    "ResultCode",
    "decode",
    "encode_external_address_request",
    "encode_map",
]

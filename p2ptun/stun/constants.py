"""STUN numbers: methods, classes, attribute types, error codes, password algorithms.

Everything here is an :class:`enum.IntEnum`, so members compare equal to the plain integers
that appear on the wire. Decoders keep values they do not know as plain ``int``.

References: RFC 8489 §5, §14, §18 (STUN); RFC 8445 §16 / §19.1 (ICE); RFC 8656 §17-18 (TURN).
"""

from __future__ import annotations

import enum

from p2ptun.errors import DecodeError

#: RFC 8489 §5: the fixed value in bytes 4-8 of every STUN message.
MAGIC_COOKIE = 0x2112A442
MAGIC_COOKIE_BYTES = MAGIC_COOKIE.to_bytes(4, "big")
#: RFC 8489 §5: size of the fixed header.
HEADER_LENGTH = 20
#: RFC 8489 §14.7: the FINGERPRINT CRC-32 is XOR-ed with this ("STUN").
FINGERPRINT_XOR = 0x5354554E
MAX_ATTRIBUTES = 64
"""Most attributes one STUN message may carry, counting every attribute on the wire (the
trailers and those after MESSAGE-INTEGRITY included). RFC 8489 sets no limit, but no usage
needs more than about 15 (a TURN Allocate or an ICE check carries fewer than 12); a message
with more is malformed here (:class:`StunDecodeError`), so the work one message can ask of a
decoder, a server's unknown-attribute check (RFC 8489 §6.3.1) and the UNKNOWN-ATTRIBUTES of
its 420 answer is bounded, whatever the message's size."""


class StunDecodeError(DecodeError):
    """Bytes that are not a well-formed STUN message or TURN ChannelData frame.

    The only exception the decoders in :mod:`p2ptun.stun` raise on bad input.
    """


class Method(enum.IntEnum):
    """STUN methods (RFC 8489 §18.2, RFC 8656 §17)."""

    BINDING = 0x001
    ALLOCATE = 0x003
    REFRESH = 0x004
    SEND = 0x006
    DATA = 0x007
    CREATE_PERMISSION = 0x008
    CHANNEL_BIND = 0x009


class MessageClass(enum.IntEnum):
    """The two class bits C1 C0 of the message type (RFC 8489 §5)."""

    REQUEST = 0b00
    INDICATION = 0b01
    SUCCESS = 0b10
    ERROR = 0b11


class AttrType(enum.IntEnum):
    """Attribute types (RFC 8489 §18.3, RFC 8445 §16.1, RFC 8656 §18).

    Types below 0x8000 are comprehension-required, 0x8000 and above comprehension-optional
    (RFC 8489 §15).
    """

    # RFC 8489 comprehension-required
    MAPPED_ADDRESS = 0x0001
    USERNAME = 0x0006
    MESSAGE_INTEGRITY = 0x0008
    ERROR_CODE = 0x0009
    UNKNOWN_ATTRIBUTES = 0x000A
    REALM = 0x0014
    NONCE = 0x0015
    MESSAGE_INTEGRITY_SHA256 = 0x001C
    PASSWORD_ALGORITHM = 0x001D
    USERHASH = 0x001E
    XOR_MAPPED_ADDRESS = 0x0020
    # RFC 8656 (TURN) comprehension-required
    CHANNEL_NUMBER = 0x000C
    LIFETIME = 0x000D
    XOR_PEER_ADDRESS = 0x0012
    DATA = 0x0013
    XOR_RELAYED_ADDRESS = 0x0016
    REQUESTED_ADDRESS_FAMILY = 0x0017
    EVEN_PORT = 0x0018
    REQUESTED_TRANSPORT = 0x0019
    DONT_FRAGMENT = 0x001A
    RESERVATION_TOKEN = 0x0022
    # RFC 8445 (ICE) comprehension-required
    PRIORITY = 0x0024
    USE_CANDIDATE = 0x0025
    # RFC 8489 comprehension-optional
    PASSWORD_ALGORITHMS = 0x8002
    ALTERNATE_DOMAIN = 0x8003
    SOFTWARE = 0x8022
    ALTERNATE_SERVER = 0x8023
    FINGERPRINT = 0x8028
    # RFC 8656 comprehension-optional
    ADDITIONAL_ADDRESS_FAMILY = 0x8000
    ADDRESS_ERROR_CODE = 0x8001
    ICMP = 0x8004
    # The same two before RFC 8656 gave them their numbers: coturn 4.6 (its "SSODA"
    # attributes) still sends and understands only these.
    ADDITIONAL_ADDRESS_FAMILY_DRAFT = 0x8032
    ADDRESS_ERROR_CODE_DRAFT = 0x8033
    # RFC 8445 comprehension-optional
    ICE_CONTROLLED = 0x8029
    ICE_CONTROLLING = 0x802A


def is_comprehension_required(attr_type: int) -> bool:
    """RFC 8489 §15: attribute types 0x0000-0x7FFF must be understood by the receiver."""
    return attr_type < 0x8000


class ErrorCode(enum.IntEnum):
    """ERROR-CODE values (RFC 8489 §14.8, RFC 8445 §7.3.1.1, RFC 8656 §18.12 / §19)."""

    TRY_ALTERNATE = 300
    BAD_REQUEST = 400
    UNAUTHENTICATED = 401
    FORBIDDEN = 403
    MOBILITY_FORBIDDEN = 405
    UNKNOWN_ATTRIBUTE = 420
    ALLOCATION_MISMATCH = 437
    STALE_NONCE = 438
    ADDRESS_FAMILY_NOT_SUPPORTED = 440
    WRONG_CREDENTIALS = 441
    UNSUPPORTED_TRANSPORT_PROTOCOL = 442
    PEER_ADDRESS_FAMILY_MISMATCH = 443
    ALLOCATION_QUOTA_REACHED = 486
    ROLE_CONFLICT = 487
    SERVER_ERROR = 500
    INSUFFICIENT_CAPACITY = 508


#: The reason phrases the RFCs suggest; used when an error response is built without one.
REASON_PHRASES: dict[int, str] = {
    300: "Try Alternate",
    400: "Bad Request",
    401: "Unauthenticated",
    403: "Forbidden",
    405: "Mobility Forbidden",
    420: "Unknown Attribute",
    437: "Allocation Mismatch",
    438: "Stale Nonce",
    440: "Address Family not Supported",
    441: "Wrong Credentials",
    442: "Unsupported Transport Protocol",
    443: "Peer Address Family Mismatch",
    486: "Allocation Quota Reached",
    487: "Role Conflict",
    500: "Server Error",
    508: "Insufficient Capacity",
}


class PasswordAlgorithm(enum.IntEnum):
    """PASSWORD-ALGORITHM numbers (RFC 8489 §18.5)."""

    MD5 = 0x0001
    SHA256 = 0x0002


class AddressFamily(enum.IntEnum):
    """The family byte of address attributes and REQUESTED-ADDRESS-FAMILY (RFC 8489 §14.1)."""

    IPV4 = 0x01
    IPV6 = 0x02


#: REQUESTED-TRANSPORT protocol number for UDP (RFC 8656 §18.7).
TRANSPORT_UDP = 17

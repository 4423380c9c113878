"""WireGuard message formats, types 1–4 (whitepaper §5.4.2–5.4.7, §5.4.6).

All integers are little-endian; every message starts with a one-byte type and three reserved
zero bytes. Sizes are fixed except for transport data:

======================  ====  =========================================================
message                 size  layout
======================  ====  =========================================================
handshake initiation    148   type, sender, ephemeral 32, static 32+16, timestamp 12+16,
                              mac1 16, mac2 16
handshake response       92   type, sender, receiver, ephemeral 32, empty 0+16, mac1, mac2
cookie reply             64   type, receiver, nonce 24, cookie 16+16
transport data         ≥ 32   type, receiver, counter 8, packet n+16
======================  ====  =========================================================

Decoders are bounded (lengths are checked before any slicing) and raise only
:class:`~p2ptun.wireguard.errors.WireGuardDecodeError`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from p2ptun.noise import DH_LEN, TAG_LEN
from p2ptun.wireguard.constants import MAC_LEN
from p2ptun.wireguard.errors import WireGuardDecodeError
from p2ptun.wireguard.tai64n import TAI64N_LEN
from p2ptun.wireguard.xchacha import XNONCE_LEN


class MessageType(IntEnum):
    """The first byte of a WireGuard message."""

    INITIATION = 1
    RESPONSE = 2
    COOKIE_REPLY = 3
    TRANSPORT = 4


INITIATION_LEN = 148
RESPONSE_LEN = 92
COOKIE_REPLY_LEN = 64
TRANSPORT_HEADER_LEN = 16
TRANSPORT_MIN_LEN = TRANSPORT_HEADER_LEN + TAG_LEN
"""A keepalive: header plus the tag of an empty plaintext."""
MAX_DATAGRAM = 65535
"""Upper bound on any datagram we decode (the largest UDP payload)."""
MACS_LEN = 2 * MAC_LEN
ENCRYPTED_STATIC_LEN = DH_LEN + TAG_LEN
ENCRYPTED_TIMESTAMP_LEN = TAI64N_LEN + TAG_LEN
ENCRYPTED_NOTHING_LEN = TAG_LEN
ENCRYPTED_COOKIE_LEN = MAC_LEN + TAG_LEN

_INITIATION = struct.Struct(f"<II{DH_LEN}s{ENCRYPTED_STATIC_LEN}s{ENCRYPTED_TIMESTAMP_LEN}s16s16s")
_RESPONSE = struct.Struct(f"<III{DH_LEN}s{ENCRYPTED_NOTHING_LEN}s16s16s")
_COOKIE_REPLY = struct.Struct(f"<II{XNONCE_LEN}s{ENCRYPTED_COOKIE_LEN}s")
TRANSPORT_HEADER = struct.Struct("<IIQ")
"""``type|reserved`` as one little-endian word (= 4), receiver index, counter."""

assert _INITIATION.size == INITIATION_LEN
assert _RESPONSE.size == RESPONSE_LEN
assert _COOKIE_REPLY.size == COOKIE_REPLY_LEN
assert TRANSPORT_HEADER.size == TRANSPORT_HEADER_LEN

_U32 = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class Initiation:
    """Handshake initiation (type 1, whitepaper §5.4.2)."""

    sender: int
    ephemeral: bytes
    encrypted_static: bytes
    encrypted_timestamp: bytes
    mac1: bytes = bytes(MAC_LEN)
    mac2: bytes = bytes(MAC_LEN)

    def encode(self) -> bytes:
        return _INITIATION.pack(
            MessageType.INITIATION,
            self.sender,
            self.ephemeral,
            self.encrypted_static,
            self.encrypted_timestamp,
            self.mac1,
            self.mac2,
        )

    @property
    def noise_message(self) -> bytes:
        """The Noise handshake bytes: ephemeral, encrypted static, encrypted timestamp."""
        return self.ephemeral + self.encrypted_static + self.encrypted_timestamp


@dataclass(frozen=True, slots=True)
class Response:
    """Handshake response (type 2, whitepaper §5.4.3)."""

    sender: int
    receiver: int
    ephemeral: bytes
    encrypted_nothing: bytes
    mac1: bytes = bytes(MAC_LEN)
    mac2: bytes = bytes(MAC_LEN)

    def encode(self) -> bytes:
        return _RESPONSE.pack(
            MessageType.RESPONSE,
            self.sender,
            self.receiver,
            self.ephemeral,
            self.encrypted_nothing,
            self.mac1,
            self.mac2,
        )

    @property
    def noise_message(self) -> bytes:
        return self.ephemeral + self.encrypted_nothing


@dataclass(frozen=True, slots=True)
class CookieReply:
    """Cookie reply (type 3, whitepaper §5.4.7)."""

    receiver: int
    nonce: bytes
    encrypted_cookie: bytes

    def encode(self) -> bytes:
        return _COOKIE_REPLY.pack(
            MessageType.COOKIE_REPLY, self.receiver, self.nonce, self.encrypted_cookie
        )


@dataclass(frozen=True, slots=True)
class TransportHeader:
    """The fixed part of a transport data message (type 4, whitepaper §5.4.6)."""

    receiver: int
    counter: int

    def encode(self) -> bytes:
        return TRANSPORT_HEADER.pack(MessageType.TRANSPORT, self.receiver, self.counter)


Message = Initiation | Response | CookieReply | TransportHeader


def _check_u32(name: str, value: int) -> None:
    if not 0 <= value <= _U32:
        raise ValueError(f"{name} must be a 32-bit unsigned integer")


def message_type(data: bytes | bytearray | memoryview) -> MessageType:
    """The type of a datagram that looks like WireGuard (first byte 1–4, then three zeros).

    This is the demultiplexing rule of docs/ARCHITECTURE.md §2; it does not check the length.
    """
    if len(data) < 4:
        raise WireGuardDecodeError("datagram shorter than a WireGuard message header")
    first = data[0]
    if not 1 <= first <= 4 or data[1] or data[2] or data[3]:
        raise WireGuardDecodeError("not a WireGuard message type")
    return MessageType(first)


def decode(data: bytes | bytearray | memoryview) -> Message:
    """Decode any WireGuard message; the transport payload is not returned (see below).

    For type 4 only the header is decoded; the caller slices ``data[16:]`` itself, because
    the data path works on buffers, not objects.
    """
    kind = message_type(data)
    size = len(data)
    if kind is MessageType.INITIATION:
        if size != INITIATION_LEN:
            raise WireGuardDecodeError(f"handshake initiation must be {INITIATION_LEN} bytes")
        _, sender, eph, static, ts, mac1, mac2 = _INITIATION.unpack(data)
        return Initiation(sender, eph, static, ts, mac1, mac2)
    if kind is MessageType.RESPONSE:
        if size != RESPONSE_LEN:
            raise WireGuardDecodeError(f"handshake response must be {RESPONSE_LEN} bytes")
        _, sender, receiver, eph, empty, mac1, mac2 = _RESPONSE.unpack(data)
        return Response(sender, receiver, eph, empty, mac1, mac2)
    if kind is MessageType.COOKIE_REPLY:
        if size != COOKIE_REPLY_LEN:
            raise WireGuardDecodeError(f"cookie reply must be {COOKIE_REPLY_LEN} bytes")
        _, receiver, nonce, cookie = _COOKIE_REPLY.unpack(data)
        return CookieReply(receiver, nonce, cookie)
    return decode_transport_header(data)


def decode_transport_header(data: bytes | bytearray | memoryview) -> TransportHeader:
    """Decode the header of a transport data message, checking its length bounds."""
    size = len(data)
    if size < TRANSPORT_MIN_LEN:
        raise WireGuardDecodeError("transport message shorter than header and tag")
    if size > MAX_DATAGRAM:
        raise WireGuardDecodeError("transport message longer than a UDP datagram")
    word, receiver, counter = TRANSPORT_HEADER.unpack_from(data)
    if word != MessageType.TRANSPORT:
        raise WireGuardDecodeError("not a transport data message")
    return TransportHeader(receiver, counter)


def mac1_offset(kind: MessageType) -> int:
    """Where MAC1 starts in a handshake message: MAC1 covers everything before it (§5.4.4)."""
    if kind is MessageType.INITIATION:
        return INITIATION_LEN - MACS_LEN
    if kind is MessageType.RESPONSE:
        return RESPONSE_LEN - MACS_LEN
    raise ValueError("only handshake messages carry MACs")


def validate_fields(msg: Message) -> None:
    """Check field widths before encoding (used by tests and by message builders)."""
    if isinstance(msg, Initiation):
        _check_u32("sender", msg.sender)
    elif isinstance(msg, Response):
        _check_u32("sender", msg.sender)
        _check_u32("receiver", msg.receiver)
    else:
        _check_u32("receiver", msg.receiver)

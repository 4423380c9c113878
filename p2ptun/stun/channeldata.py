"""TURN ChannelData framing (RFC 8656 §12.4, §12.5).

A ChannelData message is a 4-byte header (channel number, length of the application data)
followed by the data. Channel numbers are 0x4000-0x4FFF, so the first byte is 0x40-0x4F and the
message never looks like STUN (first byte 0-3) or WireGuard (first byte 1-4) on the shared socket.
Over TCP/TLS the data is padded to a multiple of 4 bytes and the padding is not counted in the
length; over UDP the padding is optional and a receiver accepts it either way.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from p2ptun.stun.constants import StunDecodeError

#: RFC 8656 §12: the range of valid channel numbers.
CHANNEL_MIN = 0x4000
CHANNEL_MAX = 0x4FFF
#: Size of the ChannelData header.
CHANNEL_DATA_HEADER_LENGTH = 4

_HEAD = struct.Struct("!HH")
_PAD = (b"", b"\x00\x00\x00", b"\x00\x00", b"\x00")


class ChannelData(NamedTuple):
    """One decoded ChannelData message."""

    channel: int
    data: bytes


def is_channel_number(channel: int) -> bool:
    """True for 0x4000-0x4FFF (RFC 8656 §12)."""
    return CHANNEL_MIN <= channel <= CHANNEL_MAX


def is_channel_data(data: bytes | bytearray | memoryview) -> bool:
    """Demultiplexing test: at least a header and a first byte of 0x40-0x4F (RFC 8656 §12,
    RFC 7983)."""
    return len(data) >= CHANNEL_DATA_HEADER_LENGTH and 0x40 <= data[0] <= 0x4F


def encode_channel_data(channel: int, data: bytes, *, pad: bool = False) -> bytes:
    """Frame ``data`` for ``channel``. ``pad=True`` (required over TCP and TLS, RFC 8656 §12.5)
    pads the data to a multiple of 4 bytes."""
    if not CHANNEL_MIN <= channel <= CHANNEL_MAX:
        raise ValueError(f"channel 0x{channel:04x} is outside 0x4000-0x4FFF")
    size = len(data)
    if size > 0xFFFF:
        raise ValueError(f"ChannelData payload too long ({size} bytes)")
    head = _HEAD.pack(channel, size)
    if pad:
        return b"".join((head, data, _PAD[size & 3]))
    return head + data


def channel_data_header(channel: int, length: int) -> bytes:
    """The 4-byte header of a ChannelData message (RFC 8656 §12.4), for a caller that sends
    the header and the data as separate parts instead of joining them."""
    return _HEAD.pack(channel, length)


def channel_data_end(datagram: bytes | bytearray | memoryview) -> int:
    """Where the application data of a ChannelData message ends (header plus its length
    field), or -1 if the length field exceeds the message or more than 3 bytes of padding
    follow: the checks of :func:`decode_channel_data` without copying the data, for relays
    that forward a view. ``datagram`` holds at least the header (:func:`is_channel_data`)."""
    end = CHANNEL_DATA_HEADER_LENGTH + ((datagram[2] << 8) | datagram[3])
    size = len(datagram)
    return end if end <= size and size - end <= 3 else -1


def decode_channel_data(datagram: bytes | bytearray | memoryview) -> ChannelData:
    """Parse one ChannelData message received in a datagram (or one frame cut from a stream with
    :func:`channel_data_frame_length`). Up to 3 bytes of padding after the data are accepted
    and ignored. Raises :class:`StunDecodeError` for a short message, a channel number outside
    0x4000-0x4FFF, a length field larger than the data, or more than 3 trailing bytes."""
    size = len(datagram)
    if size < CHANNEL_DATA_HEADER_LENGTH:
        raise StunDecodeError("ChannelData shorter than its header")
    channel, length = _HEAD.unpack_from(datagram)
    if not CHANNEL_MIN <= channel <= CHANNEL_MAX:
        raise StunDecodeError(f"channel 0x{channel:04x} is outside 0x4000-0x4FFF")
    end = CHANNEL_DATA_HEADER_LENGTH + length
    if end > size:
        raise StunDecodeError("ChannelData length exceeds the datagram")
    if size - end > 3:
        raise StunDecodeError("ChannelData has trailing bytes beyond its padding")
    return ChannelData(channel, bytes(datagram[CHANNEL_DATA_HEADER_LENGTH:end]))


def channel_data_frame_length(buffer: bytes | bytearray | memoryview) -> int | None:
    """Bytes one ChannelData frame occupies on a stream transport (header, data, padding to 4),
    or None if the 4-byte header is not there yet (RFC 8656 §12.5)."""
    if len(buffer) < CHANNEL_DATA_HEADER_LENGTH:
        return None
    length = (buffer[2] << 8) | buffer[3]
    return CHANNEL_DATA_HEADER_LENGTH + ((length + 3) & ~3)

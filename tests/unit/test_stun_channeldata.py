"""TURN ChannelData framing (RFC 8656 §12.4, §12.5)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2ptun.stun import (
    ChannelData,
    StunDecodeError,
    channel_data_end,
    channel_data_frame_length,
    channel_data_header,
    decode_channel_data,
    encode_channel_data,
    is_channel_data,
    is_channel_number,
    is_stun,
)


@given(st.integers(0x4000, 0x4FFF), st.binary(max_size=300), st.booleans())
def test_roundtrip(channel: int, data: bytes, pad: bool) -> None:
    wire = encode_channel_data(channel, data, pad=pad)
    assert is_channel_data(wire) and not is_stun(wire)
    assert decode_channel_data(wire) == ChannelData(channel, data)
    if pad:
        assert len(wire) % 4 == 0
        assert channel_data_frame_length(wire) == len(wire)
    else:
        assert len(wire) == 4 + len(data)


def test_stream_framing() -> None:
    a = encode_channel_data(0x4001, b"abcde", pad=True)
    b = encode_channel_data(0x4FFF, b"", pad=True)
    stream = a + b
    assert channel_data_frame_length(stream[:3]) is None
    first = channel_data_frame_length(stream)
    assert first == 12
    assert decode_channel_data(stream[:first]) == (0x4001, b"abcde")
    assert decode_channel_data(stream[first:]) == (0x4FFF, b"")


def test_invalid() -> None:
    assert is_channel_number(0x4000) and not is_channel_number(0x5000)
    with pytest.raises(ValueError):
        encode_channel_data(0x3FFF, b"")
    with pytest.raises(ValueError):
        encode_channel_data(0x5000, b"")
    for bad in (
        b"\x40\x00\x00",  # short
        b"\x50\x00\x00\x00",  # channel out of range
        b"\x40\x00\x00\x05abcd",  # length beyond datagram
        b"\x40\x00\x00\x01abcde",  # more than 3 bytes after the data
    ):
        with pytest.raises(StunDecodeError):
            decode_channel_data(bad)
    assert decode_channel_data(b"\x40\x00\x00\x01a\x00\x00\x00") == (0x4000, b"a")


@given(st.integers(0x4000, 0x4FFF), st.binary(max_size=200), st.integers(0, 6), st.integers(-3, 3))
def test_channel_data_end_agrees_with_the_decoder(
    channel: int, data: bytes, padding: int, skew: int
) -> None:
    """The copy-free check accepts exactly what decode_channel_data accepts, and ends the
    data where the decoder does; the header helper frames like the encoder."""
    length = max(0, len(data) + skew)
    message = channel_data_header(channel, length) + data + bytes(padding)
    assert channel_data_header(channel, len(data)) + data == encode_channel_data(channel, data)
    try:
        decoded = decode_channel_data(message)
    except StunDecodeError:
        assert channel_data_end(message) == -1
    else:
        end = channel_data_end(message)
        assert message[4:end] == decoded.data

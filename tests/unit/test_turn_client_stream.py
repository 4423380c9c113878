"""Cutting TURN-over-TCP/TLS streams into frames: any chunking gives the same frames; garbage
only ever raises DecodeError subclasses; the buffer stays bounded."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2ptun.errors import DecodeError
from p2ptun.stun import AttrType, Message, Method, decode_channel_data, encode_channel_data
from p2ptun.turn.client_stream import MAX_FRAME, StreamFramer, StreamFramingError

stun_frames = st.builds(
    lambda tid, data: Message.indication(
        Method.DATA, tid, [(AttrType.XOR_PEER_ADDRESS, ("192.0.2.1", 9)), (AttrType.DATA, data)]
    ).encode(),
    st.binary(min_size=12, max_size=12),
    st.binary(max_size=300),
)
channel_frames = st.builds(
    lambda ch, data: encode_channel_data(ch, data, pad=True),
    st.integers(0x4000, 0x4FFF),
    st.binary(max_size=300),
)
frames_st = st.lists(st.one_of(stun_frames, channel_frames), max_size=20)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in [*points, len(data)]:
        pieces.append(data[last:p])
        last = p
    return pieces


@given(frames_st, st.lists(st.integers(0, 10_000), max_size=30))
@settings(max_examples=300)
def test_any_chunking_gives_the_same_frames(frames: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(frames)
    framer = StreamFramer()
    out: list[bytes] = []
    for piece in chunked(stream, cuts):
        out += framer.feed(piece)
        assert framer.buffered < MAX_FRAME
    assert out == frames
    assert framer.buffered == 0


@given(st.binary(max_size=2000), st.lists(st.integers(0, 3000), max_size=10))
@settings(max_examples=500)
def test_garbage_only_raises_decode_errors(data: bytes, cuts: list[int]) -> None:
    framer = StreamFramer()
    try:
        for piece in chunked(data, cuts):
            for frame in framer.feed(piece):
                if frame[0] >= 0x40:
                    decode_channel_data(frame)
                else:
                    Message.decode(frame)
            assert framer.buffered <= MAX_FRAME
    except DecodeError:
        pass


def test_framing_errors_are_final() -> None:
    framer = StreamFramer()
    with pytest.raises(StreamFramingError):
        framer.feed(b"\x80" + bytes(30))
    assert framer.broken
    with pytest.raises(StreamFramingError):
        framer.feed(encode_channel_data(0x4000, b"ok", pad=True))


@pytest.mark.parametrize(
    "blob",
    [
        b"\x00\x01\x00\x05" + b"\x21\x12\xa4\x42" + bytes(12),  # length not a multiple of 4
        b"\x00\x01\x00\x04" + b"\xde\xad\xbe\xef" + bytes(16),  # no magic cookie
        b"\x50\x00\x00\x00",  # neither STUN nor ChannelData
    ],
)
def test_unframeable_streams(blob: bytes) -> None:
    with pytest.raises(StreamFramingError):
        StreamFramer().feed(blob)


def test_max_frame_limit() -> None:
    framer = StreamFramer(max_frame=100)
    with pytest.raises(StreamFramingError):
        framer.feed(b"\x40\x00\x01\x00")
    assert StreamFramer(max_frame=100).feed(encode_channel_data(0x4000, b"x" * 96)) != []

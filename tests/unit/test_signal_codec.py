"""Signaling frames and messages: round trips, bounds, and fuzzed decoders that raise only
SignalDecodeError."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2ptun.errors import DecodeError
from p2ptun.signal import messages as m
from p2ptun.signal.errors import SignalDecodeError
from p2ptun.signal.frames import (
    HEADER_LEN,
    MAX_PAYLOAD,
    FrameDecoder,
    FrameType,
    decode_frame,
    encode_frame,
)
from p2ptun.signal.seal import (
    Answer,
    Bye,
    Candidates,
    Offer,
    Restart,
    SealedBody,
    decode_body,
    encode_body,
)

names = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,20}", fullmatch=True)
text = st.text(max_size=40)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)

messages = st.one_of(
    st.builds(m.Register, names),
    st.builds(m.Registered, names),
    st.builds(m.Refused, st.sampled_from(m.RefusalReason), text),
    st.builds(m.Ping, u64),
    st.builds(m.Pong, u64),
    st.builds(m.Watch, st.lists(names, max_size=5).map(tuple)),
    st.builds(m.Unwatch, st.lists(names, max_size=5).map(tuple)),
    st.builds(m.Presence, names, st.booleans()),
    st.builds(m.Route, u32, names, st.binary(max_size=200)),
    st.builds(m.Deliver, names, st.binary(max_size=200)),
    st.builds(m.RouteFailed, u32, names, st.sampled_from(m.RouteFailure)),
    st.builds(m.TurnRequest),
    st.builds(m.TurnCredentials, text, text, u32, st.text(max_size=20)),
    st.builds(m.Error, st.sampled_from(m.ErrorCode), text),
    st.builds(m.GoingAway, text),
    st.builds(m.RegisterMember, names, st.binary(max_size=300)),
    st.builds(m.Member, names, st.binary(max_size=300)),
    st.builds(m.MemberGone, names),
    st.builds(m.Revocations, st.binary(max_size=300)),
    st.builds(m.Certificate, st.binary(max_size=300)),
)

peer_messages = st.one_of(
    st.builds(Offer, u64, text),
    st.builds(Answer, u64, text),
    st.builds(Candidates, u64, text),
    st.builds(Restart, u64, text),
    st.builds(Bye, u64, text),
)


def test_signal_decode_error_is_a_decode_error() -> None:
    assert issubclass(SignalDecodeError, DecodeError)


@given(messages)
def test_message_round_trip(msg: m.Message) -> None:
    assert m.decode_message(m.encode_message(msg)) == msg


@given(peer_messages, u64, u64)
def test_sealed_body_round_trip(msg: Offer, counter: int, ts: int) -> None:
    body = SealedBody(counter, ts, msg)
    assert decode_body(encode_body(body)) == body


@given(st.binary(max_size=300))
@settings(max_examples=2000)
def test_decode_message_fuzz(data: bytes) -> None:
    with contextlib.suppress(SignalDecodeError):
        m.decode_message(data)


@given(messages, st.data())
def test_decode_message_mutations(msg: m.Message, data: st.DataObject) -> None:
    wire = bytearray(m.encode_message(msg))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(wire) - 1))
        wire[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(wire)))
    for candidate in (bytes(wire), bytes(wire[:cut]), bytes(wire) + b"\0"):
        with contextlib.suppress(SignalDecodeError):
            m.decode_message(candidate)


@given(st.binary(max_size=300))
@settings(max_examples=1000)
def test_decode_body_fuzz(data: bytes) -> None:
    with contextlib.suppress(SignalDecodeError):
        decode_body(data)


@given(st.binary(max_size=200))
@settings(max_examples=1000)
def test_decode_frame_fuzz(data: bytes) -> None:
    with contextlib.suppress(SignalDecodeError):
        decode_frame(data)


@given(st.lists(st.binary(max_size=100), max_size=10))
@settings(max_examples=1000)
def test_frame_decoder_fuzz(chunks: list[bytes]) -> None:
    decoder = FrameDecoder()
    try:
        for chunk in chunks:
            decoder.feed(chunk)
            assert decoder.buffered < HEADER_LEN + MAX_PAYLOAD
    except SignalDecodeError:
        # Once broken, always broken.
        with pytest.raises(SignalDecodeError):
            decoder.feed(b"")


@given(
    st.lists(st.tuples(st.sampled_from(FrameType), st.binary(max_size=300)), max_size=8),
    st.data(),
)
def test_frame_decoder_any_chunking(
    frames: list[tuple[FrameType, bytes]], data: st.DataObject
) -> None:
    stream = b"".join(encode_frame(t, p) for t, p in frames)
    decoder = FrameDecoder()
    out = []
    pos = 0
    while pos < len(stream):
        n = data.draw(st.integers(1, 64))
        out += decoder.feed(stream[pos : pos + n])
        pos += n
    assert [(f.type, f.payload) for f in out] == frames
    assert decoder.buffered == 0


def test_frame_bounds() -> None:
    encode_frame(FrameType.TRANSPORT, bytes(MAX_PAYLOAD))
    with pytest.raises(ValueError):
        encode_frame(FrameType.TRANSPORT, bytes(MAX_PAYLOAD + 1))
    with pytest.raises(SignalDecodeError, match="version"):
        FrameDecoder().feed(b"\x02\x01\x00\x00")
    with pytest.raises(SignalDecodeError, match="type"):
        FrameDecoder().feed(b"\x01\x09\x00\x00")


def test_frame_decoder_holds_at_most_one_frame() -> None:
    decoder = FrameDecoder()
    # A header announcing 65535 bytes, then a trickle: memory stays bounded by the frame.
    decoder.feed(b"\x01\x03\xff\xff")
    for _ in range(100):
        assert decoder.feed(bytes(600)) == []
        assert decoder.buffered <= HEADER_LEN + MAX_PAYLOAD
    frames = decoder.feed(bytes(MAX_PAYLOAD - 60000))
    assert len(frames) == 1 and len(frames[0].payload) == MAX_PAYLOAD
    assert decoder.buffered == 0


def test_message_bounds() -> None:
    with pytest.raises(ValueError):
        m.encode_message(m.Route(1, "bob", bytes(m.MAX_BLOB + 1)))
    with pytest.raises(ValueError):
        m.encode_message(m.Register("Not A Name"))
    with pytest.raises(ValueError):
        m.encode_message(m.Watch(tuple(f"n{i}" for i in range(m.MAX_WATCH_NAMES + 1))))
    # Names are validated on decode too.
    with pytest.raises(SignalDecodeError):
        m.decode_message(b"\x01\x03BOB")
    # Over-long text is clipped on a character boundary, and still decodes.
    msg = m.encode_message(m.Refused(m.RefusalReason.BUSY, "é" * 2000))
    decoded = m.decode_message(msg)
    assert isinstance(decoded, m.Refused) and decoded.text == "é" * (m.MAX_TEXT // 2)


def test_reprs_hide_payloads() -> None:
    assert "secret" not in repr(m.Route(1, "bob", b"secret"))
    assert "secret" not in repr(m.Deliver("bob", b"secret"))
    assert "secret" not in repr(m.TurnCredentials("u", "secret", 1, "r"))
    assert "secret" not in repr(Offer(1, "a=ice-pwd:secret"))

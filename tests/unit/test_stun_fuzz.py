"""Fuzzing: the STUN and ChannelData decoders raise nothing but StunDecodeError, and whatever
they accept can be inspected without raising."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2ptun.errors import DecodeError
from p2ptun.stun import (
    AttrType,
    ErrorValue,
    Message,
    Method,
    StunDecodeError,
    decode_channel_data,
    encode_channel_data,
    handle_binding,
    short_term_key,
)
from p2ptun.stun.constants import MAGIC_COOKIE

KEY = short_term_key("pw")
TID = bytes(range(12))

SEEDS = [
    Message.request(
        Method.BINDING,
        TID,
        [
            (AttrType.USERNAME, "abc:def"),
            (AttrType.PRIORITY, 12345),
            (AttrType.ICE_CONTROLLING, 2**63 + 5),
            (AttrType.USE_CANDIDATE, True),
        ],
    ).encode(KEY, fingerprint=True),
    Message.request(Method.BINDING, TID)
    .success([(AttrType.XOR_MAPPED_ADDRESS, ("2001:db8::5", 3478))])
    .encode(KEY, sha1=True, sha256=True, fingerprint=True),
    Message.request(Method.ALLOCATE, TID)
    .error(401, None, [(AttrType.REALM, "r"), (AttrType.NONCE, "n" * 13)])
    .add(AttrType.PASSWORD_ALGORITHMS, ((1, b""), (2, b"")))
    .encode(),
    Message.indication(
        Method.DATA,
        TID,
        [(AttrType.XOR_PEER_ADDRESS, ("192.0.2.9", 5)), (AttrType.DATA, b"payload!" * 5)],
    ).encode(),
    Message.request(Method.BINDING, TID)
    .error(420, "x", [(AttrType.UNKNOWN_ATTRIBUTES, (1, 2, 3))])
    .add(AttrType.ADDRESS_ERROR_CODE, (1, 440, "no"))
    .add(AttrType.ICMP, (3, 4, 1400))
    .add(AttrType.ERROR_CODE, ErrorValue(500, "dup"))
    .encode(KEY, sha1=False, sha256=True),
]


def _exercise(data: bytes) -> None:
    try:
        msg = Message.decode(data)
    except StunDecodeError:
        pass
    else:
        msg.check_integrity(KEY)
        msg.check_message_integrity(KEY)
        msg.check_fingerprint()
        msg.raw_attributes()
        _ = (msg.xor_mapped_address, msg.username, msg.error_code, msg.xor_peer_addresses)
        assert Message.decode(msg.encode()) == msg
    response = handle_binding(data, ("192.0.2.1", 1))  # must not raise
    if response is not None:
        Message.decode(response)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.integers(0, 4))
        pos = draw(st.integers(0, len(data)))
        if op == 0 and data:  # flip a byte
            i = min(pos, len(data) - 1)
            data[i] ^= draw(st.integers(1, 255))
        elif op == 1:  # truncate
            del data[pos:]
        elif op == 2:  # insert bytes
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == 3 and len(data) >= 24:  # rewrite an attribute length
            i = min(pos, len(data) - 2) & ~3
            data[i + 2 : i + 4] = struct.pack("!H", draw(st.integers(0, 0xFFFF)))
        elif len(data) >= 4:  # fix up the header length so attribute parsing is reached
            data[2:4] = struct.pack("!H", max(0, len(data) - 20) & 0xFFFF)
    return bytes(data)


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_messages(data: bytes) -> None:
    _exercise(data)


@settings(max_examples=1000)
@given(st.binary(max_size=200))
def test_random_bytes(data: bytes) -> None:
    _exercise(data)


@st.composite
def framed_body(draw: st.DrawFn) -> bytes:
    """A valid header with a random body of a matching length: every datagram reaches the
    attribute parser."""
    body = draw(st.binary(max_size=120))
    body += b"\0" * (-len(body) & 3)
    mtype = draw(st.integers(0, 0x3FFF))
    return struct.pack("!HHI12s", mtype, len(body), MAGIC_COOKIE, TID) + body


@settings(max_examples=1500)
@given(framed_body())
def test_random_attributes(data: bytes) -> None:
    _exercise(data)


@settings(max_examples=500)
@given(
    st.one_of(
        st.binary(max_size=40),
        st.builds(
            lambda ch, d, cut: encode_channel_data(ch, d, pad=True)[:cut],
            st.integers(0x4000, 0x4FFF),
            st.binary(max_size=30),
            st.integers(0, 40),
        ),
    )
)
def test_channel_data_fuzz(data: bytes) -> None:
    try:
        decode_channel_data(data)
    except StunDecodeError as exc:
        assert isinstance(exc, DecodeError)

"""STUN codec: round-trips for every attribute and whole messages, integrity rules, helpers."""

from __future__ import annotations

import hmac
import socket
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2ptun.stun import (
    AddressErrorValue,
    AttrType,
    ErrorCode,
    ErrorValue,
    IcmpValue,
    Message,
    MessageClass,
    Method,
    PasswordAlgorithm,
    PasswordAlgorithmValue,
    StunDecodeError,
    error_response,
    handle_binding,
    is_comprehension_required,
    is_stun,
    long_term_key,
    message_length,
    opaque_string,
    peek_transaction_id,
    random_transaction_id,
    short_term_key,
    unknown_comprehension_required,
)
from p2ptun.stun.attributes import KNOWN_ATTRIBUTES, decode_value, encode_value
from p2ptun.stun.message import message_type, split_message_type

TID = bytes(range(12))
KEY = short_term_key("secret-password")

# -- strategies ---------------------------------------------------------------------------------

tids = st.binary(min_size=12, max_size=12)
ports = st.integers(0, 0xFFFF)
ipv4 = st.binary(min_size=4, max_size=4).map(lambda b: socket.inet_ntop(socket.AF_INET, b))
ipv6 = st.binary(min_size=16, max_size=16).map(lambda b: socket.inet_ntop(socket.AF_INET6, b))
addresses = st.tuples(st.one_of(ipv4, ipv6), ports)
texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=60)
u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 0xFFFFFFFFFFFFFFFF)
codes = st.integers(300, 699)
algorithms = st.builds(PasswordAlgorithmValue, u16, st.binary(max_size=12))

A = AttrType
VALUES: dict[int, st.SearchStrategy[Any]] = {
    A.MAPPED_ADDRESS: addresses,
    A.XOR_MAPPED_ADDRESS: addresses,
    A.ALTERNATE_SERVER: addresses,
    A.XOR_PEER_ADDRESS: addresses,
    A.XOR_RELAYED_ADDRESS: addresses,
    A.USERNAME: texts,
    A.REALM: texts,
    A.NONCE: texts,
    A.SOFTWARE: texts,
    A.ALTERNATE_DOMAIN: texts,
    A.USERHASH: st.binary(min_size=32, max_size=32),
    A.ERROR_CODE: st.builds(ErrorValue, codes, texts),
    A.UNKNOWN_ATTRIBUTES: st.lists(u16, max_size=8).map(tuple),
    A.PASSWORD_ALGORITHMS: st.lists(algorithms, max_size=4).map(tuple),
    A.PASSWORD_ALGORITHM: algorithms,
    A.PRIORITY: u32,
    A.USE_CANDIDATE: st.just(True),
    A.ICE_CONTROLLED: u64,
    A.ICE_CONTROLLING: u64,
    A.CHANNEL_NUMBER: u16,
    A.LIFETIME: u32,
    A.DATA: st.binary(max_size=200),
    A.REQUESTED_ADDRESS_FAMILY: u8,
    A.EVEN_PORT: st.booleans(),
    A.REQUESTED_TRANSPORT: u8,
    A.DONT_FRAGMENT: st.just(True),
    A.RESERVATION_TOKEN: st.binary(min_size=8, max_size=8),
    A.ADDITIONAL_ADDRESS_FAMILY: u8,
    A.ADDRESS_ERROR_CODE: st.builds(AddressErrorValue, u8, codes, texts),
    A.ADDITIONAL_ADDRESS_FAMILY_DRAFT: u8,
    A.ADDRESS_ERROR_CODE_DRAFT: st.builds(AddressErrorValue, u8, codes, texts),
    A.ICMP: st.builds(IcmpValue, u8, u8, u32),
}
TRAILERS = {A.MESSAGE_INTEGRITY, A.MESSAGE_INTEGRITY_SHA256, A.FINGERPRINT}
unknown_types = u16.filter(lambda t: t not in KNOWN_ATTRIBUTES)


def test_every_attribute_has_a_strategy() -> None:
    assert set(VALUES) | TRAILERS == set(AttrType)


@st.composite
def attribute(draw: st.DrawFn) -> tuple[int, Any]:
    if draw(st.integers(0, 9)) == 0:
        return draw(unknown_types), draw(st.binary(max_size=40))
    attr_type = draw(st.sampled_from(sorted(VALUES)))
    return attr_type, draw(VALUES[attr_type])


messages = st.builds(
    Message,
    st.integers(0, 0xFFF),
    st.sampled_from(MessageClass),
    tids,
    st.lists(attribute(), max_size=12),
)

# -- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize("attr_type", sorted(VALUES), ids=lambda t: AttrType(t).name)
@settings(max_examples=60)
@given(data=st.data(), tid=tids)
def test_attribute_value_roundtrip(attr_type: int, data: st.DataObject, tid: bytes) -> None:
    value = data.draw(VALUES[attr_type])
    wire = encode_value(attr_type, value, tid)
    assert decode_value(attr_type, wire, tid) == value
    msg = Message.decode(Message.request(Method.BINDING, tid, [(attr_type, value)]).encode())
    assert msg.get(attr_type) == value
    assert msg.raw(attr_type) == wire


@given(attr_type=unknown_types, value=st.binary(max_size=64))
def test_unknown_attribute_roundtrip(attr_type: int, value: bytes) -> None:
    msg = Message.decode(Message.indication(Method.SEND, TID).add(attr_type, value).encode())
    assert msg.attributes == [(attr_type, value)]
    assert msg.raw_attributes() == [(attr_type, value)]


@given(
    msg=messages,
    key=st.one_of(st.none(), st.binary(min_size=1, max_size=40)),
    sha1=st.booleans(),
    sha256=st.booleans(),
    fingerprint=st.booleans(),
)
def test_message_roundtrip(
    msg: Message, key: bytes | None, sha1: bool, sha256: bool, fingerprint: bool
) -> None:
    if key is not None and not (sha1 or sha256):
        sha1 = True
    wire = msg.encode(key, sha1=sha1, sha256=sha256, fingerprint=fingerprint)
    # RFC 7983's demux range (first byte 0-3) covers methods below 0x100, all that exist.
    assert is_stun(wire) is (msg.method < 0x100)
    assert message_length(wire) == len(wire)
    assert len(wire) % 4 == 0
    got = Message.decode(wire)
    assert got == msg
    assert got.method == msg.method and got.message_class == msg.message_class
    assert got.check_fingerprint() is fingerprint
    if key is not None:
        assert got.check_integrity(key)
        assert got.check_message_integrity(key) is sha1
        assert got.check_message_integrity_sha256(key) is sha256
        assert not got.check_integrity(key + b"x")
    else:
        assert not got.has_integrity
    assert got.encode(key, sha1=sha1, sha256=sha256, fingerprint=fingerprint) == wire


@given(method=st.integers(0, 0xFFF), klass=st.sampled_from(MessageClass))
def test_message_type_bits(method: int, klass: MessageClass) -> None:
    mtype = message_type(method, klass)
    assert mtype < 0x4000
    assert split_message_type(mtype) == (method, klass)


def test_message_type_values() -> None:
    assert message_type(Method.BINDING, MessageClass.REQUEST) == 0x0001
    assert message_type(Method.BINDING, MessageClass.SUCCESS) == 0x0101
    assert message_type(Method.BINDING, MessageClass.ERROR) == 0x0111
    assert message_type(Method.SEND, MessageClass.INDICATION) == 0x0016
    assert message_type(Method.DATA, MessageClass.INDICATION) == 0x0017
    assert message_type(Method.ALLOCATE, MessageClass.REQUEST) == 0x0003
    assert message_type(Method.CHANNEL_BIND, MessageClass.ERROR) == 0x0119


def test_accessors() -> None:
    req = Message.request(Method.CREATE_PERMISSION, TID)
    req.add(A.XOR_PEER_ADDRESS, ("192.0.2.1", 1)).add(A.XOR_PEER_ADDRESS, ("2001:db8::1", 2))
    req.add(A.USE_CANDIDATE).add(A.LIFETIME, 600).add(A.ERROR_CODE, ErrorValue(438, "x"))
    msg = Message.decode(req.encode())
    assert msg.xor_peer_address == ("192.0.2.1", 1)
    assert msg.xor_peer_addresses == [("192.0.2.1", 1), ("2001:db8::1", 2)]
    assert msg.use_candidate and not msg.dont_fragment
    assert msg.lifetime == 600
    assert msg.error_code == (438, "x")
    assert A.LIFETIME in msg and A.NONCE not in msg
    assert msg.nonce is None and msg.get(A.NONCE, "d") == "d"


def test_scoped_ipv6_and_bad_hosts() -> None:
    wire = encode_value(A.XOR_MAPPED_ADDRESS, ("fe80::1%eth0", 5), TID)
    assert decode_value(A.XOR_MAPPED_ADDRESS, wire, TID) == ("fe80::1", 5)
    with pytest.raises(ValueError):
        encode_value(A.XOR_MAPPED_ADDRESS, ("example.org", 5), TID)
    with pytest.raises(ValueError):
        Message.request(Method.BINDING, TID).add(A.MESSAGE_INTEGRITY, b"x" * 20)
    with pytest.raises(ValueError):
        Message(Method.BINDING, MessageClass.REQUEST, b"short")
    with pytest.raises(ValueError):
        Message.request(Method.BINDING, TID, [(A.DATA, b"x" * 70000)]).encode()


# Zero-heavy IPv6 addresses reach every compression case (runs, ties, mapped, compatible).
_words = st.one_of(st.just(0), st.just(0), st.just(0xFFFF), st.integers(0, 0xFFFF))
zero_heavy_ipv6 = st.lists(_words, min_size=8, max_size=8).map(
    lambda ws: b"".join(w.to_bytes(2, "big") for w in ws)
)


@settings(max_examples=500)
@given(packed=st.one_of(zero_heavy_ipv6, st.binary(min_size=16, max_size=16)), tid=tids)
def test_ipv6_text_is_what_inet_ntop_writes(packed: bytes, tid: bytes) -> None:
    text = socket.inet_ntop(socket.AF_INET6, packed)
    assert encode_value(A.MAPPED_ADDRESS, (text, 9), tid)[4:] == packed
    for attr_type in (A.MAPPED_ADDRESS, A.XOR_MAPPED_ADDRESS):
        assert decode_value(attr_type, encode_value(attr_type, (text, 9), tid), tid) == (text, 9)


@given(packed=st.binary(min_size=4, max_size=4), tid=tids)
def test_ipv4_text_is_what_inet_ntop_writes(packed: bytes, tid: bytes) -> None:
    text = socket.inet_ntop(socket.AF_INET, packed)
    for attr_type in (A.MAPPED_ADDRESS, A.XOR_MAPPED_ADDRESS):
        assert decode_value(attr_type, encode_value(attr_type, (text, 9), tid), tid) == (text, 9)


@pytest.mark.parametrize("host", ["1.2.3", "01.2.3.4", "1.2.3.256", "1.2.3.4 ", "::g", "1::2::3"])
def test_hosts_inet_pton_refuses_are_refused(host: str) -> None:
    with pytest.raises(ValueError):
        encode_value(A.XOR_PEER_ADDRESS, (host, 5), TID)


def test_random_transaction_id_takes_its_source() -> None:
    assert random_transaction_id(lambda n: bytes(range(n))) == bytes(range(12))
    with pytest.raises(ValueError):
        random_transaction_id(lambda n: b"short")


# -- integrity placement rules (RFC 8489 §14.5-§14.7) -----------------------------------------


def _append(wire: bytes, attr_type: int, value: bytes) -> bytes:
    """Append a raw attribute and fix the length field, leaving earlier bytes alone."""
    pad = b"\x00" * (-len(value) & 3)
    out = bytearray(wire + struct.pack("!HH", attr_type, len(value)) + value + pad)
    out[2:4] = (len(out) - 20).to_bytes(2, "big")
    return bytes(out)


def test_attributes_after_message_integrity_are_ignored() -> None:
    base = Message.request(Method.BINDING, TID, [(A.USERNAME, "a:b")]).encode(KEY)
    tampered = _append(base, A.PRIORITY, b"\x00\x00\x00\x01")
    msg = Message.decode(tampered)
    assert msg.priority is None
    assert msg.attributes == [(A.USERNAME, "a:b")]
    assert msg.check_integrity(KEY)


def test_sha256_after_sha1_and_fingerprint_after_both() -> None:
    req = Message.request(Method.BINDING, TID, [(A.USERNAME, "a:b")])
    wire = req.encode(KEY, sha1=True, sha256=True, fingerprint=True)
    msg = Message.decode(wire)
    assert msg.check_message_integrity(KEY) and msg.check_message_integrity_sha256(KEY)
    assert msg.check_fingerprint()
    # Something after MESSAGE-INTEGRITY-SHA256 other than FINGERPRINT is ignored.
    wire2 = _append(req.encode(KEY, sha1=False, sha256=True), A.USERNAME, b"evil")
    msg2 = Message.decode(wire2)
    assert msg2.username == "a:b" and msg2.check_integrity(KEY)
    # MESSAGE-INTEGRITY after MESSAGE-INTEGRITY-SHA256 is ignored too.
    wire3 = _append(req.encode(KEY, sha1=False, sha256=True), A.MESSAGE_INTEGRITY, b"\0" * 20)
    msg3 = Message.decode(wire3)
    assert msg3.message_integrity is None and msg3.check_integrity(KEY)


def test_truncated_sha256_integrity_verifies() -> None:
    wire = Message.request(Method.BINDING, TID).encode(KEY, sha1=False, sha256=True)
    head = bytearray(wire[:-36])
    length = len(head) - 20 + 4 + 16
    head[2:4] = length.to_bytes(2, "big")
    mac = hmac.new(KEY, bytes(head), "sha256").digest()[:16]
    truncated = bytes(head) + struct.pack("!HH", A.MESSAGE_INTEGRITY_SHA256, 16) + mac
    msg = Message.decode(truncated)
    assert msg.check_integrity(KEY)
    assert not msg.check_integrity(b"other")


def test_fingerprint_must_be_last_and_right() -> None:
    wire = Message.request(Method.BINDING, TID).encode(fingerprint=True)
    with pytest.raises(StunDecodeError):
        Message.decode(_append(wire, A.SOFTWARE, b"x"))
    bad = bytearray(wire)
    bad[-1] ^= 1
    msg = Message.decode(bytes(bad))
    assert not msg.check_fingerprint()


@pytest.mark.parametrize(
    "mutate",
    [
        lambda w: w[:19],  # short header
        lambda w: b"\x40" + w[1:],  # top bits set
        lambda w: w[:4] + b"\x21\x12\xa4\x43" + w[8:],  # cookie
        lambda w: w[:3] + bytes([w[3] + 1]) + w[4:],  # length not multiple of 4
        lambda w: w[:3] + bytes([w[3] + 4]) + w[4:],  # length beyond data
        lambda w: w + b"\0\0\0\0",  # trailing bytes
        lambda w: w[:22] + b"\x01\x00" + w[24:],  # attribute overruns
    ],
)
def test_malformed_headers(mutate: Any) -> None:
    wire = Message.request(Method.BINDING, TID, [(A.PRIORITY, 1)]).encode()
    with pytest.raises(StunDecodeError):
        Message.decode(mutate(wire))


@pytest.mark.parametrize(
    ("attr_type", "value"),
    [
        (A.XOR_MAPPED_ADDRESS, b"\x00\x03\x00\x01\x01\x02\x03\x04"),  # family 3
        (A.XOR_MAPPED_ADDRESS, b"\x00\x01\x00\x01\x01\x02\x03"),  # short
        (A.MAPPED_ADDRESS, b"\x00\x02\x00\x01\x01\x02\x03\x04"),  # v6 with v4 length
        (A.USERNAME, b"\xff\xfe"),  # not UTF-8
        (A.PRIORITY, b"\x00\x01"),
        (A.ICE_CONTROLLING, b"\x00" * 4),
        (A.USE_CANDIDATE, b"\x00"),
        (A.ERROR_CODE, b"\x00\x00\x02\x00"),  # class 2
        (A.ERROR_CODE, b"\x00\x00\x04\x64"),  # number 100
        (A.UNKNOWN_ATTRIBUTES, b"\x00\x01\x00"),
        (A.PASSWORD_ALGORITHM, b"\x00\x01\x00\x08\x00"),
        (A.MESSAGE_INTEGRITY, b"\x00" * 19),
        (A.MESSAGE_INTEGRITY_SHA256, b"\x00" * 15),
        (A.FINGERPRINT, b"\x00" * 3),
        (A.EVEN_PORT, b""),
        (A.USERHASH, b"\x00" * 31),
        (A.ICMP, b"\x00" * 7),
    ],
)
def test_malformed_values(attr_type: int, value: bytes) -> None:
    wire = _append(Message.request(Method.BINDING, TID).encode(), attr_type, value)
    with pytest.raises(StunDecodeError):
        Message.decode(wire)


# -- helpers ---------------------------------------------------------------------------------


def test_is_stun_demux() -> None:
    wire = Message.request(Method.BINDING, TID).encode()
    assert is_stun(wire) and is_stun(bytearray(wire)) and is_stun(memoryview(wire))
    assert not is_stun(wire[:19])
    assert not is_stun(b"\x04" + wire[1:])
    assert not is_stun(b"\x40\x00\x00\x04" + b"\0" * 16)  # ChannelData
    assert not is_stun(b"\x01\x00\x00\x00" + b"\0" * 28)  # WireGuard initiation
    assert peek_transaction_id(b"junk") is None
    assert message_length(b"\x00") is None


def test_decode_accepts_bytearray_and_memoryview() -> None:
    wire = Message.request(Method.BINDING, TID, [(A.USERNAME, "u")]).encode(KEY)
    buf = bytearray(wire)
    msg = Message.decode(memoryview(buf))
    buf[:] = b"\0" * len(buf)  # the caller reuses its buffer
    assert msg.username == "u" and msg.check_integrity(KEY)


def test_comprehension_required() -> None:
    assert is_comprehension_required(0x0001)
    assert not is_comprehension_required(0x8022)
    msg = Message.request(Method.BINDING, TID)
    msg.add(0x7777, b"a").add(0xC001, b"b").add(0x7777, b"c").add(A.PRIORITY, 5)
    msg = Message.decode(msg.encode())
    assert unknown_comprehension_required(msg) == [0x7777]
    assert unknown_comprehension_required(msg, known={0x7777}) == [A.PRIORITY]
    resp = error_response(msg, ErrorCode.UNKNOWN_ATTRIBUTE, unknown_attributes=[0x7777])
    got = Message.decode(resp.encode(fingerprint=True))
    assert got.message_class == MessageClass.ERROR
    assert got.transaction_id == TID
    assert got.error_code == (420, "Unknown Attribute")
    assert got.unknown_attributes == (0x7777,)


def test_credentials() -> None:
    assert opaque_string("caf\u0065\u0301") == "caf\u00e9"
    assert opaque_string("a\u00a0b") == "a b"
    assert short_term_key("pw") == b"pw"
    assert long_term_key("u", "r", "caf\u0065\u0301") == long_term_key("u", "r", "caf\u00e9")
    assert len(long_term_key("u", "r", "p", PasswordAlgorithm.SHA256)) == 32
    with pytest.raises(ValueError):
        long_term_key("u", "r", "p", 7)


# -- the Binding server ---------------------------------------------------------------------


@pytest.mark.parametrize("source", [("198.51.100.7", 40000), ("2001:db8::7", 1)])
def test_binding_server_success(source: tuple[str, int]) -> None:
    req = Message.request(Method.BINDING, TID).encode(fingerprint=True)
    out = handle_binding(req, source)
    assert out is not None
    resp = Message.decode(out)
    assert resp.message_class == MessageClass.SUCCESS
    assert resp.transaction_id == TID
    assert resp.xor_mapped_address == source
    assert resp.software and resp.software.startswith("p2ptun")
    assert resp.check_fingerprint()


def test_binding_server_errors_and_drops() -> None:
    src = ("192.0.2.1", 9)
    unknown = Message.request(Method.BINDING, TID).add(0x0777, b"?").encode()
    resp = Message.decode(handle_binding(unknown, src) or b"")
    assert resp.error_code is not None and resp.error_code.code == 420
    assert resp.unknown_attributes == (0x0777,)
    allocate = Message.request(Method.ALLOCATE, TID).encode()
    resp = Message.decode(handle_binding(allocate, src) or b"")
    assert resp.error_code is not None and resp.error_code.code == 400
    assert resp.method == Method.ALLOCATE
    bad_value = _append(Message.request(Method.BINDING, TID).encode(), A.USERNAME, b"\xff")
    resp = Message.decode(handle_binding(bad_value, src) or b"")
    assert resp.error_code is not None and resp.error_code.code == 400
    # Optional unknown attributes are fine.
    assert handle_binding(Message.request(Method.BINDING, TID).add(0xC0DE, b"").encode(), src)
    # Dropped: indications, responses, garbage, bad fingerprint, malformed responses.
    assert handle_binding(Message.indication(Method.BINDING, TID).encode(), src) is None
    assert handle_binding(Message(1, MessageClass.SUCCESS, TID).encode(), src) is None
    assert handle_binding(b"\x00\x01\x00\x00garbage-garbage!", src) is None
    bad_fp = bytearray(Message.request(Method.BINDING, TID).encode(fingerprint=True))
    bad_fp[-1] ^= 0xFF
    assert handle_binding(bytes(bad_fp), src) is None
    bad_resp = _append(Message(1, MessageClass.SUCCESS, TID).encode(), A.USERNAME, b"\xff")
    assert handle_binding(bad_resp, src) is None

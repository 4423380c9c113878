"""Known-answer tests for the WireGuard primitives: Noise, XChaCha, TAI64N, MACs, messages."""

from __future__ import annotations

import hashlib
import hmac
import random
import struct

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from p2ptun import noise
from p2ptun.keys import clamp, public_key
from p2ptun.noise import NoiseError
from p2ptun.wireguard import constants, tai64n
from p2ptun.wireguard.cookie import CookieChecker, CookieGenerator, mac, source_bytes
from p2ptun.wireguard.errors import WireGuardDecodeError
from p2ptun.wireguard.handshake import (
    consume_initiation,
    consume_response,
    create_initiation,
    create_response,
    new_state,
)
from p2ptun.wireguard.messages import (
    COOKIE_REPLY_LEN,
    INITIATION_LEN,
    RESPONSE_LEN,
    CookieReply,
    Initiation,
    MessageType,
    Response,
    TransportHeader,
    decode,
    message_type,
)
from p2ptun.wireguard.xchacha import hchacha20, xaead_decrypt, xaead_encrypt


def _rng(seed: int = 7):  # type: ignore[no-untyped-def]
    r = random.Random(seed)
    return r.randbytes


# -- BLAKE2s / HMAC / KDF --------------------------------------------------------------------


def test_hash_is_blake2s_256() -> None:
    assert noise.hash_(b"ab", b"c") == hashlib.blake2s(b"abc").digest()
    # RFC 7693 Appendix B: BLAKE2s-256("abc").
    assert noise.hash_(b"abc").hex() == (
        "508c5e8c327c14e2e1a72ba34eeb452f37458b209ed63a294d999b4c86675982"
    )


def test_hmac_uses_64_byte_block() -> None:
    key, msg = b"k" * 32, b"message"
    # RFC 2104 by hand: H((K ^ opad) || H((K ^ ipad) || m)), B = 64 for BLAKE2s.
    k = key.ljust(64, b"\0")
    inner = hashlib.blake2s(bytes(x ^ 0x36 for x in k) + msg).digest()
    outer = hashlib.blake2s(bytes(x ^ 0x5C for x in k) + inner).digest()
    assert noise.hmac(key, msg) == outer


def test_kdf_chain_matches_whitepaper_definition() -> None:
    key, data = bytes(range(32)), b"input"
    t0 = hmac.new(key, data, hashlib.blake2s).digest()
    t1 = hmac.new(t0, b"\x01", hashlib.blake2s).digest()
    t2 = hmac.new(t0, t1 + b"\x02", hashlib.blake2s).digest()
    t3 = hmac.new(t0, t2 + b"\x03", hashlib.blake2s).digest()
    assert noise.kdf1(key, data) == t1
    assert noise.kdf2(key, data) == (t1, t2)
    assert noise.kdf3(key, data) == (t1, t2, t3)


def test_mac_is_keyed_blake2s_128() -> None:
    assert mac(b"k" * 32, b"x") == hashlib.blake2s(b"x", key=b"k" * 32, digest_size=16).digest()


def test_nonce_is_le_counter_after_four_zero_bytes() -> None:
    assert noise.nonce(1) == b"\0\0\0\0\x01" + bytes(7)
    assert noise.nonce(0x0102030405060708) == bytes(4) + bytes.fromhex("0807060504030201")


def test_aead_round_trip_and_tamper() -> None:
    key = bytes(32)
    c = noise.aead_encrypt(key, 5, b"hi", b"ad")
    assert noise.aead_decrypt(key, 5, c, b"ad") == b"hi"
    with pytest.raises(NoiseError):
        noise.aead_decrypt(key, 6, c, b"ad")


def test_dh_rejects_low_order_point() -> None:
    with pytest.raises(NoiseError):
        noise.dh(clamp(bytes(range(32))), bytes(32))


def test_construction_constants() -> None:
    assert constants.CONSTRUCTION == b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
    assert constants.IDENTIFIER == b"WireGuard v1 zx2c4 Jason@zx2c4.com"
    assert constants.LABEL_MAC1 == b"mac1----"
    assert constants.LABEL_COOKIE == b"cookie--"
    assert noise.protocol_name(noise.PATTERN_IKPSK2) == constants.CONSTRUCTION


# -- XChaCha20Poly1305 (draft-irtf-cfrg-xchacha-03) ------------------------------------------


def test_hchacha20_draft_vector() -> None:
    key = bytes(range(32))
    nonce = bytes.fromhex("000000090000004a0000000031415927")
    assert hchacha20(key, nonce).hex() == (
        "82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc"
    )


@pytest.mark.parametrize("seed", range(5))
def test_hchacha20_equals_chacha20_block_minus_input(seed: int) -> None:
    """HChaCha20 = words 0-3, 12-15 of a ChaCha20 block before the final state addition."""
    r = random.Random(seed)
    key, n16 = r.randbytes(32), r.randbytes(16)
    block = Cipher(algorithms.ChaCha20(key, n16), mode=None).encryptor().update(bytes(64))
    words = struct.unpack("<16I", block)
    init = [*struct.unpack("<4I", b"expand 32-byte k"), *struct.unpack("<8I", key)]
    init += struct.unpack("<4I", n16)
    out = [(words[i] - init[i]) & 0xFFFFFFFF for i in (0, 1, 2, 3, 12, 13, 14, 15)]
    assert hchacha20(key, n16) == struct.pack("<8I", *out)


def test_xchacha20poly1305_draft_vector() -> None:
    plaintext = (
        b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for "
        b"the future, sunscreen would be it."
    )
    ad = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
    key = bytes(range(0x80, 0xA0))
    nonce = bytes(range(0x40, 0x58))
    expected_ct = bytes.fromhex(
        "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb"
        "731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452"
        "2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9"
        "21f9664c97637da9768812f615c68b13b52e"
    )
    tag = bytes.fromhex("c0875924c1c7987947deafd8780acf49")
    sealed = xaead_encrypt(key, nonce, plaintext, ad)
    assert sealed == expected_ct + tag
    assert xaead_decrypt(key, nonce, sealed, ad) == plaintext
    with pytest.raises(NoiseError):
        xaead_decrypt(key, nonce, sealed, ad + b"x")


# -- TAI64N ----------------------------------------------------------------------------------


def test_tai64n_format() -> None:
    label = tai64n.encode(1_700_000_000.5)
    assert len(label) == 12
    secs, nanos = struct.unpack(">QI", label)
    assert secs == (1 << 62) + 10 + 1_700_000_000
    assert nanos % (1 << 24) == 0
    assert 500_000_000 - (1 << 24) < nanos <= 500_000_000
    assert tai64n.decode(label) == (1_700_000_000, nanos)


def test_tai64n_epoch_and_ordering() -> None:
    assert tai64n.encode(0.0) == bytes.fromhex("400000000000000a00000000")
    a, b = tai64n.encode(100.0), tai64n.encode(100.1)
    assert tai64n.is_newer(b, a) and not tai64n.is_newer(a, b) and not tai64n.is_newer(a, a)
    # Within one 2^24 ns grain two stamps are equal: the second is "not newer".
    assert tai64n.encode(100.0) == tai64n.encode(100.001)
    with pytest.raises(ValueError):
        tai64n.encode(float("nan"))
    with pytest.raises(ValueError):
        tai64n.decode(b"short")


# -- MAC1 / MAC2 / cookies -------------------------------------------------------------------


def test_mac1_vector_derived_from_spec() -> None:
    responder_pub = public_key(clamp(bytes([0x42]) * 32))
    msg = bytearray(Initiation(0x01020304, b"\x11" * 32, b"\x22" * 48, b"\x33" * 28).encode())
    CookieGenerator(responder_pub).add_macs(msg, now=0.0)
    # mac1 = BLAKE2s-128(key = BLAKE2s-256("mac1----" || S_pub), msg[0:116]) (§5.4.4).
    key = hashlib.blake2s(b"mac1----" + responder_pub).digest()
    expected = hashlib.blake2s(bytes(msg[:116]), key=key, digest_size=16).digest()
    assert bytes(msg[116:132]) == expected
    assert bytes(msg[132:148]) == bytes(16)  # no cookie: mac2 is zero
    assert bytes(msg[:8]) == b"\x01\x00\x00\x00\x04\x03\x02\x01"
    checker = CookieChecker(responder_pub, _rng())
    assert checker.check_mac1(bytes(msg))
    msg[5] ^= 1
    assert not checker.check_mac1(bytes(msg))


def test_cookie_reply_round_trip_and_mac2() -> None:
    responder_pub = public_key(clamp(bytes([7]) * 32))
    checker = CookieChecker(responder_pub, _rng(1))
    gen = CookieGenerator(responder_pub)
    msg = bytearray(Initiation(5, bytes(32), bytes(48), bytes(28)).encode())
    gen.add_macs(msg, now=10.0)
    src = ("192.0.2.1", 51820)
    assert not checker.check_mac2(bytes(msg), src, 10.0)
    reply = checker.create_reply(bytes(msg), 5, src, 10.0)
    assert len(reply.encode()) == COOKIE_REPLY_LEN
    assert decode(reply.encode()) == reply
    assert gen.consume_reply(reply, 10.5)
    assert not gen.consume_reply(reply, 10.6)  # only once per message sent
    gen.add_macs(msg, now=11.0)
    assert checker.check_mac2(bytes(msg), src, 11.0)
    assert not checker.check_mac2(bytes(msg), ("192.0.2.2", 51820), 11.0)
    # The secret lives 120 s; after that mac2 made with the old cookie is refused.
    assert not checker.check_mac2(bytes(msg), src, 130.1)
    secret = checker._secret
    assert secret is not None
    cookie = hashlib.blake2s(source_bytes(src), key=secret, digest_size=16).digest()
    assert checker.cookie_for(src, 11.0) == cookie


def test_cookie_reply_with_wrong_ad_is_refused() -> None:
    pub = public_key(clamp(bytes([9]) * 32))
    checker, gen = CookieChecker(pub, _rng(2)), CookieGenerator(pub)
    msg = bytearray(Response(1, 2, bytes(32), bytes(16)).encode())
    gen.add_macs(msg, now=0.0)
    other = bytearray(msg)
    other[4] = 9
    other[-32:] = bytes(32)  # a different message's mac1
    reply = checker.create_reply(bytes(other), 1, None, 0.0)
    assert not gen.consume_reply(reply, 0.0)


# -- messages --------------------------------------------------------------------------------


def test_message_sizes_and_round_trip() -> None:
    init = Initiation(1, b"e" * 32, b"s" * 48, b"t" * 28, b"m" * 16, b"n" * 16)
    resp = Response(2, 3, b"e" * 32, b"x" * 16, b"m" * 16, b"n" * 16)
    cookie = CookieReply(4, b"n" * 24, b"c" * 32)
    hdr = TransportHeader(5, 2**64 - 1)
    assert len(init.encode()) == INITIATION_LEN == 148
    assert len(resp.encode()) == RESPONSE_LEN == 92
    assert len(cookie.encode()) == 64
    assert len(hdr.encode()) == 16
    for m in (init, resp, cookie):
        assert decode(m.encode()) == m
    assert decode(hdr.encode() + bytes(16)) == hdr
    assert message_type(init.encode()) is MessageType.INITIATION


@pytest.mark.parametrize(
    "data",
    [b"", b"\x01", b"\x01\x00\x00", b"\x05\x00\x00\x00", b"\x01\x00\x01\x00" + bytes(144)],
)
def test_bad_type_or_header(data: bytes) -> None:
    with pytest.raises(WireGuardDecodeError):
        decode(data)


@pytest.mark.parametrize(("kind", "size"), [(1, 148), (2, 92), (3, 64)])
def test_fixed_sizes_are_exact(kind: int, size: int) -> None:
    base = bytes([kind, 0, 0, 0]) + bytes(size - 4)
    decode(base)
    for bad in (base[:-1], base + b"\0"):
        with pytest.raises(WireGuardDecodeError):
            decode(bad)


def test_transport_bounds() -> None:
    with pytest.raises(WireGuardDecodeError):
        decode(b"\x04\0\0\0" + bytes(27))
    with pytest.raises(WireGuardDecodeError):
        decode(b"\x04\0\0\0" + bytes(65536))
    assert decode(b"\x04\0\0\0" + bytes(28)) == TransportHeader(0, 0)


# -- the WireGuard handshake, checked against the whitepaper's straight-line derivation -------


def test_handshake_matches_whitepaper_derivation() -> None:
    """Recompute §5.4.2–5.4.5 by hand (no Noise state object) and compare every byte."""
    si = clamp(bytes([1]) * 32)
    sr = clamp(bytes([2]) * 32)
    ei = clamp(bytes([3]) * 32)
    er = clamp(bytes([4]) * 32)
    psk = bytes([5]) * 32
    si_pub, sr_pub = public_key(si), public_key(sr)
    ei_pub, er_pub = public_key(ei), public_key(er)
    stamp = tai64n.encode(1_700_000_000.0)

    def H(*p: bytes) -> bytes:
        return hashlib.blake2s(b"".join(p)).digest()

    def aead(k: bytes, p: bytes, a: bytes) -> bytes:
        return ChaCha20Poly1305(k).encrypt(bytes(12), p, a)

    # Initiator, §5.4.2.
    c = H(constants.CONSTRUCTION)
    h = H(c, constants.IDENTIFIER)
    h = H(h, sr_pub)
    c = noise.kdf1(c, ei_pub)
    h = H(h, ei_pub)
    c, k = noise.kdf2(c, noise.dh(ei, sr_pub))
    enc_static = aead(k, si_pub, h)
    h = H(h, enc_static)
    c, k = noise.kdf2(c, noise.dh(si, sr_pub))
    enc_stamp = aead(k, stamp, h)
    h = H(h, enc_stamp)

    fixed = iter([ei, er])
    state_i = new_state(True, si, lambda n: next(fixed), sr_pub, psk)
    msg1, raw1 = create_initiation(state_i, 0xAABBCCDD, stamp)
    assert msg1.ephemeral == ei_pub
    assert msg1.encrypted_static == enc_static
    assert msg1.encrypted_timestamp == enc_stamp
    assert bytes(raw1[:8]) == bytes.fromhex("01000000ddccbbaa")
    assert state_i.handshake_hash == h and state_i.chaining_key == c

    # Responder consumes it, learns S_i and the timestamp.
    state_r, learned, ts = consume_initiation(sr, msg1, lambda n: next(fixed))
    assert learned == si_pub and ts == stamp

    # Responder, §5.4.3.
    c = noise.kdf1(c, er_pub)
    h = H(h, er_pub)
    c = noise.kdf1(c, noise.dh(er, ei_pub))
    c = noise.kdf1(c, noise.dh(er, si_pub))
    c, tau, k = noise.kdf3(c, psk)
    h = H(h, tau)
    enc_nothing = aead(k, b"", h)
    h = H(h, enc_nothing)
    msg2, raw2 = create_response(state_r, 0x11223344, 0xAABBCCDD, psk)
    assert msg2.ephemeral == er_pub and msg2.encrypted_nothing == enc_nothing
    assert bytes(raw2[:12]) == bytes.fromhex("0200000044332211ddccbbaa")

    done = consume_response(state_i, msg2, psk)
    # §5.4.5: (T_send_i, T_recv_i) = KDF2(C, ε); the responder's are swapped.
    t_send_i, t_recv_i = noise.kdf2(c, b"")
    assert done.split() == (t_send_i, t_recv_i)
    assert state_r.split() == (t_recv_i, t_send_i)


def test_response_with_wrong_psk_fails_and_keeps_state() -> None:
    rng = _rng(3)
    si, sr = clamp(rng(32)), clamp(rng(32))
    state_i = new_state(True, si, rng, public_key(sr), bytes(32))
    msg1, _ = create_initiation(state_i, 1, tai64n.encode(1.0))
    state_r, _, _ = consume_initiation(sr, msg1, rng)
    msg2, _ = create_response(state_r, 2, 1, b"\x01" * 32)
    with pytest.raises(NoiseError):
        consume_response(state_i, msg2, bytes(32))
    # A forged response did not disturb the real state.
    state_r2, _, _ = consume_initiation(sr, msg1, rng)
    msg2b, _ = create_response(state_r2, 2, 1, bytes(32))
    consume_response(state_i, msg2b, bytes(32))


def test_initiation_to_wrong_responder_fails() -> None:
    rng = _rng(4)
    si, sr, other = clamp(rng(32)), clamp(rng(32)), clamp(rng(32))
    msg1, _ = create_initiation(new_state(True, si, rng, public_key(sr)), 1, tai64n.encode(1.0))
    with pytest.raises(NoiseError):
        consume_initiation(other, msg1, rng)


# -- the generic Noise machinery, for reuse by signaling -------------------------------------


@pytest.mark.parametrize("pattern", [noise.PATTERN_XX, noise.PATTERN_IK, noise.PATTERN_NK])
def test_generic_patterns_round_trip(pattern: noise.HandshakePattern) -> None:
    rng = _rng(5)
    si, sr = clamp(rng(32)), clamp(rng(32))
    known = public_key(sr) if "s" in pattern.responder_pre else None
    init = noise.HandshakeState(pattern, True, rng=rng, prologue=b"p2ptun", s=si, rs=known)
    resp = noise.HandshakeState(pattern, False, rng=rng, prologue=b"p2ptun", s=sr)
    sender, receiver = init, resp
    for i in range(len(pattern.messages)):
        payload = f"payload {i}".encode()
        assert receiver.read_message(sender.write_message(payload)) == payload
        sender, receiver = receiver, sender
    assert init.finished and resp.finished
    assert init.handshake_hash == resp.handshake_hash
    assert init.split() == tuple(reversed(resp.split()))
    if pattern is noise.PATTERN_XX:
        assert init.rs == public_key(sr) and resp.rs == public_key(si)
    with pytest.raises(NoiseError):
        init.write_message(b"")


def test_generic_prologue_mismatch_fails() -> None:
    rng = _rng(6)
    si, sr = clamp(rng(32)), clamp(rng(32))
    pat = noise.PATTERN_IK
    init = noise.HandshakeState(pat, True, rng=rng, prologue=b"a", s=si, rs=public_key(sr))
    resp = noise.HandshakeState(pat, False, rng=rng, prologue=b"b", s=sr)
    with pytest.raises(NoiseError):
        resp.read_message(init.write_message(b""))


def test_generic_out_of_turn_and_short() -> None:
    rng = _rng(8)
    sr = clamp(rng(32))
    resp = noise.HandshakeState(noise.PATTERN_NK, False, rng=rng, s=sr)
    with pytest.raises(NoiseError):
        resp.write_message(b"")
    with pytest.raises(NoiseError):
        resp.read_message(b"short")

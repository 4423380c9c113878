"""MAC1, MAC2 and cookie replies: WireGuard's DoS mitigation (whitepaper §5.3, §5.4.4, §5.4.7).

Every handshake message ends with ``mac1`` and ``mac2``:

* ``mac1 = MAC(HASH(LABEL_MAC1 || S_pub_receiver), msg[:mac1])`` — proves the sender knows the
  receiver's public key; checked always, before any Diffie-Hellman work.
* ``mac2 = MAC(cookie, msg[:mac2])`` — proves the sender can receive at its source address.
  Checked only when the receiver is under load; a message without a valid ``mac2`` is then
  answered with a cookie reply instead of being processed.

The cookie is ``MAC(R, source address)`` with a random secret ``R`` that changes every two
minutes; it travels encrypted with XChaCha20Poly1305 under ``HASH(LABEL_COOKIE || S_pub)``
with the rejected message's ``mac1`` as associated data.

Cookie replies are what a flood gets under load, so they must stay cheap: HChaCha20 is pure
Python here (≈ 100 µs), so the responder draws its reply nonces as a random 16-byte prefix —
new with every cookie secret — followed by an 8-byte counter, and derives the XChaCha20 subkey
once per prefix. The nonces never repeat under the key, which is all XChaCha20Poly1305 asks;
the receiver sees 24 bytes as ever.
"""

from __future__ import annotations

import hashlib
import hmac as _hmac
import ipaddress

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from p2ptun.addr import Address
from p2ptun.noise import NoiseError, Rng, hash_
from p2ptun.wireguard.constants import LABEL_COOKIE, LABEL_MAC1, MAC_LEN
from p2ptun.wireguard.messages import CookieReply
from p2ptun.wireguard.xchacha import XNONCE_LEN, hchacha20, xaead_decrypt

COOKIE_REFRESH_TIME = 120.0
"""Lifetime of the responder's cookie secret and of a received cookie (whitepaper §5.4.7)."""
COOKIE_SECRET_LEN = 32

_ZERO_MAC = bytes(MAC_LEN)


def mac(key: bytes, data: bytes) -> bytes:
    """``MAC(key, input)``: keyed BLAKE2s with a 16-byte digest (whitepaper §5.4)."""
    return hashlib.blake2s(data, key=key, digest_size=MAC_LEN).digest()


Source = Address | bytes | None
"""Where a datagram came from: an ``(ip, port)`` tuple, opaque bytes, or unknown."""


def source_bytes(source: Source) -> bytes:
    """Bytes that identify a source address for cookie derivation (``A_m`` in §5.4.7).

    The encoding only has to be stable on the responder that makes and checks the cookie:
    the packed IP address followed by the big-endian port.
    """
    if source is None:
        return b""
    if isinstance(source, bytes):
        return source
    host, port = source
    try:
        packed = ipaddress.ip_address(host.split("%", 1)[0]).packed
    except ValueError:
        packed = host.encode("utf-8", "replace")
    return packed + (port & 0xFFFF).to_bytes(2, "big")


def mac1_key(public_key: bytes) -> bytes:
    """``HASH(LABEL_MAC1 || S_pub)``."""
    return hash_(LABEL_MAC1, public_key)


def cookie_key(public_key: bytes) -> bytes:
    """``HASH(LABEL_COOKIE || S_pub)``."""
    return hash_(LABEL_COOKIE, public_key)


class CookieChecker:
    """The receiving side's MAC checks and cookie replies, keyed by our own public key.

    ``rng`` supplies the cookie secret (rotated every :data:`COOKIE_REFRESH_TIME` seconds of
    ``now``) and the 24-byte reply nonces.
    """

    def __init__(self, local_public: bytes, rng: Rng) -> None:
        self._mac1_key = mac1_key(local_public)
        self._cookie_key = cookie_key(local_public)
        self._rng = rng
        self._secret: bytes | None = None
        self._secret_time = 0.0
        self._nonce_prefix = b""
        self._nonce_counter = 0
        self._reply_aead: ChaCha20Poly1305 | None = None

    def check_mac1(self, msg: bytes) -> bool:
        """Is ``msg``'s MAC1 valid for us? ``msg`` is a whole handshake message."""
        off = len(msg) - 2 * MAC_LEN
        if off <= 0:
            return False
        expected = mac(self._mac1_key, msg[:off])
        return _hmac.compare_digest(expected, msg[off : off + MAC_LEN])

    def _secret_fresh(self, now: float) -> bool:
        return self._secret is not None and now - self._secret_time < COOKIE_REFRESH_TIME

    def cookie_for(self, source: Source, now: float) -> bytes:
        """``τ = MAC(R_m, A_m)``, rotating the secret ``R_m`` if it is two minutes old."""
        if not self._secret_fresh(now):
            self._secret = self._rng(COOKIE_SECRET_LEN)
            self._secret_time = now
            self._reply_aead = None  # a new nonce prefix with every secret
        assert self._secret is not None
        return mac(self._secret, source_bytes(source))

    def check_mac2(self, msg: bytes, source: Source, now: float) -> bool:
        """Is ``msg``'s MAC2 made with the cookie we would give ``source`` now?"""
        if not self._secret_fresh(now):
            return False
        assert self._secret is not None
        cookie = mac(self._secret, source_bytes(source))
        off = len(msg) - MAC_LEN
        if off <= 0:
            return False
        return _hmac.compare_digest(mac(cookie, msg[:off]), msg[off:])

    def create_reply(self, msg: bytes, receiver: int, source: Source, now: float) -> CookieReply:
        """The cookie reply to handshake message ``msg`` whose sender index is ``receiver``."""
        cookie = self.cookie_for(source, now)
        if self._reply_aead is None or self._nonce_counter >= 1 << 63:
            self._nonce_prefix = self._rng(16)
            self._nonce_counter = 0
            self._reply_aead = ChaCha20Poly1305(hchacha20(self._cookie_key, self._nonce_prefix))
        tail = self._nonce_counter.to_bytes(8, "little")
        self._nonce_counter += 1
        off = len(msg) - 2 * MAC_LEN
        encrypted = self._reply_aead.encrypt(b"\0\0\0\0" + tail, cookie, msg[off : off + MAC_LEN])
        assert len(self._nonce_prefix) + len(tail) == XNONCE_LEN
        return CookieReply(receiver, self._nonce_prefix + tail, encrypted)


class CookieGenerator:
    """The sending side: computes MAC1/MAC2 for messages to one remote static key.

    It remembers the MAC1 of the last message it stamped (the associated data of a cookie
    reply) and the last cookie received, used for MAC2 for :data:`COOKIE_REFRESH_TIME`.
    """

    def __init__(self, remote_public: bytes) -> None:
        self._mac1_key = mac1_key(remote_public)
        self._cookie_key = cookie_key(remote_public)
        self._cookie: bytes | None = None
        self._cookie_time = 0.0
        self._last_mac1: bytes | None = None

    @property
    def has_cookie(self) -> bool:
        return self._cookie is not None

    def add_macs(self, msg: bytearray, now: float) -> None:
        """Fill in the last 32 bytes of handshake message ``msg`` with MAC1 and MAC2."""
        off1 = len(msg) - 2 * MAC_LEN
        off2 = off1 + MAC_LEN
        mac1 = mac(self._mac1_key, bytes(msg[:off1]))
        msg[off1:off2] = mac1
        self._last_mac1 = mac1
        if self._cookie is not None and now - self._cookie_time < COOKIE_REFRESH_TIME:
            msg[off2:] = mac(self._cookie, bytes(msg[:off2]))
        else:
            msg[off2:] = _ZERO_MAC

    def consume_reply(self, reply: CookieReply, now: float) -> bool:
        """Decrypt and store the cookie in ``reply``; False if it does not authenticate."""
        if self._last_mac1 is None:
            return False
        try:
            cookie = xaead_decrypt(
                self._cookie_key, reply.nonce, reply.encrypted_cookie, self._last_mac1
            )
        except NoiseError:
            return False
        self._cookie = cookie
        self._cookie_time = now
        self._last_mac1 = None  # one reply per message we sent
        return True

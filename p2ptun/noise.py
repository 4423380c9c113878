"""Noise protocol primitives over 25519, ChaChaPoly and BLAKE2s, and a generic handshake state.

Shared by the WireGuard data plane (:mod:`p2ptun.wireguard.handshake`) and the signaling
channel and sealing (:mod:`p2ptun.signal.channel`, :mod:`p2ptun.signal.seal`). It holds the
functions the WireGuard whitepaper §5.4 names (``HASH``, ``HMAC``, ``KDF1..3``, ``DH``,
``AEAD``) and a small generic Noise state machine (Noise specification rev. 34, §5.1–5.3)
driven by handshake patterns, so that each protocol runs, say, ``Noise_IK`` or ``Noise_XX``
over the same primitives with its own prologue.

WireGuard's handshake is exactly ``Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s`` with WireGuard's
prologue: :data:`PATTERN_IKPSK2` with the constants of :mod:`p2ptun.wireguard.constants`
reproduces it byte for byte (whitepaper §5.4.2–5.4.3).

Sans-I/O: randomness comes in as an :data:`Rng`; nothing here reads a clock or the system's
random source.
"""

from __future__ import annotations

import copy
import hashlib
import hmac as _hmac
import struct
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from p2ptun.errors import RemoteProtocolError


class NoiseError(RemoteProtocolError):
    """A Noise handshake step failed: bad AEAD tag, a low-order DH result or a short message.

    This is an authentication failure, not a parse failure: the caller drops and counts it.
    """


HASH_LEN = 32
KEY_LEN = 32
DH_LEN = 32
TAG_LEN = 16
EMPTY = b""

Rng = Callable[[int], bytes]
"""Source of randomness: ``rng(n)`` returns ``n`` random bytes (``os.urandom`` in production,
passed in by the I/O layer)."""

_NONCE = struct.Struct("<4xQ")


# -- whitepaper §5.4 primitives -------------------------------------------------------------


def hash_(*parts: bytes) -> bytes:
    """``HASH(input)``: BLAKE2s with a 32-byte digest, over the concatenation of ``parts``."""
    h = hashlib.blake2s()
    for part in parts:
        h.update(part)
    return h.digest()


def hmac(key: bytes, data: bytes) -> bytes:
    """``HMAC(key, input)``: HMAC over BLAKE2s (RFC 2104, 64-byte block), 32-byte output."""
    return _hmac.new(key, data, hashlib.blake2s).digest()


def kdf(key: bytes, data: bytes, n: int) -> tuple[bytes, ...]:
    """``KDFn(key, input)``: HKDF (RFC 5869) with HMAC-BLAKE2s, ``n`` outputs of 32 bytes."""
    prk = hmac(key, data)
    out: list[bytes] = []
    prev = EMPTY
    for i in range(1, n + 1):
        prev = hmac(prk, prev + bytes((i,)))
        out.append(prev)
    return tuple(out)


def kdf1(key: bytes, data: bytes) -> bytes:
    """``KDF1``: the first HKDF output."""
    return kdf(key, data, 1)[0]


def kdf2(key: bytes, data: bytes) -> tuple[bytes, bytes]:
    """``KDF2``: the first two HKDF outputs."""
    a, b = kdf(key, data, 2)
    return a, b


def kdf3(key: bytes, data: bytes) -> tuple[bytes, bytes, bytes]:
    """``KDF3``: the first three HKDF outputs."""
    a, b, c = kdf(key, data, 3)
    return a, b, c


def nonce(counter: int) -> bytes:
    """The 96-bit ChaCha20Poly1305 nonce: 32 zero bits then the 64-bit little-endian counter."""
    return _NONCE.pack(counter)


def aead_encrypt(key: bytes, counter: int, plaintext: bytes, ad: bytes) -> bytes:
    """``AEAD(key, counter, plain text, auth text)``: ChaCha20Poly1305 (RFC 8439)."""
    return ChaCha20Poly1305(key).encrypt(nonce(counter), plaintext, ad)


def aead_decrypt(key: bytes, counter: int, ciphertext: bytes, ad: bytes) -> bytes:
    """Inverse of :func:`aead_encrypt`; raises :class:`NoiseError` on a bad tag."""
    try:
        return ChaCha20Poly1305(key).decrypt(nonce(counter), ciphertext, ad)
    except InvalidTag:
        raise NoiseError("AEAD authentication failed") from None


def dh_public(private: bytes) -> bytes:
    """The X25519 public key of a 32-byte private key."""
    key = X25519PrivateKey.from_private_bytes(private)
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def dh(private: bytes, public: bytes) -> bytes:
    """``DH(private, public)``: X25519 (RFC 7748); raises :class:`NoiseError` on a zero result.

    A low-order public point yields the all-zero shared secret, which WireGuard rejects.
    """
    try:
        shared = X25519PrivateKey.from_private_bytes(private).exchange(
            X25519PublicKey.from_public_bytes(public)
        )
    except ValueError:
        raise NoiseError("invalid Diffie-Hellman result") from None
    if shared == bytes(DH_LEN):  # pragma: no cover - cryptography already refuses this
        raise NoiseError("invalid Diffie-Hellman result")
    return shared


def dh_generate(rng: Rng) -> tuple[bytes, bytes]:
    """``DH-Generate()``: a fresh (private, public) pair from ``rng`` (X25519 clamps itself)."""
    private = rng(DH_LEN)
    return private, dh_public(private)


# -- Noise §5.2: SymmetricState ----------------------------------------------------------------


class SymmetricState:
    """Noise's SymmetricState (spec §5.2): chaining key ``ck``, hash ``h`` and a cipher key.

    The CipherState (§5.1) is folded in: ``k`` is the current key (or None) and ``n`` its
    counter. WireGuard's derivations ``C = KDF1(C, x)``, ``(C, k) = KDF2(C, x)`` and
    ``H = HASH(H || x)`` are :meth:`mix_key` and :meth:`mix_hash`.
    """

    __slots__ = ("ck", "h", "k", "n")

    def __init__(self, protocol_name: bytes) -> None:
        if len(protocol_name) <= HASH_LEN:
            self.h = protocol_name.ljust(HASH_LEN, b"\0")
        else:
            self.h = hash_(protocol_name)
        self.ck = self.h
        self.k: bytes | None = None
        self.n = 0

    def mix_hash(self, data: bytes) -> None:
        """``h = HASH(h || data)``."""
        self.h = hash_(self.h, data)

    def mix_key(self, ikm: bytes) -> None:
        """``ck, k = KDF2(ck, ikm)`` and reset the nonce."""
        self.ck, self.k = kdf2(self.ck, ikm)
        self.n = 0

    def mix_key_and_hash(self, ikm: bytes) -> None:
        """``ck, t, k = KDF3(ck, ikm)``; ``mix_hash(t)`` (used for the PSK token)."""
        self.ck, temp_h, self.k = kdf3(self.ck, ikm)
        self.mix_hash(temp_h)
        self.n = 0

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        """``c = AEAD(k, n, p, h); h = HASH(h || c)``; plaintext passes through without a key."""
        if self.k is None:
            out = plaintext
        else:
            out = aead_encrypt(self.k, self.n, plaintext, self.h)
            self.n += 1
        self.mix_hash(out)
        return out

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        """Inverse of :meth:`encrypt_and_hash`; raises :class:`NoiseError` on a bad tag."""
        if self.k is None:
            out = ciphertext
        else:
            out = aead_decrypt(self.k, self.n, ciphertext, self.h)
            self.n += 1
        self.mix_hash(ciphertext)
        return out

    def split(self) -> tuple[bytes, bytes]:
        """``(k1, k2) = KDF2(ck, ε)``: initiator→responder and responder→initiator keys."""
        return kdf2(self.ck, EMPTY)

    def copy(self) -> SymmetricState:
        clone = SymmetricState.__new__(SymmetricState)
        clone.ck, clone.h, clone.k, clone.n = self.ck, self.h, self.k, self.n
        return clone


# -- Noise §5.3 / §7: HandshakeState -----------------------------------------------------------


@dataclass(frozen=True)
class HandshakePattern:
    """A Noise handshake pattern (spec §7): pre-messages and message token lists.

    ``initiator_pre`` / ``responder_pre`` list the keys known in advance (``"s"`` or ``"e"``);
    ``messages[i]`` is sent by the initiator when ``i`` is even and by the responder when odd.
    """

    name: str
    initiator_pre: tuple[str, ...]
    responder_pre: tuple[str, ...]
    messages: tuple[tuple[str, ...], ...]

    @property
    def has_psk(self) -> bool:
        return any("psk" in msg for msg in self.messages)


PATTERN_IKPSK2 = HandshakePattern(
    "IKpsk2", (), ("s",), (("e", "es", "s", "ss"), ("e", "ee", "se", "psk"))
)
"""WireGuard's pattern (whitepaper §5.4.2 initiator message, §5.4.3 responder message)."""
PATTERN_IK = HandshakePattern("IK", (), ("s",), (("e", "es", "s", "ss"), ("e", "ee", "se")))
PATTERN_XX = HandshakePattern("XX", (), (), (("e",), ("e", "ee", "s", "es"), ("s", "se")))
PATTERN_NK = HandshakePattern("NK", (), ("s",), (("e", "es"), ("e", "ee")))


def protocol_name(pattern: HandshakePattern) -> bytes:
    """``Noise_<pattern>_25519_ChaChaPoly_BLAKE2s``."""
    return f"Noise_{pattern.name}_25519_ChaChaPoly_BLAKE2s".encode("ascii")


class HandshakeState:
    """Noise's HandshakeState (spec §5.3) for any pattern over 25519/ChaChaPoly/BLAKE2s.

    ``s`` is the local static private key, ``rs`` the remote static public key when known in
    advance, ``psk`` the 32-byte pre-shared key (all zeros if a psk pattern has none, as in
    WireGuard §5.4). A responder that learns ``rs`` from a message may set :attr:`psk` before
    the message carrying the ``psk`` token. ``e`` may be given to fix the ephemeral key;
    otherwise it is drawn from ``rng`` when the ``e`` token is written.
    """

    def __init__(
        self,
        pattern: HandshakePattern,
        initiator: bool,
        *,
        rng: Rng,
        prologue: bytes = EMPTY,
        name: bytes | None = None,
        s: bytes | None = None,
        rs: bytes | None = None,
        psk: bytes | None = None,
        e: bytes | None = None,
        re: bytes | None = None,
    ) -> None:
        self.pattern = pattern
        self.initiator = initiator
        self.rng = rng
        self.symmetric = SymmetricState(name if name is not None else protocol_name(pattern))
        self.s = s
        self.s_pub = dh_public(s) if s is not None else None
        self.rs = rs
        self.e = e
        self.e_pub = dh_public(e) if e is not None else None
        self.re = re
        self.psk = psk if psk is not None else bytes(KEY_LEN)
        self._step = 0
        self.symmetric.mix_hash(prologue)
        for owner_is_initiator, tokens in (
            (True, pattern.initiator_pre),
            (False, pattern.responder_pre),
        ):
            local = owner_is_initiator == initiator
            for token in tokens:
                key = self._pre_key(token, local)
                self.symmetric.mix_hash(key)

    def _pre_key(self, token: str, local: bool) -> bytes:
        if token == "s":
            key = self.s_pub if local else self.rs
        elif token == "e":
            key = self.e_pub if local else self.re
        else:
            raise ValueError(f"bad pre-message token {token!r}")
        if key is None:
            raise ValueError(f"pre-message key {token!r} is required")
        return key

    def fork(self) -> HandshakeState:
        """An independent copy, to try a message without committing to it."""
        clone = copy.copy(self)
        clone.symmetric = self.symmetric.copy()
        return clone

    @property
    def finished(self) -> bool:
        return self._step >= len(self.pattern.messages)

    @property
    def handshake_hash(self) -> bytes:
        """The transcript hash ``h`` (channel binding; WireGuard does not expose it)."""
        return self.symmetric.h

    @property
    def chaining_key(self) -> bytes:
        return self.symmetric.ck

    def _next_tokens(self, writing: bool) -> tuple[str, ...]:
        if self.finished:
            raise NoiseError("handshake already finished")
        my_turn = (self._step % 2 == 0) == self.initiator
        if my_turn != writing:
            raise NoiseError("out-of-turn handshake message")
        tokens = self.pattern.messages[self._step]
        self._step += 1
        return tokens

    def _dh_token(self, token: str) -> None:
        # Token "xy": DH between the initiator's x key and the responder's y key.
        first, second = token[0], token[1]
        mine, theirs = (first, second) if self.initiator else (second, first)
        priv = self.e if mine == "e" else self.s
        pub = self.re if theirs == "e" else self.rs
        if priv is None or pub is None:
            raise NoiseError(f"missing key for {token}")
        self.symmetric.mix_key(dh(priv, pub))

    def write_message(self, payload: bytes = EMPTY) -> bytes:
        """Produce the next handshake message carrying ``payload`` (spec §5.3 WriteMessage)."""
        out = bytearray()
        sym = self.symmetric
        for token in self._next_tokens(writing=True):
            if token == "e":
                if self.e is None:
                    self.e, self.e_pub = dh_generate(self.rng)
                assert self.e_pub is not None
                out += self.e_pub
                sym.mix_hash(self.e_pub)
                if self.pattern.has_psk:
                    sym.mix_key(self.e_pub)
            elif token == "s":
                if self.s_pub is None:
                    raise NoiseError("no local static key")
                out += sym.encrypt_and_hash(self.s_pub)
            elif token == "psk":
                sym.mix_key_and_hash(self.psk)
            else:
                self._dh_token(token)
        out += sym.encrypt_and_hash(payload)
        return bytes(out)

    def read_message(self, message: bytes) -> bytes:
        """Consume the peer's next message and return its payload (spec §5.3 ReadMessage).

        Raises :class:`NoiseError` when the message is short or does not authenticate.
        """
        view = memoryview(message)
        sym = self.symmetric
        for token in self._next_tokens(writing=False):
            if token == "e":
                if len(view) < DH_LEN:
                    raise NoiseError("short handshake message")
                self.re = bytes(view[:DH_LEN])
                view = view[DH_LEN:]
                sym.mix_hash(self.re)
                if self.pattern.has_psk:
                    sym.mix_key(self.re)
            elif token == "s":
                n = DH_LEN + (TAG_LEN if sym.k is not None else 0)
                if len(view) < n:
                    raise NoiseError("short handshake message")
                self.rs = sym.decrypt_and_hash(bytes(view[:n]))
                view = view[n:]
            elif token == "psk":
                sym.mix_key_and_hash(self.psk)
            else:
                self._dh_token(token)
        if sym.k is not None and len(view) < TAG_LEN:
            raise NoiseError("short handshake message")
        return sym.decrypt_and_hash(bytes(view))

    def split(self) -> tuple[bytes, bytes]:
        """Transport keys ``(send, receive)`` from this side's point of view (spec §5.2 Split)."""
        k1, k2 = self.symmetric.split()
        return (k1, k2) if self.initiator else (k2, k1)

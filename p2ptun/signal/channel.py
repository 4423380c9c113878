"""The node ↔ rendezvous channel: Noise_IK_25519_ChaChaPoly_BLAKE2s over TCP frames.

Handshake (Noise spec rev. 34, §7.5 pattern IK)::

    IK:
      <- s
      ...
      -> e, es, s, ss        HANDSHAKE_INIT frame, node → rendezvous
      <- e, ee, se           HANDSHAKE_RESPONSE frame, rendezvous → node

The node knows the rendezvous' static key from its config (the ``<- s`` pre-message), so only
the holder of that key can produce message 2; the rendezvous learns the node's static key from
message 1 and authenticates it (``ss``, and ``se`` which the node needs its private key to
verify-and-use). Both handshake payloads are empty.

The protocol name ``Noise_IK_25519_ChaChaPoly_BLAKE2s`` and the prologue :data:`PROLOGUE`
(Noise spec §6) differ from WireGuard's ``Noise_IKpsk2...`` / ``WireGuard v1 zx2c4...`` and
from the end-to-end sealing construction, so no key or transcript of one protocol can be used
in another, although all share the primitives of :mod:`p2ptun.noise`.

**Replay of message 1.** IK's first message can be replayed (Noise spec §7.7, payload property
of message 1). A replayed message 1 only makes the rendezvous compute a message 2 whose keys
depend on a fresh ephemeral the attacker does not know; the rendezvous treats a node as
authenticated only once a *transport* frame from it decrypts (keys from ``ee``), which a
replayer cannot produce. But reading message 1 and writing message 2 cost the rendezvous five
X25519 operations (≈ 0.6 ms) that a replayer, or anyone sending 96 random bytes, does not pay.

**Retry under load.** So a rendezvous under load (:mod:`p2ptun.signal.hub` measures its
handshakes and pending connections) does no Diffie-Hellman for a bare message 1. It answers
with a HANDSHAKE_RETRY frame carrying a random :data:`RETRY_TOKEN_LEN`-byte token for this
connection, and expects a HANDSHAKE_INIT_PROOF frame::

    node static public key (32) || proof (16) || a fresh Noise IK message 1 (96)

    proof = MAC(proof_key, token || message 1)            (keyed BLAKE2s, 16 bytes)
    proof_key = HASH(PROOF_LABEL || DH(node static, rendezvous static))

The static-static secret is one the rendezvous can compute once per known node key and keep,
and that no one without a node's or the rendezvous' private key can: a replayed or forged
message, or one from a key the rendezvous does not know, fails these cheap checks and is
refused before any Diffie-Hellman; a proof is bound to its connection's token. Only a valid
proof leads to the Noise handshake, whose message 1 must carry the same static key. The
price: under load the node's key crosses the wire in the clear (its TCP connection already
shows its address), a round trip more, and nodes the rendezvous does not know yet (a first
registration under open registration) wait until the load is gone. A node that predates the
retry gets in while the rendezvous is not under load.

**Transport frames** (Noise spec §5.1 CipherState, with explicit nonces as in §11.4 of the spec
for unreliable transports, here used to give a clear error): the payload of a TRANSPORT frame is
``counter (8 bytes, big-endian) || ChaCha20Poly1305(k, counter, plaintext, ad=frame header)``.
The counter must be exactly one more than the last one accepted in that direction (the TCP
stream is ordered, so anything else is a replay, a reorder or a deletion) and starts at 0. Each
direction has its own key from ``Split()`` (§5.2). There is no rekey: a session is bounded by
:attr:`ChannelLimits.max_messages` per direction; the client then reconnects and handshakes
afresh (it also does so after ``max_session_age``, see the client core).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import struct
from dataclasses import dataclass

from p2ptun.noise import (
    DH_LEN,
    PATTERN_IK,
    TAG_LEN,
    HandshakeState,
    NoiseError,
    Rng,
    aead_decrypt,
    aead_encrypt,
    dh,
    hash_,
    protocol_name,
)
from p2ptun.signal.errors import ChannelError, SignalDecodeError
from p2ptun.signal.frames import HEADER, MAX_PAYLOAD, VERSION, Frame, FrameType, encode_frame

PROTOCOL_NAME = protocol_name(PATTERN_IK)
"""``Noise_IK_25519_ChaChaPoly_BLAKE2s``."""
PROLOGUE = b"p2ptun signaling channel v1"
"""Mixed into the handshake hash so transcripts of other protocols never verify here."""
INIT_LEN = DH_LEN + (DH_LEN + TAG_LEN) + TAG_LEN
"""Message 1: ``e`` (32), encrypted ``s`` (48), empty encrypted payload (16)."""
RESPONSE_LEN = DH_LEN + TAG_LEN
"""Message 2: ``e`` (32), empty encrypted payload (16)."""
_COUNTER = struct.Struct("!Q")
MAX_PLAINTEXT = MAX_PAYLOAD - _COUNTER.size - TAG_LEN
RETRY_TOKEN_LEN = 16
"""Bytes of the token a HANDSHAKE_RETRY carries."""
PROOF_LEN = 16
"""Bytes of the proof in a HANDSHAKE_INIT_PROOF."""
INIT_PROOF_LEN = DH_LEN + PROOF_LEN + INIT_LEN
"""A HANDSHAKE_INIT_PROOF payload: static key, proof, message 1."""
PROOF_LABEL = b"p2ptun signaling retry proof v1"
"""Domain separation of the proof key (module docstring)."""
MAX_HANDSHAKE_PAYLOAD = max(INIT_LEN, RESPONSE_LEN, RETRY_TOKEN_LEN, INIT_PROOF_LEN)
"""The largest handshake frame payload: what a side that is still shaking hands accepts."""


def proof_key(static_private: bytes, remote_public: bytes) -> bytes:
    """``HASH(PROOF_LABEL || DH(static, remote))``: the same for the node (its key, the
    rendezvous' public key) and the rendezvous (its key, the node's public key). Raises
    NoiseError for a public key without a valid Diffie-Hellman result."""
    return hash_(PROOF_LABEL, dh(static_private, remote_public))


def handshake_proof(key: bytes, token: bytes, message: bytes) -> bytes:
    """``MAC(key, token || message 1)``: keyed BLAKE2s, :data:`PROOF_LEN` bytes."""
    return hashlib.blake2s(token + message, key=key, digest_size=PROOF_LEN).digest()


def check_proof(key: bytes, token: bytes, message: bytes, proof: bytes) -> bool:
    """Does ``proof`` prove ``message`` for ``token`` under ``key`` (constant time)?"""
    return hmac.compare_digest(handshake_proof(key, token, message), proof)


class ChannelState(enum.Enum):
    #: Initiator before sending message 1, responder before receiving it.
    START = "start"
    #: Initiator: message 1 sent, waiting for message 2.
    AWAIT_RESPONSE = "await_response"
    #: Transport keys in place.
    ESTABLISHED = "established"
    #: A frame failed or the session ran out; nothing more is accepted.
    CLOSED = "closed"


@dataclass(frozen=True)
class ChannelLimits:
    """Bounds on one channel session."""

    #: Transport frames per direction before the session must be replaced (Noise spec §11.3
    #: asks for rekey or a new session long before the 2^64 nonce limit).
    max_messages: int = 1 << 32


class NoiseChannel:
    """One side of a signaling channel (sans-I/O): frames in, frames and plaintexts out.

    Use :meth:`initiator` on the node and :meth:`responder` on the rendezvous.
    """

    def __init__(
        self,
        handshake: HandshakeState,
        limits: ChannelLimits,
    ) -> None:
        self._hs: HandshakeState | None = handshake
        self.limits = limits
        self.state = ChannelState.START
        self._send_key: bytes | None = None
        self._recv_key: bytes | None = None
        self._send_n = 0
        self._recv_n = 0
        self.remote_static: bytes | None = handshake.rs
        self.handshake_hash: bytes | None = None

    @classmethod
    def initiator(
        cls,
        static_private: bytes,
        responder_public: bytes,
        rng: Rng,
        limits: ChannelLimits | None = None,
    ) -> NoiseChannel:
        hs = HandshakeState(
            PATTERN_IK,
            True,
            rng=rng,
            prologue=PROLOGUE,
            s=static_private,
            rs=responder_public,
        )
        return cls(hs, limits or ChannelLimits())

    @classmethod
    def responder(
        cls, static_private: bytes, rng: Rng, limits: ChannelLimits | None = None
    ) -> NoiseChannel:
        hs = HandshakeState(PATTERN_IK, False, rng=rng, prologue=PROLOGUE, s=static_private)
        return cls(hs, limits or ChannelLimits())

    @property
    def established(self) -> bool:
        return self.state is ChannelState.ESTABLISHED

    @property
    def messages_sent(self) -> int:
        return self._send_n

    @property
    def messages_received(self) -> int:
        return self._recv_n

    def _fail(self, message: str) -> ChannelError:
        self.state = ChannelState.CLOSED
        self._hs = None
        return ChannelError(message)

    def _finish(self, hs: HandshakeState) -> None:
        self._send_key, self._recv_key = hs.split()
        self.handshake_hash = hs.handshake_hash
        self.remote_static = hs.rs
        self._hs = None
        self.state = ChannelState.ESTABLISHED

    def start(self) -> bytes:
        """Initiator: the HANDSHAKE_INIT frame (Noise IK message 1)."""
        if self.state is not ChannelState.START or self._hs is None or not self._hs.initiator:
            raise ChannelError("handshake already started")
        message = self._hs.write_message()
        self.state = ChannelState.AWAIT_RESPONSE
        return encode_frame(FrameType.HANDSHAKE_INIT, message)

    def start_with_proof(self, own_public: bytes, token: bytes, key: bytes) -> bytes:
        """Initiator, answering a HANDSHAKE_RETRY with ``token``: the HANDSHAKE_INIT_PROOF
        frame (our static public key, the proof under ``key`` — :func:`proof_key` — and a
        fresh message 1; module docstring)."""
        if self.state is not ChannelState.START or self._hs is None or not self._hs.initiator:
            raise ChannelError("handshake already started")
        if len(token) != RETRY_TOKEN_LEN or len(own_public) != DH_LEN:
            raise ChannelError("bad retry token")
        message = self._hs.write_message()
        self.state = ChannelState.AWAIT_RESPONSE
        payload = own_public + handshake_proof(key, token, message) + message
        return encode_frame(FrameType.HANDSHAKE_INIT_PROOF, payload)

    def receive_handshake(self, frame: Frame) -> bytes | None:
        """Consume a handshake frame.

        Responder: reads message 1 and returns the HANDSHAKE_RESPONSE frame; afterwards
        :attr:`remote_static` is the node's key (authenticated, but see the module note on
        replays). Initiator: reads message 2 and returns None. Raises ChannelError when the
        message does not authenticate or arrives out of turn, SignalDecodeError if malformed.
        """
        hs = self._hs
        if hs is None:
            raise self._fail("unexpected handshake frame")
        if hs.initiator:
            if self.state is not ChannelState.AWAIT_RESPONSE:
                raise self._fail("unexpected handshake frame")
            if frame.type is not FrameType.HANDSHAKE_RESPONSE:
                raise self._fail("expected a handshake response")
            if len(frame.payload) != RESPONSE_LEN:
                self.state = ChannelState.CLOSED
                raise SignalDecodeError("handshake response has the wrong length")
            try:
                hs.read_message(frame.payload)
            except NoiseError:
                raise self._fail("handshake response does not authenticate") from None
            self._finish(hs)
            return None
        if self.state is not ChannelState.START or frame.type is not FrameType.HANDSHAKE_INIT:
            raise self._fail("expected a handshake initiation")
        if len(frame.payload) != INIT_LEN:
            self.state = ChannelState.CLOSED
            raise SignalDecodeError("handshake initiation has the wrong length")
        try:
            hs.read_message(frame.payload)
            response = hs.write_message()
        except NoiseError:
            raise self._fail("handshake initiation does not authenticate") from None
        self._finish(hs)
        return encode_frame(FrameType.HANDSHAKE_RESPONSE, response)

    def encrypt(self, plaintext: bytes) -> bytes:
        """A TRANSPORT frame carrying ``plaintext``."""
        if self.state is not ChannelState.ESTABLISHED or self._send_key is None:
            raise ChannelError("channel is not established")
        if len(plaintext) > MAX_PLAINTEXT:
            raise ValueError(f"plaintext of {len(plaintext)} bytes exceeds {MAX_PLAINTEXT}")
        if self._send_n >= self.limits.max_messages:
            raise self._fail("session message limit reached")
        n = self._send_n
        self._send_n += 1
        length = _COUNTER.size + len(plaintext) + TAG_LEN
        header = HEADER.pack(VERSION, FrameType.TRANSPORT, length)
        sealed = aead_encrypt(self._send_key, n, plaintext, header)
        return header + _COUNTER.pack(n) + sealed

    def decrypt(self, frame: Frame) -> bytes:
        """The plaintext of a TRANSPORT frame; raises ChannelError on any authentication
        failure, a counter that is not the next one, or the session limit."""
        if self.state is not ChannelState.ESTABLISHED or self._recv_key is None:
            raise self._fail("transport frame before the handshake finished")
        if frame.type is not FrameType.TRANSPORT:
            raise self._fail("handshake frame on an established channel")
        payload = frame.payload
        if len(payload) < _COUNTER.size + TAG_LEN:
            self.state = ChannelState.CLOSED
            raise SignalDecodeError("short transport frame")
        (counter,) = _COUNTER.unpack_from(payload)
        if counter != self._recv_n:
            raise self._fail(f"counter {counter} is not the expected {self._recv_n}")
        if counter >= self.limits.max_messages:
            raise self._fail("session message limit reached")
        try:
            plaintext = aead_decrypt(
                self._recv_key, counter, payload[_COUNTER.size :], frame.header
            )
        except NoiseError:
            raise self._fail("transport frame does not authenticate") from None
        self._recv_n += 1
        return plaintext

    def close(self) -> None:
        """Forget the keys."""
        self.state = ChannelState.CLOSED
        self._hs = None
        self._send_key = self._recv_key = None

"""WireGuard's handshake messages on top of the generic Noise state (whitepaper §5.4.2–5.4.5).

The functions here build and consume the Noise parts of message types 1 and 2 with
``Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s`` and the WireGuard prologue; MACs, indices, timestamps
policy and key rotation are the caller's business (:mod:`.peer`, :mod:`.device`). Every
consume function works on a copy of the Noise state, so a forged message leaves the real
handshake untouched.
"""

from __future__ import annotations

from enum import Enum

from p2ptun.noise import DH_LEN, PATTERN_IKPSK2, HandshakeState, NoiseError, Rng
from p2ptun.wireguard.constants import CONSTRUCTION, IDENTIFIER
from p2ptun.wireguard.messages import Initiation, Response
from p2ptun.wireguard.tai64n import TAI64N_LEN


class HandshakeStage(Enum):
    """Where a peer's handshake stands (whitepaper §5.4; wireguard-go's handshake states)."""

    ZEROED = "zeroed"
    INITIATION_CREATED = "initiation-created"


def new_state(
    initiator: bool,
    local_private: bytes,
    rng: Rng,
    remote_public: bytes | None = None,
    psk: bytes | None = None,
) -> HandshakeState:
    """A fresh Noise state with WireGuard's protocol name and prologue (§5.4.2 first lines)."""
    return HandshakeState(
        PATTERN_IKPSK2,
        initiator,
        rng=rng,
        prologue=IDENTIFIER,
        name=CONSTRUCTION,
        s=local_private,
        rs=remote_public,
        psk=psk,
    )


def create_initiation(
    state: HandshakeState, sender: int, timestamp: bytes
) -> tuple[Initiation, bytearray]:
    """Initiator: the first message, with zero MACs (§5.4.2). Returns it decoded and encoded."""
    noise = state.write_message(timestamp)
    eph = noise[:DH_LEN]
    static = noise[DH_LEN : DH_LEN + 48]
    stamp = noise[DH_LEN + 48 :]
    msg = Initiation(sender, eph, static, stamp)
    return msg, bytearray(msg.encode())


def consume_initiation(
    local_private: bytes, msg: Initiation, rng: Rng
) -> tuple[HandshakeState, bytes, bytes]:
    """Responder: decrypt an initiation; returns ``(state, initiator static, timestamp)``.

    Raises :class:`NoiseError` if it does not authenticate. The responder then checks the
    static key against its peers and the timestamp against the last one it accepted.
    """
    state = new_state(False, local_private, rng)
    timestamp = state.read_message(msg.noise_message)
    if state.rs is None or len(timestamp) != TAI64N_LEN:  # pragma: no cover - fixed sizes
        raise NoiseError("malformed initiation")
    return state, state.rs, timestamp


def create_response(
    state: HandshakeState, sender: int, receiver: int, psk: bytes | None
) -> tuple[Response, bytearray]:
    """Responder: the second message, with zero MACs (§5.4.3). ``state`` must be fresh."""
    if psk is not None:
        state.psk = psk
    noise = state.write_message(b"")
    msg = Response(sender, receiver, noise[:DH_LEN], noise[DH_LEN:])
    return msg, bytearray(msg.encode())


def consume_response(state: HandshakeState, msg: Response, psk: bytes | None) -> HandshakeState:
    """Initiator: check a response against a copy of ``state``; return the finished copy."""
    fork = state.fork()
    if psk is not None:
        fork.psk = psk
    payload = fork.read_message(msg.noise_message)
    if payload:  # pragma: no cover - the tag covers an empty payload
        raise NoiseError("response carries a payload")
    return fork


def session_keys(state: HandshakeState) -> tuple[bytes, bytes]:
    """``(send key, receive key)`` after the handshake (§5.4.5)."""
    return state.split()

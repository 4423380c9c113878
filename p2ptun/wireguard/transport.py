"""Session keypairs and the data-path hot path (whitepaper §5.4.6).

A transport data message is ``type=4 | reserved | receiver index | counter (u64 LE)`` followed by
``ChaCha20Poly1305(T_send, counter, padded packet, ε)``. The plaintext is zero-padded to a
multiple of 16 bytes (never beyond the MTU); an empty plaintext is a keepalive.

:func:`seal` and :func:`open_into` are plain functions over caller-owned, preallocated buffers:
``cryptography``'s AEAD ``encrypt_into`` / ``decrypt_into`` (new in cryptography 47, hence the
dependency floor) write straight into them, so no objects are made per packet. Each
:class:`Keypair` keeps its two ``ChaCha20Poly1305`` objects and nonce buffers for its lifetime.
"""

from __future__ import annotations

import struct

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from p2ptun.noise import TAG_LEN
from p2ptun.wireguard.messages import (
    MAX_DATAGRAM,
    TRANSPORT_HEADER,
    TRANSPORT_HEADER_LEN,
    MessageType,
)
from p2ptun.wireguard.replay import REJECT_AFTER_MESSAGES, ReplayWindow

PADDING_MULTIPLE = 16
MAX_PLAINTEXT = MAX_DATAGRAM - TRANSPORT_HEADER_LEN - TAG_LEN
"""The largest plaintext that still fits one UDP datagram once sealed."""
TRANSPORT_OVERHEAD = TRANSPORT_HEADER_LEN + TAG_LEN
"""Bytes a transport message adds to its (padded) plaintext: header and tag."""
BUFFER_SIZE = MAX_DATAGRAM + PADDING_MULTIPLE
"""Size for buffers passed to :func:`seal` / :func:`open_into` (room for any message)."""

NONCE_COUNTER = struct.Struct("<Q")
"""The counter part of a transport nonce: 4 zero bytes, then this (whitepaper §5.4.6)."""
_ZEROS = memoryview(bytes(PADDING_MULTIPLE))
_TRANSPORT = int(MessageType.TRANSPORT)


def padded_length(size: int, mtu: int = 0) -> int:
    """Length of a ``size``-byte plaintext after WireGuard's padding (§5.4.6).

    Rounded up to a multiple of 16, but not beyond ``mtu`` (0 = no MTU known); a packet
    already larger than the MTU is padded as its remainder modulo the MTU would be.
    """
    padded = (size + PADDING_MULTIPLE - 1) & ~(PADDING_MULTIPLE - 1)
    if mtu <= 0:
        return padded
    last = size % mtu if size > mtu else size
    last_padded = min((last + PADDING_MULTIPLE - 1) & ~(PADDING_MULTIPLE - 1), mtu)
    return size + (last_padded - last)


class Keypair:
    """One session's transport keys and counters (whitepaper §5.4.5–5.4.6).

    ``local_index`` is the receiver index peers put on messages to us, ``remote_index`` the one
    we put on messages to them. ``created`` is the monotonic time the keys were derived and
    ``is_initiator`` whether we sent the initiation that made them (it decides who rekeys on
    age, §6.2).
    """

    __slots__ = (
        "created",
        "is_initiator",
        "local_index",
        "recv_aead",
        "recv_nonce",
        "remote_index",
        "replay",
        "send_aead",
        "send_counter",
        "send_nonce",
    )

    def __init__(
        self,
        send_key: bytes,
        recv_key: bytes,
        *,
        local_index: int,
        remote_index: int,
        created: float,
        is_initiator: bool,
        reject_after_messages: int = REJECT_AFTER_MESSAGES,
    ) -> None:
        self.send_aead = ChaCha20Poly1305(send_key)
        self.recv_aead = ChaCha20Poly1305(recv_key)
        self.send_nonce = bytearray(12)
        self.recv_nonce = bytearray(12)
        self.local_index = local_index
        self.remote_index = remote_index
        self.created = created
        self.is_initiator = is_initiator
        self.send_counter = 0
        self.replay = ReplayWindow(reject_after_messages)

    def __repr__(self) -> str:
        role = "initiator" if self.is_initiator else "responder"
        return f"<Keypair local={self.local_index:#010x} {role} sent={self.send_counter}>"


def seal(
    aead: ChaCha20Poly1305,
    nonce: bytearray,
    receiver: int,
    counter: int,
    packet: bytes | bytearray | memoryview,
    out: bytearray,
    scratch: bytearray,
    mtu: int = 0,
) -> int:
    """Write the transport message for ``packet`` into ``out``; return its length.

    ``nonce`` is a 12-byte buffer reused for every packet of the key; ``scratch`` holds the
    padded plaintext when ``packet`` is not already a multiple of 16. Both ``out`` and
    ``scratch`` must be at least :data:`BUFFER_SIZE` bytes. The caller owns the counter.
    """
    size = len(packet)
    padded = (size + 15) & ~15  # padded_length(), inlined for the common case
    if 0 < mtu < padded:
        padded = padded_length(size, mtu)
    TRANSPORT_HEADER.pack_into(out, 0, _TRANSPORT, receiver, counter)
    NONCE_COUNTER.pack_into(nonce, 4, counter)
    if padded == size:
        plain: bytes | bytearray | memoryview = packet
    else:
        view = memoryview(scratch)
        view[:size] = packet
        view[size:padded] = _ZEROS[: padded - size]
        plain = view[:padded]
    end = TRANSPORT_HEADER_LEN + padded + TAG_LEN
    aead.encrypt_into(nonce, plain, None, memoryview(out)[TRANSPORT_HEADER_LEN:end])
    return end


def seal_with(keypair: Keypair, packet: bytes, out: bytearray, scratch: bytearray) -> int:
    """:func:`seal` with ``keypair``'s next counter (which it advances)."""
    counter = keypair.send_counter
    keypair.send_counter = counter + 1
    return seal(
        keypair.send_aead, keypair.send_nonce, keypair.remote_index, counter, packet, out, scratch
    )


def open_into(
    aead: ChaCha20Poly1305,
    nonce: bytearray,
    counter: int,
    message: bytes | bytearray | memoryview,
    out: bytearray,
) -> int:
    """Decrypt transport ``message`` (header included) into ``out``; return plaintext length.

    Raises ``cryptography.exceptions.InvalidTag`` if it does not authenticate. The caller has
    decoded the header (:func:`~p2ptun.wireguard.messages.decode_transport_header`) and checks
    the counter against the replay window.
    """
    size = len(message) - TRANSPORT_HEADER_LEN - TAG_LEN
    NONCE_COUNTER.pack_into(nonce, 4, counter)
    ciphertext = memoryview(message)[TRANSPORT_HEADER_LEN:]
    aead.decrypt_into(nonce, ciphertext, None, memoryview(out)[:size])
    return size


def inner_length(buf: bytes | bytearray | memoryview, size: int) -> int:
    """Length of the IP packet at the start of ``buf[:size]``, or -1 if it is not one.

    Uses the IPv4 total length or the IPv6 payload length, which removes the padding.
    """
    if size < 1:
        return -1
    version = buf[0] >> 4
    if version == 4:
        if size < 20:
            return -1
        length = (buf[2] << 8) | buf[3]
        if length < 20 or length > size:
            return -1
        return length
    if version == 6:
        if size < 40:
            return -1
        length = 40 + ((buf[4] << 8) | buf[5])
        if length > size:
            return -1
        return length
    return -1

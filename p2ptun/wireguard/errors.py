"""Errors raised by the WireGuard protocol layer."""

from __future__ import annotations

from p2ptun.errors import DecodeError, P2ptunError


class WireGuardDecodeError(DecodeError):
    """A datagram that is not a well-formed WireGuard message (whitepaper §5.4).

    Raised by every decoder in :mod:`p2ptun.wireguard.messages` and by nothing else; the I/O
    layer drops the datagram and counts it.
    """


class NoiseError(P2ptunError):
    """A Noise handshake step failed: bad AEAD tag, a low-order DH result or a short message.

    This is an authentication failure, not a parse failure: the caller drops and counts it.
    """

"""Errors raised by the WireGuard protocol layer.

A handshake message that parses but does not authenticate raises
:class:`p2ptun.noise.NoiseError`, the error of the Noise primitives shared with signaling.
"""

from __future__ import annotations

from p2ptun.errors import DecodeError


class WireGuardDecodeError(DecodeError):
    """A datagram that is not a well-formed WireGuard message (whitepaper §5.4).

    Raised by every decoder in :mod:`p2ptun.wireguard.messages` and by nothing else; the I/O
    layer drops the datagram and counts it.
    """

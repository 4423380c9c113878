"""Errors raised by the signaling layer (node ↔ rendezvous channel and end-to-end sealing)."""

from __future__ import annotations

from p2ptun.errors import DecodeError, RemoteProtocolError


class SignalDecodeError(DecodeError):
    """Bytes from the network that are not a well-formed signaling frame or message.

    Every decoder in :mod:`p2ptun.signal` raises this and nothing else; the caller drops the
    frame (and, on the TCP channel, the connection) and counts it.
    """


class ChannelError(RemoteProtocolError):
    """The Noise channel refused a frame: a bad AEAD tag, a counter that is not the next one,
    a handshake that does not authenticate, or a session past its message bound.

    The caller closes the TCP connection; the client reconnects with backoff.
    """


class SealError(RemoteProtocolError):
    """A sealed node-to-node message was refused: it does not open with the keys the
    receiver's configuration names, it is a replay or out of order, or it is stale.

    ``reason`` is a short machine-readable word for counters (``unknown_peer``, ``bad_seal``,
    ``replay``, ``stale``, ``malformed``).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason

"""The one owner of a node socket's dispatch: classify each datagram by its first bytes.

docs/ARCHITECTURE.md §2: a single UDP socket per address family carries ICE connectivity checks
(STUN), TURN client traffic (STUN-framed TURN messages and ChannelData) and WireGuard messages.
:func:`classify` tells them apart from their first bytes, and a :class:`Dispatcher` — built once
by the composition root with every handler it will ever have — hands each datagram to the
handler of its kind, without a trio channel per packet. Datagrams of no known kind, of a kind
nobody handles, or that a handler rejects as malformed (:class:`~p2ptun.errors.DecodeError`)
are dropped and counted here.

The dispatcher is the :class:`~p2ptun.net.ports.DatagramReceiver` of its port: the port drains
its socket in batches and calls :meth:`Dispatcher.datagram` for each datagram, then
:meth:`Dispatcher.drained` at the end of the batch, the place where the handlers' owners flush
what the batch queued (the data path writes to TUN and sends; ICE sends its checks).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, fields

from p2ptun.addr import Address
from p2ptun.errors import DecodeError

STUN_MAGIC_COOKIE = b"\x21\x12\xa4\x42"
"""RFC 8489 §5: bytes 4–8 of every STUN message."""
STUN_HEADER_LEN = 20
WIREGUARD_MIN_LEN = 4


class PacketKind(enum.IntEnum):
    """What a datagram on the shared socket is (docs/ARCHITECTURE.md §2)."""

    STUN = 0
    """STUN (RFC 8489): ICE checks, Binding requests to STUN servers, TURN control messages."""
    CHANNEL_DATA = 1
    """TURN ChannelData (RFC 8656 §12.4): relayed data on a bound channel."""
    WIREGUARD = 2
    """A WireGuard message, types 1–4."""
    OTHER = 3
    """Anything else: dropped and counted."""


def classify(data: bytes | bytearray | memoryview) -> PacketKind:
    """Classify one datagram by its first bytes.

    - WireGuard transport data: first byte 4, bytes 1–3 zero. Tested first: it is the bulk of
      the traffic, and no STUN message starts with 4.
    - TURN ChannelData: first byte 0x40–0x4F and at least the 4-byte ChannelData header (the
      bulk of a relayed path; no STUN message starts so either).
    - STUN: first byte 0–3, bytes 4–8 the magic cookie 0x2112A442, and at least the 20-byte
      STUN header. Tested before the other WireGuard types: a type byte 1–3 can look like a
      STUN type, the cookie is the stronger signal.
    - WireGuard handshake: first byte 1–3 and bytes 1–3 zero.
    - OTHER: everything else, including the empty datagram.

    Only the kind is decided here; each protocol's decoder validates the rest.
    """
    n = len(data)
    if n < WIREGUARD_MIN_LEN:  # also the smallest length any kind needs
        return PacketKind.OTHER
    first = data[0]
    if first == 4:
        if data[1] or data[2] or data[3]:
            return PacketKind.OTHER
        return PacketKind.WIREGUARD
    if 0x40 <= first <= 0x4F:
        # n >= 4 == the ChannelData header length holds here.
        return PacketKind.CHANNEL_DATA
    if first <= 3 and n >= STUN_HEADER_LEN and data[4:8] == STUN_MAGIC_COOKIE:
        return PacketKind.STUN
    if 1 <= first <= 3 and data[1] == 0 and data[2] == 0 and data[3] == 0:
        return PacketKind.WIREGUARD
    return PacketKind.OTHER


Handler = Callable[[memoryview, Address], None]
"""``handler(data, addr)``: one received datagram of one kind and its source address. ``data``
is valid until the batch ends (:meth:`Dispatcher.drained`); a handler that keeps it copies it.
It may raise :class:`~p2ptun.errors.DecodeError` for a malformed datagram."""


@dataclass
class DispatchCounters:
    """What one socket's dispatcher saw, by kind, and what it dropped."""

    rx_stun: int = 0
    rx_channel_data: int = 0
    rx_wireguard: int = 0
    rx_other: int = 0
    """Datagrams of no known kind: dropped."""
    rx_unhandled: int = 0
    """Datagrams of a known kind (counted there too) with no handler: dropped."""
    rx_malformed: int = 0
    """Datagrams a handler rejected with DecodeError: dropped."""

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class Dispatcher:
    """Hands each datagram of one socket to the handler of its kind (module docstring).

    Built once with every handler; nobody patches it afterwards. ``drained`` runs at the end
    of each batch of the port.
    """

    def __init__(
        self,
        *,
        stun: Handler | None = None,
        channel_data: Handler | None = None,
        wireguard: Handler | None = None,
        drained: Callable[[], None] | None = None,
    ) -> None:
        self._handlers: tuple[Handler | None, ...] = (stun, channel_data, wireguard, None)
        self._drained = drained
        self.counters = DispatchCounters()

    def datagram(self, data: memoryview, source: Address) -> None:
        """Classify one datagram and hand it to its handler (or count the drop)."""
        counters = self.counters
        kind = classify(data)
        if kind is PacketKind.WIREGUARD:
            counters.rx_wireguard += 1
        elif kind is PacketKind.CHANNEL_DATA:
            counters.rx_channel_data += 1
        elif kind is PacketKind.STUN:
            counters.rx_stun += 1
        else:
            counters.rx_other += 1
            return
        handler = self._handlers[kind]
        if handler is None:
            counters.rx_unhandled += 1
            return
        try:
            handler(data, source)
        except DecodeError:
            counters.rx_malformed += 1

    def drained(self) -> None:
        if self._drained is not None:
            self._drained()


__all__ = [
    "DispatchCounters",
    "Dispatcher",
    "Handler",
    "PacketKind",
    "classify",
]

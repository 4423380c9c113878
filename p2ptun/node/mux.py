"""Demultiplexing the node's shared UDP sockets beyond WireGuard (ARCHITECTURE.md §2).

:class:`~p2ptun.net.udp.UdpEndpoint` classifies every datagram by its first bytes; WireGuard
goes straight to the data path (:class:`~p2ptun.node.wgtunnel.WgTunnel`). The rest comes here:

* anything from the address of one of our UDP **TURN servers** (STUN-framed TURN responses
  and Data indications, ChannelData) → that :class:`~p2ptun.node.relay.TurnRelay`; what it
  unwraps comes back through :meth:`UdpMux.relayed` — STUN as if it had arrived on the relayed
  address, WireGuard to the data path;
* a STUN **response** whose transaction id is one of ours → the waiter that sent it (server-
  reflexive gathering, ``p2ptun ping``), or the ICE agent that sent the request (remembered
  when the request went out);
* a STUN **request** (ICE connectivity or consent check) → the ICE agent whose local ufrag is
  the first half of USERNAME (``local:remote``, RFC 8445 §7.2.2);
* anything else is dropped and counted.

Local address of a datagram: the sockets are bound to the wildcard address (one per family),
so the kernel does not say which local address a datagram was sent to, and our replies leave
from the address the routing table picks for the destination. The mux therefore takes that
routing choice as the datagram's local base (:meth:`UdpMux.local_for`, a route lookup through a
connected probe socket, cached until the network changes). A host candidate is usable towards
a remote address exactly when it is the address the kernel sends from; pairs through other
local addresses fail their checks instead of pretending, and the agent picks the ones that
work.
"""

from __future__ import annotations

import socket
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from p2ptun.addr import Address
from p2ptun.errors import DecodeError
from p2ptun.log import get_logger
from p2ptun.net.udp import PacketKind, UdpEndpoint, classify
from p2ptun.stun import Message, MessageClass, StunDecodeError

log = get_logger("node.mux")

MAX_TRACKED_REQUESTS = 4096
MAX_ROUTE_CACHE = 1024
STUN_MAGIC = b"\x21\x12\xa4\x42"


class IceSink(Protocol):
    """The part of a peer's ICE attempt that the mux feeds."""

    def handle_stun(self, data: bytes, local: Address, remote: Address) -> bool:
        """Give one STUN datagram to the agent; False if it was not for it."""
        ...


StunWaiter = Callable[[Message, Address], None]


@dataclass
class MuxCounters:
    stun_to_ice: int = 0
    stun_to_waiters: int = 0
    stun_to_turn: int = 0
    stun_unknown_ufrag: int = 0
    stun_unmatched: int = 0
    stun_malformed: int = 0
    channel_data_unknown_server: int = 0
    relayed_wireguard: int = 0
    relayed_stun: int = 0
    relayed_other: int = 0


class UdpMux:
    """Routes STUN and ChannelData from the shared sockets (see the module docstring)."""

    def __init__(
        self,
        endpoints: Sequence[UdpEndpoint],
        *,
        on_relayed_wireguard: Callable[[bytes, Address], None],
    ) -> None:
        self.endpoints = list(endpoints)
        self._by_family = {ep.family: ep for ep in self.endpoints}
        self.counters = MuxCounters()
        self._relays: dict[Address, RelayTarget] = {}
        self._waiters: dict[bytes, StunWaiter] = {}
        self._ice_by_ufrag: dict[str, IceSink] = {}
        self._ice_requests: OrderedDict[bytes, IceSink] = OrderedDict()
        self._route_cache: dict[tuple[int, str], str | None] = {}
        self._on_relayed_wireguard = on_relayed_wireguard
        for ep in self.endpoints:
            ep.set_handler(PacketKind.STUN, self._on_stun)
            ep.set_handler(PacketKind.CHANNEL_DATA, self._on_channel_data)

    # -- registration -----------------------------------------------------------------------

    def add_relay(self, server: Address, relay: RelayTarget) -> None:
        """Datagrams from ``server`` go to ``relay`` (a UDP TURN allocation)."""
        self._relays[server] = relay

    def remove_relay(self, server: Address, relay: RelayTarget) -> None:
        if self._relays.get(server) is relay:
            del self._relays[server]

    def add_ice(self, ufrag: str, sink: IceSink) -> None:
        self._ice_by_ufrag[ufrag] = sink

    def remove_ice(self, sink: IceSink) -> None:
        for ufrag in [u for u, s in self._ice_by_ufrag.items() if s is sink]:
            del self._ice_by_ufrag[ufrag]
        for tid in [t for t, s in self._ice_requests.items() if s is sink]:
            del self._ice_requests[tid]

    def expect_response(self, transaction_id: bytes, waiter: StunWaiter) -> None:
        """Call ``waiter(message, source)`` for a response with this transaction id."""
        self._waiters[transaction_id] = waiter

    def forget(self, transaction_id: bytes) -> None:
        self._waiters.pop(transaction_id, None)

    def note_ice_request(self, data: bytes, sink: IceSink) -> None:
        """An ICE agent sends ``data``: if it is a STUN request, route its response back."""
        if len(data) >= 20 and data[4:8] == STUN_MAGIC and _stun_class(data) == 0:
            tid = bytes(data[8:20])
            self._ice_requests[tid] = sink
            self._ice_requests.move_to_end(tid)
            while len(self._ice_requests) > MAX_TRACKED_REQUESTS:
                self._ice_requests.popitem(last=False)

    # -- local addresses --------------------------------------------------------------------

    def endpoint_for(self, remote: Address) -> UdpEndpoint | None:
        family = socket.AF_INET6 if ":" in remote[0] else socket.AF_INET
        return self._by_family.get(family)

    def port(self, family: socket.AddressFamily) -> int | None:
        ep = self._by_family.get(family)
        return None if ep is None else ep.local_address[1]

    def local_for(self, remote: Address) -> Address | None:
        """The local (address, port) the kernel sends to ``remote`` from, or None if there
        is no route or no socket of that family."""
        ep = self.endpoint_for(remote)
        if ep is None:
            return None
        family = ep.family
        key = (int(family), remote[0])
        if key in self._route_cache:
            ip = self._route_cache[key]
        else:
            ip = _route_source(family, remote)
            if len(self._route_cache) >= MAX_ROUTE_CACHE:
                self._route_cache.clear()
            self._route_cache[key] = ip
        return None if ip is None else (ip, ep.local_address[1])

    def network_changed(self) -> None:
        """Forget cached routing decisions."""
        self._route_cache.clear()

    # -- sending ----------------------------------------------------------------------------

    def send(self, data: bytes | bytearray | memoryview, remote: Address) -> bool:
        ep = self.endpoint_for(remote)
        if ep is None:
            return False
        return ep.send(data, remote)

    # -- receiving --------------------------------------------------------------------------

    def _on_stun(self, data: memoryview, src: Address) -> None:
        if self._waiters and _stun_class(data) >= MessageClass.SUCCESS:
            # Our own Binding requests first: a STUN server may share its address with a
            # TURN server (the rendezvous serves both on one port).
            waiter = self._waiters.pop(bytes(data[8:20]), None)
            if waiter is not None:
                self._to_waiter(waiter, bytes(data), src)
                return
        relay = self._relays.get(src)
        if relay is not None:
            self.counters.stun_to_turn += 1
            relay.handle_datagram(data)
            return
        local = self.local_for(src)
        if local is None:
            self.counters.stun_unmatched += 1
            return
        self.dispatch_stun(bytes(data), local, src)

    def _on_channel_data(self, data: memoryview, src: Address) -> None:
        relay = self._relays.get(src)
        if relay is None:
            self.counters.channel_data_unknown_server += 1
            return
        relay.handle_datagram(data)

    def _to_waiter(self, waiter: StunWaiter, data: bytes, source: Address) -> None:
        try:
            msg = Message.decode(data)
        except (StunDecodeError, DecodeError):
            self.counters.stun_malformed += 1
            return
        self.counters.stun_to_waiters += 1
        waiter(msg, source)

    def relayed(self, data: bytes, relayed: Address, peer: Address) -> None:
        """A payload a TURN relay unwrapped: from ``peer``, received on our ``relayed``
        address."""
        kind = classify(data)
        if kind is PacketKind.WIREGUARD:
            self.counters.relayed_wireguard += 1
            self._on_relayed_wireguard(data, peer)
        elif kind is PacketKind.STUN:
            self.counters.relayed_stun += 1
            self.dispatch_stun(data, relayed, peer)
        else:
            self.counters.relayed_other += 1

    def dispatch_stun(self, data: bytes, local: Address, remote: Address) -> None:
        """Route one STUN datagram received on base ``local`` from ``remote``."""
        klass = _stun_class(data)
        tid = data[8:20]
        if klass >= MessageClass.SUCCESS:
            waiter = self._waiters.pop(tid, None)
            if waiter is not None:
                self._to_waiter(waiter, data, remote)
                return
            sink = self._ice_requests.get(tid)
            if sink is not None and sink.handle_stun(data, local, remote):
                self.counters.stun_to_ice += 1
                return
            self.counters.stun_unmatched += 1
            return
        if klass != MessageClass.REQUEST:
            return  # Binding indications (ICE keepalives): nothing to do
        ufrag = _username_ufrag(data)
        if ufrag is None:
            self.counters.stun_malformed += 1
            return
        target = self._ice_by_ufrag.get(ufrag)
        if target is None:
            self.counters.stun_unknown_ufrag += 1
            return
        self.counters.stun_to_ice += 1
        target.handle_stun(data, local, remote)


def _stun_class(data: bytes | bytearray | memoryview) -> int:
    """The class bits of a STUN message type (RFC 8489 §5): 0 request, 1 indication,
    2 success, 3 error."""
    return ((data[0] & 0x01) << 1) | ((data[1] & 0x10) >> 4)


class RelayTarget(Protocol):
    def handle_datagram(self, data: bytes | bytearray | memoryview) -> None: ...


def _username_ufrag(data: bytes) -> str | None:
    """The local ufrag (first half of USERNAME) of a STUN request, without a full decode."""
    try:
        msg = Message.decode(data)
    except (StunDecodeError, DecodeError):
        return None
    username = msg.username
    if not username or ":" not in username:
        return None
    return username.split(":", 1)[0]


def _route_source(family: socket.AddressFamily, remote: Address) -> str | None:
    """The source address the kernel picks for ``remote`` (a connected UDP probe socket
    sends nothing)."""
    try:
        with socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as probe:
            probe.connect((remote[0], remote[1] or 9))
            return str(probe.getsockname()[0]).split("%", 1)[0]
    except OSError:
        return None

"""The node's shared UDP sockets, for everything that is not WireGuard: STUN and ChannelData.

docs/ARCHITECTURE.md §2: one UDP socket per address family carries ICE checks, TURN client
traffic and WireGuard. Each socket's :class:`~p2ptun.net.dispatch.Dispatcher` hands STUN and
ChannelData to :class:`UdpMux` (:meth:`UdpMux.on_stun`, :meth:`UdpMux.on_channel_data`), which
routes each datagram, in this order:

1. a STUN message whose transaction id someone registered
   (:meth:`UdpMux.register_transaction`; the gatherer's Binding requests to STUN servers) goes
   to that handler — a TURN server is often the STUN server too, so this comes first;
2. anything from the address of a TURN server we hold a UDP allocation on (STUN responses,
   Data indications, ChannelData) goes to that relay
   (:class:`~p2ptun.net.turn_relay.TurnRelay`);
3. every other STUN message goes to :attr:`UdpMux.on_ice` (the ICE transport), with the local
   base address it arrived on.

The local base: the sockets are bound to the wildcard address, and the endpoint does not
report a datagram's destination address (no ``IP_PKTINFO``). The mux takes the address the
host would use as the *source* towards the sender (a route lookup, cached per remote IP):
with a wildcard socket that is exactly the address our answers leave from, so it is the only
base the peer can validate a pair with anyway (RFC 8445 §7.2.5.2.1 symmetric check).

The mux also sends for the others: one datagram or a prefixed batch to a remote, from the
socket of the remote's address family.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Protocol

from p2ptun.addr import Address, format_address
from p2ptun.errors import RuntimeFailure
from p2ptun.net.ports import DatagramPort
from p2ptun.net.system import route_source
from p2ptun.net.udp import family_of

#: ``handler(data, local, remote)``: a STUN datagram, the local base it arrived on, its source.
#: ``data`` is only valid during the call (copy it to keep it).
StunHandler = Callable[[memoryview, Address, Address], None]

#: Route lookups remembered (remote IP -> local source IP).
MAX_ROUTE_CACHE = 1024
#: Registered transactions at most (a stuck registrant cannot grow the table unbounded).
MAX_TRANSACTIONS = 4096


class RelayLink(Protocol):
    """What the mux needs of a UDP TURN allocation it routes to."""

    @property
    def server(self) -> Address: ...

    def handle_datagram(self, data: bytes | bytearray | memoryview) -> None: ...

    def receive_channel_data(self, data: memoryview) -> None: ...


@dataclass
class MuxCounters:
    """What the mux routed and dropped (for ``p2ptun status`` and tests)."""

    rx_transactions: int = 0
    """STUN responses handed to a registered transaction."""
    rx_turn: int = 0
    """Datagrams from a TURN server handed to its relay."""
    rx_ice: int = 0
    """STUN datagrams handed to the ICE transport."""
    rx_dropped: int = 0
    """STUN nobody wanted, or ChannelData from an address that is not our TURN server."""
    rx_no_route: int = 0
    """Datagrams from a source we have no route back to (no local base)."""
    transactions_dropped: int = 0
    """Registrations refused because the table was full."""

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def normalize_address(addr: Address) -> Address:
    """``(host, port)`` with the host in canonical IP text (as candidates and the TURN client
    write it). Raises ValueError for a host that is not an IP literal."""
    return str(ipaddress.ip_address(addr[0].split("%", 1)[0])), int(addr[1])


class UdpMux:
    """Routes the STUN and ChannelData datagrams of the node's shared UDP endpoints.

    See the module docstring for the order. :meth:`on_stun` and :meth:`on_channel_data` are
    the handlers the endpoints' dispatchers call (the composition root wires them);
    :attr:`on_ice` receives the STUN messages nobody else claimed. ``route_lookup`` is the
    host's route lookup (:meth:`p2ptun.net.ports.Host.route_source`) that picks the local
    base of an incoming datagram.
    """

    def __init__(
        self,
        endpoints: Sequence[DatagramPort],
        *,
        on_ice: StunHandler | None = None,
        route_lookup: Callable[[str], str | None] = route_source,
    ) -> None:
        if not endpoints:
            raise ValueError("the mux needs at least one UDP endpoint")
        self.endpoints = list(endpoints)
        self.on_ice = on_ice
        self.counters = MuxCounters()
        self._route_lookup = route_lookup
        self._by_family: dict[int, DatagramPort] = {}
        for ep in self.endpoints:
            self._by_family.setdefault(int(ep.family), ep)
        self._transactions: dict[bytes, StunHandler] = {}
        self._relays: dict[Address, RelayLink] = {}
        self._routes: dict[str, str | None] = {}

    # -- endpoints and addresses ---------------------------------------------------------------

    def endpoint_for(self, host: str) -> DatagramPort | None:
        """The endpoint of ``host``'s address family, or None if we have no such socket."""
        return self._by_family.get(int(family_of(host)))

    def port_for(self, host: str) -> int | None:
        """The local port of the endpoint of ``host``'s family."""
        ep = self.endpoint_for(host)
        return None if ep is None else ep.local_address[1]

    def local_ip_for(self, remote_ip: str) -> str | None:
        """The local address datagrams to ``remote_ip`` leave from (cached route lookup)."""
        try:
            return self._routes[remote_ip]
        except KeyError:
            pass
        ep = self.endpoint_for(remote_ip)
        bound = None if ep is None else ep.local_address[0]
        if bound is not None and not ipaddress.ip_address(bound).is_unspecified:
            local: str | None = str(ipaddress.ip_address(bound))
        else:
            local = self._route_lookup(remote_ip)
        if len(self._routes) >= MAX_ROUTE_CACHE:
            self._routes.clear()
        self._routes[remote_ip] = local
        return local

    def local_base_for(self, remote: Address) -> Address | None:
        """``(local ip, port)``: the host base that talks to ``remote`` (None without a route
        or a socket of its family)."""
        ip = self.local_ip_for(remote[0])
        port = self.port_for(remote[0])
        if ip is None or port is None:
            return None
        return ip, port

    def invalidate_routes(self) -> None:
        """Forget cached route lookups (call on a network change)."""
        self._routes.clear()

    def send(self, data: bytes | bytearray | memoryview, remote: Address) -> bool:
        """Send one datagram to ``remote`` from the shared socket of its family; False if it
        was dropped (no socket of that family, full buffer, no route...)."""
        ep = self._by_family.get(int(family_of(remote[0])))
        if ep is None:
            return False
        return ep.send(data, remote)

    def send_prefixed(
        self, prefixes: Sequence[bytes], datagrams: Sequence[bytes], remote: Address
    ) -> int:
        """Send ``prefixes[i] + datagrams[i]`` for each ``i`` to ``remote`` without joining
        them (UDP GSO where it applies, :meth:`DatagramPort.send_batch_prefixed`); returns how
        many were sent."""
        ep = self._by_family.get(int(family_of(remote[0])))
        if ep is None:
            return 0
        return ep.send_batch_prefixed(prefixes, datagrams, remote)

    # -- registrations ---------------------------------------------------------------------------

    def register_transaction(self, transaction_id: bytes, handler: StunHandler) -> bool:
        """Route STUN messages with ``transaction_id`` to ``handler`` until unregistered.
        False if the table is full (the caller's request will just time out)."""
        if len(self._transactions) >= MAX_TRANSACTIONS:
            self.counters.transactions_dropped += 1
            return False
        self._transactions[bytes(transaction_id)] = handler
        return True

    def unregister_transaction(self, transaction_id: bytes) -> None:
        self._transactions.pop(bytes(transaction_id), None)

    def attach_relay(self, relay: RelayLink) -> None:
        """Route what comes from ``relay.server`` to it (one UDP allocation per server: the
        server keys allocations by our address and port, RFC 8656 §2.2)."""
        other = self._relays.get(relay.server)
        if other is not None and other is not relay:
            raise RuntimeFailure(
                f"TURN server {format_address(relay.server)}: an allocation from this socket "
                "already exists"
            )
        self._relays[relay.server] = relay

    def detach_relay(self, relay: RelayLink) -> None:
        if self._relays.get(relay.server) is relay:
            del self._relays[relay.server]

    def relay_for(self, server: Address) -> RelayLink | None:
        """The UDP relay attached for ``server``, if any."""
        return self._relays.get(server)

    # -- receiving -------------------------------------------------------------------------------

    def deliver_transaction(self, data: memoryview, local: Address, remote: Address) -> bool:
        """Hand a STUN message to the handler registered for its transaction id, if any (also
        for STUN a TURN relay unwrapped, ``local`` then being the relayed address)."""
        handler = self._transactions.get(bytes(data[8:20]))
        if handler is None:
            return False
        self.counters.rx_transactions += 1
        handler(data, local, remote)
        return True

    def on_stun(self, data: memoryview, src: Address) -> None:
        """The dispatcher's STUN handler (routing order: the module docstring)."""
        if bytes(data[8:20]) in self._transactions:
            local = self.local_base_for(src)
            if local is None:
                self.counters.rx_no_route += 1
                return
            self.deliver_transaction(data, local, src)
            return
        relay = self._relays.get(src)
        if relay is not None:
            self.counters.rx_turn += 1
            relay.handle_datagram(data)
            return
        on_ice = self.on_ice
        if on_ice is None:
            self.counters.rx_dropped += 1
            return
        local = self.local_base_for(src)
        if local is None:
            self.counters.rx_no_route += 1
            return
        self.counters.rx_ice += 1
        on_ice(data, local, src)

    def on_channel_data(self, data: memoryview, src: Address) -> None:
        """The dispatcher's ChannelData handler: only our TURN servers send us any."""
        relay = self._relays.get(src)
        if relay is None:
            self.counters.rx_dropped += 1
            return
        self.counters.rx_turn += 1
        relay.receive_channel_data(data)


__all__ = [
    "MAX_ROUTE_CACHE",
    "MAX_TRANSACTIONS",
    "MuxCounters",
    "RelayLink",
    "StunHandler",
    "UdpMux",
    "normalize_address",
]

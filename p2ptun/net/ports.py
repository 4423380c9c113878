"""The ports between the daemons and the machine they run on.

Everything the node and the rendezvous need from the operating system goes through the small
interfaces below, so that one composition root builds the same daemon on a real host
(:class:`p2ptun.net.system.SystemHost`: sockets, a TUN device, netlink, the clocks) or inside
an in-memory network under trio's virtual clock (``p2plab.memnet``: simulated NATs, links and
TUN devices, used by the tests and never shipped). This is how wireguard-go keeps ``tun.Device``
and ``conn.Bind`` beside their test fakes.

- :class:`DatagramPort`: one UDP socket. It drains what arrives in batches and hands each
  datagram, with its source and the local address it came to, to exactly one
  :class:`DatagramReceiver` (the object that owns the socket's dispatch,
  :class:`p2ptun.net.dispatch.Dispatcher` on the node); it sends single datagrams and batches
  (GSO where the kernel offers it), each from a chosen local address if asked (a
  multi-homed host answers from the address a request came to).
- :class:`TunPort`: the TUN device: batched reads into the caller's buffers, writes and
  vectored writes, with or without a virtio header (offloads).
- :class:`Connection`: a TCP (or TLS) byte stream with its two addresses.
- :class:`Host`: opens the ports above, configures the interface and its routes, lists the
  local addresses and the route towards a remote address, reports network changes, and gives
  the clocks and randomness the daemons inject into their sans-I/O cores.

Addresses are ``(ip, port)`` tuples with literal IPs; networks stay typed
(:mod:`ipaddress`) from the config to the host.
"""

from __future__ import annotations

import enum
import ipaddress
import random
from collections.abc import AsyncIterable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, fields
from typing import Protocol

import trio

from p2ptun.addr import Address

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Buffer = bytes | bytearray | memoryview


# -- datagrams -------------------------------------------------------------------------------


@dataclass
class UdpCounters:
    """Datagram counters for one endpoint."""

    rx_bytes: int = 0
    rx_errors: int = 0
    """Receive errors caused by earlier sends (ICMP unreachable and the like)."""
    tx_packets: int = 0
    tx_bytes: int = 0
    tx_dropped: int = 0
    """Datagrams not sent: full socket buffer, no route, refused by a firewall, ..."""
    rx_reads: int = 0
    """Receive system calls that returned data (fewer than datagrams with GRO)."""
    tx_gso_sends: int = 0
    """``sendmsg`` calls that carried more than one datagram (UDP GSO)."""
    tx_source_fallbacks: int = 0
    """Sends whose source address the host refused (it is gone): sent again without it."""

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict (for ``p2ptun status --json``)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


class DatagramReceiver(Protocol):
    """The one owner of a datagram port's dispatch."""

    def datagram(self, data: memoryview, source: Address, local: str | None) -> None:
        """One received datagram from ``source``, addressed to our ``local`` IP (the address an
        answer leaves from; None where the port cannot tell). ``data`` is valid until
        :meth:`drained` returns; keep a copy to hold it longer."""

    def drained(self) -> None:
        """The end of a batch: flush what the datagrams queued."""


class DatagramPort(Protocol):
    """One UDP socket of one address family."""

    @property
    def family(self) -> int:
        """``socket.AF_INET`` or ``socket.AF_INET6``."""

    @property
    def local_address(self) -> Address:
        """The bound ``(ip, port)``; the ip is the wildcard when bound to any address."""

    @property
    def gso(self) -> bool:
        """Whether :meth:`send_batch` glues runs of datagrams into one send (UDP GSO)."""

    @property
    def pktinfo(self) -> bool:
        """Whether the port reports each datagram's local address and sends from a chosen
        source (``IP_PKTINFO``); without, ``local`` is None and ``source`` is ignored."""

    @property
    def counters(self) -> UdpCounters: ...

    def send(self, data: Buffer, addr: Address, source: str | None = None) -> bool:
        """Send one datagram without blocking, from our address ``source`` if given (one the
        host no longer has: sent without it and counted, never dropped for that); False (and
        counted) if it was dropped."""

    def send_batch(
        self, datagrams: Sequence[Buffer], addr: Address, source: str | None = None
    ) -> int:
        """Send ``datagrams`` in order to ``addr`` (from ``source``, as :meth:`send`); how
        many were sent."""

    def send_batch_prefixed(
        self,
        prefixes: Sequence[bytes],
        datagrams: Sequence[Buffer],
        addr: Address,
        source: str | None = None,
    ) -> int:
        """Send ``prefixes[i] + datagrams[i]`` for each ``i`` without joining them (from
        ``source``, as :meth:`send`)."""

    async def receive_loop(self, receiver: DatagramReceiver) -> None:
        """Deliver datagrams to ``receiver`` until cancelled or closed."""

    def close(self) -> None:
        """Close the socket (idempotent); :meth:`receive_loop` returns."""


# -- the TUN device ----------------------------------------------------------------------------


@dataclass
class TunCounters:
    """Packet counters for one TUN device."""

    rx_packets: int = 0
    rx_bytes: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0
    tx_dropped: int = 0


class TunPort(Protocol):
    """A layer-3 TUN device: IP packets to and from the kernel."""

    @property
    def name(self) -> str: ...

    @property
    def vnet_hdr(self) -> bool:
        """Whether every packet carries a virtio-net header (offloads possible)."""

    @property
    def closed(self) -> bool: ...

    @property
    def counters(self) -> TunCounters: ...

    def enable_offload(self) -> int:
        """Ask for TSO/checksum offload; the flags in force (0: none)."""

    async def wait_readable(self) -> None:
        """Until a packet can be read (raises ``trio.ClosedResourceError`` once closed)."""

    def read_batch(self, buffers: Sequence[bytearray | memoryview], lengths: list[int]) -> int:
        """Read up to ``len(buffers)`` packets without blocking; their lengths go to
        ``lengths``; returns how many were read (0: none waiting)."""

    def write(self, packet: Buffer) -> bool:
        """Write one packet (False: dropped, e.g. the kernel queue is full)."""

    def writev(self, parts: Sequence[Buffer]) -> bool:
        """Write one packet given as parts (a virtio header and segments)."""

    def close(self) -> None: ...


# -- streams -----------------------------------------------------------------------------------


@dataclass
class Connection:
    """A connected byte stream (TCP, possibly wrapped in TLS later) and its addresses."""

    stream: trio.abc.Stream
    local: Address
    remote: Address


class Listener(Protocol):
    """A listening TCP socket."""

    @property
    def local_address(self) -> Address: ...

    async def accept(self) -> Connection: ...

    async def aclose(self) -> None: ...


# -- network changes ---------------------------------------------------------------------------


class ChangeKind(enum.Enum):
    """What changed on the host's network."""

    ADDRESS_ADDED = "address-added"
    ADDRESS_REMOVED = "address-removed"
    DEFAULT_ROUTE = "default-route"
    LINK_UP = "link-up"
    LINK_DOWN = "link-down"
    RESYNC = "resync"
    """Events were lost (the socket overflowed): assume anything changed."""


@dataclass(frozen=True)
class NetworkChange:
    """One change; ``interface`` and ``address`` are set where they apply."""

    kind: ChangeKind
    interface: str | None = None
    address: str | None = None


@dataclass(frozen=True, order=True)
class LocalAddress:
    """A local IP address usable for an ICE host candidate."""

    address: str
    """Literal IP address, without scope."""
    prefixlen: int
    interface: str
    index: int
    """Interface index (the scope id for an IPv6 link-local address)."""

    @property
    def version(self) -> int:
        return ipaddress.ip_address(self.address).version

    @property
    def is_link_local(self) -> bool:
        return ipaddress.ip_address(self.address).is_link_local


# -- the host ----------------------------------------------------------------------------------


class Host(Protocol):
    """The machine a daemon runs on: its sockets, interfaces, routes, clocks and randomness."""

    # sockets
    def open_datagram_ports(self, port: int = 0) -> list[DatagramPort]:
        """One wildcard-bound UDP port per address family the host supports (the same port
        number on both when it can); RuntimeFailure (one line) when none can be bound."""

    def bind_datagram(self, ip: str, port: int, *, shared_buffers: bool = False) -> DatagramPort:
        """A UDP port bound to ``(ip, port)`` (a server's listener or a TURN relay).
        ``shared_buffers``: receive into buffers shared with the host's other such ports —
        for receivers that finish each batch before they yield (the TURN server's relays)."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        *,
        local_ip: str | None = None,
        keepalive: tuple[int, int, int] | None = None,
    ) -> Connection:
        """A TCP connection; OSError when it cannot be made. ``keepalive``: ``(idle,
        interval, count)`` seconds/probes for kernel keepalive on the connection."""

    async def listen_tcp(self, ip: str, port: int) -> Listener: ...

    async def resolve(self, host: str, port: int) -> list[Address]:
        """The addresses of ``host`` (a literal resolves to itself), IPv4 first."""

    def route_source(self, remote_ip: str) -> str | None:
        """The local address the host sends from towards ``remote_ip`` (None: no route)."""

    async def default_gateway(self) -> str | None:
        """The IPv4 next hop of the default route (the lowest metric), or None: where the
        port mapper asks for a mapping (docs/ARCHITECTURE.md §4)."""
        ...

    async def local_addresses(
        self, *, exclude: Iterable[str] = (), include_link_local: bool = False
    ) -> list[LocalAddress]:
        """Addresses fit for ICE host candidates (no loopback, no ``exclude`` interfaces),
        IPv4 first."""

    # the interface
    def open_tun(self, name: str) -> TunPort: ...

    async def interface_exists(self, name: str) -> bool: ...

    async def configure_interface(
        self, name: str, addresses: Sequence[IPInterface], mtu: int
    ) -> None:
        """Set the addresses and the MTU and bring the interface up (idempotent)."""

    async def remove_addresses(self, name: str, addresses: Sequence[IPInterface]) -> None: ...

    async def add_route(self, name: str, prefix: IPNetwork) -> None: ...

    async def remove_route(self, name: str, prefix: IPNetwork) -> None: ...

    def network_changes(
        self, *, exclude: Iterable[str] = ()
    ) -> AbstractAsyncContextManager[AsyncIterable[list[NetworkChange]]]:
        """Batches of changes of addresses, default routes and links (debounced)."""

    # forwarding and policy routing (subnet routes, exit node: p2ptun/net/forwarding.py)
    def set_fwmark(self, mark: int | None) -> None:
        """Mark every underlay socket opened from now on (``SO_MARK``): UDP ports, TCP
        connections. The exit node's policy routing keeps marked packets out of the tunnel."""
        ...

    async def enable_forwarding(self, version: int) -> str | None:
        """Turn IP forwarding of family ``version`` (4, 6) on; None when it is on, else why
        it could not be."""
        ...

    async def set_nftables(self, interface: str, ruleset: str | None) -> None:
        """Replace our nftables table for ``interface`` with ``ruleset`` (its whole text), or
        delete it (None); RuntimeFailure (one line) when refused."""
        ...

    async def set_exit_routing(
        self,
        interface: str,
        mark: int,
        defaults: Sequence[IPNetwork],
        lan: Sequence[IPNetwork] = (),
    ) -> None:
        """Send everything not marked ``mark`` through ``interface`` for the families of
        ``defaults``; the ``lan`` prefixes too (else the main table's specific routes win)."""
        ...

    async def clear_exit_routing(self, mark: int) -> None:
        """Remove what :meth:`set_exit_routing` added (also what a crashed run left)."""
        ...

    # the system's resolver
    async def register_dns(self, interface: str, servers: Sequence[str], domain: str) -> bool:
        """Tell the system's resolver (systemd-resolved, when it runs) to send queries for
        ``domain`` to ``servers`` on ``interface`` (per-link DNS and routing domain); False
        when there is no such resolver. Never rewrites /etc/resolv.conf."""
        ...

    async def unregister_dns(self, interface: str) -> None:
        """Undo :meth:`register_dns`."""
        ...

    # clocks and randomness (injected into the sans-I/O cores)
    def wall_clock(self) -> float:
        """Seconds since the Unix epoch (WireGuard's TAI64N, signaling timestamps)."""

    def suspend_clocks(self) -> tuple[float, float]:
        """``(monotonic, boottime)``: the second grows while the machine sleeps."""

    def random_bytes(self, n: int) -> bytes:
        """``n`` bytes from the host's cryptographic random source (keys, ids, nonces)."""

    @property
    def rng(self) -> random.Random:
        """A random number generator for jitter, backoff, tie-breakers and ports (the
        system's CSPRNG on a real host; seeded in a simulation)."""

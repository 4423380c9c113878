"""An in-memory network for whole daemons under trio's virtual clock.

The namespace lab (:mod:`p2plab.natlab`) runs real daemons on real kernels; this module runs
the same daemons — the node's and the rendezvous' composition roots — in one process, on
in-memory implementations of the ports of :mod:`p2ptun.net.ports`, so that a test can link a
rendezvous and two nodes behind simulated NATs, renumber a NAT or flush its mappings, and
measure the outage in virtual time in well under a second of real time (``trio.testing.
MockClock`` with ``autojump_threshold=0``). Nothing here touches a socket, a TUN device,
netlink or a real clock.

The pieces:

- :class:`MemoryNetwork` — the "internet": public IPv4 addresses, each owned by a public
  :class:`MemoryHost` or by a :class:`Router`'s WAN side; datagrams cross it after
  ``latency`` seconds; :attr:`MemoryNetwork.blocked` drops chosen flows (a black-holed path).
  It runs as one task (``await nursery.start(network.run)``): a delivery heap, so that
  virtual time advances between sends and receipts.
- :class:`Router` — a site's NAT: a :class:`~p2plab.natmodel.NatTable` (RFC 4787 mapping,
  filtering, port choice and idle timeouts, the same model the ICE simulator uses) between
  its LAN and its public address; :meth:`Router.renumber` and :meth:`Router.flush` are the
  events the recovery tests need. TCP connections through it break when it forgets them.
- :class:`MemoryHost` — one machine, implementing :class:`p2ptun.net.ports.Host`: datagram
  ports (each datagram with the local address it came to; a send may name its source among
  the host's addresses, :meth:`MemoryHost.add_address` gives it more than one), TCP connections
  and listeners, a :class:`MemoryTun`, interface addresses and routes (recorded), network
  change events, and clocks and randomness derived from the virtual clock and a seed.
- :class:`MemoryTun` — the TUN device, with a tiny kernel behind it that answers ICMP echo
  requests to the interface's addresses; :class:`Pinger` sends a steady ping stream through
  it and measures the longest gap between replies.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import math
import random
import struct
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from p2plab.natmodel import NAT_TYPES, NatBehaviour, NatTable
from p2ptun.addr import Address
from p2ptun.errors import RuntimeFailure
from p2ptun.net.ports import (
    Buffer,
    ChangeKind,
    Connection,
    DatagramPort,
    DatagramReceiver,
    IPInterface,
    IPNetwork,
    LocalAddress,
    NetworkChange,
    TunCounters,
    UdpCounters,
)
from p2ptun.net.udp import family_of

EPOCH = 1_780_000_000.0
"""The wall clock of every memory host at virtual time 0 (a date in 2026)."""
BATCH = 64
"""Datagrams a port hands over before it yields, like the real endpoint's batch."""


# -- the internet ------------------------------------------------------------------------------


class MemoryNetwork:
    """The internet of the in-memory lab (see the module docstring)."""

    def __init__(self, *, latency: float = 0.005, lan_latency: float = 0.0005, seed: int = 0):
        self.latency = latency
        """One-way delay of a datagram across the internet."""
        self.lan_latency = lan_latency
        """One-way delay inside a site's LAN (and between a host and its router)."""
        self.rng = random.Random(seed)
        self.owners: dict[str, MemoryHost | Router] = {}
        """Public IP -> the public host or the router that owns it."""
        self.names: dict[str, list[str]] = {}
        """DNS: name -> addresses (what :meth:`MemoryHost.resolve` answers)."""
        self.blocked: Callable[[Address, Address], bool] | None = None
        """Drop datagrams for which ``blocked(src, dst)`` is true (on the internet; src is
        the public source after NAT)."""
        self.delivered = 0
        self.dropped = 0
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._wake = trio.Event()
        self._listeners: dict[Address, MemoryListener] = {}

    # -- building ---------------------------------------------------------------------------

    def public_host(self, name: str, ip: str) -> MemoryHost:
        """A host with a public address (the rendezvous, a cloud VM)."""
        host = MemoryHost(self, name, ipaddress.ip_interface(f"{ip}/24"), router=None)
        self.owners[ip] = host
        return host

    def site(self, name: str, nat: str | NatBehaviour, public_ip: str, lan: str) -> Router:
        """A site: a router with ``nat`` behaviour (a name of
        :data:`~p2plab.natmodel.NAT_TYPES` or a :class:`NatBehaviour`) on ``public_ip``, and
        an empty LAN ``lan`` (e.g. ``"10.0.1.0/24"``)."""
        behaviour = NAT_TYPES[nat] if isinstance(nat, str) else nat
        if behaviour is None:
            raise ValueError("a site needs a NAT; use public_host() for a public machine")
        router = Router(self, name, public_ip, ipaddress.ip_network(lan), behaviour)
        self.owners[public_ip] = router
        return router

    # -- the task that moves datagrams ------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver scheduled datagrams at their time, until cancelled."""
        task_status.started()
        while True:
            now = trio.current_time()
            while self._heap and self._heap[0][0] <= now:
                _, _, deliver = heapq.heappop(self._heap)
                deliver()
            wake = self._heap[0][0] if self._heap else math.inf
            with trio.move_on_at(wake):
                await self._wake.wait()
            self._wake = trio.Event()

    def schedule(self, delay: float, deliver: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (trio.current_time() + delay, next(self._seq), deliver))
        self._wake.set()

    def transmit(self, src: Address, dst: Address, data: bytes) -> None:
        """A datagram from public ``src`` enters the internet towards ``dst``."""
        self.schedule(self.latency, lambda: self._arrive(src, dst, data))

    def _arrive(self, src: Address, dst: Address, data: bytes) -> None:
        if self.blocked is not None and self.blocked(src, dst):
            self.dropped += 1
            return
        owner = self.owners.get(dst[0])
        if owner is None:
            self.dropped += 1
            return
        self.delivered += 1
        owner.from_internet(src, dst, data)

    # -- TCP --------------------------------------------------------------------------------

    def listener_at(self, addr: Address) -> MemoryListener | None:
        listener = self._listeners.get(addr)
        if listener is None:
            listener = self._listeners.get(("0.0.0.0", addr[1]))
            if listener is not None and self.owners.get(addr[0]) is not listener.host:
                listener = None
        return listener


class Router:
    """A site's NAT router: its LAN, its public address and its translation table."""

    def __init__(
        self,
        network: MemoryNetwork,
        name: str,
        public_ip: str,
        lan: IPNetwork,
        behaviour: NatBehaviour,
    ) -> None:
        self.network = network
        self.name = name
        self.lan = lan
        self.nat = NatTable(public_ip, behaviour, rng=random.Random(network.rng.random()))
        self.hosts: dict[str, MemoryHost] = {}
        """LAN address -> host."""
        self.connections: list[MemoryConnection] = []
        self._tcp_ports = itertools.count(40000)
        self._next_host = 2

    @property
    def public_ip(self) -> str:
        return self.nat.public_ip

    def host(self, name: str, ip: str | None = None) -> MemoryHost:
        """A machine on this site's LAN (the next free address unless ``ip`` is given)."""
        if ip is None:
            ip = str(self.lan.network_address + self._next_host)
            self._next_host += 1
        host = MemoryHost(
            self.network, name, ipaddress.ip_interface(f"{ip}/{self.lan.prefixlen}"), router=self
        )
        self.hosts[ip] = host
        return host

    # -- forwarding -------------------------------------------------------------------------

    def from_lan(self, src: Address, dst: Address, data: bytes) -> None:
        net = self.network
        local = self.hosts.get(dst[0])
        if local is not None:
            net.schedule(net.lan_latency, lambda: local.deliver(src, dst, data))
            return
        if self.lan.version != ipaddress.ip_address(dst[0]).version:
            net.dropped += 1
            return
        public_src = self.nat.outbound(src, dst, trio.current_time())
        if dst[0] == self.public_ip:  # hairpin
            net.schedule(net.lan_latency, lambda: self.from_internet(public_src, dst, data))
            return
        net.schedule(net.lan_latency, lambda: net.transmit(public_src, dst, data))

    def from_internet(self, src: Address, dst: Address, data: bytes) -> None:
        if dst[0] != self.public_ip:
            return  # addressed to an address we gave up
        inside = self.nat.inbound(src, dst[1], trio.current_time())
        if inside is None:
            self.network.dropped += 1
            return
        host = self.hosts.get(inside[0])
        if host is None:
            self.network.dropped += 1
            return
        self.network.schedule(self.network.lan_latency, lambda: host.deliver(src, inside, data))

    # -- events -----------------------------------------------------------------------------

    def renumber(self, public_ip: str) -> None:
        """The ISP hands the router a new public address: every mapping and every TCP
        connection through it is lost."""
        owners = self.network.owners
        if owners.get(self.public_ip) is self:
            del owners[self.public_ip]
        self.nat.renumber(public_ip)
        owners[public_ip] = self
        self._break_connections()

    def flush(self) -> None:
        """The router forgets every mapping (reboot, conntrack flush)."""
        self.nat.flush()
        self._break_connections()

    def _break_connections(self) -> None:
        for conn in self.connections:
            conn.reset()
        self.connections.clear()

    def tcp_source(self) -> int:
        return next(self._tcp_ports)


# -- streams -----------------------------------------------------------------------------------


class _Pipe:
    """One direction of a memory TCP connection."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.eof = False
        self.broken = False
        self.event = trio.Event()

    def wake(self) -> None:
        self.event.set()
        self.event = trio.Event()


class MemoryStream(trio.abc.Stream):
    """One end of a :class:`MemoryConnection` (a reliable, ordered byte stream)."""

    def __init__(self, inbound: _Pipe, outbound: _Pipe) -> None:
        self._in = inbound
        self._out = outbound
        self._closed = False

    async def send_all(self, data: Buffer) -> None:
        if self._closed:
            raise trio.ClosedResourceError("stream closed")
        await trio.lowlevel.checkpoint()
        if self._out.broken:
            raise trio.BrokenResourceError("connection reset")
        if self._out.eof:
            raise trio.BrokenResourceError("the other end closed")
        self._out.buffer += data
        self._out.wake()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        self._out.eof = True
        self._out.wake()
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._closed:
            raise trio.ClosedResourceError("stream closed")
        pipe = self._in
        while not pipe.buffer and not pipe.eof and not pipe.broken:
            await pipe.event.wait()
            if self._closed:
                raise trio.ClosedResourceError("stream closed")
        if pipe.broken:
            await trio.lowlevel.checkpoint()
            raise trio.BrokenResourceError("connection reset")
        n = len(pipe.buffer) if max_bytes is None else min(max_bytes, len(pipe.buffer))
        data = bytes(pipe.buffer[:n])
        del pipe.buffer[:n]
        await trio.lowlevel.checkpoint()
        return data

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._out.eof = True
            self._out.wake()
            self._in.wake()
        await trio.lowlevel.checkpoint()


class MemoryConnection:
    """A TCP connection in memory: two :class:`MemoryStream` ends; :meth:`reset` breaks both
    (what a NAT that forgot the connection leads to)."""

    def __init__(self) -> None:
        self._a_to_b = _Pipe()
        self._b_to_a = _Pipe()
        self.client = MemoryStream(self._b_to_a, self._a_to_b)
        self.server = MemoryStream(self._a_to_b, self._b_to_a)

    def reset(self) -> None:
        for pipe in (self._a_to_b, self._b_to_a):
            pipe.broken = True
            pipe.wake()


class MemoryListener:
    """A listening TCP socket of a :class:`MemoryHost`."""

    def __init__(self, host: MemoryHost, addr: Address) -> None:
        self.host = host
        self.local_address = addr
        self._send, self._receive = trio.open_memory_channel[Connection](64)

    async def accept(self) -> Connection:
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise trio.ClosedResourceError("listener closed") from None

    def offer(self, conn: Connection) -> bool:
        try:
            self._send.send_nowait(conn)
        except trio.WouldBlock:
            return False
        return True

    async def aclose(self) -> None:
        self.host.network._listeners.pop(self.local_address, None)
        await self._send.aclose()
        await self._receive.aclose()


# -- datagrams ---------------------------------------------------------------------------------


class MemoryDatagramPort:
    """A UDP socket of a :class:`MemoryHost` (implements
    :class:`~p2ptun.net.ports.DatagramPort`). Like the real endpoint with ``IP_PKTINFO`` it
    reports the local address each datagram was sent to, and a send may name its source: one
    of the host's addresses it leaves from (an address the host does not have is ignored and
    counted in ``tx_source_fallbacks``, as the kernel refuses it and the endpoint retries)."""

    gso = False
    pktinfo = True

    def __init__(self, host: MemoryHost, ip: str, port: int) -> None:
        self.host = host
        self._ip = ip
        self._port = port
        self.family = family_of(ip)
        self.counters = UdpCounters()
        self._queue: deque[tuple[bytes, Address, str]] = deque()
        self._event = trio.Event()
        self.closed = False

    @property
    def local_address(self) -> Address:
        return self._ip, self._port

    def _source_ip(self, dst_ip: str, source: str | None) -> str | None:
        if source is not None:
            if source in self.host.addresses and family_of(source) == self.family:
                return source
            self.counters.tx_source_fallbacks += 1
        if not ipaddress.ip_address(self._ip).is_unspecified:
            return self._ip
        return self.host.route_source(dst_ip)

    def send(self, data: Buffer, addr: Address, source: str | None = None) -> bool:
        if self.closed:
            return False
        src_ip = self._source_ip(addr[0], source)
        if src_ip is None:
            self.counters.tx_dropped += 1
            return False
        self.counters.tx_packets += 1
        self.counters.tx_bytes += len(data)
        self.host.send_datagram((src_ip, self._port), (addr[0], int(addr[1])), bytes(data))
        return True

    def send_batch(
        self, datagrams: Sequence[Buffer], addr: Address, source: str | None = None
    ) -> int:
        return sum(self.send(d, addr, source) for d in datagrams)

    def send_batch_prefixed(
        self,
        prefixes: Sequence[bytes],
        datagrams: Sequence[Buffer],
        addr: Address,
        source: str | None = None,
    ) -> int:
        return sum(
            self.send(p + bytes(d), addr, source) for p, d in zip(prefixes, datagrams, strict=True)
        )

    def arrive(self, data: bytes, src: Address, local: str) -> None:
        """A datagram from ``src`` sent to our address ``local``."""
        if self.closed:
            return
        self._queue.append((data, src, local))
        self._event.set()

    async def receive_loop(self, receiver: DatagramReceiver) -> None:
        queue = self._queue
        counters = self.counters
        while not self.closed:
            if not queue:
                await self._event.wait()
                self._event = trio.Event()
                continue
            count = 0
            while queue and count < BATCH:
                data, src, local = queue.popleft()
                counters.rx_reads += 1
                counters.rx_bytes += len(data)
                receiver.datagram(memoryview(data), src, local)
                count += 1
            receiver.drained()
            await trio.lowlevel.checkpoint()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.host.ports.pop((self._ip, self._port), None)
            self._event.set()


# -- the TUN device and its kernel -------------------------------------------------------------


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def icmp_echo(src: str, dst: str, ident: int, seq: int, *, reply: bool = False) -> bytes:
    """An IPv4 ICMP echo request (or reply) with a 16-byte payload."""
    payload = struct.pack("!HH", ident, seq) + bytes(12)
    icmp = struct.pack("!BBHHH", 0 if reply else 8, 0, 0, ident, seq) + payload
    icmp = icmp[:2] + struct.pack("!H", _checksum(icmp)) + icmp[4:]
    total = 20 + len(icmp)
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        total,
        seq & 0xFFFF,
        0,
        64,
        1,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return header + icmp


@dataclass
class EchoSeen:
    """An ICMP echo packet the kernel side of a :class:`MemoryTun` saw from the node."""

    src: str
    dst: str
    ident: int
    seq: int
    reply: bool
    time: float


class MemoryTun:
    """A TUN device of a :class:`MemoryHost` (implements :class:`~p2ptun.net.ports.TunPort`).

    Its kernel side answers ICMP echo requests addressed to the interface's addresses and
    hands echo replies to :attr:`on_echo` listeners; :meth:`inject` puts any IP packet on the
    device as if the kernel routed it there.
    """

    vnet_hdr = False

    def __init__(self, host: MemoryHost, name: str) -> None:
        self.host = host
        self.name = name
        self.closed = False
        self._to_node: deque[bytes] = deque()
        self._event = trio.Event()
        self.counters = TunCounters()
        self.on_echo: list[Callable[[EchoSeen], None]] = []
        self.other_packets = 0

    def enable_offload(self) -> int:
        return 0

    def inject(self, packet: bytes) -> None:
        """The kernel sends ``packet`` into the tunnel (it becomes readable by the node)."""
        if self.closed:
            return
        self._to_node.append(packet)
        self._event.set()

    async def wait_readable(self) -> None:
        while not self._to_node:
            if self.closed:
                raise trio.ClosedResourceError("TUN device closed")
            await self._event.wait()
            self._event = trio.Event()
        if self.closed:
            raise trio.ClosedResourceError("TUN device closed")

    def read_batch(self, buffers: Sequence[bytearray | memoryview], lengths: list[int]) -> int:
        count = 0
        queue = self._to_node
        while queue and count < len(buffers):
            packet = queue.popleft()
            buffers[count][: len(packet)] = packet
            lengths[count] = len(packet)
            count += 1
            self.counters.rx_packets += 1
            self.counters.rx_bytes += len(packet)
        return count

    def write(self, packet: Buffer) -> bool:
        if self.closed:
            return False
        self.counters.tx_packets += 1
        self.counters.tx_bytes += len(packet)
        self._kernel(bytes(packet))
        return True

    def writev(self, parts: Sequence[Buffer]) -> bool:
        return self.write(b"".join(bytes(p) for p in parts))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.host.tuns.pop(self.name, None)
            self._event.set()

    def _kernel(self, packet: bytes) -> None:
        if len(packet) < 28 or packet[0] >> 4 != 4 or packet[9] != 1:
            self.other_packets += 1
            return
        ihl = (packet[0] & 0x0F) * 4
        src = str(ipaddress.IPv4Address(packet[12:16]))
        dst = str(ipaddress.IPv4Address(packet[16:20]))
        kind = packet[ihl]
        ident, seq = struct.unpack_from("!HH", packet, ihl + 4)
        seen = EchoSeen(src, dst, ident, seq, kind == 0, trio.current_time())
        for listener in self.on_echo:
            listener(seen)
        ours = {str(a.ip) for a in self.host.interface_addresses.get(self.name, ())}
        if kind == 8 and dst in ours:
            self.inject(icmp_echo(dst, src, ident, seq, reply=True))


class Pinger:
    """A steady ICMP echo stream from one node's TUN to an overlay address (``ping -i``):
    records when each reply came back, and the longest gap between replies."""

    def __init__(self, tun: MemoryTun, src: str, dst: str, *, interval: float = 0.05) -> None:
        self.tun = tun
        self.src = src
        self.dst = dst
        self.interval = interval
        self.ident = 0x7070
        self.sent = 0
        self.replies: list[float] = []
        self._seen: set[int] = set()
        tun.on_echo.append(self._on_echo)

    def _on_echo(self, seen: EchoSeen) -> None:
        fresh = seen.seq not in self._seen
        if seen.reply and seen.ident == self.ident and seen.src == self.dst and fresh:
            self._seen.add(seen.seq)
            self.replies.append(seen.time)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            self.sent += 1
            self.tun.inject(icmp_echo(self.src, self.dst, self.ident, self.sent & 0xFFFF))
            await trio.sleep(self.interval)

    def longest_gap(self, start: float, end: float) -> float:
        """The longest time without a reply within ``[start, end]`` (the window's edges
        count as replies: a stream that never answered has a gap of ``end - start``)."""
        times = [start, *(t for t in self.replies if start <= t <= end), end]
        return max(b - a for a, b in itertools.pairwise(times))

    def first_reply_after(self, t: float) -> float | None:
        return next((r for r in self.replies if r >= t), None)


# -- the host ----------------------------------------------------------------------------------


@dataclass
class _Changes:
    send: trio.MemorySendChannel[list[NetworkChange]]
    exclude: frozenset[str]


@dataclass
class MemoryHost:
    """One machine of the in-memory lab (implements :class:`p2ptun.net.ports.Host`)."""

    network: MemoryNetwork
    name: str
    address: IPInterface
    router: Router | None
    ports: dict[Address, MemoryDatagramPort] = field(default_factory=dict)
    tuns: dict[str, MemoryTun] = field(default_factory=dict)
    interface_addresses: dict[str, list[IPInterface]] = field(default_factory=dict)
    interface_mtu: dict[str, int] = field(default_factory=dict)
    routes: dict[str, set[IPNetwork]] = field(default_factory=dict)
    slept: float = 0.0
    """Seconds this machine spent suspended (the boot-time clock runs ahead by that much)."""
    online: bool = True
    """False: the uplink is down (nothing leaves or arrives)."""
    extra_addresses: list[str] = field(default_factory=list)
    """Further addresses of the machine (:meth:`add_address`): a server with two addresses.
    Datagrams to them arrive; sends leave from them when asked to (the route's source is
    always :attr:`ip`)."""
    dns_registrations: dict[str, tuple[tuple[str, ...], str]] = field(default_factory=dict)
    """What :meth:`register_dns` was told, by interface (the system resolver's view)."""
    fwmark: int | None = None
    forwarding: set[int] = field(default_factory=set)
    """IP versions :meth:`enable_forwarding` turned on."""
    nftables: dict[str, str] = field(default_factory=dict)
    """Our nftables table's text by interface (:meth:`set_nftables`)."""
    exit_routing: dict[int, tuple[str, tuple[IPNetwork, ...], tuple[IPNetwork, ...]]] = field(
        default_factory=dict
    )
    """:meth:`set_exit_routing`'s interface, default routes and LAN prefixes, by mark."""

    def __post_init__(self) -> None:
        self.rng = random.Random(f"{self.name}:{self.network.rng.random()}")
        self._changes: list[_Changes] = []
        self._ephemeral = itertools.count(33000)

    @property
    def ip(self) -> str:
        return str(self.address.ip)

    @property
    def addresses(self) -> list[str]:
        """Every address of the machine, the primary one first."""
        return [self.ip, *self.extra_addresses]

    def add_address(self, ip: str) -> None:
        """One more address (on the internet for a public host, on the site's LAN behind a
        router); a watcher hears of it."""
        if ip in self.addresses:
            return
        self.extra_addresses.append(ip)
        if self.router is not None:
            self.router.hosts[ip] = self
        else:
            self.network.owners[ip] = self
        self.emit_changes([NetworkChange(ChangeKind.ADDRESS_ADDED, "eth0", ip)])

    def remove_address(self, ip: str) -> None:
        """Take away an address :meth:`add_address` gave; a watcher hears of it."""
        if ip not in self.extra_addresses:
            return
        self.extra_addresses.remove(ip)
        owners = self.router.hosts if self.router is not None else self.network.owners
        if owners.get(ip) is self:
            del owners[ip]
        self.emit_changes([NetworkChange(ChangeKind.ADDRESS_REMOVED, "eth0", ip)])

    # -- datagrams --------------------------------------------------------------------------

    def send_datagram(self, src: Address, dst: Address, data: bytes) -> None:
        if not self.online:
            self.network.dropped += 1
            return
        if dst[0] in self.addresses or dst[0].startswith("127."):
            self.network.schedule(0.0, lambda: self.deliver(src, dst, data))
        elif self.router is not None:
            self.router.from_lan(src, dst, data)
        else:
            self.network.transmit(src, dst, data)

    def from_internet(self, src: Address, dst: Address, data: bytes) -> None:
        self.deliver(src, dst, data)

    def deliver(self, src: Address, dst: Address, data: bytes) -> None:
        if not self.online or (dst[0] != self.ip and dst[0] not in self.extra_addresses):
            self.network.dropped += 1
            return
        port = self.ports.get(dst) or self.ports.get(("0.0.0.0", dst[1]))
        if port is None:
            self.network.dropped += 1
            return
        port.arrive(data, src, dst[0])

    def open_datagram_ports(self, port: int = 0) -> list[DatagramPort]:
        return [self.bind_datagram("0.0.0.0", port)]

    def bind_datagram(
        self, ip: str, port: int, *, shared_buffers: bool = False
    ) -> MemoryDatagramPort:
        if ip != "0.0.0.0" and ip not in self.addresses:
            raise RuntimeFailure(f"cannot bind UDP {ip}:{port}: no such local address")
        if port == 0:
            port = next(self._ephemeral)
            while (ip, port) in self.ports or ("0.0.0.0", port) in self.ports:
                port = next(self._ephemeral)
        elif (ip, port) in self.ports:
            raise RuntimeFailure(f"cannot bind UDP {ip}:{port}: address already in use")
        endpoint = MemoryDatagramPort(self, ip, port)
        self.ports[(ip, port)] = endpoint
        return endpoint

    async def default_gateway(self) -> str | None:
        """No gateway in the memory network answers PCP, NAT-PMP or UPnP."""
        await trio.lowlevel.checkpoint()
        return None

    def route_source(self, remote_ip: str) -> str | None:
        if not self.online:
            return None
        if ipaddress.ip_address(remote_ip).version != self.address.version:
            return None
        return self.ip

    async def local_addresses(
        self, *, exclude: Iterable[str] = (), include_link_local: bool = False
    ) -> list[LocalAddress]:
        await trio.lowlevel.checkpoint()
        if not self.online:
            return []
        prefixlen = self.address.network.prefixlen
        return [LocalAddress(ip, prefixlen, "eth0", 2) for ip in self.addresses]

    # -- TCP --------------------------------------------------------------------------------

    async def connect_tcp(
        self,
        host: str,
        port: int,
        *,
        local_ip: str | None = None,
        keepalive: tuple[int, int, int] | None = None,
    ) -> Connection:
        await trio.lowlevel.checkpoint()
        addresses = await self.resolve(host, port)
        if not self.online or not addresses:
            raise OSError(f"connect to {host}:{port}: network unreachable")
        target = addresses[0]
        listener = self.network.listener_at(target)
        if listener is None:
            raise ConnectionRefusedError(f"connect to {host}:{port}: connection refused")
        local = (self.ip, next(self._ephemeral))
        if self.router is not None:
            seen_as = (self.router.public_ip, self.router.tcp_source())
        else:
            seen_as = local
        conn = MemoryConnection()
        if self.router is not None:
            self.router.connections.append(conn)
        if not listener.offer(Connection(conn.server, target, seen_as)):
            raise ConnectionRefusedError(f"connect to {host}:{port}: backlog full")
        return Connection(conn.client, local, target)

    async def listen_tcp(self, ip: str, port: int) -> MemoryListener:
        await trio.lowlevel.checkpoint()
        addr = (ip, port)
        if addr in self.network._listeners:
            raise RuntimeFailure(f"cannot listen on TCP {ip}:{port}: address already in use")
        listener = MemoryListener(self, addr)
        self.network._listeners[addr] = listener
        return listener

    async def resolve(self, host: str, port: int) -> list[Address]:
        await trio.lowlevel.checkpoint()
        try:
            return [(str(ipaddress.ip_address(host)), port)]
        except ValueError:
            return [(ip, port) for ip in self.network.names.get(host, [])]

    # -- the interface ----------------------------------------------------------------------

    def open_tun(self, name: str) -> MemoryTun:
        if name in self.tuns:
            raise RuntimeFailure(f"interface {name} already exists")
        tun = MemoryTun(self, name)
        self.tuns[name] = tun
        return tun

    async def interface_exists(self, name: str) -> bool:
        await trio.lowlevel.checkpoint()
        return name in self.tuns

    async def configure_interface(
        self, name: str, addresses: Sequence[IPInterface], mtu: int
    ) -> None:
        await trio.lowlevel.checkpoint()
        current = self.interface_addresses.setdefault(name, [])
        for a in addresses:
            if a not in current:
                current.append(a)
        self.interface_mtu[name] = mtu

    async def remove_addresses(self, name: str, addresses: Sequence[IPInterface]) -> None:
        await trio.lowlevel.checkpoint()
        current = self.interface_addresses.get(name, [])
        for a in addresses:
            if a in current:
                current.remove(a)

    async def add_route(self, name: str, prefix: IPNetwork) -> None:
        await trio.lowlevel.checkpoint()
        self.routes.setdefault(name, set()).add(prefix)

    async def remove_route(self, name: str, prefix: IPNetwork) -> None:
        await trio.lowlevel.checkpoint()
        self.routes.get(name, set()).discard(prefix)

    @asynccontextmanager
    async def network_changes(
        self, *, exclude: Iterable[str] = ()
    ) -> AsyncIterator[AsyncIterator[list[NetworkChange]]]:
        send, receive = trio.open_memory_channel[list[NetworkChange]](16)
        entry = _Changes(send, frozenset(exclude))
        self._changes.append(entry)
        try:
            yield receive
        finally:
            self._changes.remove(entry)

    def emit_changes(self, changes: list[NetworkChange]) -> None:
        """Report ``changes`` to whoever watches this host's network (as netlink would)."""
        for entry in self._changes:
            wanted = [c for c in changes if c.interface not in entry.exclude]
            if wanted:
                try:
                    entry.send.send_nowait(wanted)
                except trio.WouldBlock:
                    entry.send.send_nowait([NetworkChange(ChangeKind.RESYNC)])

    def renumber(self, ip: str) -> None:
        """The host gets a new LAN address (DHCP renumbering): datagrams to the old one are
        lost from now on; a watcher hears the change."""
        old = self.ip
        if self.router is not None:
            self.router.hosts.pop(old, None)
            self.router.hosts[ip] = self
        else:
            self.network.owners.pop(old, None)
            self.network.owners[ip] = self
        self.address = ipaddress.ip_interface(f"{ip}/{self.address.network.prefixlen}")
        self.emit_changes(
            [
                NetworkChange(ChangeKind.ADDRESS_REMOVED, "eth0", old),
                NetworkChange(ChangeKind.ADDRESS_ADDED, "eth0", ip),
            ]
        )

    # -- the resolver -----------------------------------------------------------------------

    # forwarding: recorded, not simulated (the memory network forwards nothing for a node)

    def set_fwmark(self, mark: int | None) -> None:
        self.fwmark = mark

    async def enable_forwarding(self, version: int) -> str | None:
        await trio.lowlevel.checkpoint()
        self.forwarding.add(version)
        return None

    async def set_nftables(self, interface: str, ruleset: str | None) -> None:
        await trio.lowlevel.checkpoint()
        if ruleset is None:
            self.nftables.pop(interface, None)
        else:
            self.nftables[interface] = ruleset

    async def set_exit_routing(
        self,
        interface: str,
        mark: int,
        defaults: Sequence[IPNetwork],
        lan: Sequence[IPNetwork] = (),
    ) -> None:
        await trio.lowlevel.checkpoint()
        self.exit_routing[mark] = (interface, tuple(defaults), tuple(lan))

    async def clear_exit_routing(self, mark: int) -> None:
        await trio.lowlevel.checkpoint()
        self.exit_routing.pop(mark, None)

    async def register_dns(self, interface: str, servers: Sequence[str], domain: str) -> bool:
        await trio.lowlevel.checkpoint()
        self.dns_registrations[interface] = (tuple(servers), domain)
        return True

    async def unregister_dns(self, interface: str) -> None:
        await trio.lowlevel.checkpoint()
        self.dns_registrations.pop(interface, None)

    # -- clocks and randomness --------------------------------------------------------------

    def wall_clock(self) -> float:
        return EPOCH + trio.current_time() + self.slept

    def suspend_clocks(self) -> tuple[float, float]:
        now = trio.current_time()
        return now, now + self.slept

    def random_bytes(self, n: int) -> bytes:
        return self.rng.randbytes(n)

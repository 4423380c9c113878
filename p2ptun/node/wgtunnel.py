"""A WireGuard tunnel over a TUN device and UDP sockets: the seed of the node's data path.

:class:`WgTunnel` is the thin trio layer (DEVELOPERS.md) around the sans-I/O
:class:`p2ptun.wireguard.Device`. It owns nothing but wiring:

* **TUN → peers**: wake once when the TUN descriptor is readable, drain a batch of packets into
  preallocated buffers (:meth:`TunDevice.read_batch`), hand each to
  :meth:`Device.send_packet` (cryptokey routing picks the peer), then send every datagram the
  touched peers queued to their endpoint.
* **UDP → TUN**: the node's sockets are drained in batches by their one
  :class:`~p2ptun.net.dispatch.Dispatcher`, which calls :meth:`WgTunnel.on_datagram` for each
  WireGuard datagram; at the end of the batch (:meth:`WgTunnel.udp_drained`) the decrypted
  packets go to the TUN device and handshake replies to the peer, and the device hears how
  many handshake messages the batch held (:meth:`Device.report_backlog`): a flood puts it
  under load, and cookies are demanded (whitepaper §5.3, :mod:`p2ptun.wireguard.load`).
* **Timers**: one :class:`~p2ptun.net.timer.CoreTimer` sleeps until
  :meth:`Device.next_wakeup`; the data path pulls that deadline earlier when a packet arms a
  sooner timer.
* **Offloads** (:mod:`p2ptun.net.offload`, each probed, ``P2PTUN_OFFLOAD=off`` for none): with
  a virtio header on the TUN device, a TCP super-packet read from it is cut into segments
  before encryption (TSO), and the decrypted segments of a batch are merged back into
  super-packets for one ``writev`` each (GRO); a peer's datagrams go out with UDP GSO
  (:meth:`UdpEndpoint.send_batch`) and arrive with UDP GRO. After writing received packets the
  TUN device is read once at once (an echo reply or ACKs are already queued).

No trio channel sits between the descriptors and the protocol: the TUN task, the timer task and
the sockets' receive tasks (run by the composition root, :mod:`p2ptun.node.daemon`) call the
device directly, which is safe because trio runs one task at a time.

A peer's path is set from outside: :meth:`WgTunnel.set_endpoint` for a direct UDP path (the
node daemon takes it from ICE's selected pair: the remote candidate, and the pair's local base
as the source its datagrams leave from, so that a multi-homed host keeps talking from the
address the peer knows; the standalone tunnel process of the development tree, ``python -m
p2plab.wgtunnel_tool``, from its config), :meth:`WgTunnel.set_sender` for any other (a TURN
relay); with ``learn_endpoints`` a peer without a path takes one from its first authenticated
datagram, and with ``roam`` a direct path follows the peer's authenticated datagrams — to the
address they come from and from the local address they came to (WireGuard's "sticky
sockets"). Datagrams that arrive by another way than the UDP socket (unwrapped from TURN) enter
through :meth:`WgTunnel.receive_datagram`. With ``mss`` set, TCP SYNs crossing the tunnel in
either direction get their MSS option clamped (:mod:`p2ptun.node.mss`).

With a ``firewall`` (:class:`p2ptun.firewall.Firewall`), packets read from TUN pass
:meth:`Firewall.allow_outbound` once routed to their peer (a TSO super-packet once, before it
is cut), and the packets decrypted from a peer pass :meth:`Firewall.filter_inbound` as a batch
before they are written to TUN; what it drops never reaches the other side or the kernel.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any

import trio

from p2ptun.addr import Address, format_address
from p2ptun.firewall import Firewall
from p2ptun.keys import encode_key
from p2ptun.log import get_logger
from p2ptun.net.offload import (
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_ECN,
    VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_UDP_L4,
    VNET_HDR,
    VNET_HDR_LEN,
    TcpCoalescer,
    complete_checksum,
    mark_partial,
    offload_wanted,
    segment_tcp,
    segment_udp,
)
from p2ptun.net.ports import DatagramPort, TunPort
from p2ptun.net.timer import CoreTimer
from p2ptun.net.tun import MAX_PACKET, TUN_F_USO4, TUN_F_USO6
from p2ptun.net.udp import DEFAULT_BATCH, family_of
from p2ptun.node.mss import clamp_mss
from p2ptun.wireguard import (
    Device,
    Event,
    HandshakeCompleted,
    HandshakeFailed,
    PathQuiet,
    Peer,
    SessionExpired,
)

log = get_logger("node.wgtunnel")

_INITIATION = 1
_RESPONSE = 2
"""WireGuard message type 1 (handshake initiation)."""


# -- the tunnel --------------------------------------------------------------------------------


@dataclass
class PeerStats:
    """What the tunnel saw of one peer beyond the protocol's own counters."""

    handshakes_initiated: int = 0
    """Sessions that began with our initiation (including our rekeys)."""
    handshakes_responded: int = 0
    """Sessions that began with the peer's initiation."""
    handshakes_failed: int = 0
    datagrams_without_endpoint: int = 0
    """Datagrams dropped because the peer had no endpoint yet."""
    path_quiet: int = 0
    """Times the path went quiet (:class:`~p2ptun.wireguard.PathQuiet`)."""
    roams: int = 0
    """Times the direct path followed the peer to a new address."""


@dataclass
class TunnelCounters:
    """What the I/O layer itself counts (the protocol's counters are ``device.counters``)."""

    tun_batches: int = 0
    """Wake-ups of the TUN side that read at least one packet."""
    udp_batches: int = 0
    """Batches the UDP endpoints drained."""
    timer_runs: int = 0
    tx_no_socket: int = 0
    """Datagrams dropped because no socket of the endpoint's address family is open."""
    mss_clamped: int = 0
    """TCP SYNs whose MSS option was lowered (both directions)."""
    replies_dropped: int = 0
    """Cookie replies with no way back (their handshake came through a relay)."""
    responses_held: int = 0
    """Handshake responses made before the peer had a path, sent once it got one."""
    tso_packets: int = 0
    """TCP super-packets read from TUN and cut into segments before encryption."""
    tso_segments: int = 0
    """Segments those super-packets were cut into."""
    tun_bad_offload: int = 0
    """Packets read from TUN with a virtio header this data path cannot honour (dropped)."""
    gro_segments: int = 0
    """Decrypted segments (TCP) and datagrams (UDP) written to TUN merged into super-packets."""
    uso_packets: int = 0
    """UDP super-datagrams read from TUN (an application's ``UDP_SEGMENT`` send) and cut."""
    uso_datagrams: int = 0
    """Datagrams those super-datagrams were cut into."""
    tun_early_reads: int = 0
    """TUN reads made right after writing received packets (see :meth:`WgTunnel.udp_drained`)."""
    partial_checksums: int = 0
    """TCP segments sent with their checksum left partial, to peers that complete it
    (:meth:`WgTunnel.set_partial_checksums`)."""


def _short(key: bytes) -> str:
    return encode_key(key)[:8]


def relay_source(peer: Address) -> bytes:
    """How a datagram relayed from ``peer`` names its path for :meth:`WgTunnel.receive_datagram`
    (the cookie logic keys on it): the same for every way relayed data reaches the tunnel."""
    return b"relay " + format_address(peer).encode()


#: Relayed paths whose cookie-logic name is kept (see :meth:`WgTunnel.receive_relayed`).
MAX_RELAY_SOURCES = 1024

Sender = Callable[[list[bytes]], object]
"""Sends a batch of WireGuard datagrams (in order) to a peer over a path that is not plain UDP
(a TURN relay): one call per flush, so the path can batch too."""


class WgTunnel:
    """A WireGuard device wired to a TUN device and one UDP endpoint per address family.

    Build it from opened parts (``WgTunnel(device, tun, endpoints)``); peers are added to
    ``device`` and have no path until :meth:`set_endpoint` or :meth:`set_sender` gives them one
    (or, with ``learn_endpoints``, their first authenticated datagram). The endpoints are the
    sockets it sends from; what they receive reaches it through their dispatcher
    (:meth:`on_datagram`, :meth:`udp_drained`), which the composition root builds and runs.
    :meth:`run` runs the TUN and timer tasks. Closing it closes the TUN device (the
    endpoints belong to whoever opened them). Time is trio's clock, so a ``MockClock`` drives
    the protocol timers too.

    ``on_path_quiet(peer, event)`` hears when a peer's path went quiet (its
    :attr:`~p2ptun.wireguard.Peer.path_silence` passed without an authenticated packet while
    data went out, or after data stopped arriving): the node probes the path then.
    ``mss``: clamp the MSS option of TCP SYNs to ``(ipv4, ipv6)`` values (see
    :func:`p2ptun.node.mss.mss_for_mtu`); None leaves packets alone. ``learn_endpoints``:
    until a peer has a path, answer its authenticated datagrams where they came from (the
    daemon keeps it on: the two sides select their ICE pair within a round trip of each
    other, and the first handshake may arrive before ours is selected). ``roam``: on a direct
    path, follow the peer to the address its authenticated datagrams come from (WireGuard's
    roaming). The same event through a relay — the peer's authenticated datagrams reach one of
    our relays from another address than the path's (its NAT moved, or it failed over to a
    pair through our relay) — goes to ``on_relayed_roam(peer, address, relay)``: only the
    owner of the relay can point a path through it (the node does,
    :meth:`PeerSession.relayed_roam`).
    """

    def __init__(
        self,
        device: Device,
        tun: TunPort,
        endpoints: Sequence[DatagramPort],
        *,
        batch: int = DEFAULT_BATCH,
        mss: tuple[int, int] | None = None,
        learn_endpoints: bool = True,
        roam: bool = True,
        on_path_quiet: Callable[[Peer, PathQuiet], None] | None = None,
        on_relayed_roam: Callable[[Peer, Address, Any], None] | None = None,
        on_no_path: Callable[[Peer], None] | None = None,
        firewall: Firewall | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("a tunnel needs at least one UDP endpoint")
        self.device = device
        self.tun = tun
        self.endpoints = list(endpoints)
        self.counters = TunnelCounters()
        self.peer_stats: dict[Peer, PeerStats] = {}
        self.mss = mss
        self.learn_endpoints = learn_endpoints
        self.roam = roam
        self.on_path_quiet = on_path_quiet
        self.on_relayed_roam = on_relayed_roam
        self.on_no_path = on_no_path
        """Called when a handshake initiation for a peer without a path could not go out
        (traffic wants the peer: an on-demand connection starts here)."""
        self.firewall = firewall
        """Filters the packets between TUN and the peers (None: everything passes)."""
        self._by_family = {ep.family: ep for ep in self.endpoints}
        self._peer_endpoints: dict[Peer, Address | None] = {}
        #: The local address each direct path sends from (None: the kernel's choice).
        self._peer_sources: dict[Peer, str | None] = {}
        self._senders: dict[Peer, Sender] = {}
        self._vnet = tun.vnet_hdr
        self.tun_offload = tun.enable_offload() if tun.vnet_hdr else 0
        """The TUNSETOFFLOAD flags in force (0: packets come one at a time)."""
        head = VNET_HDR_LEN if self._vnet else 0
        self._tun_views = [_lazy_buffer(head + MAX_PACKET) for _ in range(batch)]
        self._tun_lengths = [0] * batch
        self._seg_buffer = bytearray(2 * MAX_PACKET) if self.tun_offload else bytearray()
        self._seg_lengths: list[int] = []
        uso = TUN_F_USO4 | TUN_F_USO6
        self._coalescer = TcpCoalescer(udp=self.tun_offload & uso == uso)
        partial_wanted = offload_wanted("partial")
        self.accepts_partial_checksums = self._vnet and partial_wanted
        """Whether this end completes TCP checksums a peer leaves partial (it writes TUN with
        virtio headers): what the node offers its p2ptun peers."""
        #: Peers that complete the TCP checksums we leave partial (they said so).
        self._partial_peers: set[Peer] = set()
        self._partial_wanted = partial_wanted
        self._touched: dict[Peer, None] = {}  # insertion-ordered set
        self._initiation_unsent: set[Peer] = set()
        #: The latest handshake response of a peer that had no path yet (see _path_set).
        self._response_unsent: dict[Peer, bytes] = {}
        self._wrote_tun = False
        self._rx_now: float | None = None
        self._handshakes_reported = 0
        self._timer = CoreTimer(device.next_wakeup, self._on_timeout)
        self._relay_sources: dict[Address, bytes] = {}

    # -- construction and lifetime -------------------------------------------------------------

    def _stats(self, peer: Peer) -> PeerStats:
        stats = self.peer_stats.get(peer)
        if stats is None:
            stats = self.peer_stats[peer] = PeerStats()
        return stats

    def set_endpoint(self, peer: Peer, endpoint: Address | None, source: str | None = None) -> None:
        """Send ``peer``'s datagrams to ``endpoint`` over UDP from now on (ICE path switch,
        roaming), from our address ``source`` if given; replaces a sender set with
        :meth:`set_sender`. ``None`` clears the path (and its source)."""
        self._senders.pop(peer, None)
        self._peer_endpoints[peer] = endpoint
        self._peer_sources[peer] = source if endpoint is not None else None
        if endpoint is not None:
            self._path_set(peer)

    def _path_set(self, peer: Peer) -> None:
        """An initiation that never left (no path yet) does not count towards the one-per-
        REKEY_TIMEOUT limit: now that there is a path, the next ``initiate_handshake`` goes
        out at once instead of the handshake waiting up to 5 s for the retransmission."""
        if peer in self._initiation_unsent:
            self._initiation_unsent.discard(peer)
            peer.handshake.last_sent = None
        # A handshake response made before the path was known (the initiator selected the
        # pair first and its initiation came in through our relay) goes out now: the
        # initiator waits up to REKEY_TIMEOUT (5 s) for it before it tries again.
        response = self._response_unsent.pop(peer, None)
        if response is not None:
            sender = self._senders.get(peer)
            endpoint = self._peer_endpoints.get(peer)
            if sender is not None:
                sender([response])
            elif endpoint is not None:
                self._send(response, endpoint, self._peer_sources.get(peer))
            self.counters.responses_held += 1

    def set_sender(self, peer: Peer, sender: Sender | None, endpoint: Address | None) -> None:
        """Send ``peer``'s datagrams with ``sender`` from now on (a relayed path), or drop them
        when None; ``endpoint`` is what :meth:`status` shows as the peer's endpoint."""
        if sender is None:
            self._senders.pop(peer, None)
        else:
            self._senders[peer] = sender
            self._path_set(peer)
        self._peer_endpoints[peer] = endpoint
        self._peer_sources.pop(peer, None)

    def endpoint(self, peer: Peer) -> Address | None:
        return self._peer_endpoints.get(peer)

    def set_partial_checksums(self, peer: Peer, on: bool) -> None:
        """Whether TCP segments to ``peer`` may leave their checksum partial: only for a
        peer that said it completes them (a p2ptun peer whose TUN takes virtio headers;
        :mod:`p2ptun.signal.features`). Only when this end has TSO can it skip a sum, and
        ``P2PTUN_OFFLOAD`` without ``partial`` keeps every checksum complete."""
        if on and self.tun_offload and self._partial_wanted:
            self._partial_peers.add(peer)
        else:
            self._partial_peers.discard(peer)

    def partial_checksums(self, peer: Peer) -> bool:
        return peer in self._partial_peers

    def source(self, peer: Peer) -> str | None:
        """The local address ``peer``'s direct path sends from (None: the kernel's choice)."""
        return self._peer_sources.get(peer)

    def forget_sessions(self, peer: Peer) -> None:
        """``peer``'s daemon lost its session state (:meth:`Peer.forget_sessions`): forget
        ours, with any handshake message held back for a path."""
        peer.forget_sessions()
        self._initiation_unsent.discard(peer)
        self._response_unsent.pop(peer, None)

    def remove_peer(self, peer: Peer) -> None:
        """Forget ``peer`` (its keys, routes in the device, path)."""
        self.device.remove_peer(peer)
        if self.firewall is not None:
            self.firewall.remove_peer(peer)
        self._peer_endpoints.pop(peer, None)
        self._peer_sources.pop(peer, None)
        self._senders.pop(peer, None)
        self.peer_stats.pop(peer, None)
        self._touched.pop(peer, None)
        self._initiation_unsent.discard(peer)
        self._response_unsent.pop(peer, None)
        self._partial_peers.discard(peer)

    def flush(self, peer: Peer | None = None) -> None:
        """Send what ``peer`` (or every touched peer) queued, e.g. after calling into the
        device from outside the data path (:meth:`Peer.send_keepalive`)."""
        if peer is not None:
            self._touched[peer] = None
        self._report_handshakes()
        self._rx_now = None
        self._flush_touched()

    def _report_handshakes(self) -> None:
        """At the end of a receive batch: tell the device how many handshake messages the
        batch held (the growth of its counter, one subtraction per batch — nothing per
        packet), so that a deep backlog puts it under load and cookies are demanded
        (:mod:`p2ptun.wireguard.load`)."""
        seen = self.device.counters.handshake_messages
        if seen != self._handshakes_reported:
            now = self._rx_now if self._rx_now is not None else trio.current_time()
            self.device.report_backlog(seen - self._handshakes_reported, now)
            self._handshakes_reported = seen

    def close(self) -> None:
        """Close the TUN device (removing the interface). Idempotent."""
        self.tun.close()

    def __enter__(self) -> WgTunnel:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def listen_port(self) -> int:
        return self.endpoints[0].local_address[1]

    # -- running -------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Move packets until cancelled (or until the TUN device or sockets are closed)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._tun_loop)
            nursery.start_soon(self._timer.run)
            task_status.started()

    async def _tun_loop(self) -> None:
        tun = self.tun
        batch = len(self._tun_views)
        while True:
            try:
                await tun.wait_readable()
            except trio.ClosedResourceError:
                return
            while True:
                if tun.closed:
                    return
                if self._tun_drain_batch() < batch:
                    break
                await trio.lowlevel.checkpoint()

    def _tun_drain_batch(self) -> int:
        """Read up to one batch from TUN without blocking, send it; returns packets read."""
        views = self._tun_views
        lengths = self._tun_lengths
        n = self.tun.read_batch(views, lengths)
        if n == 0:
            return 0
        self.counters.tun_batches += 1
        now = trio.current_time()
        device = self.device
        touched = self._touched
        mss = self.mss
        if self._vnet:
            for i in range(n):
                self._send_offloaded(views[i], lengths[i], now)
        elif self.firewall is not None:
            for i in range(n):
                view = views[i]
                if mss is not None and _maybe_syn(view):
                    self._clamp(view, lengths[i], mss)
                self._send_filtered(view[: lengths[i]], now)
        else:
            for i in range(n):
                view = views[i]
                if mss is not None and _maybe_syn(view):
                    self._clamp(view, lengths[i], mss)
                peer = device.send_packet(view[: lengths[i]], now)
                if peer is not None:
                    touched[peer] = None
        self._flush_touched()
        return n

    def _send_offloaded(self, view: memoryview, length: int, now: float) -> None:
        """One TUN read behind a virtio header: complete its checksum (or leave it partial
        for a peer that completes it) or cut it into segments, then hand the packet(s) to
        the device."""
        flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = VNET_HDR.unpack_from(view)
        packet = view[VNET_HDR_LEN:length]
        device = self.device
        touched = self._touched
        if gso_type == VIRTIO_NET_HDR_GSO_NONE:
            peer = device.route(packet)  # once: the checksum choice and the send both need it
            if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
                done = peer in self._partial_peers and mark_partial(packet, csum_start, csum_offset)
                self.counters.partial_checksums += done
                if not done and not complete_checksum(packet, csum_start, csum_offset):
                    self.counters.tun_bad_offload += 1
                    return
            mss = self.mss
            if mss is not None and _maybe_syn(packet):
                self._clamp(packet, len(packet), mss)
            if peer is None:
                device.counters.no_route += 1
                return
            firewall = self.firewall
            if firewall is not None and not firewall.allow_outbound(peer, packet, now):
                return
            peer.send_packet(packet, now)
            touched[peer] = None
            return
        # Every segment has the super-packet's addresses: route once.
        peer = device.route(packet)
        if peer is None:
            device.counters.no_route += 1
            return
        firewall = self.firewall
        if firewall is not None and not firewall.allow_outbound(peer, packet, now):
            return
        seg_lengths = self._seg_lengths
        counters = self.counters
        if gso_type & ~VIRTIO_NET_HDR_GSO_ECN == VIRTIO_NET_HDR_GSO_UDP_L4:
            count = segment_udp(packet, gso_size, self._seg_buffer, seg_lengths)
            if count == 0:
                counters.tun_bad_offload += 1
                return
            counters.uso_packets += 1
            counters.uso_datagrams += count
        else:
            partial = peer in self._partial_peers
            count = segment_tcp(packet, gso_size, self._seg_buffer, seg_lengths, partial)
            if count == 0:
                counters.tun_bad_offload += 1
                return
            counters.tso_packets += 1
            counters.tso_segments += count
            if partial:
                counters.partial_checksums += count
        peer.send_packets(memoryview(self._seg_buffer), seg_lengths, count, now)
        touched[peer] = None

    def _send_filtered(self, packet: memoryview, now: float) -> None:
        """Route ``packet`` and send it if the firewall lets it out to that peer."""
        device = self.device
        peer = device.route(packet)
        if peer is None:
            device.counters.no_route += 1
            return
        assert self.firewall is not None
        if self.firewall.allow_outbound(peer, packet, now):
            peer.send_packet(packet, now)
            self._touched[peer] = None

    def _clamp(self, view: memoryview, length: int, mss: tuple[int, int]) -> None:
        if clamp_mss(view, length, mss[0], mss[1]):
            self.counters.mss_clamped += 1

    def on_datagram(self, data: memoryview, addr: Address, local: str | None = None) -> None:
        """The dispatcher's handler for one WireGuard datagram from ``addr`` to our ``local``
        address (``data`` is valid until the batch ends, :meth:`udp_drained`)."""
        now = self._rx_now
        if now is None:
            now = self._rx_now = trio.current_time()
        peer = self.device.receive_datagram(data, now, addr)
        if peer is not None:
            self._touched[peer] = None
            if self._peer_endpoints.get(peer) != addr or (
                local is not None and self._peer_sources.get(peer) != local
            ):
                self._authenticated_from(peer, addr, local)

    def _authenticated_from(self, peer: Peer, addr: Address, local: str | None) -> None:
        """An authenticated datagram of ``peer`` came from ``addr`` to our ``local`` address,
        which are not its path's: learn them (no path yet, ``learn_endpoints``) or roam to them
        (a direct path; WireGuard's own rule, whitepaper §2.1: the reply goes where the last
        authenticated packet came from, and leaves from where it arrived). The peer's NAT gave
        it a new mapping, and when ours lets the new one in, the tunnel works again in one
        round trip, before any probe or ICE restart. A relayed path is left to ICE."""
        endpoints = self._peer_endpoints
        endpoint = endpoints.get(peer)
        if endpoint is None:
            if not self.learn_endpoints:
                return
            log.info(
                "endpoint learned", peer=_short(peer.public_key), endpoint=format_address(addr)
            )
        elif not self.roam or peer in self._senders:
            return
        elif endpoint == addr:
            log.debug("peer reached us at another address", peer=_short(peer.public_key), at=local)
        else:
            self._stats(peer).roams += 1
            log.info(
                "peer roamed",
                peer=_short(peer.public_key),
                old=format_address(endpoint),
                new=format_address(addr),
            )
        endpoints[peer] = addr
        self._peer_sources[peer] = local

    def receive_datagram(self, data: bytes | bytearray | memoryview, source: bytes) -> None:
        """A WireGuard datagram that did not come straight from the UDP socket (a TURN relay
        unwrapped it); ``source`` names that path for the cookie logic. The caller flushes
        (:meth:`flush`) or returns into a UDP batch, which does; either ends the batch's
        shared ``now``."""
        self._receive_via(data, source)

    def _receive_via(self, data: bytes | bytearray | memoryview, source: bytes) -> Peer | None:
        now = self._rx_now
        if now is None:
            now = self._rx_now = trio.current_time()
        peer = self.device.receive_datagram(data, now, source)
        if peer is not None:
            self._touched[peer] = None
        return peer

    def receive_relayed(self, data: memoryview, peer: Address, relay: Any = None) -> None:
        """A WireGuard datagram ``relay`` unwrapped, from ``peer`` (the relay's receiver,
        inside a socket's batch or followed by :meth:`flush` for a stream relay). The path's
        name for the cookie logic (:func:`relay_source`) is made once per peer. An
        authenticated one that did not come the way the peer's path goes — a relayed path
        with another remote, or a direct path — goes to ``on_relayed_roam`` (class
        docstring)."""
        sources = self._relay_sources
        source = sources.get(peer)
        if source is None:
            if len(sources) >= MAX_RELAY_SOURCES:
                sources.clear()
            source = sources[peer] = relay_source(peer)
        wg = self._receive_via(data, source)
        if (
            wg is not None
            and self.on_relayed_roam is not None
            and relay is not None
            and self._peer_endpoints.get(wg) is not None
            and (wg not in self._senders or self._peer_endpoints.get(wg) != peer)
        ):
            self._stats(wg).roams += 1
            self.on_relayed_roam(wg, peer, relay)

    def udp_drained(self) -> None:
        """The end of a socket's batch: write what it decrypted, send what it provoked."""
        self._report_handshakes()
        self._rx_now = None
        self.counters.udp_batches += 1
        self._flush_touched()
        if self._wrote_tun:
            # What the packets just written provoke (an echo reply, TCP ACKs) is often queued
            # on TUN by the time the write returns: take it now instead of after another trip
            # through the event loop (one wake-up less per request/response).
            self._wrote_tun = False
            if not self.tun.closed:
                self.counters.tun_early_reads += 1
                self._tun_drain_batch()
        for source, reply in self.device.pop_replies():
            if isinstance(source, tuple):
                self._send(reply, source)  # a cookie reply: rare, from the kernel's choice
            else:
                self.counters.replies_dropped += 1

    def _on_timeout(self, now: float) -> None:
        self.counters.timer_runs += 1
        for peer in self.device.handle_timeout(now):
            self._touched[peer] = None
        self._flush_touched()

    # -- output --------------------------------------------------------------------------------

    def _flush_touched(self) -> None:
        """Send what the touched peers queued, write their packets to TUN, hand on their
        events. An event's handler may touch a peer again (a keepalive after a quiet path):
        that peer is flushed in the same call."""
        touched = self._touched
        if not touched:
            return
        pull_earlier = self._timer.pull_earlier
        while touched:
            peers = list(touched)
            touched.clear()
            for peer in peers:
                self._flush_peer(peer, pull_earlier)

    def _flush_peer(self, peer: Peer, pull_earlier: Callable[[float], None]) -> None:
        datagrams = peer.pop_datagrams()
        if datagrams:
            sender = self._senders.get(peer)
            endpoint = self._peer_endpoints.get(peer)
            if sender is not None:
                sender(datagrams)
            elif endpoint is None:
                self._stats(peer).datagrams_without_endpoint += len(datagrams)
                for d in datagrams:
                    if d[0] == _INITIATION:
                        self._initiation_unsent.add(peer)
                        if self.on_no_path is not None:
                            self.on_no_path(peer)
                    elif d[0] == _RESPONSE:
                        self._response_unsent[peer] = d
            else:
                self._send_batch(datagrams, endpoint, self._peer_sources.get(peer))
        packets = peer.pop_packets()
        if packets and self.firewall is not None:
            packets = self.firewall.filter_inbound(peer, packets, trio.current_time())
        if packets:
            self._write_packets(packets)
        for event in peer.pop_events():
            self._on_event(peer, event)
        wake = peer.next_wakeup()
        if wake is not None:
            pull_earlier(wake)

    def _write_packets(self, packets: list[bytes]) -> None:
        """Write decrypted packets to TUN: merged into TCP super-packets when the device has
        a virtio header, one write each otherwise; SYNs get their MSS clamped first."""
        tun = self.tun
        mss = self.mss
        self._wrote_tun = True
        if not self._vnet:
            for packet in packets:
                if mss is not None and _maybe_syn(packet):
                    writable = bytearray(packet)
                    self._clamp(memoryview(writable), len(writable), mss)
                    tun.write(writable)
                else:
                    tun.write(packet)
            return
        coalescer = self._coalescer
        add = coalescer.add
        for packet in packets:
            if mss is not None and _maybe_syn(packet):
                writable = bytearray(packet)
                self._clamp(memoryview(writable), len(writable), mss)
                add(writable)
            else:
                add(packet)
        writev = tun.writev
        for parts in coalescer.flush():
            writev(parts)
        self.counters.gro_segments = coalescer.merged

    def _send_batch(self, datagrams: list[bytes], addr: Address, source: str | None) -> None:
        family = family_of(addr[0])
        ep = self._by_family.get(family)
        if ep is None:
            self.counters.tx_no_socket += len(datagrams)
        else:
            ep.send_batch(datagrams, addr, source)

    def _send(self, datagram: bytes, addr: Address, source: str | None = None) -> None:
        family = family_of(addr[0])
        ep = self._by_family.get(family)
        if ep is None:
            self.counters.tx_no_socket += 1
        else:
            ep.send(datagram, addr, source)

    def _on_event(self, peer: Peer, event: Event) -> None:
        stats = self._stats(peer)
        name = _short(peer.public_key)
        if isinstance(event, HandshakeCompleted):
            if event.is_initiator:
                stats.handshakes_initiated += 1
            else:
                stats.handshakes_responded += 1
            log.info("handshake completed", peer=name, initiator=event.is_initiator)
        elif isinstance(event, HandshakeFailed):
            stats.handshakes_failed += 1
            log.warning("handshake failed", peer=name)
        elif isinstance(event, SessionExpired):
            log.info("session expired, keys erased", peer=name)
        elif isinstance(event, PathQuiet):
            stats.path_quiet += 1
            if self.on_path_quiet is not None:
                self.on_path_quiet(peer, event)

    # -- status --------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """A JSON-able snapshot: counters of the protocol, the TUN device, the sockets, peers."""
        now = trio.current_time()
        peers = []
        for peer in self.device.peers.values():
            endpoint = self._peer_endpoints.get(peer)
            last = peer.last_handshake
            peers.append(
                {
                    "public_key": encode_key(peer.public_key),
                    "endpoint": None if endpoint is None else format_address(endpoint),
                    "source": self._peer_sources.get(peer),
                    "has_session": peer.has_session(now),
                    "last_handshake_age": None if last is None else round(now - last, 3),
                    "rx_bytes": peer.rx_bytes,
                    "tx_bytes": peer.tx_bytes,
                    **asdict(self._stats(peer)),
                }
            )
        return {
            "interface": self.tun.name,
            "public_key": encode_key(self.device.public_key),
            "listen_port": self.listen_port,
            "counters": self.device.counters.as_dict(),
            "tunnel": asdict(self.counters),
            "tun": asdict(self.tun.counters),
            "udp": [ep.counters.as_dict() for ep in self.endpoints],
            "peers": peers,
        }


def _maybe_syn(packet: bytes | bytearray | memoryview) -> bool:
    """A cheap pre-filter for :func:`clamp_mss`: could this be a TCP SYN? (IPv4 with a
    20-byte header: protocol and SYN flag; IPv4 with options and IPv6: let clamp_mss look.)
    ``packet`` may be longer than the packet (a receive buffer); :func:`clamp_mss` checks."""
    if len(packet) < 40:
        return False
    b0 = packet[0]
    if b0 == 0x45:
        return packet[9] == 6 and bool(packet[33] & 0x02)
    if b0 >> 4 == 4:
        return packet[9] == 6
    if b0 >> 4 == 6:
        return packet[6] != 6 or (len(packet) > 53 and bool(packet[53] & 0x02))
    return False


def _lazy_buffer(size: int) -> memoryview:
    """A zeroed, writable buffer whose pages become resident only once written to."""
    return memoryview(mmap.mmap(-1, size))

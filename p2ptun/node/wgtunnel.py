"""A WireGuard tunnel over a TUN device and UDP sockets: the seed of the node's data path.

:class:`WgTunnel` is the thin trio layer (DEVELOPERS.md) around the sans-I/O
:class:`p2ptun.wireguard.Device`. It owns nothing but wiring:

* **TUN → peers**: wake once when the TUN descriptor is readable, drain a batch of packets into
  preallocated buffers (:meth:`TunDevice.read_batch`), hand each to
  :meth:`Device.send_packet` (cryptokey routing picks the peer), then send every datagram the
  touched peers queued to their endpoint.
* **UDP → TUN**: :class:`~p2ptun.net.udp.UdpEndpoint` drains its socket into preallocated
  buffers and calls :meth:`_on_datagram` for each WireGuard datagram; at the end of the batch
  (``on_drained``) the decrypted packets go to the TUN device and handshake replies to the
  peer.
* **Timers**: one task sleeps in :func:`trio.move_on_at` until :meth:`Device.next_wakeup`; the
  data path pulls that deadline earlier when a packet arms a sooner timer.
* **Offloads** (:mod:`p2ptun.net.offload`, each probed, ``P2PTUN_OFFLOAD=off`` for none): with
  a virtio header on the TUN device, a TCP super-packet read from it is cut into segments
  before encryption (TSO), and the decrypted segments of a batch are merged back into
  super-packets for one ``writev`` each (GRO); a peer's datagrams go out with UDP GSO
  (:meth:`UdpEndpoint.send_batch`) and arrive with UDP GRO. After writing received packets the
  TUN device is read once at once (an echo reply or ACKs are already queued).

No trio channel sits between the descriptors and the protocol: three tasks call the device
directly, which is safe because trio runs one task at a time.

Peers have fixed endpoints here (or learn one from their first authenticated datagram when none
is configured). The node daemon sets each peer's path from ICE's selected pair instead:
:meth:`WgTunnel.set_endpoint` for a direct UDP path, :meth:`WgTunnel.set_sender` for any other
(a TURN relay); datagrams that arrive by another way than the UDP socket (unwrapped from TURN)
enter through :meth:`WgTunnel.receive_datagram`. With ``mss`` set, TCP SYNs crossing the tunnel
in either direction get their MSS option clamped (:mod:`p2ptun.node.mss`).

Run it alone as a process (tests, experiments)::

    python -m p2ptun.node.wgtunnel --config tunnel.json [--status-file F] [--log-level L]
    python -m p2ptun.node.wgtunnel --private-key-file K --listen-port 51820 \\
        --interface p2p0 --address 10.99.0.1/24 --peer PUBKEY --endpoint 10.98.0.2:51820 \\
        --allowed-ips 10.99.0.2/32 [--preshared-key-file F] [--rekey-after 4]

The JSON config::

    {"private_key": "<base64>", "listen_port": 51820, "interface": "p2p0",
     "address": ["10.99.0.1/24"], "mtu": 1420, "rekey_after": null, "under_load": false,
     "peers": [{"public_key": "<base64>", "endpoint": "10.98.0.2:51820",
                "allowed_ips": ["10.99.0.2/32"], "preshared_key": null,
                "persistent_keepalive": null}]}

SIGTERM or SIGINT stops it (the TUN interface disappears with its descriptor); SIGUSR1 writes
the status (:meth:`WgTunnel.status`) to the status file as JSON, which it also does on exit.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import math
import mmap
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import trio

from p2ptun import log as logging_setup
from p2ptun.addr import Address, format_address, is_ip, parse_host_port
from p2ptun.errors import ConfigError, P2ptunError, UsageError
from p2ptun.keys import decode_key, encode_key
from p2ptun.log import get_logger
from p2ptun.net.offload import (
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_NONE,
    VNET_HDR,
    VNET_HDR_LEN,
    TcpCoalescer,
    complete_checksum,
    segment_tcp,
)
from p2ptun.net.tun import MAX_PACKET, TunDevice
from p2ptun.net.udp import DEFAULT_BATCH, PacketKind, UdpEndpoint, open_endpoints
from p2ptun.node.mss import clamp_mss
from p2ptun.wireguard import (
    Device,
    Event,
    HandshakeCompleted,
    HandshakeFailed,
    Peer,
    SessionExpired,
    TimerConfig,
)

log = get_logger("node.wgtunnel")

_INITIATION = 1
"""WireGuard message type 1 (handshake initiation)."""

DEFAULT_MTU = 1420
"""WireGuard's usual MTU: 1500 minus the IPv6, UDP and WireGuard transport overheads."""


# -- configuration -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PeerSpec:
    """One peer: its static key, the addresses routed to it, and where to send its datagrams.

    ``endpoint`` None means "learn it from the peer's first authenticated datagram".
    """

    public_key: bytes
    allowed_ips: tuple[str, ...] = ()
    endpoint: Address | None = None
    preshared_key: bytes | None = None
    persistent_keepalive: float | None = None


@dataclass(frozen=True)
class TunnelSpec:
    """Everything :meth:`WgTunnel.open` needs: our key, the interface, the port, the peers.

    ``rekey_after`` shortens every WireGuard timer proportionally
    (:meth:`TimerConfig.shortened`) — for tests that want to watch rekeys; None keeps the
    standard timers. The daemon will decide ``under_load`` itself from its receive queue.
    """

    private_key: bytes
    interface: str
    addresses: tuple[str, ...] = ()
    listen_port: int = 0
    mtu: int = DEFAULT_MTU
    peers: tuple[PeerSpec, ...] = ()
    rekey_after: float | None = None
    under_load: bool = False
    """Demand cookies from every handshake (:attr:`Device.under_load`) — for tests."""

    def timers(self) -> TimerConfig:
        base = TimerConfig()
        return base if self.rekey_after is None else base.shortened(self.rekey_after)


class _Fields:
    """Typed access to one JSON object of a config file, with one-line ConfigErrors."""

    def __init__(self, file: str, prefix: str, data: object) -> None:
        if not isinstance(data, dict):
            raise ConfigError(file, prefix or None, "must be a JSON object")
        self.file = file
        self.prefix = prefix
        self.data: dict[str, Any] = data

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, problem: str, hint: str | None = None) -> ConfigError:
        return ConfigError(self.file, self.key(name), problem, hint)

    def check_unknown(self, known: Iterable[str]) -> None:
        for name in self.data:
            if name not in known:
                raise self.error(name, "unknown key", "allowed: " + ", ".join(sorted(known)))

    def key_value(self, name: str, *, required: bool) -> bytes | None:
        raw = self.data.get(name)
        if raw is None:
            if required:
                raise self.error(name, "missing", "a base64 key as `wg genkey` prints")
            return None
        if not isinstance(raw, str):
            raise self.error(name, "must be a string", "a base64 key as `wg genkey` prints")
        try:
            return decode_key(raw)
        except ValueError as exc:
            raise self.error(name, str(exc)) from None

    def number(self, name: str, default: float | None, *, low: float, high: float) -> Any:
        raw = self.data.get(name, default)
        if raw is None:
            return None
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not low <= raw <= high:
            raise self.error(name, f"must be a number from {low:g} to {high:g}", f"got {raw!r}")
        return raw

    def strings(self, name: str) -> tuple[str, ...]:
        raw = self.data.get(name, [])
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
            raise self.error(name, "must be a list of strings")
        return tuple(raw)


def _check_networks(fields: _Fields, name: str, values: Sequence[str], *, host: bool) -> None:
    for value in values:
        try:
            if host:
                ipaddress.ip_interface(value)
            else:
                ipaddress.ip_network(value, strict=False)
        except ValueError:
            what = "address/prefix like 10.99.0.1/24" if host else "network like 10.99.0.2/32"
            raise fields.error(name, f"{value!r} is not an IP {what}") from None


def _parse_endpoint(fields: _Fields, raw: object) -> Address | None:
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise fields.error("endpoint", "must be a string", "ip:port or [ipv6]:port")
    try:
        host, port = parse_host_port(raw)
    except ValueError as exc:
        raise fields.error("endpoint", str(exc), "ip:port or [ipv6]:port") from None
    if not is_ip(host):
        raise fields.error("endpoint", f"{host!r} is not an IP address", "no DNS names here")
    return host, port


def parse_spec(data: object, file: str = "<config>") -> TunnelSpec:
    """Build a :class:`TunnelSpec` from decoded JSON; raises :class:`ConfigError` (one line)."""
    top = _Fields(file, "", data)
    top.check_unknown(
        {
            "private_key",
            "listen_port",
            "interface",
            "address",
            "mtu",
            "rekey_after",
            "under_load",
            "peers",
        }
    )
    private_key = top.key_value("private_key", required=True)
    assert private_key is not None
    interface = top.data.get("interface")
    if not isinstance(interface, str) or not 0 < len(interface.encode()) < 16:
        raise top.error("interface", "must be an interface name of 1-15 bytes")
    addresses = top.strings("address")
    _check_networks(top, "address", addresses, host=True)
    peers = []
    raw_peers = top.data.get("peers", [])
    if not isinstance(raw_peers, list):
        raise top.error("peers", "must be a list of objects")
    for i, raw in enumerate(raw_peers):
        p = _Fields(file, f"peers[{i}]", raw)
        p.check_unknown(
            {"public_key", "preshared_key", "endpoint", "allowed_ips", "persistent_keepalive"}
        )
        public = p.key_value("public_key", required=True)
        assert public is not None
        allowed = p.strings("allowed_ips")
        _check_networks(p, "allowed_ips", allowed, host=False)
        peers.append(
            PeerSpec(
                public_key=public,
                allowed_ips=allowed,
                endpoint=_parse_endpoint(p, p.data.get("endpoint")),
                preshared_key=p.key_value("preshared_key", required=False),
                persistent_keepalive=p.number("persistent_keepalive", None, low=1, high=65535),
            )
        )
    if len({p.public_key for p in peers}) != len(peers):
        raise top.error("peers", "the same public key appears twice")
    rekey_after = top.number("rekey_after", None, low=0.5, high=3600)
    under_load = top.data.get("under_load", False)
    if not isinstance(under_load, bool):
        raise top.error("under_load", "must be true or false")
    return TunnelSpec(
        private_key=private_key,
        interface=interface,
        addresses=addresses,
        listen_port=int(top.number("listen_port", 0, low=0, high=65535)),
        mtu=int(top.number("mtu", DEFAULT_MTU, low=576, high=65535)),
        peers=tuple(peers),
        rekey_after=None if rekey_after is None else float(rekey_after),
        under_load=under_load,
    )


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
    tso_packets: int = 0
    """TCP super-packets read from TUN and cut into segments before encryption."""
    tso_segments: int = 0
    """Segments those super-packets were cut into."""
    tun_bad_offload: int = 0
    """Packets read from TUN with a virtio header this data path cannot honour (dropped)."""
    gro_segments: int = 0
    """Decrypted segments written to TUN merged into super-packets."""
    tun_early_reads: int = 0
    """TUN reads made right after writing received packets (see ``_on_udp_drained``)."""


def _routes_needed(spec: TunnelSpec) -> list[str]:
    """The peers' allowed IPs that the interface's own prefixes do not already route."""
    connected = [ipaddress.ip_interface(a).network for a in spec.addresses]
    needed = []
    for peer in spec.peers:
        for prefix in peer.allowed_ips:
            net = ipaddress.ip_network(prefix, strict=False)
            covered = any(
                net.version == c.version
                and int(c.network_address) <= int(net.network_address)
                and int(net.broadcast_address) <= int(c.broadcast_address)
                for c in connected
            )
            if not covered:
                needed.append(str(net))
    return needed


def _short(key: bytes) -> str:
    return encode_key(key)[:8]


def relay_source(peer: Address) -> bytes:
    """How a datagram relayed from ``peer`` names its path for :meth:`WgTunnel.receive_datagram`
    (the cookie logic keys on it): the same for every way relayed data reaches the tunnel."""
    return b"relay " + format_address(peer).encode()


Sender = Callable[[list[bytes]], object]
"""Sends a batch of WireGuard datagrams (in order) to a peer over a path that is not plain UDP
(a TURN relay): one call per flush, so the path can batch too."""


class WgTunnel:
    """A WireGuard device wired to a TUN device and one UDP endpoint per address family.

    Build it from opened parts (``WgTunnel(device, tun, endpoints)``), as the daemon does, or
    with :meth:`open` from a :class:`TunnelSpec`; then add peers with :meth:`add_peer` (a peer
    added to ``device`` directly has no endpoint until it learns one). The tunnel installs its
    WireGuard handler and ``on_drained`` callback on the endpoints, and :meth:`run` runs their
    receive loops. It closes the TUN device and the endpoints when closed (or leaving the
    ``with`` block). Time is trio's clock, so a ``MockClock`` drives the protocol timers too.

    ``mss``: clamp the MSS option of TCP SYNs to ``(ipv4, ipv6)`` values (see
    :func:`p2ptun.node.mss.mss_for_mtu`); None leaves packets alone. ``learn_endpoints``:
    take a peer's path from its first authenticated datagram when it has none (off in the
    daemon, where ICE decides the path). ``after_drained`` is called at the end of every UDP
    batch, after the tunnel's own flush: the daemon flushes its ICE and TURN work there.
    """

    def __init__(
        self,
        device: Device,
        tun: TunDevice,
        endpoints: Sequence[UdpEndpoint],
        *,
        batch: int = DEFAULT_BATCH,
        mss: tuple[int, int] | None = None,
        learn_endpoints: bool = True,
        after_drained: Callable[[], None] | None = None,
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
        self.after_drained = after_drained
        self._by_family = {ep.family: ep for ep in self.endpoints}
        self._peer_endpoints: dict[Peer, Address | None] = {}
        self._senders: dict[Peer, Sender] = {}
        self._vnet = tun.vnet_hdr
        self.tun_offload = tun.enable_offload() if tun.vnet_hdr else 0
        """The TUNSETOFFLOAD flags in force (0: packets come one at a time)."""
        head = VNET_HDR_LEN if self._vnet else 0
        self._tun_views = [_lazy_buffer(head + MAX_PACKET) for _ in range(batch)]
        self._tun_lengths = [0] * batch
        self._seg_buffer = bytearray(2 * MAX_PACKET) if self.tun_offload else bytearray()
        self._seg_lengths: list[int] = []
        self._coalescer = TcpCoalescer()
        self._touched: dict[Peer, None] = {}  # insertion-ordered set
        self._initiation_unsent: set[Peer] = set()
        self._wrote_tun = False
        self._rx_now: float | None = None
        self._timer_scope: trio.CancelScope | None = None
        for ep in self.endpoints:
            ep.set_handler(PacketKind.WIREGUARD, self._on_datagram)
            ep.on_drained = self._on_udp_drained

    # -- construction and lifetime -------------------------------------------------------------

    @classmethod
    def open(cls, spec: TunnelSpec, *, batch: int = DEFAULT_BATCH) -> WgTunnel:
        """Create the TUN interface, configure it, bind UDP, and add the peers of ``spec``.

        Blocking (netlink, socket setup): call it before the trio loop or from a worker thread.
        Routes are added for allowed IPs outside the interface's own prefixes. Raises
        :class:`RuntimeFailure` with one line; nothing is left open on failure.
        """
        from p2ptun.net import netlink

        device = Device(
            spec.private_key,
            rng=os.urandom,
            wall_clock=time.time,
            timers=spec.timers(),
            mtu=spec.mtu,
        )
        device.under_load = spec.under_load
        tun = TunDevice.open(spec.interface)
        endpoints: list[UdpEndpoint] = []
        try:
            netlink.configure_interface(spec.interface, spec.addresses, spec.mtu)
            for prefix in _routes_needed(spec):
                netlink.add_route(spec.interface, prefix)
            endpoints = open_endpoints(spec.listen_port, batch=batch)
            tunnel = cls(device, tun, endpoints, batch=batch)
        except BaseException:
            for ep in endpoints:
                ep.close()
            tun.close()
            raise
        for peer_spec in spec.peers:
            tunnel.add_peer(peer_spec)
        return tunnel

    def add_peer(self, spec: PeerSpec) -> Peer:
        """Add a peer to the device and give it its endpoint."""
        peer = self.device.add_peer(
            spec.public_key,
            preshared_key=spec.preshared_key,
            allowed_ips=spec.allowed_ips,
            persistent_keepalive=spec.persistent_keepalive,
        )
        self._peer_endpoints[peer] = spec.endpoint
        self.peer_stats.setdefault(peer, PeerStats())
        return peer

    def _stats(self, peer: Peer) -> PeerStats:
        stats = self.peer_stats.get(peer)
        if stats is None:
            stats = self.peer_stats[peer] = PeerStats()
        return stats

    def set_endpoint(self, peer: Peer, endpoint: Address | None) -> None:
        """Send ``peer``'s datagrams to ``endpoint`` over UDP from now on (ICE path switch,
        roaming); replaces a sender set with :meth:`set_sender`."""
        self._senders.pop(peer, None)
        self._peer_endpoints[peer] = endpoint
        if endpoint is not None:
            self._path_set(peer)

    def _path_set(self, peer: Peer) -> None:
        """An initiation that never left (no path yet) does not count towards the one-per-
        REKEY_TIMEOUT limit: now that there is a path, the next ``initiate_handshake`` goes
        out at once instead of the handshake waiting up to 5 s for the retransmission."""
        if peer in self._initiation_unsent:
            self._initiation_unsent.discard(peer)
            peer.handshake.last_sent = None

    def set_sender(self, peer: Peer, sender: Sender | None, endpoint: Address | None) -> None:
        """Send ``peer``'s datagrams with ``sender`` from now on (a relayed path), or drop them
        when None; ``endpoint`` is what :meth:`status` shows as the peer's endpoint."""
        if sender is None:
            self._senders.pop(peer, None)
        else:
            self._senders[peer] = sender
            self._path_set(peer)
        self._peer_endpoints[peer] = endpoint

    def endpoint(self, peer: Peer) -> Address | None:
        return self._peer_endpoints.get(peer)

    def remove_peer(self, peer: Peer) -> None:
        """Forget ``peer`` (its keys, routes in the device, path)."""
        self.device.remove_peer(peer)
        self._peer_endpoints.pop(peer, None)
        self._senders.pop(peer, None)
        self.peer_stats.pop(peer, None)
        self._touched.pop(peer, None)
        self._initiation_unsent.discard(peer)

    def flush(self, peer: Peer | None = None) -> None:
        """Send what ``peer`` (or every touched peer) queued, e.g. after calling into the
        device from outside the data path (:meth:`Peer.send_keepalive`)."""
        if peer is not None:
            self._touched[peer] = None
        self._rx_now = None
        self._flush_touched()

    def close(self) -> None:
        """Close the TUN device (removing the interface) and the UDP endpoints. Idempotent."""
        self.tun.close()
        for ep in self.endpoints:
            ep.close()

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
            for ep in self.endpoints:
                nursery.start_soon(ep.receive_loop)
            nursery.start_soon(self._tun_loop)
            nursery.start_soon(self._timer_loop)
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
        """One TUN read behind a virtio header: complete its checksum or cut it into
        segments, then hand the packet(s) to the device."""
        flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = VNET_HDR.unpack_from(view)
        packet = view[VNET_HDR_LEN:length]
        device = self.device
        touched = self._touched
        if gso_type == VIRTIO_NET_HDR_GSO_NONE:
            if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM and not complete_checksum(
                packet, csum_start, csum_offset
            ):
                self.counters.tun_bad_offload += 1
                return
            mss = self.mss
            if mss is not None and _maybe_syn(packet):
                self._clamp(packet, len(packet), mss)
            peer = device.send_packet(packet, now)
            if peer is not None:
                touched[peer] = None
            return
        seg_lengths = self._seg_lengths
        count = segment_tcp(packet, gso_size, self._seg_buffer, seg_lengths)
        if count == 0:
            self.counters.tun_bad_offload += 1
            return
        self.counters.tso_packets += 1
        self.counters.tso_segments += count
        segs = memoryview(self._seg_buffer)
        # Every segment has the super-packet's addresses: route once.
        peer = device.route(segs[: seg_lengths[0]])
        if peer is None:
            device.counters.no_route += count
            return
        peer.send_packets(segs, seg_lengths, count, now)
        touched[peer] = None

    def _clamp(self, view: memoryview, length: int, mss: tuple[int, int]) -> None:
        if clamp_mss(view, length, mss[0], mss[1]):
            self.counters.mss_clamped += 1

    def _on_datagram(self, data: memoryview, addr: Address) -> None:
        """UDP handler for one WireGuard datagram (``data`` is valid until the batch ends)."""
        now = self._rx_now
        if now is None:
            now = self._rx_now = trio.current_time()
        peer = self.device.receive_datagram(data, now, addr)
        if peer is not None:
            self._touched[peer] = None
            if self.learn_endpoints and self._peer_endpoints.get(peer) is None:
                log.info(
                    "endpoint learned", peer=_short(peer.public_key), endpoint=format_address(addr)
                )
                self._peer_endpoints[peer] = addr

    def receive_datagram(self, data: bytes | bytearray | memoryview, source: bytes) -> None:
        """A WireGuard datagram that did not come straight from the UDP socket (a TURN relay
        unwrapped it); ``source`` names that path for the cookie logic. The caller flushes
        (:meth:`flush`) or returns into a UDP batch, which does; either ends the batch's
        shared ``now``."""
        now = self._rx_now
        if now is None:
            now = self._rx_now = trio.current_time()
        peer = self.device.receive_datagram(data, now, source)
        if peer is not None:
            self._touched[peer] = None

    def _on_udp_drained(self) -> None:
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
                self._send(reply, source)
            else:
                self.counters.replies_dropped += 1
        if self.after_drained is not None:
            self.after_drained()

    async def _timer_loop(self) -> None:
        device = self.device
        while True:
            wake = device.next_wakeup()
            with trio.move_on_at(math.inf if wake is None else wake) as scope:
                self._timer_scope = scope
                await trio.sleep_forever()
            self._timer_scope = None
            self.counters.timer_runs += 1
            for peer in device.handle_timeout(trio.current_time()):
                self._touched[peer] = None
            self._flush_touched()

    # -- output --------------------------------------------------------------------------------

    def _flush_touched(self) -> None:
        """Send what the touched peers queued, write their packets to TUN, log their events."""
        touched = self._touched
        if not touched:
            return
        scope = self._timer_scope
        for peer in touched:
            datagrams = peer.pop_datagrams()
            if datagrams:
                sender = self._senders.get(peer)
                endpoint = self._peer_endpoints.get(peer)
                if sender is not None:
                    sender(datagrams)
                elif endpoint is None:
                    self._stats(peer).datagrams_without_endpoint += len(datagrams)
                    if any(d[0] == _INITIATION for d in datagrams):
                        self._initiation_unsent.add(peer)
                else:
                    self._send_batch(datagrams, endpoint)
            packets = peer.pop_packets()
            if packets:
                self._write_packets(packets)
            for event in peer.pop_events():
                self._on_event(peer, event)
            if scope is not None:
                wake = peer.next_wakeup()
                if wake is not None and wake < scope.deadline:
                    scope.deadline = wake
        touched.clear()

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

    def _send_batch(self, datagrams: list[bytes], addr: Address) -> None:
        family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        ep = self._by_family.get(family)
        if ep is None:
            self.counters.tx_no_socket += len(datagrams)
        else:
            ep.send_batch(datagrams, addr)

    def _send(self, datagram: bytes, addr: Address) -> None:
        family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        ep = self._by_family.get(family)
        if ep is None:
            self.counters.tx_no_socket += 1
        else:
            ep.send(datagram, addr)

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


# -- running as a process ----------------------------------------------------------------------


def write_status(tunnel: WgTunnel, path: Path) -> None:
    """Write :meth:`WgTunnel.status` to ``path`` atomically (a reader never sees half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(tunnel.status(), indent=1) + "\n")
    os.replace(tmp, path)


async def serve(spec: TunnelSpec, *, status_file: Path | None = None) -> None:
    """Open the tunnel of ``spec`` and run it until SIGTERM or SIGINT."""
    tunnel = WgTunnel.open(spec)
    with tunnel:
        try:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGUSR1) as sigs:
                async with trio.open_nursery() as nursery:
                    await nursery.start(tunnel.run)
                    log.info(
                        "tunnel up",
                        interface=tunnel.tun.name,
                        port=tunnel.listen_port,
                        peers=len(spec.peers),
                        rekey_after=tunnel.device.timers.rekey_after_time,
                    )
                    async for signum in sigs:
                        if signum == signal.SIGUSR1:
                            if status_file is not None:
                                write_status(tunnel, status_file)
                            continue
                        log.info("stopping", signal=signal.Signals(signum).name)
                        nursery.cancel_scope.cancel()
                        break
        finally:
            if status_file is not None:
                write_status(tunnel, status_file)


def _read_key_file(path: str, what: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise UsageError(f"cannot read {what} file {path}: {exc.strerror}") from None


def _spec_from_args(args: argparse.Namespace) -> TunnelSpec:
    if args.config is not None:
        if args.private_key_file or args.peer or args.interface:
            raise UsageError("--config cannot be combined with key, interface or peer options")
        try:
            text = Path(args.config).read_text()
        except OSError as exc:
            raise UsageError(f"cannot read config file {args.config}: {exc.strerror}") from None
        try:
            decoded = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                args.config, None, f"not valid JSON: {exc.msg} at line {exc.lineno}"
            ) from None
        return parse_spec(decoded, args.config)
    if not args.private_key_file or not args.interface:
        raise UsageError("give --config FILE, or at least --private-key-file and --interface")
    data: dict[str, Any] = {
        "private_key": _read_key_file(args.private_key_file, "private key"),
        "interface": args.interface,
        "address": args.address,
        "listen_port": args.listen_port,
        "mtu": args.mtu,
        "rekey_after": args.rekey_after,
        "under_load": args.under_load,
        "peers": [],
    }
    if args.peer:
        peer: dict[str, Any] = {"public_key": args.peer, "allowed_ips": args.allowed_ips}
        if args.endpoint:
            peer["endpoint"] = args.endpoint
        if args.preshared_key_file:
            peer["preshared_key"] = _read_key_file(args.preshared_key_file, "preshared key")
        if args.persistent_keepalive:
            peer["persistent_keepalive"] = args.persistent_keepalive
        data["peers"].append(peer)
    elif args.endpoint or args.allowed_ips or args.preshared_key_file:
        raise UsageError("--endpoint, --allowed-ips and --preshared-key-file need --peer")
    return parse_spec(data, "<command line>")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m p2ptun.node.wgtunnel",
        description="Run one WireGuard tunnel (TUN + UDP) with fixed peer endpoints.",
    )
    parser.add_argument("--config", metavar="FILE", help="JSON config (see the module doc)")
    parser.add_argument("--private-key-file", metavar="FILE")
    parser.add_argument("--interface", metavar="NAME")
    parser.add_argument("--address", action="append", default=[], metavar="ADDR/LEN")
    parser.add_argument("--listen-port", type=int, default=0, metavar="PORT")
    parser.add_argument("--mtu", type=int, default=DEFAULT_MTU)
    parser.add_argument("--peer", metavar="PUBKEY", help="the peer's base64 public key")
    parser.add_argument("--preshared-key-file", metavar="FILE")
    parser.add_argument("--endpoint", metavar="IP:PORT")
    parser.add_argument(
        "--allowed-ips",
        action="extend",
        default=[],
        metavar="NET[,NET...]",
        type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
    )
    parser.add_argument("--persistent-keepalive", type=float, metavar="SECONDS")
    parser.add_argument(
        "--rekey-after",
        type=float,
        metavar="SECONDS",
        help="shorten all WireGuard timers so that REKEY_AFTER_TIME is this (tests)",
    )
    parser.add_argument(
        "--under-load",
        action="store_true",
        help="demand a cookie (MAC2) from every handshake message (tests)",
    )
    parser.add_argument("--status-file", type=Path, metavar="FILE")
    parser.add_argument("--log-level", default="info", choices=sorted(logging_setup.LEVELS))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m p2ptun.node.wgtunnel``; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging_setup.setup(args.log_level)
    try:
        spec = _spec_from_args(args)
        trio.run(lambda: serve(spec, status_file=args.status_file))
    except P2ptunError as exc:
        print(f"wgtunnel: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())

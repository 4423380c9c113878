"""The local WireGuard interface: static key, peers, index table, demultiplexing (§5.4, §2).

:class:`Device` is sans-I/O like :class:`~p2ptun.wireguard.peer.Peer`. It receives every
WireGuard datagram (:meth:`Device.receive_datagram`) and hands it to the peer it belongs to:

* type 1 (initiation): MAC1 is checked, then, under load (:mod:`p2ptun.wireguard.load`),
  MAC2 (a cookie reply goes back to the source otherwise) and the source's rate limit; the
  Noise message is decrypted with our static key, which names the peer;
* types 2, 3, 4: the receiver index names one of our handshakes or keypairs, hence the peer.

Outgoing plaintext is routed to a peer by cryptokey routing (:meth:`Device.send_packet`).
Randomness (``rng``) and the wall clock for TAI64N timestamps (``wall_clock``) are injected;
``now`` arguments are monotonic seconds.

The device and its peers share the index table (:mod:`.index`) and the rest of
:class:`~p2ptun.wireguard.shared.Shared`; a peer calls back into the device only through the
demultiplexer it is given there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from p2ptun.noise import KEY_LEN, NoiseError, Rng, dh_public
from p2ptun.wireguard.cookie import CookieChecker, Source
from p2ptun.wireguard.errors import WireGuardDecodeError
from p2ptun.wireguard.events import Counters
from p2ptun.wireguard.handshake import consume_initiation
from p2ptun.wireguard.index import IndexTable
from p2ptun.wireguard.load import HandshakeLoad, HandshakeRateLimiter
from p2ptun.wireguard.messages import (
    TRANSPORT_HEADER,
    TRANSPORT_MIN_LEN,
    CookieReply,
    Initiation,
    Response,
    decode,
)
from p2ptun.wireguard.peer import Peer
from p2ptun.wireguard.routing import AllowedIPs, Network
from p2ptun.wireguard.shared import Shared
from p2ptun.wireguard.timers import TimerConfig


class Device:
    """A WireGuard interface: our static key pair and the peers we talk to.

    ``mtu`` caps the padding of plaintext (0 = pad to 16 without a cap).

    Under load (§5.3) handshake messages must prove their source address with a cookie, and
    each source may then have only so many processed a second (:mod:`p2ptun.wireguard.load`).
    The device is under load when the caller reports a backlog (:meth:`report_backlog`, the
    handshake messages in a drained receive batch), when handshake messages arrive faster
    than :data:`~p2ptun.wireguard.load.UNDER_LOAD_RATE` a second (counted here, on the
    handshake path only), or always while :attr:`under_load` is set (tests). A handshake
    message whose source is not an address (``bytes``: a relayed path, which a cookie reply
    cannot reach) needs no MAC2, but its path is rate-limited like a source.
    """

    def __init__(
        self,
        private_key: bytes,
        *,
        rng: Rng,
        wall_clock: Callable[[], float],
        timers: TimerConfig | None = None,
        mtu: int = 0,
        counters: Counters | None = None,
    ) -> None:
        if len(private_key) != KEY_LEN:
            raise ValueError("private key must be 32 bytes")
        self.private_key = private_key
        self.public_key = dh_public(private_key)
        self.rng = rng
        self.wall_clock = wall_clock
        self.timers = timers if timers is not None else TimerConfig()
        self.counters = counters if counters is not None else Counters()
        self.under_load = False
        """Demand cookies whatever the measured load (tests, the standalone tunnel tool)."""
        self.load = HandshakeLoad()
        self.rate_limiter = HandshakeRateLimiter()
        self.cookie_checker = CookieChecker(self.public_key, rng)
        self.peers: dict[bytes, Peer] = {}
        self.allowed_ips: AllowedIPs[Peer] = AllowedIPs()
        self.indices: IndexTable[Peer] = IndexTable(rng)
        """Our receiver indices (§5.4.1), allocated by the peers, looked up here."""
        self.shared: Shared[Peer] = Shared(
            private_key,
            rng=rng,
            wall_clock=wall_clock,
            counters=self.counters,
            indices=self.indices,
            allowed_ips=self.allowed_ips,
            mtu=mtu,
            demux=self.receive_datagram,
        )
        """What every peer of this device is given (:mod:`p2ptun.wireguard.shared`)."""
        self._replies: list[tuple[Source, bytes]] = []

    @property
    def mtu(self) -> int:
        """The MTU that caps the padding of plaintext (0 = pad to 16 without a cap); may be
        changed at run time."""
        return self.shared.mtu

    @mtu.setter
    def mtu(self, mtu: int) -> None:
        self.shared.mtu = mtu

    def jitter(self) -> float:
        """A uniform fraction in [0, 1] for timer jitter (see :meth:`Shared.jitter
        <p2ptun.wireguard.shared.Shared.jitter>`)."""
        return self.shared.jitter()

    # -- configuration --------------------------------------------------------------------------

    def add_peer(
        self,
        public_key: bytes,
        *,
        preshared_key: bytes | None = None,
        allowed_ips: Iterable[str | Network] = (),
        persistent_keepalive: float | None = None,
        timers: TimerConfig | None = None,
    ) -> Peer:
        """Add (or return the existing) peer with ``public_key`` and route ``allowed_ips`` to it."""
        if public_key == self.public_key:
            raise ValueError("a peer cannot have the device's own public key")
        peer = self.peers.get(public_key)
        if peer is None:
            peer = Peer(
                self.shared,
                public_key,
                preshared_key=preshared_key,
                persistent_keepalive=persistent_keepalive,
                timers=timers if timers is not None else self.timers,
            )
            self.peers[public_key] = peer
        for net in allowed_ips:
            self.allowed_ips.insert(net, peer)
        return peer

    def remove_peer(self, peer: Peer) -> None:
        """Forget ``peer``: its routes, keys and indices."""
        peer.zero_key_material()
        self.allowed_ips.remove_value(peer)
        self.peers.pop(peer.public_key, None)
        self.indices.free_peer(peer)

    # -- data path ------------------------------------------------------------------------------

    def route(self, packet: bytes | bytearray | memoryview) -> Peer | None:
        """The peer whose allowed IPs contain ``packet``'s destination address."""
        return self.allowed_ips.lookup_destination(packet)

    def send_packet(self, packet: bytes | bytearray | memoryview, now: float) -> Peer | None:
        """Route and send one plaintext IP packet; returns the peer (drain its datagrams).

        ``packet`` may be a view into a buffer the caller reuses: it is copied if it has to
        wait for a handshake.
        """
        peer = self.allowed_ips.lookup_destination(packet)
        if peer is None:
            self.counters.no_route += 1
            return None
        peer.send_packet(packet, now)
        return peer

    def receive_datagram(
        self, data: bytes | bytearray | memoryview, now: float, source: Source = None
    ) -> Peer | None:
        """Process one WireGuard datagram from ``source``.

        ``data`` may be a view into a receive buffer the caller reuses once this returns.

        Returns the peer it authenticated as (the I/O layer may take ``source`` as that
        peer's current path), or None if it was dropped (and counted) or needed no peer.
        Results are in the peer's outboxes; cookie replies in :meth:`pop_replies`.
        """
        size = len(data)
        if size >= TRANSPORT_MIN_LEN and data[0] == 4:
            word, receiver, counter = TRANSPORT_HEADER.unpack_from(data)
            if word != 4 or size > 65535:
                self.counters.malformed += 1
                return None
            entry = self.indices.lookup(receiver)
            if entry is None:
                self.counters.unknown_index += 1
                return None
            peer, kp = entry
            if kp is None:
                self.counters.unknown_index += 1
                return None
            return peer if peer.receive_transport(kp, data, counter, now) else None
        data = bytes(data)  # handshake messages are rare; the MAC and cookie code wants bytes
        self.counters.handshake_messages += 1
        self.load.note_handshake(now)
        try:
            msg = decode(data)
        except WireGuardDecodeError:
            self.counters.malformed += 1
            return None
        if isinstance(msg, Initiation):
            return self._receive_initiation(msg, data, now, source)
        if isinstance(msg, Response):
            return self._receive_response(msg, data, now, source)
        if isinstance(msg, CookieReply):
            self._receive_cookie_reply(msg, now)
            return None
        # A transport header that failed the fast path's length test.
        self.counters.malformed += 1  # pragma: no cover - decode() rejects it first
        return None  # pragma: no cover

    def report_backlog(self, handshakes: int, now: float) -> None:
        """The I/O layer drained a receive batch holding ``handshakes`` handshake messages
        (the growth of ``counters.handshake_messages`` over the batch): a deep one puts the
        device under load (:class:`~p2ptun.wireguard.load.HandshakeLoad`)."""
        self.load.report_backlog(handshakes, now)

    def is_under_load(self, now: float) -> bool:
        """Does a handshake message need a cookie now?"""
        return self.under_load or self.load.under_load(now)

    def _check_macs(self, data: bytes, sender: int, now: float, source: Source) -> bool:
        checker = self.cookie_checker
        if not checker.check_mac1(data):
            self.counters.bad_mac1 += 1
            return False
        if not self.is_under_load(now):
            return True
        if isinstance(source, tuple) and not checker.check_mac2(data, source, now):
            reply = checker.create_reply(data, sender, source, now)
            self._replies.append((source, reply.encode()))
            self.counters.cookie_replies_sent += 1
            return False
        if not self.rate_limiter.allow(source, now):
            self.counters.handshake_rate_limited += 1
            return False
        return True

    def _receive_initiation(
        self, msg: Initiation, data: bytes, now: float, source: Source
    ) -> Peer | None:
        if not self._check_macs(data, msg.sender, now, source):
            return None
        try:
            state, remote_static, timestamp = consume_initiation(self.private_key, msg, self.rng)
        except NoiseError:
            self.counters.handshake_auth_failed += 1
            return None
        peer = self.peers.get(remote_static)
        if peer is None:
            self.counters.unknown_peer += 1
            return None
        return peer if peer.accept_initiation(state, msg.sender, timestamp, now) else None

    def _receive_response(
        self, msg: Response, data: bytes, now: float, source: Source
    ) -> Peer | None:
        if not self._check_macs(data, msg.sender, now, source):
            return None
        entry = self.indices.lookup(msg.receiver)
        if entry is None or entry[1] is not None:
            self.counters.unknown_index += 1
            return None
        peer = entry[0]
        return peer if peer.accept_response(msg, now) else None

    def _receive_cookie_reply(self, msg: CookieReply, now: float) -> None:
        entry = self.indices.lookup(msg.receiver)
        if entry is None:
            self.counters.unknown_index += 1
            return
        if entry[0].cookie.consume_reply(msg, now):
            self.counters.cookie_replies_received += 1
        else:
            self.counters.bad_cookie_reply += 1

    def pop_replies(self) -> list[tuple[Source, bytes]]:
        """Cookie replies to send back to the source of a handshake message (§5.4.7)."""
        out, self._replies = self._replies, []
        return out

    # -- time -----------------------------------------------------------------------------------

    def next_wakeup(self) -> float | None:
        """The earliest timer deadline over all peers, or None."""
        best: float | None = None
        for peer in self.peers.values():
            t = peer.next_wakeup()
            if t is not None and (best is None or t < best):
                best = t
        return best

    def handle_timeout(self, now: float) -> list[Peer]:
        """Run due timers on every peer; returns the peers that had one due."""
        due = []
        for peer in self.peers.values():
            t = peer.next_wakeup()
            if t is not None and t <= now:
                peer.handle_timeout(now)
                due.append(peer)
        return due

"""One WireGuard peer: handshake, keypair rotation, timers, sans-I/O (whitepaper §5–6).

A :class:`Peer` belongs to a :class:`~p2ptun.wireguard.device.Device`, which owns the static key
and the demultiplexing of received datagrams and gives each of its peers the state they share
(:class:`~p2ptun.wireguard.shared.Shared`: the key, the index table, counters, buffers). The
peer takes

* plaintext packets to send (:meth:`Peer.send_packet`),
* datagrams from the network (:meth:`Peer.receive_datagram`, or via the device),
* the passing of time (:meth:`Peer.handle_timeout`, asked for by :meth:`Peer.next_wakeup`),

and leaves its results in three outboxes the I/O layer drains: datagrams to send to the peer's
current path (:meth:`Peer.pop_datagrams`), decrypted packets for the TUN device
(:meth:`Peer.pop_packets`), and :mod:`events <p2ptun.wireguard.events>` (:meth:`Peer.pop_events`).

Keypairs rotate as §5.4.5/§6 and WireGuard's implementations do: ``previous``, ``current`` and
``next``. The initiator uses a new keypair as soon as it has the response; the responder keeps
it as ``next`` until the first transport message from the initiator proves the initiator has
it, and only then makes it ``current``.

The timers are those of §6.1–6.5, each a deadline checked in :meth:`handle_timeout`:

* retransmit handshake — ``REKEY_TIMEOUT`` + jitter after an initiation, up to
  ``REKEY_ATTEMPT_TIME``;
* send keepalive — ``KEEPALIVE_TIMEOUT`` after data was received and nothing sent back;
* new handshake — ``KEEPALIVE_TIMEOUT + REKEY_TIMEOUT`` (+ jitter) after data was sent and
  nothing received;
* zero key material — ``REJECT_AFTER_TIME × 3`` after the last session was derived;
* persistent keepalive — the configured interval after the last authenticated packet sent
  or received.

Rekeying on age/count happens on the send path (``REKEY_AFTER_TIME`` for the initiator of the
current keypair, ``REKEY_AFTER_MESSAGES`` for either side) and on the receive path (the
initiator of a keypair older than ``REJECT_AFTER_TIME − KEEPALIVE_TIMEOUT − REKEY_TIMEOUT``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag

from p2ptun.log import get_logger
from p2ptun.noise import KEY_LEN, TAG_LEN, HandshakeState, NoiseError
from p2ptun.wireguard import tai64n
from p2ptun.wireguard.cookie import CookieGenerator, Source
from p2ptun.wireguard.events import (
    Event,
    HandshakeCompleted,
    HandshakeFailed,
    PathQuiet,
    SessionExpired,
)
from p2ptun.wireguard.handshake import (
    HandshakeStage,
    consume_response,
    create_initiation,
    create_response,
    new_state,
    session_keys,
)
from p2ptun.wireguard.messages import (
    INITIATION_LEN,
    RESPONSE_LEN,
    TRANSPORT_HEADER,
    TRANSPORT_HEADER_LEN,
    MessageType,
    Response,
)
from p2ptun.wireguard.shared import Shared
from p2ptun.wireguard.tai64n import TAI64N_LEN
from p2ptun.wireguard.timers import TimerConfig
from p2ptun.wireguard.transport import (
    NONCE_COUNTER,
    TRANSPORT_OVERHEAD,
    Keypair,
    inner_length,
    padded_length,
    seal,
)

_TRANSPORT = int(MessageType.TRANSPORT)

log = get_logger("wireguard")


@dataclass
class HandshakeRecord:
    """Per-peer handshake memory (whitepaper §5.4).

    ``local_index`` is the index of the initiation in flight (``INITIATION_CREATED``); once a
    session is derived the index belongs to the keypair. ``greatest_timestamp`` and
    ``last_initiation_consumed`` survive sessions: they reject replayed initiations (§5.1).
    """

    stage: HandshakeStage = HandshakeStage.ZEROED
    noise: HandshakeState | None = None
    local_index: int | None = None
    greatest_timestamp: bytes = bytes(TAI64N_LEN)
    last_initiation_consumed: float | None = None
    last_sent: float | None = None


class Peer:
    """A remote WireGuard peer, identified by its static public key. Made by ``Device.add_peer``
    with the device's :class:`~p2ptun.wireguard.shared.Shared`.

    ``persistent_keepalive`` is an interval in seconds (None = off). ``timers`` are the
    peer's :class:`~p2ptun.wireguard.timers.TimerConfig` (the device's, unless overridden).
    """

    def __init__(
        self,
        shared: Shared[Peer],
        public_key: bytes,
        *,
        preshared_key: bytes | None = None,
        persistent_keepalive: float | None = None,
        timers: TimerConfig | None = None,
    ) -> None:
        if len(public_key) != KEY_LEN:
            raise ValueError("public key must be 32 bytes")
        if preshared_key is not None and len(preshared_key) != KEY_LEN:
            raise ValueError("preshared key must be 32 bytes")
        self.shared = shared
        self.public_key = public_key
        self.preshared_key = preshared_key
        self.persistent_keepalive = persistent_keepalive
        self.timers = timers if timers is not None else TimerConfig()
        self.cookie = CookieGenerator(public_key)
        self.handshake = HandshakeRecord()
        self.previous: Keypair | None = None
        self.current: Keypair | None = None
        self.next: Keypair | None = None
        self.staged: deque[bytes] = deque()
        self._datagrams: list[bytes] = []
        self._packets: list[bytes] = []
        self._events: list[Event] = []
        self.rx_bytes = 0
        self.tx_bytes = 0
        #: WireGuard messages received and sent for this peer (handshakes, data, keepalives).
        self.rx_packets = 0
        self.tx_packets = 0
        #: When a data packet (not a keepalive or handshake) last went either way (None:
        #: never): what an on-demand connection's idle timeout counts from.
        self.last_data: float | None = None
        self.last_handshake: float | None = None
        """Monotonic time of the last completed handshake (None before the first)."""
        # Timer deadlines (None = not pending) and their flags.
        self._retransmit_at: float | None = None
        self._send_keepalive_at: float | None = None
        self._need_another_keepalive = False
        self._new_handshake_at: float | None = None
        self._zero_keys_at: float | None = None
        self._persistent_keepalive_at: float | None = None
        self.path_silence: float | None = None
        """Report :class:`PathQuiet` after this many seconds without an authenticated packet
        from the peer while we sent data, or after data stopped arriving (None: never). The
        node sets it from the path's round-trip time; WireGuard itself waits
        ``KEEPALIVE_TIMEOUT + REKEY_TIMEOUT`` (15 s) before it reacts (§6.5)."""
        self._quiet_tx_at: float | None = None
        self._quiet_rx_at: float | None = None
        self._handshake_attempts = 0
        self._sent_last_minute_handshake = False

    def __repr__(self) -> str:
        return f"<Peer {self.public_key[:4].hex()}…>"

    # -- outboxes -------------------------------------------------------------------------------

    def pop_datagrams(self) -> list[bytes]:
        """Datagrams to send to this peer's current path, oldest first."""
        out, self._datagrams = self._datagrams, []
        return out

    def pop_packets(self) -> list[bytes]:
        """Decrypted IP packets (source address checked) to write to the TUN device."""
        out, self._packets = self._packets, []
        return out

    def pop_events(self) -> list[Event]:
        out, self._events = self._events, []
        return out

    # -- inputs ---------------------------------------------------------------------------------

    def receive_datagram(
        self, data: bytes | bytearray | memoryview, now: float, source: Source = None
    ) -> bool:
        """Feed a datagram from this peer's path; True if it authenticated as this peer.

        Handshake initiations are identified by the static key inside them, so the datagram
        goes through the device's demultiplexer; its results land on the peer it belongs to.
        """
        return self.shared.demux(data, now, source) is self

    def send_packet(self, packet: bytes | bytearray | memoryview, now: float) -> None:
        """Encrypt and send one plaintext IP packet (or stage it and start a handshake).

        ``packet`` may be a view into a reused buffer: a staged packet is copied.
        """
        kp = self.current
        if (
            kp is not None
            and not self.staged
            and kp.send_counter < self.timers.reject_after_messages
            and now - kp.created < self.timers.reject_after_time
        ):
            self._send_transport(kp, packet, now)
            self._keep_key_fresh_sending(kp, now)
            return
        self._stage(packet)
        self._flush_staged(now)

    def send_packets(
        self, packets: memoryview, lengths: Sequence[int], count: int, now: float
    ) -> None:
        """Encrypt and send ``count`` packets stored back to back in ``packets``.

        ``lengths[k]`` is the size of packet ``k``. The result is the same as calling
        :meth:`send_packet` for each in order; with a usable session the work that does not
        depend on the packet (key checks, the §6.5 timer hooks, counters) is done once for the
        run, and the §6.2 rekey check after it (so an initiation it starts follows the run
        instead of the packet that crossed the threshold). For the segments of one TCP
        super-packet (TSO), which all go to this peer.
        """
        kp = self.current
        timers = self.timers
        if (
            kp is None
            or self.staged
            or kp.send_counter + count > timers.reject_after_messages
            or now - kp.created >= timers.reject_after_time
        ):
            pos = 0
            for k in range(count):
                size = lengths[k]
                self.send_packet(packets[pos : pos + size], now)
                pos += size
            return
        shared = self.shared
        aead = kp.send_aead
        nonce = kp.send_nonce
        receiver = kp.remote_index
        out = shared.send_buffer
        out_view = shared.send_view
        scratch = shared.scratch
        mtu = shared.mtu
        append = self._datagrams.append
        encrypt_into = aead.encrypt_into
        pack_header = TRANSPORT_HEADER.pack_into
        pack_nonce = NONCE_COUNTER.pack_into
        counter = kp.send_counter
        sent = 0
        pos = 0
        for k in range(count):
            size = lengths[k]
            padded = (size + 15) & ~15
            if 0 < mtu < padded:
                padded = padded_length(size, mtu)
            packet = packets[pos : pos + size]
            if padded != size or not size:
                n = seal(aead, nonce, receiver, counter, packet, out, scratch, mtu)
            else:  # seal(), inlined for a full-sized segment: it needs no padding
                pack_header(out, 0, _TRANSPORT, receiver, counter)
                pack_nonce(nonce, 4, counter)
                n = TRANSPORT_HEADER_LEN + size + TAG_LEN
                encrypt_into(nonce, packet, None, out_view[TRANSPORT_HEADER_LEN:n])
            append(bytes(out_view[:n]))
            sent += n
            counter += 1
            pos += size
        kp.send_counter = counter
        self.tx_bytes += sent
        self.tx_packets += count
        self.last_data = now
        shared.counters.packets_sent += count
        # §6.5 timer hooks, as _send_transport() runs them for a data packet.
        self._send_keepalive_at = None
        if self.persistent_keepalive:
            self._persistent_keepalive_at = now + self.persistent_keepalive
        if self._new_handshake_at is None:
            self._new_handshake_at = now + timers.new_handshake_timeout + self._jitter()
        if self._quiet_tx_at is None and self.path_silence is not None:
            self._quiet_tx_at = now + self.path_silence
        self._keep_key_fresh_sending(kp, now)

    def send_keepalive(self, now: float) -> None:
        """Send an empty transport message (a keepalive, §6.5) unless packets are waiting."""
        if not self.staged:
            self._stage(b"")
        self._flush_staged(now)

    def initiate_handshake(self, now: float) -> None:
        """Start a handshake now (rate-limited to one per ``REKEY_TIMEOUT``, §6.4)."""
        self._send_initiation(now, retry=False)

    def next_wakeup(self) -> float | None:
        """The earliest pending timer deadline, or None."""
        best: float | None = None
        for t in (
            self._retransmit_at,
            self._send_keepalive_at,
            self._new_handshake_at,
            self._zero_keys_at,
            self._persistent_keepalive_at,
            self._quiet_tx_at,
            self._quiet_rx_at,
        ):
            if t is not None and (best is None or t < best):
                best = t
        return best

    def handle_timeout(self, now: float) -> None:
        """Run every timer whose deadline is at or before ``now`` (§6)."""
        t = self._retransmit_at
        if t is not None and t <= now:
            self._retransmit_at = None
            self._expired_retransmit_handshake(now)
        t = self._send_keepalive_at
        if t is not None and t <= now:
            self._send_keepalive_at = None
            self.send_keepalive(now)
            if self._need_another_keepalive:
                self._need_another_keepalive = False
                self._send_keepalive_at = now + self.timers.keepalive_timeout
        t = self._new_handshake_at
        if t is not None and t <= now:
            self._new_handshake_at = None
            log.debug("no reply to data, new handshake", peer=repr(self))
            self._send_initiation(now, retry=False)
        t = self._zero_keys_at
        if t is not None and t <= now:
            self._zero_keys_at = None
            self.zero_key_material()
            self._events.append(SessionExpired(now))
        t = self._persistent_keepalive_at
        if t is not None and t <= now:
            self._persistent_keepalive_at = None
            if self.persistent_keepalive:
                self.send_keepalive(now)
        t = self._quiet_tx_at
        if t is not None and t <= now:
            self._quiet_tx_at = self._quiet_rx_at = None
            self._events.append(PathQuiet(now, unanswered=True))
        t = self._quiet_rx_at
        if t is not None and t <= now:
            self._quiet_rx_at = None
            self._events.append(PathQuiet(now, unanswered=False))

    # -- state queries --------------------------------------------------------------------------

    def has_session(self, now: float) -> bool:
        """Can a packet be sent right now without a handshake?"""
        kp = self.current
        return (
            kp is not None
            and kp.send_counter < self.timers.reject_after_messages
            and now - kp.created < self.timers.reject_after_time
        )

    def zero_key_material(self) -> None:
        """Erase all keypairs and the handshake in flight; drop staged packets (§6.3)."""
        indices = self.shared.indices
        for kp in (self.previous, self.current, self.next):
            if kp is not None:
                indices.free(kp.local_index)
        self.previous = self.current = self.next = None
        self._clear_handshake()
        self.staged.clear()

    def forget_sessions(self) -> None:
        """The peer lost its session state (its daemon said goodbye, so its keys went with
        it): erase ours too, stop the timers that belong to them, and let the next initiation
        go at once. Otherwise we would keep sending on a keypair the peer no longer has and
        start a handshake only after KEEPALIVE_TIMEOUT + REKEY_TIMEOUT (15 s) of silence
        (§6.4)."""
        self.zero_key_material()
        self.handshake.last_sent = None
        self._handshake_attempts = 0
        self._retransmit_at = self._send_keepalive_at = self._new_handshake_at = None
        self._zero_keys_at = self._quiet_tx_at = self._quiet_rx_at = None
        self._need_another_keepalive = False

    # -- handshake ------------------------------------------------------------------------------

    def _clear_handshake(self) -> None:
        hs = self.handshake
        if hs.local_index is not None:
            self.shared.indices.free(hs.local_index)
            hs.local_index = None
        hs.stage = HandshakeStage.ZEROED
        hs.noise = None

    def _send_initiation(self, now: float, retry: bool) -> None:
        hs = self.handshake
        if not retry:
            if hs.last_sent is not None and now - hs.last_sent < self.timers.rekey_timeout:
                return
            self._handshake_attempts = 0
        hs.last_sent = now
        shared = self.shared
        self._clear_handshake()
        index = shared.indices.new(self)
        state = new_state(True, shared.private_key, shared.rng, self.public_key, self.preshared_key)
        timestamp = tai64n.encode(shared.wall_clock())
        _, raw = create_initiation(state, index, timestamp)
        self.cookie.add_macs(raw, now)
        hs.stage = HandshakeStage.INITIATION_CREATED
        hs.noise = state
        hs.local_index = index
        self._datagrams.append(bytes(raw))
        self.tx_bytes += len(raw)
        self.tx_packets += 1
        shared.counters.initiations_sent += 1
        self._timers_any_authenticated_packet_traversal(now)
        self._timers_any_authenticated_packet_sent()
        self._retransmit_at = now + self.timers.rekey_timeout + self._jitter()

    def _expired_retransmit_handshake(self, now: float) -> None:
        if self._handshake_attempts > self.timers.max_handshake_attempts:
            log.info("handshake did not complete, giving up", peer=repr(self))
            self._send_keepalive_at = None
            self.staged.clear()
            if self._zero_keys_at is None:
                self._zero_keys_at = now + self.timers.zero_keys_after
            self._events.append(HandshakeFailed(now))
            return
        self._handshake_attempts += 1
        self._send_initiation(now, retry=True)

    def accept_initiation(
        self, state: HandshakeState, sender: int, timestamp: bytes, now: float
    ) -> bool:
        """Responder: a decrypted initiation from this peer; reply if it is fresh (§5.4.3).

        Called by the device's demultiplexer once the initiation authenticated as this peer
        (MACs checked, Noise message decrypted); True if it was accepted and answered."""
        hs = self.handshake
        counters = self.shared.counters
        if not tai64n.is_newer(timestamp, hs.greatest_timestamp):
            counters.replayed_initiation += 1
            return False
        last = hs.last_initiation_consumed
        if last is not None and now - last < 1.0 / self.timers.initiations_per_second:
            counters.initiation_flood += 1
            return False
        hs.greatest_timestamp = timestamp
        hs.last_initiation_consumed = now
        self.rx_bytes += INITIATION_LEN
        self.rx_packets += 1
        self._timers_any_authenticated_packet_traversal(now)
        self._timers_any_authenticated_packet_received()
        # Our own initiation in flight, if any, is abandoned: the peer's wins.
        self._clear_handshake()
        indices = self.shared.indices
        index = indices.new(self)
        _, raw = create_response(state, index, sender, self.preshared_key)
        self.cookie.add_macs(raw, now)
        send_key, recv_key = session_keys(state)
        kp = Keypair(
            send_key,
            recv_key,
            local_index=index,
            remote_index=sender,
            created=now,
            is_initiator=False,
            reject_after_messages=self.timers.reject_after_messages,
        )
        indices.set(index, self, kp)
        # Responder rotation: the new keypair waits in `next`; `previous` is dropped.
        for old in (self.next, self.previous):
            if old is not None:
                indices.free(old.local_index)
        self.next = kp
        self.previous = None
        hs.last_sent = now
        self._datagrams.append(bytes(raw))
        self.tx_bytes += len(raw)
        self.tx_packets += 1
        counters.responses_sent += 1
        self._timers_session_derived(now)
        self._timers_any_authenticated_packet_traversal(now)
        self._timers_any_authenticated_packet_sent()
        return True

    def accept_response(self, msg: Response, now: float) -> bool:
        """Initiator: a response to our initiation in flight (§5.4.3, §5.4.5).

        Called by the device's demultiplexer for a response whose receiver index names this
        peer's handshake (MACs checked); True if it authenticated and completed it."""
        hs = self.handshake
        shared = self.shared
        if (
            hs.stage is not HandshakeStage.INITIATION_CREATED
            or hs.noise is None
            or hs.local_index != msg.receiver
        ):
            shared.counters.unexpected_response += 1
            return False
        try:
            state = consume_response(hs.noise, msg, self.preshared_key)
        except NoiseError:
            shared.counters.handshake_auth_failed += 1
            return False
        self.rx_bytes += RESPONSE_LEN
        self.rx_packets += 1
        self._timers_any_authenticated_packet_traversal(now)
        self._timers_any_authenticated_packet_received()
        send_key, recv_key = session_keys(state)
        index = hs.local_index
        hs.local_index = None  # now owned by the keypair
        hs.stage = HandshakeStage.ZEROED
        hs.noise = None
        kp = Keypair(
            send_key,
            recv_key,
            local_index=index,
            remote_index=msg.sender,
            created=now,
            is_initiator=True,
            reject_after_messages=self.timers.reject_after_messages,
        )
        indices = shared.indices
        indices.set(index, self, kp)
        # Initiator rotation (§5.4.5): the new keypair is current at once.
        if self.previous is not None:
            indices.free(self.previous.local_index)
        if self.next is not None:
            self.previous = self.next
            self.next = None
            if self.current is not None:
                indices.free(self.current.local_index)
        else:
            self.previous = self.current
        self.current = kp
        self._timers_session_derived(now)
        self._timers_handshake_complete(now, is_initiator=True)
        # Confirm the session to the responder: staged data, or else a keepalive.
        self.send_keepalive(now)
        return True

    # -- transport ------------------------------------------------------------------------------

    def _stage(self, packet: bytes | bytearray | memoryview) -> None:
        staged = self.staged
        if len(staged) >= self.timers.max_staged_packets:
            staged.popleft()
            self.shared.counters.staged_dropped += 1
        staged.append(bytes(packet))

    def _flush_staged(self, now: float) -> None:
        kp = self.current
        timers = self.timers
        staged = self.staged
        while staged:
            if (
                kp is None
                or kp.send_counter >= timers.reject_after_messages
                or now - kp.created >= timers.reject_after_time
            ):
                self._send_initiation(now, retry=False)
                return
            self._send_transport(kp, staged.popleft(), now)
        if kp is not None:
            self._keep_key_fresh_sending(kp, now)

    def _send_transport(
        self, kp: Keypair, packet: bytes | bytearray | memoryview, now: float
    ) -> None:
        shared = self.shared
        counter = kp.send_counter
        kp.send_counter = counter + 1
        out = shared.send_buffer
        size = seal(
            kp.send_aead,
            kp.send_nonce,
            kp.remote_index,
            counter,
            packet,
            out,
            shared.scratch,
            shared.mtu,
        )
        self._datagrams.append(bytes(memoryview(out)[:size]))
        self.tx_bytes += size
        self.tx_packets += 1
        # §6.5 timer hooks, as for any authenticated packet; data also arms "new handshake".
        self._send_keepalive_at = None
        if self.persistent_keepalive:
            self._persistent_keepalive_at = now + self.persistent_keepalive
        if packet:
            shared.counters.packets_sent += 1
            self.last_data = now
            if self._new_handshake_at is None:
                self._new_handshake_at = now + self.timers.new_handshake_timeout + self._jitter()
            if self._quiet_tx_at is None and self.path_silence is not None:
                self._quiet_tx_at = now + self.path_silence
        else:
            shared.counters.keepalives_sent += 1

    def receive_transport(
        self, kp: Keypair, message: bytes | bytearray | memoryview, counter: int, now: float
    ) -> bool:
        """A transport message for keypair ``kp`` of this peer; True if it authenticated.

        Called by the device's demultiplexer, which found ``kp`` by the message's receiver
        index and read its ``counter`` from the header. The hot path of receiving:
        :func:`~p2ptun.wireguard.transport.open_into` and the timer hooks are inlined (one
        Python call less each per packet).
        """
        shared = self.shared
        counters = shared.counters
        timers = self.timers
        age = now - kp.created
        if age >= timers.reject_after_time:
            counters.expired_keypair += 1
            return False
        replay = kp.replay
        if not replay.check(counter):
            counters.replayed_transport += 1
            return False
        size = len(message) - TRANSPORT_OVERHEAD
        nonce = kp.recv_nonce
        NONCE_COUNTER.pack_into(nonce, 4, counter)
        try:
            kp.recv_aead.decrypt_into(
                nonce, memoryview(message)[TRANSPORT_HEADER_LEN:], None, shared.recv_view[:size]
            )
        except InvalidTag:
            counters.transport_auth_failed += 1
            return False
        if not replay.accept(counter):  # pragma: no cover - check() above said it was new
            counters.replayed_transport += 1
            return False
        self.rx_bytes += len(message)
        self.rx_packets += 1
        if kp is self.next:
            # The initiator used the new session: confirm it (§5.4.5, responder side).
            if self.previous is not None:
                shared.indices.free(self.previous.local_index)
            self.previous = self.current
            self.current = kp
            self.next = None
            self._timers_handshake_complete(now, is_initiator=False)
            self._flush_staged(now)
        if not self._sent_last_minute_handshake:
            self._keep_key_fresh_receiving(now)
        # §6.5 hooks: any authenticated packet traversal, any authenticated packet received.
        if self.persistent_keepalive:
            self._persistent_keepalive_at = now + self.persistent_keepalive
        self._new_handshake_at = None
        self._quiet_tx_at = None
        if size == 0:
            counters.keepalives_received += 1
            return True
        silence = self.path_silence
        if silence is not None:
            self._quiet_rx_at = now + silence
        # Data received: owe the peer a keepalive unless we send something first (§6.5).
        if self._send_keepalive_at is None:
            self._send_keepalive_at = now + timers.keepalive_timeout
        else:
            self._need_another_keepalive = True
        buf = shared.recv_buffer
        length = inner_length(buf, size)
        if length < 0:
            counters.bad_inner_packet += 1
            return True
        view = shared.recv_view[:length]
        if shared.allowed_ips.lookup_source(view) is not self:
            counters.source_not_allowed += 1
            return True
        counters.packets_received += 1
        self.last_data = now
        self._packets.append(bytes(view))
        return True

    # -- rekey triggers (§6.2) ------------------------------------------------------------------

    def _keep_key_fresh_sending(self, kp: Keypair, now: float) -> None:
        timers = self.timers
        if kp.send_counter > timers.rekey_after_messages or (
            kp.is_initiator and now - kp.created > timers.rekey_after_time
        ):
            self._send_initiation(now, retry=False)

    def _keep_key_fresh_receiving(self, now: float) -> None:
        if self._sent_last_minute_handshake:
            return
        kp = self.current
        if (
            kp is not None
            and kp.is_initiator
            and now - kp.created > self.timers.rekey_on_receive_age
        ):
            self._sent_last_minute_handshake = True
            self._send_initiation(now, retry=False)

    # -- timer hooks (§6.5) ---------------------------------------------------------------------

    def _jitter(self) -> float:
        return self.timers.rekey_timeout_jitter_max * self.shared.jitter()

    def _timers_any_authenticated_packet_traversal(self, now: float) -> None:
        if self.persistent_keepalive:
            self._persistent_keepalive_at = now + self.persistent_keepalive

    def _timers_any_authenticated_packet_sent(self) -> None:
        self._send_keepalive_at = None

    def _timers_any_authenticated_packet_received(self) -> None:
        self._new_handshake_at = None

    def _timers_session_derived(self, now: float) -> None:
        self._zero_keys_at = now + self.timers.zero_keys_after
        self._sent_last_minute_handshake = False

    def _timers_handshake_complete(self, now: float, is_initiator: bool) -> None:
        self._retransmit_at = None
        self._handshake_attempts = 0
        self.last_handshake = now
        self.shared.counters.handshakes_completed += 1
        self._events.append(HandshakeCompleted(now, is_initiator))
        log.debug("handshake complete", peer=repr(self), initiator=is_initiator)

"""The node side of signaling, sans-I/O: connect, handshake, register, heartbeat, reconnect,
route sealed offers/answers/candidates, presence and TURN credentials.

State machine (:class:`ClientState`)::

    IDLE --(connect_at reached: poll_connect)--> CONNECTING --(connection_made)--> HANDSHAKING
    HANDSHAKING --(retry: a fresh message 1 with a proof, once)--> HANDSHAKING
    HANDSHAKING --(Noise IK message 2)--> REGISTERING --(Registered)--> READY
    any connected state --(error, silence, refusal, GoingAway, connection_lost)--> IDLE
    any --(stop)--> STOPPED

The I/O layer (:mod:`p2ptun.net.signaling`) opens a TCP connection when :meth:`poll_connect`
says so, feeds bytes in, sends :meth:`data_to_send`, closes the socket whenever
:attr:`SignalClientCore.connected` turns False, and calls :meth:`handle_timeout` at
:meth:`next_wakeup`. Time is ``now`` (monotonic seconds); the wall clock (for sealed
timestamps) and randomness are injected.

Timers (:class:`ClientTimers`): a Ping every 25 s while registered; any frame from the
rendezvous counts as life, and 35 s without one (a Ping interval plus 10 s for its Pong) declares
the connection dead. The interval is a compromise between an idle node's wake-ups (one Ping and
its Pong per interval) and how soon a connection that died silently is noticed; the TCP NAT
binding it keeps alive lasts far longer (RFC 5382 REQ-5: at least 2 h 4 min). A connection that
dies loudly (reset, rendezvous restart) or a network change is noticed at once; silence is the
fallback. The rendezvous drops a node silent for 60 s
(:attr:`~p2ptun.signal.hub.ServerLimits.idle_timeout`), two missed Pings. Connect +
handshake +
registration must finish within ``connect_timeout``. Reconnects follow
:class:`~p2ptun.signal.backoff.BackoffPolicy` (jittered, capped at 30 s by default); the failure
count resets once registered. A session is replaced (reconnect, fresh Noise keys) after
``max_session_age``, the channel's substitute for rekeying.

An offer or restart that waits because the rendezvous is unreachable makes the client hurry
(:meth:`SignalClientCore.hurry`): for ``urgent_window`` (60 s) the attempts come at most
``urgent_retry`` (1 s, jittered down to half) apart and each connect is cut at
``urgent_connect_timeout`` (3 s), so that a tunnel whose recovery needs signaling is back
within a second or two of the rendezvous, not after the backoff's 30 s. The window bounds the
cost — at most one connection attempt a second, for a minute after the node last needed one.

On registration the client watches every configured peer, so presence is always known;
offers to an offline peer wait (:class:`~p2ptun.signal.negotiation.NegotiationState`) and go out
when the peer comes online. An offer of ours that wins glare against the peer's goes out again:
the peer would not offer if it had taken ours, which it may have refused (it did not know us
yet: a member not announced to it) or never got; a peer that has it drops the copy.

A member of a network registers with its certificate (``certificate``): the rendezvous then
announces the network's online members (:class:`MemberAnnounced`, :class:`MemberLeft`) and
hands on revocation lists (:class:`RevocationsReceived`). The core takes none of it on trust
and knows no certificate format: the daemon verifies each announcement and only then makes the
member a peer (:meth:`SignalClientCore.add_peer`), whose presence is then the announcements';
a member it drops goes with :meth:`SignalClientCore.remove_peer`.
"""

from __future__ import annotations

import enum
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from p2ptun.log import LogLimiter, get_logger
from p2ptun.noise import NoiseError, Rng
from p2ptun.signal.backoff import Backoff, BackoffPolicy, Random
from p2ptun.signal.channel import RETRY_TOKEN_LEN, ChannelLimits, NoiseChannel, proof_key
from p2ptun.signal.codec import check_name
from p2ptun.signal.errors import ChannelError, SealError, SignalDecodeError
from p2ptun.signal.frames import FrameDecoder, FrameType
from p2ptun.signal.messages import (
    MAX_WATCH_NAMES,
    Certificate,
    Deliver,
    Error,
    ErrorCode,
    GoingAway,
    Member,
    MemberGone,
    Message,
    Ping,
    Pong,
    Presence,
    RefusalReason,
    Refused,
    Register,
    Registered,
    RegisterMember,
    Revocations,
    Route,
    RouteFailed,
    RouteFailure,
    TurnCredentials,
    TurnRequest,
    Watch,
    decode_message,
    encode_message,
)
from p2ptun.signal.negotiation import Negotiation, NegotiationState, Role
from p2ptun.signal.seal import (
    Offer,
    PeerMessage,
    ReplayRecord,
    Restart,
    SealPolicy,
    SignalBox,
)

log = get_logger("signal.client")

_MAX_ROUTE_REFS = 256


class ClientState(enum.Enum):
    #: Not connected; the next attempt is at :attr:`SignalClientCore.connect_at`.
    IDLE = "idle"
    #: The I/O layer is opening the TCP connection.
    CONNECTING = "connecting"
    #: Noise IK message 1 sent, waiting for message 2.
    HANDSHAKING = "handshaking"
    #: Channel up, Register sent, waiting for Registered.
    REGISTERING = "registering"
    #: Registered: routing, presence and TURN work.
    READY = "ready"
    #: Stopped for good.
    STOPPED = "stopped"


#: Messages kept from an announced member until the daemon adds it (see ``_on_deliver``).
MAX_EARLY_PER_SENDER = 4
MAX_EARLY_SENDERS = 64
EARLY_TTL = 10.0

_CONNECTED = frozenset({ClientState.HANDSHAKING, ClientState.REGISTERING, ClientState.READY})
_ATTEMPTING = frozenset({ClientState.CONNECTING, ClientState.HANDSHAKING, ClientState.REGISTERING})


@dataclass(frozen=True)
class ClientTimers:
    #: A Ping this often while registered (the rendezvous' idle timeout must exceed it).
    ping_interval: float = 25.0
    #: No frame for this long: the connection is dead (a Ping interval plus the Pong's time).
    dead_after: float = 35.0
    connect_timeout: float = 10.0
    max_session_age: float = 12 * 3600.0
    #: While an offer waits for the rendezvous (module docstring): attempts at most this far
    #: apart, each connect cut at ``urgent_connect_timeout``, for ``urgent_window`` seconds.
    urgent_retry: float = 1.0
    urgent_connect_timeout: float = 3.0
    urgent_window: float = 60.0


# -- events ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegisteredEvent:
    """Registered with the rendezvous under ``name``."""

    name: str


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The connection to the rendezvous ended (or an attempt failed); the next attempt is in
    ``retry_in`` seconds."""

    reason: str
    retry_in: float


@dataclass(frozen=True, slots=True)
class RegistrationRefused:
    reason: RefusalReason
    text: str


@dataclass(frozen=True, slots=True)
class PresenceChanged:
    peer: str
    online: bool


@dataclass(frozen=True, slots=True)
class SignalReceived:
    """A sealed message from ``peer`` that opened, is fresh, and the negotiation accepts.

    ``role`` is this node's ICE role for ``message.session`` (offers: controlled; answers:
    controlling); ``superseded`` a session of ours the message replaced (glare lost, restart).
    """

    peer: str
    message: PeerMessage
    role: Role | None = None
    superseded: int | None = None


@dataclass(frozen=True, slots=True)
class PeerUnreachable:
    """A message to ``peer`` could not be delivered (``reason``); offers wait for presence."""

    peer: str
    reason: RouteFailure


@dataclass(frozen=True, slots=True)
class TurnCredentialsReceived:
    credentials: TurnCredentials
    #: Wall-clock Unix time at which they expire.
    expires_at: float


@dataclass(frozen=True, slots=True)
class TurnUnavailable:
    text: str


@dataclass(frozen=True, slots=True)
class MemberAnnounced:
    """The rendezvous says ``name`` is an online member of our network, with ``certificate``
    (unverified: the daemon checks it before :meth:`SignalClientCore.add_peer`)."""

    name: str
    certificate: bytes


@dataclass(frozen=True, slots=True)
class MemberLeft:
    name: str


@dataclass(frozen=True, slots=True)
class RevocationsReceived:
    """A revocation list the rendezvous handed on (unverified)."""

    blob: bytes


ClientEvent = (
    RegisteredEvent
    | Disconnected
    | RegistrationRefused
    | PresenceChanged
    | SignalReceived
    | PeerUnreachable
    | TurnCredentialsReceived
    | TurnUnavailable
    | MemberAnnounced
    | MemberLeft
    | RevocationsReceived
)


@dataclass
class ClientCounters:
    connects: int = 0
    disconnects: int = 0
    decode_errors: int = 0
    channel_errors: int = 0
    refused_signals: int = 0
    dropped_signals: int = 0
    #: Handshakes the rendezvous asked to retry with a proof (it was under load).
    retries: int = 0


class SignalClientCore:
    """Sans-I/O signaling client of one node.

    ``replay`` is where the sealed-message counters accepted are remembered (see
    :mod:`p2ptun.signal.seal`): the daemon passes its state file, shared by the clients that
    replace each other on reload; the default forgets them with the client."""

    def __init__(
        self,
        *,
        name: str,
        private_key: bytes,
        rendezvous_key: bytes,
        peers: Mapping[str, bytes],
        rng: Rng,
        random: Random,
        wall_clock: Callable[[], float],
        now: float,
        backoff: BackoffPolicy | None = None,
        timers: ClientTimers | None = None,
        seal_policy: SealPolicy | None = None,
        channel_limits: ChannelLimits | None = None,
        replay: ReplayRecord | None = None,
        certificate: bytes | None = None,
        revocations: bytes | None = None,
    ) -> None:
        """``certificate``: register as a member of a network with it (None: by name and
        key alone); ``revocations``: a revocation list to hand the rendezvous at each
        registration (the newest this node knows)."""
        self.name = check_name(name)
        self._private = private_key
        self.rendezvous_key = rendezvous_key
        self.rng = rng
        self.wall_clock = wall_clock
        self.timers = timers or ClientTimers()
        self.channel_limits = channel_limits or ChannelLimits()
        self.backoff = Backoff(backoff or BackoffPolicy(), random)
        self.box = SignalBox(
            name, private_key, peers, rng, seal_policy, replay=replay, wall=wall_clock()
        )
        self.negotiations = {
            peer: Negotiation(self.box.public_key, key) for peer, key in peers.items()
        }
        self.presence: dict[str, bool] = {}
        self.certificate = certificate
        self.revocations = revocations
        #: Members the rendezvous says are online (accepted as peers or not).
        self.members_online: set[str] = set()
        #: Messages from announced members not yet added as peers: ``(arrived, blob)``.
        self._early: dict[str, list[tuple[float, bytes]]] = {}
        self.state = ClientState.IDLE
        self.connect_at: float = now
        self.counters = ClientCounters()
        self.turn: TurnCredentialsReceived | None = None
        self._channel: NoiseChannel | None = None
        self._retried = False
        self._proof_key: bytes | None = None
        self._decoder = FrameDecoder()
        self._outbox = bytearray()
        self._events: list[ClientEvent] = []
        self._deadline: float | None = None
        self._last_rx = now
        self._next_ping = now
        self._session_end = now
        self._ping_seq = 0
        self._route_ref = 0
        self._routes: OrderedDict[int, tuple[str, PeerMessage]] = OrderedDict()
        self._members: set[str] = set()
        self._now = now
        # A peer (or the rendezvous) can send junk at will: its refusals are logged sparingly.
        self._refusal_log = LogLimiter()
        #: Until when reconnecting is urgent (see :meth:`hurry`), and when the current
        #: attempt began.
        self._urgent_until = -math.inf
        self._attempt_at = now

    # -- properties for the I/O layer ----------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while the I/O layer should keep its TCP connection open."""
        return self.state in _CONNECTED

    @property
    def ready(self) -> bool:
        return self.state is ClientState.READY

    def data_to_send(self) -> bytes:
        data = bytes(self._outbox)
        self._outbox.clear()
        return data

    def events(self) -> list[ClientEvent]:
        events, self._events = self._events, []
        return events

    def next_wakeup(self) -> float | None:
        if self.state is ClientState.IDLE:
            return self.connect_at
        if self.state is ClientState.CONNECTING:
            return self._deadline
        if self.state in (ClientState.HANDSHAKING, ClientState.REGISTERING):
            return self._deadline
        if self.state is ClientState.READY:
            return min(self._next_ping, self._last_rx + self.timers.dead_after, self._session_end)
        return None

    # -- connection lifecycle --------------------------------------------------------------

    def poll_connect(self, now: float) -> bool:
        """True (and state CONNECTING) if the I/O layer should open a connection now."""
        self._now = now
        if self.state is ClientState.IDLE and now >= self.connect_at:
            self.state = ClientState.CONNECTING
            timeout = self.timers.connect_timeout
            if now < self._urgent_until:
                timeout = min(timeout, self.timers.urgent_connect_timeout)
            self._attempt_at = now
            self._deadline = now + timeout
            return True
        return False

    def hurry(self, now: float) -> None:
        """Something waits for the rendezvous (an offer or restart of a tunnel to recover):
        reconnect attempts come at most ``urgent_retry`` apart for ``urgent_window`` seconds
        (module docstring), starting within ``urgent_retry``."""
        self._now = now
        self._urgent_until = now + self.timers.urgent_window
        if self.state is ClientState.IDLE:
            self.connect_at = min(self.connect_at, now + self._urgent_delay())
        elif self.state in _ATTEMPTING and self._deadline is not None:
            # An attempt under way (perhaps into a black hole): cut it as an urgent one.
            cut = self._attempt_at + self.timers.urgent_connect_timeout
            self._deadline = max(now, min(self._deadline, cut))

    def _urgent_delay(self) -> float:
        return self.timers.urgent_retry * (0.5 + 0.5 * self.backoff.random())

    def connection_made(self, now: float) -> None:
        """TCP is up: start the Noise handshake (message 1 goes to :meth:`data_to_send`)."""
        self._now = now
        if self.state is not ClientState.CONNECTING:
            return
        self.counters.connects += 1
        self._decoder = FrameDecoder()
        self._outbox.clear()
        self._channel = NoiseChannel.initiator(
            self._private, self.rendezvous_key, self.rng, self.channel_limits
        )
        self._outbox += self._channel.start()
        self._retried = False
        self._last_rx = now
        self.state = ClientState.HANDSHAKING

    def connection_failed(self, now: float, reason: str) -> None:
        """The TCP connect failed."""
        self._now = now
        if self.state is ClientState.CONNECTING:
            self._abandon(now, f"connect failed: {reason}")

    def connection_lost(
        self, now: float, reason: str = "connection closed", *, retry_now: bool = False
    ) -> None:
        """The TCP connection ended (EOF or error). ``retry_now``: connect again at once
        instead of after the backoff delay — the node dropped the connection itself because
        its own address changed (the path, not the rendezvous, was the trouble)."""
        self._now = now
        if self.connected:
            self._abandon(now, reason, delay=0.0 if retry_now else None)

    def stop(self) -> None:
        """Stop for good (the I/O layer then closes any connection)."""
        if self._channel is not None:
            self._channel.close()
        self._channel = None
        self._outbox.clear()
        self.state = ClientState.STOPPED

    def _abandon(self, now: float, reason: str, delay: float | None = None) -> None:
        was_ready = self.state is ClientState.READY
        if self._channel is not None:
            self._channel.close()
        self._channel = None
        self._outbox.clear()
        self._decoder = FrameDecoder()
        if delay is None:
            delay = self.backoff.next_delay()
            if now < self._urgent_until:
                delay = min(delay, self._urgent_delay())
        self.connect_at = now + delay
        self.state = ClientState.IDLE
        self.counters.disconnects += 1
        if was_ready:
            # Presence is unknown while disconnected; pending offers stay pending.
            for peer, online in list(self.presence.items()):
                if online:
                    self._events.append(PresenceChanged(peer, False))
            self.presence.clear()
            self.members_online.clear()
            self._early.clear()
            for negotiation in self.negotiations.values():
                if negotiation.state is NegotiationState.OFFERING and negotiation.pending:
                    negotiation.wait_for_peer(negotiation.pending)
        log.info("rendezvous disconnected", reason=reason, retry_in=f"{delay:.2f}")
        self._events.append(Disconnected(reason, delay))

    def handle_timeout(self, now: float) -> None:
        self._now = now
        if self.state is ClientState.CONNECTING or self.state in (
            ClientState.HANDSHAKING,
            ClientState.REGISTERING,
        ):
            if self._deadline is not None and now >= self._deadline:
                self._abandon(now, "timed out connecting")
            return
        if self.state is not ClientState.READY:
            return
        if now >= self._last_rx + self.timers.dead_after:
            self._abandon(now, "rendezvous silent")
            return
        if now >= self._session_end:
            self._abandon(now, "session age limit", delay=0.0)
            return
        if now >= self._next_ping:
            self._ping_seq += 1
            self._send(Ping(self._ping_seq))
            self._next_ping = now + self.timers.ping_interval

    # -- incoming bytes --------------------------------------------------------------------

    def data_received(self, data: bytes, now: float) -> None:
        self._now = now
        if not self.connected or self._channel is None:
            return
        try:
            frames = self._decoder.feed(data)
            for frame in frames:
                channel = self._live_channel()
                if channel is None:
                    return  # an earlier frame ended this connection
                if frame.type is FrameType.HANDSHAKE_RESPONSE:
                    channel.receive_handshake(frame)
                    self._on_channel_up(now)
                elif frame.type is FrameType.HANDSHAKE_RETRY:
                    self._retry(frame.payload)
                else:
                    plaintext = channel.decrypt(frame)
                    self._last_rx = now
                    self._on_message(decode_message(plaintext), now)
        except SignalDecodeError as exc:
            self.counters.decode_errors += 1
            self._abandon(now, f"bad frame: {exc}")
        except ChannelError as exc:
            self.counters.channel_errors += 1
            self._abandon(now, f"channel: {exc}")

    def _retry(self, token: bytes) -> None:
        """The rendezvous is under load and asks for a proof (:mod:`p2ptun.signal.channel`):
        once per connection, answer with a fresh message 1 and the proof for ``token``."""
        if self.state is not ClientState.HANDSHAKING or self._retried:
            raise ChannelError("unexpected handshake retry")
        if len(token) != RETRY_TOKEN_LEN:
            raise SignalDecodeError("handshake retry token of the wrong length")
        self._retried = True
        if self._proof_key is None:
            try:
                self._proof_key = proof_key(self._private, self.rendezvous_key)
            except NoiseError:
                raise ChannelError("the rendezvous key gives no proof key") from None
        self._channel = NoiseChannel.initiator(
            self._private, self.rendezvous_key, self.rng, self.channel_limits
        )
        self._outbox += self._channel.start_with_proof(self.box.public_key, token, self._proof_key)
        self.counters.retries += 1

    def _live_channel(self) -> NoiseChannel | None:
        return self._channel if self.connected else None

    def _on_channel_up(self, now: float) -> None:
        self._last_rx = now
        self.state = ClientState.REGISTERING
        if self.certificate is None:
            self._send(Register(self.name))
        else:
            self._send(RegisterMember(self.name, self.certificate))

    def _send(self, msg: Message) -> None:
        if self._channel is None:
            return
        try:
            self._outbox += self._channel.encrypt(encode_message(msg))
        except ChannelError:
            # The session's message bound is reached: reconnect for fresh keys.
            self._abandon(self._now, "session message limit", delay=0.0)

    def _on_message(self, msg: Message, now: float) -> None:
        if self.state is ClientState.REGISTERING:
            if isinstance(msg, Registered) and msg.name == self.name:
                self._on_registered(now)
            elif isinstance(msg, Refused):
                log.warning("registration refused", reason=msg.reason.name, text=msg.text)
                self._events.append(RegistrationRefused(msg.reason, msg.text))
                self._abandon(
                    now,
                    f"registration refused: {msg.text}",
                    self.backoff.longest_delay(),
                )
            elif isinstance(msg, GoingAway):
                self._abandon(now, "rendezvous going away")
            else:
                raise ChannelError("unexpected message before registration")
            return
        if isinstance(msg, Pong | Registered):
            return
        if isinstance(msg, Member):
            self.members_online.add(msg.name)
            self._events.append(MemberAnnounced(msg.name, msg.certificate))
            if msg.name in self.negotiations:
                self._on_presence(msg.name, True)
        elif isinstance(msg, MemberGone):
            self.members_online.discard(msg.name)
            self._early.pop(msg.name, None)
            self._events.append(MemberLeft(msg.name))
            if msg.name in self.negotiations:
                self._on_presence(msg.name, False)
        elif isinstance(msg, Revocations):
            self._events.append(RevocationsReceived(msg.blob))
        elif isinstance(msg, Refused):
            # A member whose certificate was revoked or expired while registered.
            log.warning("registration withdrawn", reason=msg.reason.name, text=msg.text)
            self._events.append(RegistrationRefused(msg.reason, msg.text))
            self._abandon(now, f"registration withdrawn: {msg.text}", self.backoff.longest_delay())
        elif isinstance(msg, Ping):
            self._send(Pong(msg.seq))
        elif isinstance(msg, Presence):
            self._on_presence(msg.name, msg.online)
        elif isinstance(msg, Deliver):
            self._on_deliver(msg.sender, msg.blob)
        elif isinstance(msg, RouteFailed):
            self._on_route_failed(msg)
        elif isinstance(msg, TurnCredentials):
            self.turn = TurnCredentialsReceived(msg, self.wall_clock() + msg.ttl)
            self._events.append(self.turn)
        elif isinstance(msg, Error):
            if msg.code is ErrorCode.NO_TURN:
                self._events.append(TurnUnavailable(msg.text))
            else:
                log.warning("rendezvous error", code=msg.code.name, text=msg.text)
        elif isinstance(msg, GoingAway):
            self._abandon(now, "rendezvous going away")
        else:
            raise ChannelError(f"unexpected {type(msg).__name__} from the rendezvous")

    def _on_registered(self, now: float) -> None:
        self.state = ClientState.READY
        self.backoff.reset()
        self._deadline = None
        self._next_ping = now + self.timers.ping_interval
        self._session_end = now + self.timers.max_session_age
        log.info("registered with rendezvous", name=self.name)
        self._events.append(RegisteredEvent(self.name))
        # Members of our network are announced without watching; the others are watched.
        peers = sorted(p for p in self.negotiations if p not in self._members)
        for i in range(0, len(peers), MAX_WATCH_NAMES):
            self._send(Watch(tuple(peers[i : i + MAX_WATCH_NAMES])))
        if self.certificate is not None and self.revocations is not None:
            self._send(Revocations(self.revocations))

    def _on_presence(self, peer: str, online: bool) -> None:
        if peer not in self.negotiations:
            return
        before = self.presence.get(peer)
        self.presence[peer] = online
        if before != online:
            self._events.append(PresenceChanged(peer, online))
        negotiation = self.negotiations[peer]
        pending = negotiation.pending
        if pending is None:
            return
        if negotiation.state is NegotiationState.OFFERING:
            # Our unanswered offer went to the peer's previous registration, which may have
            # refused it (we were not in its config yet) or dropped it: it is dead. Send it
            # again to the peer's new registration rather than let it win glare unseen.
            if online:
                self._route(peer, pending)
            else:
                negotiation.wait_for_peer(pending)
        elif online and negotiation.state is NegotiationState.WAITING_FOR_PEER:
            self._route(peer, pending)

    def _on_deliver(self, sender: str, blob: bytes) -> None:
        if sender not in self.box.peers and sender in self.members_online:
            # An announced member the daemon is still verifying (add_peer comes once its
            # certificate checked out): keep its first messages — typically its offer, sent
            # the moment it saw us announced — for add_peer, instead of refusing them and
            # leaving the member to wait out its offer timeout. Bounded per member and in all;
            # dropped after EARLY_TTL or when the member leaves.
            self._keep_early(sender, blob)
            return
        try:
            message = self.box.open(sender, blob, self.wall_clock())
        except SealError as exc:
            self.counters.refused_signals += 1
            suppressed = self._refusal_log.allow(self._now)
            if suppressed is not None:
                extra = {"suppressed": suppressed} if suppressed else {}
                log.warning("refused signaling", peer=sender, reason=exc.reason, **extra)
            return
        negotiation = self.negotiations[sender]
        accepted = negotiation.on_receive(message)
        if accepted is None:
            self.counters.dropped_signals += 1
            log.debug("dropped signaling", peer=sender, kind=type(message).__name__)
            pending = negotiation.pending
            if (
                isinstance(message, Offer | Restart)
                and negotiation.state is NegotiationState.OFFERING
                and pending is not None
                and self.ready
            ):
                # Our offer won glare: the peer offers because it has not taken ours, which
                # it refused (it did not know us yet) or never got. Send it again; a peer
                # that has it drops the copy.
                self._route(sender, pending)
            return
        self._events.append(
            SignalReceived(sender, accepted.message, accepted.role, accepted.superseded)
        )

    def _keep_early(self, sender: str, blob: bytes) -> None:
        kept = self._early.get(sender)
        if kept is None:
            if len(self._early) >= MAX_EARLY_SENDERS:
                self.counters.refused_signals += 1
                return
            kept = self._early[sender] = []
        if len(kept) >= MAX_EARLY_PER_SENDER:
            self.counters.refused_signals += 1
            return
        kept.append((self._now, blob))

    def _on_route_failed(self, msg: RouteFailed) -> None:
        entry = self._routes.pop(msg.ref, None)
        if entry is None:
            return
        peer, message = entry
        if msg.reason is RouteFailure.PEER_OFFLINE:
            if self.presence.get(peer):
                self.presence[peer] = False
                self._events.append(PresenceChanged(peer, False))
            negotiation = self.negotiations[peer]
            if (
                isinstance(message, Offer | Restart)
                and negotiation.session == message.session
                and negotiation.state is NegotiationState.OFFERING
            ):
                negotiation.wait_for_peer(message)
        self._events.append(PeerUnreachable(peer, msg.reason))

    # -- the daemon's API ------------------------------------------------------------------

    def new_session_id(self) -> int:
        """A fresh random, non-zero 64-bit session id."""
        while True:
            session = int.from_bytes(self.rng(8), "big")
            if session:
                return session

    def send(self, peer: str, message: PeerMessage, now: float | None = None) -> bool:
        """Seal ``message`` to ``peer`` and route it.

        Offers and restarts to a peer that is not known to be online (or while not
        registered) wait and go out when the peer comes online; one that waits because we
        are not registered makes the client :meth:`hurry` (given ``now``). Other messages
        need a live registration and return False otherwise. Raises KeyError for a peer not
        in the config and :class:`~p2ptun.signal.negotiation.NegotiationError` for a message
        the negotiation state does not allow.
        """
        negotiation = self.negotiations[peer]
        if isinstance(message, Offer | Restart) and not (self.ready and self.presence.get(peer)):
            negotiation.wait_for_peer(message)
            if not self.ready and now is not None:
                self.hurry(now)
            return True
        if not self.ready:
            return False
        negotiation.on_send(message)
        self._route(peer, message)
        return True

    def offer(
        self, peer: str, description: str, *, restart: bool = False, now: float | None = None
    ) -> int:
        """Start (or restart) a session with ``peer`` as the controlling agent; returns the
        session id. Waits for presence if needed (see :meth:`send` for ``now``)."""
        session = self.new_session_id()
        cls = Restart if restart else Offer
        self.send(peer, cls(session, description), now)
        return session

    def _route(self, peer: str, message: PeerMessage) -> None:
        negotiation = self.negotiations[peer]
        if isinstance(message, Offer | Restart):
            negotiation.on_send(message)
            negotiation.pending = message  # kept, to wait again if the peer is offline
        blob = self.box.seal(peer, message, self.wall_clock())
        self._route_ref = (self._route_ref + 1) & 0xFFFFFFFF
        self._routes[self._route_ref] = (peer, message)
        while len(self._routes) > _MAX_ROUTE_REFS:
            self._routes.popitem(last=False)
        self._send(Route(self._route_ref, peer, blob))

    # -- members ---------------------------------------------------------------------------

    def add_peer(self, name: str, key: bytes, *, member: bool = True) -> None:
        """Make ``name`` (with public ``key``) a peer at run time: sealed messages to and from
        it work from now on. A ``member``'s presence is what the rendezvous announces (no
        Watch). A peer already known with the same key is left as it is."""
        check_name(name)
        if self.box.peers.get(name) == key and name in self.negotiations:
            return
        self.box.peers[name] = key
        self.negotiations[name] = Negotiation(self.box.public_key, key)
        if member:
            self._members.add(name)
            if self.ready:
                self._on_presence(name, name in self.members_online)
        elif self.ready:
            self._send(Watch((name,)))
        for at, blob in self._early.pop(name, []):
            if self._now - at <= EARLY_TTL:
                self._on_deliver(name, blob)

    def remove_peer(self, name: str) -> None:
        """Forget a peer added with :meth:`add_peer` (revoked, expired, gone)."""
        self.box.peers.pop(name, None)
        self.negotiations.pop(name, None)
        self.presence.pop(name, None)
        self._members.discard(name)
        for ref, (peer, _message) in list(self._routes.items()):
            if peer == name:
                del self._routes[ref]

    def update_certificate(self, certificate: bytes) -> None:
        """A renewed certificate: sent now if registered, and used for the next
        registrations."""
        self.certificate = certificate
        if self.ready:
            self._send(Certificate(certificate))

    def publish_revocations(self, blob: bytes) -> None:
        """Hand a revocation list to the rendezvous (now, and at each registration)."""
        self.revocations = blob
        if self.ready and self.certificate is not None:
            self._send(Revocations(blob))

    def request_turn(self) -> bool:
        """Ask for TURN credentials (answered by a TurnCredentialsReceived or TurnUnavailable
        event); False if not registered."""
        if not self.ready:
            return False
        self._send(TurnRequest())
        return True

    def is_online(self, peer: str) -> bool | None:
        """Presence of ``peer`` as the rendezvous last said, None when unknown."""
        return self.presence.get(peer)

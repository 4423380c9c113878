"""The rendezvous' signaling hub, sans-I/O: connection ids, bytes and ``now`` in; bytes per
connection, close requests and :meth:`~SignalingServerCore.next_wakeup` out.

Per connection (:class:`ConnState`)::

    HANDSHAKE --(Noise IK message 1 → message 2)--> REGISTERING --(Register, admitted)--> READY
    any --(error, refusal, silence, limit, shutdown)--> CLOSING --(flushed)--> closed

A node is authenticated once its first transport frame decrypts (see
:mod:`p2ptun.signal.channel` on message-1 replays). Under load — ``handshake_load`` handshakes
within a second, or ``pending_load`` connections not yet registered — a bare message 1 gets a
HANDSHAKE_RETRY instead of any Diffie-Hellman, and only a valid proof from a node key the store
knows leads to the handshake; a connection still shaking hands may send no frame larger than a
handshake message. Its identity is the static key from the handshake, and the
:class:`Registrations` the core is given (the rendezvous' store, :mod:`p2ptun.rendezvous.store`)
decide whether that key may use the name it asks for. Then the core:

- answers Ping with Pong; closes connections silent for ``idle_timeout`` and connections that
  have not registered within ``handshake_timeout``, each at its own deadline (the core is woken
  for the earliest one, never on a fixed tick);
- keeps presence: a node watches names (its peers) and gets Presence(name, online) now and on
  every change — mutual: a node is shown online only to the nodes it watches itself, so a
  stranger learns nothing of a node that does not list it;
- routes Route(ref, to, blob) as Deliver(from, blob) to the node registered as ``to`` if that
  node lists the sender, or answers RouteFailed (peer offline, busy, rate limited). It never
  looks inside ``blob``, which is sealed end to end (:mod:`p2ptun.signal.seal`);
- hands TURN credentials to registered nodes the operator listed (and to self-registered ones
  only with ``turn_for_self_registered``), minted by the :data:`TurnIssuer` it is given (the
  rendezvous' ``[turn] auth_secret``, in coturn's REST-API form);
- bounds everything: connections, unregistered connections (in total, where the oldest makes
  room for a new one, and per source), connections and new connections a second per source, a
  token bucket of messages per connection, bytes queued to each connection (routes to a full
  queue fail as busy; a queue past the hard limit closes the connection), names watched per
  connection and in total.

Networks (``RegisterMember``): a node may register with a certificate of a network the
rendezvous serves instead of being listed by name. The :class:`Memberships` the core is given
(:mod:`p2ptun.rendezvous.networks`) decides whether the certificate admits it — valid, of a
served authority, not revoked, its key the one of the Noise handshake, an enrolled one's invite
not used by another machine — and keeps the newest revocation list of each network. Then the
core tells the member every other online member of its network with its certificate
(``Member``), tells those of the newcomer, and of each one that leaves (``MemberGone``); it
hands on newer revocation lists (``Revocations``) from the store or from a member, closing the
members they revoke; it closes a member when its certificate expires, each at its own
deadline; and it takes renewed certificates (``Certificate``). Members route to each other
freely, and get TURN credentials (the operator's authority admitted them). None of this is
trusted by the nodes, which verify every certificate themselves; the core only keeps
strangers out of a network's member list.

A new registration of a name that is online (same key, the store guarantees) replaces the old
connection, whose socket is likely dead after a network change, without presence flapping: its
watches carry over, and its peers hear Presence(online) again — no change for them, but an
offer that went to the dead connection is sent again at once.

Randomness (``rng``, for the Noise channel) and the wall clock (for credential expiry) are
injected. Logs name connections, node names and reasons; never keys or sealed payloads.

The trio shell that serves it on TCP is :class:`p2ptun.rendezvous.signaling.SignalingServer`.
"""

from __future__ import annotations

import enum
import heapq
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from p2ptun.addr import SourceBudget, source_key
from p2ptun.log import LogLimiter, get_logger
from p2ptun.noise import DH_LEN, NoiseError, Rng
from p2ptun.signal.channel import (
    INIT_PROOF_LEN,
    MAX_HANDSHAKE_PAYLOAD,
    PROOF_LEN,
    RETRY_TOKEN_LEN,
    ChannelLimits,
    NoiseChannel,
    check_proof,
    proof_key,
)
from p2ptun.signal.cluster import ClusterMessage, Forward, NodeDown, NodeUp
from p2ptun.signal.errors import ChannelError, SignalDecodeError
from p2ptun.signal.frames import MAX_PAYLOAD, Frame, FrameDecoder, FrameType, encode_frame
from p2ptun.signal.messages import (
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
    Unwatch,
    Watch,
    decode_message,
    encode_message,
)

log = get_logger("rendezvous.signaling")


def _source_key_of(peer: str) -> str:
    """The :func:`~p2ptun.addr.source_key` of a ``host:port`` / ``[v6]:port`` peer text (the
    shell's :func:`~p2ptun.addr.format_address`); the text itself if it is not one."""
    host, sep, port = peer.rpartition(":")
    if not sep or not port.isdigit():
        return peer
    return source_key(host.removeprefix("[").removesuffix("]"))


@dataclass(frozen=True, slots=True)
class Admission:
    """The answer to "may ``key`` register as ``name``?"."""

    allowed: bool
    reason: RefusalReason | None = None
    text: str = ""
    #: True when this admission created a new (trust-on-first-use) binding.
    new_binding: bool = False
    #: True when the operator listed this name and key (``[[node]]``); False for a binding a
    #: node made itself (open registration), which gets no TURN credentials by default.
    pinned: bool = False
    #: For a member (``RegisterMember``): the network it is a member of (an id the
    #: :class:`Memberships` chose) and when its certificate expires (wall-clock seconds).
    network: str | None = None
    expires_at: float | None = None


class Registrations(Protocol):
    """What the hub needs to admit a registration: the rendezvous' name ↔ key bindings
    (:class:`p2ptun.rendezvous.store.SqliteStore` in production)."""

    def admit(self, name: str, key: bytes, *, now: float = 0.0, source: str = "") -> Admission:
        """Decide, and in open-registration mode record, a registration; ``source`` (the
        client's :func:`~p2ptun.addr.source_key`) and ``now`` let the store limit how fast
        one source, and everyone together, may claim new names."""
        ...

    def known(self, key: bytes) -> bool:
        """Is ``key`` listed or bound to a name? (Under load only known keys may handshake.)"""
        ...


class Memberships(Protocol):
    """What the hub needs for networks (:mod:`p2ptun.rendezvous.networks` in production):
    certificates opaque to it, decisions and revocation lists from here."""

    def admit_member(self, name: str, key: bytes, certificate: bytes, wall: float) -> Admission:
        """May the node with static ``key`` register as ``name`` with ``certificate`` at
        wall-clock ``wall``? Records the first use of an invite."""
        ...

    def revocations(self, network: str) -> bytes | None:
        """The newest revocation list of ``network`` held, if any."""
        ...

    def publish_revocations(self, network: str, blob: bytes, wall: float) -> bool:
        """Take ``blob`` if it is a valid revocation list of ``network`` newer than the one
        held (then True: hand it on)."""
        ...

    def still_admitted(self, network: str, certificate: bytes, wall: float) -> bool:
        """Is ``certificate`` still valid and unrevoked?"""
        ...


TurnIssuer = Callable[[str, float], TurnCredentials]
"""``issue(name, unix_time)``: TURN credentials for the node registered as ``name``, minted at
wall-clock ``unix_time`` (the rendezvous shell builds it from ``[turn]``:
:func:`p2ptun.rendezvous.signaling.rest_turn_issuer`)."""


@dataclass(frozen=True)
class ServerLimits:
    """Bounds that keep one node (or a crowd) from exhausting the rendezvous. A *source* is an
    IPv4 address or an IPv6 /64 (:func:`p2ptun.addr.source_key`)."""

    #: Connections in total.
    max_connections: int = 10_000
    #: Connections not yet registered; past it the oldest of them is closed for a new one.
    max_pending: int = 512
    #: Connections from one source (a NAT may hide many nodes)...
    max_connections_per_source: int = 256
    #: ...of which not yet registered.
    max_pending_per_source: int = 16
    #: New connections one source may open per second, sustained...
    connect_rate: float = 10.0
    #: ...and at once.
    connect_burst: float = 40.0
    #: Sources whose connection rate is remembered (the least recent is forgotten first).
    max_sources: int = 65536
    #: Handshake and registration must finish within this.
    handshake_timeout: float = 10.0
    #: A registered node that sends nothing for this long is dropped: two missed Pings of a
    #: client that pings every 25 s, plus 10 s (:class:`p2ptun.signal.client.ClientTimers`).
    idle_timeout: float = 60.0
    #: Token bucket per connection: sustained messages per second, and burst.
    rate: float = 50.0
    burst: float = 200.0
    #: Messages dropped for rate in a row before the connection is closed.
    max_rate_drops: int = 1000
    #: Bytes queued to a connection beyond which routes to it fail as busy...
    max_outbox: int = 256 * 1024
    #: ...and beyond which it is closed.
    hard_outbox: int = 1024 * 1024
    #: Names one connection may watch...
    max_watches: int = 1024
    #: ...and all connections together (each watch is a few hundred bytes).
    max_total_watches: int = 100_000
    #: Handshakes (Diffie-Hellman work, ≈ 0.6 ms each) in one second past which the hub is
    #: under load and asks new connections for a proof first (:mod:`p2ptun.signal.channel`;
    #: 0: always)...
    handshake_load: int = 50
    #: ...as it does while this many connections are not yet registered...
    pending_load: int = 128
    #: ...and for this long after either was last seen (as WireGuard's UnderLoadAfterTime).
    load_hold: float = 1.0
    #: Node keys whose proof key (a static-static Diffie-Hellman) is kept.
    max_proof_keys: int = 16384
    channel: ChannelLimits = field(default_factory=ChannelLimits)


class ConnState(enum.Enum):
    HANDSHAKE = "handshake"
    REGISTERING = "registering"
    READY = "ready"
    CLOSING = "closing"


@dataclass
class ServerCounters:
    connections: int = 0
    refused_connections: int = 0
    #: Unregistered connections closed to make room for new ones (``max_pending`` reached).
    evicted: int = 0
    registrations: int = 0
    refused_registrations: int = 0
    new_bindings: int = 0
    routed: int = 0
    route_offline: int = 0
    #: Routes to a node that does not list the sender as a peer (answered as offline).
    route_not_listed: int = 0
    #: Watches refused because the server holds ``max_total_watches``.
    watches_refused: int = 0
    #: TURN requests of self-registered nodes refused (``turn_for_self_registered`` off).
    turn_refused: int = 0
    route_busy: int = 0
    rate_limited: int = 0
    decode_errors: int = 0
    channel_errors: int = 0
    protocol_errors: int = 0
    timeouts: int = 0
    turn_issued: int = 0
    #: Handshakes that cost Diffie-Hellman work (message 1 read, message 2 written).
    handshakes: int = 0
    #: HANDSHAKE_RETRY answers sent instead (under load: no Diffie-Hellman).
    retries: int = 0
    #: HANDSHAKE_INIT_PROOF frames refused before any Diffie-Hellman (unknown key, bad proof,
    #: no token, a second message 1).
    proofs_refused: int = 0
    #: Proof keys computed (one Diffie-Hellman per node key while it stays in the cache).
    proof_keys_computed: int = 0
    member_registrations: int = 0
    members_closed: int = 0
    revocations_published: int = 0
    revocations_ignored: int = 0
    #: Cluster: routes handed to another instance, and Delivers from others given to a node
    #: here or dropped (the node had left, does not list the sender, or its queue was full).
    cluster_forwarded: int = 0
    cluster_delivered: int = 0
    cluster_dropped: int = 0


@dataclass(frozen=True)
class OnlineNode:
    """One registered node as the hub sees it."""

    name: str
    address: str
    """The address its signaling connection comes from (its public address, behind a NAT)."""
    since: float
    """When that connection opened (the core's clock)."""
    network: str | None
    watching: int
    """How many names it lists as peers."""


class _Conn:
    __slots__ = (
        "certificate",
        "channel",
        "close_reason",
        "decoder",
        "expires",
        "id",
        "key",
        "last_rx",
        "name",
        "network",
        "opened",
        "outbox",
        "peer",
        "rate_drops",
        "source",
        "state",
        "token",
        "tokens",
        "tokens_at",
        "turn_allowed",
        "watching",
    )

    def __init__(self, conn_id: int, channel: NoiseChannel, now: float, peer: str, burst: float):
        self.id = conn_id
        self.channel = channel
        self.decoder = FrameDecoder(MAX_HANDSHAKE_PAYLOAD)
        self.token: bytes | None = None
        self.state = ConnState.HANDSHAKE
        self.outbox = bytearray()
        self.name: str | None = None
        self.key: bytes | None = None
        self.opened = now
        self.last_rx = now
        self.peer = peer
        self.tokens = burst
        self.tokens_at = now
        self.rate_drops = 0
        self.watching: set[str] = set()
        self.close_reason = ""
        self.source = _source_key_of(peer)
        self.turn_allowed = False
        self.network: str | None = None
        self.certificate = b""
        self.expires: float | None = None


def _decrement(counts: dict[str, int], key: str) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


def _closing(conn: _Conn) -> bool:
    return conn.state is ConnState.CLOSING


class SignalingServerCore:
    """Sans-I/O signaling server: connection ids and bytes in, bytes per connection out.

    ``turn`` mints TURN credentials for registered nodes (None: the rendezvous issues none):
    for every node the operator listed and every member of a network, and for nodes that
    registered themselves (open registration) only with ``turn_for_self_registered``.
    ``memberships`` admits members of networks (None: the rendezvous serves no network).
    """

    def __init__(
        self,
        private_key: bytes,
        store: Registrations,
        *,
        rng: Rng,
        wall_clock: Callable[[], float],
        turn: TurnIssuer | None = None,
        limits: ServerLimits | None = None,
        turn_for_self_registered: bool = False,
        memberships: Memberships | None = None,
        instance: str | None = None,
    ) -> None:
        self._private = private_key
        self.store = store
        self.rng = rng
        self.wall_clock = wall_clock
        self.turn = turn
        self.turn_for_self_registered = turn_for_self_registered
        self.memberships = memberships
        #: Online members by network id, then name.
        self.networks: dict[str, dict[str, _Conn]] = {}
        self._expiries: list[tuple[float, int]] = []
        self.limits = limits or ServerLimits()
        self.counters = ServerCounters()
        self._conns: dict[int, _Conn] = {}
        self._online: dict[str, _Conn] = {}
        self._watchers: dict[str, set[int]] = {}
        self._watch_count = 0
        self._dirty: set[int] = set()
        self._proof_keys: OrderedDict[bytes, bytes] = OrderedDict()
        self._registered_keys: OrderedDict[bytes, None] = OrderedDict()
        self._by_source: dict[str, int] = {}
        self._pending_by_source: dict[str, int] = {}
        limits = self.limits
        self._connects = SourceBudget(limits.connect_rate, limits.connect_burst, limits.max_sources)
        self._refusal_log = LogLimiter()
        self._registration_log = LogLimiter()
        self._load_window = 0.0
        self._load_count = 0
        self._load_until = -math.inf
        self._error_log = LogLimiter()
        # Deadline order, so that the earliest deadline is the first entry (``now`` never goes
        # back): connections not yet registered by opening time, registered ones by the time
        # of their last frame (moved to the end on every frame). Closing ones are in neither.
        self._unregistered: OrderedDict[int, _Conn] = OrderedDict()
        self._registered: OrderedDict[int, _Conn] = OrderedDict()
        self.shutting_down = False
        # Cluster (docstring of :meth:`remote_up`): this instance's id (None: alone), the nodes
        # online on the other instances, and what to tell those.
        self.instance = instance
        self._remote: dict[str, NodeUp] = {}
        self._cluster_out: list[ClusterMessage] = []

    # -- queries ---------------------------------------------------------------------------

    @property
    def connection_count(self) -> int:
        return len(self._conns)

    @property
    def online(self) -> frozenset[str]:
        return frozenset(self._online)

    def online_nodes(self) -> list[OnlineNode]:
        """What the rendezvous knows of each online node, by name (for its map page): never
        anything sealed between nodes."""
        return [
            OnlineNode(name, conn.peer, conn.opened, conn.network, len(conn.watching))
            for name, conn in sorted(self._online.items())
        ]

    def data_to_send(self, conn_id: int) -> bytes:
        conn = self._conns.get(conn_id)
        if conn is None:
            return b""
        data = bytes(conn.outbox)
        conn.outbox.clear()
        return data

    def should_close(self, conn_id: int) -> bool:
        """True when the shell should close this connection once its output is flushed."""
        conn = self._conns.get(conn_id)
        return conn is None or conn.state is ConnState.CLOSING

    def take_dirty(self) -> set[int]:
        """Connections with new output or a close request since the last call."""
        dirty, self._dirty = self._dirty, set()
        return dirty

    def next_wakeup(self) -> float | None:
        """When :meth:`handle_timeout` wants to run: the earliest handshake or idle deadline
        of a connection, or None. Exact, and cheap enough to ask after every input."""
        wake = None
        for conn in self._unregistered.values():
            wake = conn.opened + self.limits.handshake_timeout
            break
        for conn in self._registered.values():
            idle = conn.last_rx + self.limits.idle_timeout
            if wake is None or idle < wake:
                wake = idle
            break
        expiries = self._expiries
        while expiries and not self._expiry_live(*expiries[0]):
            heapq.heappop(expiries)
        if expiries and (wake is None or expiries[0][0] < wake):
            wake = expiries[0][0]
        return wake

    def _expiry_live(self, when: float, conn_id: int) -> bool:
        conn = self._conns.get(conn_id)
        return conn is not None and conn.state is ConnState.READY and conn.expires == when

    # -- connection lifecycle --------------------------------------------------------------

    def connection_made(self, conn_id: int, now: float, peer: str = "") -> bool:
        """A TCP connection from ``peer`` (``host:port``) arrived; False means refuse it
        (close at once). Refused: while shutting down; past ``max_connections``; past a
        source's (an IPv4 address, an IPv6 /64) ``connect_rate``, ``max_pending_per_source``
        unregistered or ``max_connections_per_source`` connections. When ``max_pending``
        connections are unregistered, the oldest of them makes room (it has had the longest
        to finish its handshake), so that a crowd of idle connections cannot lock nodes out.
        Refusals are logged sparingly."""
        limits = self.limits
        source = _source_key_of(peer)
        refusal = None
        if self.shutting_down:
            refusal = "shutting down"
        elif len(self._conns) >= limits.max_connections:
            refusal = "too many connections"
        elif self._by_source.get(source, 0) >= limits.max_connections_per_source:
            refusal = "too many connections from this address"
        elif self._pending_by_source.get(source, 0) >= limits.max_pending_per_source:
            refusal = "too many unregistered connections from this address"
        elif not self._connects.allow(source, now):
            refusal = "too many new connections from this address"
        if refusal is not None:
            self.counters.refused_connections += 1
            suppressed = self._refusal_log.allow(now)
            if suppressed is not None:
                extra = {"suppressed": suppressed} if suppressed else {}
                log.warning("connection refused", peer=peer, reason=refusal, **extra)
            return False
        while len(self._unregistered) >= limits.max_pending:
            oldest = next(iter(self._unregistered.values()))
            self.counters.evicted += 1
            self._close(oldest, "evicted: too many unregistered connections")
        channel = NoiseChannel.responder(self._private, self.rng, limits.channel)
        conn = _Conn(conn_id, channel, now, peer, limits.burst)
        self._conns[conn_id] = self._unregistered[conn_id] = conn
        self._by_source[conn.source] = self._by_source.get(conn.source, 0) + 1
        self._pending_by_source[conn.source] = self._pending_by_source.get(conn.source, 0) + 1
        self.counters.connections += 1
        return True

    def _leave_pending(self, conn: _Conn) -> None:
        """``conn`` is no longer an unregistered connection (registered, closing or gone)."""
        if self._unregistered.pop(conn.id, None) is not None:
            _decrement(self._pending_by_source, conn.source)

    def connection_lost(self, conn_id: int, now: float) -> None:
        conn = self._conns.pop(conn_id, None)
        if conn is None:
            return
        self._leave_pending(conn)
        _decrement(self._by_source, conn.source)
        self._registered.pop(conn_id, None)
        conn.channel.close()
        if conn.name is not None and self._online.get(conn.name) is conn:
            del self._online[conn.name]
            log.info("node offline", name=conn.name, conn=conn_id, reason=conn.close_reason)
            self._notify(conn, False)
            self._announce_down(conn)
        self._leave_network(conn)
        for name in conn.watching:
            self._drop_watcher(name, conn_id)
        self._watch_count -= len(conn.watching)
        conn.watching.clear()
        self._dirty.discard(conn_id)

    def _close(self, conn: _Conn, reason: str, final: Message | None = None) -> None:
        if conn.state is ConnState.CLOSING:
            return
        if final is not None and conn.channel.established:
            self._queue(conn, final)
        conn.state = ConnState.CLOSING
        conn.close_reason = reason
        self._leave_pending(conn)
        self._registered.pop(conn.id, None)
        self._dirty.add(conn.id)
        # Presence changes now, not when the socket finally closes.
        if conn.name is not None and self._online.get(conn.name) is conn:
            del self._online[conn.name]
            log.info("node offline", name=conn.name, conn=conn.id, reason=reason)
            self._notify(conn, False)
            self._announce_down(conn)
        self._leave_network(conn)

    def shutdown(self, now: float) -> None:
        """Graceful shutdown: refuse new connections, tell every node, close all."""
        self.shutting_down = True
        for conn in list(self._conns.values()):
            self._close(conn, "shutdown", GoingAway("rendezvous shutting down"))

    def handle_timeout(self, now: float) -> None:
        """Close the connections whose deadline has come: ``handshake_timeout`` after opening
        for one not yet registered, ``idle_timeout`` after its last frame for a registered one.
        Exact: a connection is closed by the first call at or after its deadline. Only the
        connections closed are looked at (they are at the front of their deadline order)."""
        limits = self.limits
        for order, timeout, reason in (
            (self._unregistered, limits.handshake_timeout, "handshake timeout"),
            (self._registered, limits.idle_timeout, "idle timeout"),
        ):
            while order:
                conn = next(iter(order.values()))
                since = conn.last_rx if conn.state is ConnState.READY else conn.opened
                if now < since + timeout:
                    break
                self.counters.timeouts += 1
                self._close(conn, reason)
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            when, conn_id = heapq.heappop(expiries)
            if self._expiry_live(when, conn_id):
                conn = self._conns[conn_id]
                self._withdraw(conn, "the certificate has expired")

    # -- incoming bytes --------------------------------------------------------------------

    def data_received(self, conn_id: int, data: bytes, now: float) -> None:
        conn = self._conns.get(conn_id)
        if conn is None or conn.state is ConnState.CLOSING:
            return
        try:
            for frame in conn.decoder.feed(data):
                if _closing(conn):  # an earlier frame of this read ended it
                    return
                if conn.state is ConnState.HANDSHAKE:
                    self._handshake(conn, frame, now)
                    continue
                plaintext = conn.channel.decrypt(frame)
                conn.last_rx = now
                if conn.state is ConnState.READY:
                    self._registered.move_to_end(conn.id)
                self._on_message(conn, decode_message(plaintext), now)
        except SignalDecodeError as exc:
            self.counters.decode_errors += 1
            self._log_error("bad frame", conn, str(exc), now)
            self._close(conn, "bad frame")
        except ChannelError as exc:
            self.counters.channel_errors += 1
            self._log_error("channel error", conn, str(exc), now)
            self._close(conn, "channel error")

    def _log_error(self, what: str, conn: _Conn, error: str, now: float) -> None:
        """Anyone can provoke these: logged sparingly."""
        suppressed = self._error_log.allow(now)
        if suppressed is not None:
            extra = {"suppressed": suppressed} if suppressed else {}
            log.info(what, conn=conn.id, peer=conn.peer, error=error, **extra)

    # -- the handshake, with a retry under load (p2ptun.signal.channel) ---------------------

    def under_load(self, now: float) -> bool:
        """Is the hub under load: many handshakes in the last second, or many connections not
        yet registered, within ``load_hold``? Then a bare message 1 gets a retry."""
        limits = self.limits
        if len(self._unregistered) >= limits.pending_load or limits.handshake_load <= 0:
            self._load_until = now + limits.load_hold
        return now < self._load_until

    def _count_handshake(self, now: float) -> None:
        self.counters.handshakes += 1
        if now - self._load_window >= 1.0:
            self._load_window = now
            self._load_count = 0
        self._load_count += 1
        if self._load_count >= self.limits.handshake_load:
            self._load_until = now + self.limits.load_hold

    def _handshake(self, conn: _Conn, frame: Frame, now: float) -> None:
        if frame.type is FrameType.HANDSHAKE_INIT and conn.token is None and self.under_load(now):
            conn.token = self.rng(RETRY_TOKEN_LEN)
            conn.outbox += encode_frame(FrameType.HANDSHAKE_RETRY, conn.token)
            self._dirty.add(conn.id)
            self.counters.retries += 1
            return
        expected: bytes | None = None
        if frame.type is FrameType.HANDSHAKE_INIT_PROOF:
            frame, expected = self._check_proof(conn, frame)
        elif conn.token is not None:
            self.counters.proofs_refused += 1
            raise ChannelError("a second message 1 after a retry")
        response = conn.channel.receive_handshake(frame)
        self._count_handshake(now)
        assert response is not None
        if expected is not None and conn.channel.remote_static != expected:
            raise ChannelError("message 1 carries another key than its proof")
        conn.key = conn.channel.remote_static
        conn.outbox += response
        conn.decoder.limit = MAX_PAYLOAD
        self._dirty.add(conn.id)
        conn.state = ConnState.REGISTERING

    def _check_proof(self, conn: _Conn, frame: Frame) -> tuple[Frame, bytes]:
        """Check a HANDSHAKE_INIT_PROOF without Diffie-Hellman (but the first proof key of a
        known node key); its message 1 as a HANDSHAKE_INIT frame and the key it claims."""
        payload = frame.payload
        token = conn.token
        if token is None or len(payload) != INIT_PROOF_LEN:
            self.counters.proofs_refused += 1
            raise ChannelError("a proof without a retry, or of the wrong length")
        claimed = payload[:DH_LEN]
        proof = payload[DH_LEN : DH_LEN + PROOF_LEN]
        message = payload[DH_LEN + PROOF_LEN :]
        key = self._proof_key(claimed)
        if key is None or not check_proof(key, token, message, proof):
            self.counters.proofs_refused += 1
            raise ChannelError("handshake proof refused")
        conn.token = b""  # spent: a second proof on this connection is refused
        return Frame(FrameType.HANDSHAKE_INIT, message), claimed

    def _proof_key(self, node_key: bytes) -> bytes | None:
        """The proof key of a node key the store knows, from the cache or computed once."""
        cache = self._proof_keys
        key = cache.get(node_key)
        if key is not None:
            cache.move_to_end(node_key)
            return key
        if node_key not in self._registered_keys and not self.store.known(node_key):
            return None
        try:
            key = proof_key(self._private, node_key)
        except NoiseError:
            return None
        self.counters.proof_keys_computed += 1
        cache[node_key] = key
        if len(cache) > self.limits.max_proof_keys:
            cache.popitem(last=False)
        return key

    def _queue(self, conn: _Conn, msg: Message) -> None:
        if conn.state is ConnState.CLOSING:
            return
        try:
            conn.outbox += conn.channel.encrypt(encode_message(msg))
        except ChannelError:
            self._close(conn, "session message limit")
            return
        self._dirty.add(conn.id)
        if len(conn.outbox) > self.limits.hard_outbox:
            log.warning("closing slow connection", conn=conn.id, name=conn.name)
            conn.outbox.clear()
            self._close(conn, "send queue overflow")

    def _take_token(self, conn: _Conn, now: float) -> bool:
        limits = self.limits
        conn.tokens = min(limits.burst, conn.tokens + (now - conn.tokens_at) * limits.rate)
        conn.tokens_at = now
        if conn.tokens >= 1.0:
            conn.tokens -= 1.0
            conn.rate_drops = 0
            return True
        self.counters.rate_limited += 1
        conn.rate_drops += 1
        if conn.rate_drops > limits.max_rate_drops:
            self._close(conn, "rate limit")
        return False

    def _protocol_error(self, conn: _Conn, what: str) -> None:
        self.counters.protocol_errors += 1
        self._log_error("protocol error", conn, what, conn.last_rx)
        self._close(conn, "protocol error", Error(ErrorCode.PROTOCOL, what))

    def _on_message(self, conn: _Conn, msg: Message, now: float) -> None:
        if conn.state is ConnState.REGISTERING:
            if isinstance(msg, Register):
                self._register(conn, msg.name, now)
            elif isinstance(msg, RegisterMember):
                self._register_member(conn, msg, now)
            else:
                self._protocol_error(conn, "expected Register")
            return
        if isinstance(msg, Ping):
            self._queue(conn, Pong(msg.seq))
            return
        if isinstance(msg, Pong):
            return
        if not self._take_token(conn, now):
            if isinstance(msg, Route):
                self._queue(conn, RouteFailed(msg.ref, msg.to, RouteFailure.RATE_LIMITED))
            elif isinstance(msg, TurnRequest):
                self._queue(conn, Error(ErrorCode.RATE_LIMITED, "too many requests"))
            return
        if isinstance(msg, Route):
            self._route(conn, msg)
        elif isinstance(msg, Watch):
            self._watch(conn, msg.names)
        elif isinstance(msg, Unwatch):
            self._unwatch(conn, msg.names)
        elif isinstance(msg, TurnRequest):
            self._issue_turn(conn)
        elif isinstance(msg, Revocations) and conn.network is not None:
            self._publish_revocations(conn.network, msg.blob, now)
        elif isinstance(msg, Certificate) and conn.network is not None:
            self._renew(conn, msg.certificate, now)
        else:
            self._protocol_error(conn, f"unexpected {type(msg).__name__}")

    def _register(self, conn: _Conn, name: str, now: float) -> None:
        assert conn.key is not None
        admission = self.store.admit(name, conn.key, now=now, source=conn.source)
        if self._admitted(conn, name, admission, now):
            self._announce(conn)

    def _admitted(self, conn: _Conn, name: str, admission: Admission, now: float) -> bool:
        """Finish a registration the store or the memberships decided; True if admitted."""
        if not admission.allowed:
            assert admission.reason is not None
            self.counters.refused_registrations += 1
            suppressed = self._registration_log.allow(now)
            if suppressed is not None:  # anyone with a key can provoke it: sparingly
                extra = {"suppressed": suppressed} if suppressed else {}
                log.warning(
                    "registration refused",
                    name=name,
                    conn=conn.id,
                    peer=conn.peer,
                    reason=admission.reason.name,
                    **extra,
                )
            self._close(conn, "registration refused", Refused(admission.reason, admission.text))
            return False
        old = self._online.get(name)
        if old is not None and old.key != conn.key:
            # Only members can get here (the store binds a name to one key): another network's
            # node of the same name, or a re-enrolled machine whose old connection lingers.
            self.counters.refused_registrations += 1
            self._close(
                conn,
                "registration refused",
                Refused(RefusalReason.NAME_TAKEN, f"{name!r} is online with another key"),
            )
            return False
        if admission.new_binding:
            self.counters.new_bindings += 1
            log.info("new name binding (trust on first use)", name=name)
        assert conn.key is not None
        self._remember_key(conn.key)
        conn.name = name
        conn.state = ConnState.READY
        conn.turn_allowed = (
            admission.pinned or admission.network is not None or self.turn_for_self_registered
        )
        self._leave_pending(conn)
        self._registered[conn.id] = conn
        self._online[name] = conn
        self.counters.registrations += 1
        self._queue(conn, Registered(name))
        if old is not None:
            # Same name, same key (the store binds them): the node reconnected. Its watches
            # carry over, so that what others see of it does not flap; a member's peers hear
            # nothing of the old connection (the new one is announced again).
            conn.watching, old.watching = old.watching, set()
            for watched in conn.watching:
                watchers = self._watchers.get(watched)
                if watchers is not None:
                    watchers.discard(old.id)
                    watchers.add(conn.id)
            self._leave_network(old, announce=False)
            old.name = None
            self._close(old, "replaced", GoingAway("replaced by a newer connection"))
            log.info("node reconnected", name=name, conn=conn.id, old_conn=old.id)
            # Online again, not a flap (its peers see no change), but what they routed to the
            # old connection may be lost with it: a peer waiting for an answer sends its offer
            # again on this Presence.
            self._notify(conn, True)
        else:
            log.info("node online", name=name, conn=conn.id, peer=conn.peer)
            self._notify(conn, True)
        return True

    def _remember_key(self, key: bytes) -> None:
        """A key that registered: under load it may prove itself (:meth:`_proof_key`) even if
        the store does not list it (a network member, a binding made meanwhile)."""
        known = self._registered_keys
        known[key] = None
        known.move_to_end(key)
        if len(known) > self.limits.max_proof_keys:
            known.popitem(last=False)

    # -- networks ----------------------------------------------------------------------------

    def _register_member(self, conn: _Conn, msg: RegisterMember, now: float) -> None:
        assert conn.key is not None
        memberships = self.memberships
        if memberships is None:
            admission = Admission(
                False, RefusalReason.CERTIFICATE, "this rendezvous serves no network"
            )
        else:
            admission = memberships.admit_member(
                msg.name, conn.key, msg.certificate, self.wall_clock()
            )
        network = admission.network
        if admission.allowed and network is None:  # pragma: no cover - a store bug
            admission = Admission(False, RefusalReason.CERTIFICATE, "no network")
        if not self._admitted(conn, msg.name, admission, now):
            return
        assert network is not None and memberships is not None
        self.counters.member_registrations += 1
        conn.network = network
        conn.certificate = msg.certificate
        self._set_expiry(conn, admission.expires_at, now)
        members = self.networks.setdefault(network, {})
        for other in members.values():
            if other is not conn and other.name is not None:
                self._queue(conn, Member(other.name, other.certificate))
                self._queue(other, Member(msg.name, msg.certificate))
        members[msg.name] = conn
        for remote in self._remote.values():
            if remote.network == network:
                self._queue(conn, Member(remote.name, remote.certificate))
        crl = memberships.revocations(network)
        if crl is not None:
            self._queue(conn, Revocations(crl))
        self._announce(conn)
        log.info("member online", name=msg.name, network=network[:16], members=len(members))

    def _set_expiry(self, conn: _Conn, expires_at: float | None, now: float) -> None:
        conn.expires = None
        if expires_at is not None:
            conn.expires = now + max(0.0, expires_at - self.wall_clock())
            heapq.heappush(self._expiries, (conn.expires, conn.id))

    def _leave_network(self, conn: _Conn, *, announce: bool = True) -> None:
        network, name = conn.network, conn.name
        if network is None:
            return
        conn.network = None
        members = self.networks.get(network)
        if members is None or name is None or members.get(name) is not conn:
            return
        del members[name]
        if not members:
            del self.networks[network]
        if announce:
            for other in members.values():
                self._queue(other, MemberGone(name))

    def _withdraw(self, conn: _Conn, text: str) -> None:
        """Close a member whose certificate no longer admits it (revoked, expired)."""
        self.counters.members_closed += 1
        log.info("member closed", name=conn.name, reason=text)
        self._close(conn, text, Refused(RefusalReason.CERTIFICATE, text))

    def _publish_revocations(self, network: str, blob: bytes, now: float) -> None:
        memberships = self.memberships
        assert memberships is not None
        if not memberships.publish_revocations(network, blob, self.wall_clock()):
            self.counters.revocations_ignored += 1
            return
        self.revocations_changed(network, now)

    def revocations_changed(self, network: str, now: float) -> None:
        """A newer revocation list of ``network`` is held (a member published it, or the
        operator's file changed): hand it to every member and close those it revokes."""
        memberships = self.memberships
        if memberships is None:
            return
        blob = memberships.revocations(network)
        if blob is None:
            return
        self.counters.revocations_published += 1
        wall = self.wall_clock()
        members = list(self.networks.get(network, {}).values())
        for conn in members:
            if not memberships.still_admitted(network, conn.certificate, wall):
                self._withdraw(conn, "the certificate has been revoked")
        for conn in self.networks.get(network, {}).values():
            self._queue(conn, Revocations(blob))
        log.info("revocation list handed on", network=network[:16])

    def _renew(self, conn: _Conn, certificate: bytes, now: float) -> None:
        memberships = self.memberships
        assert memberships is not None and conn.key is not None and conn.name is not None
        admission = memberships.admit_member(conn.name, conn.key, certificate, self.wall_clock())
        if not admission.allowed or admission.network != conn.network:
            text = admission.text or "the renewed certificate is of another network"
            self.counters.refused_registrations += 1
            self._close(conn, "renewal refused", Refused(RefusalReason.CERTIFICATE, text))
            return
        conn.certificate = certificate
        self._set_expiry(conn, admission.expires_at, now)
        for other in self.networks.get(conn.network or "", {}).values():
            if other is not conn:
                self._queue(other, Member(conn.name, certificate))
        self._announce(conn)
        log.info("member renewed its certificate", name=conn.name)

    # Presence is mutual: a node sees another online only while that one lists it as a peer
    # (watches its name), and only such a node may route to it. A stranger learns nothing of
    # a node that does not know it, and cannot send it anything.

    def _lists(self, listing: _Conn, name: str | None) -> bool:
        """Does the node on ``listing`` list ``name`` as a peer (watch it)?"""
        return name is not None and name in listing.watching

    def _visible(self, watcher: _Conn, name: str) -> bool:
        """Is ``name`` online as far as ``watcher`` may know?"""
        target = self._online.get(name)
        if target is None:
            remote = self._remote.get(name)
            return remote is not None and watcher.name in remote.watching
        return target.state is ConnState.READY and self._lists(target, watcher.name)

    def _notify(self, conn: _Conn, online: bool) -> None:
        """Tell those who watch ``conn``'s node, and whom it lists, that it came or went."""
        name = conn.name
        assert name is not None
        for watcher_id in list(self._watchers.get(name, ())):
            watcher = self._conns.get(watcher_id)
            if (
                watcher is not None
                and watcher.state is ConnState.READY
                and self._lists(conn, watcher.name)
            ):
                self._queue(watcher, Presence(name, online))

    def _watch(self, conn: _Conn, names: tuple[str, ...]) -> None:
        before = len(conn.watching)
        self._watch_names(conn, names)
        if len(conn.watching) != before:
            self._announce(conn)

    def _watch_names(self, conn: _Conn, names: tuple[str, ...]) -> None:
        limits = self.limits
        for name in names:
            if name not in conn.watching:
                if (
                    len(conn.watching) >= limits.max_watches
                    or self._watch_count >= limits.max_total_watches
                ):
                    self.counters.watches_refused += 1
                    self._queue(conn, Presence(name, False))
                    continue
                conn.watching.add(name)
                self._watch_count += 1
                self._watchers.setdefault(name, set()).add(conn.id)
                # Now this node lists ``name``: if that one lists it too, it sees it online.
                target = self._online.get(name)
                if (
                    target is not None
                    and target is not conn
                    and target.state is ConnState.READY
                    and self._lists(target, conn.name)
                ):
                    assert conn.name is not None
                    self._queue(target, Presence(conn.name, True))
            self._queue(conn, Presence(name, self._visible(conn, name)))

    def _unwatch(self, conn: _Conn, names: tuple[str, ...]) -> None:
        before = len(conn.watching)
        self._unwatch_names(conn, names)
        if len(conn.watching) != before:
            self._announce(conn)

    def _unwatch_names(self, conn: _Conn, names: tuple[str, ...]) -> None:
        for name in names:
            if name not in conn.watching:
                continue
            conn.watching.discard(name)
            self._watch_count -= 1
            self._drop_watcher(name, conn.id)
            target = self._online.get(name)
            if (
                target is not None
                and target.state is ConnState.READY
                and self._lists(target, conn.name)
            ):
                assert conn.name is not None
                self._queue(target, Presence(conn.name, False))

    def _drop_watcher(self, name: str, conn_id: int) -> None:
        watchers = self._watchers.get(name)
        if watchers is not None:
            watchers.discard(conn_id)
            if not watchers:
                del self._watchers[name]

    def _route(self, conn: _Conn, msg: Route) -> None:
        assert conn.name is not None
        dest = self._online.get(msg.to)
        if dest is None and msg.to in self._remote:
            self._route_remote(conn, msg, self._remote[msg.to])
            return
        if dest is None or dest.state is not ConnState.READY:
            self.counters.route_offline += 1
            self._queue(conn, RouteFailed(msg.ref, msg.to, RouteFailure.PEER_OFFLINE))
            return
        if not self._lists(dest, conn.name) and (
            dest.network is None or dest.network != conn.network
        ):
            # The destination does not know the sender (it does not watch it, and they are
            # not members of one network): as good as offline to it.
            self.counters.route_not_listed += 1
            self._queue(conn, RouteFailed(msg.ref, msg.to, RouteFailure.PEER_OFFLINE))
            return
        if len(dest.outbox) > self.limits.max_outbox:
            self.counters.route_busy += 1
            self._queue(conn, RouteFailed(msg.ref, msg.to, RouteFailure.PEER_BUSY))
            return
        self.counters.routed += 1
        self._queue(dest, Deliver(conn.name, msg.blob))

    def _issue_turn(self, conn: _Conn) -> None:
        assert conn.name is not None
        issue = self.turn
        if issue is None:
            self._queue(
                conn, Error(ErrorCode.NO_TURN, "this rendezvous issues no TURN credentials")
            )
            return
        if not conn.turn_allowed:
            self.counters.turn_refused += 1
            self._queue(
                conn,
                Error(
                    ErrorCode.NO_TURN,
                    "this rendezvous issues TURN credentials only to the nodes it lists",
                ),
            )
            return
        credentials = issue(conn.name, self.wall_clock())
        self.counters.turn_issued += 1
        self._queue(conn, credentials)

    # -- cluster -----------------------------------------------------------------------------
    # Instances sharing one Redis (p2ptun.signal.cluster, the shell p2ptun.rendezvous.cluster).
    # Each announces the nodes connected to it (NodeUp: name, the names it lists, its network)
    # and their departure (NodeDown); the others keep those as remote nodes, shown to their own
    # nodes by the same mutual-presence rule as local ones, and routed to by a Forward to the
    # instance holding the node. A node that registers on another instance while this one
    # still holds a connection for it moved: the stale connection is closed quietly.

    def take_cluster_messages(self) -> list[ClusterMessage]:
        """What to tell the other instances since the last call (nothing when alone)."""
        out, self._cluster_out = self._cluster_out, []
        return out

    def announcement(self, name: str) -> NodeUp | None:
        """The NodeUp of the node registered here as ``name`` (its presence key's value)."""
        conn = self._online.get(name)
        if self.instance is None or conn is None or conn.state is not ConnState.READY:
            return None
        return NodeUp(self.instance, name, frozenset(conn.watching), conn.network, conn.certificate)

    @property
    def remote_nodes(self) -> dict[str, NodeUp]:
        """The nodes online on other instances, by name."""
        return self._remote

    def _announce(self, conn: _Conn) -> None:
        if conn.name is not None:
            self._remote.pop(conn.name, None)  # here now, whatever another instance said
        if conn.name is not None and not self.shutting_down:
            up = self.announcement(conn.name)
            if up is not None:
                self._cluster_out.append(up)

    def _announce_down(self, conn: _Conn) -> None:
        # Not while shutting down: the nodes fail over to another instance, whose NodeUp
        # replaces this one's without an offline in between (or the presence key expires).
        if self.instance is not None and conn.name is not None and not self.shutting_down:
            self._cluster_out.append(NodeDown(self.instance, conn.name))

    def _local_watchers(self, name: str) -> list[_Conn]:
        watchers = []
        for watcher_id in self._watchers.get(name, ()):
            watcher = self._conns.get(watcher_id)
            if watcher is not None and watcher.state is ConnState.READY:
                watchers.append(watcher)
        return watchers

    def remote_up(self, up: NodeUp, now: float) -> None:
        """Another instance holds ``up.name`` (registered, or changed what it lists)."""
        if up.instance == self.instance:
            return
        local = self._online.get(up.name)
        if local is not None:
            # The node connected to another instance after this one: this connection is
            # stale. Closed without presence changes (the remote one takes over below).
            del self._online[up.name]
            self._leave_network(local, announce=False)
            local.name = None
            self._close(local, "moved", GoingAway("registered on another rendezvous instance"))
            log.info("node moved to another instance", name=up.name, instance=up.instance)
        old = self._remote.get(up.name)
        self._remote[up.name] = up
        moved = old is None or old.instance != up.instance or local is not None
        for watcher in self._local_watchers(up.name):
            was = old is not None and local is None and watcher.name in old.watching
            now_listed = watcher.name in up.watching
            if now_listed and (moved or not was):
                self._queue(watcher, Presence(up.name, True))
            elif was and not now_listed:
                self._queue(watcher, Presence(up.name, False))
        if up.network is not None and (moved or old is None or old.certificate != up.certificate):
            for member in self.networks.get(up.network, {}).values():
                self._queue(member, Member(up.name, up.certificate))

    def remote_down(self, down: NodeDown, now: float) -> None:
        """``down.name`` left the instance that held it (or its presence key expired)."""
        old = self._remote.get(down.name)
        if old is None or old.instance != down.instance:
            return  # already elsewhere: a late departure from its previous instance
        del self._remote[down.name]
        for watcher in self._local_watchers(down.name):
            if watcher.name in old.watching:
                self._queue(watcher, Presence(down.name, False))
        if old.network is not None:
            for member in self.networks.get(old.network, {}).values():
                self._queue(member, MemberGone(down.name))

    def binding_lost(self, name: str, key: bytes, now: float) -> None:
        """Another instance bound ``name`` to ``key`` first (two new names claimed at once):
        a node registered here under it with another key is refused after all."""
        conn = self._online.get(name)
        if conn is not None and conn.key != key:
            self.counters.refused_registrations += 1
            self._close(
                conn,
                "registration refused",
                Refused(
                    RefusalReason.NAME_TAKEN,
                    f"the name {name!r} is already registered with a different public key",
                ),
            )

    def remote_deliver(self, forward: Forward, now: float) -> bool:
        """A route from a node on another instance to a node here; False if dropped."""
        dest = self._online.get(forward.to)
        sender = self._remote.get(forward.sender)
        if (
            dest is None
            or dest.state is not ConnState.READY
            or not (
                self._lists(dest, forward.sender)
                or (
                    dest.network is not None
                    and sender is not None
                    and sender.network == dest.network
                )
            )
            or len(dest.outbox) > self.limits.max_outbox
        ):
            self.counters.cluster_dropped += 1
            return False
        self.counters.cluster_delivered += 1
        self._queue(dest, Deliver(forward.sender, forward.blob))
        return True

    def _route_remote(self, conn: _Conn, msg: Route, dest: NodeUp) -> None:
        assert conn.name is not None and self.instance is not None
        if conn.name not in dest.watching and (
            dest.network is None or dest.network != conn.network
        ):
            self.counters.route_not_listed += 1
            self._queue(conn, RouteFailed(msg.ref, msg.to, RouteFailure.PEER_OFFLINE))
            return
        self.counters.routed += 1
        self.counters.cluster_forwarded += 1
        self._cluster_out.append(Forward(dest.instance, conn.name, msg.to, msg.blob))

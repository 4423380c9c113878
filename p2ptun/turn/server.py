"""Sans-I/O TURN server core (RFC 8656) with the STUN Binding usage (RFC 8489).

:class:`TurnServer` takes datagrams (or stream frames) with the 5-tuple they arrived on, and
the current time; it returns what to send and which relay sockets to open or close. It never
touches a socket or a clock: the trio shell (:mod:`p2ptun.rendezvous.stun_turn`) does, and the
tests drive it under virtual time.

What it implements
------------------
- Allocations keyed by 5-tuple (RFC 8656 §2, §6): Allocate (§7.2), Refresh incl. lifetime 0
  (§8), default lifetime 600 s and a configured maximum; 437 for a second Allocate on a
  5-tuple or a request without an allocation, 441 when another user touches it (§5), 442 for
  a transport other than UDP, 440 for an address family the server has no relay address of,
  486 past the per-user quota, 508 when the port range, the allocation caps or the relay
  socket binding give out. EVEN-PORT without the R bit gets an even port; reservations (R
  bit, RESERVATION-TOKEN) are not kept, so such requests get 508 (§7.2 allows it).
- Both address families (RFC 8656 §7.2, §18.11, §18.12): a server with a relay address of
  each family (``TurnServerOptions.extra_relay_address``) allocates IPv4 by default, IPv6
  for REQUESTED-ADDRESS-FAMILY IPv6, and both (a dual allocation: two relayed addresses, one
  lifetime, permissions and channels per peer in the peer's family) for
  ADDITIONAL-ADDRESS-FAMILY IPv6; a family it cannot serve in a dual request is named in
  ADDRESS-ERROR-CODE (440) while the other is allocated. A peer, or a Refresh's
  REQUESTED-ADDRESS-FAMILY, of a family the allocation has no relayed address of gets 443.
  ADDITIONAL-ADDRESS-FAMILY under its pre-RFC code point (0x8032, coturn 4.6's clients) is
  honoured too, and answered with ADDRESS-ERROR-CODE under that era's code point (0x8033).
- Long-term credentials (RFC 8489 §9.2, RFC 8656 §5): REALM, stateless expiring NONCEs
  (438 when stale), MESSAGE-INTEGRITY, and MESSAGE-INTEGRITY-SHA256 / PASSWORD-ALGORITHM
  SHA-256 when the client asks for them; static users and coturn REST-API users.
- Permissions (§9, §10): CreatePermission, 300 s, port ignored; peers on the deny list of
  :mod:`p2ptun.turn.server_policy` get 403.
- Send/Data indications (§11) and channels (§12): ChannelBind (600 s, also installs a
  permission), ChannelData both ways (padded over TCP/TLS, §12.5). Channel numbers are
  0x4000-0x4FFF as RFC 8656 §12 says, plus, by default, 0x5000-0x7FFF: RFC 5766 allowed
  them and RFC 5766 clients still pick them (coturn's ``turnutils_uclient`` draws from the
  whole 0x4000-0x7FFF range). ``TurnServerOptions.channel_max = CHANNEL_MAX`` makes the server
  strict.
- Unknown comprehension-required attributes: 420 after authentication (RFC 8489 §6.3.1);
  indications with them are dropped (§6.3.2).

Bounded memory
--------------
Unauthenticated requests create nothing (the nonce is stateless), and what they are answered
over UDP is budgeted per client source (``unauthenticated_rate`` a second, ``unauthenticated_burst``
at once), so a spoofed source gets little reflected at it. Allocations are capped in
total, per client source (an IPv4 address or an IPv6 /64, :func:`p2ptun.addr.source_key`) and
per user; permissions and channels per allocation; allocations
waiting for their relay socket (pending) in total. Everything dropped is counted in
:class:`TurnServerCounters`.

Relay sockets
-------------
The core picks a port from the configured range and emits :class:`OpenRelay`. The shell
binds a UDP socket there and reports back with :meth:`TurnServer.relay_opened` (True/False);
on failure the core tries other ports a few times, then answers 508. :class:`CloseRelay`
tells the shell to close a relay socket.
"""

from __future__ import annotations

import enum
import heapq
import ipaddress
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

from p2ptun.addr import Address, SourceBudget, format_address, is_ipv6, source_key
from p2ptun.log import get_logger
from p2ptun.stun import (
    AddressErrorValue,
    AddressFamily,
    AttrType,
    ErrorCode,
    Message,
    MessageClass,
    Method,
    PasswordAlgorithm,
    PasswordAlgorithmValue,
    StunDecodeError,
    binding_response,
    error_response,
    is_stun,
    unknown_comprehension_required,
)
from p2ptun.stun.channeldata import CHANNEL_MAX, CHANNEL_MIN
from p2ptun.stun.constants import TRANSPORT_UDP
from p2ptun.stun.message import message_length, split_message_type
from p2ptun.stun.server import SOFTWARE
from p2ptun.turn.server_auth import DEFAULT_NONCE_LIFETIME, CredentialStore, NonceIssuer
from p2ptun.turn.server_policy import IPNetwork, PeerPolicy

log = get_logger("turn.server")

#: RFC 8656 §7.2: the default allocation lifetime.
DEFAULT_LIFETIME = 600
#: RFC 8656 §9: permission lifetime.
PERMISSION_LIFETIME = 300
#: RFC 8656 §12: channel binding lifetime.
CHANNEL_LIFETIME = 600
#: How long an allocation may wait for its relay socket before it is dropped.
PENDING_TIMEOUT = 30.0
#: RFC 5766 §11: the legacy upper end of the channel range (RFC 8656 §12 reserves 0x5000+).
RFC5766_CHANNEL_MAX = 0x7FFF
_PAD = (b"", b"\x00\x00\x00", b"\x00\x00", b"\x00")
#: Largest application payload relayed (fits a DATA attribute in one STUN message).
MAX_RELAY_PAYLOAD = 0xFFFF - 64

#: The password algorithms offered in PASSWORD-ALGORITHMS (RFC 8489 §14.11), in order.
OFFERED_ALGORITHMS: tuple[PasswordAlgorithmValue, ...] = (
    PasswordAlgorithmValue(PasswordAlgorithm.SHA256),
    PasswordAlgorithmValue(PasswordAlgorithm.MD5),
)
_OFFERED_IDS = tuple(int(a.algorithm) for a in OFFERED_ALGORITHMS)
_TURN_METHODS = frozenset(
    (Method.ALLOCATE, Method.REFRESH, Method.CREATE_PERMISSION, Method.CHANNEL_BIND)
)


class Transport(enum.Enum):
    """The transport between client and server (RFC 8656 §3.1)."""

    UDP = "udp"
    TCP = "tcp"
    TLS = "tls"


@dataclass(frozen=True, slots=True)
class FiveTuple:
    """Client and server transport addresses plus the transport: what identifies an
    allocation (RFC 8656 §2, "5-tuple"). For TCP/TLS each connection is its own 5-tuple."""

    client: Address
    server: Address
    transport: Transport

    def __str__(self) -> str:
        return f"{self.transport.value}:{format_address(self.client)}>{format_address(self.server)}"


class AllocationState(enum.Enum):
    """Life of an allocation (RFC 8656 §6)."""

    PENDING = "pending"
    """Authenticated and accepted; waiting for the shell to bind the relay socket."""
    ACTIVE = "active"
    """Relaying."""
    DELETED = "deleted"
    """Expired, refreshed to 0 or its connection closed; kept by nobody."""


# -- outputs ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ToClient:
    """Send ``data`` to the client over ``five_tuple`` (UDP: from the listener at
    ``five_tuple.server``; TCP/TLS: on that connection)."""

    five_tuple: FiveTuple
    data: bytes


@dataclass(frozen=True, slots=True)
class ToPeer:
    """Send ``data`` from the relay socket at ``relay`` to ``peer`` (RFC 8656 §11.2, §12.6)."""

    relay: Address
    peer: Address
    data: bytes


@dataclass(frozen=True, slots=True)
class OpenRelay:
    """Bind a UDP relay socket at ``relay``, then call :meth:`TurnServer.relay_opened`."""

    relay: Address


@dataclass(frozen=True, slots=True)
class CloseRelay:
    """Close the relay socket at ``relay`` (its allocation is gone)."""

    relay: Address


Output = ToClient | ToPeer | OpenRelay | CloseRelay


# -- configuration -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerLimits:
    """Caps that bound the server's memory under floods, and what a spoofed request can make it
    send (RFC 8656 §21.2, §21.3)."""

    #: Allocations in total.
    max_allocations: int = 4096
    #: Per client source: an IPv4 address, or an IPv6 /64 (one subscriber holds a whole /64).
    max_allocations_per_ip: int = 256
    #: Allocations waiting for their relay socket, in total.
    max_pending: int = 64
    #: Permissions per allocation (RFC 8656 §9).
    max_permissions: int = 64
    #: Channels per allocation (RFC 8656 §12).
    max_channels: int = 64
    #: Relay ports tried for one allocation before 508 (Insufficient Capacity).
    max_bind_attempts: int = 8
    #: Unauthenticated answers over UDP (Binding responses, 400, 401, 438) per client source
    #: and second, sustained (:meth:`TurnServer._may_answer_unauthenticated`)...
    unauthenticated_rate: float = 10.0
    #: ...and at once.
    unauthenticated_burst: float = 20.0
    #: Client sources whose unauthenticated budget is remembered (least recent forgotten).
    max_sources: int = 16384


@dataclass(frozen=True)
class TurnServerOptions:
    """What the core needs from the ``[turn]`` config (see
    :class:`p2ptun.config.TurnServerSettings`)."""

    realm: str
    relay_address: str
    relay_ports: tuple[int, int]
    users: Mapping[str, str] = field(default_factory=dict, repr=False)
    auth_secret: str | None = field(default=None, repr=False)
    allow_peers: tuple[IPNetwork, ...] = ()
    own_addresses: tuple[str, ...] = ()
    user_quota: int = 10
    max_lifetime: int = 3600
    nonce_lifetime: float = DEFAULT_NONCE_LIFETIME
    channel_max: int = RFC5766_CHANNEL_MAX
    """Highest channel number accepted: 0x7FFF (RFC 5766 clients) or 0x4FFF (RFC 8656)."""
    software: str | None = SOFTWARE
    limits: ServerLimits = field(default_factory=ServerLimits)
    extra_relay_address: str | None = None
    """A relay address of the other family: the server relays over IPv4 and IPv6."""

    @classmethod
    def from_settings(cls, settings: Any, own_addresses: Iterable[str] = ()) -> TurnServerOptions:
        """Options from a :class:`p2ptun.config.TurnServerSettings`; ``own_addresses`` are the
        server's listen addresses (denied as peers, like the relay address)."""
        extra = getattr(settings, "extra_relay_address", None)
        own = (settings.relay_address, *([extra] if extra else []), *own_addresses)
        return cls(
            realm=settings.realm,
            relay_address=settings.relay_address,
            extra_relay_address=extra,
            relay_ports=settings.relay_ports,
            users=dict(settings.users),
            auth_secret=settings.auth_secret,
            allow_peers=tuple(settings.allow_peers),
            own_addresses=own,
            user_quota=settings.user_quota,
            max_lifetime=settings.max_lifetime,
        )


@dataclass
class TurnServerCounters:
    """What the server did and, above all, what it dropped."""

    binding_requests: int = 0
    requests: int = 0
    success_responses: int = 0
    error_responses: int = 0
    unauthenticated: int = 0
    """401 without credentials (the normal first round trip) or with wrong ones."""
    integrity_failures: int = 0
    """401 for a MESSAGE-INTEGRITY that does not verify or an unknown user."""
    stale_nonces: int = 0
    bad_requests: int = 0
    unknown_attributes: int = 0
    allocation_mismatch: int = 0
    wrong_credentials: int = 0
    quota_rejections: int = 0
    capacity_rejections: int = 0
    forbidden_peers: int = 0
    allocations_created: int = 0
    allocations_deleted: int = 0
    allocations_expired: int = 0
    relay_bind_failures: int = 0
    permissions_expired: int = 0
    channels_expired: int = 0
    dropped_not_stun: int = 0
    dropped_malformed: int = 0
    dropped_bad_fingerprint: int = 0
    dropped_responses: int = 0
    dropped_indications: int = 0
    dropped_no_allocation: int = 0
    dropped_no_permission: int = 0
    """Send indications / ChannelData to, and datagrams from, peers without a permission."""
    dropped_unbound_channel: int = 0
    dropped_too_large: int = 0
    unauthenticated_rate_limited: int = 0
    """Unauthenticated requests over UDP dropped unanswered: their source spent its budget."""
    relayed_to_peer: int = 0
    relayed_to_peer_bytes: int = 0
    relayed_to_client: int = 0
    relayed_to_client_bytes: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# -- state ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Channel:
    """A channel binding (RFC 8656 §12): number <-> peer transport address."""

    number: int
    peer: Address
    expires: float


@dataclass(eq=False, slots=True)
class Allocation:
    """One allocation (RFC 8656 §6): relayed address, lifetime, permissions, channels."""

    five_tuple: FiveTuple
    username: str
    quota_user: str
    key: bytes
    sha256: bool
    relay: Address
    lifetime: int
    expires: float
    allocate_tid: bytes
    state: AllocationState = AllocationState.PENDING
    address_error: AddressErrorValue | None = None
    fingerprint: bool = False
    even_port: bool = False
    bind_attempts: int = 1
    permissions: dict[str, float] = field(default_factory=dict)
    """Peer IP -> expiry time."""
    channels: dict[int, Channel] = field(default_factory=dict)
    channel_by_peer: dict[Address, Channel] = field(default_factory=dict)
    wake: float | None = None
    """The earliest of the expiry times above, as the server's schedule has it."""
    bytes_to_peer: int = 0
    """Payload bytes relayed from the client to its peers (the shell adds its fast path's)."""
    bytes_to_client: int = 0
    """Payload bytes relayed from peers to the client (likewise)."""
    relay_other: Address | None = None
    """A dual allocation's second relayed address (IPv6 beside :attr:`relay`'s IPv4)."""
    opening: int = 1
    """Relay sockets the shell has yet to report bound (the allocation is pending till 0)."""
    address_error_attr: int = 0x8001
    """The attribute :attr:`address_error` goes in (ADDRESS-ERROR-CODE, or its draft code)."""

    @property
    def relays(self) -> tuple[Address, ...]:
        """The relayed transport addresses: one, or two for a dual allocation."""
        return (self.relay,) if self.relay_other is None else (self.relay, self.relay_other)

    def relay_for(self, host: str) -> Address | None:
        """The relayed address that talks to a peer at ``host`` (its family's), or None."""
        if self.relay_other is None:
            return self.relay if is_ipv6(host) == is_ipv6(self.relay[0]) else None
        return self.relay_other if is_ipv6(host) else self.relay

    def has_permission(self, host: str, now: float) -> bool:
        expiry = self.permissions.get(host)
        return expiry is not None and expiry > now


@dataclass(frozen=True, slots=True)
class _Auth:
    """An authenticated request's credentials (RFC 8489 §9.2.4): the response uses the key."""

    username: str
    key: bytes
    sha256: bool
    fingerprint: bool


class _Reject(Exception):
    """Internal: answer the current request with an error response."""

    def __init__(self, code: int, reason: str | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.reason = reason


def _family_of(host: str) -> int:
    return AddressFamily.IPV6 if is_ipv6(host) else AddressFamily.IPV4


# -- the server ------------------------------------------------------------------------------


class ServerRandom(Protocol):
    """What the server draws randomness from: relay ports (RFC 8656 §7.2) and the transaction
    ids of the indications it sends. ``random.SystemRandom`` and ``random.Random`` fit."""

    def getrandbits(self, k: int, /) -> int: ...

    def randrange(self, stop: int, /) -> int: ...


class TurnServer:
    """The TURN server state machine (RFC 8656), sans I/O.

    ``secret`` keys the stateless nonces (16+ random bytes; a restart invalidates old nonces,
    which clients handle with one 438 round trip). ``rng`` picks relay ports and indication
    transaction ids (pass ``random.SystemRandom()`` in production; tests pass a seeded
    ``random.Random``). ``wall_offset`` is added to ``now`` to get Unix time for REST-API
    credential expiry; the shell keeps it current.
    """

    def __init__(
        self,
        options: TurnServerOptions,
        secret: bytes,
        *,
        rng: ServerRandom,
        wall_offset: float = 0.0,
    ) -> None:
        self.options = options
        self.limits = options.limits
        self.counters = TurnServerCounters()
        self.wall_offset = wall_offset
        self._rng = rng
        self._nonces = NonceIssuer(secret, options.nonce_lifetime)
        self._credentials = CredentialStore(options.realm, options.users, options.auth_secret)
        relay_addresses = [options.relay_address]
        if options.extra_relay_address is not None:
            relay_addresses.append(options.extra_relay_address)
        # The relay addresses are never peers, whatever own_addresses says (RFC 8656 §21.3).
        self._policy = PeerPolicy.build(
            options.allow_peers, (*options.own_addresses, *relay_addresses)
        )
        self._relay_hosts: dict[int, str] = {}
        """The relay address of each family the server relays in."""
        for raw in (options.relay_address, options.extra_relay_address):
            if raw is None:
                continue
            host = str(ipaddress.ip_address(raw))
            if _family_of(host) in self._relay_hosts:
                raise ValueError("the relay addresses must be of different families")
            self._relay_hosts[_family_of(host)] = host
        low, high = options.relay_ports
        if not 0 < low <= high <= 65535:
            raise ValueError(f"bad relay port range {low}-{high}")
        self._ports = (low, high)
        self._by_tuple: dict[FiveTuple, Allocation] = {}
        self._by_relay: dict[Address, Allocation] = {}
        self._ports_in_use: set[int] = set()
        self._per_user: dict[str, int] = {}
        self._per_ip: dict[str, int] = {}
        self._pending = 0
        # Stream 5-tuple -> time of its last authenticated request (the shell's idle timer);
        # as many entries as open connections, dropped in connection_closed.
        self._stream_progress: dict[FiveTuple, float] = {}
        limits = options.limits
        self._unauthenticated = SourceBudget(
            limits.unauthenticated_rate, limits.unauthenticated_burst, limits.max_sources
        )
        # (time, tie-breaker, allocation) per allocation's earliest expiry; an entry whose
        # time is no longer the allocation's ``wake`` is stale and dropped when met.
        self._schedule: list[tuple[float, int, Allocation]] = []
        self._schedule_seq = itertools.count()
        if not CHANNEL_MAX <= options.channel_max <= RFC5766_CHANNEL_MAX:
            raise ValueError("channel_max must be 0x4FFF-0x7FFF")
        self._channel_max_byte = options.channel_max >> 8

    # -- introspection ---------------------------------------------------------------------

    @property
    def allocations(self) -> Mapping[FiveTuple, Allocation]:
        """Live allocations by 5-tuple (read-only view for the shell and tests)."""
        return self._by_tuple

    def allocation_for_relay(self, relay: Address) -> Allocation | None:
        return self._by_relay.get(relay)

    def state_size(self) -> dict[str, int]:
        """How many state objects the server holds (for flood tests and status)."""
        allocations = list(self._by_tuple.values())
        return {
            "allocations": len(allocations),
            "pending": self._pending,
            "relays": len(self._by_relay),
            "ports": len(self._ports_in_use),
            "permissions": sum(len(a.permissions) for a in allocations),
            "channels": sum(len(a.channels) for a in allocations),
            "channel_peers": sum(len(a.channel_by_peer) for a in allocations),
            "users": len(self._per_user),
            "client_ips": len(self._per_ip),
        }

    def next_wakeup(self) -> float | None:
        """When :meth:`handle_timeout` wants to run next, or None: the earliest expiry of an
        allocation (pending or active), permission or channel. Exact: a refresh moves it."""
        schedule = self._schedule
        while schedule:
            wake, _, alloc = schedule[0]
            if alloc.wake == wake:
                return wake
            heapq.heappop(schedule)
        return None

    # -- client input ------------------------------------------------------------------------

    def handle_client(
        self, five_tuple: FiveTuple, data: bytes | bytearray | memoryview, now: float
    ) -> list[Output]:
        """One datagram (UDP) or one whole frame (TCP/TLS) from a client. Never raises on
        network input; whatever is dropped is counted."""
        if len(data) >= 4 and 0x40 <= data[0] <= self._channel_max_byte:
            out = self._client_channel_data(five_tuple, data, now)
            return [] if out is None else [out]
        if not is_stun(data):
            self.counters.dropped_not_stun += 1
            return []
        try:
            msg = Message.decode(data)
        except StunDecodeError:
            self.counters.dropped_malformed += 1
            return self._bad_request_for_header(five_tuple, data, now)
        if msg.fingerprint is not None and not msg.check_fingerprint():
            self.counters.dropped_bad_fingerprint += 1
            return []
        if msg.message_class == MessageClass.REQUEST:
            return self._request(five_tuple, msg, now)
        if msg.message_class == MessageClass.INDICATION:
            out = self._send_indication(five_tuple, msg, now)
            return [] if out is None else [out]
        self.counters.dropped_responses += 1
        return []

    def connection_closed(self, five_tuple: FiveTuple, now: float) -> list[Output]:
        """A TCP/TLS client connection ended: its allocation goes with it (RFC 8656 §5)."""
        self._stream_progress.pop(five_tuple, None)
        alloc = self._by_tuple.get(five_tuple)
        if alloc is None:
            return []
        return self._delete(alloc, "connection closed")

    # -- peer input ------------------------------------------------------------------------

    def handle_peer_data(
        self, relay: Address, peer: Address, data: bytes | bytearray | memoryview, now: float
    ) -> ToClient | None:
        """A datagram from ``peer`` on the relay socket at ``relay`` (RFC 8656 §11.3, §12.7):
        to the client as ChannelData if a channel is bound to the peer, else as a Data
        indication; dropped (and counted) without a permission."""
        alloc = self._by_relay.get(relay)
        if alloc is None or alloc.state is not AllocationState.ACTIVE or alloc.expires <= now:
            self.counters.dropped_no_allocation += 1
            return None
        if not alloc.has_permission(peer[0], now):
            self.counters.dropped_no_permission += 1
            return None
        size = len(data)
        if size > MAX_RELAY_PAYLOAD:
            self.counters.dropped_too_large += 1
            return None
        ft = alloc.five_tuple
        channel = alloc.channel_by_peer.get(peer)
        if channel is not None and channel.expires > now:
            head = ((channel.number << 16) | size).to_bytes(4, "big")
            pad = _PAD[size & 3] if ft.transport is not Transport.UDP else b""
            wire = b"".join((head, data, pad))
        else:
            tid = self._rng.getrandbits(96).to_bytes(12, "big")
            wire = Message.indication(
                Method.DATA, tid, [(AttrType.XOR_PEER_ADDRESS, peer), (AttrType.DATA, bytes(data))]
            ).encode()
        self.counters.relayed_to_client += 1
        self.counters.relayed_to_client_bytes += size
        alloc.bytes_to_client += size
        return ToClient(ft, wire)

    # -- routes for a shell's batches ---------------------------------------------------------

    def channel_route(
        self, five_tuple: FiveTuple, number: int, now: float
    ) -> tuple[Address, Address] | None:
        """Where ChannelData on channel ``number`` from the client at ``five_tuple`` goes at
        ``now``: ``(relay, peer)`` when the allocation is active, the channel bound and the
        peer permitted (RFC 8656 §12.6) — else None, and the message must go through
        :meth:`handle_client`, which drops and counts it.

        For a shell that relays a batch received at one ``now`` itself: the answer holds for
        that batch until the shell hands the core anything else (which may change the state),
        so it may be reused for the batch's further ChannelData of the same client and channel.
        Every message forwarded that way must pass the length check of :meth:`handle_client`
        and be counted in ``counters.relayed_to_peer`` / ``relayed_to_peer_bytes``.
        """
        alloc = self._by_tuple.get(five_tuple)
        if alloc is None or alloc.state is not AllocationState.ACTIVE or alloc.expires <= now:
            return None
        channel = alloc.channels.get(number)
        if channel is None or channel.expires <= now:
            return None
        if not alloc.has_permission(channel.peer[0], now):
            return None
        if alloc.relay_other is None:
            return alloc.relay, channel.peer
        relay = alloc.relay_for(channel.peer[0])
        return None if relay is None else (relay, channel.peer)

    def peer_route(self, relay: Address, peer: Address, now: float) -> tuple[FiveTuple, int] | None:
        """Where a datagram from ``peer`` on the relay socket at ``relay`` goes at ``now`` when
        it can go as ChannelData over UDP: ``(five_tuple, channel number)`` when the
        allocation is active, its client on UDP, the peer permitted and a channel bound to it
        (RFC 8656 §12.7). Else None: use :meth:`handle_peer_data` (a Data indication, a stream
        client or a drop, counted there).

        Reusable within one batch like :meth:`channel_route`; every datagram forwarded that
        way must be at most :data:`MAX_RELAY_PAYLOAD` bytes and be counted in
        ``counters.relayed_to_client`` / ``relayed_to_client_bytes``.
        """
        alloc = self._by_relay.get(relay)
        if alloc is None or alloc.state is not AllocationState.ACTIVE or alloc.expires <= now:
            return None
        ft = alloc.five_tuple
        if ft.transport is not Transport.UDP or not alloc.has_permission(peer[0], now):
            return None
        channel = alloc.channel_by_peer.get(peer)
        if channel is None or channel.expires <= now:
            return None
        return ft, channel.number

    # -- shell feedback ----------------------------------------------------------------------

    def relay_opened(self, relay: Address, ok: bool, now: float) -> list[Output]:
        """The shell's answer to :class:`OpenRelay`: the socket at ``relay`` is bound (ok) or
        could not be (port taken by someone else, ...)."""
        alloc = self._by_relay.get(relay)
        if alloc is None or alloc.state is not AllocationState.PENDING:
            return [CloseRelay(relay)] if ok else []
        if ok:
            alloc.opening -= 1
            if alloc.opening > 0:
                return []  # the other family's socket is still being bound
            alloc.state = AllocationState.ACTIVE
            self._pending -= 1
            alloc.expires = now + alloc.lifetime
            self._reschedule(alloc)
            self.counters.allocations_created += 1
            log.info(
                "allocation created",
                client=str(alloc.five_tuple),
                relay=" ".join(format_address(r) for r in alloc.relays),
                user=alloc.username,
                lifetime=alloc.lifetime,
            )
            return [self._allocate_success(alloc)]
        self.counters.relay_bind_failures += 1
        del self._by_relay[relay]
        self._ports_in_use.discard(relay[1])
        port = None
        if alloc.bind_attempts < self.limits.max_bind_attempts:
            port = self._choose_port(alloc.even_port)
        if port is None:
            # Put it back so that _delete can release everything in one place.
            self._by_relay[relay] = alloc
            self._ports_in_use.add(relay[1])
            self.counters.capacity_rejections += 1
            request = Message(Method.ALLOCATE, MessageClass.REQUEST, alloc.allocate_tid)
            response = self._encode_error(request, ErrorCode.INSUFFICIENT_CAPACITY, alloc)
            # The other family's socket of a dual allocation may be bound already: close it.
            closes = [
                out
                for out in self._delete(alloc, "no relay port")
                if isinstance(out, CloseRelay) and out.relay != relay
            ]
            return [ToClient(alloc.five_tuple, response), *closes]
        alloc.bind_attempts += 1
        new = (relay[0], port)
        if relay == alloc.relay:
            alloc.relay = new
        else:
            alloc.relay_other = new
        self._by_relay[new] = alloc
        self._ports_in_use.add(port)
        return [OpenRelay(new)]

    # -- timers ----------------------------------------------------------------------------

    def handle_timeout(self, now: float) -> list[Output]:
        """Expire allocations, permissions and channels whose time has come (RFC 8656 §6,
        §9, §12); returns the relay sockets to close. Only allocations with something due are
        looked at. Expiry is exact whenever this runs: the request and data paths compare
        expiry times with ``now`` themselves, so this only frees what has already ended."""
        out: list[Output] = []
        schedule = self._schedule
        while schedule and schedule[0][0] <= now:
            wake, _, alloc = heapq.heappop(schedule)
            if alloc.wake != wake:
                continue
            alloc.wake = None
            if alloc.expires <= now:
                self.counters.allocations_expired += 1
                out.extend(self._delete(alloc, "expired"))
                continue
            self._purge(alloc, now)
            self._reschedule(alloc)
        return out

    # -- requests ----------------------------------------------------------------------------

    def _may_answer_unauthenticated(self, ft: FiveTuple, now: float) -> bool:
        """Spend one of the client source's unauthenticated answers (UDP only: a stream's
        source is proven by its handshake). False: over budget, drop the request (counted).

        A response without integrity goes to whatever source address the request claimed, so
        a spoofed request turns the server into a reflector, and an Allocate's 401 is several
        times larger than the request; the budget bounds what one (victim) address receives
        (:attr:`ServerLimits.unauthenticated_rate`, :attr:`ServerLimits.unauthenticated_burst`)."""
        if ft.transport is not Transport.UDP:
            return True
        if self._unauthenticated.allow(source_key(ft.client[0]), now):
            return True
        self.counters.unauthenticated_rate_limited += 1
        return False

    def _request(self, ft: FiveTuple, msg: Message, now: float) -> list[Output]:
        if msg.method == Method.BINDING:
            self.counters.binding_requests += 1
            if not self._may_answer_unauthenticated(ft, now):
                return []
            response = binding_response(msg, ft.client, software=self.options.software)
            if response is None:
                return []
            self._count_response(response)
            return [ToClient(ft, response.encode(fingerprint=True))]
        self.counters.requests += 1
        if msg.method not in _TURN_METHODS:
            self.counters.bad_requests += 1
            if not self._may_answer_unauthenticated(ft, now):
                return []
            return [ToClient(ft, self._encode_error(msg, ErrorCode.BAD_REQUEST))]
        auth = self._authenticate(ft, msg, now)
        if isinstance(auth, bytes):
            if not self._may_answer_unauthenticated(ft, now):
                return []
            return [ToClient(ft, auth)]
        unknown = unknown_comprehension_required(msg)
        if unknown:
            self.counters.unknown_attributes += 1
            response = error_response(
                msg,
                ErrorCode.UNKNOWN_ATTRIBUTE,
                unknown_attributes=unknown,
                attributes=self._software(),
            )
            return [ToClient(ft, self._encode(response, auth))]
        try:
            if msg.method == Method.ALLOCATE:
                return self._allocate(ft, msg, auth, now)
            if msg.method == Method.REFRESH:
                return self._refresh(ft, msg, auth, now)
            if msg.method == Method.CREATE_PERMISSION:
                return [self._create_permission(ft, msg, auth, now)]
            return [self._channel_bind(ft, msg, auth, now)]
        except _Reject as reject:
            response = error_response(msg, reject.code, reject.reason, attributes=self._software())
            self._count_error(reject.code)
            return [ToClient(ft, self._encode(response, auth))]

    def _authenticate(self, ft: FiveTuple, msg: Message, now: float) -> _Auth | bytes:
        """RFC 8489 §9.2.4 (long-term credentials), server side. Returns the credentials, or
        the encoded error response (401, 400, 438), which carries no integrity."""
        challenge: list[tuple[int, Any]] = []
        if not msg.has_integrity:
            self.counters.unauthenticated += 1
            return self._challenge(ft, msg, ErrorCode.UNAUTHENTICATED, now)
        username = msg.username
        if username is None and msg.userhash is not None:
            username = self._credentials.username_for_hash(msg.userhash)
            if username is None:
                self.counters.integrity_failures += 1
                return self._challenge(ft, msg, ErrorCode.UNAUTHENTICATED, now)
        if username is None or msg.realm is None or msg.nonce is None:
            self.counters.bad_requests += 1
            return self._encode_error(msg, ErrorCode.BAD_REQUEST, attributes=challenge)
        algorithms = msg.password_algorithms
        algorithm = msg.password_algorithm
        chosen = int(PasswordAlgorithm.MD5)
        if algorithms is not None or algorithm is not None:
            if (
                algorithms is None
                or algorithm is None
                or tuple(int(a.algorithm) for a in algorithms) != _OFFERED_IDS
                or int(algorithm.algorithm) not in _OFFERED_IDS
                or algorithm.parameters
            ):
                self.counters.bad_requests += 1
                return self._encode_error(msg, ErrorCode.BAD_REQUEST)
            chosen = int(algorithm.algorithm)
        if not self._nonces.valid(msg.nonce, now, str(ft)):
            self.counters.stale_nonces += 1
            return self._challenge(ft, msg, ErrorCode.STALE_NONCE, now)
        key = None
        if msg.realm == self.options.realm:
            key = self._credentials.key(username, now + self.wall_offset, chosen)
        if key is None or not msg.check_integrity(key):
            self.counters.integrity_failures += 1
            return self._challenge(ft, msg, ErrorCode.UNAUTHENTICATED, now)
        if ft.transport is not Transport.UDP:
            self._stream_progress[ft] = now
        return _Auth(
            username,
            key,
            msg.message_integrity_sha256 is not None,
            msg.fingerprint is not None,
        )

    def stream_authenticated(self, five_tuple: FiveTuple) -> bool:
        """Has the TCP/TLS connection ``five_tuple`` made an authenticated request?"""
        return five_tuple in self._stream_progress

    def stream_deadline(self, five_tuple: FiveTuple, opened: float, idle: float) -> float:
        """When a TCP/TLS connection that opened at ``opened`` may be closed as idle (RFC 8656
        §5 leaves it to the server): ``idle`` seconds after its last authenticated request (or
        its opening), and never while its allocation lives. Unauthenticated traffic — a
        Binding, a 401 — does not keep a connection open; the shell asks again at the deadline,
        which a Refresh may have moved."""
        deadline = max(opened, self._stream_progress.get(five_tuple, opened)) + idle
        alloc = self._by_tuple.get(five_tuple)
        if alloc is not None and alloc.state is not AllocationState.DELETED:
            deadline = max(deadline, alloc.expires)
        return deadline

    def _challenge(self, ft: FiveTuple, msg: Message, code: int, now: float) -> bytes:
        """401 or 438 with REALM, a fresh NONCE and PASSWORD-ALGORITHMS (RFC 8489 §9.2.4)."""
        attrs: list[tuple[int, Any]] = [
            (AttrType.REALM, self.options.realm),
            (AttrType.NONCE, self._nonces.issue(now, str(ft))),
            (AttrType.PASSWORD_ALGORITHMS, OFFERED_ALGORITHMS),
        ]
        return self._encode_error(msg, code, attributes=attrs)

    # -- Allocate (RFC 8656 §7.2) ------------------------------------------------------------

    def _allocate(self, ft: FiveTuple, msg: Message, auth: _Auth, now: float) -> list[Output]:
        existing = self._by_tuple.get(ft)
        if existing is not None:
            if existing.allocate_tid == msg.transaction_id and existing.username == auth.username:
                if existing.state is AllocationState.ACTIVE:
                    # A retransmission of the request that made it: the same answer (§7.2).
                    return [self._allocate_success(existing)]
                return []  # still binding its relay: the answer follows
            self.counters.allocation_mismatch += 1
            raise _Reject(ErrorCode.ALLOCATION_MISMATCH)
        transport = msg.requested_transport
        if transport is None:
            raise _Reject(ErrorCode.BAD_REQUEST, "REQUESTED-TRANSPORT missing")
        if transport != TRANSPORT_UDP:
            raise _Reject(ErrorCode.UNSUPPORTED_TRANSPORT_PROTOCOL)
        requested_family = msg.requested_address_family
        additional_family = msg.additional_address_family
        if AttrType.RESERVATION_TOKEN in msg:
            if AttrType.EVEN_PORT in msg or requested_family is not None:
                raise _Reject(ErrorCode.BAD_REQUEST)
            self.counters.capacity_rejections += 1
            raise _Reject(ErrorCode.INSUFFICIENT_CAPACITY, "no such reservation")
        even_port = msg.even_port
        if even_port:
            self.counters.capacity_rejections += 1
            raise _Reject(ErrorCode.INSUFFICIENT_CAPACITY, "port reservations not supported")
        if requested_family is not None and additional_family is not None:
            raise _Reject(ErrorCode.BAD_REQUEST)
        if additional_family is not None and additional_family != AddressFamily.IPV6:
            raise _Reject(ErrorCode.BAD_REQUEST)
        want = requested_family if requested_family is not None else AddressFamily.IPV4
        families = [want] if additional_family is None else [want, additional_family]
        hosts = [self._relay_hosts[f] for f in families if f in self._relay_hosts]
        if not hosts:
            raise _Reject(ErrorCode.ADDRESS_FAMILY_NOT_SUPPORTED)
        # A client that asked with the pre-RFC code point understands only its answer's.
        draft = AttrType.ADDITIONAL_ADDRESS_FAMILY not in msg and additional_family is not None
        address_error = None
        missing = [f for f in families if f not in self._relay_hosts]
        if missing:  # a dual request the server serves in one family (RFC 8656 §7.2)
            shown = "IPv6" if missing[0] == AddressFamily.IPV6 else "IPv4"
            address_error = AddressErrorValue(
                missing[0], ErrorCode.ADDRESS_FAMILY_NOT_SUPPORTED, f"{shown} not supported"
            )
        quota_user = self._quota_user(auth.username)
        if self._per_user.get(quota_user, 0) >= self.options.user_quota:
            self.counters.quota_rejections += 1
            raise _Reject(ErrorCode.ALLOCATION_QUOTA_REACHED)
        client_ip = source_key(ft.client[0])
        if self._per_ip.get(client_ip, 0) >= self.limits.max_allocations_per_ip:
            self.counters.quota_rejections += 1
            raise _Reject(ErrorCode.ALLOCATION_QUOTA_REACHED, "too many allocations from here")
        if (
            len(self._by_tuple) >= self.limits.max_allocations
            or self._pending >= self.limits.max_pending
        ):
            self.counters.capacity_rejections += 1
            raise _Reject(ErrorCode.INSUFFICIENT_CAPACITY)
        ports: list[int] = []
        for _host in hosts:
            port = self._choose_port(even_port is not None)
            if port is None:
                self._ports_in_use.difference_update(ports)
                self.counters.capacity_rejections += 1
                raise _Reject(ErrorCode.INSUFFICIENT_CAPACITY, "no relay port free")
            ports.append(port)
            self._ports_in_use.add(port)
        relays = [(host, port) for host, port in zip(hosts, ports, strict=True)]
        lifetime = self._lifetime(msg.lifetime)
        alloc = Allocation(
            five_tuple=ft,
            username=auth.username,
            quota_user=quota_user,
            key=auth.key,
            sha256=auth.sha256,
            relay=relays[0],
            relay_other=relays[1] if len(relays) > 1 else None,
            opening=len(relays),
            address_error_attr=(
                AttrType.ADDRESS_ERROR_CODE_DRAFT if draft else AttrType.ADDRESS_ERROR_CODE
            ),
            lifetime=lifetime,
            expires=now + PENDING_TIMEOUT,
            allocate_tid=msg.transaction_id,
            address_error=address_error,
            fingerprint=auth.fingerprint,
            even_port=even_port is not None,
        )
        self._by_tuple[ft] = alloc
        for relay in relays:
            self._by_relay[relay] = alloc
        self._per_user[quota_user] = self._per_user.get(quota_user, 0) + 1
        self._per_ip[client_ip] = self._per_ip.get(client_ip, 0) + 1
        self._pending += 1
        self._reschedule(alloc)
        return [OpenRelay(relay) for relay in relays]

    def _allocate_success(self, alloc: Allocation) -> ToClient:
        request = Message(Method.ALLOCATE, MessageClass.REQUEST, alloc.allocate_tid)
        attrs: list[tuple[int, Any]] = [
            *((AttrType.XOR_RELAYED_ADDRESS, relay) for relay in alloc.relays),
            (AttrType.LIFETIME, alloc.lifetime),
            (AttrType.XOR_MAPPED_ADDRESS, alloc.five_tuple.client),
        ]
        if alloc.address_error is not None:
            attrs.append((alloc.address_error_attr, alloc.address_error))
        attrs.extend(self._software())
        response = request.success(attrs)
        self.counters.success_responses += 1
        return ToClient(alloc.five_tuple, self._encode_for(response, alloc))

    # -- Refresh (RFC 8656 §8) -------------------------------------------------------------

    def _refresh(self, ft: FiveTuple, msg: Message, auth: _Auth, now: float) -> list[Output]:
        alloc = self._owned_allocation(ft, auth, now)
        family = msg.requested_address_family
        if family is not None and all(_family_of(r[0]) != family for r in alloc.relays):
            raise _Reject(ErrorCode.PEER_ADDRESS_FAMILY_MISMATCH)
        requested = msg.lifetime
        closed: list[Output] = []
        if requested == 0:
            closed = self._delete(alloc, "refreshed to 0")
            lifetime = 0
        else:
            lifetime = self._lifetime(requested, floor=False)
            alloc.lifetime = lifetime
            alloc.expires = now + lifetime
            self._reschedule(alloc)
        response = msg.success([(AttrType.LIFETIME, lifetime), *self._software()])
        self.counters.success_responses += 1
        return [ToClient(ft, self._encode(response, auth)), *closed]

    # -- CreatePermission (RFC 8656 §10.2) -----------------------------------------------------

    def _create_permission(self, ft: FiveTuple, msg: Message, auth: _Auth, now: float) -> ToClient:
        alloc = self._owned_allocation(ft, auth, now)
        peers = msg.xor_peer_addresses
        if not peers:
            raise _Reject(ErrorCode.BAD_REQUEST, "XOR-PEER-ADDRESS missing")
        hosts: list[str] = []
        for host, _port in peers:
            self._check_peer(alloc, host)
            if host not in hosts:
                hosts.append(host)
        self._purge(alloc, now)
        new = sum(1 for h in hosts if h not in alloc.permissions)
        if len(alloc.permissions) + new > self.limits.max_permissions:
            self.counters.capacity_rejections += 1
            raise _Reject(ErrorCode.INSUFFICIENT_CAPACITY, "too many permissions")
        expires = now + PERMISSION_LIFETIME
        for host in hosts:
            alloc.permissions[host] = expires
        self._reschedule(alloc)
        response = msg.success(self._software())
        self.counters.success_responses += 1
        return ToClient(ft, self._encode(response, auth))

    # -- ChannelBind (RFC 8656 §12.2) ----------------------------------------------------------

    def _channel_bind(self, ft: FiveTuple, msg: Message, auth: _Auth, now: float) -> ToClient:
        alloc = self._owned_allocation(ft, auth, now)
        number = msg.channel_number
        peer = msg.xor_peer_address
        if number is None or peer is None:
            raise _Reject(ErrorCode.BAD_REQUEST, "CHANNEL-NUMBER or XOR-PEER-ADDRESS missing")
        if not CHANNEL_MIN <= number <= self.options.channel_max:
            raise _Reject(ErrorCode.BAD_REQUEST, "channel number out of range")
        self._check_peer(alloc, peer[0])
        self._purge(alloc, now)
        bound = alloc.channels.get(number)
        if bound is not None and bound.peer != peer:
            raise _Reject(ErrorCode.BAD_REQUEST, "channel bound to another peer")
        by_peer = alloc.channel_by_peer.get(peer)
        if by_peer is not None and by_peer.number != number:
            raise _Reject(ErrorCode.BAD_REQUEST, "peer bound to another channel")
        if bound is None and len(alloc.channels) >= self.limits.max_channels:
            self.counters.capacity_rejections += 1
            raise _Reject(ErrorCode.INSUFFICIENT_CAPACITY, "too many channels")
        if (
            peer[0] not in alloc.permissions
            and len(alloc.permissions) >= self.limits.max_permissions
        ):
            self.counters.capacity_rejections += 1
            raise _Reject(ErrorCode.INSUFFICIENT_CAPACITY, "too many permissions")
        expires = now + CHANNEL_LIFETIME
        if bound is None:
            bound = Channel(number, peer, expires)
            alloc.channels[number] = bound
            alloc.channel_by_peer[peer] = bound
        else:
            bound.expires = expires
        alloc.permissions[peer[0]] = max(
            alloc.permissions.get(peer[0], 0.0), now + PERMISSION_LIFETIME
        )
        self._reschedule(alloc)
        response = msg.success(self._software())
        self.counters.success_responses += 1
        return ToClient(ft, self._encode(response, auth))

    # -- data from the client ------------------------------------------------------------------

    def _send_indication(self, ft: FiveTuple, msg: Message, now: float) -> ToPeer | None:
        """A Send indication (RFC 8656 §11.2): relay DATA to XOR-PEER-ADDRESS if a permission
        exists; otherwise (or when malformed) drop it silently."""
        if msg.method != Method.SEND or unknown_comprehension_required(msg):
            self.counters.dropped_indications += 1
            return None
        alloc = self._by_tuple.get(ft)
        if alloc is None or alloc.state is not AllocationState.ACTIVE or alloc.expires <= now:
            self.counters.dropped_no_allocation += 1
            return None
        peer = msg.xor_peer_address
        data = msg.data
        relay = None if peer is None else alloc.relay_for(peer[0])
        if peer is None or data is None or relay is None:
            self.counters.dropped_indications += 1
            return None
        if not alloc.has_permission(peer[0], now):
            self.counters.dropped_no_permission += 1
            return None
        self.counters.relayed_to_peer += 1
        self.counters.relayed_to_peer_bytes += len(data)
        alloc.bytes_to_peer += len(data)
        return ToPeer(relay, peer, data)

    def _client_channel_data(
        self, ft: FiveTuple, data: bytes | bytearray | memoryview, now: float
    ) -> ToPeer | None:
        """ChannelData from the client (RFC 8656 §12.6): relay to the channel's peer."""
        size = len(data)
        number = (data[0] << 8) | data[1]
        length = (data[2] << 8) | data[3]
        end = 4 + length
        if end > size or size - end > 3:
            self.counters.dropped_malformed += 1
            return None
        alloc = self._by_tuple.get(ft)
        if alloc is None or alloc.state is not AllocationState.ACTIVE or alloc.expires <= now:
            self.counters.dropped_no_allocation += 1
            return None
        channel = alloc.channels.get(number)
        if channel is None or channel.expires <= now:
            self.counters.dropped_unbound_channel += 1
            return None
        if not alloc.has_permission(channel.peer[0], now):
            self.counters.dropped_no_permission += 1
            return None
        relay = alloc.relay if alloc.relay_other is None else alloc.relay_for(channel.peer[0])
        if relay is None:  # not reached: ChannelBind checked the peer's family
            self.counters.dropped_unbound_channel += 1
            return None
        self.counters.relayed_to_peer += 1
        self.counters.relayed_to_peer_bytes += length
        alloc.bytes_to_peer += length
        return ToPeer(relay, channel.peer, bytes(data[4:end]))

    # -- helpers ------------------------------------------------------------------------------

    def _owned_allocation(self, ft: FiveTuple, auth: _Auth, now: float) -> Allocation:
        """The active allocation of ``ft``, made by the same user (RFC 8656 §5), or raise."""
        alloc = self._by_tuple.get(ft)
        if alloc is None or alloc.state is not AllocationState.ACTIVE or alloc.expires <= now:
            self.counters.allocation_mismatch += 1
            raise _Reject(ErrorCode.ALLOCATION_MISMATCH)
        if alloc.username != auth.username:
            self.counters.wrong_credentials += 1
            raise _Reject(ErrorCode.WRONG_CREDENTIALS)
        return alloc

    def _check_peer(self, alloc: Allocation, host: str) -> None:
        if alloc.relay_for(host) is None:
            raise _Reject(ErrorCode.PEER_ADDRESS_FAMILY_MISMATCH)
        if not self._policy.allowed(host):
            self.counters.forbidden_peers += 1
            raise _Reject(ErrorCode.FORBIDDEN, "peer address not allowed")

    def peer_allowed(self, host: str) -> bool:
        """True if the relay policy lets clients reach ``host``."""
        return self._policy.allowed(host)

    def _lifetime(self, requested: int | None, *, floor: bool = True) -> int:
        """RFC 8656 §7.2 / §8: the default when absent; else the request capped at the
        maximum (and, for Allocate, raised to the default)."""
        maximum = self.options.max_lifetime
        if requested is None:
            return min(DEFAULT_LIFETIME, maximum)
        if floor:
            requested = max(requested, DEFAULT_LIFETIME)
        return max(1, min(requested, maximum))

    def _choose_port(self, even: bool) -> int | None:
        """A free port from the relay range, random (RFC 8656 §7.2 asks for unpredictable
        ports); None if none is free."""
        low, high = self._ports
        if even:
            low += low & 1
            if low > high:
                return None
            count = (high - low) // 2 + 1
        else:
            count = high - low + 1
        step = 2 if even else 1
        in_use = self._ports_in_use
        for _ in range(16):
            port = low + step * self._rng.randrange(count)
            if port not in in_use:
                return port
        start = self._rng.randrange(count)
        for i in range(count):
            port = low + step * ((start + i) % count)
            if port not in in_use:
                return port
        return None

    def _quota_user(self, username: str) -> str:
        """Quota is per user; a REST-API ``expiry:name`` counts as ``name``."""
        head, sep, name = username.partition(":")
        if sep and head.isascii() and head.isdigit() and name:
            return name
        return username

    def _delete(self, alloc: Allocation, reason: str) -> list[Output]:
        if alloc.state is AllocationState.DELETED:
            return []
        if alloc.state is AllocationState.PENDING:
            self._pending -= 1
        alloc.state = AllocationState.DELETED
        alloc.wake = None
        self._by_tuple.pop(alloc.five_tuple, None)
        for relay in alloc.relays:
            if self._by_relay.get(relay) is alloc:
                del self._by_relay[relay]
                self._ports_in_use.discard(relay[1])
        for table, name in (
            (self._per_user, alloc.quota_user),
            (self._per_ip, source_key(alloc.five_tuple.client[0])),
        ):
            left = table.get(name, 0) - 1
            if left > 0:
                table[name] = left
            else:
                table.pop(name, None)
        alloc.permissions.clear()
        alloc.channels.clear()
        alloc.channel_by_peer.clear()
        self.counters.allocations_deleted += 1
        log.info("allocation deleted", client=str(alloc.five_tuple), reason=reason)
        return [CloseRelay(relay) for relay in alloc.relays]

    def _purge(self, alloc: Allocation, now: float) -> None:
        """Drop expired permissions and channels of one allocation."""
        expired = [h for h, t in alloc.permissions.items() if t <= now]
        for host in expired:
            del alloc.permissions[host]
        self.counters.permissions_expired += len(expired)
        dead = [c for c in alloc.channels.values() if c.expires <= now]
        for channel in dead:
            del alloc.channels[channel.number]
            alloc.channel_by_peer.pop(channel.peer, None)
        self.counters.channels_expired += len(dead)

    def _reschedule(self, alloc: Allocation) -> None:
        """Put ``alloc`` in the schedule at its earliest expiry, after that may have moved.
        Cost: the allocation's permissions and channels (bounded by the limits); the schedule
        is rebuilt when stale entries outnumber live ones, so refreshes cannot grow it."""
        if alloc.state is AllocationState.DELETED:
            return
        wake = alloc.expires
        for expiry in alloc.permissions.values():
            if expiry < wake:
                wake = expiry
        for channel in alloc.channels.values():
            if channel.expires < wake:
                wake = channel.expires
        if wake == alloc.wake:
            return
        alloc.wake = wake
        schedule = self._schedule
        heapq.heappush(schedule, (wake, next(self._schedule_seq), alloc))
        if len(schedule) > 2 * len(self._by_tuple) + 64:
            seq = self._schedule_seq
            schedule[:] = [
                (a.wake, next(seq), a) for a in self._by_tuple.values() if a.wake is not None
            ]
            heapq.heapify(schedule)

    def _software(self) -> list[tuple[int, Any]]:
        software = self.options.software
        return [(AttrType.SOFTWARE, software)] if software else []

    def _count_response(self, response: Message) -> None:
        if response.message_class == MessageClass.SUCCESS:
            self.counters.success_responses += 1
        else:
            self.counters.error_responses += 1

    def _count_error(self, code: int) -> None:
        self.counters.error_responses += 1
        if code == ErrorCode.BAD_REQUEST:
            self.counters.bad_requests += 1

    def _encode(self, response: Message, auth: _Auth) -> bytes:
        """Integrity-protect a response with the request's key and integrity attribute
        (RFC 8489 §9.2.4)."""
        return response.encode(
            auth.key, sha1=not auth.sha256, sha256=auth.sha256, fingerprint=auth.fingerprint
        )

    def _encode_for(self, response: Message, alloc: Allocation) -> bytes:
        return response.encode(
            alloc.key, sha1=not alloc.sha256, sha256=alloc.sha256, fingerprint=alloc.fingerprint
        )

    def _encode_error(
        self,
        msg: Message,
        code: int,
        alloc: Allocation | None = None,
        attributes: Iterable[tuple[int, Any]] = (),
    ) -> bytes:
        """An unauthenticated error response (or, with ``alloc``, one signed with its key).
        Unauthenticated ones carry no SOFTWARE: what a spoofed request reflects stays small."""
        extra = [*attributes, *self._software()] if alloc is not None else list(attributes)
        response = error_response(msg, code, attributes=extra)
        self.counters.error_responses += 1
        if alloc is not None:
            return self._encode_for(response, alloc)
        return response.encode(fingerprint=msg.fingerprint is not None)

    def _bad_request_for_header(
        self, ft: FiveTuple, data: bytes | bytearray | memoryview, now: float
    ) -> list[Output]:
        """400 for a request whose header is sound but whose attributes are not (RFC 8489
        §6.3.1); anything worse is dropped."""
        if message_length(data) != len(data) or len(data) & 3:
            return []
        method, klass = split_message_type((data[0] << 8) | data[1])
        if klass != MessageClass.REQUEST:
            return []
        header = Message(method, klass, bytes(data[8:20]))
        self.counters.bad_requests += 1
        if not self._may_answer_unauthenticated(ft, now):
            return []
        return [ToClient(ft, self._encode_error(header, ErrorCode.BAD_REQUEST))]

"""Sans-I/O TURN client: one allocation on one TURN server (RFC 8656).

:class:`TurnClient` never touches a socket or a clock. The I/O layer feeds it what the server
sent and the current time, and takes back bytes to send to the server, events, and the time
it next wants :meth:`TurnClient.handle_timeout`::

    client = TurnClient(server, "user", "pass", stream=False, random=os.urandom)
    client.allocate(now)
    # loop:
    for data in client.pop_transmits(): sock.sendto(data, server)
    for event in client.pop_events(): ...          # AllocationSucceeded, PeerData, ...
    client.handle_datagram(datagram, now)         # UDP; or handle_stream_data(chunk, now)
    client.handle_timeout(now)                    # at client.next_wakeup()
    wire = client.send(peer, payload, now)        # relay data: send `wire` to the server

What it implements:

- Allocate (§7.1-§7.3) with REQUESTED-TRANSPORT UDP, long-term credentials (RFC 8489 §9.2):
  the first request goes without credentials, the 401 brings REALM and NONCE, the retry is
  signed. If the 401 announces the RFC 8489 security features (the "obMatJos2" nonce cookie,
  §9.2) with PASSWORD-ALGORITHMS, the first algorithm we support is chosen (SHA-256 or MD5,
  §9.2.4), echoed with PASSWORD-ALGORITHM(S), and requests carry MESSAGE-INTEGRITY-SHA256;
  otherwise the key is MD5-derived and requests carry MESSAGE-INTEGRITY. 438 Stale Nonce is
  retried with the new nonce (§9.2.5). Errors end the attempt with :class:`AllocationFailed`
  and a one-line reason (see :data:`ERROR_HINTS`).
- Address families (§7.1, §18.11, §18.12): ``family`` asks for a relayed address of that
  family (REQUESTED-ADDRESS-FAMILY; IPv4 is the servers' default), ``dual=True`` for an IPv4
  and an IPv6 one (ADDITIONAL-ADDRESS-FAMILY IPv6). A dual allocation that the server could
  make in one family only succeeds with that one and reports the other's ADDRESS-ERROR-CODE
  (:attr:`TurnClient.address_error`). The dual request carries the attribute under its
  pre-RFC code point too (0x8032, and 0x8033 is read for the error), the only one coturn 4.6
  knows.
- Refresh (§8) before the allocation lifetime runs out (:func:`refresh_delay`); deallocation
  with LIFETIME 0 (:meth:`TurnClient.close`).
- CreatePermission (§9) and its refresh; ChannelBind (§11) on channels 0x4000-0x4FFF and its
  refresh, which also refreshes the peer's permission (§11.2).
- Send and Data indications (§10) and ChannelData (§12), padded to 4 bytes on streams (§12.5).
- Over TCP/TLS (``stream=True``) requests are sent once (RFC 8489 §6.2.2: no
  retransmissions, 39.5 s timeout) and the byte stream is cut into frames by
  :class:`p2ptun.turn.client_stream.StreamFramer`.

The server's permission and channel lifetimes are not announced on the wire (§9, §11), so the
refresh intervals are parameters with the RFC's values as defaults: permissions last 300 s and
are refreshed every 240 s; channels last 600 s and are refreshed every 480 s.
"""

from __future__ import annotations

import base64
import binascii
import enum
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from p2ptun import __version__
from p2ptun.addr import Address, format_address
from p2ptun.errors import DecodeError, LocalProtocolError
from p2ptun.log import get_logger
from p2ptun.stun import (
    CHANNEL_MAX,
    CHANNEL_MIN,
    TRANSPORT_UDP,
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
    TransactionManager,
    TransactionOutcome,
    TransactionState,
    decode_channel_data,
    encode_channel_data,
    is_channel_data,
    is_stun,
    long_term_key,
)
from p2ptun.stun.transaction import UNAUTHENTICATED_ERRORS
from p2ptun.turn.client_stream import StreamFramer

log = get_logger("turn.client")

#: SOFTWARE sent in Allocate requests (RFC 8489 §14.14).
SOFTWARE = f"p2ptun {__version__}"
#: RFC 8656 §3.9 / §7.2: the default allocation lifetime.
DEFAULT_LIFETIME = 600
#: RFC 8656 §9: permissions last 300 s; refreshed a minute early.
PERMISSION_LIFETIME = 300.0
PERMISSION_REFRESH = 240.0
#: RFC 8656 §11: channel bindings last 600 s; refreshed two minutes early.
CHANNEL_LIFETIME = 600.0
CHANNEL_REFRESH = 480.0
#: How often a request is re-sent with a fresh nonce after 438 Stale Nonce (RFC 8489 §9.2.5).
MAX_STALE_NONCE_RETRIES = 3
#: RFC 8489 §9.2: the NONCE prefix announcing the security-feature bits.
NONCE_COOKIE = "obMatJos2"

#: A short explanation per error code, for :class:`AllocationFailed` and friends.
ERROR_HINTS: dict[int, str] = {
    ErrorCode.TRY_ALTERNATE: "the server redirects to another server",
    ErrorCode.BAD_REQUEST: "the server found the request malformed",
    ErrorCode.UNAUTHENTICATED: "the server rejected the username or password",
    ErrorCode.FORBIDDEN: "the server refused the request",
    ErrorCode.UNKNOWN_ATTRIBUTE: "the server does not understand a required attribute",
    ErrorCode.ALLOCATION_MISMATCH: (
        "an allocation already exists for this client address and port "
        "(or none exists any more); retry from another local port"
    ),
    ErrorCode.WRONG_CREDENTIALS: "the credentials differ from those that made the allocation",
    ErrorCode.UNSUPPORTED_TRANSPORT_PROTOCOL: "the server does not relay UDP",
    ErrorCode.ADDRESS_FAMILY_NOT_SUPPORTED: "the server does not offer that address family",
    ErrorCode.PEER_ADDRESS_FAMILY_MISMATCH: "the peer's address family differs from the relay's",
    ErrorCode.ALLOCATION_QUOTA_REACHED: "the user's allocation quota on the server is used up",
    ErrorCode.SERVER_ERROR: "the server had an internal error",
    ErrorCode.INSUFFICIENT_CAPACITY: "the server has no capacity (relay ports) left",
}

#: Error codes an Allocate response may carry without MESSAGE-INTEGRITY and still end the
#: attempt. Before an allocation exists there is nothing for a forged error to take away but
#: this one attempt, and servers answer some of these before they have authenticated the user.
ALLOCATE_UNAUTHENTICATED_ERRORS: frozenset[int] = UNAUTHENTICATED_ERRORS | frozenset(
    {300, 403, 437, 441, 442, 486, 500, 508}
)


def refresh_delay(lifetime: float) -> float:
    """Seconds after a successful Allocate/Refresh at which to refresh (RFC 8656 §8: "some
    time before the lifetime expires"): a minute early for lifetimes above 5 minutes, at 80 %
    of the lifetime for shorter ones (a 600 s allocation is refreshed after 540 s, a 10 s one
    after 8 s)."""
    return lifetime - 60.0 if lifetime > 300.0 else lifetime * 0.8


class TurnStateError(LocalProtocolError, RuntimeError):
    """A :class:`TurnClient` method was called in a state that does not allow it."""


class AllocationState(enum.Enum):
    """Where the allocation stands (RFC 8656 §7, §8)."""

    #: Nothing sent yet; call :meth:`TurnClient.allocate`.
    IDLE = "idle"
    #: Allocate requests in flight (including the 401/438 retries).
    ALLOCATING = "allocating"
    #: The server holds a relayed address for us; refreshed automatically.
    ALLOCATED = "allocated"
    #: A Refresh with LIFETIME 0 is in flight.
    DEALLOCATING = "deallocating"
    #: Deallocated (or closed before it was allocated).
    CLOSED = "closed"
    #: Allocate failed, or a live allocation was lost; see the event.
    FAILED = "failed"


class PermissionState(enum.Enum):
    """A permission for one peer IP address (RFC 8656 §9)."""

    #: The first CreatePermission is in flight.
    PENDING = "pending"
    #: The server has it; refreshed automatically.
    INSTALLED = "installed"


class ChannelState(enum.Enum):
    """A channel binding (RFC 8656 §11)."""

    #: The first ChannelBind is in flight; data goes by Send indication meanwhile.
    BINDING = "binding"
    #: Bound: data goes as ChannelData; refreshed automatically.
    BOUND = "bound"


class RequestKind(enum.Enum):
    """What a request in flight is for."""

    ALLOCATE = "allocate"
    REFRESH = "refresh"
    DEALLOCATE = "deallocate"
    CREATE_PERMISSION = "create-permission"
    CHANNEL_BIND = "channel-bind"


_METHOD = {
    RequestKind.ALLOCATE: Method.ALLOCATE,
    RequestKind.REFRESH: Method.REFRESH,
    RequestKind.DEALLOCATE: Method.REFRESH,
    RequestKind.CREATE_PERMISSION: Method.CREATE_PERMISSION,
    RequestKind.CHANNEL_BIND: Method.CHANNEL_BIND,
}


# -- events ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AllocationSucceeded:
    """The server allocated a relayed transport address (RFC 8656 §7.3)."""

    relayed: Address
    mapped: Address | None
    lifetime: int
    relayed_addresses: tuple[Address, ...] = ()
    address_error: AddressErrorValue | None = None
    """In a dual allocation, why the server gave no address of one family (§7.3)."""


@dataclass(frozen=True, slots=True)
class AllocationRefreshed:
    """A Refresh succeeded; the allocation now lasts ``lifetime`` more seconds (§8)."""

    lifetime: int


@dataclass(frozen=True, slots=True)
class AllocationFailed:
    """Allocate did not succeed: ``reason`` is one line for a human; ``code`` the STUN error
    code, or None for a timeout or a broken connection."""

    reason: str
    code: int | None = None


@dataclass(frozen=True, slots=True)
class AllocationLost:
    """A live allocation is gone: its refresh failed, it expired, or the connection carrying
    it closed (RFC 8656 §3.1: over TCP/TLS the allocation dies with the connection)."""

    reason: str
    code: int | None = None


@dataclass(frozen=True, slots=True)
class Deallocated:
    """:meth:`TurnClient.close` finished: the allocation is released (or abandoned)."""


@dataclass(frozen=True, slots=True)
class PermissionCreated:
    """The server installed a permission for ``peer_ip`` (RFC 8656 §9)."""

    peer_ip: str


@dataclass(frozen=True, slots=True)
class PermissionFailed:
    """A permission could not be created or refreshed; it is dropped."""

    peer_ip: str
    reason: str
    code: int | None = None


@dataclass(frozen=True, slots=True)
class ChannelBound:
    """``channel`` now carries data to and from ``peer`` (RFC 8656 §11)."""

    peer: Address
    channel: int


@dataclass(frozen=True, slots=True)
class ChannelBindFailed:
    """A ChannelBind (first or refresh) failed; data to ``peer`` goes by Send indication."""

    peer: Address
    channel: int
    reason: str
    code: int | None = None


@dataclass(frozen=True, slots=True)
class PeerData:
    """Data relayed from ``peer``: a Data indication (``channel`` None, §10.4) or ChannelData
    (§12.6)."""

    peer: Address
    data: bytes
    channel: int | None = None


TurnEvent = (
    AllocationSucceeded
    | AllocationRefreshed
    | AllocationFailed
    | AllocationLost
    | Deallocated
    | PermissionCreated
    | PermissionFailed
    | ChannelBound
    | ChannelBindFailed
    | PeerData
)


# -- internal state --------------------------------------------------------------------------


@dataclass(slots=True)
class _Auth:
    """What the 401 taught us (RFC 8489 §9.2.4)."""

    realm: str
    nonce: str
    key: bytes
    #: PASSWORD-ALGORITHMS as the server sent them, when it uses the RFC 8489 features.
    algorithms: tuple[PasswordAlgorithmValue, ...] | None = None
    algorithm: PasswordAlgorithmValue | None = None

    @property
    def sha256(self) -> bool:
        """Sign with MESSAGE-INTEGRITY-SHA256 instead of MESSAGE-INTEGRITY."""
        return self.algorithm is not None


@dataclass(slots=True)
class _Request:
    """Context of one request in flight; survives 401/438 retries."""

    kind: RequestKind
    peer: Address | None = None
    channel: int | None = None
    authenticated: bool = False
    stale_retries: int = 0


@dataclass(slots=True)
class _Permission:
    state: PermissionState
    refresh_at: float = 0.0
    expires_at: float = 0.0
    pending: bool = True


@dataclass(slots=True)
class _Channel:
    peer: Address
    number: int
    state: ChannelState
    refresh_at: float = 0.0
    expires_at: float = 0.0
    pending: bool = True


@dataclass
class TurnCounters:
    """What the client dropped, for status output."""

    rx_malformed: int = 0
    rx_unknown_channel: int = 0
    rx_ignored: int = 0
    tx_send_indications: int = 0
    tx_channel_data: int = 0
    rx_data_indications: int = 0
    rx_channel_data: int = 0
    #: Requests re-sent with a fresh nonce after 438 Stale Nonce.
    stale_nonces: int = 0


def _peer_ip(peer: Address | str) -> str:
    host = peer if isinstance(peer, str) else peer[0]
    return str(ipaddress.ip_address(host.split("%", 1)[0]))


def _security_features(nonce: str) -> int:
    """The 24 security-feature bits after the nonce cookie (RFC 8489 §9.2, §18.1), or 0."""
    if not nonce.startswith(NONCE_COOKIE) or len(nonce) < len(NONCE_COOKIE) + 4:
        return 0
    try:
        raw = base64.b64decode(nonce[len(NONCE_COOKIE) : len(NONCE_COOKIE) + 4], validate=True)
    except (binascii.Error, ValueError):
        return 0
    return int.from_bytes(raw, "big") if len(raw) == 3 else 0


_FEATURE_PASSWORD_ALGORITHMS = 1 << 23  # bit 0, the most significant of the 24
_SUPPORTED_ALGORITHMS = (PasswordAlgorithm.SHA256, PasswordAlgorithm.MD5)


def _describe(code: int | None, reason: str) -> str:
    if code is None:
        return reason
    hint = ERROR_HINTS.get(code)
    text = f"{code} {reason}".strip()
    return f"{hint} ({text})" if hint else f"error {text}"


class TurnClient:
    """One TURN allocation, sans-I/O (see the module docstring for the loop).

    ``server`` is the server's transport address, used in messages and for the shell's
    bookkeeping only. ``stream`` selects TCP/TLS behaviour (no retransmissions, padded
    ChannelData, stream reassembly). ``random(n)`` supplies transaction ids (the shell passes
    ``os.urandom``, tests a deterministic source); ``lifetime`` is
    the LIFETIME requested in Allocate and Refresh (None: the server's default).
    ``refresh_interval`` refreshes at least that often, whatever the lifetime: over UDP through
    a NAT the Refresh doubles as a keepalive for the NAT binding (conntrack forgets idle UDP
    flows within minutes), and servers such as coturn never grant less than 600 s.
    """

    def __init__(
        self,
        server: Address,
        username: str,
        password: str,
        *,
        stream: bool = False,
        random: Callable[[int], bytes],
        lifetime: int | None = None,
        software: str | None = SOFTWARE,
        rto: float = 0.5,
        fingerprint: bool = True,
        permission_lifetime: float = PERMISSION_LIFETIME,
        permission_refresh: float = PERMISSION_REFRESH,
        channel_lifetime: float = CHANNEL_LIFETIME,
        channel_refresh: float = CHANNEL_REFRESH,
        refresh_interval: float | None = None,
        family: int | None = None,
        dual: bool = False,
    ) -> None:
        if family not in (None, AddressFamily.IPV4, AddressFamily.IPV6):
            raise ValueError(f"address family must be IPv4 (1) or IPv6 (2), not {family}")
        if dual and family is not None:
            raise ValueError("a dual allocation is IPv4 plus IPv6: give no family with it")
        if not 0 < permission_refresh <= permission_lifetime:
            raise ValueError("permission_refresh must be in (0, permission_lifetime]")
        if not 0 < channel_refresh <= channel_lifetime:
            raise ValueError("channel_refresh must be in (0, channel_lifetime]")
        self.server = server
        self.username = username
        self._password = password
        self.stream = stream
        self._random = random
        self.requested_lifetime = lifetime
        self.software = software
        self.fingerprint = fingerprint
        self.permission_lifetime = permission_lifetime
        self.permission_refresh = permission_refresh
        self.channel_lifetime = channel_lifetime
        self.channel_refresh = channel_refresh
        self.refresh_interval = refresh_interval
        self.family = family
        self.dual = dual
        self.address_error: AddressErrorValue | None = None
        self.state = AllocationState.IDLE
        self.relayed: Address | None = None
        self.relayed_addresses: tuple[Address, ...] = ()
        self.mapped: Address | None = None
        self.lifetime: int | None = None
        self.expires_at: float | None = None
        self.counters = TurnCounters()
        self._refresh_at: float | None = None
        self._refresh_pending = False
        self._auth: _Auth | None = None
        self._transactions: TransactionManager[_Request] = TransactionManager(
            rto=rto, reliable=stream
        )
        self._permissions: dict[str, _Permission] = {}
        self._channels: dict[Address, _Channel] = {}
        self._channel_numbers: dict[int, _Channel] = {}
        self._next_channel = CHANNEL_MIN
        self._framer = StreamFramer() if stream else None
        self._outbox: list[bytes] = []
        self._events: list[TurnEvent] = []

    # -- queries ---------------------------------------------------------------------------

    @property
    def realm(self) -> str | None:
        return None if self._auth is None else self._auth.realm

    @property
    def password_algorithm(self) -> int:
        """The PASSWORD-ALGORITHM in use (MD5 unless the server offered SHA-256)."""
        if self._auth is None or self._auth.algorithm is None:
            return PasswordAlgorithm.MD5
        return self._auth.algorithm.algorithm

    def permission_state(self, peer: Address | str) -> PermissionState | None:
        entry = self._permissions.get(_peer_ip(peer))
        return None if entry is None else entry.state

    def channel(self, peer: Address) -> tuple[int, ChannelState] | None:
        """``(number, state)`` of the channel to ``peer``, if any."""
        entry = self._channels.get(peer)
        return None if entry is None else (entry.number, entry.state)

    def bound_channels(self) -> list[tuple[Address, int]]:
        """``(peer, number)`` of every bound channel (RFC 8656 §12): what may arrive as
        ChannelData now."""
        return [
            (peer, chan.number)
            for peer, chan in self._channels.items()
            if chan.state is ChannelState.BOUND
        ]

    def channel_for_batch(self, peer: Address, count: int) -> int | None:
        """The number of the channel bound to ``peer`` when ``count`` payloads are about to go
        to it as ChannelData that the caller frames itself (:func:`encode_channel_data`'s
        layout, RFC 8656 §12.4; counted as sent), or None without a bound channel (use
        :meth:`send` then)."""
        entry = self._channels.get(peer)
        if entry is None or entry.state is not ChannelState.BOUND:
            return None
        self.counters.tx_channel_data += count
        return entry.number

    def pop_transmits(self) -> list[bytes]:
        """Messages to send to the server, in order (datagrams on UDP; on a stream, write
        them back to back)."""
        out, self._outbox = self._outbox, []
        return out

    def pop_events(self) -> list[TurnEvent]:
        """Events since the last call, in order."""
        out, self._events = self._events, []
        return out

    def next_wakeup(self) -> float | None:
        """When :meth:`handle_timeout` next has work, or None."""
        times: list[float] = []
        t = self._transactions.next_wakeup()
        if t is not None:
            times.append(t)
        if self.state is AllocationState.ALLOCATED:
            if self._refresh_at is not None and not self._refresh_pending:
                times.append(self._refresh_at)
            if self.expires_at is not None:
                times.append(self.expires_at)
            for perm in self._permissions.values():
                if perm.state is PermissionState.INSTALLED:
                    times.append(perm.expires_at if perm.pending else perm.refresh_at)
            for chan in self._channels.values():
                if chan.state is ChannelState.BOUND:
                    times.append(chan.expires_at if chan.pending else chan.refresh_at)
        return min(times) if times else None

    # -- commands --------------------------------------------------------------------------

    def allocate(self, now: float) -> None:
        """Send the first (unauthenticated) Allocate request (RFC 8656 §7.1)."""
        if self.state is not AllocationState.IDLE:
            raise TurnStateError(f"allocate() in state {self.state.value}")
        self.state = AllocationState.ALLOCATING
        self._start(_Request(RequestKind.ALLOCATE), now)

    def close(self, now: float) -> None:
        """Release the allocation: Refresh with LIFETIME 0 (RFC 8656 §8). Emits
        :class:`Deallocated` when the server answers or the request times out. Before the
        allocation exists, just stops."""
        if self.state is AllocationState.ALLOCATED:
            self._transactions.cancel_all()
            self._permissions.clear()
            self._channels.clear()
            self._channel_numbers.clear()
            self.state = AllocationState.DEALLOCATING
            self._start(_Request(RequestKind.DEALLOCATE), now)
        elif self.state in (AllocationState.IDLE, AllocationState.ALLOCATING):
            self._transactions.cancel_all()
            self.state = AllocationState.CLOSED
            self._events.append(Deallocated())

    def connection_lost(self, now: float, reason: str = "the connection closed") -> None:
        """The stream (TCP/TLS) to the server closed or broke: the allocation is gone
        (RFC 8656 §3.1). Also for a UDP socket the shell can no longer use."""
        self._transactions.cancel_all()
        shown = f"TURN server {format_address(self.server)}: {reason}"
        if self.state is AllocationState.ALLOCATING:
            self._fail(AllocationFailed(shown))
        elif self.state is AllocationState.ALLOCATED:
            self._fail(AllocationLost(shown))
        elif self.state is AllocationState.DEALLOCATING:
            self.state = AllocationState.CLOSED
            self._events.append(Deallocated())

    def create_permission(self, peer: Address | str, now: float) -> None:
        """Ask for a permission for the peer's IP address (RFC 8656 §9.1); it is kept
        and refreshed until the allocation ends. Emits :class:`PermissionCreated` or
        :class:`PermissionFailed`. Does nothing if one exists or is pending."""
        self._require_allocated("create_permission")
        ip = _peer_ip(peer)
        if ip in self._permissions:
            return
        self._permissions[ip] = _Permission(PermissionState.PENDING)
        self._start(_Request(RequestKind.CREATE_PERMISSION, peer=(ip, 0)), now)

    def bind_channel(self, peer: Address, now: float) -> int:
        """Bind a channel to ``peer`` (RFC 8656 §11.1) and return its number; the binding is
        refreshed until the allocation ends. Emits :class:`ChannelBound` or
        :class:`ChannelBindFailed`. Returns the existing number if one is bound or binding."""
        self._require_allocated("bind_channel")
        peer = (_peer_ip(peer), int(peer[1]))
        existing = self._channels.get(peer)
        if existing is not None:
            return existing.number
        number = self._free_channel_number()
        chan = _Channel(peer, number, ChannelState.BINDING)
        self._channels[peer] = chan
        self._channel_numbers[number] = chan
        self._start(_Request(RequestKind.CHANNEL_BIND, peer=peer, channel=number), now)
        return number

    def send(self, peer: Address, data: bytes, now: float) -> bytes:
        """Wrap ``data`` for ``peer``: ChannelData on a bound channel (§12.4), else a Send
        indication (§10.1). Returns the bytes to send to the server. Without a permission for
        the peer's address one is requested first (the server drops data until it is
        installed, §10.2)."""
        self._require_allocated("send")
        chan = self._channels.get(peer)
        if chan is not None and chan.state is ChannelState.BOUND:
            self.counters.tx_channel_data += 1
            return encode_channel_data(chan.number, data, pad=self.stream)
        if _peer_ip(peer) not in self._permissions:
            self.create_permission(peer, now)
        msg = Message.indication(
            Method.SEND,
            self._transaction_id(),
            [(AttrType.XOR_PEER_ADDRESS, peer), (AttrType.DATA, data)],
        )
        self.counters.tx_send_indications += 1
        return msg.encode()

    # -- input -----------------------------------------------------------------------------

    def handle_datagram(self, data: bytes | bytearray | memoryview, now: float) -> None:
        """One message from the server: a UDP datagram, or one frame cut from the stream.
        Raises :class:`p2ptun.errors.DecodeError` (only) if it is malformed."""
        if is_channel_data(data):
            self._on_channel_data(data)
        elif is_stun(data):
            self._on_stun(Message.decode(data), now)
        else:
            raise StunDecodeError("neither STUN nor ChannelData")

    def handle_stream_data(
        self,
        chunk: bytes | bytearray | memoryview,
        now: float,
        take: Callable[[bytes], bool] | None = None,
    ) -> None:
        """Bytes received on the TCP/TLS stream. A malformed frame inside a well-framed
        stream is dropped and counted; a stream that cannot be framed raises
        :class:`p2ptun.turn.client_stream.StreamFramingError` — close the connection then.
        ``take``: each ChannelData frame is offered to it first; one it returns True for is
        not handled here (a shell's fast path for relayed data)."""
        if self._framer is None:
            raise TurnStateError("handle_stream_data() on a datagram client")
        for frame in self._framer.feed(chunk):
            if take is not None and 0x40 <= frame[0] <= 0x4F and take(frame):
                continue
            try:
                self.handle_datagram(frame, now)
            except DecodeError:
                self.counters.rx_malformed += 1

    def handle_timeout(self, now: float) -> None:
        """Retransmit, time out, refresh, expire: whatever is due at ``now``."""
        for item in self._transactions.handle_timeout(now):
            if isinstance(item, TransactionOutcome):
                self._on_outcome(item, now)
            else:
                self._outbox.append(item.data)
        if self.state is not AllocationState.ALLOCATED:
            return
        assert self.expires_at is not None
        if now >= self.expires_at:
            self._fail(
                AllocationLost(
                    f"TURN server {format_address(self.server)}: the allocation expired "
                    "without a successful refresh"
                )
            )
            return
        if self._refresh_at is not None and not self._refresh_pending and now >= self._refresh_at:
            self._refresh_pending = True
            self._start(_Request(RequestKind.REFRESH), now)
        for ip, perm in list(self._permissions.items()):
            if perm.state is not PermissionState.INSTALLED:
                continue
            if now >= perm.expires_at:
                del self._permissions[ip]
                self._events.append(PermissionFailed(ip, "the permission expired"))
            elif not perm.pending and now >= perm.refresh_at:
                perm.pending = True
                self._start(_Request(RequestKind.CREATE_PERMISSION, peer=(ip, 0)), now)
        for chan in list(self._channels.values()):
            if chan.state is not ChannelState.BOUND:
                continue
            if now >= chan.expires_at:
                self._drop_channel(chan)
                self._events.append(
                    ChannelBindFailed(chan.peer, chan.number, "the channel binding expired")
                )
            elif not chan.pending and now >= chan.refresh_at:
                chan.pending = True
                req = _Request(RequestKind.CHANNEL_BIND, peer=chan.peer, channel=chan.number)
                self._start(req, now)

    # -- requests --------------------------------------------------------------------------

    def _transaction_id(self) -> bytes:
        tid = bytes(self._random(12))
        if len(tid) != 12:
            raise ValueError("random(12) must return 12 bytes")
        return tid

    def _attributes(self, req: _Request) -> list[tuple[int, Any]]:
        kind = req.kind
        attrs: list[tuple[int, Any]] = []
        if kind is RequestKind.ALLOCATE:
            attrs.append((AttrType.REQUESTED_TRANSPORT, TRANSPORT_UDP))
            if self.family is not None:
                attrs.append((AttrType.REQUESTED_ADDRESS_FAMILY, self.family))
            if self.dual:
                attrs.append((AttrType.ADDITIONAL_ADDRESS_FAMILY, AddressFamily.IPV6))
                # Also under the pre-RFC code point, which coturn 4.6 knows instead (other
                # servers ignore an unknown comprehension-optional attribute).
                attrs.append((AttrType.ADDITIONAL_ADDRESS_FAMILY_DRAFT, AddressFamily.IPV6))
            if self.requested_lifetime is not None:
                attrs.append((AttrType.LIFETIME, self.requested_lifetime))
            if self.software:
                attrs.append((AttrType.SOFTWARE, self.software))
        elif kind is RequestKind.REFRESH:
            if self.requested_lifetime is not None:
                attrs.append((AttrType.LIFETIME, self.requested_lifetime))
        elif kind is RequestKind.DEALLOCATE:
            attrs.append((AttrType.LIFETIME, 0))
        elif kind is RequestKind.CREATE_PERMISSION:
            assert req.peer is not None
            attrs.append((AttrType.XOR_PEER_ADDRESS, req.peer))
        else:
            assert req.peer is not None and req.channel is not None
            attrs.append((AttrType.CHANNEL_NUMBER, req.channel))
            attrs.append((AttrType.XOR_PEER_ADDRESS, req.peer))
        return attrs

    def _start(self, req: _Request, now: float) -> None:
        """Encode and send one request for ``req`` (a new transaction id every time)."""
        auth = self._auth
        attrs = self._attributes(req)
        key: bytes | None = None
        if auth is not None:
            attrs += [
                (AttrType.USERNAME, self.username),
                (AttrType.REALM, auth.realm),
                (AttrType.NONCE, auth.nonce),
            ]
            if auth.algorithm is not None and auth.algorithms is not None:
                attrs += [
                    (AttrType.PASSWORD_ALGORITHMS, auth.algorithms),
                    (AttrType.PASSWORD_ALGORITHM, auth.algorithm),
                ]
            key = auth.key
        req.authenticated = key is not None
        unauthenticated = (
            ALLOCATE_UNAUTHENTICATED_ERRORS
            if req.kind is RequestKind.ALLOCATE
            else UNAUTHENTICATED_ERRORS
        )
        for _ in range(8):
            msg = Message.request(_METHOD[req.kind], self._transaction_id(), attrs)
            sha256 = auth is not None and auth.sha256
            wire = msg.encode(key, sha1=not sha256, sha256=sha256, fingerprint=self.fingerprint)
            try:
                transmit = self._transactions.start(
                    wire, now, key=key, context=req, unauthenticated_errors=unauthenticated
                )
            except ValueError:  # transaction id collision: draw another
                continue
            self._outbox.append(transmit.data)
            return
        raise ValueError("random() keeps returning transaction ids already in use")

    # -- responses -------------------------------------------------------------------------

    def _on_stun(self, msg: Message, now: float) -> None:
        if msg.message_class is MessageClass.INDICATION:
            if msg.method == Method.DATA:
                peer, data = msg.xor_peer_address, msg.data
                if peer is None or data is None:
                    self.counters.rx_malformed += 1
                    return
                self.counters.rx_data_indications += 1
                self._events.append(PeerData(peer, data))
            else:
                self.counters.rx_ignored += 1
            return
        if msg.message_class is MessageClass.REQUEST:
            self.counters.rx_ignored += 1
            return
        outcome = self._transactions.handle_response(msg, now)
        if outcome is None:
            self.counters.rx_ignored += 1
            return
        self._on_outcome(outcome, now)

    def _on_channel_data(self, data: bytes | bytearray | memoryview) -> None:
        frame = decode_channel_data(data)
        chan = self._channel_numbers.get(frame.channel)
        if chan is None:
            self.counters.rx_unknown_channel += 1
            return
        self.counters.rx_channel_data += 1
        self._events.append(PeerData(chan.peer, frame.data, frame.channel))

    def _on_outcome(self, outcome: TransactionOutcome[_Request], now: float) -> None:
        req = outcome.context
        if req is None or outcome.state is TransactionState.CANCELLED:
            return
        if outcome.state is TransactionState.TIMED_OUT:
            self._on_failure(req, None, "no response", now)
            return
        if outcome.ok:
            assert outcome.response is not None
            self._on_success(req, outcome.response, now)
            return
        assert outcome.error is not None and outcome.response is not None
        code, reason = outcome.error
        response = outcome.response
        if code == ErrorCode.UNAUTHENTICATED and not req.authenticated:
            if self._learn_auth(response):
                self._start(req, now)
                return
            self._on_failure(req, code, "401 without a usable REALM and NONCE", now)
            return
        if (
            code == ErrorCode.STALE_NONCE
            and req.stale_retries < MAX_STALE_NONCE_RETRIES
            and self._auth is not None
            and response.nonce
        ):
            req.stale_retries += 1
            self.counters.stale_nonces += 1
            self._auth.nonce = response.nonce
            realm_changed = bool(response.realm) and response.realm != self._auth.realm
            if realm_changed and not self._learn_auth(response):
                self._on_failure(req, code, reason, now)
                return
            log.debug("stale nonce, retrying", kind=req.kind.value)
            self._start(req, now)
            return
        if code == ErrorCode.TRY_ALTERNATE and response.alternate_server is not None:
            reason = f"{reason}: {format_address(response.alternate_server)}".strip(": ")
        self._on_failure(req, code, reason, now)

    def _learn_auth(self, response: Message) -> bool:
        """Take REALM, NONCE and PASSWORD-ALGORITHMS from a 401/438 (RFC 8489 §9.2.4)."""
        realm, nonce = response.realm, response.nonce
        if not realm or not nonce:
            return False
        algorithms = response.password_algorithms
        chosen: PasswordAlgorithmValue | None = None
        if algorithms and _security_features(nonce) & _FEATURE_PASSWORD_ALGORITHMS:
            for candidate in algorithms:
                if candidate.algorithm in _SUPPORTED_ALGORITHMS:
                    chosen = candidate
                    break
            if chosen is None:
                return False
        algorithm = PasswordAlgorithm.MD5 if chosen is None else chosen.algorithm
        key = long_term_key(self.username, realm, self._password, algorithm)
        self._auth = _Auth(realm, nonce, key, algorithms if chosen else None, chosen)
        return True

    def _on_success(self, req: _Request, response: Message, now: float) -> None:
        kind = req.kind
        if kind is RequestKind.ALLOCATE:
            if self.state is not AllocationState.ALLOCATING:
                return
            # An unspecified address is no relayed address: coturn 4.6 adds 0.0.0.0 for the
            # family it could not allocate in a dual request.
            relayed = tuple(
                a
                for a in response.xor_relayed_addresses
                if not ipaddress.ip_address(a[0]).is_unspecified
            )
            if not relayed:
                self._fail(
                    AllocationFailed(
                        f"TURN server {format_address(self.server)}: Allocate success "
                        "without XOR-RELAYED-ADDRESS"
                    )
                )
                return
            lifetime = response.lifetime
            if lifetime is None:
                lifetime = self.requested_lifetime or DEFAULT_LIFETIME
            self.state = AllocationState.ALLOCATED
            self.relayed = relayed[0]
            self.relayed_addresses = relayed
            self.address_error = response.address_error_code
            self.mapped = response.xor_mapped_address
            self._set_lifetime(lifetime, now)
            log.info(
                "allocated",
                server=format_address(self.server),
                relayed=format_address(self.relayed),
                lifetime=lifetime,
            )
            self._events.append(
                AllocationSucceeded(
                    self.relayed, self.mapped, lifetime, relayed, self.address_error
                )
            )
        elif kind is RequestKind.REFRESH:
            self._refresh_pending = False
            if self.state is not AllocationState.ALLOCATED:
                return
            lifetime = response.lifetime
            if lifetime is None:
                lifetime = self.requested_lifetime or DEFAULT_LIFETIME
            if lifetime == 0:
                self._fail(AllocationLost("the server ended the allocation (lifetime 0)"))
                return
            self._set_lifetime(lifetime, now)
            self._events.append(AllocationRefreshed(lifetime))
        elif kind is RequestKind.DEALLOCATE:
            self._finish_close()
        elif kind is RequestKind.CREATE_PERMISSION:
            assert req.peer is not None
            self._permission_refreshed(req.peer[0], now)
        else:
            assert req.peer is not None
            chan = self._channels.get(req.peer)
            if chan is None or chan.number != req.channel:
                return
            first = chan.state is ChannelState.BINDING
            chan.state = ChannelState.BOUND
            chan.pending = False
            chan.refresh_at = now + self.channel_refresh
            chan.expires_at = now + self.channel_lifetime
            # A ChannelBind installs or refreshes the peer's permission too (§11.2).
            self._permission_refreshed(req.peer[0], now)
            if first:
                self._events.append(ChannelBound(chan.peer, chan.number))

    def _permission_refreshed(self, ip: str, now: float) -> None:
        perm = self._permissions.get(ip)
        if perm is None:
            if self.state is not AllocationState.ALLOCATED:
                return
            perm = self._permissions[ip] = _Permission(PermissionState.PENDING)
        first = perm.state is PermissionState.PENDING
        perm.state = PermissionState.INSTALLED
        perm.pending = False
        perm.refresh_at = now + self.permission_refresh
        perm.expires_at = now + self.permission_lifetime
        if first:
            self._events.append(PermissionCreated(ip))

    def _on_failure(self, req: _Request, code: int | None, reason: str, now: float) -> None:
        kind = req.kind
        server = f"TURN server {format_address(self.server)}"
        if code is None:
            timeout = "no response" if not self.stream else "no response on the connection"
            text = f"{server}: {timeout} to {kind.value}"
        elif code == ErrorCode.UNAUTHENTICATED and req.authenticated:
            text = f"{server}: {_describe(code, reason)} for user {self.username!r}"
        else:
            text = f"{server}: {kind.value}: {_describe(code, reason)}"
        if kind is RequestKind.ALLOCATE:
            if self.state is AllocationState.ALLOCATING:
                self._fail(AllocationFailed(text, code))
        elif kind is RequestKind.REFRESH:
            self._refresh_pending = False
            if self.state is not AllocationState.ALLOCATED:
                return
            assert self.expires_at is not None
            if code is None and now < self.expires_at:
                # Lost in the network: try again; the expiry check ends this if it never works.
                self._refresh_pending = True
                self._start(_Request(RequestKind.REFRESH), now)
                return
            self._fail(AllocationLost(text, code))
        elif kind is RequestKind.DEALLOCATE:
            self._finish_close()
        elif kind is RequestKind.CREATE_PERMISSION:
            assert req.peer is not None
            ip = req.peer[0]
            perm = self._permissions.get(ip)
            if perm is None:
                return
            if code is None and perm.state is PermissionState.INSTALLED and now < perm.expires_at:
                self._start(_Request(RequestKind.CREATE_PERMISSION, peer=(ip, 0)), now)
                return
            del self._permissions[ip]
            self._events.append(PermissionFailed(ip, text, code))
        else:
            assert req.peer is not None and req.channel is not None
            chan = self._channels.get(req.peer)
            if chan is None or chan.number != req.channel:
                return
            if code is None and chan.state is ChannelState.BOUND and now < chan.expires_at:
                self._start(_Request(RequestKind.CHANNEL_BIND, chan.peer, chan.number), now)
                return
            self._drop_channel(chan)
            self._events.append(ChannelBindFailed(chan.peer, chan.number, text, code))

    # -- helpers ---------------------------------------------------------------------------

    def _set_lifetime(self, lifetime: int, now: float) -> None:
        self.lifetime = lifetime
        self.expires_at = now + lifetime
        delay = refresh_delay(lifetime)
        if self.refresh_interval is not None:
            delay = min(delay, self.refresh_interval)
        self._refresh_at = now + delay

    def _fail(self, event: AllocationFailed | AllocationLost) -> None:
        log.warning("allocation failed", reason=event.reason)
        self._transactions.cancel_all()
        self._permissions.clear()
        self._channels.clear()
        self._channel_numbers.clear()
        self.state = AllocationState.FAILED
        self._events.append(event)

    def _finish_close(self) -> None:
        if self.state is AllocationState.DEALLOCATING:
            self.state = AllocationState.CLOSED
            self._events.append(Deallocated())

    def _drop_channel(self, chan: _Channel) -> None:
        self._channels.pop(chan.peer, None)
        self._channel_numbers.pop(chan.number, None)

    def _free_channel_number(self) -> int:
        span = CHANNEL_MAX - CHANNEL_MIN + 1
        for i in range(span):
            number = CHANNEL_MIN + (self._next_channel - CHANNEL_MIN + i) % span
            if number not in self._channel_numbers:
                self._next_channel = number + 1 if number < CHANNEL_MAX else CHANNEL_MIN
                return number
        raise TurnStateError("all 4096 channel numbers are in use")

    def _require_allocated(self, what: str) -> None:
        if self.state is not AllocationState.ALLOCATED:
            raise TurnStateError(f"{what}() needs an allocation (state {self.state.value})")


__all__ = [
    "ALLOCATE_UNAUTHENTICATED_ERRORS",
    "CHANNEL_LIFETIME",
    "CHANNEL_REFRESH",
    "DEFAULT_LIFETIME",
    "ERROR_HINTS",
    "PERMISSION_LIFETIME",
    "PERMISSION_REFRESH",
    "SOFTWARE",
    "AllocationFailed",
    "AllocationLost",
    "AllocationRefreshed",
    "AllocationState",
    "AllocationSucceeded",
    "ChannelBindFailed",
    "ChannelBound",
    "ChannelState",
    "Deallocated",
    "PeerData",
    "PermissionCreated",
    "PermissionFailed",
    "PermissionState",
    "RequestKind",
    "TurnClient",
    "TurnCounters",
    "TurnEvent",
    "TurnStateError",
    "refresh_delay",
]

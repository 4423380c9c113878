"""The node ↔ rendezvous protocol messages, carried inside transport frames.

Each message is one byte of :class:`MessageType` followed by its fields (see
:mod:`p2ptun.signal.codec` for the field encodings). The rendezvous sees these in the clear
(after the Noise channel); what one node says to another travels inside :class:`Route` /
:class:`Deliver` as an opaque blob sealed end to end (:mod:`p2ptun.signal.seal`).

Message flow::

    node                                   rendezvous
    Register(name)                  ->
    | RegisterMember(name, cert)    ->
                                    <-     Registered(name) | Refused(reason, text)
    Ping(seq)                       ->
                                    <-     Pong(seq)
    Watch(names) / Unwatch(names)   ->
                                    <-     Presence(name, online)   (now, and on every change)
    Route(ref, to, blob)            ->     Deliver(from, blob) to the node named ``to``
                                    <-     RouteFailed(ref, to, reason)   (e.g. peer offline)
    TurnRequest()                   ->
                                    <-     TurnCredentials(...) | Error(code, text)
                                    <-     GoingAway(text)   (rendezvous shutting down)

A node that registered with a certificate (:class:`RegisterMember`, a member of a network the
rendezvous serves) learns the network's online members without watching them::

                                    <-     Member(name, cert)   (online now, or renewed)
                                    <-     MemberGone(name)     (offline, revoked, expired)
    Revocations(list)               <->    Revocations(list)    (the authority's signed list)
    Certificate(cert)               ->     (a renewed certificate: same name and key)
                                    <-     Refused(reason, text)   (revoked or expired: closed)

The rendezvous checks certificates to decide whom it serves, but it is not trusted with them:
every node verifies every certificate and list itself against its configured authority
(:mod:`p2ptun.membership`); to the signaling layer they are opaque bytes.

:func:`decode_message` raises only :class:`~p2ptun.signal.errors.SignalDecodeError`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from p2ptun.signal.codec import Reader, Writer
from p2ptun.signal.errors import SignalDecodeError
from p2ptun.signal.frames import MAX_PAYLOAD

TRANSPORT_OVERHEAD = 8 + 16
"""Counter and Poly1305 tag around each transport plaintext."""
MAX_MESSAGE = MAX_PAYLOAD - TRANSPORT_OVERHEAD
"""Largest encoded message that fits one transport frame."""
MAX_BLOB = 60 * 1024
"""Largest sealed node-to-node blob the rendezvous routes."""
MAX_WATCH_NAMES = 256
"""Most names in one Watch/Unwatch message."""
MAX_TEXT = 1024
"""Longest human-readable reason text."""
MAX_CERTIFICATE = 4096
"""Longest certificate carried (opaque here; :mod:`p2ptun.membership` bounds it tighter)."""


class MessageType(enum.IntEnum):
    REGISTER = 1
    REGISTERED = 2
    REFUSED = 3
    PING = 4
    PONG = 5
    WATCH = 6
    UNWATCH = 7
    PRESENCE = 8
    ROUTE = 9
    DELIVER = 10
    ROUTE_FAILED = 11
    TURN_REQUEST = 12
    TURN_CREDENTIALS = 13
    ERROR = 14
    GOING_AWAY = 15
    REGISTER_MEMBER = 16
    MEMBER = 17
    MEMBER_GONE = 18
    REVOCATIONS = 19
    CERTIFICATE = 20


class RefusalReason(enum.IntEnum):
    """Why the rendezvous refused a registration."""

    #: The key is not in the ``[[node]]`` allow list (and registration is not open).
    UNKNOWN_NODE = 1
    #: The name is bound to a different public key.
    NAME_TAKEN = 2
    #: The key is bound to a different name.
    KEY_BOUND_TO_OTHER_NAME = 3
    #: Too many connections or registrations; try later.
    BUSY = 4
    #: The request was malformed or out of order.
    PROTOCOL = 5
    #: The certificate is not accepted (another network, forged, expired, revoked, an invite
    #: used by another machine already); the text says which.
    CERTIFICATE = 6


class RouteFailure(enum.IntEnum):
    """Why the rendezvous could not deliver a :class:`Route`."""

    PEER_OFFLINE = 1
    PEER_BUSY = 2
    RATE_LIMITED = 3


class ErrorCode(enum.IntEnum):
    NO_TURN = 1
    RATE_LIMITED = 2
    PROTOCOL = 3


@dataclass(frozen=True, slots=True)
class Register:
    name: str


@dataclass(frozen=True, slots=True)
class RegisterMember:
    """Register as a member of a network: ``certificate`` is the node's certificate."""

    name: str
    certificate: bytes


@dataclass(frozen=True, slots=True)
class Member:
    """A member of the node's network is online (or renewed its certificate)."""

    name: str
    certificate: bytes


@dataclass(frozen=True, slots=True)
class MemberGone:
    name: str


@dataclass(frozen=True, slots=True)
class Revocations:
    """The network authority's signed revocation list (opaque here)."""

    blob: bytes

    def __repr__(self) -> str:
        return f"Revocations(<{len(self.blob)} bytes>)"


@dataclass(frozen=True, slots=True)
class Certificate:
    """A registered member's renewed certificate (same name and key)."""

    certificate: bytes


@dataclass(frozen=True, slots=True)
class Registered:
    name: str


@dataclass(frozen=True, slots=True)
class Refused:
    reason: RefusalReason
    text: str


@dataclass(frozen=True, slots=True)
class Ping:
    seq: int


@dataclass(frozen=True, slots=True)
class Pong:
    seq: int


@dataclass(frozen=True, slots=True)
class Watch:
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Unwatch:
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Presence:
    name: str
    online: bool


@dataclass(frozen=True, slots=True)
class Route:
    """Forward ``blob`` (sealed end to end) to the node registered as ``to``."""

    ref: int
    to: str
    blob: bytes

    def __repr__(self) -> str:  # never show sealed payloads
        return f"Route(ref={self.ref}, to={self.to!r}, blob=<{len(self.blob)} bytes>)"


@dataclass(frozen=True, slots=True)
class Deliver:
    """A blob another node routed to us; ``sender`` is the name it registered with."""

    sender: str
    blob: bytes

    def __repr__(self) -> str:
        return f"Deliver(sender={self.sender!r}, blob=<{len(self.blob)} bytes>)"


@dataclass(frozen=True, slots=True)
class RouteFailed:
    ref: int
    to: str
    reason: RouteFailure


@dataclass(frozen=True, slots=True)
class TurnRequest:
    pass


@dataclass(frozen=True, slots=True)
class TurnCredentials:
    """Ephemeral TURN credentials in coturn's REST-API form (``expiry:name``)."""

    username: str
    password: str
    ttl: int
    realm: str

    def __repr__(self) -> str:
        return f"TurnCredentials(username={self.username!r}, ttl={self.ttl}, realm={self.realm!r})"


@dataclass(frozen=True, slots=True)
class Error:
    code: ErrorCode
    text: str


@dataclass(frozen=True, slots=True)
class GoingAway:
    text: str


Message = (
    Register
    | Registered
    | Refused
    | Ping
    | Pong
    | Watch
    | Unwatch
    | Presence
    | Route
    | Deliver
    | RouteFailed
    | TurnRequest
    | TurnCredentials
    | Error
    | GoingAway
    | RegisterMember
    | Member
    | MemberGone
    | Revocations
    | Certificate
)


def _clip(text: str) -> str:
    """``text`` cut to at most :data:`MAX_TEXT` UTF-8 bytes, on a character boundary."""
    data = text.encode("utf-8")
    if len(data) <= MAX_TEXT:
        return text
    return data[:MAX_TEXT].decode("utf-8", errors="ignore")


def _names(w: Writer, names: tuple[str, ...]) -> None:
    if len(names) > MAX_WATCH_NAMES:
        raise ValueError(f"more than {MAX_WATCH_NAMES} names")
    w.u16(len(names))
    for name in names:
        w.name(name)


def _read_names(r: Reader) -> tuple[str, ...]:
    n = r.u16()
    if n > MAX_WATCH_NAMES:
        raise SignalDecodeError(f"{n} names exceed {MAX_WATCH_NAMES}")
    return tuple(r.name() for _ in range(n))


def _limit(data: bytes, limit: int) -> None:
    if len(data) > limit:
        raise ValueError(f"{len(data)} bytes exceed {limit}")


def encode_message(msg: Message) -> bytes:
    """The wire form of ``msg``; raises ValueError for values out of range."""
    w = Writer()
    if isinstance(msg, Register):
        w.u8(MessageType.REGISTER).name(msg.name)
    elif isinstance(msg, Registered):
        w.u8(MessageType.REGISTERED).name(msg.name)
    elif isinstance(msg, Refused):
        w.u8(MessageType.REFUSED).u8(msg.reason).str16(_clip(msg.text))
    elif isinstance(msg, Ping):
        w.u8(MessageType.PING).u64(msg.seq)
    elif isinstance(msg, Pong):
        w.u8(MessageType.PONG).u64(msg.seq)
    elif isinstance(msg, Watch):
        _names(w.u8(MessageType.WATCH), msg.names)
    elif isinstance(msg, Unwatch):
        _names(w.u8(MessageType.UNWATCH), msg.names)
    elif isinstance(msg, Presence):
        w.u8(MessageType.PRESENCE).name(msg.name).u8(int(msg.online))
    elif isinstance(msg, Route):
        if len(msg.blob) > MAX_BLOB:
            raise ValueError(f"blob of {len(msg.blob)} bytes exceeds {MAX_BLOB}")
        w.u8(MessageType.ROUTE).u32(msg.ref).name(msg.to).bytes16(msg.blob)
    elif isinstance(msg, Deliver):
        if len(msg.blob) > MAX_BLOB:
            raise ValueError(f"blob of {len(msg.blob)} bytes exceeds {MAX_BLOB}")
        w.u8(MessageType.DELIVER).name(msg.sender).bytes16(msg.blob)
    elif isinstance(msg, RouteFailed):
        w.u8(MessageType.ROUTE_FAILED).u32(msg.ref).name(msg.to).u8(msg.reason)
    elif isinstance(msg, TurnRequest):
        w.u8(MessageType.TURN_REQUEST)
    elif isinstance(msg, TurnCredentials):
        w.u8(MessageType.TURN_CREDENTIALS).str16(msg.username).str16(msg.password)
        w.u32(msg.ttl).str8(msg.realm)
    elif isinstance(msg, Error):
        w.u8(MessageType.ERROR).u8(msg.code).str16(_clip(msg.text))
    elif isinstance(msg, GoingAway):
        w.u8(MessageType.GOING_AWAY).str16(_clip(msg.text))
    elif isinstance(msg, RegisterMember):
        _limit(msg.certificate, MAX_CERTIFICATE)
        w.u8(MessageType.REGISTER_MEMBER).name(msg.name).bytes16(msg.certificate)
    elif isinstance(msg, Member):
        _limit(msg.certificate, MAX_CERTIFICATE)
        w.u8(MessageType.MEMBER).name(msg.name).bytes16(msg.certificate)
    elif isinstance(msg, MemberGone):
        w.u8(MessageType.MEMBER_GONE).name(msg.name)
    elif isinstance(msg, Revocations):
        _limit(msg.blob, MAX_BLOB)
        w.u8(MessageType.REVOCATIONS).bytes16(msg.blob)
    elif isinstance(msg, Certificate):
        _limit(msg.certificate, MAX_CERTIFICATE)
        w.u8(MessageType.CERTIFICATE).bytes16(msg.certificate)
    else:  # pragma: no cover - exhaustive
        raise TypeError(f"not a signaling message: {msg!r}")
    return w.getvalue()


def _enum(cls: type[enum.IntEnum], value: int) -> int:
    try:
        return cls(value)
    except ValueError:
        raise SignalDecodeError(f"unknown {cls.__name__} {value}") from None


def decode_message(data: bytes) -> Message:
    """Parse one message; raises only SignalDecodeError."""
    if len(data) > MAX_MESSAGE:
        raise SignalDecodeError("message too large")
    r = Reader(data)
    kind = r.u8()
    msg: Message
    if kind == MessageType.REGISTER:
        msg = Register(r.name())
    elif kind == MessageType.REGISTERED:
        msg = Registered(r.name())
    elif kind == MessageType.REFUSED:
        reason = RefusalReason(_enum(RefusalReason, r.u8()))
        msg = Refused(reason, r.str16(MAX_TEXT))
    elif kind == MessageType.PING:
        msg = Ping(r.u64())
    elif kind == MessageType.PONG:
        msg = Pong(r.u64())
    elif kind == MessageType.WATCH:
        msg = Watch(_read_names(r))
    elif kind == MessageType.UNWATCH:
        msg = Unwatch(_read_names(r))
    elif kind == MessageType.PRESENCE:
        msg = Presence(r.name(), r.boolean())
    elif kind == MessageType.ROUTE:
        msg = Route(r.u32(), r.name(), r.bytes16(MAX_BLOB))
    elif kind == MessageType.DELIVER:
        msg = Deliver(r.name(), r.bytes16(MAX_BLOB))
    elif kind == MessageType.ROUTE_FAILED:
        ref, to = r.u32(), r.name()
        msg = RouteFailed(ref, to, RouteFailure(_enum(RouteFailure, r.u8())))
    elif kind == MessageType.TURN_REQUEST:
        msg = TurnRequest()
    elif kind == MessageType.TURN_CREDENTIALS:
        msg = TurnCredentials(r.str16(MAX_TEXT), r.str16(MAX_TEXT), r.u32(), r.str8())
    elif kind == MessageType.ERROR:
        code = ErrorCode(_enum(ErrorCode, r.u8()))
        msg = Error(code, r.str16(MAX_TEXT))
    elif kind == MessageType.GOING_AWAY:
        msg = GoingAway(r.str16(MAX_TEXT))
    elif kind == MessageType.REGISTER_MEMBER:
        msg = RegisterMember(r.name(), r.bytes16(MAX_CERTIFICATE))
    elif kind == MessageType.MEMBER:
        msg = Member(r.name(), r.bytes16(MAX_CERTIFICATE))
    elif kind == MessageType.MEMBER_GONE:
        msg = MemberGone(r.name())
    elif kind == MessageType.REVOCATIONS:
        msg = Revocations(r.bytes16(MAX_BLOB))
    elif kind == MessageType.CERTIFICATE:
        msg = Certificate(r.bytes16(MAX_CERTIFICATE))
    else:
        raise SignalDecodeError(f"unknown message type {kind}")
    r.finish()
    return msg

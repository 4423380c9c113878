"""What the instances of a rendezvous cluster tell each other, sans-I/O: the envelope.

Instances of one rendezvous share a Redis (``[cluster] redis``, the trio shell
:mod:`p2ptun.rendezvous.cluster`). Each node is connected to one instance; the others learn of
it from these messages:

- :class:`NodeUp` — a node registered on ``instance`` (or changed what it watches): its name,
  the names it lists as peers (presence is mutual, :mod:`p2ptun.signal.hub`), and for a member
  its network and certificate. It is also the value of the node's presence key in Redis,
  which expires unless the holding instance refreshes it.
- :class:`NodeDown` — the node left ``instance``.
- :class:`Forward` — a ``Deliver`` for a node connected to the receiving instance.
- :class:`RevocationsChanged` — a newer revocation list of a network is stored.

Wire form: ``b"P2C1"``, a type byte, then the fields with length prefixes
(:mod:`p2ptun.signal.codec`). Everything is bounded (names, the watch list, blobs, the whole
message); a malformed message raises :class:`~p2ptun.signal.errors.SignalDecodeError`, which
the shell counts and drops.
"""

from __future__ import annotations

from dataclasses import dataclass

from p2ptun.signal.codec import Reader, Writer, check_name
from p2ptun.signal.errors import SignalDecodeError

MAGIC = b"P2C1"
#: A cluster message is at most this long (a sealed blob is at most a frame's payload).
MAX_MESSAGE = 256 * 1024
#: Names one announced node may list (the hub's ``max_watches``).
MAX_WATCHING = 1024
MAX_INSTANCE_LEN = 64
MAX_BLOB = 64 * 1024

_UP, _DOWN, _FORWARD, _REVOKED = 1, 2, 3, 4


@dataclass(frozen=True)
class NodeUp:
    instance: str
    name: str
    watching: frozenset[str] = frozenset()
    network: str | None = None
    certificate: bytes = b""


@dataclass(frozen=True)
class NodeDown:
    instance: str
    name: str


@dataclass(frozen=True)
class Forward:
    """``sender``'s sealed ``blob`` for ``to`` (routed by ``instance``)."""

    instance: str
    sender: str
    to: str
    blob: bytes


@dataclass(frozen=True)
class RevocationsChanged:
    instance: str
    network: str
    blob: bytes


ClusterMessage = NodeUp | NodeDown | Forward | RevocationsChanged


def _check_instance(instance: str) -> str:
    if not instance or len(instance) > MAX_INSTANCE_LEN or not instance.isprintable():
        raise ValueError(f"{instance!r} is not an instance id")
    return instance


def encode_cluster(msg: ClusterMessage) -> bytes:
    """The wire form of ``msg`` (ValueError for a field out of bounds)."""
    w = Writer().raw(MAGIC)
    if isinstance(msg, NodeUp):
        if len(msg.watching) > MAX_WATCHING or len(msg.certificate) > MAX_BLOB:
            raise ValueError("node announcement out of bounds")
        w.u8(_UP).str8(_check_instance(msg.instance)).name(msg.name)
        w.u16(len(msg.watching))
        for name in sorted(msg.watching):
            w.name(name)
        w.str8(msg.network or "").bytes16(msg.certificate)
    elif isinstance(msg, NodeDown):
        w.u8(_DOWN).str8(_check_instance(msg.instance)).name(msg.name)
    elif isinstance(msg, Forward):
        if len(msg.blob) > MAX_BLOB:
            raise ValueError("forwarded blob too large")
        w.u8(_FORWARD).str8(_check_instance(msg.instance)).name(msg.sender).name(msg.to)
        w.bytes16(msg.blob)
    else:
        if len(msg.blob) > MAX_BLOB:
            raise ValueError("revocation list too large")
        w.u8(_REVOKED).str8(_check_instance(msg.instance)).str8(msg.network)
        w.bytes16(msg.blob)
    return w.getvalue()


def decode_cluster(data: bytes) -> ClusterMessage:
    """Parse a cluster message; SignalDecodeError if it is malformed or out of bounds."""
    if len(data) > MAX_MESSAGE:
        raise SignalDecodeError("cluster message too long")
    r = Reader(data)
    if r.raw(len(MAGIC)) != MAGIC:
        raise SignalDecodeError("not a cluster message")
    kind = r.u8()
    instance = r.str8()
    try:
        _check_instance(instance)
    except ValueError as exc:
        raise SignalDecodeError(str(exc)) from None
    msg: ClusterMessage
    if kind == _UP:
        name = r.name()
        count = r.u16()
        if count > MAX_WATCHING:
            raise SignalDecodeError("too many watched names")
        watching = frozenset(r.name() for _ in range(count))
        network = r.str8() or None
        msg = NodeUp(instance, name, watching, network, r.bytes16(MAX_BLOB))
    elif kind == _DOWN:
        msg = NodeDown(instance, r.name())
    elif kind == _FORWARD:
        sender = r.name()
        msg = Forward(instance, sender, r.name(), r.bytes16(MAX_BLOB))
    elif kind == _REVOKED:
        network = r.str8()
        msg = RevocationsChanged(instance, network, r.bytes16(MAX_BLOB))
    else:
        raise SignalDecodeError(f"unknown cluster message type {kind}")
    r.finish()
    return msg


__all__ = [
    "MAGIC",
    "ClusterMessage",
    "Forward",
    "NodeDown",
    "NodeUp",
    "RevocationsChanged",
    "check_name",
    "decode_cluster",
    "encode_cluster",
]

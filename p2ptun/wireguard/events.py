"""Events a :class:`~p2ptun.wireguard.peer.Peer` reports, and the drop/accept counters."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True, slots=True)
class HandshakeCompleted:
    """A new session is usable for sending (§5.4.5; for the responder: first data received)."""

    now: float
    is_initiator: bool


@dataclass(frozen=True, slots=True)
class HandshakeFailed:
    """No response within ``REKEY_ATTEMPT_TIME``; staged packets were dropped (§6.4)."""

    now: float


@dataclass(frozen=True, slots=True)
class SessionExpired:
    """All key material was erased after ``REJECT_AFTER_TIME × 3`` without a session (§6.3)."""

    now: float


@dataclass(frozen=True, slots=True)
class PathQuiet:
    """The path may have failed: nothing authenticated arrived from the peer for
    :attr:`Peer.path_silence` seconds although data went to it since (``unanswered``), or
    although data had been arriving until then (not ``unanswered``). Not a protocol event: the
    owner of the path checks it (an ICE consent probe) and fails over if it is dead."""

    now: float
    unanswered: bool


Event = HandshakeCompleted | HandshakeFailed | SessionExpired | PathQuiet


@dataclass(slots=True)
class Counters:
    """What the protocol layer dropped or did, for ``p2ptun status`` and for tests.

    One instance per :class:`~p2ptun.wireguard.device.Device`, shared by its peers.
    """

    malformed: int = 0
    #: Handshake messages (types 1-3) received, well-formed or not.
    handshake_messages: int = 0
    #: Handshake messages dropped under load by the per-source rate limit (after MAC2).
    handshake_rate_limited: int = 0
    bad_mac1: int = 0
    cookie_replies_sent: int = 0
    cookie_replies_received: int = 0
    bad_cookie_reply: int = 0
    handshake_auth_failed: int = 0
    unknown_peer: int = 0
    replayed_initiation: int = 0
    initiation_flood: int = 0
    unknown_index: int = 0
    unexpected_response: int = 0
    expired_keypair: int = 0
    transport_auth_failed: int = 0
    replayed_transport: int = 0
    bad_inner_packet: int = 0
    source_not_allowed: int = 0
    no_route: int = 0
    staged_dropped: int = 0
    initiations_sent: int = 0
    responses_sent: int = 0
    handshakes_completed: int = 0
    keepalives_sent: int = 0
    keepalives_received: int = 0
    packets_sent: int = 0
    packets_received: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

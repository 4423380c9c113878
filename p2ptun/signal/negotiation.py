"""Offer/answer per peer, ICE roles and the glare rule (docs/ARCHITECTURE.md §2).

- The node that starts a connection sends the :class:`~p2ptun.signal.seal.Offer` and is
  ICE-controlling; the other answers and is ICE-controlled (RFC 8445 §6.1.1: the roles are
  decided by signaling, here by who offers).
- **Glare**: both nodes offer at once (each receives the other's offer while its own is out).
  The offer from the lexicographically smaller public key wins. Keys are compared as their raw
  32 bytes (``bytes`` order, i.e. as unsigned big-endian numbers), not as base64 text, whose
  character order differs. Both sides apply the same rule to the same two keys, so they agree
  without another round trip: the winner ignores the losing offer; the loser abandons its own
  session and answers the winner's.
- A :class:`~p2ptun.signal.seal.Restart` is an offer for a connection that exists (ICE
  restart); it follows the same rules.

:class:`Negotiation` is the per-peer state machine: :meth:`Negotiation.on_send` for what this
node sends, :meth:`Negotiation.on_receive` for what arrives (already opened and replay-checked
by :class:`~p2ptun.signal.seal.SignalBox`). It holds no keys and does no I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from p2ptun.errors import LocalProtocolError
from p2ptun.signal.seal import Answer, Bye, Candidates, Offer, PeerMessage, RelayGrant, Restart


class NegotiationError(LocalProtocolError):
    """The daemon tried to send something the negotiation state does not allow (an answer
    to an offer that was never received, candidates for another session)."""


class Role(enum.Enum):
    """ICE role of this node for a session (RFC 8445 §6.1.1)."""

    CONTROLLING = "controlling"
    CONTROLLED = "controlled"


class NegotiationState(enum.Enum):
    #: No session.
    IDLE = "idle"
    #: We want to offer but the peer is offline (or we are not registered): the offer is kept
    #: and sent when presence says the peer is online.
    WAITING_FOR_PEER = "waiting_for_peer"
    #: Our offer is out; waiting for the answer. We are controlling.
    OFFERING = "offering"
    #: We received an offer and owe an answer. We are controlled.
    ANSWERING = "answering"
    #: Offer and answer exchanged; ICE runs.
    ESTABLISHED = "established"


def offer_wins(offerer_key: bytes, other_key: bytes) -> bool:
    """Glare: does the offer from ``offerer_key`` beat the simultaneous one from
    ``other_key``? The smaller raw key wins."""
    return offerer_key < other_key


@dataclass(frozen=True, slots=True)
class Accepted:
    """A received message the negotiation accepts, with what it means for this node.

    ``role`` is this node's ICE role for ``message.session`` (set for offers, restarts and
    answers); ``superseded`` is our own session that an accepted offer replaced (we lost glare,
    or the peer started over), which the daemon should tear down.
    """

    message: PeerMessage
    role: Role | None = None
    superseded: int | None = None


@dataclass
class NegotiationCounters:
    glare_won: int = 0
    glare_lost: int = 0
    stale: int = 0


class Negotiation:
    """Offer/answer state with one peer."""

    def __init__(self, local_key: bytes, remote_key: bytes) -> None:
        self.local_key = local_key
        self.remote_key = remote_key
        self.state = NegotiationState.IDLE
        self.session: int | None = None
        self.role: Role | None = None
        #: The offer to send once the peer is online (state WAITING_FOR_PEER).
        self.pending: Offer | Restart | None = None
        self.counters = NegotiationCounters()

    # -- what we send --------------------------------------------------------------------

    def wait_for_peer(self, offer: Offer | Restart) -> None:
        """Keep ``offer`` until the peer is online."""
        self.state = NegotiationState.WAITING_FOR_PEER
        self.pending = offer
        self.session = offer.session
        self.role = Role.CONTROLLING

    def on_send(self, message: PeerMessage) -> None:
        """Record a message this node is about to send; raises NegotiationError if the
        state does not allow it."""
        if isinstance(message, Offer | Restart):
            self.state = NegotiationState.OFFERING
            self.session = message.session
            self.role = Role.CONTROLLING
            self.pending = None
        elif isinstance(message, Answer):
            if self.state is not NegotiationState.ANSWERING or message.session != self.session:
                raise NegotiationError("no offer of that session to answer")
            self.state = NegotiationState.ESTABLISHED
        elif isinstance(message, Candidates):
            if self.session != message.session or self.state in (
                NegotiationState.IDLE,
                NegotiationState.WAITING_FOR_PEER,
            ):
                raise NegotiationError("candidates for a session that is not running")
        elif isinstance(message, Bye):
            self.reset()
        # A RelayGrant is outside the negotiation: any state may send it.

    def reset(self) -> None:
        self.state = NegotiationState.IDLE
        self.session = None
        self.role = None
        self.pending = None

    # -- what arrives --------------------------------------------------------------------

    def on_receive(self, message: PeerMessage) -> Accepted | None:
        """Return what ``message`` means, or None if it is dropped (lost glare, stale)."""
        if isinstance(message, RelayGrant):
            return Accepted(message, self.role)  # outside the negotiation: any state
        if isinstance(message, Offer | Restart):
            return self._offer(message)
        if isinstance(message, Answer):
            if self.state is NegotiationState.OFFERING and message.session == self.session:
                self.state = NegotiationState.ESTABLISHED
                return Accepted(message, Role.CONTROLLING)
            self.counters.stale += 1
            return None
        if isinstance(message, Candidates):
            if message.session == self.session and self.state in (
                NegotiationState.OFFERING,
                NegotiationState.ANSWERING,
                NegotiationState.ESTABLISHED,
            ):
                return Accepted(message, self.role)
            self.counters.stale += 1
            return None
        # Bye: for our session, or 0 for all.
        if message.session in (0, self.session) and self.state is not NegotiationState.IDLE:
            superseded = self.session
            self.reset()
            return Accepted(message, None, superseded)
        self.counters.stale += 1
        return None

    def _offer(self, offer: Offer | Restart) -> Accepted | None:
        if offer.session == self.session and self.state in (
            NegotiationState.ANSWERING,
            NegotiationState.ESTABLISHED,
        ):
            self.counters.stale += 1  # a duplicate of the offer we are already handling
            return None
        if self.state is NegotiationState.OFFERING:
            if offer_wins(self.local_key, self.remote_key):
                self.counters.glare_won += 1
                return None
            self.counters.glare_lost += 1
        superseded = self.session if self.state is not NegotiationState.IDLE else None
        self.state = NegotiationState.ANSWERING
        self.session = offer.session
        self.role = Role.CONTROLLED
        self.pending = None
        return Accepted(offer, Role.CONTROLLED, superseded)

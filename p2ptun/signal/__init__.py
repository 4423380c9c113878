"""Signaling: how nodes find each other through the rendezvous (docs/ARCHITECTURE.md §2).

Layers, bottom up, all sans-I/O:

- :mod:`.frames` — length-prefixed, versioned, typed frames on the TCP stream (≤ 64 KiB).
- :mod:`.channel` — the node ↔ rendezvous channel: ``Noise_IK_25519_ChaChaPoly_BLAKE2s`` with
  its own prologue, then counter-checked transport frames.
- :mod:`.messages` — what nodes and the rendezvous say: register, heartbeat, presence, routing,
  TURN credentials.
- :mod:`.seal` — what one node says to another (offer, answer, candidates, restart, bye), sealed
  end to end with ``Noise_K`` so the rendezvous can neither read, forge, replay nor redirect it.
- :mod:`.negotiation` — offer/answer, ICE roles and the glare rule.
- :mod:`.client` — the node's client state machine (connect, register, heartbeat, backoff).
- :mod:`.hub` — the rendezvous' side: registration, presence, routing, TURN credentials, limits.

Their trio shells: :class:`p2ptun.net.signaling.SignalingClient` (the node's, run by the daemon)
and :class:`p2ptun.rendezvous.signaling.SignalingServer` (the rendezvous').
"""

from p2ptun.signal.backoff import BackoffPolicy
from p2ptun.signal.client import (
    ClientEvent,
    ClientState,
    ClientTimers,
    Disconnected,
    PeerUnreachable,
    PresenceChanged,
    RegisteredEvent,
    RegistrationRefused,
    SignalClientCore,
    SignalReceived,
    TurnCredentialsReceived,
    TurnUnavailable,
)
from p2ptun.signal.errors import ChannelError, SealError, SignalDecodeError
from p2ptun.signal.negotiation import NegotiationError, NegotiationState, Role
from p2ptun.signal.seal import (
    Answer,
    Bye,
    Candidates,
    Offer,
    PeerMessage,
    RelayGrant,
    Restart,
    SealPolicy,
)

__all__ = [
    "Answer",
    "BackoffPolicy",
    "Bye",
    "Candidates",
    "ChannelError",
    "ClientEvent",
    "ClientState",
    "ClientTimers",
    "Disconnected",
    "NegotiationError",
    "NegotiationState",
    "Offer",
    "PeerMessage",
    "PeerUnreachable",
    "PresenceChanged",
    "RegisteredEvent",
    "RegistrationRefused",
    "RelayGrant",
    "Restart",
    "Role",
    "SealError",
    "SealPolicy",
    "SignalClientCore",
    "SignalDecodeError",
    "SignalReceived",
    "TurnCredentialsReceived",
    "TurnUnavailable",
]

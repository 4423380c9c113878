"""What the ICE agent reports: its events, the selected pair they name, its overall state.

After every input the shell drains :meth:`p2ptun.ice.agent.IceAgent.pop_events` (a list of
:data:`IceEvent`, in order) and acts on them: :class:`PairSelected` moves data to a new pair
(after a restart, or from a relayed to a direct one, the old pair carried data until then),
:class:`BetterPairAvailable` says a direct pair works while data is relayed,
:class:`ConsentSuspect` / :class:`ConsentRestored` / :class:`ConsentExpired` follow consent
freshness on the selected pair (RFC 7675; after expiry nothing may be sent on it),
:class:`StateChanged` follows :class:`AgentState`, :class:`RoleChanged` a role conflict (RFC
8445 §7.2.5.1, §7.3.1.1) and :class:`GenerationFailed` the failure of a restarted
generation's checks while an older pair still carries data.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from p2ptun.addr import Address
from p2ptun.ice.candidate import Candidate, CandidatePair, CandidateType

__all__ = [
    "AgentState",
    "BetterPairAvailable",
    "ConsentExpired",
    "ConsentLost",
    "ConsentRestored",
    "ConsentSuspect",
    "GenerationFailed",
    "IceEvent",
    "PairSelected",
    "RoleChanged",
    "SelectedPair",
    "StandbyReady",
    "StateChanged",
]


class AgentState(enum.Enum):
    """The agent's overall state (RFC 8445 §6.1.3 check list states, as WebRTC reports them)."""

    NEW = "new"
    CHECKING = "checking"
    CONNECTED = "connected"
    COMPLETED = "completed"
    DISCONNECTED = "disconnected"
    FAILED = "failed"


@dataclass(frozen=True)
class SelectedPair:
    """The pair data flows over.

    ``local`` is the local candidate of the valid pair (what the peer sees: host, srflx,
    prflx or relay), ``remote`` the remote candidate; ``base`` is where to send from (a host
    socket address, or a relayed address when ``via_relay``).
    """

    local: Candidate
    remote: Candidate
    base: Address
    via_relay: bool
    generation: int
    rtt: float | None = None

    @property
    def relayed(self) -> bool:
        """The path goes through a TURN server (either side relayed)."""
        return CandidateType.RELAY in (self.local.type, self.remote.type)

    @property
    def candidate_pair(self) -> CandidatePair:
        return CandidatePair(self.local, self.remote)


@dataclass(frozen=True)
class StateChanged:
    state: AgentState
    previous: AgentState


@dataclass(frozen=True)
class RoleChanged:
    """A role conflict (RFC 8445 §7.2.5.1, §7.3.1.1) or a lite peer changed our role."""

    controlling: bool


@dataclass(frozen=True)
class PairSelected:
    """A pair was selected for data (nominated); ``previous`` is the pair it replaces (after a
    restart, or a move from a relayed to a direct pair). Send on ``pair`` from now on."""

    pair: SelectedPair
    previous: SelectedPair | None


@dataclass(frozen=True)
class BetterPairAvailable:
    """While relayed, a direct (non-relayed) pair succeeded. A controlling agent with
    ``renominate`` moves to it by itself; otherwise the node may restart ICE."""

    pair: CandidatePair
    current: SelectedPair


@dataclass(frozen=True)
class ConsentSuspect:
    """Consecutive consent checks went unanswered (RFC 7675); consent still holds."""

    pair: SelectedPair
    missed: int


@dataclass(frozen=True)
class StandbyReady:
    """A relayed pair is kept valid beside the selected direct one (the agent's standby): the
    shell prepares it (a TURN channel), so that data can move there at once."""

    pair: SelectedPair


@dataclass(frozen=True)
class ConsentLost:
    """A probe of the selected pair (:meth:`IceAgent.probe_consent`) went unanswered: the pair
    does not carry data now. Consent itself holds until its timeout; move the data elsewhere
    and find a new path."""

    pair: SelectedPair


@dataclass(frozen=True)
class ConsentRestored:
    """A consent response arrived after :class:`ConsentSuspect` or :class:`ConsentLost`."""

    pair: SelectedPair


@dataclass(frozen=True)
class ConsentExpired:
    """No consent response for the consent timeout: stop sending (RFC 7675 §5.2)."""

    pair: SelectedPair
    last_response: float


@dataclass(frozen=True)
class GenerationFailed:
    """The checks of a restarted generation failed while an older pair still carries data."""

    generation: int


IceEvent = (
    StateChanged
    | RoleChanged
    | PairSelected
    | BetterPairAvailable
    | StandbyReady
    | ConsentSuspect
    | ConsentLost
    | ConsentRestored
    | ConsentExpired
    | GenerationFailed
)

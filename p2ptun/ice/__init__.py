"""ICE (RFC 8445): candidates and their text form (RFC 8839), check lists, the agent.

The candidate model and attribute grammar are re-exported here; see
:mod:`p2ptun.ice.candidate` and :mod:`p2ptun.ice.sdp`.
"""

from p2ptun.ice.candidate import (
    DEFAULT_MAX_PAIRS,
    MAX_LOCAL_PREFERENCE,
    MAX_PRIORITY,
    TYPE_PREFERENCES,
    Candidate,
    CandidatePair,
    CandidateType,
    PairFoundation,
    TcpType,
    Transport,
    assign_local_preferences,
    can_pair,
    candidate_base,
    compute_foundation,
    compute_priority,
    eliminate_redundant,
    make_host_candidate,
    make_prflx_candidate,
    make_relay_candidate,
    make_srflx_candidate,
    pair_priority,
    peer_reflexive_priority,
)
from p2ptun.ice.sdp import (
    MAX_CANDIDATES,
    IceCredentials,
    IceDescription,
    IceParseError,
    UnsupportedCandidateError,
    generate_credentials,
    parse_candidate,
    validate_pwd,
    validate_ufrag,
)

__all__ = [
    "DEFAULT_MAX_PAIRS",
    "MAX_CANDIDATES",
    "MAX_LOCAL_PREFERENCE",
    "MAX_PRIORITY",
    "TYPE_PREFERENCES",
    "Candidate",
    "CandidatePair",
    "CandidateType",
    "IceCredentials",
    "IceDescription",
    "IceParseError",
    "PairFoundation",
    "TcpType",
    "Transport",
    "UnsupportedCandidateError",
    "assign_local_preferences",
    "can_pair",
    "candidate_base",
    "compute_foundation",
    "compute_priority",
    "eliminate_redundant",
    "generate_credentials",
    "make_host_candidate",
    "make_prflx_candidate",
    "make_relay_candidate",
    "make_srflx_candidate",
    "pair_priority",
    "parse_candidate",
    "peer_reflexive_priority",
    "validate_pwd",
    "validate_ufrag",
]

# --- the agent (appended) ---------------------------------------------------------------------
from p2ptun.ice.agent import AgentConfig, IceAgent, IceStats, OutgoingDatagram
from p2ptun.ice.checklist import CheckList, CheckPair, PairState
from p2ptun.ice.consent import (
    ConsentConfig,
    ConsentFreshness,
    ConsentState,
    RandomSource,
)
from p2ptun.ice.events import (
    AgentState,
    BetterPairAvailable,
    ConsentExpired,
    ConsentRestored,
    ConsentSuspect,
    GenerationFailed,
    IceEvent,
    PairSelected,
    RoleChanged,
    SelectedPair,
    StateChanged,
)

__all__ += [
    "AgentConfig",
    "AgentState",
    "BetterPairAvailable",
    "CheckList",
    "CheckPair",
    "ConsentConfig",
    "ConsentExpired",
    "ConsentFreshness",
    "ConsentRestored",
    "ConsentState",
    "ConsentSuspect",
    "GenerationFailed",
    "IceAgent",
    "IceEvent",
    "IceStats",
    "OutgoingDatagram",
    "PairSelected",
    "PairState",
    "RandomSource",
    "RoleChanged",
    "SelectedPair",
    "StateChanged",
]

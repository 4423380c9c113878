"""The sans-I/O ICE agent (RFC 8445), full or lite, with trickle ICE (RFC 8838) and consent
freshness (RFC 7675), for one data stream with one UDP component.

The agent never touches a socket, a clock or a random source it was not given. Inputs:

- :meth:`IceAgent.handle_datagram` — a STUN datagram, the local *base* address it arrived on
  (a host socket address, or the relayed address of a TURN allocation when the shell
  unwrapped it from a Data indication / ChannelData), the remote address and ``now``;
- local candidates the shell gathered (:meth:`~IceAgent.add_local_candidate`,
  :meth:`~IceAgent.set_local_end_of_candidates`);
- what the peer signalled (:meth:`~IceAgent.set_remote_credentials`,
  :meth:`~IceAgent.add_remote_candidate`, :meth:`~IceAgent.set_remote_end_of_candidates`),
  in any order and at any time (trickle ICE);
- :meth:`~IceAgent.handle_timeout` at :meth:`~IceAgent.next_wakeup`;
- :meth:`~IceAgent.restart` with fresh credentials (RFC 8445 §9).

Outputs: :meth:`~IceAgent.pop_transmits` (:class:`OutgoingDatagram`: bytes, the local base to
send from — ``via_relay`` says it is a TURN allocation — and the destination) and
:meth:`~IceAgent.pop_events` (:data:`IceEvent`). After *every* input call the shell drains
both and re-arms its timer at :meth:`~IceAgent.next_wakeup`. A thin trio shell over
:class:`p2ptun.net.udp.UdpEndpoint` does exactly that: STUN datagrams from the socket (and
from the TURN client, with the relayed address as ``local``) go to ``handle_datagram``; data
goes over :attr:`~IceAgent.selected_pair` while :meth:`~IceAgent.can_send` is true.

A shell, in outline (trio, one UDP socket per family, a TURN client per relay)::

    def pump():
        for t in agent.pop_transmits():
            if t.via_relay:
                turn_clients[t.local].send_to_peer(t.remote, t.data)
            else:
                sockets[t.local].send(t.data, t.remote)
        for event in agent.pop_events():
            ...  # PairSelected -> point the WireGuard endpoint at event.pair, etc.
        timer.deadline = agent.next_wakeup() or math.inf

    # on a STUN datagram from a socket:  agent.handle_datagram(data, sock_addr, src, now); pump()
    # on data the TURN client unwrapped: agent.handle_datagram(data, relayed, peer, now); pump()
    # when the timer fires:              agent.handle_timeout(now); pump()

Behaviour, with the RFC sections implemented
--------------------------------------------
- Candidates (§5.1): host, srflx, relay local candidates from the shell; redundant ones are
  eliminated (§5.1.3); pairs are formed from *bases* only (host and relay candidates), which is
  the pruning of §6.1.2.4 done up front; remote candidates of any type, peer-reflexive ones
  learnt from checks (§7.3.1.3) and upgraded when signalled later (RFC 8838 §11.4).
  Remote candidates are the peer's word, and checks go where they point: one that points at
  an unspecified, multicast or broadcast address, at loopback, at a link-local address (unless
  ``allow_link_local``) or at one of this agent's own host addresses (unless ``allow_local``)
  is refused and counted (``remote_candidates_forbidden``), signalled or learnt alike, so a
  peer cannot turn our checks on our own host or LAN services (RFC 8445 §19.1, §19.2.1 ask
  agents to limit what checks can reach).
- Check list (§6.1.2, :mod:`p2ptun.ice.checklist`): priorities (§6.1.2.3), states, initial
  Waiting/Frozen per foundation (§6.1.2.6, incrementally as in RFC 8838 §10), unfreezing on
  success (§7.2.5.3.3), a limit on pairs (§6.1.2.4).
- Scheduling (§6.1.4.2): one new check every Ta (default 50 ms), triggered checks first
  (§6.1.4.1, §7.3.1.4); retransmissions per RFC 8489 with RTO = max(500 ms, Ta × (Waiting +
  In-Progress)) (§14.3).
- Checks (§7.1): USERNAME ``rufrag:lufrag``, PRIORITY, ICE-CONTROLLING/ICE-CONTROLLED with the
  64-bit tie-breaker, USE-CANDIDATE when nominating, MESSAGE-INTEGRITY with the peer's
  password and FINGERPRINT. Responses (§7.2.5): 487 role conflict (§7.2.5.1), the symmetric
  address check (§7.2.5.2.1), XOR-MAPPED-ADDRESS → local peer-reflexive candidate and valid
  pair (§7.2.5.3), nomination (§7.2.5.3.4).
- Requests (§7.3): authentication with the local password (400/401 otherwise), 420 for
  unknown comprehension-required attributes, role conflicts both ways (§7.3.1.1), the
  success response with XOR-MAPPED-ADDRESS, peer-reflexive remote candidates (§7.3.1.3),
  triggered checks (§7.3.1.4), USE-CANDIDATE (§7.3.1.5; a peer's aggressive nomination is
  accepted too). A check arriving before the remote credentials, or on a base not yet added,
  is answered and queued (bounded) until they arrive (RFC 8838 §14, RFC 8445 §7.3).
  Deviation: a check on an In-Progress pair does not cancel that transaction (§7.3.1.4);
  its request is re-sent at once instead, which has the same effect on the wire.
- Nomination (§8.1.1, regular) and roles (§6.1.1, §7.2.5.1, §7.3.1.1): the policy object
  :class:`~p2ptun.ice.nomination.NominationPolicy` and the role functions of
  :mod:`p2ptun.ice.nomination` decide when the controlling agent nominates (at once when no
  higher-priority pair may still succeed, ``nomination_delay`` after the first valid pair at
  the latest; a relayed best pair waits for every better pair and for both sides' gathering,
  a direct one gives up on a better pair once its check went out twice and
  ``max(direct_hold_min, direct_hold_rtts × RTT)`` passed), what nominates a pair on the
  controlled side (USE-CANDIDATE, §7.3.1.5), which pair is selected (the highest-priority
  nominated valid one, both roles) and how role conflicts end; the agent sends the checks,
  the USE-CANDIDATE and the 487s. After selection, Waiting/Frozen pairs are dropped (§8.1.2),
  except as below.
- Ceasing checks (§8.1.2): once a direct (non-relayed) pair is selected, both roles abandon
  the checks in flight on every other pair, of lower and of higher priority alike (the RFC
  lets the agent decide for the higher ones): their transactions stop without an outcome, so
  nothing is retransmitted and no timer is armed for them, and the pairs count as Failed.
  Typically these are the checks towards the other site's private address that the
  nomination hold gave up on; left alone they would be retransmitted until the RFC 8489
  timeout, some 40 s after connecting. A late response is then an unknown one and is
  ignored. Checks on pairs being nominated (or nominated by the peer and not yet valid) are
  kept, and a peer's check on an abandoned pair triggers a new check as usual (§7.3.1.4).
  Consent checks on the selected pair are separate and unaffected. A relayed selection
  keeps its checks running (next item).
- Better paths after relaying (design, p2ptun-specific): while the selected pair is relayed,
  non-relayed pairs are kept; their checks run to completion and failed ones are put back to
  Waiting ``direct_retry_interval`` seconds after selection, then at doubling intervals (up to
  ``direct_retry_max_interval``), at most ``direct_retry_rounds`` times. When
  a non-relayed pair succeeds, the agent emits :class:`BetterPairAvailable` (both roles). A
  controlling agent with ``renominate`` (the default) then nominates that pair (USE-CANDIDATE
  on it) and, when that check succeeds, selects it (:class:`PairSelected`); a controlled agent
  selects the highest-priority nominated pair, so it follows. RFC 8445 §8.1.1 allows one
  nomination per session; this "renomination" only ever moves from a relayed to a direct pair,
  and a peer that ignores it stays on the relay (the node may then restart ICE). Data keeps
  flowing on the old pair until the new one is selected.
- States (:class:`AgentState`): NEW until the remote credentials are known; CHECKING; CONNECTED
  once a pair is selected (checks may still run); COMPLETED when nothing regular is left to
  check; DISCONNECTED while consent is suspect; FAILED when every pair failed after
  end-of-candidates both ways (RFC 8838 §8), after ``connect_timeout`` without a valid pair,
  or when consent expired. :meth:`restart` revives a failed agent.
- Consent (RFC 7675, :mod:`p2ptun.ice.consent`): on the selected pair, checks every 4–6 s
  (sent together with the answer to the peer's check when that falls in the window),
  :class:`ConsentSuspect` after two unanswered ones, :class:`ConsentExpired` 30 s after the
  last response and :meth:`can_send` false from then on. :meth:`probe_consent` checks the
  pair at once with a short burst (the node's fast failure detection) and reports
  :class:`ConsentLost` within a fraction of a second if nothing answers. Peers' consent
  checks are answered as any check.
- ICE restart (§9): :meth:`restart` starts a new generation (new credentials, empty candidate
  lists, new check list; the shell re-gathers). The old selected pair stays selected, keeps
  its consent checks (with the old credentials) and keeps answering the peer's old-credential
  checks until a pair of the new generation is selected (make-before-break); then
  :class:`PairSelected` names both. Checks with the previous generation's credentials are
  answered until the next restart, since the peer may switch later than we do.
- ICE-lite (§2.5): a lite agent has host candidates only, never sends checks, is controlled
  (the full peer is controlling, §6.1.1), answers checks, and selects the nominated pair;
  its "consent" is the peer's checks: it stops sending 30 s after the last one. Lite/lite: no
  checks at all; once the peer's end-of-candidates arrives both pick the highest-priority pair
  (same family), with the offerer controlling.
- Bounds: pairs (``max_pairs``), local and remote candidates, checks in flight
  (``max_transactions``), queued early checks (``max_early_checks``), consent transactions.
  Malformed or unauthenticated datagrams are dropped and counted in :class:`IceStats`; nothing
  from the network raises.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

from p2ptun.addr import Address, is_ipv6
from p2ptun.ice.candidate import (
    DEFAULT_MAX_PAIRS,
    MAX_PRIORITY,
    Candidate,
    CandidateType,
    Transport,
    can_pair,
    candidate_base,
    make_prflx_candidate,
    peer_reflexive_priority,
)
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
    ConsentLost,
    ConsentRestored,
    ConsentSuspect,
    GenerationFailed,
    IceEvent,
    PairSelected,
    RoleChanged,
    SelectedPair,
    StandbyReady,
    StateChanged,
)
from p2ptun.ice.hardnat import (
    HardNatConfig,
    HardNatProbing,
    ordinary_checks_failed,
    probing_bases,
)
from p2ptun.ice.nomination import (
    NominationPolicy,
    RoleConflict,
    lite_lite_pair,
    resolve_role_conflict,
    role_after_conflict_response,
    role_facing,
)
from p2ptun.ice.sdp import MAX_CANDIDATES, IceCredentials
from p2ptun.log import get_logger
from p2ptun.stun.constants import (
    AttrType,
    ErrorCode,
    MessageClass,
    Method,
    StunDecodeError,
)
from p2ptun.stun.credentials import short_term_key
from p2ptun.stun.message import Message, is_stun
from p2ptun.stun.server import error_response, unknown_comprehension_required
from p2ptun.stun.transaction import (
    TransactionManager,
    TransactionOutcome,
    TransactionState,
)
from p2ptun.stun.transaction import (
    Transmit as StunTransmit,
)

__all__ = [
    "AgentConfig",
    "IceAgent",
    "IceStats",
    "OutgoingDatagram",
    "RandomSource",
]

log = get_logger("ice")

_BROADCAST = ipaddress.IPv4Address("255.255.255.255")
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")


@dataclass(frozen=True)
class AgentConfig:
    """The agent's tunables (not the user's ``[ice]`` section, which is
    :class:`p2ptun.config.IceConfig`). Defaults follow RFC 8445 / RFC 7675 where they give
    one."""

    #: Pacing: one new check every Ta seconds (RFC 8445 §14.2).
    ta: float = 0.05
    #: Check list size limit (RFC 8445 §6.1.2.4).
    max_pairs: int = DEFAULT_MAX_PAIRS
    max_local_candidates: int = 32
    #: Remote candidates kept, peer-reflexive ones included.
    max_remote_candidates: int = MAX_CANDIDATES
    #: Connectivity-check transactions in flight.
    max_transactions: int = 64
    #: Checks received before the remote credentials (or their base) that are remembered.
    max_early_checks: int = 32
    #: Lower bound of the check RTO (RFC 8445 §14.3) and RFC 8489 Rc/Rm for checks.
    check_rto_min: float = 0.5
    check_rc: int = 7
    check_rm: int = 16
    #: Controlling agent: nominate the best valid pair at the latest this long after the
    #: first valid pair appeared.
    nomination_delay: float = 2.0
    #: Controlling agent, best valid pair not relayed: a higher-priority pair in progress is
    #: waited for only until its check went out twice (the second time early, once the
    #: first had this hold to be answered) and the hold passed after the last send. The hold
    #: is ``direct_hold_rtts`` round trips of the valid pair, at least ``direct_hold_min``.
    direct_hold_rtts: float = 4.0
    direct_hold_min: float = 0.1
    #: No valid pair this long after checks started → FAILED (None: no limit).
    connect_timeout: float | None = 30.0
    consent: ConsentConfig = field(default_factory=ConsentConfig)
    #: While relayed: retry failed direct pairs this long after selection, then at intervals
    #: doubling up to ``direct_retry_max_interval``, this many times (5 s ... 160 s: the last
    #: retry about 10 min after selection; an idle relayed node stops waking for them early).
    direct_retry_interval: float = 5.0
    direct_retry_max_interval: float = 160.0
    direct_retry_rounds: int = 8
    #: Controlling agent: nominate a direct pair that succeeds while relayed.
    renominate: bool = True
    #: Controlling agent: nominate a relayed best pair at once (it carries data while direct
    #: pairs are still checked, and renomination moves to one that succeeds) instead of
    #: waiting ``nomination_delay`` for them. Needs ``renominate``.
    relay_first: bool = False
    #: Controlling agent: nominate a direct best pair at once too (no hold for higher pairs
    #: still in progress); one of higher priority that succeeds later is renominated. Needs
    #: ``renominate``.
    direct_first: bool = False
    #: Controlling agent: every check carries USE-CANDIDATE until a pair is nominated
    #: (aggressive nomination, RFC 5245 §8.1.1.2; an RFC 8445 controlled agent honours it,
    #: §7.3.1.5): the first pair to succeed is nominated by its own check, one Ta and one
    #: round trip sooner than by a nominating check after it. Better pairs later move up by
    #: renomination (``renominate``); every check sent while nothing was nominated still
    #: nominates its pair if it succeeds, and the highest-priority nominated pair is selected
    #: on both sides.
    aggressive: bool = False
    #: While a direct pair is selected, keep the best relayed pair valid as a standby (its
    #: checks go on, then one light check every ``standby_interval`` ± jitter), so that the
    #: node can move the data there at once when the direct pair goes quiet; while a pair
    #: through our own relay is selected, the best pair through the peer's relay (our NAT
    #: forgetting us ends our allocation, not theirs).
    standby: bool = False
    standby_interval: float = 10.0
    #: SOFTWARE attribute in our responses (None: none).
    software: str | None = None
    #: Accept remote candidates at link-local addresses (the ``[ice] ipv6_link_local`` setting).
    allow_link_local: bool = False
    #: Accept remote candidates at loopback and at this agent's own host addresses: agents
    #: that share one host in tests and labs. Off, a peer cannot point our checks at us.
    allow_local: bool = False
    #: While relayed after ordinary checks failed, probe the ports a symmetric NAT of the
    #: peer is predicted to use (:mod:`p2ptun.ice.hardnat`; None: never).
    hard_nat: HardNatConfig | None = None

    def __post_init__(self) -> None:
        if self.ta <= 0 or self.check_rto_min <= 0:
            raise ValueError("ta and check_rto_min must be positive")
        if self.direct_hold_rtts < 0 or self.direct_hold_min < 0 or self.nomination_delay < 0:
            raise ValueError("nomination delays and holds must not be negative")
        if min(self.max_pairs, self.max_local_candidates, self.max_remote_candidates) < 1:
            raise ValueError("candidate and pair limits must be at least 1")
        if self.max_transactions < 1 or self.max_early_checks < 0:
            raise ValueError("max_transactions must be at least 1, max_early_checks >= 0")
        if self.check_rc < 1 or self.check_rm < 1:
            raise ValueError("check_rc and check_rm must be at least 1")
        if self.standby_interval <= 0:
            raise ValueError("standby_interval must be positive")


@dataclass(frozen=True)
class OutgoingDatagram:
    """A datagram the agent wants sent, with its route: from the local base ``local`` to
    ``remote``.

    ``local`` is a host candidate's address (send from that socket) or, with ``via_relay``,
    the relayed address of a TURN allocation (send through that allocation to ``remote``).
    Unlike :class:`p2ptun.stun.transaction.Transmit` (the bytes of one transaction, sent
    wherever that transaction goes), it carries everything the shell needs to send it: checks,
    their answers and consent checks to any pair come out of one agent.
    """

    data: bytes
    local: Address
    remote: Address
    via_relay: bool = False


@dataclass
class IceStats:
    """Counters (for ``p2ptun status`` and tests)."""

    datagrams: int = 0
    not_stun: int = 0
    malformed: int = 0
    not_binding: int = 0
    bad_fingerprint: int = 0
    bad_requests: int = 0
    unauthenticated: int = 0
    unknown_attributes: int = 0
    role_conflicts: int = 0
    stale_requests: int = 0
    requests: int = 0
    responses_sent: int = 0
    checks_sent: int = 0
    #: Checks in flight abandoned because a direct pair was selected (§8.1.2).
    checks_ceased: int = 0
    consent_checks_sent: int = 0
    #: Consent probes run (the data path saw the pair go quiet), and optional ones held off.
    consent_probes: int = 0
    consent_probes_held_off: int = 0
    unknown_responses: int = 0
    invalid_responses: int = 0
    non_symmetric: int = 0
    early_checks_queued: int = 0
    early_checks_dropped: int = 0
    remote_candidates_ignored: int = 0
    remote_candidates_dropped: int = 0
    #: Remote candidates (signalled or peer-reflexive) at addresses checks may not go to.
    remote_candidates_forbidden: int = 0
    local_candidates_dropped: int = 0
    credentials_rejected: int = 0
    transaction_limit_hits: int = 0
    #: Hard-NAT probes sent (:mod:`p2ptun.ice.hardnat`).
    hard_nat_probes: int = 0


@dataclass(frozen=True)
class _CheckContext:
    pair: CheckPair
    generation: int
    local: Address
    remote: Address
    controlling: bool
    use_candidate: bool
    priority: int


@dataclass(frozen=True)
class _EarlyCheck:
    local: Address
    remote: Address
    priority: int
    use_candidate: bool
    remote_ufrag: str


@dataclass(eq=False)
class _Generation:
    """Everything that an ICE restart (§9) replaces."""

    number: int
    local_credentials: IceCredentials
    checklist: CheckList
    remote_credentials: IceCredentials | None = None
    remote_lite: bool = False
    local_candidates: list[Candidate] = field(default_factory=list)
    remote_candidates: list[Candidate] = field(default_factory=list)
    local_complete: bool = False
    remote_complete: bool = False
    early: deque[_EarlyCheck] = field(default_factory=deque)
    started_at: float | None = None
    first_valid_at: float | None = None
    nominating: CheckPair | None = None
    failed: bool = False
    regular_done: bool = False
    next_probe: float | None = None
    probe_rounds: int = 0
    better_reported: set[tuple[Address, Address]] = field(default_factory=set)
    prflx_serial: int = 0

    def base(self, address: Address) -> Candidate | None:
        for cand in self.local_candidates:
            if cand.address == address and cand.type in (CandidateType.HOST, CandidateType.RELAY):
                return cand
        return None

    def remote(self, address: Address) -> Candidate | None:
        for cand in self.remote_candidates:
            if cand.address == address:
                return cand
        return None


@dataclass(eq=False)
class _Selection:
    pair: CheckPair
    generation: _Generation
    consent: ConsentFreshness | None
    #: Lite agent: when the peer last checked the pair (the lite agent's consent).
    last_request: float
    expired: bool = False


@dataclass
class _Standby:
    """A pair kept valid beside the selected one (``AgentConfig.standby``)."""

    pair: CheckPair
    generation: _Generation
    checks: ConsentFreshness


class IceAgent:
    """An ICE agent for one component over UDP (RFC 8445); see the module docstring.

    ``credentials`` are the local ufrag/pwd, ``controlling`` the initial role (the offerer
    controls, docs/ARCHITECTURE.md §2), ``rng`` the injected random source (tie-breaker,
    transaction ids, consent jitter), ``lite`` makes this an ICE-lite agent (§2.5).
    """

    def __init__(
        self,
        credentials: IceCredentials,
        *,
        controlling: bool,
        rng: RandomSource,
        lite: bool = False,
        config: AgentConfig | None = None,
    ) -> None:
        self.config = config or AgentConfig()
        self.lite = lite
        self._rng = rng
        self._controlling = controlling
        #: The 64-bit tie-breaker (RFC 8445 §7.1.1), kept across restarts.
        self.tie_breaker: int = rng.getrandbits(64)
        self.stats = IceStats()
        cfg = self.config
        self._nomination = NominationPolicy(
            cfg.nomination_delay,
            cfg.direct_hold_rtts,
            cfg.direct_hold_min,
            cfg.renominate,
            cfg.relay_first,
            cfg.direct_first,
        )
        self._gen = _Generation(0, credentials, CheckList(controlling, self.config.max_pairs))
        self._checks: TransactionManager[_CheckContext] = TransactionManager(
            rc=self.config.check_rc, rm=self.config.check_rm
        )
        self._selection: _Selection | None = None
        self._standby: _Standby | None = None
        #: The generation before the last restart: its checks are still answered, because the
        #: peer may keep its old pair (and its consent) a little longer than we do.
        self._previous: _Generation | None = None
        self._next_check_at = 0.0
        self._state = AgentState.NEW
        self._transmits: list[OutgoingDatagram] = []
        self._events: list[IceEvent] = []
        #: Hard-NAT probing of the current generation (``config.hard_nat``).
        self.hard_nat: HardNatProbing | None = None
        self._hard_nat_tid = b""

    # ------------------------------------------------------------------------------------------
    # queries

    @property
    def state(self) -> AgentState:
        return self._state

    @property
    def controlling(self) -> bool:
        return self._controlling

    @property
    def generation(self) -> int:
        """Restart counter: 0, then +1 per :meth:`restart`."""
        return self._gen.number

    @property
    def local_credentials(self) -> IceCredentials:
        return self._gen.local_credentials

    @property
    def remote_credentials(self) -> IceCredentials | None:
        return self._gen.remote_credentials

    @property
    def local_candidates(self) -> list[Candidate]:
        """Local candidates of the current generation (incl. peer-reflexive ones learnt)."""
        return list(self._gen.local_candidates)

    @property
    def remote_candidates(self) -> list[Candidate]:
        """Remote candidates of the current generation (incl. peer-reflexive ones learnt)."""
        return list(self._gen.remote_candidates)

    @property
    def checklist(self) -> CheckList:
        """The current check list (read it, do not change it)."""
        return self._gen.checklist

    @property
    def selected_pair(self) -> SelectedPair | None:
        """The pair data goes over, or None. Check :meth:`can_send` before sending."""
        sel = self._selection
        return None if sel is None else self._describe(sel)

    def can_send(self, now: float | None = None) -> bool:
        """Data may be sent on :attr:`selected_pair`: one is selected and its consent has not
        expired (RFC 7675 §5.2). With ``now``, an expiry due but not yet processed by
        :meth:`handle_timeout` counts too."""
        sel = self._selection
        if sel is None or sel.expired:
            return False
        if now is not None:
            if sel.consent is not None and now >= sel.consent.expires_at:
                return False
            if self._lite_consent(sel) and now >= sel.last_request + self.config.consent.timeout:
                return False
        return True

    def consent_age(self, now: float) -> float | None:
        """Seconds since consent was last confirmed on the selected pair (None if none)."""
        sel = self._selection
        if sel is None:
            return None
        if sel.consent is not None:
            return sel.consent.age(now)
        return max(0.0, now - sel.last_request)

    def pop_transmits(self) -> list[OutgoingDatagram]:
        """Datagrams to send now, in order."""
        out, self._transmits = self._transmits, []
        return out

    def pop_events(self) -> list[IceEvent]:
        """Events since the last call, in order."""
        out, self._events = self._events, []
        return out

    def next_wakeup(self) -> float | None:
        """When :meth:`handle_timeout` must be called next (None: nothing scheduled)."""
        gen = self._gen
        times: list[float] = []
        t = self._checks.next_wakeup()
        if t is not None:
            times.append(t)
        if (
            self._may_check(gen)
            and len(self._checks) < self.config.max_transactions
            and gen.checklist.has_work()
        ):
            times.append(self._next_check_at)
        sel = self._selection
        if sel is not None and not sel.expired:
            if sel.consent is not None:
                t = sel.consent.next_wakeup()
                if t is not None:
                    times.append(t)
            elif self._lite_consent(sel):
                times.append(sel.last_request + self.config.consent.timeout)
        if self._may_check(gen) and self._controlling and gen.nominating is None:
            t = self._nomination.next_wakeup(gen.checklist, gen.first_valid_at, self._gathered(gen))
            if t is not None:
                times.append(t)
        if (
            gen.started_at is not None
            and not gen.failed
            and self.config.connect_timeout is not None
            and not self._selected_in(gen)
            and not gen.checklist.valid_pairs()
        ):
            times.append(gen.started_at + self.config.connect_timeout)
        if gen.next_probe is not None:
            times.append(gen.next_probe)
        if self.hard_nat is not None and (t := self.hard_nat.next_wakeup()) is not None:
            times.append(t)
        if self._hard_nat_may_start(gen):
            times.append(self._next_check_at)
        standby = self._standby
        if standby is not None:
            t = standby.checks.next_wakeup()
            if t is not None:
                times.append(t)
        return min(times) if times else None

    # ------------------------------------------------------------------------------------------
    # local side

    def add_local_candidate(self, candidate: Candidate, now: float) -> bool:
        """Add a gathered local candidate (host, srflx or relay; prflx ones are learnt).

        Redundant candidates (same address and base, RFC 8445 §5.1.3) are dropped, keeping the
        higher priority. Host and relayed candidates are bases and get paired with every
        remote candidate; server-reflexive ones are pruned to their base (§6.1.2.4) and only
        name what the peer sees. Returns whether the candidate was kept. Raises ValueError for
        a candidate this agent cannot use (not component 1 / UDP; not host on a lite agent).
        """
        if candidate.component != 1 or candidate.transport is not Transport.UDP:
            raise ValueError("p2ptun's ICE agent has one UDP component")
        if self.lite and candidate.type is not CandidateType.HOST:
            raise ValueError("an ICE-lite agent has host candidates only (RFC 8445 §2.5)")
        gen = self._gen
        base = candidate_base(candidate)
        for i, old in enumerate(gen.local_candidates):
            if old.address == candidate.address and candidate_base(old) == base:
                if old.priority >= candidate.priority:
                    return False
                gen.local_candidates[i] = candidate
                return True
        if len(gen.local_candidates) >= self.config.max_local_candidates:
            self.stats.local_candidates_dropped += 1
            return False
        gen.local_candidates.append(candidate)
        if candidate.type in (CandidateType.HOST, CandidateType.RELAY):
            for remote in gen.remote_candidates:
                if can_pair(candidate, remote) and not self._own_host(gen, remote.host):
                    gen.checklist.add(candidate, remote)
        self._drain_early(now)
        self._after_input(now)
        return True

    def set_local_end_of_candidates(self, now: float) -> None:
        """Local gathering is complete (RFC 8838 §13: we would signal end-of-candidates)."""
        self._gen.local_complete = True
        self._after_input(now)

    # ------------------------------------------------------------------------------------------
    # remote side

    def set_remote_credentials(
        self, credentials: IceCredentials, now: float, *, lite: bool = False
    ) -> bool:
        """The peer's ufrag/pwd for the current generation, and whether it is ICE-lite.

        Checks start now (as soon as there are pairs). A full agent facing a lite peer becomes
        controlling; a lite agent facing a full one controlled (RFC 8445 §6.1.1). Returns
        False (and changes nothing) if different credentials were already set for this
        generation: a peer restart must go through :meth:`restart` first.
        """
        gen = self._gen
        if gen.remote_credentials is not None:
            if gen.remote_credentials == credentials and gen.remote_lite == lite:
                return True
            self.stats.credentials_rejected += 1
            return False
        gen.remote_credentials = credentials
        gen.remote_lite = lite
        if gen.started_at is None:
            gen.started_at = now
        self._set_role(role_facing(self._controlling, lite=self.lite, peer_lite=lite))
        self._drain_early(now)
        self._after_input(now)
        return True

    def add_remote_candidate(self, candidate: Candidate, now: float) -> bool:
        """A remote candidate was signalled (before or during checks: trickle ICE).

        Ignored (False): other components or transports, duplicates, and anything beyond
        ``max_remote_candidates``; addresses checks may not go to (:meth:`_forbidden`) are
        refused and counted as ``remote_candidates_forbidden``. A candidate with the address
        of a peer-reflexive one replaces it, keeping pair states (RFC 8838 §11.4).
        """
        gen = self._gen
        if candidate.component != 1 or candidate.transport is not Transport.UDP:
            self.stats.remote_candidates_ignored += 1
            return False
        if self._forbidden(gen, candidate.host):
            self.stats.remote_candidates_forbidden += 1
            return False
        existing = gen.remote(candidate.address)
        if existing is not None:
            if existing.type is CandidateType.PRFLX and candidate.type is not CandidateType.PRFLX:
                gen.remote_candidates[gen.remote_candidates.index(existing)] = candidate
                gen.checklist.replace_remote(existing, candidate)
                self._after_input(now)
                return True
            return False
        if len(gen.remote_candidates) >= self.config.max_remote_candidates:
            self.stats.remote_candidates_dropped += 1
            return False
        gen.remote_candidates.append(candidate)
        for local in gen.local_candidates:
            if local.type in (CandidateType.HOST, CandidateType.RELAY) and can_pair(
                local, candidate
            ):
                gen.checklist.add(local, candidate)
        self._update_selection(now)
        self._after_input(now)
        return True

    def set_remote_end_of_candidates(self, now: float) -> None:
        """The peer signalled end-of-candidates (RFC 8838 §13)."""
        self._gen.remote_complete = True
        self._update_selection(now)
        self._after_input(now)

    # ------------------------------------------------------------------------------------------
    # restart

    def join_consent_round(self, now: float) -> bool:
        """Another pair of this node sends its consent check at ``now``: send ours with it if
        the shortest randomised interval since our previous one has passed (every gap stays
        within RFC 7675 §5.1's 0.8–1.2 × the interval), so that the checks of a node's idle
        peers share its wake-ups instead of each waking it on its own. True if one went out."""
        sel = self._selection
        if sel is None or sel.expired or sel.consent is None or sel.consent.probing:
            return False
        if not sel.consent.peer_checked(now):
            return False
        self._consent_timers(now)
        return True

    def probe_consent(self, now: float, *, urgent: bool = True) -> bool:
        """Check at once whether the selected pair still works (the data path saw it go
        quiet): a burst of consent checks (:meth:`ConsentFreshness.probe`); unanswered, it
        ends in :class:`ConsentLost`. False when there is nothing to probe (no pair, consent
        expired, a lite agent), a probe is already under way, or an optional probe
        (``urgent=False``) came within the holdoff of the previous one."""
        sel = self._selection
        if sel is None or sel.expired or sel.consent is None:
            return False
        held = sel.consent.probes_held_off
        if not sel.consent.probe(now, sel.pair.rtt, urgent=urgent):
            self.stats.consent_probes_held_off += sel.consent.probes_held_off - held
            return False
        self.stats.consent_probes += 1
        self._consent_timers(now)
        self._refresh_state(now)
        return True

    def restart(self, credentials: IceCredentials, now: float) -> None:
        """ICE restart (RFC 8445 §9) with fresh local credentials.

        The shell then re-gathers (:meth:`add_local_candidate` again, host candidates too),
        and passes the peer's new credentials and candidates. Until a pair of the new
        generation is selected, the old selected pair stays selected and usable
        (make-before-break) and the old credentials keep being answered. The role and the
        tie-breaker are kept.
        """
        if credentials == self._gen.local_credentials:
            raise ValueError("an ICE restart needs new credentials (RFC 8445 §9)")
        self._checks.cancel_all()
        sel = self._selection
        if sel is not None and sel.expired:
            self._selection = None
        old = self._gen
        self._previous = old
        self._gen = _Generation(
            old.number + 1, credentials, CheckList(self._controlling, self.config.max_pairs)
        )
        self._next_check_at = now
        log.info("restart", generation=self._gen.number)
        self._refresh_state(now)

    # ------------------------------------------------------------------------------------------
    # datagrams and time

    def handle_datagram(
        self, data: bytes | bytearray | memoryview, local: Address, remote: Address, now: float
    ) -> bool:
        """Process one datagram received on base ``local`` from ``remote``.

        ``local`` must be the address of a host candidate added with
        :meth:`add_local_candidate` (the socket's own address, not a wildcard) or of a relayed
        candidate (for datagrams the TURN client unwrapped); checks arriving on an address
        that is not (yet) a base are answered and queued like early checks.

        Returns True if it was an ICE STUN message (a Binding request or indication, or the
        response to one of our checks), False otherwise — not STUN, malformed, not Binding, or
        a response to a transaction that is not ours (the shell may offer it to its TURN or
        STUN clients). Never raises on bad input; drops are counted in :attr:`stats`.
        """
        self.stats.datagrams += 1
        if not is_stun(data):
            self.stats.not_stun += 1
            return False
        try:
            msg = Message.decode(data)
            remote = (str(ipaddress.ip_address(remote[0])), remote[1])
        except (StunDecodeError, ValueError):
            self.stats.malformed += 1
            return False
        if msg.method != Method.BINDING:
            self.stats.not_binding += 1
            return False
        try:
            if msg.message_class == MessageClass.REQUEST:
                self._on_request(msg, local, remote, now)
                handled = True
            elif msg.message_class == MessageClass.INDICATION:
                handled = True  # keepalive (RFC 8445 §11)
            else:
                handled = self._on_response(msg, local, remote, now)
        except ValueError:
            # A value that decoded but cannot make a candidate (port 0, priority 0, ...).
            self.stats.malformed += 1
            handled = False
        self._after_input(now)
        return handled

    def handle_timeout(self, now: float) -> None:
        """Run whatever is due at ``now``: retransmissions, paced checks, nomination,
        consent, direct-path retries, failure timeouts."""
        for event in self._checks.handle_timeout(now):
            if isinstance(event, StunTransmit):
                ctx = event.context
                if ctx is not None:
                    if ctx.pair.transaction_id == event.transaction.transaction_id:
                        ctx.pair.sends += 1
                        ctx.pair.last_sent = now
                    self._transmit_to(event.data, ctx.pair.local, ctx.remote)
            else:
                self._on_check_outcome(event, None, None, now)
        self._consent_timers(now)
        self._standby_timers(now)
        self._probe(now)
        self._hard_nat_probe(now)
        self._maybe_nominate(now)
        self._schedule_check(now)
        self._check_failure(now)
        self._refresh_state(now)

    # ------------------------------------------------------------------------------------------
    # requests (RFC 8445 §7.3)

    def _on_request(self, msg: Message, local: Address, remote: Address, now: float) -> None:
        self.stats.requests += 1
        if msg.fingerprint is None or not msg.check_fingerprint():
            self.stats.bad_fingerprint += 1
            return
        username = msg.username
        if username is None or not msg.has_integrity:
            self.stats.bad_requests += 1
            self._reply(error_response(msg, ErrorCode.BAD_REQUEST), None, local, remote)
            return
        lufrag, sep, rufrag = username.partition(":")
        gen = self._generation_for(lufrag)
        if gen is None or not sep:
            self.stats.unauthenticated += 1
            self._reply(error_response(msg, ErrorCode.UNAUTHENTICATED), None, local, remote)
            return
        key = short_term_key(gen.local_credentials.pwd)
        if not msg.check_integrity(key):
            self.stats.unauthenticated += 1
            self._reply(error_response(msg, ErrorCode.UNAUTHENTICATED), None, local, remote)
            return
        unknown = unknown_comprehension_required(msg)
        if unknown:
            self.stats.unknown_attributes += 1
            reply = error_response(msg, ErrorCode.UNKNOWN_ATTRIBUTE, unknown_attributes=unknown)
            self._reply(reply, key, local, remote)
            return
        priority = msg.priority
        theirs_controlling = msg.ice_controlling
        theirs_controlled = msg.ice_controlled
        if (
            priority is None
            or not 1 <= priority <= MAX_PRIORITY
            or (theirs_controlling is None and theirs_controlled is None)
        ):
            self.stats.bad_requests += 1
            self._reply(error_response(msg, ErrorCode.BAD_REQUEST), key, local, remote)
            return
        if gen is self._gen and not self._resolve_conflict(
            msg, theirs_controlling, theirs_controlled, key, local, remote
        ):
            return
        attrs: list[tuple[int, Any]] = [(AttrType.XOR_MAPPED_ADDRESS, remote)]
        if self.config.software:
            attrs.append((AttrType.SOFTWARE, self.config.software))
        self._reply(msg.success(attrs), key, local, remote)
        sel = self._selection
        if sel is not None and sel.pair.key == (local, remote):
            sel.last_request = now
            if sel.consent is not None and not sel.expired and sel.consent.peer_checked(now):
                # Our consent check goes out with this response (RFC 7675 §5.1 interval kept).
                self._consent_timers(now)
        if gen is not self._gen:
            self.stats.stale_requests += 1
            return
        use_candidate = msg.use_candidate
        base = gen.base(local)
        if base is None or (gen.remote_credentials is None and not self.lite):
            self._queue_early(gen, _EarlyCheck(local, remote, priority, use_candidate, rufrag))
            return
        if self.lite:
            self._lite_check(gen, base, remote, priority, use_candidate, now)
            return
        assert gen.remote_credentials is not None
        if rufrag != gen.remote_credentials.ufrag:
            self.stats.stale_requests += 1
            return
        self._on_check(gen, base, remote, priority, use_candidate, now)

    def _generation_for(self, ufrag: str) -> _Generation | None:
        if ufrag == self._gen.local_credentials.ufrag:
            return self._gen
        sel = self._selection
        if sel is not None and sel.generation.local_credentials.ufrag == ufrag:
            return sel.generation
        prev = self._previous
        if prev is not None and prev.local_credentials.ufrag == ufrag:
            return prev
        return None

    def _resolve_conflict(
        self,
        msg: Message,
        theirs_controlling: int | None,
        theirs_controlled: int | None,
        key: bytes,
        local: Address,
        remote: Address,
    ) -> bool:
        """RFC 8445 §7.3.1.1 (:func:`~p2ptun.ice.nomination.resolve_role_conflict`). Returns
        False if we answered 487 (the request goes no further)."""
        conflict = resolve_role_conflict(
            controlling=self._controlling,
            lite=self.lite,
            tie_breaker=self.tie_breaker,
            theirs_controlling=theirs_controlling,
            theirs_controlled=theirs_controlled,
        )
        if conflict is RoleConflict.NONE:
            return True
        self.stats.role_conflicts += 1
        if conflict is RoleConflict.REJECT:
            self._reply(error_response(msg, ErrorCode.ROLE_CONFLICT), key, local, remote)
            return False
        self._set_role(not self._controlling)
        return True

    def _queue_early(self, gen: _Generation, check: _EarlyCheck) -> None:
        """Remember a check that came before the remote credentials or its base (bounded:
        the oldest is forgotten first)."""
        if self.config.max_early_checks == 0:
            self.stats.early_checks_dropped += 1
            return
        for old in gen.early:
            if old.local == check.local and old.remote == check.remote:
                gen.early.remove(old)
                check = _EarlyCheck(
                    check.local,
                    check.remote,
                    check.priority,
                    check.use_candidate or old.use_candidate,
                    check.remote_ufrag,
                )
                break
        else:
            self.stats.early_checks_queued += 1
        if len(gen.early) >= self.config.max_early_checks:
            gen.early.popleft()
            self.stats.early_checks_dropped += 1
        gen.early.append(check)

    def _drain_early(self, now: float) -> None:
        gen = self._gen
        if not gen.early or (gen.remote_credentials is None and not self.lite):
            return
        pending = list(gen.early)
        gen.early.clear()
        for check in pending:
            base = gen.base(check.local)
            if base is None:
                gen.early.append(check)
                continue
            if self.lite:
                self._lite_check(gen, base, check.remote, check.priority, check.use_candidate, now)
                continue
            assert gen.remote_credentials is not None
            if check.remote_ufrag != gen.remote_credentials.ufrag:
                self.stats.early_checks_dropped += 1
                continue
            self._on_check(gen, base, check.remote, check.priority, check.use_candidate, now)

    def _learn_remote(self, gen: _Generation, address: Address, priority: int) -> Candidate | None:
        """The remote candidate with this address, or a new peer-reflexive one (§7.3.1.3)."""
        cand = gen.remote(address)
        if cand is not None:
            return cand
        if self._forbidden(gen, address[0]):
            self.stats.remote_candidates_forbidden += 1
            return None
        if len(gen.remote_candidates) >= self.config.max_remote_candidates:
            self.stats.remote_candidates_dropped += 1
            return None
        gen.prflx_serial += 1
        cand = make_prflx_candidate(address, priority, foundation=f"prflx{gen.prflx_serial}")
        gen.remote_candidates.append(cand)
        return cand

    def _forbidden(self, gen: _Generation, host: str) -> bool:
        """May our checks not go to ``host``? Unspecified, multicast and broadcast addresses
        never; loopback and our own host addresses unless ``allow_local``; link-local ones
        unless ``allow_link_local``."""
        ip = ipaddress.ip_address(host)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip.is_unspecified or ip.is_multicast or ip.is_reserved:
            return True
        if isinstance(ip, ipaddress.IPv4Address) and (ip == _BROADCAST or ip in _THIS_NETWORK):
            return True
        if ip.is_link_local and not self.config.allow_link_local:
            return True
        if self.config.allow_local:
            return False
        return ip.is_loopback or self._own_host(gen, str(ip))

    def _own_host(self, gen: _Generation, host: str) -> bool:
        """Is ``host`` one of this agent's host candidate addresses (unless ``allow_local``)?"""
        if self.config.allow_local:
            return False
        return any(c.type is CandidateType.HOST and c.host == host for c in gen.local_candidates)

    def _on_check(
        self,
        gen: _Generation,
        base: Candidate,
        remote: Address,
        priority: int,
        use_candidate: bool,
        now: float,
    ) -> None:
        """A valid check from ``remote`` arrived on ``base``: §7.3.1.3–§7.3.1.5."""
        cand = self._learn_remote(gen, remote, priority)
        if cand is None:
            return
        pair = gen.checklist.find(base.address, remote)
        if pair is None:
            if not can_pair(base, cand):
                return
            pair = gen.checklist.add(base, cand)
            if pair is None:
                return
        if use_candidate and not self._controlling:
            self._nomination.peer_nominated(pair)
        if pair.state is PairState.IN_PROGRESS or (
            pair is gen.nominating and pair.transaction_id is not None
        ):
            # Re-send the outstanding request at once: the peer just showed the path works.
            gen.checklist.enqueue_triggered(pair)
        elif pair.state is not PairState.SUCCEEDED:
            pair.state = PairState.WAITING
            gen.checklist.enqueue_triggered(pair)
        self._update_selection(now)

    def _lite_check(
        self,
        gen: _Generation,
        base: Candidate,
        remote: Address,
        priority: int,
        use_candidate: bool,
        now: float,
    ) -> None:
        """A lite agent's view of a check (§2.5, §7.3.1.5): the pair is valid because the
        full peer checks it; USE-CANDIDATE nominates it."""
        cand = self._learn_remote(gen, remote, priority)
        if cand is None or not can_pair(base, cand):
            return
        pair = gen.checklist.find(base.address, remote) or gen.checklist.add(base, cand)
        if pair is None:
            return
        pair.state = PairState.SUCCEEDED
        pair.valid_local = base
        pair.last_success = now
        if gen.started_at is None:
            gen.started_at = now
        if use_candidate:
            self._nomination.peer_nominated(pair)
        self._update_selection(now)

    # ------------------------------------------------------------------------------------------
    # checks and responses (RFC 8445 §7.1, §7.2)

    def _may_check(self, gen: _Generation) -> bool:
        """A full agent checks once it knows the remote credentials, until the generation
        failed."""
        return not self.lite and not gen.failed and gen.remote_credentials is not None

    def _schedule_check(self, now: float) -> None:
        """One check per Ta: a triggered one first, else an ordinary one (§6.1.4.2)."""
        gen = self._gen
        if not self._may_check(gen) or now < self._next_check_at:
            return
        if len(self._checks) >= self.config.max_transactions:
            self.stats.transaction_limit_hits += 1
            return
        pair = gen.checklist.pop_triggered()
        if pair is None:
            pair = gen.checklist.next_ordinary()
        if pair is None:
            return
        self._send_check(gen, pair, now)
        self._next_check_at = now + self.config.ta

    def _send_check(self, gen: _Generation, pair: CheckPair, now: float) -> None:
        creds = gen.remote_credentials
        assert creds is not None
        use_candidate = self._controlling and (
            pair.use_candidate
            or (self.config.aggressive and not any(p.nominated for p in gen.checklist.pairs))
        )
        if pair.transaction_id is not None and (
            pair.state is PairState.IN_PROGRESS or use_candidate
        ):
            tx = self._checks.get(pair.transaction_id)
            if (
                tx is not None
                and tx.context is not None
                and tx.context.use_candidate == use_candidate
            ):
                # Triggered check on a pair whose check is outstanding: send it again now.
                pair.sends += 1
                pair.last_sent = now
                self._transmit_to(tx.request, pair.local, pair.remote.address)
                return
        tid = self._transaction_id()
        priority = peer_reflexive_priority(pair.local)
        msg = Message.request(
            Method.BINDING,
            tid,
            [
                (AttrType.USERNAME, f"{creds.ufrag}:{gen.local_credentials.ufrag}"),
                (AttrType.PRIORITY, priority),
                (
                    AttrType.ICE_CONTROLLING if self._controlling else AttrType.ICE_CONTROLLED,
                    self.tie_breaker,
                ),
            ],
        )
        if use_candidate:
            msg.add(AttrType.USE_CANDIDATE)
        key = short_term_key(creds.pwd)
        wire = msg.encode(key, fingerprint=True)
        busy = gen.checklist.count(PairState.WAITING, PairState.IN_PROGRESS)
        rto = max(self.config.check_rto_min, self.config.ta * busy)
        ctx = _CheckContext(
            pair,
            gen.number,
            pair.local.address,
            pair.remote.address,
            self._controlling,
            use_candidate,
            priority,
        )
        if pair.transaction_id is not None:
            self._checks.cancel(pair.transaction_id)
        first = self._checks.start(wire, now, key=key, context=ctx, rto=rto)
        pair.transaction_id = tid
        pair.sends = 1
        pair.last_sent = now
        if pair.state is not PairState.SUCCEEDED:
            pair.state = PairState.IN_PROGRESS
        self.stats.checks_sent += 1
        self._transmit_to(first.data, pair.local, pair.remote.address)

    def _on_response(self, msg: Message, local: Address, remote: Address, now: float) -> bool:
        sel = self._selection
        if sel is not None and sel.consent is not None and msg.transaction_id in sel.consent:
            if (local, remote) != sel.pair.key:
                self.stats.non_symmetric += 1
                return True
            troubled = sel.consent.state in (ConsentState.SUSPECT, ConsentState.LOST)
            if sel.consent.handle_response(msg, now) and troubled:
                self._events.append(ConsentRestored(self._describe(sel)))
            return True
        standby = self._standby
        if standby is not None and msg.transaction_id in standby.checks:
            if (local, remote) == standby.pair.key:
                standby.checks.handle_response(msg, now)
            else:
                self.stats.non_symmetric += 1
            return True
        tx = self._checks.get(msg.transaction_id)
        if tx is None or tx.context is None:
            self.stats.unknown_responses += 1
            return False
        outcome = self._checks.handle_response(msg, now)
        if outcome is None:
            self.stats.invalid_responses += 1
            return True
        self._on_check_outcome(outcome, local, remote, now)
        return True

    def _on_check_outcome(
        self,
        outcome: TransactionOutcome[_CheckContext],
        local: Address | None,
        remote: Address | None,
        now: float,
    ) -> None:
        ctx = outcome.context
        if ctx is None or outcome.state is TransactionState.CANCELLED:
            return
        gen = self._gen
        pair = ctx.pair
        if ctx.generation != gen.number or gen.checklist.find(*pair.key) is not pair:
            return
        if pair.transaction_id == outcome.transaction_id:
            pair.transaction_id = None
        if ctx.use_candidate:
            pair.use_candidate = False
            if gen.nominating is pair:
                gen.nominating = None
        if outcome.state is TransactionState.TIMED_OUT:
            self._fail_pair(pair, "timeout")
            return
        if not outcome.ok:
            error = outcome.error
            if error is not None and error[0] == ErrorCode.ROLE_CONFLICT:
                # §7.2.5.1: switch role if the request carried our current role, retry.
                self._set_role(role_after_conflict_response(ctx.controlling, self._controlling))
                if pair.state is not PairState.SUCCEEDED:
                    pair.state = PairState.WAITING
                gen.checklist.enqueue_triggered(pair)
                return
            self._fail_pair(pair, "error" if error is None else f"error {error[0]}")
            return
        # §7.2.5.2.1: the response must come from where the request went, to where it came from.
        if (local, remote) != (ctx.local, ctx.remote):
            self.stats.non_symmetric += 1
            self._fail_pair(pair, "non-symmetric")
            return
        assert outcome.response is not None
        mapped = outcome.response.xor_mapped_address
        if mapped is None:
            self.stats.invalid_responses += 1
            self._fail_pair(pair, "invalid response")
            return
        pair.valid_local = self._local_for_mapped(gen, mapped, pair.local, ctx.priority)
        pair.state = PairState.SUCCEEDED
        pair.failure = None
        pair.last_success = now
        if outcome.rtt is not None:
            pair.rtt = outcome.rtt
        gen.checklist.unfreeze_foundation(pair.foundation)
        if gen.first_valid_at is None:
            gen.first_valid_at = now
        self._nomination.check_succeeded(
            pair,
            sent_use_candidate=ctx.use_candidate,
            sent_controlling=ctx.controlling,
            controlling=self._controlling,
        )
        sel = self._selection
        if sel is not None and sel.consent is not None and sel.pair.key == pair.key:
            sel.consent.refresh(now)
        log.debug("pair succeeded", pair=repr(pair))
        self._report_better(gen, pair)
        self._update_selection(now)
        self._maybe_nominate(now)

    def _fail_pair(self, pair: CheckPair, why: str) -> None:
        pair.state = PairState.FAILED
        pair.failure = why
        pair.use_candidate = False
        if self._gen.nominating is pair:
            self._gen.nominating = None

    def _local_for_mapped(
        self, gen: _Generation, mapped: Address, base: Candidate, priority: int
    ) -> Candidate:
        """The local candidate of the valid pair (§7.2.5.3.1): the one with the mapped
        address, else a new local peer-reflexive candidate with the PRIORITY we sent."""
        if mapped == base.address:
            return base
        for cand in gen.local_candidates:
            if cand.address == mapped:
                return cand
        prflx = make_prflx_candidate(mapped, priority, base=base.address)
        if len(gen.local_candidates) < self.config.max_local_candidates:
            gen.local_candidates.append(prflx)
        return prflx

    # ------------------------------------------------------------------------------------------
    # nomination and selection (RFC 8445 §8)

    def _selected_in(self, gen: _Generation) -> bool:
        sel = self._selection
        return sel is not None and sel.generation is gen

    def _gathered(self, gen: _Generation) -> bool:
        """Both sides signalled end-of-candidates."""
        return gen.local_complete and gen.remote_complete

    def _maybe_nominate(self, now: float) -> None:
        """Regular nomination by the controlling agent (§8.1.1), the early re-sends of the
        checks it waits for, and the move from a relayed to a direct pair, as the nomination
        policy decides (:meth:`~p2ptun.ice.nomination.NominationPolicy.step`)."""
        gen = self._gen
        if not self._controlling or not self._may_check(gen) or gen.nominating is not None:
            return
        step = self._nomination.step(gen.checklist, gen.first_valid_at, self._gathered(gen), now)
        if step.nominate is not None:
            self._nominate(gen, step.nominate)
        for pair in step.resend:
            self._resend_check(pair, now)

    def _resend_check(self, pair: CheckPair, now: float) -> None:
        """Send the request of the check in flight on ``pair`` again now (a retransmission
        ahead of its RTO; the transaction's own schedule is unchanged)."""
        tx = None if pair.transaction_id is None else self._checks.get(pair.transaction_id)
        pair.sends += 1
        if tx is None:
            return  # nothing in flight to answer: counts as sent, so it is not waited for
        pair.last_sent = now
        self._transmit_to(tx.request, pair.local, pair.remote.address)

    def _nominate(self, gen: _Generation, pair: CheckPair) -> None:
        log.debug("nominating", pair=repr(pair))
        pair.use_candidate = True
        gen.nominating = pair
        gen.checklist.triggered.appendleft(pair)

    def _update_selection(self, now: float) -> None:
        gen = self._gen
        if self.lite and gen.remote_lite:
            best = lite_lite_pair(gen.checklist, gen.remote_complete)
        else:
            best = self._nomination.selected(gen.checklist)
        if best is None:
            return
        sel = self._selection
        if sel is not None and sel.pair is best and sel.generation is gen:
            return
        self._select(gen, best, now)

    def _select(self, gen: _Generation, pair: CheckPair, now: float) -> None:
        previous = self._selection
        if previous is not None and previous.consent is not None:
            previous.consent.stop()
        consent = None
        if not self.lite:
            # Selection follows a successful nominating check (controlling) or the peer's
            # authenticated USE-CANDIDATE on a pair it validated (controlled): consent starts
            # fresh now, even if our own last check on the pair succeeded a while ago.
            consent = ConsentFreshness(now, self._rng, self.config.consent, last_response=now)
        sel = _Selection(pair, gen, consent, last_request=now)
        self._selection = sel
        old = None if previous is None or previous.expired else self._describe(previous)
        new = self._describe(sel)
        log.info(
            "pair selected",
            local=f"{new.local.type.value}:{new.local.host}:{new.local.port}",
            remote=f"{new.remote.type.value}:{new.remote.host}:{new.remote.port}",
            generation=gen.number,
        )
        self._events.append(PairSelected(new, old))
        if pair.relayed:
            # Keep the direct pairs: they may still work (module docstring). With a standby,
            # keep the pairs through the peer's relay too when ours carries the data: one of
            # them becomes the standby (our relay dies with our NAT mapping, theirs does not).
            other_relay = self.config.standby and pair.local.type is CandidateType.RELAY
            for p in list(gen.checklist.pairs):
                if (
                    p.relayed
                    and p is not pair
                    and p.state in (PairState.WAITING, PairState.FROZEN)
                    and not (other_relay and p.local.type is not CandidateType.RELAY)
                ):
                    gen.checklist.remove(p)
            if gen.next_probe is None and gen.probe_rounds == 0:
                gen.probe_rounds = self.config.direct_retry_rounds
                gen.next_probe = now + self.config.direct_retry_interval
        else:
            keep = {p for p in gen.checklist.pairs if p.use_candidate or p.nominate_on_success}
            if self.config.standby:
                # The relayed pairs go on being checked: one of them becomes the standby.
                keep |= {p for p in gen.checklist.pairs if p.relayed}
            gen.checklist.remove_pending(keep=keep)
            self._cease_checks(gen, keep | {pair})
            gen.next_probe = None
        self._update_standby(now)
        self._refresh_state(now)

    def _cease_checks(self, gen: _Generation, keep: set[CheckPair]) -> None:
        """A direct pair is selected: abandon the checks in flight on every other pair
        (§8.1.2, module docstring). Their transactions are dropped without an outcome, so
        nothing retransmits or wakes up for them and a late response is an unknown one;
        an abandoned In-Progress pair counts as Failed."""
        for tx in list(self._checks):
            ctx = tx.context
            if ctx is None or ctx.generation != gen.number or ctx.pair in keep:
                continue
            self._checks.cancel(tx.transaction_id)
            pair = ctx.pair
            if pair.transaction_id == tx.transaction_id:
                pair.transaction_id = None
                if pair.state is PairState.IN_PROGRESS:
                    pair.state = PairState.FAILED
                    pair.failure = "ceased"
            self.stats.checks_ceased += 1

    def _report_better(self, gen: _Generation, pair: CheckPair) -> None:
        sel = self._selection
        if sel is None or sel.generation is not gen or not sel.pair.relayed or pair.relayed:
            return
        if pair.key in gen.better_reported or pair.valid_pair is None:
            return
        gen.better_reported.add(pair.key)
        self._events.append(BetterPairAvailable(pair.valid_pair, self._describe(sel)))

    def _probe(self, now: float) -> None:
        """While relayed, put failed direct pairs back to Waiting, ``direct_retry_rounds``
        times at most, the interval doubling from ``direct_retry_interval``."""
        gen = self._gen
        if gen.next_probe is None or now < gen.next_probe:
            return
        sel = self._selection
        if sel is None or sel.generation is not gen or not sel.pair.relayed or gen.failed:
            gen.next_probe = None
            return
        gen.probe_rounds -= 1
        for pair in gen.checklist.pairs:
            if not pair.relayed and pair.state is PairState.FAILED:
                pair.state = PairState.WAITING
                pair.retries += 1
        done = self.config.direct_retry_rounds - gen.probe_rounds
        interval = min(
            self.config.direct_retry_interval * 2.0**done, self.config.direct_retry_max_interval
        )
        gen.next_probe = now + interval if gen.probe_rounds > 0 else None

    # ------------------------------------------------------------------------------------------
    # hard-NAT probing (p2ptun-specific, the policy is p2ptun.ice.hardnat)

    def _hard_nat_may_start(self, gen: _Generation) -> bool:
        """Is probing undecided for this generation while a relayed pair of it carries the
        data and ordinary checks failed to find a direct one?"""
        cfg = self.config.hard_nat
        sel = self._selection
        if cfg is None or sel is None or sel.generation is not gen or not sel.pair.relayed:
            return False
        probing = self.hard_nat
        if probing is not None and probing.generation == gen.number and probing.decided:
            return False
        return ordinary_checks_failed(gen.checklist.pairs, cfg.min_sends)

    def _hard_nat_probe(self, now: float) -> None:
        gen = self._gen
        cfg = self.config.hard_nat
        if cfg is None:
            return
        probing = self.hard_nat
        if self._hard_nat_may_start(gen):
            probing = self.hard_nat = HardNatProbing(cfg, self._rng, gen.number)
            ipv6 = is_ipv6(self._selection.pair.remote.host) if self._selection else False
            if probing.start(gen.local_candidates, gen.remote_candidates, ipv6, now):
                self._hard_nat_tid = self._transaction_id()
                log.info(
                    "hard-nat",
                    technique=probing.technique.value if probing.technique else "",
                    probes=probing.pending,
                )
            else:
                log.info("hard-nat", declined=probing.declined)
        if probing is None or not probing.pending:
            return
        sel = self._selection
        creds = gen.remote_credentials
        if probing.generation != gen.number or creds is None or sel is None or not sel.pair.relayed:
            probing.stop()  # restarted, or a direct pair took over
            return
        targets = probing.due(now)
        if not targets:
            return
        bases = probing_bases(gen.local_candidates, is_ipv6(targets[0][0]))
        msg = Message.request(
            Method.BINDING,
            self._hard_nat_tid,
            [
                (AttrType.USERNAME, f"{creds.ufrag}:{gen.local_credentials.ufrag}"),
                (AttrType.PRIORITY, peer_reflexive_priority(bases[0]) if bases else 0),
                (
                    AttrType.ICE_CONTROLLING if self._controlling else AttrType.ICE_CONTROLLED,
                    self.tie_breaker,
                ),
            ],
        )
        wire = msg.encode(short_term_key(creds.pwd), fingerprint=True)
        for target in targets:
            for base in bases:
                self._transmit_to(wire, base, target)
                self.stats.hard_nat_probes += 1

    # ------------------------------------------------------------------------------------------
    # the standby (p2ptun-specific)

    def standby_pair(self, now: float) -> SelectedPair | None:
        """The pair kept valid beside the selected one (``AgentConfig.standby``), if its last
        light check was answered: where the data can go the moment the selected pair is lost
        (:class:`ConsentLost`). None without one."""
        standby = self._standby
        if standby is None or standby.checks.state is not ConsentState.FRESH:
            return None
        if standby.pair.valid_pair is None:
            return None
        return self._describe_pair(standby.pair, standby.generation)

    def _update_standby(self, now: float) -> None:
        """Keep a standby of the selected generation: the best valid relayed pair while a
        direct pair is selected; the best valid pair not through our relay while a pair
        through our relay is selected (a NAT that forgets us takes our allocation with it,
        the peer's relay still reaches us); none otherwise."""
        standby = self._standby
        sel = self._selection
        wanted = None
        if self.config.standby and sel is not None and not sel.expired:
            valid = sel.generation.checklist.valid_pairs()
            if not sel.pair.relayed:
                wanted = next((p for p in valid if p.relayed), None)
            elif sel.pair.local.type is CandidateType.RELAY:
                wanted = next((p for p in valid if p.local.type is not CandidateType.RELAY), None)
        if standby is not None and (wanted is None or standby.pair is not wanted):
            same_generation = sel is not None and standby.generation is sel.generation
            fresh = standby.checks.state is ConsentState.FRESH
            if wanted is not None and same_generation and fresh:
                return  # a working standby stays until it fails (no flapping)
            standby.checks.stop()
            self._standby = standby = None
        if wanted is None or standby is not None:
            return
        assert sel is not None
        config = replace(self.config.consent, interval=self.config.standby_interval)
        checks = ConsentFreshness(now, self._rng, config, last_response=now)
        self._standby = _Standby(wanted, sel.generation, checks)
        log.debug("standby pair", pair=repr(wanted))
        self._events.append(StandbyReady(self._describe_pair(wanted, sel.generation)))

    def _standby_timers(self, now: float) -> None:
        standby = self._standby
        if standby is None:
            return
        poll = standby.checks.poll(now)
        pair = standby.pair
        for data in poll.retransmits:
            self._transmit_to(data, pair.local, pair.remote.address)
        if poll.became is ConsentState.EXPIRED:
            standby.checks.stop()
            self._standby = None
            self._update_standby(now)  # another valid relayed pair, if any
            return
        if poll.check_due:
            self._send_light_check(pair, standby.generation, standby.checks, now)

    def _send_light_check(
        self, pair: CheckPair, gen: _Generation, checks: ConsentFreshness, now: float
    ) -> None:
        """A Binding request on ``pair`` without USE-CANDIDATE, its transaction kept by
        ``checks`` (RFC 7675 §5.1: consent checks are ordinary connectivity checks)."""
        creds = gen.remote_credentials
        if creds is None:
            return
        tid = self._transaction_id()
        msg = Message.request(
            Method.BINDING,
            tid,
            [
                (AttrType.USERNAME, f"{creds.ufrag}:{gen.local_credentials.ufrag}"),
                (AttrType.PRIORITY, peer_reflexive_priority(pair.local)),
                (
                    AttrType.ICE_CONTROLLING if self._controlling else AttrType.ICE_CONTROLLED,
                    self.tie_breaker,
                ),
            ],
        )
        key = short_term_key(creds.pwd)
        data = checks.start(msg.encode(key, fingerprint=True), key, now)
        self.stats.consent_checks_sent += 1
        self._transmit_to(data, pair.local, pair.remote.address)

    # ------------------------------------------------------------------------------------------
    # consent (RFC 7675)

    def _lite_consent(self, sel: _Selection) -> bool:
        return self.lite and not sel.generation.remote_lite

    def _consent_timers(self, now: float) -> None:
        sel = self._selection
        if sel is None or sel.expired:
            return
        if sel.consent is None:
            if self._lite_consent(sel) and now >= sel.last_request + self.config.consent.timeout:
                self._expire(sel, sel.last_request)
            return
        poll = sel.consent.poll(now)
        for data in poll.retransmits:
            self._transmit_to(data, sel.pair.local, sel.pair.remote.address)
        if poll.became is ConsentState.SUSPECT:
            self._events.append(ConsentSuspect(self._describe(sel), sel.consent.missed))
        elif poll.became is ConsentState.LOST:
            log.info("consent probe unanswered", generation=sel.generation.number)
            self._events.append(ConsentLost(self._describe(sel)))
        elif poll.became is ConsentState.EXPIRED:
            self._expire(sel, sel.consent.last_response)
            return
        if poll.check_due:
            self._send_consent(sel, now)

    def _send_consent(self, sel: _Selection, now: float) -> None:
        if sel.consent is not None:
            self._send_light_check(sel.pair, sel.generation, sel.consent, now)
            # The standby's light check rides on this wake-up when its own is near (at least
            # 0.8 of its interval passed): one wake-up instead of two.
            standby = self._standby
            if standby is not None and standby.checks.peer_checked(now):
                self._standby_timers(now)

    def _expire(self, sel: _Selection, last_response: float) -> None:
        sel.expired = True
        if sel.consent is not None:
            sel.consent.stop()
        log.info("consent expired", generation=sel.generation.number)
        self._events.append(ConsentExpired(self._describe(sel), last_response))

    # ------------------------------------------------------------------------------------------
    # state

    def _check_failure(self, now: float) -> None:
        gen = self._gen
        if gen.failed or gen.started_at is None or self._selected_in(gen):
            return
        all_failed = (
            not self.lite
            and gen.local_complete
            and gen.remote_complete
            and gen.checklist.all_failed()
            and not gen.early
            and not any(
                tx.context is not None and tx.context.generation == gen.number
                for tx in self._checks
            )
        )
        # The timeout only fails a generation that found no valid pair: one that has valid
        # pairs is still nominating (a lossy path can make that slow) and fails, if ever,
        # when its pairs do.
        timed_out = (
            self.config.connect_timeout is not None
            and now >= gen.started_at + self.config.connect_timeout
            and not gen.checklist.valid_pairs()
        )
        if not (all_failed or timed_out):
            return
        gen.failed = True
        self._checks.cancel_all()
        log.info("checks failed", generation=gen.number, timeout=timed_out)
        sel = self._selection
        if sel is not None and not sel.expired:
            self._events.append(GenerationFailed(gen.number))

    def _refresh_state(self, now: float) -> None:
        gen = self._gen
        sel = self._selection
        if sel is not None and not sel.expired:
            if sel.consent is not None and sel.consent.state in (
                ConsentState.SUSPECT,
                ConsentState.LOST,
            ):
                state = AgentState.DISCONNECTED
            elif sel.generation is gen:
                if not gen.regular_done and not gen.checklist.count(
                    PairState.WAITING, PairState.IN_PROGRESS, PairState.FROZEN
                ):
                    gen.regular_done = True
                state = AgentState.COMPLETED if gen.regular_done else AgentState.CONNECTED
            else:
                state = AgentState.CONNECTED
        elif gen.failed or (sel is not None and sel.generation is gen):
            state = AgentState.FAILED
        elif gen.started_at is not None or gen.remote_credentials is not None:
            state = AgentState.CHECKING
        elif sel is not None:
            state = AgentState.FAILED
        else:
            state = AgentState.NEW
        if state is not self._state:
            previous, self._state = self._state, state
            log.debug("state", state=state.value, previous=previous.value)
            self._events.append(StateChanged(state, previous))

    def _after_input(self, now: float) -> None:
        self._maybe_nominate(now)
        self._check_failure(now)
        self._update_standby(now)
        self._refresh_state(now)

    def _set_role(self, controlling: bool) -> None:
        if controlling == self._controlling:
            return
        self._controlling = controlling
        self._gen.checklist.set_role(controlling)
        log.info("role changed", controlling=controlling)
        self._events.append(RoleChanged(controlling))

    # ------------------------------------------------------------------------------------------
    # output helpers

    def _transaction_id(self) -> bytes:
        return self._rng.getrandbits(96).to_bytes(12, "big")

    def _is_relay_base(self, address: Address) -> bool:
        gens = [self._gen]
        if self._selection is not None:
            gens.append(self._selection.generation)
        return any(
            c.type is CandidateType.RELAY and c.address == address
            for g in gens
            for c in g.local_candidates
        )

    def _transmit_to(self, data: bytes, base: Candidate, remote: Address) -> None:
        self._transmits.append(
            OutgoingDatagram(data, base.address, remote, base.type is CandidateType.RELAY)
        )

    def _reply(self, response: Message, key: bytes | None, local: Address, remote: Address) -> None:
        self.stats.responses_sent += 1
        data = response.encode(key, fingerprint=True)
        self._transmits.append(OutgoingDatagram(data, local, remote, self._is_relay_base(local)))

    def _describe(self, sel: _Selection) -> SelectedPair:
        return self._describe_pair(sel.pair, sel.generation)

    @staticmethod
    def _describe_pair(pair: CheckPair, gen: _Generation) -> SelectedPair:
        return SelectedPair(
            local=pair.valid_local or pair.local,
            remote=pair.remote,
            base=pair.local.address,
            via_relay=pair.local.type is CandidateType.RELAY,
            generation=gen.number,
            rtt=pair.rtt,
        )

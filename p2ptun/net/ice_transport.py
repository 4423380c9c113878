"""The trio shell of ICE: sans-I/O :class:`~p2ptun.ice.agent.IceAgent` s over the node's shared
sockets, one per :class:`IceSession`.

One :class:`IceTransport` per node owns

- the :class:`~p2ptun.net.mux.UdpMux` on the node's UDP endpoints (one per address
  family, docs/ARCHITECTURE.md §2) and the :class:`~p2ptun.net.gather.Gatherer` with its TURN
  allocations: local candidates belong to the node and every agent uses them;
- the :class:`IceSession` s (:meth:`IceTransport.open_session`), each wrapping an
  :class:`~p2ptun.ice.agent.IceAgent`: one per peer that restarts in place
  (:meth:`IceSession.restart`, as the probe does), or — the node
  (:mod:`p2ptun.node.peer`) — one per offer/answer, several per peer while one replaces
  another;
- a single timer task for all agents: it sleeps until the earliest ``next_wakeup()`` of any
  agent, runs the agents that are due, and sleeps again. Inputs (datagrams, signaling) pull
  the deadline earlier when an agent needs it sooner. Idle, a connected agent wants the timer
  only for consent checks (every 4–6 s, RFC 7675), so the node wakes well under once a second
  per peer.

Demultiplexing what arrives (no trio channel per packet: handlers run inside the endpoint's
drain and call the agents directly, then send what the agents queued at once):

- ICE checks (Binding requests) by their USERNAME ``ourufrag:theirufrag``: the first part names
  the session (current generation, and the older ones an agent still answers after a restart);
- responses (to checks and consent checks) by transaction id: every request an agent sends is
  remembered for the life of a STUN transaction;
- the same for STUN that TURN relays unwrapped (base = the relayed address);
- WireGuard a relay unwrapped goes to ``relayed_wireguard`` when given (the node: its data
  path, which authenticates every datagram itself), else to the ``on_data`` callback of the
  session whose selected pair has that remote address. :meth:`IceTransport.on_wireguard` does
  the same for WireGuard straight from the sockets, for an owner that wires it into its
  sockets' dispatchers (the probe and tests; in the node the data path owns that kind).
  Anything else a relay unwraps is dropped and counted.

Relay permissions ahead of the checks: for every pair of one of our relayed candidates with a
remote candidate, the session asks the relay for a permission for the remote address
(RFC 8656 §9) as soon as both are known, as other ICE agents do. The server drops whatever a
peer sends to our relayed address until a permission is installed, and without one asked for
in advance the first packet *we* send would ask for it only then: the peer's first checks to
our relayed candidate would be lost and retried only after their RTO (500 ms), which made a
relayed connection half a second slower. A refused permission (a private address the server
denies) is remembered by the relay and not asked again.

Transmits leave through the right base: host bases from the shared socket of their family,
with the base's address as the source (``IP_PKTINFO``: a check tests the pair it names, an
answer leaves from the address the request came to, RFC 8445 §7.2.5.2.1), relayed bases
through their :class:`~p2ptun.net.turn_relay.TurnRelay` (ChannelData once the selected relayed
pair's channel is bound, Send indications before). Where the socket cannot choose its source
(``P2PTUN_PKTINFO=off``), a check from a host base that is not the address the kernel sends
from towards its destination is dropped (counted in ``wrong_base``): it would test another pair
than the one it names, so it fails instead. :meth:`IceSession.send` puts data on the selected
pair the same way, and :meth:`IceSession.ping` measures its round-trip time with a
consent-style check.

Events for the daemon (``on_event(session, event)``, called synchronously): every
:data:`~p2ptun.ice.events.IceEvent` of the agent — :class:`~p2ptun.ice.events.PairSelected`
(connected / the selected pair changed; ``previous`` set on a change),
:class:`~p2ptun.ice.events.BetterPairAvailable`, :class:`~p2ptun.ice.events.ConsentSuspect`,
:class:`~p2ptun.ice.events.ConsentRestored`, :class:`~p2ptun.ice.events.ConsentExpired`,
:class:`~p2ptun.ice.events.StateChanged` (``FAILED`` = failed), ... — plus the shell's own:
:class:`LocalCandidate` (trickle it to the peer), :class:`LocalCandidatesDone` (signal
end-of-candidates) and :class:`LocalRestart` (our credentials changed: signal
:meth:`IceSession.local_description` again).

Gathering rounds: the transport gathers once when it starts and again on
:meth:`IceTransport.regather` (network change). A session takes the candidates of the latest
round when it is opened or restarted — those present then are in
:meth:`IceSession.local_description`, later ones arrive as :class:`LocalCandidate` events. A
TURN allocation that appears, is lost or is renewed outside a round starts a new round by
itself (the gatherer retries with backoff, so this is bounded); sessions move to it when they
restart (or, in the node, when a new offer/answer opens a new session). A session opened with
``follow_rounds`` also takes every later round's new candidates as :class:`LocalCandidate`
events — after its end-of-candidates too, which RFC 8838 does not foresee but our agent
accepts: the node trickles what a regather or a new TURN allocation found into the sessions
it is running. ``on_gathered(round)`` hears about each finished round.

Multi-homed hosts: the sockets are bound to the wildcard address; the base of an incoming
datagram is the local address it came to, as the endpoint reports it (see :mod:`p2ptun.net.mux`),
and everything sent on a pair leaves from its base. So every host address works as a base —
with source policy routing (``ip rule from A table ...``) each through its own uplink — and the
gatherer asks the STUN servers from each of them (:mod:`p2ptun.net.gather`). Without
``IP_PKTINFO`` the base of an incoming datagram is the address the kernel sends from towards
its source, and pairs on the other host addresses fail the symmetric check.

A sketch of a user (the probe's way; the node's is :mod:`p2ptun.node.peer`)::

    transport = IceTransport(endpoints, GatherOptions.from_config(cfg.ice, tun_name))
    await nursery.start(transport.run)
    session = transport.open_session("bob", controlling=True, on_event=..., on_data=...)
    signal(session.local_description())                 # and each LocalCandidate event
    session.set_remote_description(IceDescription.parse(text))   # what bob signalled
    ...
    session.send(wireguard_datagram)                    # on the selected pair
    rtt = await session.ping()
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields

import trio

from p2ptun.addr import Address, format_address, is_ipv6
from p2ptun.errors import DecodeError
from p2ptun.ice.agent import AgentConfig, IceAgent, RandomSource
from p2ptun.ice.candidate import Candidate, CandidateType, peer_reflexive_priority
from p2ptun.ice.events import (
    ConsentExpired,
    IceEvent,
    PairSelected,
    SelectedPair,
    StandbyReady,
    StateChanged,
)
from p2ptun.ice.sdp import IceCredentials, IceDescription, generate_credentials
from p2ptun.log import get_logger
from p2ptun.net.gather import (
    AddressLister,
    CredentialSource,
    Gatherer,
    GatherOptions,
    GatherResult,
)
from p2ptun.net.mux import UdpMux, normalize_address
from p2ptun.net.ports import DatagramPort, Host
from p2ptun.net.timer import CoreTimer
from p2ptun.net.turn_relay import TurnRelay, WireGuardReceiver
from p2ptun.stun import AttrType, Message, MessageClass, Method, is_stun
from p2ptun.stun.credentials import short_term_key

log = get_logger("net.ice")

#: A request's transaction id is remembered this long after its latest (re)transmission, for
#: routing the response (RFC 8489 §6.2.1: the final wait after the last send is Rm·RTO, 8 s
#: with the agent's defaults; responses normally come within one round trip).
TRANSACTION_MEMORY = 45.0
#: At most this many remembered transactions (oldest forgotten first).
MAX_REMEMBERED_TRANSACTIONS = 16384
#: Local ufrags routed per session: the current generation and the two before it (the agent
#: answers the previous generation's checks until the next restart, and the selected pair's).
UFRAGS_PER_SESSION = 3
#: When :meth:`IceSession.ping` sends its (re)transmissions, in seconds after the start.
PING_SCHEDULE = (0.0, 0.5, 1.5)
#: When an agent asks to be woken in the past right after being run, it is woken this much
#: later instead (guards against a busy loop; counted in ``stale_wakeups``).
MIN_TIMER_STEP = 0.01

_STUN_ATTR_USERNAME = 0x0006


@dataclass(frozen=True)
class LocalCandidate:
    """A local candidate gathered after the session's description was taken: trickle it
    (RFC 8838); ``ufrag`` names the generation it belongs to (RFC 8840 §9)."""

    candidate: Candidate
    ufrag: str


@dataclass(frozen=True)
class LocalCandidatesDone:
    """Gathering for generation ``ufrag`` finished: signal end-of-candidates (RFC 8838 §13)."""

    ufrag: str


@dataclass(frozen=True)
class LocalRestart:
    """The session restarted (RFC 8445 §9): signal :meth:`IceSession.local_description` (new
    ufrag/pwd and the candidates known so far). ``reason``: ``"local"`` (:meth:`restart`),
    ``"remote"`` (the peer restarted) or ``"regather"`` (the network changed)."""

    credentials: IceCredentials
    reason: str


SessionEvent = IceEvent | LocalCandidate | LocalCandidatesDone | LocalRestart
#: ``on_event(session, event)``.
EventHandler = Callable[["IceSession", SessionEvent], None]
#: ``on_data(session, data, source)``: a non-STUN payload from the peer (WireGuard). ``data``
#: may be a view into a receive buffer, valid only during the call.
DataHandler = Callable[["IceSession", "bytes | memoryview", Address], None]


@dataclass
class TransportCounters:
    """What the shell routed and dropped."""

    checks_unknown_ufrag: int = 0
    responses_unknown: int = 0
    indications: int = 0
    relayed_data_unrouted: int = 0
    direct_data_unrouted: int = 0
    relayed_other: int = 0
    """Relayed payloads that are neither STUN nor WireGuard."""
    relay_missing: int = 0
    """Transmits for a relayed base whose allocation is gone."""
    wrong_base: int = 0
    """Transmits from a host base that is not where the kernel sends from to their remote."""
    tx_dropped: int = 0
    timer_wakeups: int = 0
    consent_joined: int = 0
    """Consent checks sent early to share another pair's wake-up (``_consent_round``)."""
    stale_wakeups: int = 0
    regathers: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def stun_username(data: bytes | bytearray | memoryview) -> str | None:
    """The USERNAME attribute of a STUN message without decoding the rest (None if absent or
    malformed). Only for routing: the agent authenticates the message."""
    if len(data) < 20:
        return None
    end = 20 + ((data[2] << 8) | data[3])
    if end > len(data):
        return None
    pos = 20
    while pos + 4 <= end:
        attr = (data[pos] << 8) | data[pos + 1]
        length = (data[pos + 2] << 8) | data[pos + 3]
        start = pos + 4
        if start + length > end:
            return None
        if attr == _STUN_ATTR_USERNAME:
            try:
                return bytes(data[start : start + length]).decode("utf-8")
            except UnicodeDecodeError:
                return None
        pos = start + ((length + 3) & ~3)
    return None


def _stun_class(data: bytes | bytearray | memoryview) -> int:
    """0 request, 1 indication, 2 success, 3 error (RFC 8489 §5)."""
    mtype = (data[0] << 8) | data[1]
    return ((mtype >> 4) & 0x1) | ((mtype >> 7) & 0x2)


class IceSession:
    """ICE with one peer over the node's transport. Made by :meth:`IceTransport.open_session`.

    Remote input (from signaling): :meth:`set_remote_description` (credentials, candidates and
    end-of-candidates at once; detects a peer's restart), or piecewise
    :meth:`set_remote_credentials`, :meth:`add_remote_candidate`,
    :meth:`set_remote_end_of_candidates`. Local output: :meth:`local_description` and the
    events. Data: :meth:`send`, and ``on_data`` for what arrives.
    """

    def __init__(
        self,
        transport: IceTransport,
        name: str,
        agent: IceAgent,
        on_event: EventHandler | None,
        on_data: DataHandler | None,
    ) -> None:
        self.name = name
        self.agent = agent
        self.on_event = on_event
        self.on_data = on_data
        self._transport = transport
        self._closed = False
        #: Gathering round whose candidates this session's current generation uses.
        self._round = -1
        #: Take the new candidates of later rounds too (module docstring); may be turned off
        #: at any time (the node does for an attempt it retires).
        self.follow_rounds = False
        #: Candidates the agent accepted for the current generation, in order (signalled).
        self._local: list[Candidate] = []
        self._local_complete = False
        self._ufrags: list[str] = []
        self._wake: float | None = None
        self._connected = trio.Event()
        #: When checks started (remote credentials known) for the current generation, and
        #: when its first pair was selected: time to nomination = the difference.
        self.checks_started_at: float | None = None
        self.selected_at: float | None = None
        self._send_relay: TurnRelay | None = None
        self._send_remote: Address | None = None
        self._send_source: str | None = None
        self._send_direct = False
        self._remotes: set[Address] = set()

    # -- queries ---------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def closed_now(self) -> bool:
        """:attr:`closed`, as a call (an event handler may close the session meanwhile)."""
        return self._closed

    @property
    def local_credentials(self) -> IceCredentials:
        return self.agent.local_credentials

    @property
    def selected_pair(self) -> SelectedPair | None:
        """The pair data goes over (see :meth:`can_send`)."""
        return self.agent.selected_pair

    def can_send(self) -> bool:
        return self.agent.can_send(trio.current_time())

    def consent_age(self) -> float | None:
        return self.agent.consent_age(trio.current_time())

    @property
    def time_to_nomination(self) -> float | None:
        """Seconds from the start of checks to the first selected pair of this generation."""
        if self.checks_started_at is None or self.selected_at is None:
            return None
        return self.selected_at - self.checks_started_at

    def local_description(self) -> IceDescription:
        """What to signal: current credentials, the candidates so far, end-of-candidates once
        gathering finished, ``ice-options:trickle``, ``ice-lite`` for a lite agent."""
        creds = self.agent.local_credentials
        return IceDescription(
            ufrag=creds.ufrag,
            pwd=creds.pwd,
            candidates=tuple(self._local),
            lite=self.agent.lite,
            options=("trickle",),
            end_of_candidates=self._local_complete,
        )

    async def wait_connected(self) -> SelectedPair:
        """Wait until a pair is selected (the first time); returns it."""
        await self._connected.wait()
        pair = self.agent.selected_pair
        assert pair is not None
        return pair

    # -- remote input ----------------------------------------------------------------------------

    def set_remote_description(self, description: IceDescription) -> bool:
        """Apply everything the peer signalled. If its credentials differ from those already
        set, the peer restarted (RFC 8445 §9.2): this session restarts too (a
        :class:`LocalRestart` event, reason ``"remote"``) and the method returns True — signal
        the new local description. Otherwise returns False."""
        self._check_open()
        restarted = False
        now = trio.current_time()
        current = self.agent.remote_credentials
        if current is not None and current != description.credentials:
            self._restart("remote", now)
            restarted = True
        self.set_remote_credentials(description.credentials, lite=description.lite)
        for cand in description.candidates:
            self.agent.add_remote_candidate(cand, now)
        if description.end_of_candidates:
            self.agent.set_remote_end_of_candidates(now)
        self._permit(self.agent.remote_candidates)
        self._transport._pump(self)
        return restarted

    def set_remote_credentials(self, credentials: IceCredentials, *, lite: bool = False) -> bool:
        """The peer's ufrag/pwd (checks start). False if different ones are set already
        (the peer restarted: use :meth:`set_remote_description` or :meth:`restart` first)."""
        self._check_open()
        now = trio.current_time()
        fresh = self.agent.remote_credentials is None
        ok = self.agent.set_remote_credentials(credentials, now, lite=lite)
        if ok and fresh:
            self.checks_started_at = now
            self.selected_at = None
        self._transport._pump(self)
        return ok

    def add_remote_candidate(self, candidate: Candidate, ufrag: str | None = None) -> bool:
        """A trickled remote candidate; ignored (False) when ``ufrag`` names another generation
        than the peer's current one."""
        self._check_open()
        creds = self.agent.remote_credentials
        if ufrag is not None and creds is not None and ufrag != creds.ufrag:
            return False
        ok = self.agent.add_remote_candidate(candidate, trio.current_time())
        if ok:
            self._permit([candidate])
        self._transport._pump(self)
        return ok

    def set_remote_end_of_candidates(self, ufrag: str | None = None) -> None:
        """The peer signalled end-of-candidates (for generation ``ufrag`` if given)."""
        self._check_open()
        creds = self.agent.remote_credentials
        if ufrag is not None and creds is not None and ufrag != creds.ufrag:
            return
        self.agent.set_remote_end_of_candidates(trio.current_time())
        self._transport._pump(self)

    # -- local control ---------------------------------------------------------------------------

    def restart(self) -> IceCredentials:
        """ICE restart (RFC 8445 §9) with fresh credentials and the node's latest candidates;
        the current pair keeps carrying data until a new one is selected. Emits
        :class:`LocalRestart` (reason ``"local"``); signal :meth:`local_description`."""
        self._check_open()
        self._restart("local", trio.current_time())
        self._transport._pump(self)
        return self.agent.local_credentials

    def probe(self, *, urgent: bool = True) -> bool:
        """Check the selected pair at once (:meth:`IceAgent.probe_consent`): the data path saw
        it go quiet. Unanswered, the session reports :class:`ConsentLost`. False when there
        is nothing to probe, a probe is under way, or an optional probe was held off."""
        if self._closed:
            return False
        started = self.agent.probe_consent(trio.current_time(), urgent=urgent)
        self._transport._pump(self)
        return started

    def send(self, data: bytes | bytearray | memoryview) -> bool:
        """Send ``data`` on the selected pair (direct: UDP from the shared socket; relayed:
        through the TURN allocation). False (nothing sent) if no pair is usable."""
        remote = self._send_remote
        if remote is None or not self.agent.can_send():
            return False
        if self._send_direct:
            return self._transport.mux.send(data, remote, self._send_source)
        relay = self._send_relay
        if relay is None:
            return False
        return relay.send(remote, data)

    async def ping(self, timeout: float = 3.0) -> float | None:
        """The round-trip time of the selected pair in seconds, or None (no pair, or no answer
        within ``timeout``).

        A STUN Binding request built like a consent check (RFC 7675: USERNAME, PRIORITY, role
        and tie-breaker, MESSAGE-INTEGRITY with the peer's password, FINGERPRINT), sent the
        way data goes (direct, or through the relay) and retransmitted on
        :data:`PING_SCHEDULE`; the peer's agent answers it as any check. It measures the path
        itself, not what runs over it. Uses the current generation's credentials.
        """
        pair = self.agent.selected_pair
        remote_creds = self.agent.remote_credentials
        if pair is None or remote_creds is None or self._closed:
            return None
        transport = self._transport
        mux = transport.mux
        agent = self.agent
        key = short_term_key(remote_creds.pwd)
        username = f"{remote_creds.ufrag}:{self.local_credentials.ufrag}"
        role = AttrType.ICE_CONTROLLING if agent.controlling else AttrType.ICE_CONTROLLED
        sent: dict[bytes, float] = {}
        rtts: list[float] = []
        done = trio.Event()

        def on_response(data: memoryview, _local: Address, _source: Address) -> None:
            try:
                msg = Message.decode(bytes(data))
            except DecodeError:
                return
            at = sent.get(msg.transaction_id)
            if at is None or done.is_set():
                return
            if msg.message_class == MessageClass.SUCCESS and msg.check_integrity(key):
                rtts.append(trio.current_time() - at)
                done.set()

        start = trio.current_time()
        try:
            with trio.move_on_at(start + timeout):
                for at in PING_SCHEDULE:
                    with trio.move_on_at(start + at):
                        await done.wait()
                    if done.is_set():
                        break
                    tid = bytes(transport.random_bytes(12))
                    msg = Message.request(
                        Method.BINDING,
                        tid,
                        [
                            (AttrType.USERNAME, username),
                            (AttrType.PRIORITY, peer_reflexive_priority(pair.local)),
                            (role, agent.tie_breaker),
                        ],
                    )
                    if not mux.register_transaction(tid, on_response):
                        continue
                    sent[tid] = trio.current_time()
                    self._send_on(pair, msg.encode(key, fingerprint=True))
                await done.wait()
        finally:
            for tid in sent:
                mux.unregister_transaction(tid)
        return rtts[0] if rtts else None

    def _send_on(self, pair: SelectedPair, data: bytes) -> bool:
        remote = pair.remote.address
        if pair.via_relay:
            relay = self._transport.relay_for(pair.base)
            return relay is not None and relay.send(remote, data)
        return self._transport.mux.send(data, remote, pair.base[0])

    def close(self) -> None:
        """Forget this session (its agent stops; nothing more is sent). Idempotent."""
        if not self._closed:
            self._closed = True
            self._transport._forget(self)

    # -- internals -------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"ICE session {self.name!r} is closed")

    def _restart(self, reason: str, now: float) -> None:
        transport = self._transport
        creds = generate_credentials(transport.random_bytes)
        self.agent.restart(creds, now)
        self.checks_started_at = None
        self.selected_at = None
        transport._register_ufrag(self, creds.ufrag)
        self._join_round(now)
        self._emit(LocalRestart(creds, reason))

    def _join_round(self, now: float) -> None:
        """Give the agent the latest round's candidates (those gathered so far)."""
        transport = self._transport
        self._round = transport.round
        self._local = []
        self._local_complete = False
        for cand in transport.candidates:
            if self._usable(cand) and self.agent.add_local_candidate(cand, now):
                self._local.append(cand)
        self._permit(self.agent.remote_candidates)
        if transport.gathering_complete:
            self._local_complete = True
            self.agent.set_local_end_of_candidates(now)

    def _usable(self, candidate: Candidate) -> bool:
        """An ICE-lite agent has host candidates only (RFC 8445 §2.5)."""
        return not self.agent.lite or candidate.type is CandidateType.HOST

    def _add_local(self, candidate: Candidate, now: float) -> None:
        if self._usable(candidate) and self.agent.add_local_candidate(candidate, now):
            self._local.append(candidate)
            if candidate.type is CandidateType.RELAY:
                self._permit(self.agent.remote_candidates)
            self._emit(LocalCandidate(candidate, self.agent.local_credentials.ufrag))

    def _permit(self, remotes: Iterable[Candidate]) -> None:
        """Ask our relays for permissions for ``remotes`` before any check needs them (module
        docstring). Peer-reflexive candidates came in through the relay: they have one."""
        relays = [
            (relay, is_ipv6(cand.address[0]))
            for cand in self._local
            if cand.type is CandidateType.RELAY
            and (relay := self._transport.relay_for(cand.address)) is not None
        ]
        if not relays:
            return
        for remote in remotes:
            if remote.type is CandidateType.PRFLX:
                continue
            ip = remote.address[0]
            v6 = is_ipv6(ip)
            for relay, relayed_v6 in relays:
                if v6 == relayed_v6:  # a relayed address pairs with its own family only
                    relay.create_permission(ip)

    def _local_done(self, now: float) -> None:
        self._local_complete = True
        self.agent.set_local_end_of_candidates(now)
        self._emit(LocalCandidatesDone(self.agent.local_credentials.ufrag))

    def _emit(self, event: SessionEvent) -> None:
        if self.on_event is not None:
            self.on_event(self, event)

    def _on_agent_event(self, event: IceEvent, now: float) -> None:
        if isinstance(event, PairSelected):
            self._use_pair(event.pair)
            if self.selected_at is None:
                self.selected_at = now
            self._connected.set()
        elif isinstance(event, ConsentExpired):
            self._send_remote = None
        elif isinstance(event, StandbyReady):
            self._prepare_standby(event.pair)
        elif isinstance(event, StateChanged):
            log.debug("ice state", peer=self.name, state=event.state.value)
        self._emit(event)

    def _prepare_standby(self, pair: SelectedPair) -> None:
        """A pair is kept beside the selected one (the agent's standby): what arrives from its
        remote reaches this session, and through our relay a channel is bound so that data
        could go as ChannelData at once."""
        remote = pair.remote.address
        self._transport._route_remote(self, remote)
        self._remotes.add(remote)
        relay = self._transport.gatherer.relay_for(pair.base) if pair.via_relay else None
        if relay is not None:
            relay.bind_channel(remote)

    def _use_pair(self, pair: SelectedPair) -> None:
        remote = pair.remote.address
        transport = self._transport
        transport._route_remote(self, remote)
        self._remotes.add(remote)
        if pair.via_relay:
            relay = transport.gatherer.relay_for(pair.base)
            self._send_relay = relay
            self._send_direct = False
            if relay is not None:
                relay.bind_channel(remote)
        else:
            self._send_relay = None
            self._send_direct = True
        self._send_source = pair.base[0]
        self._send_remote = remote
        log.debug(
            "ice pair",
            peer=self.name,
            local=f"{pair.local.type.value}:{format_address(pair.local.address)}",
            remote=f"{pair.remote.type.value}:{format_address(remote)}",
            relayed=pair.relayed,
        )


class IceTransport:
    """The node's ICE shell over its shared UDP endpoints (module docstring).

    ``options`` says what to gather; ``host`` is the machine (addresses, names, TURN
    connections, and the random sources: ``host.rng`` for the agents' tie-breakers,
    transaction ids and consent jitter, ``host.random_bytes`` for ICE credentials and STUN/TURN
    transaction ids); ``credentials`` supplies TURN credentials for servers configured without
    them. ``agent_config`` is the default agent configuration (by default the agents accept
    link-local remote candidates only when ``options`` gather link-local addresses).
    ``relayed_wireguard(data, peer, relay)`` takes every WireGuard datagram a relay unwrapped
    instead of the sessions' ``on_data`` (the node: its data path). ``after_relay_batch`` is
    called after data a stream (TCP/TLS) relay delivered (the node flushes its data path there;
    a UDP relay's data arrives inside the socket's batch, whose end does that).
    ``on_gathered(round)`` is called when a gathering round finished, ``on_mapping_moved()``
    when a keepalive Binding found the node mapped elsewhere between rounds
    (:class:`~p2ptun.net.gather.Gatherer`), ``on_timer()`` whenever the agents' timer woke the
    node (the node piggybacks its suspend check on these wake-ups, which happen anyway while a
    peer is connected).
    """

    def __init__(
        self,
        endpoints: Sequence[DatagramPort],
        options: GatherOptions,
        *,
        host: Host,
        credentials: CredentialSource | None = None,
        agent_config: AgentConfig | None = None,
        relayed_wireguard: WireGuardReceiver | None = None,
        after_relay_batch: Callable[[], None] | None = None,
        on_gathered: Callable[[int], None] | None = None,
        list_addresses: AddressLister | None = None,
        on_timer: Callable[[], None] | None = None,
        on_mapping_moved: Callable[[], None] | None = None,
    ) -> None:
        self.rng: RandomSource = host.rng
        self.random_bytes = host.random_bytes
        self.agent_config = agent_config or AgentConfig(allow_link_local=options.include_link_local)
        self.counters = TransportCounters()
        self.on_gathered = on_gathered
        self.on_timer = on_timer
        self.mux = UdpMux(endpoints, on_ice=self._on_ice, route_lookup=host.route_source)
        self.gatherer = Gatherer(
            self.mux,
            options,
            host=host,
            credentials=credentials,
            list_addresses=list_addresses,
            on_relay_data=self._on_relay_data,
            relayed_wireguard=relayed_wireguard or self._relayed_to_session,
            after_relay_batch=after_relay_batch,
            on_relays_changed=self._relays_changed,
            on_mapping_moved=on_mapping_moved,
        )
        self._sessions: list[IceSession] = []
        self._by_ufrag: dict[str, IceSession] = {}
        self._by_tid: OrderedDict[bytes, tuple[IceSession, float]] = OrderedDict()
        self._by_remote: dict[Address, IceSession] = {}
        self._timer = CoreTimer(self._earliest_wake, self._on_timeout)
        #: The latest gathering round: its number, candidates so far, whether it finished.
        #: Round 1 is due as soon as :meth:`run` starts.
        self.round = 1
        self.candidates: list[Candidate] = []
        self.gathering_complete = False
        self.last_gather: GatherResult | None = None
        self._gather_wanted = trio.Event()
        self._gather_wanted.set()
        self._gather_scope: trio.CancelScope | None = None
        self._gathered = trio.Event()
        self._running = False

    # -- lifetime --------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the gatherer (and its TURN allocations), the gathering rounds and the agents'
        timer until cancelled. ``started`` comes at once: sessions may be opened while the
        first round gathers. (The endpoints' receive loops are the caller's: the node's data
        path runs them.)"""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.gatherer.run)
            nursery.start_soon(self._timer.run)
            nursery.start_soon(self._gather_loop)
            self._running = True
            try:
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._running = False

    async def aclose(self) -> None:
        """Release the TURN allocations gracefully (each bounded by the relay's close
        timeout; bound the whole from outside) while the sockets still run: the node is
        stopping. Cancel :meth:`run` afterwards."""
        await self.gatherer.aclose()

    def relay_for(self, relayed: Address) -> TurnRelay | None:
        """The live TURN allocation whose relayed address is ``relayed`` (a relayed base)."""
        return self.gatherer.relay_for(relayed)

    async def wait_gathered(self) -> None:
        """Wait until the current gathering round finished."""
        while not self.gathering_complete:
            await self._gathered.wait()

    def regather(self, *, restart_sessions: bool = True) -> None:
        """Gather again (network change). With ``restart_sessions`` every session restarts
        into the new round at once (:class:`LocalRestart`, reason ``"regather"``). UDP TURN
        allocations whose path changed are made again by the round (see
        :mod:`p2ptun.net.gather`)."""
        self.counters.regathers += 1
        self.mux.invalidate_routes()
        # The new round begins now (a round still gathering is abandoned): sessions restarted
        # into it, and sessions opened from now on, get its candidates as they come.
        now = trio.current_time()
        if self._gather_scope is not None:
            self._gather_scope.cancel()
        if not self.gathering_complete:
            # Sessions on the abandoned round keep what it found: that was all of it.
            for session in list(self._sessions):
                if session._round == self.round and not session._closed:
                    session._local_done(now)
                    self._pump(session)
        self.round += 1
        self.candidates = []
        self.gathering_complete = False
        if restart_sessions:
            for session in list(self._sessions):
                session._restart("regather", now)
                self._pump(session)
        self._gather_wanted.set()

    # -- sessions --------------------------------------------------------------------------------

    @property
    def sessions(self) -> list[IceSession]:
        return list(self._sessions)

    def open_session(
        self,
        name: str,
        *,
        controlling: bool,
        on_event: EventHandler | None = None,
        on_data: DataHandler | None = None,
        lite: bool = False,
        config: AgentConfig | None = None,
        credentials: IceCredentials | None = None,
        follow_rounds: bool = False,
    ) -> IceSession:
        """A new agent for peer ``name`` (controlling: we sent the offer, docs/ARCHITECTURE.md §2),
        with the node's candidates gathered so far; signal its :meth:`~IceSession.
        local_description`. Events of the initial candidates are not emitted (they are in the
        description); later ones are, and with ``follow_rounds`` those of later rounds too."""
        creds = credentials or generate_credentials(self.random_bytes)
        agent = IceAgent(
            creds,
            controlling=controlling,
            rng=self.rng,
            lite=lite,
            config=config or self.agent_config,
        )
        session = IceSession(self, name, agent, on_event, on_data)
        session.follow_rounds = follow_rounds
        self._sessions.append(session)
        self._register_ufrag(session, creds.ufrag)
        session._join_round(trio.current_time())
        self._pump(session)
        return session

    def _forget(self, session: IceSession) -> None:
        if session in self._sessions:
            self._sessions.remove(session)
        for ufrag in session._ufrags:
            if self._by_ufrag.get(ufrag) is session:
                del self._by_ufrag[ufrag]
        for remote in session._remotes:
            if self._by_remote.get(remote) is session:
                del self._by_remote[remote]
        session._wake = None
        self._timer.rearm()

    def _register_ufrag(self, session: IceSession, ufrag: str) -> None:
        other = self._by_ufrag.get(ufrag)
        if other is not None and other is not session:
            # 48 random bits: a collision is practically impossible; never route wrongly.
            raise RuntimeError("ICE ufrag collision between sessions")
        self._by_ufrag[ufrag] = session
        session._ufrags.append(ufrag)
        while len(session._ufrags) > UFRAGS_PER_SESSION:
            old = session._ufrags.pop(0)
            if self._by_ufrag.get(old) is session:
                del self._by_ufrag[old]

    def _route_remote(self, session: IceSession, remote: Address) -> None:
        self._by_remote[remote] = session

    # -- the agents' output ----------------------------------------------------------------------

    def _pump(self, session: IceSession) -> None:
        """Send what the agent queued, dispatch its events, re-arm the timer. Events may call
        back into the session; the loop runs until the agent has nothing left."""
        if session._closed:
            return
        agent = session.agent
        now = trio.current_time()
        while True:
            transmits = agent.pop_transmits()
            events = agent.pop_events()
            if not transmits and not events:
                break
            for t in transmits:
                self._transmit(session, t.data, t.local, t.remote, t.via_relay, now)
            for event in events:
                session._on_agent_event(event, now)
                if session.closed_now():
                    return
        wake = agent.next_wakeup()
        before, session._wake = session._wake, wake
        timer = self._timer
        deadline = timer.deadline
        if deadline is None:
            return
        if wake is not None and wake < deadline:
            timer.pull_earlier(wake)
        elif before is not None and before <= deadline and (wake is None or wake > before):
            # This session armed the timer and now wants it later (a consent response ended
            # the retransmission schedule): sleep until the next deadline that is still due
            # instead of waking for nothing.
            timer.rearm()

    def _transmit(
        self,
        session: IceSession,
        data: bytes,
        local: Address,
        remote: Address,
        via_relay: bool,
        now: float,
    ) -> None:
        if len(data) >= 20 and _stun_class(data) == 0:
            self._remember(bytes(data[8:20]), session, now)
        mux = self.mux
        if via_relay:
            relay = self.gatherer.relay_for(local)
            if relay is None:
                self.counters.relay_missing += 1
                return
            if not relay.send(remote, data):
                self.counters.tx_dropped += 1
            return
        if mux.chooses_source(remote[0]):
            source: str | None = local[0]  # from the base the transmit names
        elif mux.local_base_for(remote) != local:
            # The kernel would send this from another local address: the check would test a
            # pair other than the one it names. Let it fail instead.
            self.counters.wrong_base += 1
            return
        else:
            source = None
        if not mux.send(data, remote, source):
            self.counters.tx_dropped += 1

    def _remember(self, tid: bytes, session: IceSession, now: float) -> None:
        table = self._by_tid
        table[tid] = (session, now + TRANSACTION_MEMORY)
        table.move_to_end(tid)
        while table:
            _first, (_s, expires) = next(iter(table.items()))
            if expires > now and len(table) <= MAX_REMEMBERED_TRANSACTIONS:
                break
            table.popitem(last=False)

    # -- input -----------------------------------------------------------------------------------

    def _on_ice(self, data: memoryview, local: Address, remote: Address) -> None:
        """A STUN datagram for ICE (from the mux, or unwrapped by a relay)."""
        cls = _stun_class(data)
        if cls == 0:
            username = stun_username(data)
            session = None
            if username is not None:
                session = self._by_ufrag.get(username.partition(":")[0])
            if session is None:
                self.counters.checks_unknown_ufrag += 1
                return
        elif cls == 1:
            self.counters.indications += 1
            return
        else:
            entry = self._by_tid.get(bytes(data[8:20]))
            if entry is None or entry[0]._closed:
                self.counters.responses_unknown += 1
                return
            session = entry[0]
        now = trio.current_time()
        stats = session.agent.stats
        sent = stats.consent_checks_sent
        session.agent.handle_datagram(data, local, remote, now)
        self._pump(session)
        if cls == 0 and stats.consent_checks_sent != sent and len(self._sessions) > 1:
            # The peer's check brought ours forward: the others' may ride along too, so
            # that the node's rounds follow whichever peer checks first.
            self._consent_round(list(self._sessions), now)

    def _on_relay_data(self, relay: TurnRelay, peer: Address, data: bytes) -> None:
        if is_stun(data):
            relayed = relay.client.relayed
            if relayed is None:
                return
            view, source = memoryview(data), normalize_address(peer)
            if not self.mux.deliver_transaction(view, relayed, source):
                self._on_ice(view, relayed, source)
            return
        self.counters.relayed_other += 1  # WireGuard went to the relay's WireGuard receiver

    def _relayed_to_session(self, data: memoryview, peer: Address, relay: TurnRelay) -> None:
        """Relayed WireGuard without a data path (probes, tests): to the session whose
        selected pair has ``peer`` as its remote."""
        session = self._by_remote.get(peer)
        if session is None or session.on_data is None:
            self.counters.relayed_data_unrouted += 1
            return
        session.on_data(session, bytes(data), peer)

    def on_wireguard(self, data: memoryview, src: Address, local: str | None = None) -> None:
        """A dispatcher's WireGuard handler for owners without a data path (probes, tests):
        to the session whose selected pair has ``src`` as its remote."""
        session = self._by_remote.get(src)
        if session is None:
            try:
                session = self._by_remote.get(normalize_address(src))
            except ValueError:
                session = None
        if session is None or session.on_data is None:
            self.counters.direct_data_unrouted += 1
            return
        session.on_data(session, data, src)

    def _relays_changed(self) -> None:
        """A TURN allocation appeared or ended outside a round: a new round, so that sessions
        opened from now on get the relays as they are."""
        if self._running:
            self.regather(restart_sessions=False)

    # -- tasks -----------------------------------------------------------------------------------

    async def _gather_loop(self) -> None:
        while True:
            await self._gather_wanted.wait()
            self._gather_wanted = trio.Event()
            round_number = self.round

            def on_candidate(cand: Candidate, round_number: int = round_number) -> None:
                if round_number != self.round:
                    return
                self.candidates.append(cand)
                t = trio.current_time()
                for session in list(self._sessions):
                    if session._closed:
                        continue
                    if session._round == round_number or (
                        session.follow_rounds and session._round < round_number
                    ):
                        session._add_local(cand, t)
                        self._pump(session)

            result = None
            with trio.CancelScope() as scope:
                self._gather_scope = scope
                result = await self.gatherer.gather(on_candidate)
            self._gather_scope = None
            if result is None or round_number != self.round:
                continue  # superseded by a newer round
            self.last_gather = result
            for failure in result.failures:
                log.info(
                    "gathering", kind=failure.kind, server=failure.server, failed=failure.reason
                )
            self.gathering_complete = True
            now = trio.current_time()
            for session in list(self._sessions):
                if session._round == round_number and not session._closed:
                    session._local_done(now)
                    self._pump(session)
            self._gathered.set()
            self._gathered = trio.Event()
            if self.on_gathered is not None:
                self.on_gathered(round_number)

    def _earliest_wake(self) -> float | None:
        return min((s._wake for s in self._sessions if s._wake is not None), default=None)

    def _on_timeout(self, now: float) -> None:
        self.counters.timer_wakeups += 1
        if self.on_timer is not None:
            self.on_timer()
        consent_sent = False
        sessions = list(self._sessions)
        for session in sessions:
            wake = session._wake
            if wake is None or wake > now or session._closed:
                continue
            stats = session.agent.stats
            sent = stats.consent_checks_sent
            session.agent.handle_timeout(now)
            consent_sent = consent_sent or stats.consent_checks_sent != sent
            self._pump(session)
            if session._wake is not None and session._wake <= now:
                self.counters.stale_wakeups += 1
                session._wake = now + MIN_TIMER_STEP
        if consent_sent and len(sessions) > 1:
            self._consent_round(sessions, now)

    def _consent_round(self, sessions: list[IceSession], now: float) -> None:
        """A consent check went out on this wake-up (our timer's, or ours brought forward by
        the peer's check): every other selected pair whose next check may already go (RFC 7675
        §5.1 gaps kept, :meth:`IceAgent.join_consent_round`) sends it now too. The peers
        answer together, and as each brings its own check forward to ride on its answer, a
        node's idle peers settle into shared rounds: a few wake-ups per round instead of two
        per peer."""
        for session in sessions:
            if not session._closed and session.agent.join_consent_round(now):
                self.counters.consent_joined += 1
                self._pump(session)


def is_direct(pair: SelectedPair) -> bool:
    """Neither side of the pair is a relayed candidate."""
    return CandidateType.RELAY not in (pair.local.type, pair.remote.type)


__all__ = [
    "DataHandler",
    "EventHandler",
    "IceSession",
    "IceTransport",
    "LocalCandidate",
    "LocalCandidatesDone",
    "LocalRestart",
    "SessionEvent",
    "TransportCounters",
    "is_direct",
    "stun_username",
]

"""One configured peer as the daemon runs it: signaling, when to (re)start ICE, and the
WireGuard path.

:class:`PeerSession` is the orchestration on top of the node's ICE transport
(:class:`~p2ptun.net.ice_transport.IceTransport`, which owns the shared sockets' demux, the
gathering and the TURN relays, the agents' timer and their transmits):

1. **Offer/answer** through the rendezvous (:class:`~p2ptun.net.signaling.SignalingClient`):
   at start the node offers (ICE-controlling); an offer that arrives is answered
   (ICE-controlled). When both offer at once the signaling core applies the glare rule
   (smaller public key wins, docs/ARCHITECTURE.md §2) and tells the loser which of its sessions
   was superseded. An offer to a peer that is offline waits for its presence.
2. **ICE**: each offer or answer creates an :class:`Attempt` — a fresh
   :class:`~p2ptun.net.ice_transport.IceSession` (one sans-I/O agent with new credentials,
   the role of this offer/answer, and the node's latest gathering round), whose later
   candidates (:class:`~p2ptun.net.ice_transport.LocalCandidate`, RFC 8838: those of its
   round, and what later rounds find while it runs) and end-of-candidates are trickled as
   ``Candidates`` messages once the peer may receive them.
3. **The path**: when an attempt selects a pair it becomes the *active* one and the data path
   sends the peer's WireGuard datagrams over it — straight to the remote candidate from the
   pair's local base (:meth:`WgTunnel.set_endpoint`), or through our TURN allocation
   (:meth:`WgTunnel.set_sender` with the relay's batch send; the session bound a channel, so
   it goes as ChannelData; whatever WireGuard the relay unwraps goes to the data path, which
   authenticates every datagram itself). A
   later selection (the agent moving from a relayed to a direct pair, or a restarted attempt)
   swaps that send function; the WireGuard session is not touched, so no new handshake and no
   lost TCP connection. A WireGuard handshake is started when a path appears and there is no
   session yet.
4. **Restarts** (make-before-break): a restart is a new attempt (``Restart`` offer) while the
   active one keeps carrying data until the new one selects a pair; the old one is then
   retired (it keeps answering the peer's checks for a while, then is closed). Triggers:
   consent suspect on the active pair (restart early), consent expired (stop sending on that
   pair at once, restart), a network change (:meth:`PeerSession.restart` from the daemon once
   the transport regathered), an attempt that failed (retry with backoff), an offer nobody
   answered. Consent loss first asks the node to regather (docs/ARCHITECTURE.md §4): our NAT may
   have changed its address or dropped its mappings, which no local network event tells. The
   restart waits for that round (at most :data:`REGATHER_WAIT`): an offer or answer with a
   stale server-reflexive candidate gets stuck, because the fresh one the peer learns later
   shares its foundation and stays Frozen while the stale pair is still being checked (RFC
   8445 §6.1.2.6). The restart then replaces an attempt of the peer's that we answered with
   the old candidates. The peer's own timers
   (re-offer, retry, retirement) run in :meth:`PeerSession.run`, which never spins: a due
   time always moves forward when it is acted on.

Rendezvous loss changes nothing here: an established path keeps running on ICE consent alone;
only new offers wait for the rendezvous to come back.

Ping (``p2ptun ping``): :meth:`IceSession.ping` on the active attempt, a consent-style check on
the selected pair; the response gives the round-trip time of the path itself, without the
WireGuard session or the peer's kernel.
"""

from __future__ import annotations

import contextlib
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import trio

from p2ptun.addr import Address, format_address
from p2ptun.config import IPNetwork, PeerConfig
from p2ptun.errors import DecodeError, ProtocolError
from p2ptun.ice import (
    AgentState,
    BetterPairAvailable,
    Candidate,
    ConsentExpired,
    ConsentLost,
    ConsentRestored,
    ConsentSuspect,
    IceAgent,
    IceDescription,
    PairSelected,
    RoleChanged,
    SelectedPair,
    StateChanged,
)
from p2ptun.ice.pathreason import PairOutcome, PathFacts, PathReason, explain
from p2ptun.log import get_logger
from p2ptun.net.ice_transport import (
    IceSession,
    IceTransport,
    LocalCandidate,
    LocalCandidatesDone,
    SessionEvent,
)
from p2ptun.net.signaling import SignalingClient
from p2ptun.net.turn_relay import TurnRelay
from p2ptun.node.wgtunnel import WgTunnel
from p2ptun.signal.client import SignalReceived
from p2ptun.signal.features import ON_DEMAND, PARTIAL_CHECKSUMS, features_of, with_features
from p2ptun.signal.negotiation import NegotiationState
from p2ptun.signal.seal import Answer, Bye, Candidates, Offer, Restart
from p2ptun.wireguard import Peer

log = get_logger("node.peer")

OFFER_TIMEOUT = 20.0
"""An offer the (online) peer has not answered after this long is made again."""
RETRY_DELAYS = (1.0, 3.0, 5.0, 10.0, 20.0, 30.0)
"""Waits before trying again after an attempt failed (the last one repeats)."""
RETIRE_AFTER = 35.0
"""A replaced attempt keeps answering the peer's checks this long."""
MAX_RETIRED = 2
"""Replaced attempts kept answering at most (the oldest is closed first)."""
SUSPECT_HOLDOFF = 10.0
"""At most one early restart per this many seconds when consent turns suspect."""
MIN_RESTART_INTERVAL = 1.0
REGATHER_WAIT = 5.0
"""A restart that waits for the node's regathering goes ahead after this long anyway."""
FIRST_OFFER_WAIT = 2.0
"""How long the first offer waits for the node's first gathering round."""
MAX_IDLE = 30.0
"""The peer's timer wakes at least this often."""
HANDSHAKE_WAIT_MIN = 1.0
HANDSHAKE_WAIT_RTTS = 4.0
"""The controlled side, with a path and no session, waits ``max(HANDSHAKE_WAIT_MIN,
HANDSHAKE_WAIT_RTTS × RTT)`` for the controlling side's handshake and then starts one itself:
see :meth:`PeerSession._use_pair`."""
PATH_SILENCE_MIN = 1.0
PATH_SILENCE_RTTS = 4.0
"""The selected path is probed once it went quiet for ``max(PATH_SILENCE_MIN,
PATH_SILENCE_RTTS × RTT)`` seconds (data sent and nothing authenticated back, or data stopped
arriving): see :meth:`PeerSession.path_quiet`."""


class NodeContext(Protocol):
    """What a peer needs from the daemon."""

    @property
    def tunnel(self) -> WgTunnel: ...

    @property
    def transport(self) -> IceTransport: ...

    @property
    def signaling(self) -> SignalingClient | None: ...

    @property
    def lite(self) -> bool: ...

    @property
    def on_demand_idle(self) -> float | None:
        """Seconds without data after which an on-demand tunnel closes; None: tunnels are
        kept up (``[ice] on_demand``)."""
        ...

    def peer_changed(self) -> None: ...

    def regather(self, reason: str) -> bool:
        """Our candidates may be stale: gather again. True if a round is under way now (the
        node then calls :meth:`PeerSession.round_done`), False if the candidates were
        gathered a moment ago."""
        ...


PATH_HISTORY = 16
"""Path changes a peer remembers for ``p2ptun status`` (the oldest is forgotten first)."""


@dataclass(frozen=True)
class PathChange:
    """One change of a peer's data path: when (trio's clock), to what, and why."""

    at: float
    path: str | None
    """``direct``, ``relay``, or None: no path."""
    reason: str
    local: str | None = None
    remote: str | None = None


@dataclass
class SessionCounters:
    """What happened to one peer's paths (the metrics endpoint shows them)."""

    ice_restarts: int = 0
    """Restarts we offered beside a working path (network change, consent trouble)."""
    restarts_answered: int = 0
    """Restarts of the peer's that we answered."""
    consent_expired: int = 0
    """Selected paths closed because consent expired (RFC 7675 §5.1)."""
    consent_lost: int = 0
    """Selected paths lost after an unanswered consent probe burst (quiet path)."""
    ice_failures: int = 0
    """Attempts whose checks all failed (RFC 8445 §6.1.2.6 Failed)."""
    path_changes: int = 0
    """Pairs selected for the data (the first one and every change after it)."""
    on_demand_connects: int = 0
    """Connections started on demand (traffic or ``p2ptun ping`` found no path)."""
    idle_closes: int = 0
    """On-demand tunnels closed after the idle timeout."""


@dataclass(eq=False)
class Attempt:
    """One ICE session (one offer/answer) with the peer."""

    session: IceSession
    controlling: bool
    created: float
    session_id: int | None = None
    remote_set: bool = False
    signalled: set[Candidate] = field(default_factory=set)
    eoc_sent: bool = False
    retire_at: float | None = None

    @property
    def agent(self) -> IceAgent:
        return self.session.agent

    @property
    def ufrag(self) -> str:
        return self.session.local_credentials.ufrag

    def __repr__(self) -> str:
        role = "controlling" if self.controlling else "controlled"
        return f"<Attempt {self.ufrag} {role} session={self.session_id}>"


class PeerSession:
    """Signaling, ICE attempts and the data path to one peer (see the module docstring)."""

    def __init__(self, ctx: NodeContext, config: PeerConfig, wg: Peer) -> None:
        self.ctx = ctx
        self.config = config
        self.wg = wg
        self.routes: list[IPNetwork] = []
        self.online: bool | None = None
        self.current: Attempt | None = None
        self.active: Attempt | None = None
        self.retired: list[Attempt] = []
        self.path: SelectedPair | None = None
        #: When the path became what it is (direct or relayed): a move between two direct
        #: pairs keeps the time, so ``p2ptun ping --until-direct`` says when direct came.
        self.path_since: float | None = None
        #: Peer relays this node uses, by server IP: the peer that runs each (the daemon's).
        self.relay_owners: Mapping[str, str] = {}
        #: ``wg.rx_bytes`` when the current probe of the path began (see :meth:`_path_lost`).
        self._probe_rx = 0
        self.ping_rtt: float | None = None
        self._wake = trio.Event()
        self._failures = 0
        self._next_try = 0.0
        self._online_since: float | None = None
        self._last_restart = -1e9
        self._last_suspect_restart = -1e9
        self._reoffer_floor = -1e9
        #: A restart waiting for the node's regathering: why, and when it goes ahead anyway.
        self._pending_restart: str | None = None
        self._restart_at: float | None = None
        #: When the controlled side starts the handshake the controlling side did not.
        self._handshake_due: float | None = None
        self._running = False
        self._closed = False  # close() is final: a closed session never offers again
        self.stale_wakeups = 0
        #: What happened to this peer's paths, for the metrics endpoint.
        self.counters = SessionCounters()
        #: The last path changes, newest last (``p2ptun status``).
        self.history: deque[PathChange] = deque(maxlen=PATH_HISTORY)
        #: Why the next path change happens, when something we did is its cause.
        self._path_reason: str | None = None
        #: On demand (``[ice] on_demand``): the idle timeout, else None (always connected).
        self.on_demand = ctx.on_demand_idle
        #: Whether this node wants a path now: always when not on demand; on demand from
        #: the first packet (or the peer's offer, or ``p2ptun ping``) until the tunnel idles.
        self._demand = self.on_demand is None
        #: Whether the peer closes idle tunnels too (it listed ``on-demand``): only then do we.
        self._peer_on_demand = False
        #: When the current demand began (the idle timeout also counts from it).
        self._demand_since = 0.0
        #: Set when a path is selected (``ping`` waits on it after creating demand).
        self._path_ready = trio.Event()
        """Times a timer was due again right after running (a bug elsewhere; never a spin)."""

    @property
    def name(self) -> str:
        return self.config.name

    # -- life -------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, keep connected, until cancelled; then close this peer's attempts."""
        self._running = True
        task_status.started()
        try:
            # Offer with the node's candidates if they come quickly; later ones trickle.
            with trio.move_on_after(FIRST_OFFER_WAIT):
                await self.ctx.transport.wait_gathered()
            if self.current is None and self.active is None and self._demand:
                self._offer("start")  # no offer of the peer's came
            while True:
                now = trio.current_time()
                self._run_timers(now)
                deadline = self._next_deadline(now)
                self._wake = trio.Event()
                with trio.move_on_at(deadline):
                    await self._wake.wait()
        finally:
            self._running = False
            self.close()

    def wake(self) -> None:
        self._wake.set()

    def demand(self, why: str = "traffic") -> None:
        """Something wants a path to the peer (an outgoing packet found none, or ``p2ptun
        ping``): on demand, connect now. Nothing to do for a peer that is always connected
        or already wanted."""
        if self._closed or self._demand:
            return
        now = trio.current_time()
        self._demand = True
        self._demand_since = now
        self._next_try = now
        self.counters.on_demand_connects += 1
        log.info("connecting on demand", peer=self.name, why=why)
        self.wake()

    def _idle_close(self) -> None:
        """The on-demand tunnel carried no data for the idle timeout: say bye (the peer
        closes too), close every attempt, forget the WireGuard session, and wait for demand."""
        log.info("closing the idle tunnel", peer=self.name, idle_timeout=self.on_demand)
        client = self.ctx.signaling
        if client is not None:
            with contextlib.suppress(KeyError, ProtocolError):
                client.send_to(self.name, Bye(0, "idle"))
        for attempt in self._attempts():
            attempt.session.close()
        self.current = self.active = None
        self.retired = []
        self._clear_path("idle")
        self.ctx.tunnel.forget_sessions(self.wg)
        self._demand = False
        self._pending_restart = self._restart_at = self._handshake_due = None
        self.counters.idle_closes += 1

    def _idle_since(self) -> float:
        """The later of the last data packet and the start of the current demand."""
        last = self.wg.last_data
        return self._demand_since if last is None else max(last, self._demand_since)

    def close(self, reason: str = "shutting down") -> None:
        """Forget every attempt and stop sending to the peer. Says bye to it. Final: a timer
        or a wake-up that was already due when the node began stopping offers nothing."""
        self._closed = True
        client = self.ctx.signaling
        if client is not None and (self.active is not None or self.current is not None):
            with contextlib.suppress(KeyError, ProtocolError):
                client.send_to(self.name, Bye(0, reason))
        for attempt in self._attempts():
            attempt.session.close()
        self.current = self.active = None
        self.retired = []
        self._clear_path(reason)

    def _attempts(self) -> list[Attempt]:
        found = [a for a in (self.current, self.active) if a is not None]
        return found + [a for a in self.retired if a not in found]

    # -- timers (the agents' own run in the transport) -------------------------------------------

    def _run_timers(self, now: float) -> None:
        idle = self._idle_due()
        if idle is not None and now >= idle:
            self._idle_close()
        due = self._handshake_due
        if due is not None and now >= due:
            self._handshake_due = None
            wg = self.wg
            # Not while a handshake the peer started waits for its first data (``next``):
            # our initiation would cross it.
            if self.path is not None and not wg.has_session(now) and wg.next is None:
                log.info("no handshake from the peer, starting one", peer=self.name)
                wg.initiate_handshake(now)
                self.ctx.tunnel.flush(wg)
        for attempt in list(self.retired):
            if attempt.retire_at is not None and now >= attempt.retire_at:
                self.retired.remove(attempt)
                attempt.session.close()
        due = self._offer_due(now)
        if due is not None and now >= due:
            # Move the clocks first: whatever _offer decides (it may skip), the next due
            # time is in the future, so this loop never spins.
            self._reoffer_floor = now
            self._next_try = now + RETRY_DELAYS[0]
            reason, self._pending_restart, self._restart_at = self._pending_restart, None, None
            if reason is not None:
                self.restart(f"{reason} (no new candidates in time)")
            else:
                self._offer("retry" if self.current is None else "offer not answered")

    def _idle_due(self) -> float | None:
        """When an on-demand tunnel that carries nothing is to be closed (None: never)."""
        if self.on_demand is None or not self._peer_on_demand or not self._demand:
            return None
        if self.active is None and self.current is None:
            return None
        return self._idle_since() + self.on_demand

    def _offer_due(self, now: float) -> float | None:
        """When to offer next: a restart waiting for regathering, after a failure (nothing
        running), or again when the online peer leaves our offer unanswered. None: nothing
        to do."""
        if self._restart_at is not None:
            return self._restart_at
        current = self.current
        if current is None:
            return self._next_try if self.active is None and self._demand else None
        if current.controlling and not current.remote_set and self.online:
            since = max(current.created, self._online_since or now, self._reoffer_floor)
            return since + OFFER_TIMEOUT
        return None

    def _next_deadline(self, now: float) -> float:
        if self.on_demand is not None and not self._demand and not self._attempts():
            # Idle on demand: nothing to time. Traffic, a signal or presence wakes us; a
            # hundred such peers must not wake the node every MAX_IDLE each.
            return math.inf
        times = [now + MAX_IDLE]
        times += [a.retire_at for a in self.retired if a.retire_at is not None]
        due = self._offer_due(now)
        if due is not None:
            times.append(due)
        if self._handshake_due is not None:
            times.append(self._handshake_due)
        idle = self._idle_due()
        if idle is not None:
            times.append(idle)
        deadline = min(times)
        if deadline <= now:
            # Something asked to be woken in the past and was not moved by running it: do
            # not spin on it (count it for the debug view).
            self.stale_wakeups += 1
            deadline = now + 0.01
        return deadline

    # -- attempts ---------------------------------------------------------------------------

    def _new_attempt(self, controlling: bool) -> Attempt:
        # follow_rounds: what a later round finds (a regather after a network change, a new
        # TURN allocation) is trickled into the running attempt too.
        session = self.ctx.transport.open_session(
            self.name, controlling=controlling, lite=self.ctx.lite, follow_rounds=True
        )
        attempt = Attempt(session, controlling, trio.current_time())
        session.on_event = partial(self._on_session_event, attempt)
        return attempt

    def _drop(self, attempt: Attempt | None) -> None:
        if attempt is None:
            return
        if attempt is self.current:
            self.current = None
        if attempt is not self.active:
            attempt.session.close()

    def _retire(self, attempt: Attempt) -> None:
        attempt.retire_at = trio.current_time() + RETIRE_AFTER
        attempt.session.follow_rounds = False  # it only answers the peer's checks now
        self.retired.append(attempt)
        while len(self.retired) > MAX_RETIRED:
            self.retired.pop(0).session.close()

    @staticmethod
    def _description(attempt: Attempt, candidates: list[Candidate], eoc: bool) -> str:
        desc = attempt.session.local_description()
        return IceDescription(
            desc.ufrag,
            desc.pwd,
            tuple(candidates),
            lite=desc.lite,
            options=desc.options,
            end_of_candidates=eoc,
        ).to_text()

    def _offer(self, reason: str) -> None:
        """Start a new attempt as the controlling side: an Offer, or a Restart when a path
        exists (make-before-break)."""
        if self._closed:
            return
        client = self.ctx.signaling
        now = trio.current_time()
        if client is not None:
            negotiation = client.core.negotiations.get(self.name)
            if negotiation is not None and negotiation.state is NegotiationState.ANSWERING:
                # The peer's offer was accepted by the signaling core and waits in the signal
                # channel: answering it is our next move, not a competing offer.
                log.debug("offer skipped: the peer's offer is pending", peer=self.name)
                self._next_try = now + RETRY_DELAYS[0]
                return
        self._last_restart = now
        self._drop(self.current)
        attempt = self._new_attempt(controlling=True)
        self.current = attempt
        if client is None:
            return  # the signaling client is being replaced; offered again on its return
        desc = attempt.session.local_description()
        attempt.signalled.update(desc.candidates)
        attempt.eoc_sent = desc.end_of_candidates
        try:
            attempt.session_id = client.offer(
                self.name, self._with_features(desc.to_text()), restart=self.active is not None
            )
        except (KeyError, ProtocolError) as exc:
            log.warning("cannot offer", peer=self.name, error=str(exc))
            return
        if self.active is not None:
            self.counters.ice_restarts += 1
            self._path_reason = f"restart: {reason}"
        log.info(
            "offer",
            peer=self.name,
            reason=reason,
            restart=self.active is not None,
            candidates=len(desc.candidates),
        )
        self.wake()

    def restart(self, reason: str) -> None:
        """An ICE restart from our side (network change, consent lost)."""
        self._pending_restart = self._restart_at = None
        now = trio.current_time()
        if now - self._last_restart < MIN_RESTART_INTERVAL and self.current is not None:
            return
        self._offer(reason)

    def _regather_then_restart(self, reason: str) -> None:
        """Consent trouble: restart once the node has gathered again (module docstring), or
        at once if its candidates are fresh."""
        if self.ctx.regather(reason):
            self._pending_restart = reason
            self._restart_at = trio.current_time() + REGATHER_WAIT
            self.wake()
        else:
            self.restart(reason)

    def round_done(self) -> None:
        """The node finished a gathering round: a restart waiting for it goes ahead."""
        reason = self._pending_restart
        if reason is not None:
            self.restart(reason)

    def signaling_replaced(self) -> None:
        """The signaling client was replaced (config reload): offers in flight are gone."""
        if self.active is None:
            self._offer("signaling reconnected")

    # -- local candidates -------------------------------------------------------------------

    def _trickle(self, attempt: Attempt) -> None:
        """Signal candidates the peer has not seen yet, once it may receive them."""
        client = self.ctx.signaling
        if client is None or attempt.session_id is None:
            return
        if attempt.controlling and not attempt.remote_set:
            return  # the offer may still wait for presence: trickle after the answer
        desc = attempt.session.local_description()
        new = [c for c in desc.candidates if c not in attempt.signalled]
        eoc = desc.end_of_candidates
        if not new and (not eoc or attempt.eoc_sent):
            return
        text = self._description(attempt, new, eoc)
        try:
            sent = client.send_to(self.name, Candidates(attempt.session_id, text))
        except (KeyError, ProtocolError) as exc:
            log.debug(
                "cannot trickle",
                peer=self.name,
                session=f"{attempt.session_id:016x}",
                error=str(exc),
            )
            return
        log.debug(
            "trickle",
            peer=self.name,
            session=f"{attempt.session_id:016x}",
            candidates=len(new),
            end=eoc,
            sent=sent,
        )
        if sent:
            attempt.signalled.update(new)
            attempt.eoc_sent = eoc

    # -- signaling in -----------------------------------------------------------------------

    def on_presence(self, online: bool) -> None:
        if online and not self.online:
            self._online_since = trio.current_time()
            # Candidates gathered while the rendezvous was out of reach could not be
            # trickled: they go now (nothing if every one was signalled).
            for attempt in (self.current, self.active):
                if attempt is not None:
                    self._trickle(attempt)
        self.online = online
        self.wake()

    def on_signal(self, received: SignalReceived) -> None:
        if self._closed:
            # We said goodbye (the node is stopping, or the peer was removed): an offer that
            # comes now — the peer's retry after our goodbye — must not open a session that
            # dies with us unannounced, leaving the peer a WireGuard session without keys on
            # our side and a path that only consent can tell is dead.
            log.debug("signal after goodbye ignored", peer=self.name)
            return
        msg = received.message
        if isinstance(msg, Offer | Restart):
            self._on_offer(msg, received.superseded)
        elif isinstance(msg, Answer):
            current = self.current
            if current is None or current.session_id != msg.session or current.remote_set:
                log.debug("stale answer", peer=self.name)
                return
            if self._apply_remote(current, msg.description):
                self._learn_features(msg.description)
                log.info("answer", peer=self.name, session=f"{msg.session:016x}")
                self._trickle(current)
        elif isinstance(msg, Candidates):
            for attempt in (self.current, self.active):
                if attempt is not None and attempt.session_id == msg.session:
                    self._apply_remote(attempt, msg.fragment)
                    break
        elif isinstance(msg, Bye):
            self._on_bye(msg)
        self.wake()

    def _on_offer(self, msg: Offer | Restart, superseded: int | None) -> None:
        client = self.ctx.signaling
        if not self._demand:  # the peer wants the tunnel: it counts as demand
            self._demand = True
            self._demand_since = trio.current_time()
        current = self.current
        if current is not None and (
            superseded is None or current.session_id == superseded or not current.remote_set
        ):
            self._drop(current)  # the peer's offer wins (glare) or replaces ours
        attempt = self._new_attempt(controlling=False)
        attempt.session_id = msg.session
        if client is None or not self._apply_remote(attempt, msg.description):
            self._drop(attempt)
            return
        self._learn_features(msg.description)
        desc = attempt.session.local_description()
        try:
            client.send_to(self.name, Answer(msg.session, self._with_features(desc.to_text())))
        except (KeyError, ProtocolError) as exc:
            # The negotiation moved on (an offer of ours replaced this one): not an error.
            log.info("offer not answered", peer=self.name, reason=str(exc))
            self._drop(attempt)
            return
        self.current = attempt
        attempt.signalled.update(desc.candidates)
        attempt.eoc_sent = desc.end_of_candidates
        if isinstance(msg, Restart):
            self.counters.restarts_answered += 1
            self._path_reason = "restart by the peer"
        log.info(
            "answered",
            peer=self.name,
            restart=isinstance(msg, Restart),
            session=f"{msg.session:016x}",
            candidates=len(desc.candidates),
        )

    def _on_bye(self, msg: Bye) -> None:
        log.info("peer said bye", peer=self.name, reason=msg.reason or "-")
        # Its keys for us went with it (the goodbye is sealed, so it is the peer's word): a
        # session kept here would carry our next packets to keys it no longer has until
        # WireGuard's 15 s timer started a handshake.
        self.ctx.tunnel.forget_sessions(self.wg)
        active = self.active
        if active is not None and msg.session in (0, active.session_id):
            self.active = None
            active.session.close()
            self._clear_path("the peer said bye")
        current = self.current
        if current is not None and msg.session in (0, current.session_id):
            self._drop(current)
        self._next_try = trio.current_time() + RETRY_DELAYS[0]
        if self.on_demand is not None and self.active is None and self.current is None:
            # On demand, the peer's goodbye (its idle timeout, or it stopped) ends our demand
            # too: the next packet for it starts a new connection.
            self._demand = False

    def _with_features(self, description: str) -> str:
        """Our offer or answer with the data-plane features we offer this peer
        (:mod:`p2ptun.signal.features`)."""
        offered = [PARTIAL_CHECKSUMS] if self.ctx.tunnel.accepts_partial_checksums else []
        if self.on_demand is not None:
            offered.append(ON_DEMAND)
        return with_features(description, offered)

    def _learn_features(self, description: str) -> None:
        """What the peer's offer or answer says it does for our packets, and whether it
        closes idle tunnels."""
        features = features_of(description)
        self._peer_on_demand = ON_DEMAND in features
        partial = PARTIAL_CHECKSUMS in features
        tunnel = self.ctx.tunnel
        if partial != tunnel.partial_checksums(self.wg):
            tunnel.set_partial_checksums(self.wg, partial)
            on = tunnel.partial_checksums(self.wg)
            log.debug("partial inner checksums", peer=self.name, on=on)

    def _apply_remote(self, attempt: Attempt, text: str) -> bool:
        """Feed a remote description or trickled fragment to ``attempt``'s session."""
        try:
            desc = IceDescription.parse(text)
        except DecodeError as exc:
            log.warning("bad ICE description from peer", peer=self.name, error=str(exc))
            return False
        session = attempt.session
        if not session.set_remote_credentials(desc.credentials, lite=desc.lite):
            log.debug("candidates for another ICE generation", peer=self.name)
            return False
        attempt.remote_set = True
        added = sum(session.add_remote_candidate(cand) for cand in desc.candidates)
        if desc.end_of_candidates:
            session.set_remote_end_of_candidates()
        log.debug(
            "remote candidates",
            peer=self.name,
            session=None if attempt.session_id is None else f"{attempt.session_id:016x}",
            added=added,
            given=len(desc.candidates),
            end=desc.end_of_candidates,
        )
        return True

    # -- the session's events ---------------------------------------------------------------

    def _on_session_event(
        self, attempt: Attempt, _session: IceSession, event: SessionEvent
    ) -> None:
        if attempt is not self.current and attempt is not self.active:
            return  # a retired (or not yet adopted) attempt: it only answers checks now
        if isinstance(event, LocalCandidate | LocalCandidatesDone):
            self._trickle(attempt)
            return
        if isinstance(event, PairSelected):
            if attempt is not self.active:
                old = self.active
                self.active = attempt
                if self.current is attempt:
                    self.current = None
                if old is not None:
                    self._retire(old)
            self._failures = 0
            self._use_pair(event.pair, event.previous)
        elif isinstance(event, ConsentExpired):
            if attempt is self.active:
                self.counters.consent_expired += 1
                log.warning("consent expired, path closed", peer=self.name)
                self.active = None
                attempt.session.close()
                self._clear_path("consent expired")
                self._regather_then_restart("consent expired")
        elif isinstance(event, ConsentSuspect):
            now = trio.current_time()
            log.info("consent suspect", peer=self.name, missed=event.missed)
            if attempt is self.active and now - self._last_suspect_restart > SUSPECT_HOLDOFF:
                # Also when the peer's restart runs already: we may have answered it with
                # candidates that are stale now.
                self._last_suspect_restart = now
                self._regather_then_restart("consent suspect")
        elif isinstance(event, ConsentLost):
            if attempt is self.active:
                self.counters.consent_lost += 1
                self._path_lost()
        elif isinstance(event, ConsentRestored):
            log.info("consent restored", peer=self.name)
        elif isinstance(event, StateChanged):
            log.debug("ice state", peer=self.name, state=event.state.value)
            if event.state is AgentState.FAILED and attempt is self.current:
                self.counters.ice_failures += 1
                self._failures += 1
                delay = RETRY_DELAYS[min(self._failures - 1, len(RETRY_DELAYS) - 1)]
                log.info("ICE failed", peer=self.name, retry_in=f"{delay:g}")
                self._drop(attempt)
                # With no path left this retries at _next_try; a failed restart beside a
                # working path just ends (consent on that path decides what comes next).
                self._next_try = trio.current_time() + delay
        elif isinstance(event, BetterPairAvailable):
            log.info(
                "direct pair available",
                peer=self.name,
                pair=f"{_cand(event.pair.local)} -> {_cand(event.pair.remote)}",
            )
        elif isinstance(event, RoleChanged):
            log.info("ICE role changed", peer=self.name, controlling=event.controlling)
        self.wake()
        self.ctx.peer_changed()

    # -- the data path ------------------------------------------------------------------------

    def _use_pair(self, pair: SelectedPair, previous: SelectedPair | None) -> None:
        tunnel = self.ctx.tunnel
        remote = pair.remote.address
        if pair.via_relay:
            relay = self.ctx.transport.relay_for(pair.base)
            if relay is None:
                log.warning("selected relay is gone", peer=self.name)
                self._clear_path("the relay is gone")
                return
            # The session bound a channel to the remote: the data goes as ChannelData.
            tunnel.set_sender(self.wg, partial(relay.send_batch, remote), remote)
        else:
            # From the pair's local base: the address the peer checked, on a multi-homed host
            # the uplink the pair goes through (source policy routing).
            tunnel.set_endpoint(self.wg, remote, pair.base[0])
        if self.path is None or self.path.relayed != pair.relayed:
            self.path_since = trio.current_time()
        self._record_path(pair)
        self.path = pair
        self.wg.path_silence = max(PATH_SILENCE_MIN, PATH_SILENCE_RTTS * (pair.rtt or 0.0))
        now = trio.current_time()
        active = self.active
        if self.wg.has_session(now):
            self.wg.send_keepalive(now)  # nothing to re-key: just use the new path
        elif active is not None and active.agent.controlling:
            # One side starts the handshake: two crossing initiations would each replace the
            # other's handshake state and both would wait for the 5 s retransmission. The
            # controlled side selected first (on the nominating check), so it can answer.
            self.wg.initiate_handshake(now)
        else:
            # ... unless the controlling side still has a session with a previous process of
            # ours (we restarted without a goodbye: a crash, a power cut). It then only sends
            # a keepalive on keys we no longer have and would start a handshake after 15 s of
            # our silence (WireGuard §6.4); we start one ourselves if none came in time.
            wait = max(HANDSHAKE_WAIT_MIN, HANDSHAKE_WAIT_RTTS * (pair.rtt or 0.0))
            self._handshake_due = now + wait
        tunnel.flush(self.wg)
        self.counters.path_changes += 1
        self._path_ready.set()
        self._path_ready = trio.Event()
        log.info(
            "path selected" if previous is None else "path changed",
            peer=self.name,
            path="relay" if pair.relayed else "direct",
            local=_cand(pair.local),
            remote=_cand(pair.remote),
        )

    def _record_path(self, pair: SelectedPair | None, reason: str | None = None) -> None:
        """Remember a change of the data path to ``pair`` (None: no path) and its reason:
        the one given, the cause we noted (a restart, lost consent), or what the change
        itself says (the first path, an upgrade to direct)."""
        old = self.path
        kind = None if pair is None else ("relay" if pair.relayed else "direct")
        if reason is None:
            reason = self._path_reason
        self._path_reason = None
        if reason is None:
            if old is None:
                reason = "selected"
            elif old.relayed and kind == "direct":
                reason = "upgrade to direct"
            elif not old.relayed and kind == "relay":
                reason = "moved to the relay"
            else:
                reason = "better pair"
        self.history.append(
            PathChange(
                trio.current_time(),
                kind,
                reason,
                None if pair is None else format_address(pair.local.address),
                None if pair is None else format_address(pair.remote.address),
            )
        )

    def _clear_path(self, reason: str = "closed") -> None:
        self.wg.path_silence = None
        self._handshake_due = None
        if self.path is not None:
            self._record_path(None, reason)
            self.path = None
            self.path_since = None
            self.ctx.tunnel.set_endpoint(self.wg, None)

    # -- fast failure detection ---------------------------------------------------------------

    def path_quiet(self, unanswered: bool) -> None:
        """The data path saw the selected path go quiet (:class:`~p2ptun.wireguard.PathQuiet`):
        probe it now with a burst of consent checks. If they go unanswered the session reports
        :class:`~p2ptun.ice.ConsentLost` within a fraction of a second (:meth:`_path_lost`);
        an answer just means the traffic paused. A keepalive goes with the probe, so that a
        peer that can reach our new mapping follows us at once."""
        active = self.active
        if active is None or self.path is None:
            return
        # Our NAT may have given us a new mapping that the peer does not know: a keepalive
        # from it lets the peer roam to it (WireGuard's rule, through its relay too) in one
        # trip, where the peer's NAT lets the new mapping in — before any probe has ended.
        # One small packet per quiet spell, which only follows traffic.
        rx = self.wg.rx_bytes
        self.wg.send_keepalive(trio.current_time())
        self.ctx.tunnel.flush(self.wg)
        # Data that stopped arriving is a weaker sign than data left unanswered: its probe is
        # optional, one per holdoff (ConsentConfig.probe_holdoff).
        if active.session.probe(urgent=unanswered):
            self._probe_rx = rx
            log.debug("path quiet, probing", peer=self.name, unanswered=unanswered)

    def relayed_roam(self, address: Address, relay: TurnRelay) -> None:
        """The peer's authenticated packets reach ``relay`` (ours) from ``address``, which is
        not where our path to it goes: its NAT gave it a new mapping (a symmetric NAT forgot
        it), or it failed over to a pair through our relay (its own relay died with its
        mapping). WireGuard's roaming, through the relay: the relay sends to that address
        from now on — the peer's NAT opened that mapping towards our relay, so it lets the
        answers in — and ICE restarts to follow, while the data already flows."""
        if self.path is None or not relay.allocated:
            return
        relay.bind_channel(address)  # Send indications until the channel is bound
        self.ctx.tunnel.set_sender(self.wg, partial(relay.send_batch, address), address)
        log.info(
            "peer roamed (relayed)",
            peer=self.name,
            old=format_address(self.path.remote.address),
            new=format_address(address),
        )
        self._regather_then_restart("the peer moved")

    def _path_lost(self) -> None:
        """The selected path carries nothing (its probe went unanswered): move the data to the
        standby relayed pair if the agent keeps one (no gathering, no signaling: within the
        detection interval), and find the best path again — gather (our NAT may have moved)
        and restart ICE, make-before-break."""
        active = self.active
        if self.wg.rx_bytes > self._probe_rx:
            # The peer's authenticated packets arrived during the probe: it is reachable, from
            # another address than the ICE pair's (the data path roamed to it). Keep the data
            # where it is; ICE restarts to follow.
            log.info("probe unanswered but the peer reached us: following it", peer=self.name)
            self._regather_then_restart("the peer moved")
            return
        standby = None if active is None else active.agent.standby_pair(trio.current_time())
        if standby is not None:
            log.warning("path lost: probe unanswered, data moved to the relay", peer=self.name)
            self._path_reason = "consent lost: moved to the standby"
            self._use_pair(standby, self.path)
        else:
            log.warning("path lost: probe unanswered", peer=self.name)
        self._regather_then_restart("path lost")

    # -- status and ping --------------------------------------------------------------------

    def state(self, now: float) -> str:
        """``connected`` while a selected pair has ICE consent (the WireGuard session on it
        is made on demand: an idle tunnel lets its keys expire and re-handshakes in one round
        trip), ``disconnected`` when the peer is offline and no path remains, else
        ``connecting``."""
        active = self.active
        if self.path is not None and active is not None and active.agent.can_send(now):
            return "connected"
        if self.path is None and (self.online is False or not self._demand):
            return "disconnected"  # offline, or idle on demand (``reason`` says which)
        return "connecting"

    def reason(self) -> PathReason:
        """Why the path is what it is (:mod:`p2ptun.ice.pathreason`), from the candidates and
        check list of the attempt that carries the data (or the one trying to)."""
        attempt = self.active or self.current
        selected = None if self.path is None else (self.path.local, self.path.remote)
        if attempt is None:
            return explain(PathFacts([], [], selected=selected, relay_owners=self.relay_owners))
        agent = attempt.agent
        pairs = [PairOutcome(p.local, p.remote, p.state.value, p.failure) for p in agent.checklist]
        facts = PathFacts(
            agent.local_candidates,
            agent.remote_candidates,
            pairs,
            selected,
            self.relay_owners,
            hard_nat=_hard_nat_text(agent),
        )
        return explain(facts)

    def _reason_text(self, reason: PathReason) -> str:
        if self.path is None and self.online is False:
            return "no path: peer offline"
        if self.path is None and not self._demand:
            return "idle: connects on demand"
        return reason.text

    def status(self, now: float) -> dict[str, Any]:
        """This peer's entry in the status object (docs/ARCHITECTURE.md §3), with the reason
        for its path (``reason``, ``reason_facts``) and how long it has been that
        (``path_since``, seconds)."""
        pair = self.path
        active = self.active
        last = self.wg.last_handshake
        rtt = self.ping_rtt if self.ping_rtt is not None else (pair.rtt if pair else None)
        consent = active.agent.consent_age(now) if active is not None and pair else None
        reason = self.reason()
        since = self.path_since
        return {
            "name": self.name,
            "state": self.state(now),
            "path": None if pair is None else ("relay" if pair.relayed else "direct"),
            "local_candidate": None if pair is None else _cand_json(pair.local),
            "remote_candidate": None if pair is None else _cand_json(pair.remote),
            "via": None if pair is None or pair.relayed else port_mapping_of(pair),
            "rtt_ms": None if rtt is None else round(rtt * 1000, 3),
            "rx_bytes": self.wg.rx_bytes,
            "tx_bytes": self.wg.tx_bytes,
            "last_handshake": None if last is None else round(now - last, 3),
            "consent_age": None if consent is None else round(consent, 3),
            "reason": self._reason_text(reason),
            "reason_facts": reason.as_json(),
            "path_since": None if since is None or pair is None else round(now - since, 3),
            "path_reason": self.history[-1].reason if self.history else None,
            "path_history": [
                {
                    "ago": round(now - c.at, 3),
                    "path": c.path,
                    "reason": c.reason,
                    "local": c.local,
                    "remote": c.remote,
                }
                for c in self.history
            ],
        }

    async def ping(self, timeout: float = 3.0) -> dict[str, Any]:
        """Probe the active pair (see the module docstring); the result for ``p2ptun ping``."""
        pair, active = self.path, self.active
        result: dict[str, Any] = {
            "peer": self.name,
            "path": None,
            "local_candidate": None,
            "remote_candidate": None,
            "rtt_ms": None,
        }
        if (pair is None or active is None) and self.on_demand is not None and not self._closed:
            # On demand, asking is demand: wait for the path within the timeout.
            self.demand("ping")
            with trio.move_on_after(timeout):
                while self.path is None or self.active is None:
                    await self._path_ready.wait()
            pair, active = self.path, self.active
        if pair is None or active is None:
            result["error"] = "no path to the peer yet"
            return result
        result.update(
            path="relay" if pair.relayed else "direct",
            local_candidate=_cand_json(pair.local),
            remote_candidate=_cand_json(pair.remote),
        )
        if active.agent.remote_credentials is None:
            result["error"] = "no remote credentials"
            return result
        rtt = await active.session.ping(timeout)
        if rtt is None:
            result["error"] = f"no answer within {timeout:g} s"
            return result
        self.ping_rtt = rtt
        result["rtt_ms"] = round(rtt * 1000, 3)
        return result


def _hard_nat_text(agent: IceAgent) -> str | None:
    """What the agent's hard-NAT probing did, for the path's reason (None: nothing)."""
    probing = agent.hard_nat
    if probing is None or probing.started_at is None or probing.technique is None:
        return None
    technique = "port prediction" if probing.technique.value == "prediction" else "birthday probes"
    still = ", still probing" if probing.pending else ""
    return f"{technique} tried ({probing.sent} probes{still})"


def _cand(c: Candidate) -> str:
    return f"{c.type.value} {format_address(c.address)}"


_MAPPING_NAMES = {"pcp": "PCP", "natpmp": "NAT-PMP", "upnp": "UPnP"}


def port_mapping_of(pair: SelectedPair) -> str | None:
    """ "port mapping (PCP on 10.0.1.1)" when a direct pair runs through a gateway's port
    mapping — ours (the local candidate the peer saw is our mapped one) or the peer's (its
    mapped candidate, flagged ``mapped <protocol>@<gateway>`` by the gatherer) — else None."""
    for cand, whose in ((pair.local, ""), (pair.remote, ", the peer's")):
        for name, value in cand.extensions:
            if name == "mapped":
                protocol, _, gateway = value.partition("@")
                shown = _MAPPING_NAMES.get(protocol, protocol)
                return f"port mapping ({shown} on {gateway or '?'}{whose})"
    return None


def _cand_json(c: Candidate) -> dict[str, str]:
    return {"type": c.type.value, "address": format_address(c.address)}

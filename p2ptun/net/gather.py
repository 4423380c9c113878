"""Candidate gathering over the node's shared sockets (RFC 8445 §5.1.1, trickled per RFC 8838).

One :class:`Gatherer` per node gathers the local candidates every ICE agent of the node uses:
the sockets are shared (docs/ARCHITECTURE.md §2), so a server-reflexive address or a TURN
allocation belongs to the node, not to one peer.

- **Host candidates** (§5.1.1.1): the addresses the host reports
  (:meth:`p2ptun.net.ports.Host.local_addresses`, netlink on a real machine) — not loopback,
  not on a down interface, not on our own TUN interface (``exclude``), IPv6 link-local only
  when configured — of the families we have a socket for, each with the port of that
  family's shared socket. Local preferences come from
  :func:`p2ptun.ice.candidate.assign_local_preferences` (RFC 8421 interleaving), the address
  the host routes towards the STUN and TURN servers first in its family: the uplink the
  host's default route uses is the one it prefers (after the default route moved — Wi-Fi to
  Ethernet — the next round, and the ICE restart with it, prefer the new one).
- **Server-reflexive candidates** (§5.1.1.2): a STUN Binding request to each configured STUN
  server from each host address of the server's family, sent from the shared socket with that
  address as the source (``IP_PKTINFO``) as a client transaction (RFC 8489 §6.2.1
  retransmissions) whose responses the :class:`~p2ptun.net.mux.UdpMux` routes back by
  transaction id; each answer is a candidate whose base is that address. On a multi-homed
  host with source policy routing each uplink's NAT maps us: the peer learns an address
  through every uplink. The query from the address the host routes towards the server
  always runs; the others are waited for at most :data:`EXTRA_BASE_WAIT` after it ended (an
  address with no way to the server does not hold the round up). Without ``IP_PKTINFO``
  only that routed address asks. Each query is bounded by ``stun_timeout``: an unresponsive
  server costs that much and nothing else. A UDP TURN allocation's XOR-MAPPED-ADDRESS is a
  server-reflexive candidate too (the same one when the STUN and TURN server share an
  address: it is given once).
- **Relayed candidates** (§5.1.1.2): one TURN allocation per configured TURN server
  (:class:`~p2ptun.net.turn_relay.TurnRelay`; UDP through the shared socket, TCP and TLS on
  their own connections), with the configured credentials or ones the ``credentials`` source
  issues (the rendezvous, docs/ARCHITECTURE.md §2).

TURN allocations belong to the gatherer, not to a round. Each configured server has a slot
whose task (in the gatherer's nursery, :meth:`Gatherer.run`) allocates once a round first asks
for it and then keeps an allocation: one attempt is bounded by ``turn_timeout``; a failed
attempt or a lost allocation is tried again after ``relay_retry`` (2, 5, 10, 30, 60 s, the
last repeating); an allocation made with issued credentials is released and made again at
80 % of their lifetime (servers check the credentials' expiry on every authenticated request,
refreshes included); and a UDP allocation whose path changed — another local address towards
the server, or another NAT mapping seen by the STUN servers — is abandoned (its 5-tuple is gone
at the server) and made again. A round takes the allocations that are live, waits for those
being made, and reports the others' last failure. ``on_relays_changed`` is called when an
allocation appears or ends while no round waits for it: the caller starts a new round then.

Keeping the mappings (``stun_keepalive``, 25 s for a node): between rounds, every STUN server
that answered the latest round gets one Binding request per interval from the shared socket,
from each base it answered.
It keeps the NAT's mapping towards the server open (NATs forget idle UDP mappings after 30 s
or more, RFC 4787 REQ-5 asks for two minutes), the way RFC 8445 §11 keeps a pair's, and it
notices when our public address moved while the node was idle — a NAT that renumbered or
rebound: then the UDP allocations made through the old mapping are replaced and
``on_mapping_moved()`` is called (the node regathers and restarts ICE before traffic needs the
path). One request per server and base per interval: a NATed node's only idle cost besides
consent.

Trickle: :meth:`Gatherer.gather` calls ``on_candidate`` with each candidate the moment it is
known (host candidates at once, then reflexive and relayed ones as their servers answer) and
returns — end of gathering — when every query finished or timed out, or ``round_timeout``
after the start, with the candidates and the failures (one line each) of the round.

Priorities: srflx candidates take their base's local preference (§5.1.2.1). Relayed ones are
ranked below that by transport and server so that every relayed candidate gets a distinct
priority: local preference ``65535 - (8192·transport + 256·server + address rank)`` with
transport 0 for UDP, 1 for TCP, 2 for TLS (relaying over a stream is the last resort).
"""

from __future__ import annotations

import enum
import ipaddress
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from socket import AF_INET
from typing import Literal

import trio

from p2ptun.addr import Address, format_address
from p2ptun.config import IceConfig, TurnServerConfig
from p2ptun.errors import DecodeError, RuntimeFailure
from p2ptun.ice.candidate import (
    MAX_LOCAL_PREFERENCE,
    Candidate,
    CandidateType,
    Transport,
    assign_local_preferences,
    compute_foundation,
    make_host_candidate,
    make_relay_candidate,
    make_srflx_candidate,
)
from p2ptun.log import get_logger
from p2ptun.net.mux import UdpMux, normalize_address
from p2ptun.net.portmap import PortMapper
from p2ptun.net.ports import Host
from p2ptun.net.streams import resolve
from p2ptun.net.turn_relay import RelayDataHandler, TurnRelay, WireGuardReceiver
from p2ptun.net.udp import family_of
from p2ptun.stun import ClientTransaction, Message, Method, TransactionOutcome
from p2ptun.turn.client import AllocationLost, TurnEvent

log = get_logger("net.gather")

#: Waits before allocating again after a failed attempt or a lost allocation (the last
#: repeats).
RELAY_RETRY = (2.0, 5.0, 10.0, 30.0, 60.0)
#: An allocation made with issued credentials is made again after this fraction of their
#: lifetime.
RENEW_AT = 0.8
#: Issued credentials are taken to live at least this long (a shorter lifetime would renew
#: the allocation over and over).
MIN_CREDENTIAL_LIFETIME = 60.0
#: The node's STUN give-up: end-of-candidates comes sooner when UDP is blocked.
NODE_STUN_TIMEOUT = 2.5
#: The node's gathering rounds end (end-of-candidates) at most this long after they start.
NODE_ROUND_TIMEOUT = 3.0
#: The node's keepalive Binding to each STUN server (seconds apart, see the module).
NODE_STUN_KEEPALIVE = 25.0
#: Seconds a round waits for the Binding answers to the other host addresses once the one from
#: the address the host routes towards the server ended.
EXTRA_BASE_WAIT = 0.5
#: Server addresses remembered to find the routed host address (module docstring).
MAX_SERVER_ADDRESSES = 16

#: ``(STUN server, base IP)``: one server-reflexive mapping's key.
MappingKey = tuple[Address, str]


@dataclass(frozen=True)
class IssuedCredentials:
    """TURN credentials for a server configured without them."""

    username: str
    password: str
    #: Seconds the server accepts them from now (None: no expiry known).
    lifetime: float | None = None


#: ``credentials(server)``: the credentials for a TURN server configured without them
#: (rendezvous-issued, docs/ARCHITECTURE.md §2), or None if there are none; may raise
#: :class:`RuntimeFailure` with the reason.
CredentialSource = Callable[[TurnServerConfig], Awaitable[IssuedCredentials | None]]
#: ``list_addresses()``: the host addresses to use, most preferred first per family (tests
#: and special setups; default: the host's).
AddressLister = Callable[[], Awaitable[Sequence[str]]]

_TRANSPORT_RANK = {"udp": 0, "tcp": 1, "tls": 2}


@dataclass(frozen=True)
class GatherOptions:
    """What to gather. Server hosts may be DNS names; they are resolved per round."""

    stun: tuple[Address, ...] = ()
    turn: tuple[TurnServerConfig, ...] = ()
    #: Interfaces never used for host candidates (the node's TUN interface).
    exclude_interfaces: tuple[str, ...] = ()
    include_link_local: bool = False
    #: Bound on one STUN Binding query (retransmissions included).
    stun_timeout: float = 3.0
    #: Bound on one TURN allocation attempt (credentials, connect, 401 round, Allocate).
    turn_timeout: float = 10.0
    #: A round ends this long after it started at the latest (None: when every query ended);
    #: an allocation still being made goes on and comes in a later round.
    round_timeout: float | None = None
    #: Waits before allocating again (:data:`RELAY_RETRY`).
    relay_retry: tuple[float, ...] = RELAY_RETRY
    #: Lower bound on the lifetime of issued credentials (:data:`MIN_CREDENTIAL_LIFETIME`).
    min_credential_lifetime: float = MIN_CREDENTIAL_LIFETIME
    #: Seconds between keepalive Bindings to the STUN servers between rounds (None: none).
    stun_keepalive: float | None = None
    #: Map the IPv4 socket's port on the default gateway (:mod:`p2ptun.net.portmap`).
    port_mapping: bool = False

    @classmethod
    def from_config(cls, ice: IceConfig, tun_name: str | None = None) -> GatherOptions:
        """The node's options for its ``[ice]`` section; ``tun_name`` is excluded from host
        candidates. An ICE-lite node has host candidates only (RFC 8445 §2.5): no STUN, no
        TURN."""
        return cls(
            stun=() if ice.lite else ice.stun,
            turn=() if ice.lite else ice.turn,
            exclude_interfaces=(tun_name,) if tun_name else (),
            include_link_local=ice.ipv6_link_local,
            stun_timeout=NODE_STUN_TIMEOUT,
            round_timeout=NODE_ROUND_TIMEOUT,
            stun_keepalive=NODE_STUN_KEEPALIVE,
            port_mapping=ice.port_mapping and not ice.lite,
        )


@dataclass(frozen=True)
class GatherFailure:
    """A server that gave no candidate this round."""

    kind: Literal["stun", "turn", "host"]
    server: str
    reason: str


@dataclass
class GatherResult:
    """One gathering round: every candidate emitted, in order, and what failed."""

    candidates: list[Candidate] = field(default_factory=list)
    failures: list[GatherFailure] = field(default_factory=list)
    #: A STUN server maps us elsewhere than in the round before: our NAT rebound or changed
    #: its address, so whatever went through it (TCP connections too) is gone.
    mapping_moved: bool = False
    #: When a STUN server last confirmed the mapping that moved (see
    #: :attr:`Gatherer.old_mapping_seen_at`); -inf when none moved.
    old_mapping_seen_at: float = -math.inf


class _Round:
    """What one :meth:`Gatherer.gather` call collects while its queries run."""

    def __init__(self, on_candidate: Callable[[Candidate], None] | None) -> None:
        self.result = GatherResult()
        self._on_candidate = on_candidate
        self._srflx: set[tuple[Address, Address | None]] = set()
        #: What each STUN server (resolved) mapped each base we asked from to this round.
        self.mapped: dict[MappingKey, Address] = {}
        #: Queries still running (a STUN server as configured, a TURN slot), with the failure
        #: to report if the round ends before them.
        self.pending: dict[object, GatherFailure] = {}
        self.stun_done = trio.Event()

    def emit(self, candidate: Candidate) -> None:
        if candidate.type is CandidateType.SRFLX:
            key = (candidate.address, candidate.related)
            if key in self._srflx:
                return  # the same mapping from a STUN and a TURN server
            self._srflx.add(key)
        self.result.candidates.append(candidate)
        if self._on_candidate is not None:
            self._on_candidate(candidate)

    def done(self, query: object, failure: GatherFailure | None = None) -> None:
        """``query`` ended (with ``failure``, or with its candidates emitted)."""
        self.pending.pop(query, None)
        if failure is not None:
            self.result.failures.append(failure)


class SlotState(enum.Enum):
    """Where one configured TURN server's allocation stands."""

    IDLE = "idle"
    """No round asked for it yet."""
    ALLOCATING = "allocating"
    ALLOCATED = "allocated"
    WAITING = "waiting"
    """The last attempt failed (or the allocation was lost): trying again after a while."""
    CLOSED = "closed"
    """The gatherer stopped."""


@dataclass(frozen=True)
class RelayStatus:
    """One configured TURN server as :meth:`Gatherer.relay_status` reports it."""

    url: str
    state: SlotState
    #: The live allocation, if any.
    relay: TurnRelay | None
    #: Why the last attempt failed or the last allocation was lost.
    failure: str | None


class _RelaySlot:
    """One configured TURN server: its allocation, kept by :meth:`Gatherer._supervise`."""

    def __init__(self, index: int, config: TurnServerConfig) -> None:
        self.index = index
        self.config = config
        self.state = SlotState.IDLE
        self.relay: TurnRelay | None = None
        #: Why the last attempt failed or the last allocation was lost.
        self.failure: str | None = None
        self.attempts = 0
        self.wanted = trio.Event()
        self.changed = trio.Event()
        #: Rounds waiting for this slot right now (they take a new allocation themselves).
        self.waiting_rounds = 0
        #: The allocation was abandoned by a round that waits for the next one: its end is
        #: not news.
        self.quiet_end = False

    def set_state(self, state: SlotState) -> None:
        self.state = state
        changed, self.changed = self.changed, trio.Event()
        changed.set()

    @property
    def live(self) -> TurnRelay | None:
        relay = self.relay
        if self.state is SlotState.ALLOCATED and relay is not None and relay.allocated:
            return relay
        return None


class Gatherer:
    """Gathers the node's candidates over the shared sockets of ``mux`` (module docstring).

    Run :meth:`run` in a nursery (``await nursery.start(gatherer.run)``) — it holds the TURN
    allocations — and call :meth:`gather` for each round. Names are resolved, addresses
    listed and TURN streams connected through ``host``. ``on_relay_data``,
    ``relayed_wireguard`` and ``after_relay_batch`` are given to every relay (see
    :class:`~p2ptun.net.turn_relay.TurnRelay`); ``on_relays_changed()`` is called when an
    allocation appears or ends outside a round, ``on_mapping_moved()`` when a keepalive
    Binding found us mapped elsewhere (module docstring). The TURN servers are those of
    ``options`` at construction.
    """

    def __init__(
        self,
        mux: UdpMux,
        options: GatherOptions,
        *,
        host: Host,
        credentials: CredentialSource | None = None,
        list_addresses: AddressLister | None = None,
        on_relay_data: RelayDataHandler | None = None,
        relayed_wireguard: WireGuardReceiver | None = None,
        after_relay_batch: Callable[[], None] | None = None,
        on_relays_changed: Callable[[], None] | None = None,
        on_mapping_moved: Callable[[], None] | None = None,
    ) -> None:
        self.mux = mux
        self.options = options
        self.host = host
        self._credentials = credentials
        self._random = host.random_bytes
        self._list_addresses = list_addresses
        self.on_relay_data = on_relay_data
        self.relayed_wireguard = relayed_wireguard
        self.after_relay_batch = after_relay_batch
        self.on_relays_changed = on_relays_changed
        self.on_mapping_moved = on_mapping_moved
        self._nursery: trio.Nursery | None = None
        self._slots = [_RelaySlot(i, config) for i, config in enumerate(options.turn)]
        self._closing = False
        #: The host addresses of the latest round (routed first) and their local preferences.
        self._addresses: list[str] = []
        self._preferences: dict[str, int] = {}
        #: What each STUN server mapped each base to in the latest round that heard from it.
        self._mapped: dict[MappingKey, Address] = {}
        #: Server addresses (config literals, then as resolved) in the order they were
        #: configured: the host address routed towards them is preferred.
        self._server_ips: list[str] = []
        for server_host in [h for h, _ in options.stun] + [t.host for t in options.turn]:
            self._remember_server(server_host)
        #: When the mappings were last seen (a round's end or a keepalive).
        self._mapped_at = -math.inf
        #: When a STUN server last answered with the mapping we know (a round or a keepalive
        #: that confirmed it). When the mapping moves, :attr:`old_mapping_seen_at` keeps the
        #: previous value: whatever connection was made before it went through the old
        #: mapping and is dead, one made after may have gone through the new one.
        self.mapping_confirmed_at = -math.inf
        self.old_mapping_seen_at = -math.inf
        self.rounds = 0
        #: The port mapping on the default gateway (``options.port_mapping``), if any.
        self.port_mapper: PortMapper | None = None
        ipv4_port = mux.port_for("0.0.0.0")
        if options.port_mapping and ipv4_port is not None:
            self.port_mapper = PortMapper(host, ipv4_port, on_change=self._relays_changed)
        #: Keepalive Bindings sent, and how many found a moved mapping.
        self.keepalives = 0
        self.keepalive_moves = 0

    # -- queries ---------------------------------------------------------------------------------

    @property
    def relays(self) -> list[TurnRelay]:
        """The live TURN allocations."""
        return [relay for slot in self._slots if (relay := slot.live) is not None]

    def relay_for(self, relayed: Address) -> TurnRelay | None:
        """The live relay whose relayed address is ``relayed``."""
        for relay in self.relays:
            if relay.client.relayed == relayed:
                return relay
        return None

    def relay_status(self) -> list[RelayStatus]:
        """Where each configured TURN server's allocation stands, in configuration order."""
        return [RelayStatus(s.config.url, s.state, s.live, s.failure) for s in self._slots]

    # -- lifetime --------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the TURN allocations, until cancelled (then they are released without waiting
        for the servers; :meth:`aclose` first releases them gracefully)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self.port_mapper is not None:
                    await nursery.start(self.port_mapper.run)
                for slot in self._slots:
                    nursery.start_soon(self._supervise, slot)
                if self.options.stun_keepalive is not None and self.options.stun:
                    nursery.start_soon(self._keep_mappings, self.options.stun_keepalive)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            for slot in self._slots:
                slot.relay = None
                slot.set_state(SlotState.CLOSED)

    async def aclose(self) -> None:
        """Deallocate every TURN allocation (each bounded by the relay's close timeout) and
        make no new ones: the node is stopping."""
        self._closing = True
        relays = [slot.relay for slot in self._slots if slot.relay is not None]
        async with trio.open_nursery() as nursery:
            for relay in relays:
                nursery.start_soon(relay.aclose)
            if self.port_mapper is not None:
                nursery.start_soon(self.port_mapper.aclose)

    # -- one round -------------------------------------------------------------------------------

    async def gather(self, on_candidate: Callable[[Candidate], None] | None = None) -> GatherResult:
        """Gather once: host candidates at once, then srflx and relayed candidates as their
        servers answer (each query bounded, the whole by ``round_timeout``); returns when all
        finished. Needs :meth:`run`."""
        if self._nursery is None:
            raise RuntimeError("Gatherer.gather() needs Gatherer.run() running")
        self.rounds += 1
        rnd = _Round(on_candidate)
        self.mux.invalidate_routes()
        addresses = self._routed_first(await self._host_addresses(rnd.result))
        self._addresses = addresses
        self._preferences = assign_local_preferences(addresses) if addresses else {}
        for host in addresses:
            port = self.mux.port_for(host)
            if port is not None:
                rnd.emit(make_host_candidate((host, port), self._preferences[host]))
        self._check_relay_paths()
        timeout = self.options.round_timeout
        deadline = math.inf if timeout is None else trio.current_time() + timeout

        async def stun_queries() -> None:
            async with trio.open_nursery() as nursery:
                for server in self.options.stun:
                    shown = f"{server[0]}:{server[1]}"
                    rnd.pending[server] = GatherFailure(
                        "stun", shown, f"no answer from STUN server {shown} within the round"
                    )
                    nursery.start_soon(self._srflx, server, rnd)
            rnd.stun_done.set()

        with trio.move_on_at(deadline):
            async with trio.open_nursery() as mapping:
                if self.port_mapper is not None:
                    # Taken if it comes while the servers answer; never waited for beyond
                    # them (most gateways say nothing): a later mapping starts a new round.
                    mapping.start_soon(self._port_mapped, self.port_mapper, rnd)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(stun_queries)
                    for slot in self._slots:
                        rnd.pending[slot] = GatherFailure(
                            "turn",
                            slot.config.url,
                            f"{slot.config.url}: still allocating when the round ended "
                            f"({timeout or 0:g} s); it comes in a later round",
                        )
                        nursery.start_soon(self._relay, slot, rnd)
                mapping.cancel_scope.cancel()
        if self.port_mapper is not None and self.port_mapper.settled:
            # Settled just as the waiting task was cancelled: it told nobody else. (Emitted
            # once: the round drops a repeated server-reflexive candidate.)
            self._emit_mapped(self.port_mapper, rnd)
        result = rnd.result
        result.failures.extend(rnd.pending.values())  # cut by round_timeout
        result.mapping_moved = self._check_mappings(rnd.mapped)
        if result.mapping_moved:
            result.old_mapping_seen_at = self.old_mapping_seen_at
        # Bases that are gone (a lost address, a link down) are not kept alive any more.
        kept = set(addresses)
        self._mapped = {k: m for k, m in self._mapped.items() if k in rnd.mapped or k[1] in kept}
        self._mapped_at = trio.current_time()
        log.info(
            "gathered",
            round=self.rounds,
            candidates=len(result.candidates),
            failures=len(result.failures),
        )
        return result

    async def _host_addresses(self, result: GatherResult) -> list[str]:
        if self._list_addresses is not None:
            return list(await self._list_addresses())
        versions = {4 if ep.family == AF_INET else 6 for ep in self.mux.endpoints}
        try:
            found = await self.host.local_addresses(
                exclude=self.options.exclude_interfaces,
                include_link_local=self.options.include_link_local,
            )
        except RuntimeFailure as exc:
            result.failures.append(GatherFailure("host", "netlink", str(exc)))
            return []
        return [a.address for a in found if a.version in versions]

    def _remember_server(self, host: str) -> None:
        """Note a server address (an IP literal; a name is not an address yet)."""
        try:
            ip = str(ipaddress.ip_address(host))
        except ValueError:
            return
        if ip not in self._server_ips and len(self._server_ips) < MAX_SERVER_ADDRESSES:
            self._server_ips.append(ip)

    def _routed_first(self, addresses: Sequence[str]) -> list[str]:
        """``addresses`` with the ones the host routes towards our servers first (in server
        order): the preferred uplink (module docstring)."""
        front: list[str] = []
        for server_ip in self._server_ips:
            local = self.mux.local_ip_for(server_ip)
            if local is not None and local in addresses and local not in front:
                front.append(local)
        return front + [a for a in addresses if a not in front]

    def _preference(self, base_ip: str | None) -> int:
        """The local preference of a base address (the lowest known if it is not a host
        candidate address)."""
        if base_ip is not None and base_ip in self._preferences:
            return self._preferences[base_ip]
        return min(self._preferences.values(), default=MAX_LOCAL_PREFERENCE)

    # -- server-reflexive --------------------------------------------------------------------------

    async def _srflx(self, server_ref: Address, rnd: _Round) -> None:
        """One STUN server's part of a round: a Binding from each base (module docstring)."""
        shown = f"{server_ref[0]}:{server_ref[1]}"
        answered: list[Address] = []
        errors: list[str] = []
        with trio.move_on_after(self.options.stun_timeout) as scope:
            try:
                server = normalize_address(await resolve(self.host, server_ref[0], server_ref[1]))
            except RuntimeFailure as exc:
                rnd.done(server_ref, GatherFailure("stun", shown, str(exc)))
                return
            self._remember_server(server[0])
            routed = self.mux.local_ip_for(server[0])
            others: list[str] = []
            if self.mux.chooses_source(server[0]):
                family = family_of(server[0])
                others = [a for a in self._addresses if a != routed and family_of(a) == family]
            waits = [trio.CancelScope() for _ in others]

            async def query(base_ip: str | None, wait: trio.CancelScope | None) -> None:
                with wait if wait is not None else trio.CancelScope():
                    try:
                        mapped, base = await self._binding(server, base_ip)
                    except RuntimeFailure as exc:
                        errors.append(str(exc))
                        return
                    finally:
                        if wait is None:  # the routed base: the others get a little longer
                            until = trio.current_time() + EXTRA_BASE_WAIT
                            for other in waits:
                                other.deadline = min(other.deadline, until)
                    if not answered:
                        rnd.done(server_ref)
                    answered.append(base)
                    rnd.mapped[(server, base[0])] = mapped
                    if mapped != base:  # else no NAT in between: the host candidate says it
                        pref = self._preference(base[0])  # all (RFC 8445 §5.1.3)
                        rnd.emit(make_srflx_candidate(mapped, base, server[0], pref))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(query, None, None)
                for base_ip, wait in zip(others, waits, strict=True):
                    nursery.start_soon(query, base_ip, wait)
        if answered:
            return
        if errors:
            rnd.done(server_ref, GatherFailure("stun", shown, errors[0]))
        elif scope.cancelled_caught:
            reason = f"no response from STUN server {shown} within {self.options.stun_timeout:g} s"
            rnd.done(server_ref, GatherFailure("stun", shown, reason))

    async def _binding(
        self, server: Address, base_ip: str | None = None
    ) -> tuple[Address, Address]:
        """One Binding transaction from the shared socket, from our address ``base_ip`` (None:
        the one the host routes towards the server): ``(mapped, base)``."""
        mux = self.mux
        if base_ip is None:
            base = mux.local_base_for(server)
        else:
            port = mux.port_for(server[0])
            base = None if port is None else (base_ip, port)
        if base is None:
            raise RuntimeFailure(f"no socket or route towards STUN server {format_address(server)}")
        source_known = mux.chooses_source(server[0])
        source = base[0] if source_known else None
        tid = bytes(self._random(12))
        request = Message.request(Method.BINDING, tid).encode(fingerprint=True)
        tx: ClientTransaction[None] = ClientTransaction(request, trio.current_time())
        answered = trio.Event()
        outcome: list[TransactionOutcome[None]] = []

        def on_response(data: memoryview, local: Address, source: Address) -> None:
            if source != server or outcome:
                return
            if base_ip is not None and source_known and local[0] != base_ip:
                # The request left from another address (ours is gone, the endpoint sent
                # it without): the mapping is not this base's.
                return
            try:
                msg = Message.decode(bytes(data))
            except DecodeError:
                return
            done = tx.handle_response(msg, trio.current_time())
            if done is not None:
                outcome.append(done)
                answered.set()

        if not mux.register_transaction(tid, on_response):
            raise RuntimeFailure("too many STUN transactions in flight")
        try:
            while not outcome:
                step = tx.handle_timeout(trio.current_time())
                if isinstance(step, bytes):
                    mux.send(step, server, source)
                elif step is not None:
                    outcome.append(step)
                    break
                wake = tx.next_wakeup()
                with trio.move_on_at(math.inf if wake is None else wake):
                    await answered.wait()
        finally:
            mux.unregister_transaction(tid)
        done = outcome[0]
        shown = format_address(server)
        if done.error is not None:
            code, reason = done.error
            raise RuntimeFailure(f"STUN server {shown} answered with error {code} {reason}")
        response = done.response
        mapped = None
        if response is not None:
            mapped = response.xor_mapped_address or response.mapped_address
        if mapped is None:
            raise RuntimeFailure(f"no response from STUN server {shown}")
        return normalize_address(mapped), base

    # -- port mapping ----------------------------------------------------------------------------

    async def _port_mapped(self, mapper: PortMapper, rnd: _Round) -> None:
        """The round's port-mapping candidate: a server-reflexive candidate whose address the
        gateway mapped to our base (RFC 8445 §5.1.1.2 allows any such mapping), flagged
        ``mapped <protocol>@<gateway>`` so that the peer and status can tell it from a STUN
        server's. Waited for only while the round's servers answer; no mapping is not a
        failure of the round."""
        await mapper.refresh()
        await mapper.wait_settled()
        self._emit_mapped(mapper, rnd)

    def _emit_mapped(self, mapper: PortMapper, rnd: _Round) -> None:
        mapping = mapper.mapping
        if mapping is None:
            return
        base = mapping.internal
        rnd.emit(
            make_srflx_candidate(
                mapping.external,
                base,
                mapping.gateway,
                self._preference(base[0]),
                extensions=(("mapped", f"{mapping.protocol}@{mapping.gateway}"),),
            )
        )

    # -- relayed: one round's view ---------------------------------------------------------------

    async def _relay(self, slot: _RelaySlot, rnd: _Round) -> None:
        """The round's part of one TURN server: its live allocation (waiting for one being
        made), or its last failure. A UDP allocation older than this round is first checked
        against what the STUN queries of the round saw from its server's address: if we are
        mapped elsewhere now (the NAT rebound or renumbered), the allocation went with the old
        mapping and a new one is made — giving the stale one would also hold the fresh one
        back, as both share a foundation (RFC 8445 §6.1.2.6)."""
        slot.wanted.set()
        slot.waiting_rounds += 1
        checked = False
        try:
            while True:
                relay = slot.live
                if relay is not None and relay.transport == "udp" and not checked:
                    await rnd.stun_done.wait()
                    checked = True
                    seen = rnd.mapped.get((relay.server, relay.local_ip or ""))
                    if slot.live is not relay:
                        continue  # lost or replaced meanwhile
                    if seen is not None and relay.mapped is not None and seen != relay.mapped:
                        log.info(
                            "relay mapping is stale, allocating again",
                            server=slot.config.url,
                            was=format_address(relay.mapped),
                            now=format_address(seen),
                        )
                        self._replace(slot, quiet=True)
                        continue
                if relay is not None:
                    srflx = self._relay_srflx(relay)
                    if srflx is not None:
                        rnd.emit(srflx)
                    rnd.emit(self.relay_candidate(relay, slot.index))
                    rnd.done(slot)
                    return
                if slot.state in (SlotState.WAITING, SlotState.CLOSED):
                    reason = slot.failure or f"{slot.config.url}: the gatherer stopped"
                    rnd.done(slot, GatherFailure("turn", slot.config.url, reason))
                    return
                await slot.changed.wait()
        finally:
            slot.waiting_rounds -= 1

    def _relay_srflx(self, relay: TurnRelay) -> Candidate | None:
        """The server-reflexive candidate a UDP allocation's XOR-MAPPED-ADDRESS gives (None
        over a stream, or without a NAT)."""
        mapped = relay.mapped
        port = self.mux.port_for(relay.server[0])
        if relay.transport != "udp" or mapped is None or relay.local_ip is None or port is None:
            return None
        base = (relay.local_ip, port)
        if mapped == base:
            return None
        return make_srflx_candidate(mapped, base, relay.server[0], self._preference(base[0]))

    def _check_relay_paths(self) -> None:
        """At the start of a round: a UDP allocation whose server is now reached from another
        local address has lost its 5-tuple; the round waits for a new one."""
        for slot in self._slots:
            relay = slot.live
            if relay is None or relay.transport != "udp":
                continue
            local = self.mux.local_ip_for(relay.server[0])
            if local != relay.local_ip:
                log.info(
                    "relay path changed, allocating again",
                    server=slot.config.url,
                    was=relay.local_ip or "-",
                    now=local or "-",
                )
                self._replace(slot, quiet=True)

    def _check_mappings(self, mapped: dict[MappingKey, Address]) -> bool:
        """After a round: if a STUN server now maps us elsewhere (the NAT rebound or changed
        its address), the UDP allocations made through that NAT are gone too — those whose
        mapped address is none of this round's. Returns whether a mapping moved."""
        moved = any(k in self._mapped and self._mapped[k] != m for k, m in mapped.items())
        self._mapped.update(mapped)
        if mapped:
            if moved:
                self.old_mapping_seen_at = self.mapping_confirmed_at
            self.mapping_confirmed_at = trio.current_time()
        if not moved:
            return False
        fresh = set(mapped.values())
        for slot in self._slots:
            relay = slot.live
            if relay is not None and relay.transport == "udp" and relay.mapped not in fresh:
                log.info("NAT mapping changed, allocating again", server=slot.config.url)
                self._replace(slot, quiet=False)
        return True

    async def _keep_mappings(self, interval: float) -> None:
        """One keepalive Binding to each STUN server of the latest round per ``interval``
        (module docstring); a round in between counts as one."""
        while True:
            due = self._mapped_at + interval
            if trio.current_time() < due:
                await trio.sleep_until(due)
                continue  # a round may have seen the mappings meanwhile
            self._mapped_at = trio.current_time()
            seen: dict[MappingKey, Address] = {}
            for server, base_ip in list(self._mapped):
                self.keepalives += 1
                with trio.move_on_after(self.options.stun_timeout):
                    try:
                        seen[server, base_ip], _ = await self._binding(server, base_ip)
                    except RuntimeFailure as exc:
                        log.debug(
                            "keepalive binding failed",
                            server=format_address(server),
                            reason=str(exc),
                        )
            if seen and self._check_mappings(seen):
                self.keepalive_moves += 1
                log.info("NAT mapping moved (keepalive binding)")
                if self.on_mapping_moved is not None:
                    self.on_mapping_moved()

    def _replace(self, slot: _RelaySlot, *, quiet: bool) -> None:
        relay = slot.relay
        if relay is None:
            return
        slot.quiet_end = quiet
        slot.relay = None
        relay.abandon()
        slot.set_state(SlotState.ALLOCATING)

    # -- relayed: keeping the allocations ----------------------------------------------------

    async def _supervise(self, slot: _RelaySlot) -> None:
        """Allocate once a round wants it, then keep an allocation (module docstring)."""
        await slot.wanted.wait()
        while not self._closing:
            slot.set_state(SlotState.ALLOCATING)
            delay = await self._hold(slot)
            if delay > 0 and not self._closing:
                await trio.sleep(delay)
        slot.relay = None
        slot.set_state(SlotState.CLOSED)

    def _retry_delay(self, slot: _RelaySlot) -> float:
        retry = self.options.relay_retry or RELAY_RETRY
        return retry[min(slot.attempts, len(retry)) - 1]

    async def _hold(self, slot: _RelaySlot) -> float:
        """One allocation from attempt to end; returns how long to wait before the next."""
        config = slot.config
        timeout = self.options.turn_timeout
        ended = trio.Event()
        async with trio.open_nursery() as nursery:
            try:
                with trio.fail_after(timeout):
                    creds = await self._credentials_for(config)
                    server = normalize_address(await resolve(self.host, config.host, config.port))
                    if config.transport == "udp" and self.mux.endpoint_for(server[0]) is None:
                        raise RuntimeFailure(f"{config.url}: no UDP socket of its address family")
                    relay = TurnRelay.from_config(
                        self.mux,
                        self.host,
                        config,
                        server,
                        creds.username,
                        creds.password,
                        random=self._random,
                        on_data=self.on_relay_data,
                        on_event=self._relay_event,
                        wireguard=self.relayed_wireguard,
                    )
                    relay.after_batch = self.after_relay_batch
                    await nursery.start(self._run_relay, relay, ended)
            except (RuntimeFailure, trio.TooSlowError) as exc:
                reason = (
                    f"{config.url}: no allocation within {timeout:g} s"
                    if isinstance(exc, trio.TooSlowError)
                    else str(exc)
                )
                slot.failure = reason
                slot.attempts += 1
                delay = self._retry_delay(slot)
                log.info("relay gathering failed", server=config.url, reason=reason, retry_in=delay)
                slot.set_state(SlotState.WAITING)
                return delay
            slot.relay = relay
            slot.failure = None
            slot.set_state(SlotState.ALLOCATED)
            if self._closing:
                relay.close()
            elif slot.waiting_rounds == 0:
                self._relays_changed()
            if creds.lifetime is not None:
                lifetime = max(creds.lifetime, self.options.min_credential_lifetime)
                nursery.start_soon(self._renew, slot, relay, lifetime * RENEW_AT)
            await ended.wait()
            nursery.cancel_scope.cancel()
        if slot.relay is relay:
            slot.relay = None
        quiet, slot.quiet_end = slot.quiet_end, False
        delay = 0.0
        if isinstance(relay.failure, AllocationLost):
            slot.failure = f"{config.url}: {relay.failure.reason}"
            slot.attempts += 1
            delay = self._retry_delay(slot)
            slot.set_state(SlotState.WAITING)
        else:
            slot.attempts = 0  # closed (renewal), or abandoned (new path): at once
        if not quiet and not self._closing:
            self._relays_changed()
        return delay

    async def _run_relay(
        self,
        relay: TurnRelay,
        ended: trio.Event,
        *,
        task_status: trio.TaskStatus[TurnRelay] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            await relay.run(timeout=self.options.turn_timeout, task_status=task_status)
        finally:
            ended.set()

    @staticmethod
    async def _renew(slot: _RelaySlot, relay: TurnRelay, after: float) -> None:
        await trio.sleep(after)
        log.info("relay credentials expire soon: allocating again", server=slot.config.url)
        relay.close()

    async def _credentials_for(self, config: TurnServerConfig) -> IssuedCredentials:
        if config.username is not None and config.password is not None:
            return IssuedCredentials(config.username, config.password)
        if self._credentials is not None:
            creds = await self._credentials(config)
            if creds is not None:
                return creds
        raise RuntimeFailure(f"{config.url}: no TURN credentials configured or issued")

    def _relay_event(self, relay: TurnRelay, event: TurnEvent) -> None:
        if isinstance(event, AllocationLost):
            log.info("relay lost", server=format_address(relay.server), reason=event.reason)

    def _relays_changed(self) -> None:
        if self.on_relays_changed is not None:
            self.on_relays_changed()

    def relay_candidate(self, relay: TurnRelay, index: int = 0) -> Candidate:
        """The relayed candidate of a live allocation (RFC 8445 §5.1.1.2)."""
        base_ip = relay.local_ip or self.mux.local_ip_for(relay.server[0]) or relay.server[0]
        rank = MAX_LOCAL_PREFERENCE - self._preference(base_ip)
        pref = MAX_LOCAL_PREFERENCE - (
            8192 * _TRANSPORT_RANK[relay.transport] + 256 * min(index, 31) + min(rank, 255)
        )
        mapped = relay.mapped or (base_ip, 0)
        cand = make_relay_candidate(relay.relayed, mapped, base_ip, relay.server[0], max(pref, 0))
        if relay.transport != "udp":
            # RFC 8445 §5.1.1.3: candidates obtained over different protocols differ in
            # foundation (TLS gets its own on top of TCP's).
            foundation = compute_foundation(
                CandidateType.RELAY, base_ip, relay.server[0], Transport.TCP
            )
            if relay.transport == "tls":
                foundation = foundation[:-1] + ("s" if foundation[-1] != "s" else "t")
            cand = replace(cand, foundation=foundation)
        return cand


__all__ = [
    "NODE_ROUND_TIMEOUT",
    "NODE_STUN_TIMEOUT",
    "RELAY_RETRY",
    "RENEW_AT",
    "AddressLister",
    "CredentialSource",
    "GatherFailure",
    "GatherOptions",
    "GatherResult",
    "Gatherer",
    "IssuedCredentials",
    "RelayStatus",
    "SlotState",
]

"""Candidate gathering over the node's shared sockets (RFC 8445 §5.1.1, trickled per RFC 8838).

One :class:`Gatherer` per node gathers the local candidates every ICE agent of the node uses:
the sockets are shared (ARCHITECTURE.md §2), so a server-reflexive address or a TURN allocation
belongs to the node, not to one peer.

- **Host candidates** (§5.1.1.1): the addresses :func:`p2ptun.net.netlink.list_local_addresses`
  reports — not loopback, not on a down interface, not on our own TUN interface (``exclude``),
  IPv6 link-local only when configured — of the families we have a socket for, each with the
  port of that family's shared socket. Local preferences come from
  :func:`p2ptun.ice.candidate.assign_local_preferences` (RFC 8421 interleaving).
- **Server-reflexive candidates** (§5.1.1.2): one STUN Binding request to each configured STUN
  server, sent from the shared socket of the server's family as a client transaction
  (RFC 8489 §6.2.1 retransmissions) whose responses the :class:`~p2ptun.net.turn_shared.UdpMux`
  routes back by transaction id. Each query is bounded by ``stun_timeout``: an unresponsive
  server costs that much and nothing else. The base is the host address the kernel sends from
  towards the server (the shared socket is bound to the wildcard address).
- **Relayed candidates** (§5.1.1.2): one TURN allocation per configured TURN server
  (:class:`~p2ptun.net.turn_shared.TurnRelay`; UDP through the shared socket, TCP and TLS on
  their own connections), bounded by ``turn_timeout``. The allocations outlive the gathering
  round: their tasks run in the gatherer's nursery (:meth:`Gatherer.run`) until the
  allocation is lost or the gatherer stops; a later round reuses the live ones.

Trickle: :meth:`Gatherer.gather` calls ``on_candidate`` with each candidate the moment it is
known (host candidates at once, then reflexive and relayed ones as their servers answer) and
returns — end of gathering — when every query finished or timed out, with the candidates and
the failures (one line each) of the round.

Priorities: srflx candidates take their base's local preference (§5.1.2.1). Relayed ones are
ranked below that by transport and server so that every relayed candidate gets a distinct
priority: local preference ``65535 - (8192·transport + 256·server + address rank)`` with
transport 0 for UDP, 1 for TCP, 2 for TLS (relaying over a stream is the last resort).
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
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
from p2ptun.net.turn_shared import (
    RelayDataHandler,
    RelayEventHandler,
    TurnRelay,
    UdpMux,
    normalize_address,
)
from p2ptun.stun import ClientTransaction, Message, Method, TransactionOutcome
from p2ptun.turn.client import AllocationLost, TurnEvent
from p2ptun.turn.transport_stun import resolve

log = get_logger("net.gather")

#: ``credentials(server)``: the username and password for a TURN server configured without
#: them (rendezvous-issued, ARCHITECTURE.md §2), or None if there are none (yet).
TurnCredentials = Callable[[TurnServerConfig], Awaitable[tuple[str, str] | None]]
#: ``list_addresses()``: the host addresses to use, most preferred first per family (tests
#: and special setups; default: netlink).
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
    #: Bound on one TURN allocation (connect, 401 round, Allocate).
    turn_timeout: float = 10.0
    #: Network namespace to list addresses in (tests; the daemon runs inside its own).
    netns: str | None = None

    @classmethod
    def from_config(cls, ice: IceConfig, tun_name: str | None = None) -> GatherOptions:
        """Options for a node's ``[ice]`` section; ``tun_name`` is excluded from host
        candidates."""
        return cls(
            stun=ice.stun,
            turn=ice.turn,
            exclude_interfaces=(tun_name,) if tun_name else (),
            include_link_local=ice.ipv6_link_local,
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


@dataclass
class _RelayEntry:
    relay: TurnRelay
    index: int


class Gatherer:
    """Gathers the node's candidates over the shared sockets of ``mux`` (module docstring).

    Run :meth:`run` in a nursery (``await nursery.start(gatherer.run)``) — it holds the TURN
    allocations — and call :meth:`gather` for each round. ``on_relay_data`` /
    ``on_relay_event`` / ``after_relay_batch`` are given to every relay (see
    :class:`~p2ptun.net.turn_shared.TurnRelay`).
    """

    def __init__(
        self,
        mux: UdpMux,
        options: GatherOptions,
        *,
        credentials: TurnCredentials | None = None,
        random: Callable[[int], bytes] = os.urandom,
        list_addresses: AddressLister | None = None,
        on_relay_data: RelayDataHandler | None = None,
        on_relay_event: RelayEventHandler | None = None,
        after_relay_batch: Callable[[], None] | None = None,
    ) -> None:
        self.mux = mux
        self.options = options
        self._credentials = credentials
        self._random = random
        self._list_addresses = list_addresses
        self.on_relay_data = on_relay_data
        self.on_relay_event = on_relay_event
        self.after_relay_batch = after_relay_batch
        self._nursery: trio.Nursery | None = None
        #: Live relays by (config url, resolved server).
        self._relays: dict[tuple[str, Address], _RelayEntry] = {}
        #: Local preference of each host address in the latest round.
        self._preferences: dict[str, int] = {}
        self.rounds = 0

    # -- queries ---------------------------------------------------------------------------------

    @property
    def relays(self) -> list[TurnRelay]:
        """The live TURN allocations."""
        return [e.relay for e in self._relays.values() if e.relay.allocated]

    def relay_for(self, relayed: Address) -> TurnRelay | None:
        """The live relay whose relayed address is ``relayed``."""
        for entry in self._relays.values():
            relay = entry.relay
            if relay.allocated and relay.client.relayed == relayed:
                return relay
        return None

    # -- lifetime --------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the nursery the TURN allocations live in, until cancelled (then they are
        released without waiting for the servers)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            self._relays.clear()

    def release_relays(self) -> None:
        """Deallocate every TURN allocation (e.g. before re-gathering after the network
        changed under them)."""
        for entry in self._relays.values():
            entry.relay.close()
        self._relays.clear()

    # -- one round -------------------------------------------------------------------------------

    async def gather(self, on_candidate: Callable[[Candidate], None] | None = None) -> GatherResult:
        """Gather once: host candidates at once, then srflx and relayed candidates as their
        servers answer (each query bounded); returns when all finished. Needs :meth:`run`."""
        if self._nursery is None:
            raise RuntimeError("Gatherer.gather() needs Gatherer.run() running")
        self.rounds += 1
        result = GatherResult()

        def emit(candidate: Candidate) -> None:
            result.candidates.append(candidate)
            if on_candidate is not None:
                on_candidate(candidate)

        addresses = await self._host_addresses(result)
        self._preferences = assign_local_preferences(addresses) if addresses else {}
        for host in addresses:
            port = self.mux.port_for(host)
            if port is not None:
                emit(make_host_candidate((host, port), self._preferences[host]))
        async with trio.open_nursery() as nursery:
            for server in self.options.stun:
                nursery.start_soon(self._srflx, server, emit, result)
            for index, turn in enumerate(self.options.turn):
                nursery.start_soon(self._relay, index, turn, emit, result)
        log.info(
            "gathered",
            round=self.rounds,
            candidates=len(result.candidates),
            failures=len(result.failures),
        )
        return result

    async def _host_addresses(self, result: GatherResult) -> list[str]:
        families = {int(ep.family) for ep in self.mux.endpoints}
        if self._list_addresses is not None:
            return list(await self._list_addresses())
        from p2ptun.net import netlink

        try:
            found = await netlink.run(
                netlink.list_local_addresses,
                exclude=self.options.exclude_interfaces,
                include_link_local=self.options.include_link_local,
                families=families,
                netns=self.options.netns,
            )
        except RuntimeFailure as exc:
            result.failures.append(GatherFailure("host", "netlink", str(exc)))
            return []
        return [a.address for a in found]

    def _preference(self, base_ip: str | None) -> int:
        """The local preference of a base address (the lowest known if it is not a host
        candidate address)."""
        if base_ip is not None and base_ip in self._preferences:
            return self._preferences[base_ip]
        return min(self._preferences.values(), default=MAX_LOCAL_PREFERENCE)

    # -- server-reflexive --------------------------------------------------------------------------

    async def _srflx(
        self, server_ref: Address, emit: Callable[[Candidate], None], result: GatherResult
    ) -> None:
        shown = f"{server_ref[0]}:{server_ref[1]}"
        with trio.move_on_after(self.options.stun_timeout) as scope:
            try:
                server = normalize_address(
                    await resolve(server_ref[0], server_ref[1], socket.SOCK_DGRAM)
                )
                mapped, base = await self._binding(server)
            except RuntimeFailure as exc:
                result.failures.append(GatherFailure("stun", shown, str(exc)))
                return
        if scope.cancelled_caught:
            reason = f"no response from STUN server {shown} within {self.options.stun_timeout:g} s"
            result.failures.append(GatherFailure("stun", shown, reason))
            return
        if mapped == base:
            return  # no NAT in between: the host candidate says it all (RFC 8445 §5.1.3)
        pref = self._preference(base[0])
        emit(make_srflx_candidate(mapped, base, server[0], pref))

    async def _binding(self, server: Address) -> tuple[Address, Address]:
        """One Binding transaction from the shared socket: ``(mapped, base)``."""
        mux = self.mux
        base = mux.local_base_for(server)
        if base is None:
            raise RuntimeFailure(f"no socket or route towards STUN server {format_address(server)}")
        tid = bytes(self._random(12))
        request = Message.request(Method.BINDING, tid).encode(fingerprint=True)
        tx: ClientTransaction[None] = ClientTransaction(request, trio.current_time())
        answered = trio.Event()
        outcome: list[TransactionOutcome[None]] = []

        def on_response(data: memoryview, local: Address, source: Address) -> None:
            if source != server or outcome:
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
                    mux.send(step, server)
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

    # -- relayed ---------------------------------------------------------------------------------

    async def _relay(
        self,
        index: int,
        config: TurnServerConfig,
        emit: Callable[[Candidate], None],
        result: GatherResult,
    ) -> None:
        timeout = self.options.turn_timeout
        try:
            with trio.fail_after(timeout):
                kind = socket.SOCK_DGRAM if config.transport == "udp" else socket.SOCK_STREAM
                server = normalize_address(await resolve(config.host, config.port, kind))
                entry = self._relays.get((config.url, server))
                if entry is None or not entry.relay.allocated:
                    entry = await self._allocate(index, config, server, timeout)
        except (RuntimeFailure, trio.TooSlowError) as exc:
            reason = (
                f"{config.url}: no allocation within {timeout:g} s"
                if isinstance(exc, trio.TooSlowError)
                else str(exc)
            )
            log.info("relay gathering failed", server=config.url, reason=reason)
            result.failures.append(GatherFailure("turn", config.url, reason))
            return
        emit(self.relay_candidate(entry.relay, index))

    async def _allocate(
        self, index: int, config: TurnServerConfig, server: Address, timeout: float
    ) -> _RelayEntry:
        creds: tuple[str, str] | None
        if config.username is not None and config.password is not None:
            creds = (config.username, config.password)
        elif self._credentials is not None:
            creds = await self._credentials(config)
        else:
            creds = None
        if creds is None:
            raise RuntimeFailure(f"{config.url}: no TURN credentials configured or issued")
        key = (config.url, server)

        def on_event(relay: TurnRelay, event: TurnEvent) -> None:
            self._relay_event(key, relay, event)

        relay = TurnRelay.from_config(
            self.mux,
            config,
            server,
            creds[0],
            creds[1],
            random=self._random,
            on_data=self.on_relay_data,
            on_event=on_event,
        )
        relay.after_batch = self.after_relay_batch
        nursery = self._nursery
        if nursery is None:
            raise RuntimeFailure("the gatherer stopped")
        old = self._relays.pop(key, None)
        if old is not None:
            old.relay.close()
        # Failing before it is allocated, run() raises here; afterwards it only returns.
        await nursery.start(partial(relay.run, timeout=timeout))
        entry = _RelayEntry(relay, index)
        self._relays[key] = entry
        return entry

    def _relay_event(self, key: tuple[str, Address], relay: TurnRelay, event: TurnEvent) -> None:
        if isinstance(event, AllocationLost):
            log.info("relay lost", server=format_address(relay.server), reason=event.reason)
            entry = self._relays.get(key)
            if entry is not None and entry.relay is relay:
                del self._relays[key]
        if self.on_relay_event is not None:
            self.on_relay_event(relay, event)

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
    "AddressLister",
    "GatherFailure",
    "GatherOptions",
    "GatherResult",
    "Gatherer",
    "TurnCredentials",
]

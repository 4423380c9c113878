"""Local ICE candidates of the node (RFC 8445 §5.1.1), gathered once for all peers.

Every peer's agent uses the same shared sockets, so the node gathers once and hands the same
candidates to each agent:

* **host**: the addresses netlink reports (:func:`p2ptun.net.netlink.list_local_addresses`),
  without our own TUN interface, each with the port of the shared socket of its family;
* **server-reflexive**: a Binding request to each ``[ice] stun`` server from the shared socket
  (RFC 8489), and the XOR-MAPPED-ADDRESS of each UDP TURN allocation;
* **relayed**: one :class:`~p2ptun.node.relay.TurnRelay` per ``[ice] turn`` server (UDP, TCP
  or TLS), with the configured credentials or ones the rendezvous issues. A relay that fails
  or is lost is tried again with backoff.

``complete`` turns true when the first round is done (host, every STUN query answered or timed
out, every relay allocated or failed, at most :data:`GATHER_TIMEOUT` after the start): the
peers then signal end-of-candidates. :meth:`Gatherer.regather` (network change) repeats the
host and server-reflexive part and re-allocates the UDP relays whose path changed (their
5-tuple at the server is gone, so the allocation is too). Every change calls ``on_update``.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from p2ptun.addr import Address, format_address
from p2ptun.config import NodeConfig, TurnServerConfig
from p2ptun.errors import P2ptunError
from p2ptun.ice import (
    Candidate,
    assign_local_preferences,
    make_host_candidate,
    make_relay_candidate,
    make_srflx_candidate,
)
from p2ptun.log import get_logger
from p2ptun.net import netlink
from p2ptun.node.mux import UdpMux
from p2ptun.node.relay import RelayState, TurnRelay
from p2ptun.stun import Message, Method
from p2ptun.stun.message import random_transaction_id
from p2ptun.turn.transport_stun import resolve

log = get_logger("node.gather")

GATHER_TIMEOUT = 3.0
"""The first round is declared complete after this long, whatever is still pending."""
STUN_SCHEDULE = (0.0, 0.4, 1.2)
"""When a Binding request to a STUN server is (re)sent; it gives up at STUN_TIMEOUT."""
STUN_TIMEOUT = 2.5
RELAY_RETRY = (2.0, 5.0, 10.0, 30.0, 60.0)
DEFAULT_PREFERENCE = 65535

Credentials = Callable[[], Awaitable[tuple[str, str, float]]]
"""Fetches rendezvous-issued TURN credentials (username, password, lifetime in seconds);
raises on failure."""
RENEW_AT = 0.8
"""A relay made with issued credentials is replaced after this fraction of their lifetime
(servers check the credentials' expiry on every authenticated request, refreshes too)."""


@dataclass
class _Srflx:
    server: Address
    base: Address
    mapped: Address


class _RelaySlot:
    """One configured TURN server: its current relay and what to do when it ends."""

    def __init__(self, config: TurnServerConfig) -> None:
        self.config = config
        self.relay: TurnRelay | None = None
        self.lifetime: float | None = None
        """Lifetime of the issued credentials the relay uses (None: configured ones)."""
        self.attempts = 0
        self.settled = False
        """Its first allocation attempt ended (either way): counts towards ``complete``."""
        self.replace = trio.Event()


class Gatherer:
    """Host, server-reflexive and relayed candidates of the node (see the module docstring)."""

    def __init__(
        self,
        config: NodeConfig,
        mux: UdpMux,
        *,
        interface: str,
        credentials: Credentials,
        on_update: Callable[[], None],
        on_round: Callable[[int], None] | None = None,
    ) -> None:
        self.config = config
        self.mux = mux
        self.interface = interface
        self._credentials = credentials
        self._on_update = on_update
        self._on_round = on_round
        self.lite = config.ice.lite
        self.host: list[Candidate] = []
        self._preferences: dict[str, int] = {}
        self._srflx: dict[Address, _Srflx] = {}
        self._slots = [_RelaySlot(t) for t in (() if self.lite else config.ice.turn)]
        self._stun_done = False
        self._timed_out = False
        self._regather = trio.Event()
        self._complete = trio.Event()
        self.rounds = 0

    # -- results ----------------------------------------------------------------------------

    @property
    def complete(self) -> bool:
        """The first round is over: signal end-of-candidates."""
        return self._timed_out or (
            self.rounds > 0 and self._stun_done and all(s.settled for s in self._slots)
        )

    async def wait_complete(self) -> None:
        """Wait until the first round is complete."""
        await self._complete.wait()

    def _notify(self) -> None:
        if self.complete:
            self._complete.set()
        self._on_update()

    def candidates(self) -> list[Candidate]:
        """Every current local candidate: host, server-reflexive, relayed."""
        result = list(self.host)
        if self.lite:
            return result
        srflx: list[tuple[Address, Address, str]] = [
            (s.mapped, s.base, s.server[0]) for s in self._srflx.values()
        ]
        relays = self.relays()
        for relay in relays:
            if relay.transport == "udp" and relay.mapped is not None:
                port = self.mux.port(_family(relay.server))
                if port is not None:
                    srflx.append((relay.mapped, (relay.local_ip, port), relay.server[0]))
        for mapped, base, server_ip in srflx:
            if mapped == base or any(c.address == mapped and c.related == base for c in result):
                continue  # no NAT (RFC 8445 §5.1.3), or already listed
            result.append(make_srflx_candidate(mapped, base, server_ip, self._preference(base[0])))
        for relay in relays:
            relayed = relay.relayed
            if relayed is None:
                continue
            result.append(
                make_relay_candidate(
                    relayed,
                    relay.mapped or relayed,
                    relay.local_ip,
                    relay.server[0],
                    self._preference(relay.local_ip),
                )
            )
        return result

    def relays(self) -> list[TurnRelay]:
        """Relays that are allocated right now."""
        return [
            s.relay
            for s in self._slots
            if s.relay is not None and s.relay.state is RelayState.ALLOCATED
        ]

    def relay_for(self, relayed: Address) -> TurnRelay | None:
        """The allocation whose relayed address is ``relayed`` (an ICE base)."""
        for relay in self.relays():
            if relay.relayed == relayed:
                return relay
        return None

    def _preference(self, ip: str) -> int:
        return self._preferences.get(ip, DEFAULT_PREFERENCE)

    # -- running ----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Gather, keep the relays allocated, regather on request; until cancelled.

        Closing releases the relay allocations (bounded)."""
        try:
            async with trio.open_nursery() as nursery:
                for slot in self._slots:
                    nursery.start_soon(self._relay_supervisor, slot)
                nursery.start_soon(self._first_round_timeout)
                task_status.started()
                while True:
                    await self._round()
                    await self._regather.wait()
                    self._regather = trio.Event()
        finally:
            with trio.CancelScope(shield=True):
                await self.close()

    def regather(self) -> None:
        """The network changed: gather again (host and server-reflexive candidates, UDP
        relays whose path changed)."""
        self.mux.network_changed()
        self._regather.set()

    async def close(self) -> None:
        """Release every allocation (each bounded by the relay's close timeout)."""
        relays = [s.relay for s in self._slots if s.relay is not None]
        async with trio.open_nursery() as nursery:
            for relay in relays:
                nursery.start_soon(relay.close)

    async def _first_round_timeout(self) -> None:
        await trio.sleep(GATHER_TIMEOUT)
        if not self.complete:
            log.info("gathering: first round timed out, going on with what we have")
        self._timed_out = True
        self._notify()

    async def _round(self) -> None:
        old_srflx = {k: v.mapped for k, v in self._srflx.items()}
        old_bases = {
            id(s): self.mux.local_for(s.relay.server)
            for s in self._slots
            if s.relay is not None and s.relay.transport == "udp"
        }
        self.mux.network_changed()
        await self._gather_host()
        self._notify()
        self._stun_done = False
        await self._gather_srflx()
        self._stun_done = True
        self.rounds += 1
        if self.rounds > 1:
            new_srflx = {k: v.mapped for k, v in self._srflx.items()}
            moved = new_srflx != old_srflx
            for slot in self._slots:
                relay = slot.relay
                if relay is None or relay.transport != "udp":
                    continue
                base = self.mux.local_for(relay.server)
                if moved or base != old_bases.get(id(slot)) or base is None:
                    log.info("relay path changed, allocating again", server=relay.name)
                    slot.replace.set()
        log.info(
            "candidates gathered",
            round=self.rounds,
            host=len(self.host),
            srflx=len(self._srflx),
            relays=len(self.relays()),
        )
        self._notify()
        if self._on_round is not None:
            self._on_round(self.rounds)

    async def _gather_host(self) -> None:
        try:
            addresses = await netlink.run(
                netlink.list_local_addresses,
                exclude=[self.interface],
                include_link_local=self.config.ice.ipv6_link_local,
            )
        except P2ptunError as exc:
            log.warning("cannot list local addresses", error=str(exc))
            addresses = []
        usable = []
        for addr in addresses:
            family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
            port = self.mux.port(family)
            if port is not None:
                usable.append((addr.address, port))
        self._preferences = assign_local_preferences([ip for ip, _ in usable])
        self.host = [make_host_candidate(a, self._preference(a[0])) for a in usable]

    async def _gather_srflx(self) -> None:
        if self.lite or not self.config.ice.stun:
            self._srflx = {}
            return
        found: dict[Address, _Srflx] = {}
        async with trio.open_nursery() as nursery:
            for host, port in self.config.ice.stun:
                nursery.start_soon(self._query_stun, host, port, found)
        self._srflx = found

    async def _query_stun(self, host: str, port: int, found: dict[Address, _Srflx]) -> None:
        try:
            server = await resolve(host, port, socket.SOCK_DGRAM)
        except P2ptunError as exc:
            log.warning("STUN server not usable", server=f"{host}:{port}", error=str(exc))
            return
        base = self.mux.local_for(server)
        if base is None:
            log.info("no route to STUN server", server=format_address(server))
            return
        request = Message.request(Method.BINDING, random_transaction_id()).encode(fingerprint=True)
        tid = request[8:20]
        answer: list[Address] = []
        done = trio.Event()

        def on_response(msg: Message, source: Address) -> None:
            mapped = msg.xor_mapped_address or msg.mapped_address
            if mapped is not None and source == server:
                answer.append((str(ipaddress.ip_address(mapped[0])), mapped[1]))
            done.set()

        self.mux.expect_response(tid, on_response)
        start = trio.current_time()
        try:
            with trio.move_on_at(start + STUN_TIMEOUT):
                for at in STUN_SCHEDULE:
                    with trio.move_on_at(start + at):
                        await done.wait()
                    if done.is_set():
                        break
                    self.mux.send(request, server)
                await done.wait()
        finally:
            self.mux.forget(tid)
        if answer:
            found[server] = _Srflx(server, base, answer[0])
        else:
            log.info("no answer from STUN server", server=format_address(server))

    # -- relays -----------------------------------------------------------------------------

    async def _relay_supervisor(self, slot: _RelaySlot) -> None:
        cfg = slot.config
        while True:
            delay = 0.0
            relay = await self._start_relay(slot)
            if relay is not None:
                slot.relay = relay
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._watch_replace, slot, relay)
                        if slot.lifetime is not None:
                            nursery.start_soon(self._renew, relay, slot.lifetime * RENEW_AT)
                        await relay.run()  # until the allocation fails, is lost or closed
                        nursery.cancel_scope.cancel()
                finally:
                    if relay.transport == "udp":
                        self.mux.remove_relay(relay.server, relay)
                if relay.state is RelayState.FAILED:
                    slot.attempts += 1
                    delay = RELAY_RETRY[min(slot.attempts - 1, len(RELAY_RETRY) - 1)]
                    log.info("relay retry", server=cfg.url, reason=relay.failure, in_s=f"{delay:g}")
                else:
                    slot.attempts = 0
                slot.relay = None
                self._notify()
            else:
                slot.attempts += 1
                delay = RELAY_RETRY[min(slot.attempts - 1, len(RELAY_RETRY) - 1)]
            if not slot.settled:
                slot.settled = True
                self._notify()
            await trio.sleep(delay)

    @staticmethod
    async def _renew(relay: TurnRelay, after: float) -> None:
        await trio.sleep(after)
        log.info("relay credentials expire soon: allocating again", server=relay.name)
        await relay.close()

    async def _watch_replace(self, slot: _RelaySlot, relay: TurnRelay) -> None:
        slot.replace = trio.Event()
        await slot.replace.wait()
        relay.abandon()

    async def _start_relay(self, slot: _RelaySlot) -> TurnRelay | None:
        cfg = slot.config
        try:
            if cfg.username is not None and cfg.password is not None:
                username, password = cfg.username, cfg.password
                slot.lifetime = None
            else:
                username, password, lifetime = await self._credentials()
                slot.lifetime = max(lifetime, 60.0)
            server = await resolve(
                cfg.host,
                cfg.port,
                socket.SOCK_DGRAM if cfg.transport == "udp" else socket.SOCK_STREAM,
            )
        except Exception as exc:  # TurnCredentialsUnavailable, RuntimeFailure (DNS)
            log.info("relay not started", server=cfg.url, error=str(exc) or type(exc).__name__)
            return None
        if cfg.transport == "udp" and self.mux.endpoint_for(server) is None:
            log.info("relay not started: no UDP socket of its family", server=cfg.url)
            return None
        local = self.mux.local_for(server)
        relay = TurnRelay(
            cfg,
            server,
            username,
            password,
            send_udp=self.mux.send,
            on_data=self._relayed,
            on_change=lambda changed: self._relay_changed(slot, changed),
            local_ip=local[0] if local is not None else ("::" if ":" in server[0] else "0.0.0.0"),
        )
        if cfg.transport == "udp":
            self.mux.add_relay(server, relay)
        return relay

    def _relay_changed(self, slot: _RelaySlot, relay: TurnRelay) -> None:
        if relay.state is not RelayState.ALLOCATING:
            slot.settled = True  # allocated, failed or closed: its first outcome is known
        self._notify()

    def _relayed(self, relay: TurnRelay, peer: Address, data: bytes) -> None:
        relayed = relay.relayed
        if relayed is not None:
            self.mux.relayed(data, relayed, peer)


def _family(addr: Address) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in addr[0] else socket.AF_INET

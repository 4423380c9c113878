"""A deterministic discrete-event network for testing the sans-I/O ICE agent.

Everything runs on a virtual clock (:attr:`Network.now`) driven by one event heap; nothing
sleeps and nothing touches a real socket. One ``random.Random(seed)`` drives loss,
duplication and delay jitter (jitter larger than the spacing of packets reorders them).

What is modelled
----------------
- The "internet": public IPv4 addresses, each owned by a :class:`Nat`, a public
  :class:`Endpoint`, the :class:`StunServer` or the :class:`Relay`. Packets to an address no
  one owns (e.g. a peer's private host candidate) vanish.
- :class:`Nat` — RFC 4787 behaviour: mapping endpoint-independent / address-dependent /
  address-and-port-dependent (:class:`Mapping`) and filtering likewise (:class:`Filtering`).
  Presets (:data:`NAT_TYPES`): ``full`` cone (EIM/EIF), ``restricted`` cone (EIM/ADF),
  ``port`` restricted cone (EIM/APDF), ``symmetric`` (APDM/APDF). Each NAT owns one private
  LAN; packets between hosts of the same LAN go directly (1 ms), packets to the NAT's own
  public address hairpin through it (mapping and filtering apply). Mappings never expire
  (the agent keeps them busy with consent checks anyway). Ports are allocated sequentially
  from 20000, so symmetric mappings are predictable but useless to the peer.
- :class:`StunServer` answers Binding requests with :func:`p2ptun.stun.handle_binding`.
- :class:`Relay` — a TURN-like relay with objects instead of TURN messages: ``Allocate`` gets
  a relayed port; ``Send(peer, data)`` relays data to the peer from the relayed address and
  installs a permission for the peer's IP (as a TURN client's CreatePermission would);
  datagrams to the relayed address from a permitted IP come back as ``DataInd(peer, data)``.
- ``Network.blocked``: a firewall predicate ``(src, dst) -> bool`` applied on the internet and
  inside LANs to drop traffic (e.g. "direct UDP between the two sites is blocked", or "the
  path died").
- :class:`Peer` — the test shell around an :class:`~p2ptun.ice.agent.IceAgent`: gathers host,
  server-reflexive and relayed candidates, signals them (with a signalling delay) to the other
  peer, drives the agent's timer, routes its transmits (directly or through the relay), and
  records events, the addresses it learnt (to check that the agent never sends anywhere
  else) and a per-tick log of ``can_send``.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from p2plab.natmodel import Filtering, Mapping, NatBehaviour, NatTable, PortAllocation
from p2ptun.addr import Address
from p2ptun.ice.agent import AgentConfig, IceAgent, OutgoingDatagram
from p2ptun.ice.candidate import (
    Candidate,
    make_host_candidate,
    make_relay_candidate,
    make_srflx_candidate,
)
from p2ptun.ice.checklist import PairState
from p2ptun.ice.events import IceEvent
from p2ptun.ice.sdp import IceCredentials
from p2ptun.stun import AttrType, Message, MessageClass, Method, handle_binding

STUN_PORT = 3478


#: NAT presets by name (None: the host has a public address).
NAT_TYPES: dict[str, tuple[Mapping, Filtering] | None] = {
    "public": None,
    "full": (Mapping.EIM, Filtering.EIF),
    "restricted": (Mapping.EIM, Filtering.ADF),
    "port": (Mapping.EIM, Filtering.APDF),
    "symmetric": (Mapping.APDM, Filtering.APDF),
}


@dataclass(frozen=True)
class Allocate:
    pass


@dataclass(frozen=True)
class AllocateOk:
    relayed: Address
    mapped: Address


@dataclass(frozen=True)
class Send:
    peer: Address
    data: bytes


@dataclass(frozen=True)
class DataInd:
    peer: Address
    data: bytes


class Network:
    """The event loop, the internet, and the impairments."""

    def __init__(
        self,
        seed: int = 0,
        *,
        loss: float = 0.0,
        duplicate: float = 0.0,
        delay: float = 0.02,
        jitter: float = 0.0,
    ) -> None:
        self.rng = random.Random(seed)
        self.now = 0.0
        self.loss = loss
        self.duplicate = duplicate
        self.delay = delay
        self.jitter = jitter
        self.blocked: Callable[[Address, Address], bool] | None = None
        self.owners: dict[str, Any] = {}
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.delivered = 0
        self.dropped = 0

    def schedule(self, when: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (max(when, self.now), next(self._seq), fn))

    def send(self, src: Address, dst: Address, payload: object) -> None:
        """Put a packet on the internet (from a public address)."""
        copies = 1
        if self.loss and self.rng.random() < self.loss:
            copies = 0
        elif self.duplicate and self.rng.random() < self.duplicate:
            copies = 2
        for _ in range(copies):
            latency = self.delay + (self.rng.random() * self.jitter if self.jitter else 0.0)
            self.schedule(self.now + latency, lambda: self._deliver(src, dst, payload))
        if copies == 0:
            self.dropped += 1

    def _deliver(self, src: Address, dst: Address, payload: object) -> None:
        if self.blocked is not None and self.blocked(src, dst):
            self.dropped += 1
            return
        owner = self.owners.get(dst[0])
        if owner is None:
            self.dropped += 1
            return
        self.delivered += 1
        owner.receive_public(src, dst, payload)

    def run_until(self, t: float) -> None:
        """Process every event up to virtual time ``t``; the clock ends at ``t``."""
        while self._heap and self._heap[0][0] <= t:
            when, _, fn = heapq.heappop(self._heap)
            self.now = when
            fn()
        self.now = max(self.now, t)

    def run_while(self, condition: Callable[[], bool], timeout: float, step: float = 0.01) -> bool:
        """Run until ``condition()`` holds (checked every ``step``) or ``timeout`` virtual
        seconds passed. Returns whether the condition held."""
        deadline = self.now + timeout
        while self.now < deadline:
            if condition():
                return True
            self.run_until(min(deadline, self.now + step))
        return condition()


class Endpoint:
    """A UDP socket on a host: public, or private behind a :class:`Nat`."""

    def __init__(self, net: Network, address: Address, nat: Nat | None = None) -> None:
        self.net = net
        self.address = address
        self.nat = nat
        self.handler: Callable[[Address, object], None] | None = None
        if nat is None:
            net.owners[address[0]] = self
        else:
            nat.lan[address[0]] = self

    def send(self, dst: Address, payload: object) -> None:
        if self.nat is not None:
            self.nat.outbound(self.address, dst, payload)
        else:
            self.net.send(self.address, dst, payload)

    def receive_public(self, src: Address, dst: Address, payload: object) -> None:
        if dst == self.address:
            self.receive(src, payload)

    def receive(self, src: Address, payload: object) -> None:
        if self.handler is not None:
            self.handler(src, payload)


class Nat:
    """A NAT with RFC 4787 mapping and filtering behaviour: the translation table of
    :class:`p2plab.natmodel.NatTable` (the one the in-memory network uses too), with
    sequential ports from 20000 and mappings that never expire."""

    def __init__(self, net: Network, public_ip: str, mapping: Mapping, filtering: Filtering):
        self.net = net
        self.public_ip = public_ip
        self.mapping = mapping
        self.filtering = filtering
        self.lan: dict[str, Endpoint] = {}
        behaviour = NatBehaviour(mapping, filtering, PortAllocation.SEQUENTIAL, math.inf, math.inf)
        self.table = NatTable(public_ip, behaviour)
        net.owners[public_ip] = self

    def outbound(self, src: Address, dst: Address, payload: object) -> None:
        local = self.lan.get(dst[0])
        if local is not None:
            self.net.schedule(self.net.now + 0.001, lambda: self._deliver_lan(local, src, payload))
            return
        self.net.send(self.table.outbound(src, dst, self.net.now), dst, payload)

    def _deliver_lan(self, host: Endpoint, src: Address, payload: object) -> None:
        blocked = self.net.blocked
        if blocked is not None and blocked(src, host.address):
            self.net.dropped += 1
            return
        host.receive(src, payload)

    def receive_public(self, src: Address, dst: Address, payload: object) -> None:
        inside = self.table.inbound(src, dst[1], self.net.now)
        if inside is None:
            return
        host = self.lan.get(inside[0])
        if host is not None and host.address == inside:
            host.receive(src, payload)


class StunServer:
    def __init__(self, net: Network, ip: str) -> None:
        self.net = net
        self.address = (ip, STUN_PORT)
        net.owners[ip] = self

    def receive_public(self, src: Address, dst: Address, payload: object) -> None:
        if isinstance(payload, bytes):
            reply = handle_binding(payload, src)
            if reply is not None:
                self.net.send(dst, src, reply)


@dataclass
class _Allocation:
    client: Address
    relayed: Address
    permissions: set[str] = field(default_factory=set)


class Relay:
    """A TURN-like relay (see the module docstring)."""

    def __init__(self, net: Network, ip: str) -> None:
        self.net = net
        self.ip = ip
        self.address = (ip, STUN_PORT)
        self._ports = itertools.count(50000)
        self._by_client: dict[Address, _Allocation] = {}
        self._by_port: dict[int, _Allocation] = {}
        self.relayed_packets = 0
        net.owners[ip] = self

    def receive_public(self, src: Address, dst: Address, payload: object) -> None:
        if dst[1] == STUN_PORT:
            if isinstance(payload, Allocate):
                alloc = self._by_client.get(src)
                if alloc is None:
                    alloc = _Allocation(src, (self.ip, next(self._ports)))
                    self._by_client[src] = alloc
                    self._by_port[alloc.relayed[1]] = alloc
                self.net.send(dst, src, AllocateOk(alloc.relayed, src))
            elif isinstance(payload, Send):
                alloc = self._by_client.get(src)
                if alloc is not None:
                    alloc.permissions.add(payload.peer[0])
                    self.relayed_packets += 1
                    self.net.send(alloc.relayed, payload.peer, payload.data)
            return
        alloc = self._by_port.get(dst[1])
        if alloc is not None and src[0] in alloc.permissions and isinstance(payload, bytes):
            self.relayed_packets += 1
            self.net.send(self.address, alloc.client, DataInd(src, payload))


class Peer:
    """The test shell around one agent (see the module docstring)."""

    def __init__(
        self,
        net: Network,
        name: str,
        endpoint: Endpoint,
        credentials: IceCredentials,
        *,
        controlling: bool,
        seed: int,
        lite: bool = False,
        config: AgentConfig | None = None,
        stun: Address | None = None,
        relay: Address | None = None,
    ) -> None:
        self.net = net
        self.name = name
        self.endpoint = endpoint
        self.stun = stun
        self.relay = relay
        self.agent = IceAgent(
            credentials,
            controlling=controlling,
            rng=random.Random(seed),
            lite=lite,
            config=config,
        )
        self.lite = lite
        self.other: Peer | None = None
        self.signal_delay = 0.05
        self.events: list[tuple[float, IceEvent]] = []
        self.learned: set[Address] = set()
        self.violations: list[OutgoingDatagram] = []
        self.sent: list[tuple[float, OutgoingDatagram]] = []
        self.relayed_address: Address | None = None
        self.data_received: list[tuple[float, bytes]] = []
        self.on_event: Callable[[Peer, IceEvent], None] | None = None
        self._timer_token = 0
        self.max_seen = {"pairs": 0, "transactions": 0, "remote": 0, "local": 0, "early": 0}
        self._gather_tid: bytes | None = None
        self._pending_gather = 0
        self._gather_round = 0
        self._want_srflx = False
        self._want_relay = False
        self.trickle_hold = False
        self._held: list[tuple[str, Any]] = []
        endpoint.handler = self._receive

    # -- signalling ---------------------------------------------------------------------------

    def signal(self, kind: str, value: Any = None) -> None:
        other = self.other
        assert other is not None
        if self.trickle_hold and kind in ("cand", "eoc"):
            self._held.append((kind, value))
            return
        self.net.schedule(self.net.now + self.signal_delay, lambda: other.on_signal(kind, value))

    def release_held(self) -> None:
        self.trickle_hold = False
        held, self._held = self._held, []
        for kind, value in held:
            self.signal(kind, value)

    def on_signal(self, kind: str, value: Any) -> None:
        now = self.net.now
        if kind == "creds":
            creds, lite = value
            self.agent.set_remote_credentials(creds, now, lite=lite)
        elif kind == "cand":
            assert isinstance(value, Candidate)
            self.learned.add(value.address)
            self.agent.add_remote_candidate(value, now)
        elif kind == "eoc":
            self.agent.set_remote_end_of_candidates(now)
        elif kind == "restart":
            creds, lite = value
            self.agent.restart(self.new_credentials(), now)
            self.send_credentials()
            self.gather()
            self.agent.set_remote_credentials(creds, now, lite=lite)
            self.pump()
            return
        self.pump()

    def new_credentials(self) -> IceCredentials:
        g = self.agent.generation + 1
        return IceCredentials(f"{self.name}g{g}x", f"{self.name}passwordgeneration{g:06d}")

    def send_credentials(self) -> None:
        self.signal("creds", (self.agent.local_credentials, self.lite))

    def start(self, *, send_credentials: bool = True) -> None:
        """Signal credentials and gather (host now, srflx and relay when they answer)."""
        if send_credentials:
            self.send_credentials()
        self.gather()

    def initiate_restart(self) -> None:
        """Restart ICE here and tell the peer (which restarts too, answering with its own)."""
        self.agent.restart(self.new_credentials(), self.net.now)
        self.signal("restart", (self.agent.local_credentials, self.lite))
        self.gather()
        self.pump()

    # -- gathering ----------------------------------------------------------------------------

    def gather(self) -> None:
        now = self.net.now
        host = make_host_candidate(self.endpoint.address, 65535)
        self._add_local(host)
        self._pending_gather = 0
        self._gather_round += 1
        self._want_srflx = self.stun is not None and not self.lite
        self._want_relay = self.relay is not None and not self.lite
        if self._want_srflx:
            self._gather_tid = self.net.rng.getrandbits(96).to_bytes(12, "big")
            self._pending_gather += 1
        if self._want_relay:
            self._pending_gather += 1
        self._gather_send(self._gather_round, 0)
        if self._pending_gather == 0:
            self._gathering_done()
        self.agent.handle_timeout(now)
        self.pump()

    def _gather_send(self, round_: int, attempt: int) -> None:
        """Send (and resend every 0.5 s, 7 times at most) the gathering requests still
        unanswered: the sim's STUN and TURN clients."""
        if round_ != self._gather_round or attempt >= 7:
            return
        if self._want_srflx and self._gather_tid is not None:
            assert self.stun is not None
            req = Message.request(Method.BINDING, self._gather_tid)
            self.endpoint.send(self.stun, req.encode(fingerprint=True))
        if self._want_relay:
            assert self.relay is not None
            self.endpoint.send(self.relay, Allocate())
        if self._want_srflx or self._want_relay:
            self.net.schedule(self.net.now + 0.5, lambda: self._gather_send(round_, attempt + 1))

    def _add_local(self, cand: Candidate) -> None:
        if self.agent.add_local_candidate(cand, self.net.now):
            self.signal("cand", cand)

    def _gathering_done(self) -> None:
        self.agent.set_local_end_of_candidates(self.net.now)
        self.signal("eoc")

    def _gathered_one(self) -> None:
        self._pending_gather -= 1
        if self._pending_gather == 0:
            self._gathering_done()

    # -- datagrams ----------------------------------------------------------------------------

    def _receive(self, src: Address, payload: object) -> None:
        if isinstance(payload, AllocateOk):
            if not self._want_relay:
                self.pump()
                return
            self._want_relay = False
            self.relayed_address = payload.relayed
            assert self.relay is not None
            self._add_local(
                make_relay_candidate(
                    payload.relayed, payload.mapped, self.endpoint.address[0], self.relay[0], 65535
                )
            )
            self._gathered_one()
        elif isinstance(payload, DataInd):
            assert self.relayed_address is not None
            self._deliver(payload.data, self.relayed_address, payload.peer)
        elif isinstance(payload, bytes):
            if self._gather_tid is not None and payload[8:20] == self._gather_tid:
                msg = Message.decode(payload)
                if msg.message_class == MessageClass.SUCCESS and self._want_srflx:
                    self._want_srflx = False
                    mapped = msg.get(AttrType.XOR_MAPPED_ADDRESS)
                    assert self.stun is not None
                    if mapped != self.endpoint.address:
                        self._add_local(
                            make_srflx_candidate(mapped, self.endpoint.address, self.stun[0], 65535)
                        )
                    self._gather_tid = None
                    self._gathered_one()
            else:
                self._deliver(payload, self.endpoint.address, src)
        self.pump()

    def _deliver(self, data: bytes, local: Address, remote: Address) -> None:
        if data.startswith(b"DATA"):
            self.data_received.append((self.net.now, data))
            return
        self.learned.add(remote)
        self.agent.handle_datagram(data, local, remote, self.net.now)

    def send_data(self, data: bytes = b"DATA") -> bool:
        """Send application data on the selected pair if the agent allows it."""
        sel = self.agent.selected_pair
        if sel is None or not self.agent.can_send(self.net.now):
            return False
        self._route(OutgoingDatagram(data, sel.base, sel.remote.address, sel.via_relay))
        return True

    def _route(self, t: OutgoingDatagram) -> None:
        if t.via_relay:
            assert self.relay is not None
            self.endpoint.send(self.relay, Send(t.remote, t.data))
        else:
            self.endpoint.send(t.remote, t.data)

    # -- driving the agent --------------------------------------------------------------------

    def pump(self) -> None:
        now = self.net.now
        for t in self.agent.pop_transmits():
            if t.remote not in self.learned:
                self.violations.append(t)
            self.sent.append((now, t))
            self._route(t)
        for ev in self.agent.pop_events():
            self.events.append((now, ev))
            if self.on_event is not None:
                self.on_event(self, ev)
        self._record_bounds()
        wake = self.agent.next_wakeup()
        self._timer_token += 1
        if wake is not None:
            token = self._timer_token
            self.net.schedule(wake, lambda: self._on_timer(token))

    def _record_bounds(self) -> None:
        a = self.agent
        seen = self.max_seen
        seen["pairs"] = max(seen["pairs"], len(a.checklist))
        seen["transactions"] = max(seen["transactions"], len(a._checks))
        seen["remote"] = max(seen["remote"], len(a.remote_candidates))
        seen["local"] = max(seen["local"], len(a.local_candidates))
        seen["early"] = max(seen["early"], len(a._gen.early))

    def _on_timer(self, token: int) -> None:
        if token != self._timer_token:
            return
        self.agent.handle_timeout(self.net.now)
        self.pump()

    def events_of(self, kind: type) -> list[tuple[float, Any]]:
        return [(t, e) for t, e in self.events if isinstance(e, kind)]


@dataclass(frozen=True)
class Nomination:
    """What a controlling agent knew when it nominated a pair (:func:`watch_nominations`)."""

    at: float
    key: tuple[Address, Address]
    relayed: bool
    first_valid_at: float | None
    #: A pair was nominated before (this is the move from a relayed to a direct pair).
    renomination: bool
    #: The pairs of higher priority than the nominated one: key, state, sends of the check.
    higher: list[tuple[tuple[Address, Address], PairState, int]]


def watch_nominations(peer: Peer) -> list[Nomination]:
    """Record every nomination of ``peer``'s agent from now on (the list fills as the
    simulation runs)."""
    agent = peer.agent
    seen: list[Nomination] = []
    original = agent._nominate

    def nominate(gen: Any, pair: Any) -> None:
        seen.append(
            Nomination(
                peer.net.now,
                pair.key,
                pair.relayed,
                gen.first_valid_at,
                any(p.nominated for p in gen.checklist.pairs),
                [
                    (p.key, p.state, p.sends)
                    for p in gen.checklist.pairs
                    if p.priority > pair.priority
                ],
            )
        )
        original(gen, pair)

    agent._nominate = nominate  # type: ignore[method-assign]
    return seen


@dataclass
class Scenario:
    net: Network
    a: Peer
    b: Peer
    nat_a: Nat | None
    nat_b: Nat | None
    relay: Relay
    stun: StunServer

    def start(self) -> None:
        self.a.start()
        self.b.start()

    def connected(self) -> bool:
        return (
            all(
                p.agent.selected_pair is not None and p.agent.can_send(self.net.now)
                for p in (self.a, self.b)
            )
            and self.a.agent.selected_pair is not None
            and self.same_path()
        )

    def same_path(self) -> bool:
        sa, sb = self.a.agent.selected_pair, self.b.agent.selected_pair
        if sa is None or sb is None:
            return False
        # A's destination is where B's packets leave to A (its valid local), and vice versa.
        return sa.remote.address == sb.local.address and sb.remote.address == sa.local.address


def make_scenario(
    nat_a: str,
    nat_b: str,
    *,
    seed: int = 1,
    loss: float = 0.0,
    duplicate: float = 0.0,
    jitter: float = 0.0,
    relay: bool = True,
    lite_a: bool = False,
    lite_b: bool = False,
    a_controlling: bool = True,
    b_controlling: bool = False,
    config_a: AgentConfig | None = None,
    config_b: AgentConfig | None = None,
    same_lan: bool = False,
) -> Scenario:
    """Two peers, each behind a NAT of the named type (:data:`NAT_TYPES`), a STUN server and a
    relay on the internet. A's LAN is 10.0.1.0/24 behind 198.51.100.1, B's 10.0.2.0/24 behind
    203.0.113.1; public peers get 198.51.100.10 / 203.0.113.10. With ``same_lan``, B is
    10.0.1.3 on A's LAN instead (``nat_b`` is ignored; A's NAT must not be ``public``)."""
    net = Network(seed, loss=loss, duplicate=duplicate, jitter=jitter)
    stun = StunServer(net, "192.0.2.1")
    rel = Relay(net, "192.0.2.2")
    nats: list[Nat | None] = []
    endpoints: list[Endpoint] = []
    sites = [(nat_a, "198.51.100.1", "10.0.1.2")]
    if not same_lan:
        sites.append((nat_b, "203.0.113.1", "10.0.2.2"))
    for kind, public, private in sites:
        preset = NAT_TYPES[kind]
        if preset is None:
            nats.append(None)
            endpoints.append(Endpoint(net, (public.rsplit(".", 1)[0] + ".10", 4000)))
        else:
            nat = Nat(net, public, *preset)
            nats.append(nat)
            endpoints.append(Endpoint(net, (private, 4000), nat))
    if same_lan:
        lan = nats[0]
        assert lan is not None, "same_lan needs a NAT at A"
        nats.append(lan)
        endpoints.append(Endpoint(net, ("10.0.1.3", 4000), lan))
    a = Peer(
        net,
        "alice",
        endpoints[0],
        IceCredentials("aliceg0x", "alicepasswordgeneration000000"),
        controlling=a_controlling,
        seed=seed * 2 + 11,
        lite=lite_a,
        config=config_a,
        stun=stun.address,
        relay=rel.address if relay else None,
    )
    b = Peer(
        net,
        "bob",
        endpoints[1],
        IceCredentials("bobg0x", "bobpasswordgeneration000000"),
        controlling=b_controlling,
        seed=seed * 2 + 12,
        lite=lite_b,
        config=config_b,
        stun=stun.address,
        relay=rel.address if relay else None,
    )
    a.other, b.other = b, a
    return Scenario(net, a, b, nats[0], nats[1], rel, stun)

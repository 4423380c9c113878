"""The ICE transport on loopback: two node-level transports, one session each, real sockets,
our embedded STUN/TURN server for relayed paths. Every wait is bounded."""

from __future__ import annotations

import itertools
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
from loopback_turn import HOST, serve_turn

from p2ptun.addr import Address
from p2ptun.config import TurnServerConfig
from p2ptun.ice.agent import AgentConfig, IceStats
from p2ptun.ice.candidate import CandidateType
from p2ptun.ice.events import PairSelected, SelectedPair, StateChanged
from p2ptun.ice.sdp import IceDescription
from p2ptun.net.dispatch import Dispatcher
from p2ptun.net.gather import GatherOptions
from p2ptun.net.ice_transport import (
    IceSession,
    IceTransport,
    LocalCandidate,
    LocalCandidatesDone,
    LocalRestart,
    SessionEvent,
    is_direct,
    stun_username,
)
from p2ptun.net.system import SystemHost
from p2ptun.net.udp import UdpEndpoint
from p2ptun.stun import AttrType, Message, Method

WG = b"\x04\x00\x00\x00"  # a WireGuard transport-data header: classified as WireGuard
SERVER_SCOPES: dict[int, trio.CancelScope] = {}


@pytest.fixture
async def turn_server(nursery: trio.Nursery) -> AsyncIterator[int]:
    port, scope = await serve_turn(nursery, relay_ports=(43000, 43999))
    SERVER_SCOPES[port] = scope
    yield port
    scope.cancel()


@dataclass
class Node:
    """One transport, its endpoint and one session, recording what happened."""

    transport: IceTransport
    endpoint: UdpEndpoint
    events: list[SessionEvent] = field(default_factory=list)
    data: list[bytes] = field(default_factory=list)
    session: IceSession | None = None

    def on_event(self, session: IceSession, event: SessionEvent) -> None:
        self.events.append(event)

    def on_data(self, session: IceSession, data: bytes | memoryview, source: Address) -> None:
        self.data.append(bytes(data))

    def open(self, name: str, controlling: bool, config: AgentConfig | None = None) -> IceSession:
        self.session = self.transport.open_session(
            name,
            controlling=controlling,
            on_event=self.on_event,
            on_data=self.on_data,
            config=config,
        )
        return self.session


#: The agents of these tests share this host's loopback addresses.
LOOPBACK = AgentConfig(allow_local=True)


def _lister(addresses: Sequence[str]) -> Callable[[], Awaitable[Sequence[str]]]:
    async def list_addresses() -> Sequence[str]:
        return list(addresses)

    return list_addresses


async def start_node(
    nursery: trio.Nursery,
    *,
    hosts: Sequence[str] = (HOST,),
    stun: Sequence[Address] = (),
    turn: Sequence[TurnServerConfig] = (),
    transport_options: dict[str, Any] | None = None,
    bind: str | None = HOST,
    **options: Any,
) -> Node:
    ep = UdpEndpoint.bind(socket.AF_INET, bind)
    transport = IceTransport(
        [ep],
        GatherOptions(stun=tuple(stun), turn=tuple(turn), **options),
        host=SystemHost(),
        list_addresses=_lister(hosts),
        **{"agent_config": LOOPBACK, **(transport_options or {})},
    )
    # The socket's one dispatcher: ICE and TURN to the mux, WireGuard-typed data to the
    # sessions (a node would give that kind to its data path).
    mux = transport.mux
    dispatcher = Dispatcher(
        stun=mux.on_stun, channel_data=mux.on_channel_data, wireguard=transport.on_wireguard
    )
    nursery.start_soon(ep.receive_loop, dispatcher)
    await nursery.start(transport.run)
    return Node(transport, ep)


def turn_config(port: int, transport: str = "udp", user: str = "alice") -> TurnServerConfig:
    url = f"turn:{HOST}:{port}?transport={transport}"
    return TurnServerConfig(url, HOST, port, transport, user, "pw")  # type: ignore[arg-type]


async def connect(a: Node, b: Node, timeout: float = 10.0) -> tuple[SelectedPair, SelectedPair]:
    """Exchange full descriptions after gathering, wait for both to select a pair."""
    with trio.fail_after(timeout):
        await a.transport.wait_gathered()
        await b.transport.wait_gathered()
        sa = a.session or a.open("b", True)
        sb = b.session or b.open("a", False)
        sb.set_remote_description(sa.local_description())
        sa.set_remote_description(sb.local_description())
        return await sa.wait_connected(), await sb.wait_connected()


async def exchange(a: Node, b: Node, n: int = 5, timeout: float = 5.0) -> None:
    """Send n datagrams each way and wait until they all arrived."""
    assert a.session is not None and b.session is not None
    a.data.clear()
    b.data.clear()
    with trio.fail_after(timeout):
        while len(a.data) < n or len(b.data) < n:
            for i in range(n):
                if len(b.data) < n:
                    assert a.session.send(WG + b"a%d" % i)
                if len(a.data) < n:
                    assert b.session.send(WG + b"b%d" % i)
            await trio.sleep(0.05)
    assert all(d.startswith(WG + b"b") for d in a.data)
    assert all(d.startswith(WG + b"a") for d in b.data)


async def test_host_pair_over_loopback(nursery: trio.Nursery) -> None:
    a = await start_node(nursery)
    b = await start_node(nursery)
    pa, pb = await connect(a, b)
    assert (pa.local.type, pa.remote.type) == (CandidateType.HOST, CandidateType.HOST)
    assert is_direct(pa) and is_direct(pb)
    assert pa.remote.address == b.endpoint.local_address
    await exchange(a, b)
    assert a.session is not None and a.session.time_to_nomination is not None
    assert any(isinstance(e, PairSelected) for e in a.events)
    assert any(isinstance(e, StateChanged) for e in b.events)
    # Both finished gathering before the sessions opened: nothing was trickled.
    assert not [e for e in a.events if isinstance(e, LocalCandidate)]
    assert a.session.local_description().end_of_candidates
    # A consent-style check on the selected pair measures its round trip.
    with trio.fail_after(5):
        rtt = await a.session.ping(timeout=3)
    assert rtt is not None and 0 <= rtt < 3
    assert b.session is not None and await b.session.ping(timeout=3) is not None


async def test_relay_pair_through_our_turn_server(nursery: trio.Nursery, turn_server: int) -> None:
    # No host candidates at all: the only pairs are relay <-> relay.
    a = await start_node(nursery, hosts=(), turn=[turn_config(turn_server)])
    b = await start_node(nursery, hosts=(), turn=[turn_config(turn_server, user="bob")])
    pa, pb = await connect(a, b)
    assert pa.local.type is CandidateType.RELAY and pa.via_relay
    assert pb.local.type is CandidateType.RELAY
    await exchange(a, b)
    relay = a.transport.gatherer.relays[0]
    # The selected relayed pair gets a channel: data goes as ChannelData.
    with trio.fail_after(5):
        while not relay.channel_bound(pa.remote.address):
            await trio.sleep(0.02)
    before = relay.client.counters.tx_channel_data
    await exchange(a, b, n=3)
    assert relay.client.counters.tx_channel_data > before
    # Ping goes through the relay too; its answer comes back unwrapped by the relay.
    assert a.session is not None
    with trio.fail_after(5):
        assert await a.session.ping(timeout=3) is not None


async def test_relayed_wireguard_to_the_transport_handler(
    nursery: trio.Nursery, turn_server: int
) -> None:
    # The node's way: every WireGuard datagram a relay unwraps goes to one handler (its
    # tunnel authenticates it), whatever pair is selected; other payloads are dropped.
    got: list[tuple[bytes, Address]] = []
    a = await start_node(
        nursery,
        hosts=(),
        turn=[turn_config(turn_server)],
        transport_options={"relayed_wireguard": lambda d, p, r: got.append((bytes(d), p))},
    )
    b = await start_node(nursery, hosts=(), turn=[turn_config(turn_server, user="bob")])
    pa, pb = await connect(a, b)
    assert pa.via_relay and pb.via_relay and b.session is not None
    with trio.fail_after(5):
        while not got:
            assert b.session.send(WG + b"to-a")
            await trio.sleep(0.05)
    assert got[0] == (WG + b"to-a", pb.local.address) and not a.data
    assert b.session.send(b"\x99junk")
    with trio.fail_after(5):
        while a.transport.counters.relayed_other < 1:
            await trio.sleep(0.02)


async def test_turn_over_tcp_relay(nursery: trio.Nursery, turn_server: int) -> None:
    a = await start_node(nursery, hosts=(), turn=[turn_config(turn_server, "tcp")])
    b = await start_node(nursery, hosts=(), turn=[turn_config(turn_server, user="bob")])
    pa, _pb = await connect(a, b)
    assert pa.via_relay
    assert a.transport.gatherer.relays[0].transport == "tcp"
    await exchange(a, b)


async def test_checks_only_from_the_base_the_kernel_sends_from(nursery: trio.Nursery) -> None:
    # a has two host addresses, but its socket is bound to 127.0.0.1: checks from the other
    # base would leave from 127.0.0.1 and test the wrong pair, so they are not sent.
    gathered: list[int] = []
    a = await start_node(
        nursery,
        hosts=("127.0.0.2", HOST),
        transport_options={"on_gathered": gathered.append},
    )
    b = await start_node(nursery)
    pa, pb = await connect(a, b)
    assert pa.local.address == a.endpoint.local_address
    assert pb.remote.address == a.endpoint.local_address
    assert a.transport.counters.wrong_base > 0
    assert gathered == [1]
    await exchange(a, b)


@pytest.mark.parametrize("pktinfo", ["auto", "off"])
async def test_every_host_address_of_a_wildcard_socket_is_a_base(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, pktinfo: str
) -> None:
    # a's socket is bound to the wildcard address and a has two host addresses, 127.0.0.2
    # preferred. Each datagram's local address is known and everything on a pair leaves from
    # its base: the preferred pair works (checks, answers, data from 127.0.0.2, which b's
    # transport routes by that source). Without that, the kernel sends from 127.0.0.1 towards
    # b: checks from 127.0.0.2 are not sent and the routed base carries the data.
    monkeypatch.setenv("P2PTUN_PKTINFO", pktinfo)
    a = await start_node(nursery, hosts=("127.0.0.2", HOST), bind=None)
    b = await start_node(nursery)
    pa, pb = await connect(a, b)
    port = a.endpoint.local_address[1]
    if pktinfo == "auto":
        assert pa.base == pa.local.address == ("127.0.0.2", port)
        assert pb.remote.address == ("127.0.0.2", port)
        assert a.transport.counters.wrong_base == 0
    else:
        assert pa.base == (HOST, port) and pb.remote.address == (HOST, port)
        assert a.transport.counters.wrong_base > 0
    await exchange(a, b)
    assert a.endpoint.counters.tx_source_fallbacks == 0


async def test_srflx_from_stun_and_unresponsive_server_is_bounded(
    nursery: trio.Nursery, turn_server: int
) -> None:
    # A STUN server that never answers (a bound socket nobody reads) costs stun_timeout.
    silent = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await silent.bind((HOST, 0))
    start = trio.current_time()
    a = await start_node(
        nursery,
        stun=[(HOST, turn_server), silent.getsockname()],
        stun_timeout=0.6,
    )
    with trio.fail_after(5):
        await a.transport.wait_gathered()
    assert trio.current_time() - start < 3
    result = a.transport.last_gather
    assert result is not None
    # On loopback the mapped address is the host candidate: no srflx is emitted for it.
    assert [c.type for c in result.candidates] == [CandidateType.HOST]
    assert [f.kind for f in result.failures] == ["stun"]
    silent.close()


async def test_trickle_and_restart(nursery: trio.Nursery, turn_server: int) -> None:
    a = await start_node(nursery, turn=[turn_config(turn_server)])
    b = await start_node(nursery)
    # Open a's session before gathering finishes: the relay candidate trickles in later.
    sa = a.open("b", True)
    initial = list(sa.local_description().candidates)
    assert not sa.local_description().end_of_candidates
    with trio.fail_after(10):
        await a.transport.wait_gathered()
    trickled = [e.candidate for e in a.events if isinstance(e, LocalCandidate)]
    assert CandidateType.RELAY in [c.type for c in trickled]
    assert sorted(c.type.value for c in initial + trickled) == ["host", "relay"]
    assert sa.local_description().candidates == tuple(initial + trickled)
    assert any(isinstance(e, LocalCandidatesDone) for e in a.events)
    pa, _ = await connect(a, b)
    assert is_direct(pa)
    await exchange(a, b)
    # Restart on a: new credentials, b follows through set_remote_description.
    assert a.session is not None and b.session is not None
    old = a.session.local_credentials
    new = a.session.restart()
    assert new != old
    assert any(isinstance(e, LocalRestart) and e.reason == "local" for e in a.events)
    assert b.session.set_remote_description(a.session.local_description()) is True
    assert any(isinstance(e, LocalRestart) and e.reason == "remote" for e in b.events)
    a.session.set_remote_description(b.session.local_description())
    with trio.fail_after(10):
        while a.session.agent.generation != 1 or a.session.time_to_nomination is None:
            await trio.sleep(0.05)
    assert a.session.selected_pair is not None
    assert a.session.selected_pair.generation == 1
    await exchange(a, b)


async def test_regather_restarts_sessions(nursery: trio.Nursery) -> None:
    a = await start_node(nursery)
    b = await start_node(nursery)
    await connect(a, b)
    assert a.session is not None and b.session is not None
    a.transport.regather()
    restarts = [e for e in a.events if isinstance(e, LocalRestart)]
    assert [e.reason for e in restarts] == ["regather"]
    with trio.fail_after(10):
        await a.transport.wait_gathered()
    # The old pair carries data meanwhile (make-before-break).
    assert a.session.send(WG + b"still")
    b.session.set_remote_description(a.session.local_description())
    a.session.set_remote_description(b.session.local_description())
    with trio.fail_after(10):
        while a.session.time_to_nomination is None or b.session.time_to_nomination is None:
            await trio.sleep(0.05)
    pair = a.session.selected_pair
    assert pair is not None and pair.generation == 1
    await exchange(a, b)


async def test_following_sessions_take_later_rounds(nursery: trio.Nursery) -> None:
    hosts = [HOST]
    a = await start_node(nursery, hosts=hosts)
    with trio.fail_after(5):
        await a.transport.wait_gathered()
    follower = a.transport.open_session(
        "f", controlling=True, follow_rounds=True, on_event=a.on_event
    )
    plain = a.transport.open_session("p", controlling=True)
    assert follower.local_description().end_of_candidates
    hosts.append("127.0.0.2")  # a new address: the node regathers, its sessions go on
    a.transport.regather(restart_sessions=False)
    with trio.fail_after(5):
        await a.transport.wait_gathered()
    trickled = [e.candidate.host for e in a.events if isinstance(e, LocalCandidate)]
    assert trickled == ["127.0.0.2"]  # only what is new, after end-of-candidates
    assert [c.host for c in follower.local_description().candidates] == [HOST, "127.0.0.2"]
    assert [c.host for c in plain.local_description().candidates] == [HOST]
    follower.follow_rounds = False
    hosts.append("127.0.0.3")
    a.transport.regather(restart_sessions=False)
    with trio.fail_after(5):
        await a.transport.wait_gathered()
    assert len([e for e in a.events if isinstance(e, LocalCandidate)]) == 1
    assert not [e for e in a.events if isinstance(e, LocalRestart)]


async def test_lost_relay_starts_a_new_round(nursery: trio.Nursery, turn_server: int) -> None:
    a = await start_node(nursery, turn=[turn_config(turn_server, "tcp")], turn_timeout=1.0)
    with trio.fail_after(10):
        await a.transport.wait_gathered()
    assert a.transport.round == 1 and len(a.transport.gatherer.relays) == 1
    sa = a.open("b", True)
    SERVER_SCOPES[turn_server].cancel()  # the TCP connection closes: the allocation is lost
    with trio.fail_after(10):
        while a.transport.round < 2 or not a.transport.gathering_complete:
            await trio.sleep(0.02)
    assert a.transport.counters.regathers == 1
    assert a.transport.gatherer.relays == []
    result = a.transport.last_gather
    assert result is not None and [f.kind for f in result.failures] == ["turn"]
    # The session keeps its generation until it restarts; then it joins the new round.
    assert not [e for e in a.events if isinstance(e, LocalRestart)]
    sa.restart()
    assert [c.type for c in sa.local_description().candidates] == [CandidateType.HOST]


async def test_lite_session_uses_host_candidates_only(
    nursery: trio.Nursery, turn_server: int
) -> None:
    lite = await start_node(nursery, turn=[turn_config(turn_server)])
    full = await start_node(nursery)
    with trio.fail_after(10):
        await lite.transport.wait_gathered()
        await full.transport.wait_gathered()
    assert any(c.type is CandidateType.RELAY for c in lite.transport.candidates)
    sl = lite.transport.open_session("full", controlling=False, lite=True)
    lite.session = sl
    sl.on_data = lite.on_data
    desc = sl.local_description()
    assert desc.lite and [c.type for c in desc.candidates] == [CandidateType.HOST]
    sf = full.open("lite", False)  # a full agent facing a lite one becomes controlling
    sf.set_remote_description(desc)
    sl.set_remote_description(sf.local_description())
    with trio.fail_after(10):
        await sf.wait_connected()
        await sl.wait_connected()
    assert sf.agent.controlling
    await exchange(full, lite)


async def test_many_sessions_share_one_socket(nursery: trio.Nursery) -> None:
    hub = await start_node(nursery)
    others = [await start_node(nursery) for _ in range(3)]
    with trio.fail_after(10):
        await hub.transport.wait_gathered()
        sessions = []
        for i, other in enumerate(others):
            await other.transport.wait_gathered()
            mine = hub.transport.open_session(f"peer{i}", controlling=True)
            theirs = other.open("hub", False)
            theirs.set_remote_description(mine.local_description())
            mine.set_remote_description(theirs.local_description())
            sessions.append(mine)
        for s in sessions:
            await s.wait_connected()
    for s, other in zip(sessions, others, strict=True):
        pair = s.selected_pair
        assert pair is not None and pair.remote.address == other.endpoint.local_address
        assert s.send(WG + s.name.encode())
    with trio.fail_after(5):
        while not all(o.data for o in others):
            await trio.sleep(0.02)
    for s, other in zip(sessions, others, strict=True):
        assert other.data[0] == WG + s.name.encode()


async def test_idle_connected_sessions_wake_rarely(nursery: trio.Nursery) -> None:
    a = await start_node(nursery)
    b = await start_node(nursery)
    await connect(a, b)
    with trio.fail_after(10):
        assert a.session is not None
        while a.session.agent.state.value != "completed":
            await trio.sleep(0.05)
    before = a.transport.counters.timer_wakeups
    await trio.sleep(3.0)
    woke = a.transport.counters.timer_wakeups - before
    # Consent checks every 4-6 s (and their answers): well under one wake-up a second.
    assert woke <= 3, woke
    assert a.transport.counters.stale_wakeups == 0


def test_stun_username_scanner() -> None:
    msg = Message.request(
        Method.BINDING,
        b"x" * 12,
        [(AttrType.PRIORITY, 1), (AttrType.USERNAME, "abcd:efgh")],
    )
    assert stun_username(msg.encode(b"k" * 16, fingerprint=True)) == "abcd:efgh"
    assert stun_username(Message.request(Method.BINDING, b"y" * 12).encode()) is None
    wire = bytearray(msg.encode())
    wire[3] += 40  # length beyond the datagram
    assert stun_username(bytes(wire)) is None
    assert stun_username(b"\x00\x01") is None


async def test_unknown_ufrag_and_stray_responses_are_counted(nursery: trio.Nursery) -> None:
    a = await start_node(nursery)
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind((HOST, 0))
    check = Message.request(Method.BINDING, b"z" * 12, [(AttrType.USERNAME, "nobody:else")]).encode(
        b"k" * 16, fingerprint=True
    )
    stray = Message.request(Method.BINDING, b"w" * 12).success([]).encode()
    keepalive = Message.indication(Method.BINDING, b"v" * 12).encode()
    await sock.sendto(check, a.endpoint.local_address)
    await sock.sendto(stray, a.endpoint.local_address)
    await sock.sendto(keepalive, a.endpoint.local_address)
    await sock.sendto(b"\x04\x00\x00\x00garbage", a.endpoint.local_address)
    c = a.transport.counters
    with trio.fail_after(5):
        while (
            c.checks_unknown_ufrag < 1
            or c.responses_unknown < 1
            or c.indications < 1
            or c.direct_data_unrouted < 1
        ):
            await trio.sleep(0.02)
    # A closed session's ufrag is routed no more: its checks count as unknown.
    session = a.open("gone", False)
    ufrag = session.local_credentials.ufrag
    session.close()
    check = Message.request(Method.BINDING, b"u" * 12, [(AttrType.USERNAME, f"{ufrag}:x")]).encode(
        b"k" * 16, fingerprint=True
    )
    await sock.sendto(check, a.endpoint.local_address)
    with trio.fail_after(5):
        while c.checks_unknown_ufrag < 2:
            await trio.sleep(0.02)
    sock.close()


def test_description_round_trips() -> None:
    # The local description is plain RFC 8839 text the peer parses back.
    text = "a=ice-ufrag:abcd\na=ice-pwd:" + "p" * 22 + "\na=ice-options:trickle\n"
    assert IceDescription.parse(text).trickle


class _ScriptedAgent:
    """Just enough of an IceAgent for the timer: a settable next_wakeup, timeouts recorded."""

    def __init__(self, wake: float | None) -> None:
        self.wake = wake
        self.timeouts: list[float] = []
        self.stats = IceStats()

    def next_wakeup(self) -> float | None:
        return self.wake

    def handle_timeout(self, now: float) -> None:
        self.timeouts.append(now)
        self.wake = None

    def pop_transmits(self) -> list[object]:
        return []

    def pop_events(self) -> list[object]:
        return []


async def test_timer_follows_a_deadline_that_moves_later(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A consent response ends a check's retransmission schedule: the agent's next deadline
    moves from the retransmission (0.5 s) to the next check (seconds). The timer must sleep
    until then, not wake at the old deadline for nothing; ``on_timer`` hears each wake."""
    ep = UdpEndpoint.bind(socket.AF_INET, HOST)
    woke: list[float] = []
    transport = IceTransport(
        [ep],
        GatherOptions(),
        host=SystemHost(),
        list_addresses=_lister([HOST]),
        on_timer=lambda: woke.append(trio.current_time()),
    )
    await nursery.start(transport.run)
    t0 = trio.current_time()
    agent = _ScriptedAgent(t0 + 0.5)
    session = IceSession(transport, "x", agent, None, None)  # type: ignore[arg-type]
    transport._sessions.append(session)
    transport._pump(session)
    await trio.sleep(0.1)
    agent.wake = t0 + 5.0
    transport._pump(session)
    await trio.sleep(4.0)
    assert woke == [] and agent.timeouts == []
    await trio.sleep(1.0)
    assert woke == [t0 + 5.0] and agent.timeouts == [t0 + 5.0]
    # A closed session's deadline does not wake the node either.
    agent.wake = trio.current_time() + 1.0
    transport._pump(session)
    transport._forget(session)
    await trio.sleep(2.0)
    assert len(woke) == 1
    ep.close()


async def test_idle_sessions_share_consent_rounds(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A node with several idle peers sends their consent checks in shared rounds: once one
    pair's check goes out, every pair whose check may already go (0.8 × the interval since
    its previous one, RFC 7675 §5.1) sends it on the same wake-up, and the peers answer
    together. Without it each pair would wake the node on its own randomised schedule."""
    hub = await start_node(nursery)
    others = [await start_node(nursery) for _ in range(4)]
    with trio.fail_after(20):
        await hub.transport.wait_gathered()
        sessions = []
        for i, other in enumerate(others):
            await other.transport.wait_gathered()
            mine = hub.transport.open_session(f"peer{i}", controlling=True)
            theirs = other.open("hub", False)
            theirs.set_remote_description(mine.local_description())
            mine.set_remote_description(theirs.local_description())
            sessions.append(mine)
        for s in sessions:
            await s.wait_connected()
    await trio.sleep(20.0)  # the pairs' first checks follow their connects: let them settle
    # Every consent check the hub sends in a minute of idleness, by pair (the time of each).
    checks: list[set[float]] = [set() for _ in sessions]
    end = trio.current_time() + 60.0
    while trio.current_time() < end:
        await trio.sleep(0.1)
        for seen, s in zip(checks, sessions, strict=True):
            sel = s.agent._selection
            assert sel is not None and sel.consent is not None and not sel.expired
            seen.add(round(sel.consent._last_check, 2))
    total = sum(len(seen) for seen in checks)
    rounds = set().union(*checks)
    # Alone, every pair's checks would fall at their own random times: as many times as
    # checks. Shared, most checks go in rounds of several pairs.
    assert len(rounds) <= 0.5 * total, (len(rounds), total, checks)
    assert hub.transport.counters.consent_joined > 0
    for seen in checks:  # RFC 7675 §5.1: never more often than 0.8 × 5 s
        times = sorted(seen)
        assert all(b - a >= 4.0 - 0.011 for a, b in itertools.pairwise(times)), times

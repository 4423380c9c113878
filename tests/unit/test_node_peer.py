"""PeerSession, the node's orchestration, over the real ICE transport on loopback sockets with
fake signaling, tunnel and WireGuard peer: the offer/retry clocks never spin (virtual time),
an unanswered offer is made again only while the peer is online, a pending offer of the peer's
suppresses our own; and two sessions connect through offer/answer, the selected pair becomes
the WireGuard path, a restart swaps it make-before-break, ping measures it, bye clears it."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
import trio.testing

from p2ptun.addr import Address
from p2ptun.config import PeerConfig
from p2ptun.ice import AgentConfig
from p2ptun.ice.consent import ConsentConfig
from p2ptun.keys import generate_private_key, public_key
from p2ptun.net.dispatch import Dispatcher
from p2ptun.net.gather import GatherOptions
from p2ptun.net.ice_transport import IceTransport
from p2ptun.net.system import SystemHost
from p2ptun.net.udp import UdpEndpoint
from p2ptun.node import peer as peer_mod
from p2ptun.node.peer import PeerSession
from p2ptun.signal.client import SignalReceived
from p2ptun.signal.negotiation import Negotiation, NegotiationState
from p2ptun.signal.seal import Answer, Bye, Offer, PeerMessage, Restart


class FakeCore:
    def __init__(self, name: str) -> None:
        self.negotiations = {name: Negotiation(b"\x01" * 32, b"\x02" * 32)}


@dataclass
class FakeSignaling:
    """Records what the peer session signals; with ``deliver`` it also hands each message to
    the other side (as the rendezvous would, later, never from inside the call)."""

    name: str
    deliver: Callable[[PeerMessage], None] | None = None
    offers: list[tuple[str, bool]] = field(default_factory=list)
    sent: list[PeerMessage] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.core = FakeCore(self.name)

    def offer(self, peer: str, description: str, *, restart: bool = False) -> int:
        self.offers.append((description, restart))
        session = len(self.offers)
        if self.deliver is not None:
            message = Restart if restart else Offer
            self.deliver(message(session, description))
        return session

    def send_to(self, peer: str, message: PeerMessage) -> bool:
        self.sent.append(message)
        if self.deliver is not None:
            self.deliver(message)
        return True


class FakeTunnel:
    def __init__(self) -> None:
        self.endpoints: list[Address | None] = []
        self.sources: list[str | None] = []
        self.forgotten = 0
        self.accepts_partial_checksums = True
        self.partial: dict[Any, bool] = {}

    def set_partial_checksums(self, peer: Any, on: bool) -> None:
        self.partial[peer] = on

    def partial_checksums(self, peer: Any) -> bool:
        return self.partial.get(peer, False)

    def set_endpoint(self, peer: Any, endpoint: Address | None, source: str | None = None) -> None:
        self.endpoints.append(endpoint)
        self.sources.append(source)

    def set_sender(self, peer: Any, sender: Any, endpoint: Address | None) -> None:
        self.endpoints.append(endpoint)

    def flush(self, peer: Any = None) -> None:
        pass

    def forget_sessions(self, peer: Any) -> None:
        self.forgotten += 1


class FakeWg:
    rx_bytes = tx_bytes = 0
    last_handshake = None
    next = None

    def __init__(self) -> None:
        self.initiated = 0

    def has_session(self, now: float) -> bool:
        return False

    def initiate_handshake(self, now: float) -> None:
        self.initiated += 1

    def send_keepalive(self, now: float) -> None:
        pass


def loopback_transport(agent_config: AgentConfig | None = None) -> IceTransport:
    """The node's real ICE transport on a loopback socket (host candidates from a fixed list,
    no STUN or TURN servers)."""

    async def addresses() -> list[str]:
        return ["127.0.0.1"]

    endpoint = UdpEndpoint.bind(socket.AF_INET, "127.0.0.1")
    return IceTransport(
        [endpoint],
        GatherOptions(),
        host=SystemHost(),
        list_addresses=addresses,
        # The agents of these tests share this host's loopback address.
        agent_config=agent_config or AgentConfig(allow_local=True),
    )


@dataclass
class Ctx:
    signaling: Any
    transport: IceTransport = field(default_factory=loopback_transport)
    tunnel: Any = field(default_factory=FakeTunnel)
    lite: bool = False
    on_demand_idle: float | None = None  # always connected
    changes: int = 0
    regathers: list[str] = field(default_factory=list)
    deaf: bool = False
    """Drop every STUN datagram that reaches the socket (a NAT that lost the mapping)."""

    def peer_changed(self) -> None:
        self.changes += 1

    def regather(self, reason: str) -> bool:
        self.regathers.append(reason)
        self.transport.regather(restart_sessions=False)
        return True

    @property
    def address(self) -> Address:
        return self.transport.mux.endpoints[0].local_address


@pytest.fixture
async def transports(nursery: trio.Nursery) -> AsyncIterator[Callable[[Ctx], None]]:
    """``start(ctx)``: run the context's transport (and, unless under a MockClock, its
    socket's receive loop); at the end they are stopped, then the sockets closed."""
    scopes: list[trio.CancelScope] = []
    running: list[trio.Event] = []
    endpoints: list[UdpEndpoint] = []
    receive = not isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock)

    async def run(ctx: Ctx, scope: trio.CancelScope, done: trio.Event) -> None:
        try:
            with scope:
                async with trio.open_nursery() as inner:
                    if receive:
                        mux = ctx.transport.mux

                        def on_stun(data: memoryview, source: Address, local: str | None) -> None:
                            if not ctx.deaf:
                                mux.on_stun(data, source, local)

                        dispatcher = Dispatcher(stun=on_stun, channel_data=mux.on_channel_data)
                        inner.start_soon(mux.endpoints[0].receive_loop, dispatcher)
                    await ctx.transport.run()
        finally:
            done.set()

    def start(ctx: Ctx) -> None:
        scope, done = trio.CancelScope(), trio.Event()
        scopes.append(scope)
        running.append(done)
        endpoints.extend(ctx.transport.mux.endpoints)
        nursery.start_soon(run, ctx, scope, done)

    yield start
    for scope in scopes:
        scope.cancel()
    with trio.fail_after(5):
        for done in running:
            await done.wait()
    for endpoint in endpoints:
        endpoint.close()


def make_session(
    name: str = "bob", signaling: FakeSignaling | None = None, ice: AgentConfig | None = None
) -> tuple[PeerSession, Ctx, list[int]]:
    ctx = Ctx(signaling or FakeSignaling(name), loopback_transport(ice))
    cfg = PeerConfig(name, public_key(generate_private_key()), ())
    session = PeerSession(ctx, cfg, FakeWg())  # type: ignore[arg-type]
    ctx.transport.on_gathered = lambda _round: session.round_done()  # as the daemon does
    loops = [0]
    original = session._next_deadline

    def counting(now: float) -> float:
        loops[0] += 1
        return original(now)

    session._next_deadline = counting  # type: ignore[method-assign]
    return session, ctx, loops


async def test_offline_peer_never_spins_and_is_not_reoffered(
    autojump_clock: trio.testing.MockClock, transports: Callable[[Ctx], None]
) -> None:
    session, ctx, loops = make_session()
    transports(ctx)
    async with trio.open_nursery() as nursery:
        await nursery.start(session.run)
        await trio.sleep(1)
        assert len(ctx.signaling.offers) == 1  # the first offer (waits for presence)
        session.on_presence(True)
        await trio.sleep(1)
        session.on_presence(False)  # gone before it answered
        await trio.sleep(300)
        assert len(ctx.signaling.offers) == 1
        assert session.stale_wakeups == 0
        assert loops[0] < 100, loops[0]  # a few timer wake-ups, no busy loop
        # Online but silent: offered again every OFFER_TIMEOUT, never faster.
        session.on_presence(True)
        await trio.sleep(peer_mod.OFFER_TIMEOUT * 3 + 1)
        assert 4 <= len(ctx.signaling.offers) <= 5
        assert session.stale_wakeups == 0
        # Each new offer closed the unanswered one's ICE session: only the latest is open.
        assert len(ctx.transport.sessions) == 1
        nursery.cancel_scope.cancel()
    assert ctx.transport.sessions == []


async def test_pending_offer_of_the_peer_suppresses_ours(
    autojump_clock: trio.testing.MockClock, transports: Callable[[Ctx], None]
) -> None:
    session, ctx, loops = make_session()
    transports(ctx)
    negotiation = ctx.signaling.core.negotiations["bob"]
    negotiation.state = NegotiationState.ANSWERING  # the core accepted the peer's offer
    async with trio.open_nursery() as nursery:
        await nursery.start(session.run)
        await trio.sleep(60)
        assert ctx.signaling.offers == []
        assert session.stale_wakeups == 0 and loops[0] < 200
        nursery.cancel_scope.cancel()


async def test_status_shape_without_path(autojump_clock: trio.testing.MockClock) -> None:
    session, ctx, _ = make_session()
    status = session.status(trio.current_time())
    assert status["state"] == "connecting" and status["path"] is None
    session.on_presence(False)
    assert session.status(trio.current_time())["state"] == "disconnected"
    result = await session.ping(0.5)
    assert result["rtt_ms"] is None and "no path" in result["error"]
    ctx.transport.mux.endpoints[0].close()


async def connected_pair(
    nursery: trio.Nursery, transports: Callable[[Ctx], None], ice: AgentConfig | None = None
) -> tuple[PeerSession, Ctx, PeerSession, Ctx]:
    """alice and bob, each a PeerSession for the other over its own loopback transport,
    offer/answer through a fake rendezvous; returns once both are connected."""
    inbox: trio.MemorySendChannel[tuple[PeerSession, SignalReceived]]
    inbox, outbox = trio.open_memory_channel(100)
    sessions: dict[str, PeerSession] = {}

    def link(me: str, other: str) -> FakeSignaling:
        def deliver(message: PeerMessage) -> None:
            with contextlib.suppress(trio.BrokenResourceError, trio.WouldBlock):  # test over
                inbox.send_nowait((sessions[other], SignalReceived(me, message)))

        return FakeSignaling(other, deliver)

    alice, actx, _ = make_session("bob", link("alice", "bob"), ice)  # alice's view of bob
    bob, bctx, _ = make_session("alice", link("bob", "alice"), ice)  # bob's view of alice
    sessions.update(alice=alice, bob=bob)
    # bob waits for alice's offer (no glare here: the signaling core's business).
    bctx.signaling.core.negotiations["alice"].state = NegotiationState.ANSWERING

    async def rendezvous() -> None:
        async for target, received in outbox:
            target.on_signal(received)

    nursery.start_soon(rendezvous)
    for ctx in (actx, bctx):
        transports(ctx)
    for session in (alice, bob):
        await nursery.start(session.run)
        session.on_presence(True)

    def connected() -> bool:
        now = trio.current_time()
        return alice.state(now) == "connected" and bob.state(now) == "connected"

    with trio.fail_after(10):
        while not connected():
            await trio.sleep(0.02)
    return alice, actx, bob, bctx


async def test_offer_answer_path_restart_ping_and_bye(
    nursery: trio.Nursery, transports: Callable[[Ctx], None]
) -> None:
    alice, actx, bob, bctx = await connected_pair(nursery, transports)
    assert alice.path is not None and bob.path is not None
    assert actx.tunnel.endpoints[-1] == bctx.address
    assert bctx.tunnel.endpoints[-1] == actx.address
    # The data leaves from the selected pair's local base.
    assert actx.tunnel.sources[-1] == alice.path.base[0] == actx.address[0]
    # The offerer (controlling) starts the WireGuard handshake, the answerer does not.
    assert (alice.wg.initiated, bob.wg.initiated) == (1, 0)  # type: ignore[attr-defined]
    assert alice.status(trio.current_time())["path"] == "direct"
    pinged = await alice.ping(3.0)
    assert pinged["rtt_ms"] is not None and pinged["path"] == "direct", pinged

    # Restart (make-before-break): a new attempt, the old one retired once the new selects.
    first = alice.active
    assert first is not None
    alice.restart("test")
    assert alice.current is not None and alice.active is first
    with trio.fail_after(10):
        while alice.active is first or bob.active is None or bob.retired == []:
            await trio.sleep(0.02)
    assert alice.retired == [first] and first.retire_at is not None
    assert actx.tunnel.endpoints[-1] == bctx.address
    assert len(actx.tunnel.endpoints) == 2  # the path was set again, never cleared
    assert actx.signaling.offers[-1][1] is True  # sent as a Restart

    # Bye: the peer's path is cleared at once, and the WireGuard session (its keys for us
    # went with it) forgotten.
    assert bctx.tunnel.forgotten == 0
    alice.close("test over")
    with trio.fail_after(5):
        while bob.path is not None:
            await trio.sleep(0.02)
    assert isinstance(actx.signaling.sent[-1], Bye)
    assert bctx.tunnel.endpoints[-1] is None
    assert bctx.tunnel.forgotten == 1
    assert actx.transport.sessions == []
    # bob offers again (his retry a second after the goodbye); alice, gone, does not answer
    # it: a session opened now would die unannounced with her process.
    bctx.signaling.core.negotiations["alice"].state = NegotiationState.IDLE
    bob._offer("retry after the goodbye")
    await trio.sleep(0.3)
    assert isinstance(actx.signaling.sent[-1], Bye)
    assert alice.current is None and alice.active is None and actx.transport.sessions == []


async def test_data_plane_features_ride_on_offer_and_answer(
    nursery: trio.Nursery, transports: Callable[[Ctx], None]
) -> None:
    """Each side lists partial-csum in its offer/answer when its TUN completes checksums,
    and the other turns partial checksums on for it; a restart answered without the line
    (the peer's TUN lost its virtio headers, or an older peer) turns them off again."""
    alice, actx, bob, bctx = await connected_pair(nursery, transports)
    assert "a=x-p2ptun-features:partial-csum" in actx.signaling.offers[-1][0]
    assert actx.tunnel.partial == {alice.wg: True}
    assert bctx.tunnel.partial == {bob.wg: True}
    bctx.tunnel.accepts_partial_checksums = False
    first = alice.active
    alice.restart("test")
    with trio.fail_after(10):
        while alice.active is first:
            await trio.sleep(0.02)
    answer = next(m for m in reversed(bctx.signaling.sent) if isinstance(m, Answer))
    assert "x-p2ptun-features" not in answer.description
    assert actx.tunnel.partial == {alice.wg: False}
    assert bctx.tunnel.partial == {bob.wg: True}  # alice still completes bob's


async def test_consent_loss_regathers_and_restarts(
    nursery: trio.Nursery, transports: Callable[[Ctx], None]
) -> None:
    # Consent checks every 0.2 s: two unanswered ones make the pair suspect within a second.
    ice = AgentConfig(
        consent=ConsentConfig(interval=0.2, jitter=0.0, timeout=30.0), allow_local=True
    )
    alice, actx, _bob, bctx = await connected_pair(nursery, transports, ice)
    offers = len(actx.signaling.offers)
    offer = actx.signaling.offer
    gathered_when_offered: list[bool] = []

    def recording_offer(peer: str, description: str, *, restart: bool = False) -> int:
        gathered_when_offered.append(actx.transport.gathering_complete)
        return offer(peer, description, restart=restart)

    actx.signaling.offer = recording_offer  # type: ignore[method-assign]
    # bob stops hearing STUN (its NAT lost the mapping, say): alice's consent checks go
    # unanswered, though the old pair keeps carrying data meanwhile.
    bctx.deaf = True
    with trio.fail_after(10):
        while not actx.regathers:
            await trio.sleep(0.02)
    # First the node gathers again; the restart waits for that round (it may find that our
    # NAT moved), then goes out as a Restart: make-before-break, the old pair still in use.
    assert actx.regathers[0] == "consent suspect"
    round_number = actx.transport.round
    with trio.fail_after(5):
        while len(actx.signaling.offers) == offers:
            await trio.sleep(0.01)
    assert gathered_when_offered == [True] and actx.transport.round == round_number
    assert actx.signaling.offers[-1][1] is True
    assert alice.path is not None and alice.current is not None

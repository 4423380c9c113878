"""The rendezvous' timers under virtual time: the signaling core and both trio shells wake only
when a deadline is due (a silent node's idle timeout, an unregistered connection's handshake
timeout, a TURN expiry), never on a tick, and those deadlines still hold to the instant.

The core tests inject ``now``; the shell tests run real loopback sockets under trio's
``MockClock`` (autojump), so ten idle minutes take no time."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing
from loopback_turn import free_port
from test_signal_client import Net, make_server, newkey
from test_turn_server_shell import HOST, REALM, turn_settings

from p2ptun.config import StunServerSettings
from p2ptun.keys import generate_private_key, public_key
from p2ptun.net.signaling import SignalingClient
from p2ptun.net.system import SystemHost
from p2ptun.rendezvous.signaling import SignalingServer
from p2ptun.rendezvous.store import MemoryStore
from p2ptun.rendezvous.stun_turn import StunTurnService
from p2ptun.signal.backoff import BackoffPolicy
from p2ptun.signal.client import ClientTimers, PresenceChanged
from p2ptun.signal.hub import ServerLimits, SignalingServerCore
from p2ptun.stun import AttrType, Message, MessageClass, Method, long_term_key
from p2ptun.turn.server import DEFAULT_LIFETIME

IDLE = ServerLimits().idle_timeout
HANDSHAKE = ServerLimits().handshake_timeout


class CountingCore(SignalingServerCore):
    """Counts the timer runs that found a deadline due (what a tick-driven core would do
    every second)."""

    due_runs = 0

    def handle_timeout(self, now: float) -> None:
        wake = self.next_wakeup()
        if wake is not None and wake <= now:
            self.due_runs += 1
        super().handle_timeout(now)


def counting_net() -> tuple[Net, CountingCore]:
    plain = make_server()
    core = CountingCore(plain._private, plain.store, rng=plain.rng, wall_clock=plain.wall_clock)
    return Net(core), core


# -- the core, time injected -------------------------------------------------------------------


def test_idle_pinging_nodes_never_make_the_core_due() -> None:
    net, core = counting_net()
    ka, kb = newkey(), newkey()
    net.add("alice", ka, {"bob": public_key(kb)})
    net.add("bob", kb, {"alice": public_key(ka)})
    net.run_until(600.0)
    assert core.online == {"alice", "bob"}
    assert core.due_runs == 0 and core.counters.timeouts == 0
    # The wake-up is the oldest node's idle deadline: within a Ping interval of now + 60 s.
    wake = core.next_wakeup()
    assert wake is not None and net.now + IDLE - ClientTimers().ping_interval <= wake
    assert wake <= net.now + IDLE


def test_silent_node_is_dropped_at_its_deadline_exactly() -> None:
    net, core = counting_net()
    ka, kb = newkey(), newkey()
    net.add("alice", ka, {"bob": public_key(kb)}, timers=ClientTimers(dead_after=1000.0))
    bob = net.add("bob", kb, {"alice": public_key(ka)})
    net.run_until(100.0)
    net.blackholed.add("alice")
    net.run_until(101.0)
    deadline = core.next_wakeup()  # alice's: bob keeps pinging
    assert deadline is not None and 100.0 - 25.0 < deadline - IDLE <= 100.0
    net.run_until(deadline - 1e-6)
    assert "alice" in core.online and core.due_runs == 0
    net.run_until(deadline)
    assert "alice" not in core.online and core.due_runs == 1
    assert PresenceChanged("alice", False) in bob.events


def test_unregistered_connection_is_closed_at_the_handshake_deadline() -> None:
    core = make_server()
    assert core.next_wakeup() is None
    assert core.connection_made(1, 5.0)
    assert core.connection_made(2, 7.0)
    assert core.next_wakeup() == 5.0 + HANDSHAKE
    core.handle_timeout(5.0 + HANDSHAKE - 1e-6)
    assert not core.should_close(1)
    core.handle_timeout(5.0 + HANDSHAKE)
    assert core.should_close(1) and not core.should_close(2)
    assert core.next_wakeup() == 7.0 + HANDSHAKE
    core.handle_timeout(7.0 + HANDSHAKE)
    assert core.should_close(2) and core.next_wakeup() is None
    core.connection_lost(1, 20.0)
    core.connection_lost(2, 20.0)
    assert core.connection_count == 0 and core.next_wakeup() is None


# -- the signaling shell under MockClock -----------------------------------------------------


@pytest.fixture
async def signaling(nursery: trio.Nursery) -> AsyncIterator[SignalingServer]:
    rv_key = generate_private_key()
    core = SignalingServerCore(
        rv_key, MemoryStore(True), rng=lambda n: bytes(n), wall_clock=lambda: 1.8e9
    )
    server = SignalingServer(SystemHost(), core, ("127.0.0.1", 0))
    server.rv_key = rv_key  # type: ignore[attr-defined]
    await nursery.start(server.run)
    yield server
    await server.aclose()


async def test_signaling_shell_sleeps_until_a_deadline(
    signaling: SignalingServer, autojump_clock: trio.testing.MockClock
) -> None:
    server = signaling
    assert server.address is not None
    await trio.sleep(600)
    assert server.timer_runs == 0
    # A connection that never says anything is closed at the handshake deadline: the timer,
    # asleep with nothing due, was moved to it.
    stream = await trio.open_tcp_stream(*server.address)
    opened = trio.current_time()
    with trio.fail_after(HANDSHAKE + 1):
        assert await stream.receive_some(100) == b""
    assert trio.current_time() - opened == pytest.approx(HANDSHAKE, abs=0.01)
    assert server.timer_runs == 1
    await stream.aclose()
    await trio.sleep(600)
    assert server.timer_runs == 1


async def test_signaling_shell_idle_registered_nodes_wake_nothing(
    nursery: trio.Nursery,
    signaling: SignalingServer,
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = signaling
    assert server.address is not None
    clients = []
    ka, kb = generate_private_key(), generate_private_key()
    for name, key, peer, peer_key in (("alice", ka, "bob", kb), ("bob", kb, "alice", ka)):
        c = SignalingClient(
            SystemHost(),
            name=name,
            private_key=key,
            rendezvous=server.address,
            rendezvous_key=public_key(server.rv_key),  # type: ignore[attr-defined]
            peers={peer: public_key(peer_key)},
            backoff=BackoffPolicy(base=0.05, cap=0.5),
        )
        await nursery.start(c.run)
        clients.append(c)
    with trio.fail_after(10):
        while not all(c.ready for c in clients):
            await trio.sleep(0.01)
    await trio.sleep(600)
    assert server.core.online == {"alice", "bob"}
    assert server.timer_runs == 0 and server.core.counters.timeouts == 0
    for c in clients:
        c.stop()


# -- the STUN/TURN shell under MockClock ---------------------------------------------------


async def test_turn_shell_sleeps_until_the_allocation_expires(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    port = free_port()
    svc = await StunTurnService.bind(
        SystemHost(), StunServerSettings(((HOST, port),)), turn_settings()
    )
    nursery.start_soon(svc.serve)
    try:
        await trio.sleep(600)
        assert svc.timer_runs == 0
        client = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await client.bind((HOST, 0))
        request = Message.request(Method.ALLOCATE, b"1" * 12, [(AttrType.REQUESTED_TRANSPORT, 17)])
        await client.sendto(request.encode(), (HOST, port))
        challenge = Message.decode((await client.recvfrom(2048))[0])
        assert challenge.nonce is not None
        request = Message.request(Method.ALLOCATE, b"2" * 12, [(AttrType.REQUESTED_TRANSPORT, 17)])
        request.add(AttrType.USERNAME, "alice").add(AttrType.REALM, REALM)
        request.add(AttrType.NONCE, challenge.nonce)
        await client.sendto(request.encode(long_term_key("alice", REALM, "pw")), (HOST, port))
        response = Message.decode((await client.recvfrom(2048))[0])
        allocated_at = trio.current_time()
        assert response.message_class == MessageClass.SUCCESS, response
        assert svc.turn is not None and len(svc.turn.allocations) == 1
        await trio.sleep_until(allocated_at + DEFAULT_LIFETIME - 0.01)
        assert len(svc.turn.allocations) == 1 and svc.timer_runs == 0
        await trio.sleep_until(allocated_at + DEFAULT_LIFETIME + 0.01)
        assert len(svc.turn.allocations) == 0 and svc.timer_runs == 1
        assert svc.counters.relays_closed == 1
        await trio.sleep(600)
        assert svc.timer_runs == 1
        client.close()
    finally:
        svc.close()

"""Peers connected on demand (``[ice] on_demand``), two real daemons in the in-memory lab under
virtual time: no tunnel until the first packet, the first packet's latency, the idle close on
both sides, a new connection from the other side's traffic, ``p2ptun ping`` as demand, and an
always-on peer that keeps an on-demand node connected."""

from __future__ import annotations

import dataclasses

import trio
import trio.testing

from p2plab.memlab import MemoryLab, MemoryNode

IDLE = 30


def on_demand(node: MemoryNode) -> None:
    node.config = dataclasses.replace(
        node.config, ice=dataclasses.replace(node.config.ice, on_demand=True, idle_timeout=IDLE)
    )


def peer(node: MemoryNode) -> dict[str, object]:
    entry: dict[str, object] = node.daemon.status()["peers"][0]
    return entry


def idle(node: MemoryNode) -> bool:
    entry = peer(node)
    return entry["state"] == "disconnected" and entry["reason"] == "idle: connects on demand"


async def test_on_demand_connects_at_the_first_packet_and_closes_when_idle(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lab = MemoryLab(seed=5)
    alice, bob = lab.pair("prc", "prc")
    for node in (alice, bob):
        on_demand(node)
    async with trio.open_nursery() as nursery:
        await lab.start(nursery)
        await lab.wait_until(lambda: idle(alice) and idle(bob), 10)
        await trio.sleep(20)  # nobody offers without traffic
        assert idle(alice) and idle(bob)
        sessions = alice.daemon.peers["bob"], bob.daemon.peers["alice"]
        assert [s.counters.on_demand_connects for s in sessions] == [0, 0]

        # The first packet: signaling, ICE and the handshake, then the echo.
        async with trio.open_nursery() as stream:
            pinger = lab.pinger(alice, bob, interval=0.02)
            start = trio.current_time()
            await stream.start(pinger.run)
            first = await lab.wait_until(lambda: pinger.replies, 10)
            assert peer(alice)["state"] == "connected" and peer(alice)["path"] == "direct"
            await trio.sleep(5)
            stream.cancel_scope.cancel()
        assert sessions[0].counters.on_demand_connects == 1
        assert pinger.longest_gap(start + first, start + first + 5) < 0.1

        # Idle for the timeout: closed on both sides, WireGuard keys forgotten, and it stays so.
        closed = await lab.wait_until(lambda: idle(alice) and idle(bob), IDLE + 10)
        assert IDLE - 1 <= closed <= IDLE + 2, closed
        assert sum(s.counters.idle_closes for s in sessions) == 1
        for s in sessions:
            assert not s.wg.has_session(trio.current_time())
        await trio.sleep(3 * IDLE)
        assert idle(alice) and idle(bob)
        assert sum(s.counters.idle_closes for s in sessions) == 1

        # bob's traffic opens it again.
        async with trio.open_nursery() as stream:
            back = lab.pinger(bob, alice, interval=0.02)
            await stream.start(back.run)
            again = await lab.wait_until(lambda: back.replies, 10)
            stream.cancel_scope.cancel()
        assert sessions[1].counters.on_demand_connects == 1

        # ``p2ptun ping`` is demand too: once idle again, a ping connects and is answered.
        await lab.wait_until(lambda: idle(alice) and idle(bob), IDLE + 10)
        pinged = await sessions[0].ping(5.0)
        assert pinged["rtt_ms"] is not None and pinged["path"] == "direct", pinged
        assert sessions[0].counters.on_demand_connects == 2
        nursery.cancel_scope.cancel()
    print(
        f"first packet answered after {first:.3f} s, closed {closed:.1f} s after the last "
        f"data, again after {again:.3f} s (virtual)"
    )


async def test_an_always_on_peer_keeps_an_on_demand_node_connected(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Only alice is on demand: bob connects at start, and alice never closes the idle
    tunnel (bob would reopen it at once)."""
    lab = MemoryLab(seed=6)
    alice, bob = lab.pair("cone", "cone")
    on_demand(alice)
    async with trio.open_nursery() as nursery:
        await lab.start(nursery)
        await lab.wait_until(lambda: peer(alice)["state"] == "connected", 15)
        await trio.sleep(3 * IDLE)
        assert peer(alice)["state"] == "connected" and peer(bob)["state"] == "connected"
        assert alice.daemon.peers["bob"].counters.idle_closes == 0
        nursery.cancel_scope.cancel()

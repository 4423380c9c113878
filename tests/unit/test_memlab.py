"""A rendezvous and two real node daemons behind simulated NATs, in one process, under virtual
time (p2plab.memlab): they connect, a ping stream crosses the tunnel, a NAT changes its public
address, and the outage is measured in virtual seconds.

These are the daemons' own composition roots on in-memory ports (docs/ARCHITECTURE.md, "ports
and fakes"): the signaling, ICE, TURN, WireGuard and data-path code that runs in the NAT lab
runs here too, only the sockets, the TUN device, netlink and the clocks are simulated.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
import trio.testing

from p2plab.memlab import RENDEZVOUS_IP, MemoryLab, MemoryNode


async def test_two_nodes_connect_ping_and_survive_a_renumbered_nat(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lab = MemoryLab()
    alice, bob = lab.pair("prc", "prc")
    async with trio.open_nursery() as nursery:
        await lab.start(nursery)
        pinger = lab.pinger(alice, bob)
        started = trio.current_time()
        await nursery.start(pinger.run)
        connect = await lab.wait_until(lambda: pinger.replies, 15)
        # Direct: both NATs map endpoint-independently, so hole punching works.
        status = alice.daemon.status()["peers"][0]
        assert status["state"] == "connected" and status["path"] == "direct"
        assert status["remote_candidate"]["address"].startswith("198.51.100.12:")
        assert connect < 5, f"first reply {connect:.2f} s after start"
        assert bob.daemon.status()["peers"][0]["state"] == "connected"
        # The overlay packets went through the NATs, not the relay.
        assert lab.network.delivered > 0
        await trio.sleep(5)
        before = trio.current_time()
        assert pinger.longest_gap(started + connect, before) < 0.2

        # bob's ISP renumbers his router: every mapping is gone, the tunnel must recover.
        bob.router.renumber("198.51.100.112")
        await trio.sleep(30)
        after = trio.current_time()
        outage = pinger.longest_gap(before, after)
        assert outage <= 2.0, f"no traffic for {outage:.1f} s after the NAT renumbered"
        status = alice.daemon.status()["peers"][0]
        assert status["state"] == "connected"
        assert status["remote_candidate"]["address"].startswith("198.51.100.112:")
        # Replies flow again at the ping rate after the recovery.
        recent = [t for t in pinger.replies if t > after - 5]
        assert len(recent) >= 90
        for node in (alice, bob):
            node.daemon.stop()
        await lab.wait_until(lambda: not alice.host.tuns and not bob.host.tuns, 10)
        nursery.cancel_scope.cancel()
    print(f"connect {connect:.2f} s, outage after renumbering {outage:.2f} s (virtual)")


async def test_symmetric_nat_pair_is_relayed_through_the_rendezvous(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lab = MemoryLab(seed=3)
    alice, bob = lab.pair("sym", "sym")
    async with trio.open_nursery() as nursery:
        await lab.start(nursery)
        await lab.ping_stream(nursery, alice, bob, replies=10, timeout=20)
        status = alice.daemon.status()["peers"][0]
        assert status["path"] == "relay"
        assert status["local_candidate"]["type"] == "relay"
        assert status["local_candidate"]["address"].startswith(f"{RENDEZVOUS_IP}:")
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("nat", ["cone", "sym"])
def test_the_lab_is_deterministic(nat: str) -> None:
    """Same seed, same run: a failing scenario can be replayed exactly (each run in its own
    trio run and virtual clock, so that both start at time 0)."""

    async def first_reply() -> float:
        lab = MemoryLab(seed=11)
        alice, bob = lab.pair("cone", nat)
        async with trio.open_nursery() as nursery:
            await lab.start(nursery)
            pinger = await lab.ping_stream(nursery, alice, bob)
            nursery.cancel_scope.cancel()
        return pinger.replies[0]

    runs = [trio.run(first_reply, clock=trio.testing.MockClock(autojump_threshold=0)) for _ in "ab"]
    assert runs[0] == runs[1]


Event = Callable[[MemoryLab, MemoryNode, MemoryNode], None]

#: Network events: the NAT types of the two sites, the event, and the longest gap it may cause
#: here (virtual time, 5 ms one way; what makes it up is in the comments).
EVENTS: dict[str, tuple[str, str, Event, float]] = {
    # Every mapping gone, the peer's port-restricted NAT lets nothing new in: the quiet path
    # (1 s), its probe (0.3 s), a restart through the rendezvous (~0.15 s).
    "nat-renumbered": ("prc", "prc", lambda lab, a, b: b.router.renumber("198.51.100.112"), 1.6),
    # bob's side goes quiet (1 s); its keepalive from the new mapping lets alice roam at once.
    "symmetric-nat-flushed": ("cone", "sym", lambda lab, a, b: b.router.flush(), 1.2),
    # The same through alice's relay: she re-points it to bob's new mapping.
    "relayed-symmetric-nat-flushed": ("sym", "sym", lambda lab, a, b: b.router.flush(), 1.2),
    # alice's own NAT forgets her: her allocation, which carried the data, is gone with it.
    # Quiet (1 s), probe (0.3 s), and the standby through bob's relay carries the data; bob
    # follows through his relay at once.
    "relaying-symmetric-nat-flushed": ("sym", "sym", lambda lab, a, b: a.router.flush(), 1.4),
    "port-restricted-nat-flushed": ("prc", "prc", lambda lab, a, b: b.router.flush(), 1.2),
    # The netlink event restarts ICE at once; the path itself survives (same NAT mapping).
    "host-renumbered": ("prc", "prc", lambda lab, a, b: b.host.renumber("10.0.2.77"), 0.3),
    # Quiet (1 s) and probe (0.3 s), then the standby relay carries the data.
    "direct-path-black-holed": ("cone", "cone", lambda lab, a, b: lab.block_direct(a, b), 1.5),
}


@pytest.mark.parametrize("event", sorted(EVENTS))
async def test_traffic_is_back_within_two_seconds_after(
    autojump_clock: trio.testing.MockClock, event: str
) -> None:
    """The longest gap in a 50 ms ping stream across the tunnel stays within 2 s after each
    event, within the event's own bound here (virtual time, exact): fast failure detection on
    the selected pair (the path went quiet → a keepalive, and a burst of consent checks → lost
    within a fraction of a second), roaming where the peer's packets come from a new address
    (directly or through our relay), else a regather and an ICE restart (the relay carries
    data from its first valid check)."""
    nat_a, nat_b, happen, bound = EVENTS[event]
    lab = MemoryLab(seed=1)
    alice, bob = lab.pair(nat_a, nat_b)
    async with trio.open_nursery() as nursery:
        await lab.start(nursery)
        pinger = await lab.ping_stream(nursery, alice, bob)
        await trio.sleep(10)
        before = trio.current_time()
        happen(lab, alice, bob)
        await trio.sleep(30)
        outage = pinger.longest_gap(before, trio.current_time())
        assert outage <= bound <= 2.0, f"{event}: no traffic for {outage:.2f} s"
        assert alice.daemon.status()["peers"][0]["state"] == "connected"
        nursery.cancel_scope.cancel()


async def test_black_holed_direct_path_fails_over_to_the_standby_and_comes_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """While the direct pair is selected the relayed pair is kept valid (the standby): when the
    direct path drops everything the data moves to the relay within the detection interval,
    with no gathering or signaling; when the direct path heals the tunnel moves back to it,
    not at once (a flapping path must not flap the tunnel) but at the next direct retry."""
    lab = MemoryLab(seed=1)
    alice, bob = lab.pair("cone", "cone")
    async with trio.open_nursery() as nursery:
        await lab.start(nursery)
        pinger = await lab.ping_stream(nursery, alice, bob)
        await trio.sleep(10)
        session = alice.daemon.peers["bob"]
        assert session.active is not None
        standby = session.active.agent.standby_pair(trio.current_time())
        assert standby is not None and standby.relayed
        before = trio.current_time()
        lab.block_direct(alice, bob)
        await lab.wait_until(lambda: alice.daemon.status()["peers"][0]["path"] == "relay", 5)
        moved = trio.current_time() - before
        await trio.sleep(20)
        assert pinger.longest_gap(before, trio.current_time()) <= 1.5
        assert moved <= 1.5, f"on the relay {moved:.2f} s after the direct path failed"
        healed = trio.current_time()
        lab.network.blocked = None
        await lab.wait_until(lambda: alice.daemon.status()["peers"][0]["path"] == "direct", 60)
        back = trio.current_time() - healed
        assert 1.0 <= back <= 45, f"back on the direct path {back:.1f} s after it healed"
        assert pinger.longest_gap(healed, trio.current_time()) < 0.2
        nursery.cancel_scope.cancel()


async def test_a_node_without_traffic_notices_its_nat_renumbered_by_its_keepalive_binding(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Its peer is offline, so no path or consent check can tell: the keepalive Binding to the
    STUN server (every 25 s) sees the new public address and the node regathers at once, so
    that its candidates are right when the peer comes back."""
    lab = MemoryLab(seed=2)
    alice, bob = lab.pair("prc", "prc")
    async with trio.open_nursery() as nursery:
        await lab.start(nursery)
        transport = bob.daemon.transport

        def srflx() -> list[str]:
            return [c.address[0] for c in transport.candidates if c.type.value == "srflx"]

        await lab.wait_until(lambda: srflx() == ["198.51.100.12"], 10)
        alice.daemon.stop()
        await lab.wait_until(lambda: bob.daemon.status()["peers"][0]["state"] != "connected", 60)
        gatherer = transport.gatherer
        moves, rounds = gatherer.keepalive_moves, gatherer.rounds
        bob.router.renumber("198.51.100.112")
        renumbered = trio.current_time()
        await lab.wait_until(lambda: srflx() == ["198.51.100.112"], 30)
        noticed = trio.current_time() - renumbered
        assert noticed <= 25 + 3, f"new candidates {noticed:.1f} s after the renumbering"
        assert gatherer.keepalive_moves == moves + 1 and gatherer.rounds > rounds
        # The keepalive costs one request per interval: a minute brings two or three.
        sent = gatherer.keepalives
        await trio.sleep(60)
        assert 2 <= gatherer.keepalives - sent <= 3
        nursery.cancel_scope.cancel()


async def test_a_quiet_path_always_sends_a_keepalive_and_probes_at_most_once_per_holdoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Data that stopped arriving (a bursty flow) probes the path at most once per 5 s, but
    every quiet spell sends one keepalive: after a NAT gave us a new mapping it is what lets
    the peer roam to it in one trip, probe or not. Data left unanswered always probes."""
    lab = MemoryLab(seed=1)
    alice, bob = lab.pair("cone", "cone")
    async with trio.open_nursery() as nursery:
        await lab.start(nursery)
        pinger = lab.pinger(alice, bob)
        async with trio.open_nursery() as pings:
            await pings.start(pinger.run)
            await lab.wait_until(lambda: pinger.replies, 15)
            pings.cancel_scope.cancel()
        await trio.sleep(10)
        session = bob.daemon.peers["alice"]
        assert session.active is not None
        stats = session.active.agent.stats
        counters = bob.daemon.tunnel.device.counters
        probes, held, keepalives = (
            stats.consent_probes,
            stats.consent_probes_held_off,
            counters.keepalives_sent,
        )
        session.path_quiet(unanswered=False)
        await trio.sleep(1)
        session.path_quiet(unanswered=False)  # 1 s later: the probe is held off
        await trio.sleep(1)
        assert (stats.consent_probes, stats.consent_probes_held_off) == (probes + 1, held + 1)
        assert counters.keepalives_sent == keepalives + 2
        session.path_quiet(unanswered=True)  # data unanswered: probed at once
        assert stats.consent_probes == probes + 2
        await trio.sleep(5.1)
        session.path_quiet(unanswered=False)  # 5 s after the last probe: probed again
        assert stats.consent_probes == probes + 3
        nursery.cancel_scope.cancel()


async def test_a_path_that_needs_no_signaling_recovers_while_the_rendezvous_is_down(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """bob's symmetric NAT forgets him while the rendezvous is down: the path comes back by
    roaming (his keepalive from the new mapping), no signaling needed."""
    lab = MemoryLab(seed=1)
    alice, bob = lab.pair("cone", "sym")
    async with trio.open_nursery() as nursery:
        await lab.start(nursery)
        pinger = await lab.ping_stream(nursery, alice, bob)
        await trio.sleep(5)
        lab.stop_rendezvous()
        await trio.sleep(2)
        before = trio.current_time()
        bob.router.flush()
        await trio.sleep(20)
        outage = pinger.longest_gap(before, trio.current_time())
        assert outage <= 1.2, f"no traffic for {outage:.2f} s"
        assert alice.daemon.status()["peers"][0]["path"] == "direct"
        nursery.cancel_scope.cancel()


async def test_a_path_that_needs_signaling_recovers_as_soon_as_the_rendezvous_is_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """bob's port-restricted NAT changes its address while the rendezvous is down: only new
    offers can repair that. The restart waits, and the signaling client, which would back off
    towards 30 s, tries every second while it waits: once the rendezvous is back, traffic
    flows within 2 s."""
    lab = MemoryLab(seed=1)
    alice, bob = lab.pair("prc", "prc")
    async with trio.open_nursery() as nursery:
        await lab.start(nursery)
        pinger = await lab.ping_stream(nursery, alice, bob)
        await trio.sleep(5)
        lab.stop_rendezvous()
        await trio.sleep(40)  # both clients back off (their attempts are refused)
        bob.router.renumber("198.51.100.112")
        await trio.sleep(20)
        back = trio.current_time()
        await lab.start_rendezvous(nursery)
        await trio.sleep(20)
        first = pinger.first_reply_after(back)
        assert first is not None, "no traffic after the rendezvous came back"
        assert first - back <= 2.0, f"traffic back {first - back:.2f} s after the rendezvous"
        assert pinger.longest_gap(first, trio.current_time()) < 0.2
        nursery.cancel_scope.cancel()


async def _serve(
    lab: MemoryLab, nursery: trio.Nursery, node: MemoryNode, *, new_process: bool
) -> trio.CancelScope:
    """Run ``node``'s daemon (a new one if ``new_process``) in a cancel scope of its own
    (returned), so that a test can crash it: cancelled while its site is cut off, it says
    no goodbye."""
    scope = trio.CancelScope()

    async def serve(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await node.daemon.serve(task_status=task_status)

    if new_process:
        lab.new_daemon(node)  # a new daemon with nothing of the old one
    await nursery.start(serve)
    return scope


@pytest.mark.parametrize("crash", [False, True], ids=["stopped", "crashed"])
async def test_a_restarted_peer_gets_traffic_within_a_second_of_its_start(
    autojump_clock: trio.testing.MockClock, crash: bool
) -> None:
    """bob's daemon is stopped (it says goodbye: alice forgets the WireGuard session she had
    with it) or crashes (no goodbye: alice still has a session whose keys went with the old
    process, and bob, controlled, starts the handshake alice does not). Either way a new
    daemon of bob's gets alice's pings within a second or two of its start — before, alice
    went on sending on the dead session until WireGuard's 15 s timer (13 s here)."""
    lab = MemoryLab(seed=1)
    alice, bob = lab.pair("cone", "cone")
    async with trio.open_nursery() as nursery:
        await lab.start(nursery, nodes=[alice])
        first = await _serve(lab, nursery, bob, new_process=False)
        pinger = await lab.ping_stream(nursery, alice, bob)
        await trio.sleep(5)
        if crash:
            bob_ip = bob.router.public_ip
            lab.network.blocked = lambda src, dst: bob_ip in (src[0], dst[0])
            first.cancel()
            await trio.sleep(0.5)
            lab.network.blocked = lambda src, dst: False
        else:
            bob.daemon.stop()
            await lab.wait_until(lambda: not bob.host.tuns, 5)
        await trio.sleep(2)
        started = trio.current_time()
        await _serve(lab, nursery, bob, new_process=True)
        await trio.sleep(20)
        back = pinger.first_reply_after(started)
        assert back is not None, "no traffic to the restarted daemon"
        # Stopped: a connect (0.09 s here). Crashed: bob waits HANDSHAKE_WAIT_MIN (1 s) for
        # alice's handshake before starting one.
        assert back - started <= (1.3 if crash else 0.3), f"{back - started:.2f} s"
        assert pinger.longest_gap(back, trio.current_time()) < 0.2
        nursery.cancel_scope.cancel()

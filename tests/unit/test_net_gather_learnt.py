"""TURN servers learnt at run time (a peer relay's grant) and relays ranked by RTT, on
loopback against our embedded TURN server."""

from __future__ import annotations

import dataclasses

import trio
from loopback_turn import serve_turn
from test_net_gather import start, turn

from p2ptun.ice.candidate import CandidateType
from p2ptun.net.gather import MAX_TURN_SERVERS, GatherOptions


async def test_a_learnt_turn_server_joins_the_next_round(nursery: trio.Nursery) -> None:
    first, scope1 = await serve_turn(nursery, relay_ports=(45000, 45499))
    second, scope2 = await serve_turn(nursery, relay_ports=(45500, 45999))
    try:
        g = await start(nursery, GatherOptions(turn=(turn(first),)))
        result = await g.gather()
        assert [c.type for c in result.candidates].count(CandidateType.RELAY) == 1
        assert g.add_turn_server(turn(second))
        assert [s.url for s in g.relay_status()] == [turn(first).url, turn(second).url]
        result = await g.gather()
        assert not result.failures, result.failures
        relays = [c for c in result.candidates if c.type is CandidateType.RELAY]
        assert len(relays) == 2 and len({c.priority for c in relays}) == 2
        assert len(g.relays) == 2
        for slot in g._slots:
            assert slot.rtt is not None and 0 <= slot.rtt < 1.0
        # The same URL again only takes the new config (fresh credentials, for the next
        # allocation).
        fresh = dataclasses.replace(turn(second), password="new")
        assert not g.add_turn_server(fresh)
        assert g._slots[1].config.password == "new"
        assert len(g.relays) == 2
        # A configured server is never changed by a learnt one of the same URL.
        assert not g.add_turn_server(dataclasses.replace(turn(first), password="evil"))
        assert g._slots[0].config.password == "pw" and not g._slots[0].learnt
    finally:
        scope1.cancel()
        scope2.cancel()


async def test_learnt_servers_are_bounded(nursery: trio.Nursery) -> None:
    g = await start(nursery, GatherOptions())
    added = [g.add_turn_server(turn(40000 + i)) for i in range(MAX_TURN_SERVERS + 3)]
    assert added.count(True) == MAX_TURN_SERVERS
    assert len(g.relay_status()) == MAX_TURN_SERVERS


async def test_the_nearest_relay_ranks_first_then_the_configured_order(
    nursery: trio.Nursery,
) -> None:
    port, scope = await serve_turn(nursery, relay_ports=(45000, 45999))
    try:
        g = await start(nursery, GatherOptions(turn=(turn(port),)))
        await g.gather()
        (relay,) = g.relays
        near_second = g.relay_candidate(relay, 1, 0.002)
        far_first = g.relay_candidate(relay, 0, 0.030)
        near_first = g.relay_candidate(relay, 0, 0.002)
        farthest = g.relay_candidate(relay, 0, 0.5)
        assert near_first.priority > near_second.priority > far_first.priority
        assert far_first.priority > farthest.priority
        # Unmeasured counts as near; every transport ranks as before (UDP above TCP).
        assert g.relay_candidate(relay, 0).priority == near_first.priority
    finally:
        scope.cancel()

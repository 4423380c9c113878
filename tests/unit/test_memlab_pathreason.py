"""The reason for each peer's path in the daemon's status, with real daemons behind simulated
NATs under virtual time (p2plab.memlab): endpoint-independent NATs connect direct and say
which candidates; two symmetric NATs relay and the reason names the symmetric NAT."""

from __future__ import annotations

import trio
import trio.testing

from p2plab.memlab import RENDEZVOUS_IP, MemoryLab


async def test_cone_pair_is_direct_and_says_which_candidates(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lab = MemoryLab(seed=5)
    alice, bob = lab.pair("cone", "cone")
    async with trio.open_nursery() as nursery:
        await lab.start(nursery)
        await lab.ping_stream(nursery, alice, bob, replies=5, timeout=20)
        await lab.wait_until(lambda: alice.daemon.status()["peers"][0]["path"] == "direct", 20)
        status = alice.daemon.status()["peers"][0]
        local, remote = status["local_candidate"]["type"], status["remote_candidate"]["type"]
        assert status["reason"] == f"direct ({local}↔{remote})"
        facts = status["reason_facts"]
        assert facts["local_nat"] == "nat" and facts["remote_nat"] != "symmetric"
        assert facts["relay_server"] is None
        assert status["path_since"] is not None and status["path_since"] >= 0
        nursery.cancel_scope.cancel()


async def test_symmetric_pair_is_relayed_and_the_reason_names_the_symmetric_nat(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lab = MemoryLab(seed=3)
    alice, bob = lab.pair("sym", "sym")
    async with trio.open_nursery() as nursery:
        await lab.start(nursery)
        await lab.ping_stream(nursery, alice, bob, replies=10, timeout=20)
        # The direct checks run out (their retransmissions end within ~40 s).
        await trio.sleep(45)
        for node in (alice, bob):
            status = node.daemon.status()["peers"][0]
            assert status["path"] == "relay"
            assert status["reason"].startswith("relay: both sides behind symmetric NATs, ")
            assert "no port mapping on either side, no IPv6" in status["reason"]
            assert status["reason_facts"]["relay_server"] == RENDEZVOUS_IP
            assert status["reason_facts"]["direct_pairs"]["pending"] == 0
        nursery.cancel_scope.cancel()

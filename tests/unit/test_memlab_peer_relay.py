"""Peer relays with real daemons in memory (p2plab.memlab, virtual time): a public node with
``[relay]`` grants its peers credentials through the sealed signaling, they allocate on it,
and a grant that would turn a configured server into a peer's is refused."""

from __future__ import annotations

import dataclasses
import ipaddress

import trio
import trio.testing

from p2plab.memlab import RENDEZVOUS_IP, MemoryLab
from p2ptun.config import RelayConfig
from p2ptun.signal.seal import RelayGrant

DOC_NETS = (ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("198.51.100.0/24"))


async def test_grants_reach_the_peers_and_they_allocate_on_the_peer_relay(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lab = MemoryLab(seed=11)
    carol = lab.node("carol")  # public: 192.0.2.11
    alice, bob = lab.pair("sym", "sym")
    relay_ip = "192.0.2.11"
    carol.config = dataclasses.replace(
        carol.config,
        relay=RelayConfig(True, ("0.0.0.0", 3479), relay_ip, (50000, 50099), DOC_NETS),
    )
    async with trio.open_nursery() as nursery:
        await lab.start(nursery)
        pinger = await lab.ping_stream(nursery, alice, bob, replies=10, timeout=30)

        def on_carols_relay(node: object) -> bool:
            relays = node.daemon.transport.gatherer.relay_status()  # type: ignore[attr-defined]
            return any(r.url.startswith(f"turn:{relay_ip}:3479") and r.relay for r in relays)

        await lab.wait_until(lambda: on_carols_relay(alice) and on_carols_relay(bob), 30)
        assert alice.daemon._relay_owners == {relay_ip: "carol"}
        # Carol's own TURN core: both of her peers allocated, nobody else.
        server = carol.daemon.relay_server
        assert server is not None
        users = {a.username.split(":", 1)[1] for a in server.turn.allocations.values()}  # type: ignore[attr-defined]
        assert users == {"alice", "bob"}

        # Bob pretends the rendezvous' TURN server is his relay: refused, nothing changes.
        client = bob.daemon.signaling
        assert client is not None
        before = [r.url for r in alice.daemon.transport.gatherer.relay_status()]
        fake = RelayGrant(f"turn:{RENDEZVOUS_IP}:3478?transport=udp", "9999999999:alice", "x")
        assert client.send_to("alice", fake)
        # ... and so is carol's address under his name.
        fake = RelayGrant(f"turn:{relay_ip}:3479?transport=udp", "9999999999:alice", "x")
        assert client.send_to("alice", fake)
        await trio.sleep(2)
        assert [r.url for r in alice.daemon.transport.gatherer.relay_status()] == before
        assert alice.daemon._relay_owners == {relay_ip: "carol"}
        assert len(pinger.replies) >= 10
        nursery.cancel_scope.cancel()

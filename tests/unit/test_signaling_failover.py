"""The node's signaling client with several rendezvous addresses, in the in-memory network
under virtual time: a name with several records, resolved on each attempt, and a list of
addresses, each tried in turn until one answers; after losing its rendezvous the node
registers with another."""

from __future__ import annotations

from functools import partial

import trio
import trio.testing

from p2plab.memnet import MemoryNetwork
from p2ptun.config import RendezvousConfig
from p2ptun.keys import generate_private_key, public_key
from p2ptun.net.signaling import SignalingClient
from p2ptun.rendezvous.signaling import serve_signaling
from p2ptun.rendezvous.store import MemoryStore

RV_KEY = generate_private_key()
A1, A2, A3 = "203.0.113.10", "203.0.113.11", "203.0.113.12"


def rv_config(ip: str) -> RendezvousConfig:
    return RendezvousConfig(
        path="rv.toml",
        listen=(ip, 7070),
        private_key=RV_KEY,
        database=":memory:",
        open_registration=True,
        stun=None,
        turn=None,
        nodes=(),
    )


async def test_a_name_with_several_records_and_a_list_fail_over(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork(seed=3)
    # Three instances' addresses on the name; only the second and third have a rendezvous.
    net.names["rv.lab"] = [A1, A2]
    hosts = {ip: net.public_host(f"rv-{ip}", ip) for ip in (A1, A2, A3)}
    node_host = net.public_host("node", "198.51.100.20")
    key = generate_private_key()
    async with trio.open_nursery() as nursery:
        await nursery.start(net.run)
        servers = {}
        for ip in (A2, A3):
            scope = trio.CancelScope()

            async def serve(
                ip: str, scope: trio.CancelScope, *, task_status: trio.TaskStatus[object]
            ) -> None:
                with scope:
                    await serve_signaling(
                        rv_config(ip),
                        host=hosts[ip],
                        store=MemoryStore(True),
                        task_status=task_status,
                    )

            server = await nursery.start(partial(serve, ip, scope))
            servers[ip] = (server, scope)
        client = SignalingClient(
            node_host,
            name="alice",
            private_key=key,
            rendezvous=[("rv.lab", 7070), (A3, 7070)],
            rendezvous_key=public_key(RV_KEY),
            peers={},
        )
        await nursery.start(client.run)
        with trio.fail_after(30):
            await client.wait_ready()
        # A1 (no rendezvous) was tried and left; the first that answered was A2.
        assert client.rendezvous == (A2, 7070)
        # A2's instance goes away: the node registers with another.
        server, scope = servers[A2]
        scope.cancel()
        with trio.fail_after(30):
            while not (client.ready and client.rendezvous != (A2, 7070)):
                await client._wait_changed()
        assert client.rendezvous == (A3, 7070)
        client.stop()
        nursery.cancel_scope.cancel()

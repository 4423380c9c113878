"""A peer relay in the NAT lab: two nodes behind symmetric NATs relay through a third node
with a public address (``[relay] enable = true``), not through the rendezvous.

Sites: public (the relay node ``n1``), sym, sym. The server's link is delayed 25 ms each way,
as a far-away rendezvous would be: the nodes measure both relays when they allocate and
prefer the nearer one. Checked: the relayed path of both sym nodes goes through the peer
relay's address (status ``reason_facts.relay_server``), the grants went through the sealed
signaling (the logs), and a TCP transfer between them crosses the relay node's link and not
the server's. And the other way round: with the peer relay's link delayed instead, the path
goes through the rendezvous. Printed: the path, the reason and the time from the second
``p2ptun up`` to the first ping through the tunnel.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from nodelab import MB, RV, Deployment, report

from p2plab.natlab import NatLab, wait_until

pytestmark = [pytest.mark.lab, pytest.mark.slow]

LabFactory = Callable[..., NatLab]


@pytest.fixture
def dep(natlab: LabFactory, tmp_path: Any, request: Any) -> Iterator[Deployment]:
    deployment = Deployment.per_site(natlab(["none", "sym", "sym"]), tmp_path)
    try:
        yield deployment
    finally:
        deployment.stop_all()


@pytest.mark.parametrize("far", ["server", "relay"], ids=["far-rendezvous", "far-peer-relay"])
def test_sym_sym_relay_through_the_nearer_relay(dep: Deployment, request: Any, far: str) -> None:
    """The rendezvous 25 ms away: through the peer relay; the peer relay 25 ms away: through
    the rendezvous (the peer relay's candidates are there, and lose on RTT)."""
    lab = dep.lab
    relay_node, a, b = dep.nodes
    relay_ip = lab.site(relay_node.site).host_addr
    lab.set_netem("server" if far == "server" else relay_node.site, delay_ms=25)
    expected = relay_ip if far == "server" else RV
    extra = (
        f'\n[relay]\nenable = true\nrelay_address = "{relay_ip}"\nrelay_ports = "50000-50099"\n'
        # The lab's public addresses are documentation blocks, which TURN denies by default.
        'allow_peers = ["198.51.100.0/24"]\n'
    )
    dep.start_node(relay_node, extra=extra)
    dep.wait_ready(relay_node)
    dep.start_node(a)
    dep.wait_ready(a)
    t_up = time.monotonic()
    dep.start_node(b)
    first_ping = dep.first_ping(a, b) - t_up
    found: dict[str, dict[str, Any]] = {}

    def through_peer_relay() -> bool:
        found["a"], found["b"] = dep.peer_status(a, b), dep.peer_status(b, a)
        return all(
            e.get("path") == "relay" and e["reason_facts"]["relay_server"] == expected
            for e in found.values()
        )

    try:
        wait_until(through_peer_relay, 45, interval=0.5, what=f"path through {expected}")
    except TimeoutError:
        raise AssertionError(f"not through {expected}: {found}\n" + dep.logs(60)) from None
    owner = relay_node.name if far == "server" else None
    for entry in found.values():
        assert entry["reason_facts"]["relay_owner"] == owner, entry
        if owner is not None:
            assert entry["reason"].endswith(f"through the peer relay of {owner} {relay_ip}")
    assert "peer relay on" in relay_node.log()
    assert relay_node.log().count("peer relay granted") >= 2
    for node in (a, b):
        assert "using the relay of a peer" in node.log(), node.log()[-3000:]
    line = (
        f"sym/sym + public peer relay, {far} 25 ms away  path={found['a']['path']}  "
        f"first ping {first_ping:.2f} s  {found['a']['reason']}"
    )
    report(request, f"\n[peer-relay] {line}")
    print(f"[peer-relay] {line}")

    lab.reset_counters()
    dep.tcp_transfer(a, b, 2 * MB)
    via_relay = lab.direct_bytes(a.site, relay_node.site) + lab.direct_bytes(
        b.site, relay_node.site
    )
    via_server = lab.server_bytes(a.site) + lab.server_bytes(b.site)
    if far == "server":
        assert via_relay > 4 * MB and via_server < 2 * MB, lab.counters()
    else:
        assert via_server > 4 * MB and via_relay < 2 * MB, lab.counters()
    assert lab.direct_bytes(a.site, b.site) < 256 * 1024, lab.counters()
    dep.assert_ping(b, a)
    codes = dep.stop_nodes()
    assert set(codes.values()) == {0}, codes
    lab.clear_netem("server" if far == "server" else relay_node.site)

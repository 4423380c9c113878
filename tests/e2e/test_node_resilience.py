"""Real daemons through a lossy, slow network (docs/ARCHITECTURE.md §4): 10 % loss and 50 ms
delay on both sites' links (each direction) from before the nodes start: they still connect,
ping gets through, a small TCP transfer completes. (Network events — NAT changes, flushes,
renumbering, black holes, a frozen node — are in ``test_recovery.py``.)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from nodelab import (
    CONNECT_TIMEOUT,
    Deployment,
    Node,
    report,
)

from p2plab.natlab import NatLab

pytestmark = [pytest.mark.lab, pytest.mark.slow]

LabFactory = Callable[..., NatLab]

SITES = ("prc", "prc")


@pytest.fixture(scope="module")
def resilience(
    natlab_module: LabFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    dep = Deployment.per_site(natlab_module(list(SITES)), tmp_path_factory.mktemp("resilience"))
    try:
        yield dep
    finally:
        dep.stop_all()


@pytest.fixture
def res_dep(resilience: Deployment) -> Iterator[Deployment]:
    """The module's deployment; nodes and link impairments a test left are removed after it."""
    try:
        yield resilience
    finally:
        resilience.stop_nodes()
        for site in resilience.lab.sites:
            resilience.lab.clear_netem(site.index)


def _start_pair(dep: Deployment, a: Node, b: Node, path: str) -> None:
    dep.fresh_sites(a, b)
    dep.start_node(a, peers=[b])
    dep.start_node(b, peers=[a])
    dep.wait_connected([a, b])
    dep.wait_path(a, b, path)
    dep.assert_ping(a, b)


def test_loss_and_delay_during_setup(res_dep: Deployment, request: pytest.FixtureRequest) -> None:
    dep = res_dep
    lab = dep.lab
    a, b = dep.node("n1"), dep.node("n2")  # prc, prc
    dep.fresh_sites(a, b)
    for node in (a, b):
        lab.set_netem(node.site, loss=10, delay_ms=50)
    dep.start_node(a, peers=[b])
    dep.wait_ready(a)
    t_up = time.monotonic()
    dep.start_node(b, peers=[a])
    first_ping = dep.first_ping(a, b, timeout=CONNECT_TIMEOUT + 15) - t_up
    dep.wait_connected([a, b])
    entry = dep.peer_status(a, b)
    # Each echo crosses four impaired link directions: ~66 % come back; 5 of 20 is plenty.
    pings = dep.lab.exec(
        a.site, "ping", "-n", "-c", "20", "-i", "0.2", "-W", "2", b.tunnel_ip, timeout=60
    )
    replies = pings.stdout.count("bytes from")
    report(
        request,
        f"[node-resilience] 10 % loss + 50 ms delay on both sites (prc/prc): first ping "
        f"{first_ping:.2f} s after the second `p2ptun up`, path {entry['path']}, "
        f"rtt {entry['rtt_ms']} ms, {replies}/20 pings answered",
    )
    assert replies >= 5, pings.stdout + dep.logs()
    dep.start_transfer(a, b, 64 * 1024).finish(timeout=60)

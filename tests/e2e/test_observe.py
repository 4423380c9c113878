"""Seeing what the network does, with real daemons in the NAT lab: the Prometheus endpoints of
a node and of the rendezvous scraped with curl while traffic crosses the tunnel.

One lab for the module (two cone sites, a rendezvous on the server); every process is
started with ``lab.popen`` and stopped by PID, pass or fail.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from nodelab import RV, Deployment
from prometheus_client.parser import text_string_to_metric_families

from p2plab.natlab import NatLab, wait_until

pytestmark = [pytest.mark.lab, pytest.mark.slow]

LabFactory = Callable[..., NatLab]
NODE_METRICS = "127.0.0.1:9560"
RV_METRICS = f"{RV}:9560"


@pytest.fixture(scope="module")
def dep(
    natlab_module: LabFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    lab = natlab_module(["cone", "cone"])
    d = Deployment.per_site(lab, tmp_path_factory.mktemp("observe"))
    yield d
    d.stop_all()


def scrape(
    dep: Deployment, host: str, address: str
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics with curl in ``host``'s namespace; every sample by name and labels."""
    result = dep.lab.exec(host, "curl", "-sS", "--max-time", "5", f"http://{address}/metrics")
    assert result.returncode == 0, result.stderr
    out = {}
    for family in text_string_to_metric_families(result.stdout):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_of_node_and_rendezvous_move_with_traffic(dep: Deployment) -> None:
    if dep.rendezvous is not None:
        dep.stop_all()
    dep.rendezvous_extra = f'[metrics]\nlisten = "{RV_METRICS}"\n'
    dep.start_rendezvous()
    n1, n2 = dep.nodes
    metrics = f'[metrics]\nlisten = "{NODE_METRICS}"\n'
    for node in (n1, n2):
        dep.start_node(node, extra=metrics)
    dep.wait_connected([n1, n2])
    peer = (("peer", n2.name),)
    before = scrape(dep, n1.site, NODE_METRICS)
    rv_before = scrape(dep, "server", RV_METRICS)
    dep.assert_ping(n1, n2, count=10)
    after = scrape(dep, n1.site, NODE_METRICS)
    tx = (
        after[("p2ptun_peer_tx_packets_total", peer)]
        - before[("p2ptun_peer_tx_packets_total", peer)]
    )
    rx = (
        after[("p2ptun_peer_rx_packets_total", peer)]
        - before[("p2ptun_peer_rx_packets_total", peer)]
    )
    assert tx >= 10 and rx >= 10, (tx, rx)
    assert (
        after[("p2ptun_peer_tx_bytes_total", peer)] > before[("p2ptun_peer_tx_bytes_total", peer)]
    )
    assert after[("p2ptun_peer_path", (("path", "direct"), *peer))] == 1
    assert after[("p2ptun_peer_connected", peer)] == 1
    assert after[("p2ptun_rendezvous_connected", ())] == 1
    rv = scrape(dep, "server", RV_METRICS)
    assert rv[("p2ptun_rendezvous_nodes_online", ())] == 2
    assert rv[("p2ptun_rendezvous_nodes_registered", ())] == len(dep.nodes)
    assert rv[("p2ptun_rendezvous_signaling_messages_total", ())] >= 2
    assert (
        rv[("p2ptun_rendezvous_stun_binding_requests_total", ())]
        >= rv_before[("p2ptun_rendezvous_stun_binding_requests_total", ())]
    )
    # A node that stops leaves the online gauge.
    dep.stop_node(n2)
    wait_until(
        lambda: scrape(dep, "server", RV_METRICS)[("p2ptun_rendezvous_nodes_online", ())] == 1,
        timeout=15,
    )

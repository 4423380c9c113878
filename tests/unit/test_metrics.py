"""The metrics endpoint of both daemons (``[metrics] listen``), in the in-memory lab under
virtual time: a scrape over HTTP from another machine, counters that move with traffic, and
the text format as Prometheus parses it. The real daemons are scraped with curl in
``tests/e2e/test_observe.py``."""

from __future__ import annotations

import dataclasses

import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from p2plab.memlab import RENDEZVOUS_IP, MemoryLab
from p2plab.memnet import MemoryHost
from p2ptun.config import MetricsSettings

METRICS_PORT = 9560


async def http_get(host: MemoryHost, ip: str, port: int, path: str) -> tuple[int, bytes]:
    """A minimal HTTP/1.1 GET over the in-memory network: status and body."""
    conn = await host.connect_tcp(ip, port)
    await conn.stream.send_all(f"GET {path} HTTP/1.1\r\nHost: {ip}\r\n\r\n".encode())
    data = b""
    while True:
        chunk = await conn.stream.receive_some(65536)
        if not chunk:
            break
        data += chunk
    await conn.stream.aclose()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by name and sorted labels."""
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_both_daemons_serve_metrics_that_move_with_traffic(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lab = MemoryLab(seed=5)
    alice, bob = lab.pair("prc", "prc")
    alice_ip = alice.host.ip
    alice.config = dataclasses.replace(
        alice.config, metrics=MetricsSettings((alice_ip, METRICS_PORT))
    )
    lab.rendezvous_metrics = MetricsSettings((RENDEZVOUS_IP, METRICS_PORT))
    scraper = lab.network.public_host("monitor", "192.0.2.50")
    async with trio.open_nursery() as nursery:
        await lab.start(nursery)
        # The node's endpoint listens on its LAN address: scrape from its own machine.
        status, body = await http_get(alice.host, alice_ip, METRICS_PORT, "/metrics")
        assert status == 200
        before = samples(body)
        assert before[("p2ptun_peer_tx_packets_total", (("peer", "bob"),))] == 0

        await lab.ping_stream(nursery, alice, bob, replies=20, timeout=20)
        status, body = await http_get(alice.host, alice_ip, METRICS_PORT, "/metrics")
        after = samples(body)
        peer = (("peer", "bob"),)
        assert after[("p2ptun_peer_tx_packets_total", peer)] >= 20
        assert after[("p2ptun_peer_rx_packets_total", peer)] >= 20
        assert after[("p2ptun_peer_tx_bytes_total", peer)] > 20 * 32
        assert after[("p2ptun_peer_connected", peer)] == 1
        assert after[("p2ptun_peer_path", (("path", "direct"), ("peer", "bob")))] == 1
        assert after[("p2ptun_peer_path", (("path", "relay"), ("peer", "bob")))] == 0
        assert 0 < after[("p2ptun_peer_rtt_seconds", peer)] < 1
        on_demand = (("event", "connect"), ("peer", "bob"))
        assert after[("p2ptun_peer_on_demand_total", on_demand)] == 0  # always connected
        assert after[("p2ptun_handshakes_completed_total", ())] >= 1
        assert after[("p2ptun_rendezvous_connected", ())] == 1
        assert after[("p2ptun_decrypt_failures_total", ())] == 0
        assert ("p2ptun_dropped_total", (("reason", "wireguard_bad_mac1"),)) in after

        status, body = await http_get(scraper, RENDEZVOUS_IP, METRICS_PORT, "/metrics")
        assert status == 200
        rv = samples(body)
        assert rv[("p2ptun_rendezvous_nodes_online", ())] == 2
        assert rv[("p2ptun_rendezvous_nodes_registered", ())] == 2
        assert rv[("p2ptun_rendezvous_registrations_total", ())] >= 2
        # Offer and answer at least, sealed end to end, routed by the hub.
        assert rv[("p2ptun_rendezvous_signaling_messages_total", ())] >= 2
        assert rv[("p2ptun_rendezvous_turn_allocations", ())] >= 2  # one per node
        assert rv[("p2ptun_rendezvous_stun_binding_requests_total", ())] >= 2
        assert ("p2ptun_rendezvous_refusals_total", (("reason", "turn_quota"),)) in rv

        # Bob goes away: the rendezvous sees one node online.
        bob.daemon.stop()
        await lab.wait_until(lambda: len(lab.signaling.core.online) == 1, 30)  # type: ignore[union-attr]
        _, body = await http_get(scraper, RENDEZVOUS_IP, METRICS_PORT, "/metrics")
        assert samples(body)[("p2ptun_rendezvous_nodes_online", ())] == 1

        status, _ = await http_get(scraper, RENDEZVOUS_IP, METRICS_PORT, "/other")
        assert status == 404
        alice.daemon.stop()
        await lab.wait_until(lambda: not alice.host.tuns, 10)
        nursery.cancel_scope.cancel()


async def test_a_relayed_peer_shows_its_path_and_the_relayed_bytes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lab = MemoryLab(seed=3)
    alice, bob = lab.pair("sym", "sym")
    alice.config = dataclasses.replace(
        alice.config, metrics=MetricsSettings((alice.host.ip, METRICS_PORT))
    )
    lab.rendezvous_metrics = MetricsSettings((RENDEZVOUS_IP, METRICS_PORT))
    scraper = lab.network.public_host("monitor", "192.0.2.50")
    async with trio.open_nursery() as nursery:
        await lab.start(nursery)
        _, body = await http_get(scraper, RENDEZVOUS_IP, METRICS_PORT, "/metrics")
        relayed_before = samples(body)[
            ("p2ptun_rendezvous_relayed_bytes_total", (("direction", "to_peer"),))
        ]
        await lab.ping_stream(nursery, alice, bob, replies=20, timeout=30)
        _, body = await http_get(alice.host, alice.host.ip, METRICS_PORT, "/metrics")
        node = samples(body)
        assert node[("p2ptun_peer_path", (("path", "relay"), ("peer", "bob")))] == 1
        _, body = await http_get(scraper, RENDEZVOUS_IP, METRICS_PORT, "/metrics")
        rv = samples(body)
        for direction in ("to_peer", "to_client"):
            key = ("p2ptun_rendezvous_relayed_bytes_total", (("direction", direction),))
            assert rv[key] > relayed_before + 20 * 32
        for n in (alice, bob):
            n.daemon.stop()
        await lab.wait_until(lambda: not alice.host.tuns and not bob.host.tuns, 10)
        nursery.cancel_scope.cancel()

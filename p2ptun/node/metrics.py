"""The node's Prometheus metrics (``[metrics] listen``): what the daemon already counts, read
at scrape time.

Nothing is counted twice: a custom collector reads the live counters of the data path
(WireGuard's :class:`~p2ptun.wireguard.events.Counters`, the tunnel's, the sockets'), the
dispatchers, the ICE transport and each peer session (:class:`~p2ptun.node.peer.
SessionCounters`) and turns them into metric families; ``prometheus_client`` writes the text
exposition format. The endpoint is :class:`~p2ptun.net.http.HttpServer` on the daemon's own trio
loop (:mod:`p2ptun.net.metrics`). Metric names are listed in the README ("Metrics").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from p2ptun.net.dispatch import Dispatcher
    from p2ptun.net.ice_transport import IceTransport
    from p2ptun.node.peer import PeerSession
    from p2ptun.node.wgtunnel import WgTunnel

#: WireGuard's drop counters (``Device.counters``) and the reason label each becomes.
WIREGUARD_DROPS = (
    "malformed",
    "bad_mac1",
    "bad_cookie_reply",
    "handshake_rate_limited",
    "handshake_auth_failed",
    "unknown_peer",
    "replayed_initiation",
    "initiation_flood",
    "unknown_index",
    "unexpected_response",
    "expired_keypair",
    "replayed_transport",
    "bad_inner_packet",
    "source_not_allowed",
    "no_route",
    "staged_dropped",
)
#: The dispatchers' drops (datagrams of no known kind, of a kind nobody takes, malformed).
DISPATCH_DROPS = ("rx_other", "rx_unhandled", "rx_malformed")


class MetricsSource(Protocol):
    """What the collector reads: the node daemon (:class:`~p2ptun.node.daemon.NodeDaemon`)."""

    @property
    def peers(self) -> Mapping[str, PeerSession]: ...

    @property
    def dispatchers(self) -> Sequence[Dispatcher]: ...

    @property
    def tunnel(self) -> WgTunnel: ...

    @property
    def transport(self) -> IceTransport: ...

    def rendezvous_connected(self) -> bool: ...


class NodeCollector:
    """A ``prometheus_client`` collector over a running node (module docstring)."""

    def __init__(self, source: MetricsSource, now: Callable[[], float]) -> None:
        self.source = source
        self.now = now

    def describe(self) -> list[Metric]:
        return []  # collected fresh on every scrape: nothing to describe up front

    def collect(self) -> Iterator[Metric]:
        src = self.source
        now = self.now()
        tunnel = src.tunnel
        device = tunnel.device.counters

        up = GaugeMetricFamily(
            "p2ptun_rendezvous_connected", "1 while the node is registered with the rendezvous"
        )
        up.add_metric([], 1.0 if src.rendezvous_connected() else 0.0)
        yield up

        labels = ["peer"]
        rx_bytes = CounterMetricFamily(
            "p2ptun_peer_rx_bytes", "WireGuard bytes received from the peer", labels=labels
        )
        tx_bytes = CounterMetricFamily(
            "p2ptun_peer_tx_bytes", "WireGuard bytes sent to the peer", labels=labels
        )
        rx_packets = CounterMetricFamily(
            "p2ptun_peer_rx_packets", "WireGuard messages received from the peer", labels=labels
        )
        tx_packets = CounterMetricFamily(
            "p2ptun_peer_tx_packets", "WireGuard messages sent to the peer", labels=labels
        )
        connected = GaugeMetricFamily(
            "p2ptun_peer_connected", "1 while a selected path has ICE consent", labels=labels
        )
        path = GaugeMetricFamily(
            "p2ptun_peer_path",
            "1 for the kind of the selected path (direct or relay), 0 for the other",
            labels=["peer", "path"],
        )
        rtt = GaugeMetricFamily(
            "p2ptun_peer_rtt_seconds", "Round-trip time of the selected path", labels=labels
        )
        handshakes = CounterMetricFamily(
            "p2ptun_peer_handshakes",
            "WireGuard handshakes with the peer, by how they ended",
            labels=["peer", "result"],
        )
        restarts = CounterMetricFamily(
            "p2ptun_peer_ice_restarts",
            "ICE restarts, offered by this node or answered for the peer",
            labels=["peer", "by"],
        )
        consent = CounterMetricFamily(
            "p2ptun_peer_consent_failures",
            "Selected paths lost: consent expired, or a quiet path's probes went unanswered",
            labels=["peer", "kind"],
        )
        ice_failed = CounterMetricFamily(
            "p2ptun_peer_ice_failures", "ICE attempts whose checks all failed", labels=labels
        )
        changes = CounterMetricFamily(
            "p2ptun_peer_path_changes", "Pairs selected to carry the data", labels=labels
        )
        on_demand = CounterMetricFamily(
            "p2ptun_peer_on_demand",
            "On-demand tunnels: connections started by traffic, and closes after the idle timeout",
            labels=["peer", "event"],
        )
        for name, session in src.peers.items():
            wg = session.wg
            rx_bytes.add_metric([name], wg.rx_bytes)
            tx_bytes.add_metric([name], wg.tx_bytes)
            rx_packets.add_metric([name], wg.rx_packets)
            tx_packets.add_metric([name], wg.tx_packets)
            status: dict[str, Any] = session.status(now)
            connected.add_metric([name], 1.0 if status["state"] == "connected" else 0.0)
            kind = status["path"]
            path.add_metric([name, "direct"], 1.0 if kind == "direct" else 0.0)
            path.add_metric([name, "relay"], 1.0 if kind == "relay" else 0.0)
            if status["rtt_ms"] is not None:
                rtt.add_metric([name], status["rtt_ms"] / 1000)
            stats = tunnel.peer_stats.get(wg)
            if stats is not None:
                handshakes.add_metric([name, "initiated"], stats.handshakes_initiated)
                handshakes.add_metric([name, "responded"], stats.handshakes_responded)
                handshakes.add_metric([name, "failed"], stats.handshakes_failed)
            c = session.counters
            restarts.add_metric([name, "self"], c.ice_restarts)
            restarts.add_metric([name, "peer"], c.restarts_answered)
            consent.add_metric([name, "expired"], c.consent_expired)
            consent.add_metric([name, "lost"], c.consent_lost)
            ice_failed.add_metric([name], c.ice_failures)
            changes.add_metric([name], c.path_changes)
            on_demand.add_metric([name, "connect"], c.on_demand_connects)
            on_demand.add_metric([name, "idle_close"], c.idle_closes)
        yield from (rx_bytes, tx_bytes, rx_packets, tx_packets, connected, path, rtt)
        yield from (handshakes, restarts, consent, ice_failed, changes, on_demand)

        completed = CounterMetricFamily(
            "p2ptun_handshakes_completed", "WireGuard handshakes completed, all peers"
        )
        completed.add_metric([], device.handshakes_completed)
        yield completed
        decrypt = CounterMetricFamily(
            "p2ptun_decrypt_failures",
            "WireGuard transport messages whose authentication failed (dropped)",
        )
        decrypt.add_metric([], device.transport_auth_failed)
        yield decrypt

        drops = CounterMetricFamily(
            "p2ptun_dropped", "Datagrams and packets dropped, by reason", labels=["reason"]
        )
        for reason in WIREGUARD_DROPS:
            drops.add_metric([f"wireguard_{reason}"], getattr(device, reason))
        totals = dict.fromkeys(DISPATCH_DROPS, 0)
        for dispatcher in src.dispatchers:
            for reason in DISPATCH_DROPS:
                totals[reason] += getattr(dispatcher.counters, reason)
        for reason, value in totals.items():
            drops.add_metric([f"udp_{reason.removeprefix('rx_')}"], value)
        send_failed = sum(ep.counters.tx_dropped for ep in tunnel.endpoints)
        drops.add_metric(["udp_send_failed"], send_failed)
        drops.add_metric(["tx_no_socket"], tunnel.counters.tx_no_socket)
        drops.add_metric(["tun_bad_offload"], tunnel.counters.tun_bad_offload)
        ice = src.transport.counters
        drops.add_metric(["ice_unknown_ufrag"], ice.checks_unknown_ufrag)
        drops.add_metric(["ice_tx_dropped"], ice.tx_dropped)
        mux = src.transport.mux.counters
        drops.add_metric(["stun_unwanted"], mux.rx_dropped)
        firewall = tunnel.firewall
        if firewall is not None:
            for direction in ("inbound", "outbound"):
                counts = getattr(firewall.counters, direction)
                for reason in ("default_deny", "fragments", "malformed"):
                    value = getattr(counts, reason)
                    drops.add_metric([f"firewall_{direction}_{reason}"], value)
        yield drops
        if firewall is not None:
            yield from _firewall_metrics(firewall.status())

        udp_rx = CounterMetricFamily("p2ptun_udp_rx_bytes", "Bytes received on the UDP sockets")
        udp_tx = CounterMetricFamily("p2ptun_udp_tx_bytes", "Bytes sent on the UDP sockets")
        udp_rx.add_metric([], sum(ep.counters.rx_bytes for ep in tunnel.endpoints))
        udp_tx.add_metric([], sum(ep.counters.tx_bytes for ep in tunnel.endpoints))
        yield udp_rx
        yield udp_tx
        regathers = CounterMetricFamily("p2ptun_regathers", "Candidate gathering rounds")
        regathers.add_metric([], ice.regathers)
        yield regathers


def _firewall_metrics(fw: dict[str, Any]) -> Iterator[Metric]:
    """The flow table's fill and the flows each rule allowed."""
    flows = GaugeMetricFamily("p2ptun_firewall_flows", "Flows the firewall tracks")
    flows.add_metric([], fw["flows"])
    yield flows
    rules = CounterMetricFamily(
        "p2ptun_firewall_rule_flows",
        "Flows each firewall rule allowed (since the rules were loaded)",
        labels=["direction", "rule"],
    )
    for direction in ("inbound", "outbound"):
        for i, rule in enumerate(fw[direction]):
            rules.add_metric([direction, f"{i}: {rule['rule']}"], rule["flows"])
    yield rules
    evicted = CounterMetricFamily(
        "p2ptun_firewall_flows_removed",
        "Tracked flows removed, by reason",
        labels=["reason"],
    )
    table = fw["table"]
    for reason in ("expired", "evicted_peer_share", "evicted_table_full"):
        evicted.add_metric([reason], table[reason])
    evicted.add_metric(["cut_on_reload"], fw["cut_on_reload"])
    yield evicted


__all__ = ["MetricsSource", "NodeCollector"]

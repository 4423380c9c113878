"""The rendezvous' Prometheus metrics (``[metrics] listen``), read from its live counters.

A custom collector reads the signaling hub (:class:`~p2ptun.signal.hub.ServerCounters`, the
online names, the store's registered names) and the embedded STUN/TURN service (its shell's
counters and the TURN core's :class:`~p2ptun.turn.server.TurnServerCounters`) at scrape time;
:mod:`p2ptun.net.metrics` serves them on the rendezvous' trio loop. Names in the README
("Metrics").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from p2ptun.rendezvous.refusals import SHELL_REFUSALS, SIGNALING_REFUSALS, TURN_REFUSALS
from p2ptun.rendezvous.signaling import SignalingServer
from p2ptun.rendezvous.stun_turn import StunTurnService

#: Malformed input dropped (``TurnServerCounters`` / ``ServerCounters`` field -> reason).
TURN_DROPS = (
    "dropped_not_stun",
    "dropped_malformed",
    "dropped_bad_fingerprint",
    "dropped_no_allocation",
    "dropped_no_permission",
    "dropped_unbound_channel",
    "dropped_too_large",
)


class RendezvousCollector:
    """A ``prometheus_client`` collector over a running rendezvous (module docstring).
    ``signaling`` gives the signaling server once it runs (None before)."""

    def __init__(
        self,
        signaling: Callable[[], SignalingServer | None],
        services: Sequence[StunTurnService],
    ) -> None:
        self.signaling = signaling
        self.services = services

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        refusals = CounterMetricFamily(
            "p2ptun_rendezvous_refusals", "Requests refused, by reason", labels=["reason"]
        )
        drops = CounterMetricFamily(
            "p2ptun_rendezvous_dropped", "Malformed input dropped, by reason", labels=["reason"]
        )
        server = self.signaling()
        if server is not None:
            core = server.core
            c = core.counters
            registered = GaugeMetricFamily(
                "p2ptun_rendezvous_nodes_registered",
                "Names the rendezvous knows: [[node]] entries and names bound since",
            )
            registered.add_metric([], server.store.registered() if server.store else 0)
            yield registered
            online = GaugeMetricFamily(
                "p2ptun_rendezvous_nodes_online", "Nodes registered on a live connection"
            )
            online.add_metric([], len(core.online))
            yield online
            conns = GaugeMetricFamily("p2ptun_rendezvous_connections", "Open signaling connections")
            conns.add_metric([], core.connection_count)
            yield conns
            for name, field, help_text in (
                ("connections", "connections", "Signaling connections accepted"),
                ("registrations", "registrations", "Registrations accepted"),
                ("signaling_messages", "routed", "Sealed signaling messages routed"),
                ("handshakes", "handshakes", "Signaling handshakes that cost Diffie-Hellman"),
                ("turn_credentials_issued", "turn_issued", "TURN credentials handed out"),
            ):
                counter = CounterMetricFamily(f"p2ptun_rendezvous_{name}", help_text)
                counter.add_metric([], getattr(c, field))
                yield counter
            for field, reason in SIGNALING_REFUSALS.items():
                refusals.add_metric([reason], getattr(c, field))
            drops.add_metric(["signaling_decode"], c.decode_errors)
            drops.add_metric(["signaling_channel"], c.channel_errors)
            drops.add_metric(["signaling_protocol"], c.protocol_errors)
            if server.cluster is not None:
                yield from _cluster_metrics(server, drops)

        allocations = GaugeMetricFamily(
            "p2ptun_rendezvous_turn_allocations", "Live TURN allocations"
        )
        created = CounterMetricFamily(
            "p2ptun_rendezvous_turn_allocations_created", "TURN allocations created"
        )
        relayed = CounterMetricFamily(
            "p2ptun_rendezvous_relayed_bytes",
            "Bytes relayed by TURN, by direction",
            labels=["direction"],
        )
        binding = CounterMetricFamily(
            "p2ptun_rendezvous_stun_binding_requests", "STUN Binding requests answered"
        )
        live = made = to_peer = to_client = bindings = 0
        refused = dict.fromkeys([*SHELL_REFUSALS.values(), *TURN_REFUSALS.values()], 0)
        dropped = dict.fromkeys(["stream_garbage", *TURN_DROPS], 0)
        for service in self.services:
            shell = service.counters
            for field, reason in SHELL_REFUSALS.items():
                refused[reason] += getattr(shell, field)
            dropped["stream_garbage"] += shell.stream_garbage
            if service.behavior is not None:  # RFC 5780: the Bindings to its four addresses
                bindings += service.behavior.counters.requests
            turn = service.turn
            if turn is None:
                continue
            t = turn.counters
            live += len(turn.allocations)
            made += t.allocations_created
            to_peer += t.relayed_to_peer_bytes
            to_client += t.relayed_to_client_bytes
            bindings += t.binding_requests
            for field, reason in TURN_REFUSALS.items():
                refused[reason] += getattr(t, field)
            for field in TURN_DROPS:
                dropped[field] += getattr(t, field)
        for reason, value in refused.items():
            refusals.add_metric([reason], value)
        for field, value in dropped.items():
            label = field if field == "stream_garbage" else f"turn_{field.removeprefix('dropped_')}"
            drops.add_metric([label], value)
        allocations.add_metric([], live)
        created.add_metric([], made)
        relayed.add_metric(["to_peer"], to_peer)
        relayed.add_metric(["to_client"], to_client)
        binding.add_metric([], bindings)
        yield from (allocations, created, relayed, binding, refusals, drops)


__all__ = ["RendezvousCollector"]


def _cluster_metrics(server: SignalingServer, drops: CounterMetricFamily) -> Iterator[Metric]:
    """``[cluster]``: the link to Redis and what crossed it (README, "Running a cluster")."""
    link = server.cluster
    assert link is not None
    c = server.core.counters
    linked = GaugeMetricFamily("p2ptun_rendezvous_cluster_linked", "1 while linked to Redis")
    linked.add_metric([], 1 if link.connected else 0)
    remote = GaugeMetricFamily(
        "p2ptun_rendezvous_cluster_remote_nodes", "Nodes online on the other instances"
    )
    remote.add_metric([], len(server.core.remote_nodes))
    outages = CounterMetricFamily(
        "p2ptun_rendezvous_cluster_outages", "Times Redis became unreachable"
    )
    outages.add_metric([], link.counters.outages)
    forwarded = CounterMetricFamily(
        "p2ptun_rendezvous_cluster_messages",
        "Sealed messages between instances, by direction",
        labels=["direction"],
    )
    forwarded.add_metric(["out"], c.cluster_forwarded)
    forwarded.add_metric(["in"], c.cluster_delivered)
    drops.add_metric(["cluster_malformed"], link.counters.malformed)
    drops.add_metric(["cluster_undeliverable"], c.cluster_dropped)
    drops.add_metric(["cluster_backlog"], link.counters.outbox_dropped)
    yield from (linked, remote, outages, forwarded)

"""The Prometheus text endpoint of either daemon (``[metrics] listen``), on its own trio loop.

A daemon hands :func:`serve_metrics` a ``prometheus_client`` collector that reads its live
counters at scrape time; ``prometheus_client`` writes the text exposition format (its own HTTP
server runs a thread per request, so the bytes go out through :class:`~p2ptun.net.http.
HttpServer`, with its bounds, instead). ``GET /metrics`` answers; any other path is 404.

``prometheus_client`` is imported by the daemons' collectors only when ``[metrics]`` is
configured: a node without it does not pay for the import.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from p2ptun.addr import Address, format_address
from p2ptun.log import get_logger
from p2ptun.net.http import HttpLimits, HttpRequest, HttpResponse, HttpServer, plain
from p2ptun.net.ports import Host

log = get_logger("net.metrics")


def exposition(collector: Collector) -> bytes:
    """The text exposition of one collector (a fresh registry: no process-global state)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)


def metrics_handler(collector: Collector) -> Callable[[HttpRequest], Any]:
    """The endpoint's HTTP handler: ``/metrics``, else 404."""

    async def handle(request: HttpRequest) -> HttpResponse:
        if request.path != "/metrics":
            return plain(404, "not found: the metrics are at /metrics")
        return HttpResponse(200, exposition(collector), CONTENT_TYPE_LATEST)

    return handle


async def bind_metrics(
    host: Host, listen: Address, collector: Collector, limits: HttpLimits | None = None
) -> HttpServer:
    """Listen on ``listen`` (raises :class:`~p2ptun.errors.RuntimeFailure`, one line, if it
    cannot) and return the server; run it with :meth:`HttpServer.serve`."""
    listener = await host.listen_tcp(listen[0], listen[1])
    server = HttpServer(listener, metrics_handler(collector), limits)
    log.info("metrics endpoint", listen=format_address(server.address))
    return server


async def serve_metrics(
    host: Host,
    listen: Address,
    collector: Collector,
    limits: HttpLimits | None = None,
    *,
    task_status: trio.TaskStatus[HttpServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Bind and serve until cancelled; ``task_status.started`` gets the server."""
    server = await bind_metrics(host, listen, collector, limits)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        task_status.started(server)


__all__ = ["bind_metrics", "exposition", "metrics_handler", "serve_metrics"]

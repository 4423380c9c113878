"""The rendezvous' network map page (``[web] listen`` and an admin token; off by default).

What the rendezvous knows, and nothing sealed between nodes: the nodes online, since when,
from which public address, how many peers each lists, their TURN allocations and the bytes
relayed for them, and the refusals by reason. Two views of the same snapshot, served by
:class:`~p2ptun.net.http.HttpServer` on the rendezvous' own trio loop:

- ``GET /``: a server-rendered HTML page (no JavaScript; it refreshes itself every 10 s with
  a ``<meta http-equiv="refresh">``);
- ``GET /api/nodes``: the snapshot as JSON.

Both need the admin token: ``Authorization: Bearer TOKEN``, or ``?token=TOKEN`` for a browser
(compared in constant time). Without it: 401. Everything shown is HTML-escaped: node names
and addresses come from the network.
"""

from __future__ import annotations

import hmac
import html
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import trio

from p2ptun.addr import format_address
from p2ptun.log import get_logger
from p2ptun.net.http import HttpLimits, HttpRequest, HttpResponse, HttpServer, plain
from p2ptun.net.ports import Host
from p2ptun.rendezvous.refusals import SHELL_REFUSALS, SIGNALING_REFUSALS, TURN_REFUSALS
from p2ptun.rendezvous.signaling import SignalingServer
from p2ptun.rendezvous.stun_turn import StunTurnService

log = get_logger("rendezvous.web")

REFRESH_SECONDS = 10


class MapPage:
    """The page's data and its two renderings (module docstring)."""

    def __init__(
        self,
        token: str,
        signaling: Callable[[], SignalingServer | None],
        services: Sequence[StunTurnService],
        wall_clock: Callable[[], float],
    ) -> None:
        self._token = token.encode()
        self.signaling = signaling
        self.services = services
        self.wall_clock = wall_clock
        self.refused = 0

    # -- the snapshot -----------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        now = trio.current_time()
        wall = self.wall_clock()
        relays: dict[str, dict[str, int]] = {}
        for service in self.services:
            turn = service.turn
            if turn is None:
                continue
            for alloc in turn.allocations.values():
                entry = relays.setdefault(
                    alloc.quota_user, {"allocations": 0, "to_peers": 0, "to_node": 0}
                )
                entry["allocations"] += 1
                entry["to_peers"] += alloc.bytes_to_peer
                entry["to_node"] += alloc.bytes_to_client
        nodes = []
        server = self.signaling()
        refusals: dict[str, int] = {}
        registered = online = 0
        if server is not None:
            core = server.core
            for node in core.online_nodes():
                relay = relays.get(node.name, {"allocations": 0, "to_peers": 0, "to_node": 0})
                since = wall - (now - node.since)
                nodes.append(
                    {
                        "name": node.name,
                        "network": node.network,
                        "address": node.address,
                        "online_since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since)),
                        "online_seconds": round(now - node.since, 1),
                        "peers_listed": node.watching,
                        "relay_allocations": relay["allocations"],
                        "relayed_bytes_to_peers": relay["to_peers"],
                        "relayed_bytes_to_node": relay["to_node"],
                    }
                )
            c = core.counters
            for field, reason in SIGNALING_REFUSALS.items():
                refusals[reason] = getattr(c, field)
            registered = server.store.registered() if server.store is not None else 0
            online = len(nodes)
        for service in self.services:
            for field, reason in SHELL_REFUSALS.items():
                refusals[reason] = refusals.get(reason, 0) + getattr(service.counters, field)
            if service.turn is not None:
                for field, reason in TURN_REFUSALS.items():
                    value = getattr(service.turn.counters, field)
                    refusals[reason] = refusals.get(reason, 0) + value
        return {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall)),
            "nodes_online": online,
            "nodes_registered": registered,
            "nodes": nodes,
            "relay_allocations": sum(r["allocations"] for r in relays.values()),
            "refusals": refusals,
        }

    # -- HTTP -------------------------------------------------------------------------------

    def authorised(self, request: HttpRequest) -> bool:
        given = request.query.get("token", "")
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        return hmac.compare_digest(given.encode(), self._token)

    async def handle(self, request: HttpRequest) -> HttpResponse:
        if request.path not in ("/", "/api/nodes"):
            return plain(404, "not found: the map is at / and /api/nodes")
        if not self.authorised(request):
            self.refused += 1
            body = (
                "<!doctype html><title>401 Unauthorized</title>"
                "<h1>401 Unauthorized</h1><p>The network map needs the admin token: "
                "<code>?token=…</code> or <code>Authorization: Bearer …</code>.</p>\n"
            )
            return HttpResponse(
                401,
                body.encode(),
                "text/html; charset=utf-8",
                [("WWW-Authenticate", 'Bearer realm="p2ptun"')],
            )
        snap = self.snapshot()
        if request.path == "/api/nodes":
            return HttpResponse(
                200, json.dumps(snap, indent=2).encode() + b"\n", "application/json"
            )
        return HttpResponse(200, render_html(snap).encode(), "text/html; charset=utf-8")


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60} min"


STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}"
    "th,td{border:1px solid #ccc;padding:.3em .7em;text-align:left}"
    "th{background:#f0f0f0}td.n{text-align:right}td{white-space:nowrap}"
    ".summary span{margin-right:2em}"
)


def render_html(snap: dict[str, Any]) -> str:
    """The page: a summary, the online nodes, the refusals (escaped)."""
    e = html.escape
    rows = []
    for n in snap["nodes"]:
        rows.append(
            "<tr class='node'>"
            f"<td class='name'>{e(n['name'])}</td>"
            f"<td>{e(n['network'] or '-')}</td>"
            f"<td>{e(n['address'])}</td>"
            f"<td>{e(n['online_since'])} ({e(_duration(n['online_seconds']))})</td>"
            f"<td class='n'>{n['peers_listed']}</td>"
            f"<td class='n'>{n['relay_allocations']}</td>"
            f"<td class='n'>{e(_size(n['relayed_bytes_to_peers']))}</td>"
            f"<td class='n'>{e(_size(n['relayed_bytes_to_node']))}</td>"
            "</tr>"
        )
    if not rows:
        rows.append("<tr><td colspan='8'>no node is online</td></tr>")
    refusals = [
        f"<tr><td>{e(reason)}</td><td class='n'>{count}</td></tr>"
        for reason, count in sorted(snap["refusals"].items())
        if count
    ] or ["<tr><td colspan='2'>none</td></tr>"]
    return (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta http-equiv='refresh' content='{REFRESH_SECONDS}'>"
        "<title>p2ptun network map</title>"
        f"<style>{STYLE}</style></head><body>\n"
        "<h1>p2ptun network map</h1>\n"
        "<p class='summary'>"
        f"<span id='online'>{snap['nodes_online']} online</span>"
        f"<span>{snap['nodes_registered']} registered</span>"
        f"<span>{snap['relay_allocations']} relay allocations</span>"
        f"<span>as of {e(snap['time'])}</span></p>\n"
        "<h2>Nodes online</h2>\n<table id='nodes'><tr><th>name</th><th>network</th>"
        "<th>public address</th><th>online since</th><th>peers listed</th>"
        "<th>relays</th><th>relayed to peers</th><th>relayed to node</th></tr>\n"
        + "\n".join(rows)
        + "\n</table>\n<h2>Refusals</h2>\n<table id='refusals'><tr><th>reason</th>"
        "<th>count</th></tr>\n"
        + "\n".join(refusals)
        + "\n</table>\n<p>The same as JSON: <code>/api/nodes</code> (same token).</p>\n"
        "</body></html>\n"
    )


async def bind_web(
    host: Host,
    listen: tuple[str, int],
    page: MapPage,
    limits: HttpLimits | None = None,
) -> HttpServer:
    """Listen on ``listen`` (RuntimeFailure, one line, if it cannot); run with ``serve``."""
    listener = await host.listen_tcp(listen[0], listen[1])
    server = HttpServer(listener, page.handle, limits)
    log.info("network map page", listen=format_address(server.address))
    return server


__all__ = ["MapPage", "bind_web", "render_html"]

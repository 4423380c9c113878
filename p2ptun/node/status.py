"""The status report: the JSON shape of docs/ARCHITECTURE.md §3 and its readable table."""

from __future__ import annotations

from typing import Any


def _size(n: object) -> str:
    if not isinstance(n, int):
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def _ago(seconds: object) -> str:
    if not isinstance(seconds, (int, float)):
        return "never"
    s = int(seconds)
    if s < 120:
        return f"{s}s ago"
    if s < 7200:
        return f"{s // 60}m ago"
    return f"{s // 3600}h ago"


def _candidate(c: object) -> str:
    if not isinstance(c, dict):
        return "-"
    return f"{c.get('type', '?')} {c.get('address', '?')}"


def _rtt(value: object) -> str:
    return f"{value:.1f} ms" if isinstance(value, (int, float)) else "-"


def _path(peer: dict[str, Any]) -> str:
    path = str(peer.get("path") or "-")
    via = peer.get("via")
    return f"{path} via {via}" if isinstance(via, str) and via else path


def _port_mapping(node: dict[str, Any]) -> str | None:
    mapping = node.get("port_mapping")
    if isinstance(mapping, dict):
        return f"port mapping: {mapping.get('via', '?')} -> {mapping.get('external', '?')}"
    return None


def render(status: dict[str, Any]) -> str:
    """``p2ptun status`` without ``--json``."""
    node = status.get("node", {})
    lines = [
        f"node {node.get('name', '?')}: interface {node.get('interface', '?')} "
        f"({', '.join(node.get('addresses', [])) or 'no addresses'}), "
        f"rendezvous {node.get('rendezvous', '?')}"
    ]
    mapping = _port_mapping(node)
    if mapping is not None:
        lines.append(mapping)
    lines += _routes_lines(status)
    header = ("PEER", "STATE", "PATH", "LOCAL", "REMOTE", "RTT", "RX", "TX", "HANDSHAKE", "CONSENT")
    rows = [header]
    for peer in status.get("peers", []):
        rows.append(
            (
                str(peer.get("name", "?")),
                str(peer.get("state", "?")),
                _path(peer),
                _candidate(peer.get("local_candidate")),
                _candidate(peer.get("remote_candidate")),
                _rtt(peer.get("rtt_ms")),
                _size(peer.get("rx_bytes")),
                _size(peer.get("tx_bytes")),
                _ago(peer.get("last_handshake")),
                _ago(peer.get("consent_age")),
            )
        )
    if len(rows) == 1:
        lines.append("no peers configured")
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    lines += _history_lines(status)
    lines += firewall_lines(status)
    reasons = [
        f"  {peer.get('name', '?')}: {peer['reason']}"
        for peer in status.get("peers", [])
        if isinstance(peer.get("reason"), str)
    ]
    if reasons:
        lines.append("why:")
        lines.extend(reasons)
    return "\n".join(lines)


def _routes_lines(status: dict[str, Any]) -> list[str]:
    """Advertised routes (and those refused), the exit node, the peers' accepted routes."""
    node = status.get("node", {})
    lines: list[str] = []
    routes = node.get("routes")
    if isinstance(routes, dict):
        if routes.get("advertised"):
            nat = "masquerade" if routes.get("masquerade") else "no masquerade"
            lines.append(f"advertised routes: {', '.join(routes['advertised'])} ({nat})")
        for refused in routes.get("refused") or []:
            lines.append(f"refused route: {refused.get('route')}: {refused.get('reason')}")
        for family, state in (routes.get("forwarding") or {}).items():
            if state != "on":
                lines.append(f"{family} forwarding: {state}")
    exit_node = node.get("exit_node")
    if isinstance(exit_node, dict):
        lan = "" if exit_node.get("allow_lan") else ", LAN through it too"
        lines.append(
            f"exit node: {exit_node.get('name')} {exit_node.get('state')}: "
            f"{exit_node.get('reason')}{lan}"
        )
    for peer in status.get("peers", []):
        peer_routes = peer.get("routes")
        if isinstance(peer_routes, dict) and peer_routes.get("accepted"):
            lines.append(f"routes via {peer.get('name')}: {', '.join(peer_routes['accepted'])}")
    return lines


def firewall_lines(status: dict[str, Any]) -> list[str]:
    """The firewall: table fill, drops by direction and reason, then each rule and the flows
    it allowed (README "Firewall")."""
    node = status.get("node")
    fw = node.get("firewall") if isinstance(node, dict) else None
    if not isinstance(fw, dict):
        return []
    dropped = fw.get("dropped", {})
    parts = []
    for direction in ("inbound", "outbound"):
        counts = dropped.get(direction, {})
        detail = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items())
        parts.append(f"{direction} {sum(counts.values())} ({detail})")
    peers = [
        f"{p.get('name', '?')} {p['firewall_dropped']}"
        for p in status.get("peers", [])
        if p.get("firewall_dropped")
    ]
    lines = [
        f"firewall: {fw.get('flows', 0)}/{fw.get('max_flows', 0)} flows tracked; "
        f"dropped {'; '.join(parts)}" + (f"; by peer: {', '.join(peers)}" if peers else "")
    ]
    for direction in ("inbound", "outbound"):
        for rule in fw.get(direction, []):
            lines.append(f"  {direction:<8} {rule.get('rule', '?')}: {rule.get('flows', 0)} flows")
        if not fw.get(direction):
            lines.append(f"  {direction:<8} (no rules: nothing opens a flow)")
    return lines


HISTORY_SHOWN = 5
"""Path changes per peer the readable status shows (``--json`` has all that are kept)."""


def _history_lines(status: dict[str, Any]) -> list[str]:
    """The last path changes of each peer, newest first: when, to what, why."""
    lines: list[str] = []
    for peer in status.get("peers", []):
        history = peer.get("path_history") or []
        if not history:
            continue
        lines.append(f"path changes of {peer.get('name', '?')} (newest first):")
        for change in reversed(history[-HISTORY_SHOWN:]):
            where = change.get("path") or "no path"
            if change.get("remote"):
                where += f" to {change['remote']}"
            lines.append(f"  {_ago(change.get('ago')):>9}  {where}: {change.get('reason', '?')}")
    return lines


def render_ping(result: dict[str, Any]) -> str:
    """One line of ``p2ptun ping``: the peer, the path it took and the round-trip time."""
    peer = result.get("peer", "?")
    path = result.get("path") or "no path"
    local = _candidate(result.get("local_candidate"))
    pair = f"{local} -> {_candidate(result.get('remote_candidate'))}"
    rtt = result.get("rtt_ms")
    if isinstance(rtt, (int, float)):
        return f"{peer}: {path} ({pair}): rtt {rtt:.2f} ms"
    return f"{peer}: {path} ({pair}): no answer ({result.get('error', 'timeout')})"


def render_until_direct(result: dict[str, Any], waited: float, already: float | None) -> str:
    """The line of ``p2ptun ping --until-direct`` once the path is direct: how long it took
    (``waited`` seconds after the command started), or that it was direct ``already`` (for
    that many seconds), and the ping's pair and round-trip time."""
    line = render_ping(result)
    peer = result.get("peer", "?")
    prefix = f"{peer}: "
    rest = line[len(prefix) :] if line.startswith(prefix) else line
    if already is not None:
        when = f"direct for {already:.1f} s already"
    else:
        when = f"direct after {waited:.2f} s"
    return f"{peer}: {when}, {rest}"

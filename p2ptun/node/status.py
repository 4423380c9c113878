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
    return "\n".join(lines)


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

"""Node and rendezvous configuration: TOML files loaded into frozen dataclasses.

The file format is the user contract of docs/ARCHITECTURE.md §3. The package is split by job:

- :mod:`~p2ptun.config.schema`: the dataclasses a config loads into (what the daemons see);
- :mod:`~p2ptun.config.reader`: the strict generic reader (a file, its tables, key files);
- :mod:`~p2ptun.config.values`: parsers for the values inside keys (addresses, URLs, ...);
- :mod:`~p2ptun.config.node` and :mod:`~p2ptun.config.rendezvous`: the two loaders.

Loading is strict: every problem raises :class:`~p2ptun.errors.ConfigError`, whose one-line
message names the file, the key path, what is wrong and what would be valid. Things that work
but deserve attention (a key file other users can read) are returned as warnings, never
silently ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from p2ptun.addr import format_address, is_hostname
from p2ptun.config.node import node_config
from p2ptun.config.reader import ConfigFile, Table
from p2ptun.config.rendezvous import rendezvous_config
from p2ptun.config.schema import (
    DEFAULT_RENDEZVOUS_PORT,
    DEFAULT_STUN_PORT,
    DEFAULT_TURNS_PORT,
    Config,
    IceConfig,
    InterfaceConfig,
    IPInterface,
    IPNetwork,
    MetricsSettings,
    NetworkConfig,
    NetworkEntry,
    NodeConfig,
    NodeEntry,
    PeerConfig,
    RelayConfig,
    RendezvousConfig,
    RendezvousRef,
    StunServerSettings,
    TurnServerConfig,
    TurnServerSettings,
    TurnTransport,
    WebSettings,
    control_socket_path,
)
from p2ptun.config.values import (
    parse_interface_address,
    parse_network,
    parse_port_range,
    parse_stun_server,
    parse_turn_url,
)

_NODE_KEYS = {"name", "interface", "peer", "ice", "rendezvous"}
_RENDEZVOUS_KEYS = {"listen", "database", "open_registration", "stun", "turn", "node"}
# [network] (a node's) and [[network]] (the rendezvous') share a name: they tell nothing.


def detect_kind(data: dict[str, Any]) -> Literal["node", "rendezvous"] | None:
    """Which kind of config a decoded file is, from its top-level keys (None: cannot tell)."""
    node = bool(_NODE_KEYS & data.keys())
    rendezvous = bool(_RENDEZVOUS_KEYS & data.keys())
    if node and not rendezvous:
        return "node"
    if rendezvous and not node:
        return "rendezvous"
    return None


def load(path: str, kind: Literal["node", "rendezvous"] | None = None) -> Config:
    """Load and validate a node or rendezvous config; ``kind=None`` tells them apart."""
    source = ConfigFile(path)
    data = source.read_toml()
    found = detect_kind(data)
    if found is None:
        if kind is None:
            raise source.top(data).error(
                None,
                "cannot tell whether this is a node or a rendezvous config",
                "a node config has name, [interface], [rendezvous] and [[peer]]; a rendezvous "
                "config has listen, database, [stun], [turn] and [[node]]",
            )
        found = kind
    if kind is not None and found != kind:
        raise source.top(data).error(None, f"this is a {found} config, expected a {kind} config")
    if found == "node":
        return node_config(source, data)
    return rendezvous_config(source, data)


def load_node(path: str) -> NodeConfig:
    cfg = load(path, "node")
    assert isinstance(cfg, NodeConfig)
    return cfg


def load_rendezvous(path: str) -> RendezvousConfig:
    cfg = load(path, "rendezvous")
    assert isinstance(cfg, RendezvousConfig)
    return cfg


def describe(cfg: Config) -> str:
    """A one-line summary for ``p2ptun check``."""
    if isinstance(cfg, NodeConfig):
        peers = ", ".join(p.name for p in cfg.peers) or "none"
        network = ""
        if cfg.network is not None:
            network = f", network {cfg.network.name}"
            if cfg.network.domain:
                network += f" (names under .{cfg.network.domain})"
        if cfg.metrics is not None:
            network += f", metrics on {format_address(cfg.metrics.listen)}"
        if cfg.interface.advertise_routes:
            routes = ", ".join(map(str, cfg.interface.advertise_routes))
            network += f", advertises {routes}"
        if cfg.exit_node is not None:
            network += f", exit node {cfg.exit_node}"
        fw = cfg.firewall
        network += f", firewall: {len(fw.inbound)} inbound, {len(fw.outbound)} outbound rules"
        return (
            f"{cfg.path}: valid node config: name {cfg.name}, interface {cfg.interface.name}, "
            f"rendezvous {format_address(cfg.rendezvous.address)}, peers: {peers}{network}"
        )
    parts = [f"signaling {format_address(cfg.listen)}"]
    if cfg.stun:
        parts.append("STUN " + " ".join(format_address(a) for a in cfg.stun.listen))
    if cfg.stun and cfg.stun.alternate:
        parts.append(f"RFC 5780 alternate {format_address(cfg.stun.alternate)}")
    if cfg.turn:
        extra = f" and {cfg.turn.extra_relay_address}" if cfg.turn.extra_relay_address else ""
        parts.append(f"TURN relay {cfg.turn.relay_address}{extra}")
    if cfg.metrics is not None:
        parts.append(f"metrics {format_address(cfg.metrics.listen)}")
    if cfg.web is not None:
        parts.append(f"map page {format_address(cfg.web.listen)}")
    nodes = "open registration" if cfg.open_registration else f"{len(cfg.nodes)} nodes"
    if cfg.networks:
        nodes += f", {len(cfg.networks)} network(s)"
    return f"{cfg.path}: valid rendezvous config: {', '.join(parts)}, {nodes}"


__all__ = [
    "DEFAULT_RENDEZVOUS_PORT",
    "DEFAULT_STUN_PORT",
    "DEFAULT_TURNS_PORT",
    "Config",
    "ConfigFile",
    "IPInterface",
    "IPNetwork",
    "IceConfig",
    "InterfaceConfig",
    "MetricsSettings",
    "NetworkConfig",
    "NetworkEntry",
    "NodeConfig",
    "NodeEntry",
    "PeerConfig",
    "RelayConfig",
    "RendezvousConfig",
    "RendezvousRef",
    "StunServerSettings",
    "Table",
    "TurnServerConfig",
    "TurnServerSettings",
    "TurnTransport",
    "WebSettings",
    "control_socket_path",
    "describe",
    "detect_kind",
    "is_hostname",
    "load",
    "load_node",
    "load_rendezvous",
    "parse_interface_address",
    "parse_network",
    "parse_port_range",
    "parse_stun_server",
    "parse_turn_url",
]

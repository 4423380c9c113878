"""Subnet routes and the exit node, as the node decides them (no I/O).

**Subnet routes.** A node forwards for its peers the networks of ``[interface]
advertise_routes``. Peers take a route from a member's certificate only (``p2ptun ca sign
--routes``): the authority decides what a member may route, the member's own config cannot
widen it. So an advertised route that the node's certificate does not carry is refused here
(:func:`split_advertised`): logged, shown in the status, not forwarded. A ``[[peer]]`` entry is
the same statement made by the local operator: its ``allowed_ips`` are the routes accepted
from that peer.

**Default routes are exit routes.** ``0.0.0.0/0`` and ``::/0`` in a peer's allowed IPs (signed
in its certificate, or listed in its ``[[peer]]`` entry) mean "may be an exit node"; they are
used only for the one peer selected as the exit node (:func:`decide_exit`) and never as routes
of the main table: :func:`effective_peer` strips them from every other peer, so that a peer
allowed to be an exit node does not capture the traffic of nodes that did not choose it.

**Our own LAN stays ours.** A peer's subnet route equal to or inside a network this node is
directly connected to (two homes on 192.168.1.0/24) is refused here (:func:`refused_routes`):
routing it would hand our own LAN to the tunnel.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from p2ptun.config import IPNetwork, PeerConfig

ExitState = Literal["off", "active", "waiting", "refused"]


def is_exit_route(net: IPNetwork) -> bool:
    """A default route (``0.0.0.0/0``, ``::/0``): what an exit node is allowed to carry."""
    return net.prefixlen == 0


def split_advertised(
    advertise: Iterable[IPNetwork], signed: Iterable[IPNetwork] | None
) -> tuple[tuple[IPNetwork, ...], tuple[IPNetwork, ...]]:
    """``(forwarded, refused)``: the advertised routes the certificate carries (``signed``;
    None for a node without a network: all of them), and the others."""
    routes = tuple(advertise)
    if signed is None:
        return routes, ()
    allowed = set(signed)
    return (
        tuple(r for r in routes if r in allowed),
        tuple(r for r in routes if r not in allowed),
    )


@dataclass(frozen=True)
class ExitDecision:
    """What becomes of the selected exit node: ``active`` (its ``defaults`` go through it),
    ``waiting`` (not a peer yet: a member not online), ``refused`` (not allowed, ``reason``
    says why) or ``off``."""

    name: str | None
    state: ExitState
    reason: str = ""
    defaults: tuple[IPNetwork, ...] = ()

    def as_dict(self, allow_lan: bool) -> dict[str, Any] | None:
        if self.name is None:
            return None
        return {
            "name": self.name,
            "state": self.state,
            "reason": self.reason,
            "routes": [str(n) for n in self.defaults],
            "allow_lan": allow_lan,
        }


OFF = ExitDecision(None, "off")


def decide_exit(
    name: str | None, peers: Mapping[str, PeerConfig], versions: Iterable[int]
) -> ExitDecision:
    """The exit node ``name`` among ``peers`` (their full allowed IPs), for a tunnel with
    addresses of the IP ``versions``."""
    if name is None:
        return OFF
    peer = peers.get(name)
    if peer is None:
        return ExitDecision(name, "waiting", f"{name} is not a peer (yet): not online or unknown")
    defaults = tuple(n for n in peer.allowed_ips if is_exit_route(n))
    if not defaults:
        return ExitDecision(
            name,
            "refused",
            f"{name} may not route 0.0.0.0/0 or ::/0 (not signed in its certificate, "
            "not in its allowed_ips)",
        )
    have = set(versions)
    usable = tuple(n for n in defaults if n.version in have)
    if not usable:
        return ExitDecision(
            name,
            "refused",
            f"{name} routes {', '.join(map(str, defaults))}, "
            "but our interface has no address of that family",
        )
    return ExitDecision(name, "active", f"all traffic through {name}", usable)


def refused_routes(peer: PeerConfig, lans: Iterable[IPNetwork]) -> list[tuple[IPNetwork, str]]:
    """The routes of ``peer`` we refuse, and why: a subnet route equal to or inside one of our
    own directly connected LANs (``lans``) would take our LAN's addresses into the tunnel
    (and replace the kernel's route to it). Host prefixes (overlay addresses) and exit routes
    are never refused here."""
    local = list(lans)
    refused = []
    for net in peer.allowed_ips:
        if is_exit_route(net) or net.prefixlen == net.max_prefixlen:
            continue
        lan = next(
            (n for n in local if n.version == net.version and net.subnet_of(n)),  # type: ignore[arg-type]
            None,
        )
        if lan is not None:
            refused.append((net, f"inside our own LAN {lan}"))
    return refused


def effective_peer(
    peer: PeerConfig, decision: ExitDecision, lans: Iterable[IPNetwork] = ()
) -> PeerConfig:
    """``peer`` as the data path and the kernel routes see it: its exit routes only when it
    is the active exit node (and only those of our families), none of the routes
    :func:`refused_routes` refuses."""
    refused = {net for net, _ in refused_routes(peer, lans)}
    if not refused and not any(is_exit_route(n) for n in peer.allowed_ips):
        return peer
    keep = decision.defaults if decision.state == "active" and decision.name == peer.name else ()
    nets = tuple(
        n for n in peer.allowed_ips if n not in refused and (not is_exit_route(n) or n in keep)
    )
    return replace(peer, allowed_ips=nets)


def peer_routes_status(
    full: PeerConfig, used: PeerConfig, lans: Iterable[IPNetwork] = ()
) -> dict[str, Any]:
    """A peer's routes for the status: those accepted (beyond host prefixes: its overlay
    addresses), those refused (``{"route", "reason"}``) and the exit routes it may carry
    but that are not in use (``unused``)."""
    refused = refused_routes(full, lans)
    accepted = [str(n) for n in used.allowed_ips if n.prefixlen < n.max_prefixlen]
    unused = [str(n) for n in full.allowed_ips if is_exit_route(n) and n not in used.allowed_ips]
    return {
        "accepted": accepted,
        "refused": [{"route": str(n), "reason": why} for n, why in refused],
        "unused": unused,
    }


__all__ = [
    "OFF",
    "ExitDecision",
    "decide_exit",
    "effective_peer",
    "is_exit_route",
    "peer_routes_status",
    "refused_routes",
    "split_advertised",
]

"""Peer relays: a node with a public address relays for its own peers (``[relay] enable =
true``), and its peers use it like any TURN server (docs/ARCHITECTURE.md §3a).

**Offering.** The node runs the embedded STUN/TURN service (the rendezvous' shell and the
TURN core, :func:`p2ptun.rendezvous.stun_turn.bind_peer_relay`, handed to the node by its
composition root as a :data:`PeerRelayFactory`: ``p2ptun.node`` imports nothing of the
rendezvous) in peer-relay mode, with a secret drawn at start that never leaves the process.
Each peer that comes online gets a sealed :class:`~p2ptun.signal.seal.RelayGrant`: the
server's URL and REST-API credentials minted for that peer's name alone
(:class:`RelayOffer`), again every :data:`GRANT_RENEW` seconds. It is never an open relay:
the core admits only users named after the node's current peers, and lets them reach only
addresses from which another of those peers allocates.

**Using.** A grant from a peer becomes a TURN server of the node's gatherer
(:func:`turn_server_from_grant` checks it first: a ``turn:`` URL over UDP to an IP literal
that is neither local nor multicast, credentials naming this node). The node then gathers
and restarts ICE, so that the new relayed candidate takes part; relayed candidates rank by
the RTT their allocation measured, so the nearer of the rendezvous' relay and the peer's is
preferred (:mod:`p2ptun.net.gather`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

from p2ptun.addr import Address, format_address
from p2ptun.config import IPNetwork, RelayConfig, TurnServerConfig
from p2ptun.config.values import parse_turn_url
from p2ptun.net.ports import Host
from p2ptun.signal.seal import RelayGrant
from p2ptun.turn.credentials import make_rest_credential, parse_rest_username

GRANT_LIFETIME = 6 * 3600
"""Seconds the credentials of a grant are valid."""
GRANT_RENEW = GRANT_LIFETIME / 3
"""Seconds between the grants an online peer gets (well before the last one expires)."""


class PeerRelayServer(Protocol):
    """The running peer relay as the node sees it."""

    async def serve(self) -> None: ...

    def set_users(self, names: Iterable[str]) -> None: ...

    def close(self) -> None: ...


#: ``factory(host, listen, relay_address, relay_ports, allow_peers, secret)``: bind the
#: peer relay.
PeerRelayFactory = Callable[
    [Host, Address, str, tuple[int, int], tuple[IPNetwork, ...], str],
    Awaitable[PeerRelayServer],
]


class RelayOffer:
    """Mints this node's grants (module docstring)."""

    def __init__(self, config: RelayConfig, secret: str) -> None:
        self.config = config
        self._secret = secret
        self.url = f"turn:{format_address((config.relay_address, config.listen[1]))}?transport=udp"

    def grant(self, peer: str, wall_time: float) -> RelayGrant:
        """A grant for ``peer`` valid :data:`GRANT_LIFETIME` seconds from ``wall_time``."""
        cred = make_rest_credential(self._secret, peer, wall_time, GRANT_LIFETIME)
        return RelayGrant(self.url, cred.username, cred.password)


def turn_server_from_grant(grant: RelayGrant, own_name: str) -> TurnServerConfig | str:
    """The TURN server a peer's grant names, or why it is refused (module docstring)."""
    try:
        host, port, transport = parse_turn_url(grant.url)
    except ValueError as exc:
        return f"bad URL: {exc}"
    if transport != "udp":
        return f"transport {transport}: peer relays are UDP"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return "the server must be an IP address"
    if ip.is_unspecified or ip.is_loopback or ip.is_multicast or ip.is_link_local:
        return f"{ip} is not a relay address"
    parsed = parse_rest_username(grant.username)
    if parsed is None or parsed[1] != own_name or not grant.password:
        return "the credentials are not for this node"
    return TurnServerConfig(grant.url, str(ip), port, "udp", grant.username, grant.password)

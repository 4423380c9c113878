"""The node's network (``[network]``): members learned from the rendezvous become peers.

:class:`NetworkPeers` holds the node's :class:`~p2ptun.membership.Roster` (the members whose
certificates it verified itself against ``[network] ca``) and turns it into the peers the
daemon runs, next to the ``[[peer]]`` entries of the config: each member is a
:class:`~p2ptun.config.PeerConfig` whose allowed IPs are its certificate's overlay addresses
(host prefixes) and routes. An explicit ``[[peer]]`` of the same name wins, and a member whose
addresses overlap a peer already placed is left out (logged): every address routes to one
peer. The daemon applies the result through the same add/remove path as a config reload
(:meth:`p2ptun.node.daemon.NodeDaemon.sync_peers`).

Connections are made **at once**: every verified online member gets a peer session that
offers right away, as configured peers do. A home network has a handful to a few dozen
machines; connecting all of them up front costs a few ICE checks and one consent check per peer
every few seconds, and makes the first packet to any member (``ping nas.home``) as fast as to
a configured peer. On demand (connecting at the first packet for a member) would need the
data path to hold packets for peers without a path and would put an ICE round (1-4 s) in
front of every first connection; it pays off only for networks of hundreds of members.
"""

from __future__ import annotations

from collections.abc import Sequence

from p2ptun.config import IPNetwork, NetworkConfig, PeerConfig
from p2ptun.log import get_logger
from p2ptun.membership import CertificateRejected, Member, MembershipDecodeError, Roster

log = get_logger("node.network")


class NetworkPeers:
    """The verified members of this node's network, as peers (module docstring)."""

    def __init__(self, network: NetworkConfig, own_name: str) -> None:
        self.config = network
        self.roster = Roster(network.ca, network.name, own_name)
        if network.revocations is not None:
            self.roster.apply_revocations(network.revocations, 0.0)

    @property
    def revocations(self) -> bytes | None:
        crl = self.roster.revocations
        return None if crl is None else crl.encode()

    def announce(self, name: str, certificate: bytes, wall: float) -> Member | None:
        """The rendezvous says ``name`` is online with ``certificate``: the member if it
        verifies (None, logged, if not; a member already accepted stays as it was)."""
        try:
            member = self.roster.consider(name, certificate, wall)
        except (MembershipDecodeError, CertificateRejected) as exc:
            log.warning("member refused", peer=name, reason=str(exc))
            return None
        return member

    def revoke(self, blob: bytes, wall: float) -> list[str]:
        """Apply a revocation list (raises MembershipDecodeError / CertificateRejected when
        it is not a newer list of our authority); the members it removed."""
        gone = self.roster.apply_revocations(blob, wall)
        for name in gone:
            log.warning("member revoked", peer=name)
        return gone

    def expire(self, wall: float) -> list[str]:
        gone = self.roster.expire(wall)
        for name in gone:
            log.warning("member certificate expired", peer=name)
        return gone

    def peers(self, explicit: Sequence[PeerConfig]) -> list[PeerConfig]:
        """The members as peer configs, after the explicit ``[[peer]]`` entries (which win on
        name, key or address)."""
        names = {p.name for p in explicit}
        keys = {p.public_key for p in explicit}
        placed: list[tuple[IPNetwork, str]] = [(n, p.name) for p in explicit for n in p.allowed_ips]
        result = []
        for name in sorted(self.roster.members):
            member = self.roster.members[name]
            if name in names or member.public_key in keys:
                continue
            nets = member.allowed_ips()
            clash = next(
                (
                    (net, other)
                    for net in nets
                    for other_net, other in placed
                    # Exit routes (0.0.0.0/0, ::/0) overlap everything: only the selected
                    # exit node uses them (p2ptun.node.routes), so they clash with nothing.
                    if net.prefixlen
                    and other_net.prefixlen
                    and net.version == other_net.version
                    and net.overlaps(other_net)  # type: ignore[arg-type,unused-ignore]
                ),
                None,
            )
            if clash is not None:
                log.warning(
                    "member left out: its addresses overlap another peer's",
                    peer=name,
                    address=str(clash[0]),
                    other=clash[1],
                )
                continue
            placed += [(n, name) for n in nets]
            result.append(PeerConfig(name, member.public_key, nets, groups=member.groups))
        return result

"""A whole deployment in one process: a rendezvous and nodes behind simulated NATs.

:class:`MemoryLab` builds on :mod:`p2plab.memnet` what the namespace lab builds on the kernel:
a public rendezvous (signaling, STUN and TURN on ``203.0.113.10``) and sites behind NATs of
the lab's types, one node each, every one of them the real composition root
(:func:`p2ptun.rendezvous.server.run_rendezvous`, :class:`p2ptun.node.daemon.NodeDaemon`) on an
in-memory host. Run it under ``trio.testing.MockClock(autojump_threshold=0)``: connecting,
an outage and the recovery take virtual seconds and real milliseconds.

::

    lab = MemoryLab()
    alice = lab.node("alice", "prc")
    bob = lab.node("bob", "sym")
    async with trio.open_nursery() as nursery:
        await lab.start(nursery)
        pinger = lab.pinger(alice, bob)          # 50 ms ICMP echo stream through the tunnel
        await nursery.start(pinger.run)
        await lab.wait_until(lambda: pinger.replies, 10)
        bob.router.renumber("198.51.100.112")   # the NAT's public address changes
        ...
        pinger.longest_gap(t0, t1)               # the outage, in virtual seconds

With ``network="home"`` the nodes are members of a network instead of listing each other:
the lab is the network authority, every node gets a certificate (signed, or enrolled through an
invite like ``p2ptun join`` makes one) and a ``[network]`` config without ``[[peer]]``, and the
rendezvous serves the network (``[[network]]``) instead of open registration. A node added
after :meth:`MemoryLab.start` is started with :meth:`MemoryLab.start_node`.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from p2plab.memnet import EPOCH, MemoryHost, MemoryNetwork, MemoryTun, Pinger, Router
from p2ptun.config import (
    IceConfig,
    InterfaceConfig,
    MetricsSettings,
    NetworkConfig,
    NetworkEntry,
    NodeConfig,
    NodeEntry,
    PeerConfig,
    RendezvousConfig,
    RendezvousRef,
    StunServerSettings,
    TurnServerConfig,
    TurnServerSettings,
    WebSettings,
)
from p2ptun.keys import clamp, public_key
from p2ptun.membership import (
    Certificate,
    Details,
    Invite,
    ed25519_public,
    sign_certificate,
    sign_grant,
)
from p2ptun.node.daemon import NodeDaemon
from p2ptun.rendezvous.server import run_rendezvous
from p2ptun.rendezvous.signaling import SignalingServer
from p2ptun.rendezvous.stun_turn import bind_peer_relay
from p2ptun.signal.seal import MemoryReplayRecord

RENDEZVOUS_IP = "203.0.113.10"
SIGNALING_PORT = 7070
STUN_PORT = 3478
OVERLAY = ipaddress.ip_network("10.77.0.0/24")


@dataclass
class MemoryNode:
    """One node of the lab: its machine, its config and (once the lab started) its daemon."""

    name: str
    host: MemoryHost
    config: NodeConfig
    _daemon: NodeDaemon | None = None
    seal_state: MemoryReplayRecord = field(default_factory=MemoryReplayRecord)
    """The node's record of sealed-message counters (kept across a restart of its daemon)."""
    certificate: Certificate | None = None

    @property
    def daemon(self) -> NodeDaemon:
        assert self._daemon is not None, "the lab has not started"
        return self._daemon

    @property
    def router(self) -> Router:
        assert self.host.router is not None, f"{self.name} has a public address"
        return self.host.router

    @property
    def overlay_ip(self) -> str:
        return str(self.config.interface.addresses[0].ip)

    @property
    def tun(self) -> MemoryTun:
        return self.host.tuns[self.config.interface.name]


class MemoryLab:
    """A rendezvous and nodes in one in-memory network (module docstring)."""

    def __init__(
        self,
        *,
        seed: int = 0,
        latency: float = 0.005,
        state_dir: Path | None = None,
        turn: bool = True,
        network: str | None = None,
        domain: str = "",
        stun_ports: tuple[int, ...] = (STUN_PORT,),
    ) -> None:
        self.network = MemoryNetwork(latency=latency, seed=seed)
        self.stun_ports = stun_ports
        """The rendezvous' STUN listeners (the first also serves TURN); every node asks each:
        two show a NAT's port allocation (what hard-NAT probing predicts from)."""
        self.rng = random.Random(seed)
        self.rendezvous_host = self.network.public_host("rendezvous", RENDEZVOUS_IP)
        self.rendezvous_key = self.new_key()
        self.nodes: list[MemoryNode] = []
        self._sites = 0
        self._state_dir = state_dir
        self.turn = turn
        self._auth_secret = self.rng.randbytes(16).hex()
        self.network_name = network
        self.domain = domain
        self.authority = self.rng.randbytes(32)
        """The network authority's Ed25519 seed (with ``network``)."""
        self._started = False
        self.signaling: SignalingServer | None = None
        self._rendezvous_scope: trio.CancelScope | None = None
        """The rendezvous' signaling server, once started (its core's counters)."""
        self.rendezvous_metrics: MetricsSettings | None = None
        """The rendezvous' ``[metrics]`` section (None: no metrics endpoint)."""
        self.rendezvous_web: WebSettings | None = None
        """The rendezvous' ``[web]`` section (None: no map page)."""

    def new_key(self) -> bytes:
        """A fresh X25519 private key from the lab's seeded generator."""
        return clamp(self.rng.randbytes(32))

    # -- building ---------------------------------------------------------------------------

    def site(self, nat: str) -> Router:
        """A new site behind a NAT of type ``nat`` (``cone``, ``prc``, ``sym``, ...)."""
        self._sites += 1
        k = self._sites
        return self.network.site(f"site{k}", nat, f"198.51.100.{10 + k}", f"10.0.{k}.0/24")

    def node(
        self,
        name: str,
        nat: str | None = None,
        *,
        authority: bytes | None = None,
        enrolled: bool = False,
        valid: tuple[float, float] | None = None,
        certificate: Certificate | None = None,
        groups: tuple[str, ...] = (),
    ) -> MemoryNode:
        """A node on a new site behind ``nat`` (None: a public host). Every node lists every
        other as a peer (configs are made when the lab starts), or, with a network, has a
        certificate: of the lab's authority unless ``authority`` (a seed) says otherwise,
        ``enrolled`` through an invite, ``valid`` for (not_before, not_after) virtual seconds
        from the lab's start (default: a year), or ``certificate`` as given (forged...);
        ``groups``: the certificate's groups. A node's ``[firewall]`` is its config's
        ``firewall`` (replace it before the lab starts)."""
        index = len(self.nodes) + 1
        if nat is None:
            host = self.network.public_host(name, f"192.0.2.{10 + index}")
        else:
            host = self.site(nat).host(name)
        key = self.new_key()
        address = ipaddress.ip_interface(f"{OVERLAY.network_address + index}/{OVERLAY.prefixlen}")
        turn: tuple[TurnServerConfig, ...] = ()
        if self.turn:
            url = f"turn:{RENDEZVOUS_IP}:{STUN_PORT}?transport=udp"
            turn = (TurnServerConfig(url, RENDEZVOUS_IP, STUN_PORT, "udp"),)
        config = NodeConfig(
            path=f"<{name}>",
            name=name,
            private_key=key,
            interface=InterfaceConfig("p2p0", (address,)),
            rendezvous=RendezvousRef(
                RENDEZVOUS_IP, SIGNALING_PORT, public_key(self.rendezvous_key)
            ),
            ice=IceConfig(stun=tuple((RENDEZVOUS_IP, p) for p in self.stun_ports), turn=turn),
            peers=(),
        )
        node = MemoryNode(name, host, config)
        if self.network_name is not None:
            node.certificate = certificate or self.certify(
                name,
                key,
                address,
                authority=authority,
                enrolled=enrolled,
                valid=valid,
                groups=groups,
            )
        self.nodes.append(node)
        return node

    def certify(
        self,
        name: str,
        key: bytes,
        address: ipaddress.IPv4Interface | ipaddress.IPv6Interface,
        *,
        authority: bytes | None = None,
        enrolled: bool = False,
        valid: tuple[float, float] | None = None,
        groups: tuple[str, ...] = (),
    ) -> Certificate:
        """A certificate for ``name`` with private key ``key`` (see :meth:`node`)."""
        assert self.network_name is not None
        seed = authority if authority is not None else self.authority
        start, end = valid if valid is not None else (0.0, 365 * 86400.0)
        details = Details(
            network=self.network_name,
            name=name,
            serial=self.rng.randbytes(16),
            addresses=(address,),
            routes=(),
            groups=tuple(sorted(groups)),
            not_before=int(EPOCH + start),
            not_after=int(EPOCH + end),
            authority=ed25519_public(seed),
        )
        if not enrolled:
            return sign_certificate(details, public_key(key), seed)
        enrollment = self.rng.randbytes(32)
        grant = sign_grant(details, int(EPOCH + 86400), ed25519_public(enrollment), seed)
        invite = Invite(grant, enrollment, f"{RENDEZVOUS_IP}:{SIGNALING_PORT}", bytes(32))
        return invite.enroll(public_key(key))

    def pair(self, nat_a: str, nat_b: str) -> tuple[MemoryNode, MemoryNode]:
        """``alice`` behind a NAT of type ``nat_a`` and ``bob`` behind one of ``nat_b``, each
        on a site of its own: the two-node setup most tests start from."""
        return self.node("alice", nat_a), self.node("bob", nat_b)

    def _finish_configs(self) -> None:
        for node in self.nodes:
            if node._daemon is None:
                self.new_daemon(node)

    def new_daemon(self, node: MemoryNode) -> None:
        """Give ``node`` a new daemon (not started) with nothing of the old one but what a
        restarted process finds on disk (its keys, config and sealed-message record): the
        lab's own use when it starts, and a test's for a restart."""
        network = None
        peers: tuple[PeerConfig, ...] = ()
        if node.certificate is not None:
            network = NetworkConfig(
                ca=ed25519_public(self.authority),
                cert_file=f"<{node.name}.cert>",
                certificate=node.certificate,
                domain=self.domain,
                dns=False,
            )
        else:
            peers = tuple(
                PeerConfig(
                    other.name,
                    public_key(other.config.private_key),
                    (ipaddress.ip_network(f"{other.overlay_ip}/32"),),
                )
                for other in self.nodes
                if other is not node
            )
        node.config = NodeConfig(
            path=node.config.path,
            name=node.config.name,
            private_key=node.config.private_key,
            interface=node.config.interface,
            rendezvous=node.config.rendezvous,
            ice=node.config.ice,
            peers=peers,
            network=network,
            relay=node.config.relay,
            metrics=node.config.metrics,
            firewall=node.config.firewall,
        )
        node._daemon = NodeDaemon(
            node.config,
            host=node.host,
            control_socket=False,
            seal_state=node.seal_state,
            peer_relay=bind_peer_relay,
        )

    def rendezvous_config(self) -> RendezvousConfig:
        database = ":memory:" if self._state_dir is None else str(self._state_dir / "rv.sqlite")
        turn = None
        if self.turn:
            turn = TurnServerSettings(
                realm="p2ptun",
                relay_address=RENDEZVOUS_IP,
                relay_ports=(49152, 49999),
                auth_secret=self._auth_secret,
                # The lab's public addresses are documentation blocks, denied by default.
                allow_peers=(
                    ipaddress.ip_network("192.0.2.0/24"),
                    ipaddress.ip_network("198.51.100.0/24"),
                ),
            )
        networks: tuple[NetworkEntry, ...] = ()
        if self.network_name is not None:
            networks = (NetworkEntry(ed25519_public(self.authority)),)
        return RendezvousConfig(
            path="<rendezvous>",
            listen=(RENDEZVOUS_IP, SIGNALING_PORT),
            private_key=self.rendezvous_key,
            database=database,
            open_registration=False,
            stun=StunServerSettings(tuple((RENDEZVOUS_IP, p) for p in self.stun_ports)),
            turn=turn,
            # Without a network the nodes are listed: they get TURN credentials (self-registered
            # ones would not); members of a network get them by their certificates.
            nodes=()
            if self.network_name is not None
            else tuple(NodeEntry(n.name, public_key(n.config.private_key)) for n in self.nodes),
            networks=networks,
            metrics=self.rendezvous_metrics,
            web=self.rendezvous_web,
        )

    # -- running ----------------------------------------------------------------------------

    async def start(
        self, nursery: trio.Nursery, *, nodes: Iterable[MemoryNode] | None = None
    ) -> None:
        """Start the network, the rendezvous and every node, or only ``nodes`` (each up when
        this returns; the others have their daemons, for a test to serve its own way)."""
        self._finish_configs()
        await nursery.start(self.network.run)
        await self.start_rendezvous(nursery)
        for node in self.nodes if nodes is None else nodes:
            await nursery.start(node.daemon.serve)
        self._started = True

    async def start_rendezvous(self, nursery: trio.Nursery) -> None:
        """Start the rendezvous (again, after :meth:`stop_rendezvous`: a restarted server
        with its database, which is in memory unless the lab has a ``state_dir``)."""
        self.signaling = await nursery.start(self._run_rendezvous)

    async def _run_rendezvous(
        self, *, task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED
    ) -> None:
        with trio.CancelScope() as scope:
            self._rendezvous_scope = scope
            await run_rendezvous(
                self.rendezvous_config(), self.rendezvous_host, task_status=task_status
            )

    def stop_rendezvous(self) -> None:
        """Stop the rendezvous (its listeners close; TURN allocations on it end)."""
        if self._rendezvous_scope is not None:
            self._rendezvous_scope.cancel()
            self._rendezvous_scope = None

    async def start_node(self, nursery: trio.Nursery, node: MemoryNode) -> None:
        """Start a node added after :meth:`start` (a machine that joins later)."""
        self.new_daemon(node)
        await nursery.start(node.daemon.serve)

    def pinger(self, source: MemoryNode, target: MemoryNode, interval: float = 0.05) -> Pinger:
        """A steady ping stream from ``source``'s kernel to ``target``'s overlay address."""
        return Pinger(source.tun, source.overlay_ip, target.overlay_ip, interval=interval)

    async def ping_stream(
        self,
        nursery: trio.Nursery,
        source: MemoryNode,
        target: MemoryNode,
        *,
        replies: int = 1,
        timeout: float = 15,
    ) -> Pinger:
        """A :meth:`pinger` started in ``nursery``, once ``replies`` replies came back
        (``trio.TooSlowError`` after ``timeout``)."""
        pinger = self.pinger(source, target)
        await nursery.start(pinger.run)
        await self.wait_until(lambda: len(pinger.replies) >= replies, timeout)
        return pinger

    def block_direct(self, a: MemoryNode, b: MemoryNode) -> None:
        """Drop everything between the two nodes' NATs (the relay on the rendezvous still
        works); ``network.blocked = None`` heals it."""
        ends = {a.router.public_ip, b.router.public_ip}
        self.network.blocked = lambda src, dst: {src[0], dst[0]} == ends

    @staticmethod
    async def wait_until(condition: Callable[[], object], timeout: float) -> float:
        """Wait (virtual time) until ``condition()`` is true; the time it took. Raises
        ``trio.TooSlowError`` after ``timeout``."""
        start = trio.current_time()
        with trio.fail_after(timeout):
            while not condition():
                await trio.sleep(0.01)
        return trio.current_time() - start

"""The node daemon, ``p2ptun up -c FILE`` (docs/ARCHITECTURE.md §1, §3, §4).

One trio nursery owns everything the node runs:

* the **data path** (:class:`~p2ptun.node.wgtunnel.WgTunnel`): the TUN device, one UDP
  endpoint per address family, the sans-I/O WireGuard :class:`~p2ptun.wireguard.Device`;
  TCP SYNs crossing the tunnel get their MSS clamped (:mod:`p2ptun.node.mss`);
* the **signaling client** (:class:`~p2ptun.net.signaling.SignalingClient`), which keeps a
  connection to the rendezvous with jittered backoff; an unreachable rendezvous is reported
  once and retried in the background, it never stops the daemon;
* the **ICE transport** (:class:`~p2ptun.net.ice_transport.IceTransport`) on the same UDP
  endpoints: the STUN/ChannelData demux, candidate gathering with the TURN relays, and one
  ICE session per offer/answer of each peer (:class:`~p2ptun.node.peer.PeerSession` decides
  when); WireGuard that a relay unwraps goes to the data path;
* the **control socket** (:mod:`p2ptun.node.control`) serving ``status`` and ``ping``;
* **signals**: SIGTERM/SIGINT stop the daemon cleanly (routes, interface, control socket and
  relay allocations removed, exit 0); SIGHUP reloads the config;
* with ``[network]``, the **members** of the node's network (:mod:`p2ptun.node.network`): the
  rendezvous announces them with their certificates, the node verifies each itself and runs
  every valid one as a peer, next to the ``[[peer]]`` entries, through the same add/remove
  path as a reload (:meth:`NodeDaemon.sync_peers`); a member whose certificate is revoked (a
  newer revocation list, from the rendezvous or ``p2ptun ca revoke`` on this machine) or
  expires is removed at once, its routes and WireGuard session with it.

Start-up is ordered so that a failure leaves nothing behind and says one line: privileges
(CAP_NET_ADMIN), the interface name (must not exist yet), the control socket (no other daemon
on it), the TUN device, addresses, MTU, routes, UDP sockets. Only then does systemd hear
``READY=1`` (``Type=notify``): the interface is up and addressed when anything that depends on
the unit starts. ``STATUS=`` lines follow the peers' states.

The MTU (:func:`default_mtu`): the worst path a packet can take is an IPv6 underlay through a
TURN relay, so the tunnel's packets must fit in ``1500 - 40 (IPv6) - 8 (UDP) - 4 (TURN
ChannelData header) - 32 (WireGuard header and tag) = 1416`` bytes; 1416 is a multiple of 8
(WireGuard pads to 16, but never beyond the MTU, so no padding is lost). TURN over TCP or TLS
runs in a byte stream, so the TCP segments carry it whatever its size. ``[interface] mtu``
overrides it.

Reload (SIGHUP): the file is read again; a file that does not load (syntax, bad key, ...) is
refused with one log line and the running config stays. Otherwise peers that disappeared are
removed (their routes with them), new peers are added (routes appear), peers whose allowed IPs
changed get their routes and WireGuard routing updated, and interface addresses and MTU are
applied; the other peers' sessions are not touched. A changed peer set or rendezvous replaces
the signaling client (established paths do not depend on it); the record of the sealed-message
counters accepted (:mod:`p2ptun.node.sealstate`, a state file) outlives it, so a reload, like a
restart, gives a malicious rendezvous nothing to replay. A renewed certificate
(``[network] cert_file``) is handed to the rendezvous on the running connection, and a newer
revocation list file is applied and published; tunnels are not touched. Changing ``name``, the
private key, ``[interface] name`` or the network's authority needs a restart: such a reload is
refused; ``[ice]`` changes are logged and take effect at the next restart. A changed
``[firewall]`` replaces the rule set at once; tracked flows the new rules would not allow are
cut (:meth:`p2ptun.firewall.Firewall.set_policy`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import ipaddress
import os
import signal
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import trio

from p2ptun import config as config_mod
from p2ptun.addr import Address, format_address
from p2ptun.config import IPInterface, IPNetwork, NodeConfig, PeerConfig, TurnServerConfig
from p2ptun.errors import EXIT_OK, P2ptunError, RuntimeFailure
from p2ptun.firewall import Firewall, Policy, with_own_services
from p2ptun.ice import AgentConfig
from p2ptun.ice.hardnat import HardNatConfig
from p2ptun.keys import encode_key
from p2ptun.log import get_logger
from p2ptun.membership import CertificateRejected, MembershipDecodeError
from p2ptun.net.dispatch import Dispatcher
from p2ptun.net.forwarding import lan_prefixes
from p2ptun.net.gather import GatherOptions, IssuedCredentials
from p2ptun.net.http import HttpServer
from p2ptun.net.ice_transport import IceTransport
from p2ptun.net.ports import ChangeKind, DatagramPort, Host
from p2ptun.net.sdnotify import Notifier
from p2ptun.net.signaling import SignalingClient, TurnCredentialsUnavailable
from p2ptun.net.system import SystemHost
from p2ptun.net.turn_relay import TurnRelay
from p2ptun.node import control
from p2ptun.node.clockwatch import SuspendDetector
from p2ptun.node.host_routing import HostRouting
from p2ptun.node.mss import mss_for_mtu
from p2ptun.node.network import NetworkPeers
from p2ptun.node.peer import PeerSession
from p2ptun.node.peer_relay import (
    GRANT_RENEW,
    PeerRelayFactory,
    PeerRelayServer,
    RelayOffer,
    turn_server_from_grant,
)
from p2ptun.node.routes import (
    OFF,
    ExitDecision,
    decide_exit,
    effective_peer,
    is_exit_route,
    peer_routes_status,
    refused_routes,
)
from p2ptun.node.sealstate import SealStateFile, seal_state_path
from p2ptun.node.wgtunnel import WgTunnel
from p2ptun.signal.client import (
    Disconnected,
    MemberAnnounced,
    PresenceChanged,
    RegisteredEvent,
    RegistrationRefused,
    RevocationsReceived,
)
from p2ptun.signal.seal import RelayGrant, ReplayRecord
from p2ptun.wireguard import Device, PathQuiet, Peer

if TYPE_CHECKING:
    from p2ptun.node.names import DnsResponder

log = get_logger("node")

UNDERLAY_MTU = 1500
IPV6_HEADER = 40
UDP_HEADER = 8
CHANNEL_DATA_HEADER = 4
WIREGUARD_OVERHEAD = 32
"""WireGuard transport message: type/reserved (4), receiver index (4), counter (8), tag (16)."""
PATH_OVERHEAD = IPV6_HEADER + UDP_HEADER + CHANNEL_DATA_HEADER + WIREGUARD_OVERHEAD
CAP_NET_ADMIN = 12
CONSENT_REGATHER_INTERVAL = 5.0
"""Consent loss (one peer's or many at once) regathers at most this often."""


def firewall_off() -> bool:
    """``P2PTUN_FIREWALL=off``: no filtering at all, every packet passes (for measuring the
    firewall's cost, and for finding out whether it is what drops a packet)."""
    return os.environ.get("P2PTUN_FIREWALL", "").lower() == "off"


def default_mtu(underlay: int = UNDERLAY_MTU) -> int:
    """The tunnel MTU for the worst path over an ``underlay``-byte link (IPv6, TURN
    ChannelData, WireGuard), rounded down to a multiple of 8: 1416 for 1500."""
    return (underlay - PATH_OVERHEAD) // 8 * 8


DEFAULT_MTU = default_mtu()
#: The node's ICE agents: the first pair to pass a check carries data at once, relayed or
#: direct (each check nominates until one pair is nominated), and a better pair that
#: succeeds later takes over without a new handshake (renomination: relayed to direct,
#: direct to a better direct); while a direct pair is selected, the best relayed pair is kept
#: valid as a standby.
NODE_AGENT_CONFIG = AgentConfig(relay_first=True, direct_first=True, aggressive=True, standby=True)
#: The suspend check runs on every wake-up of the ICE timer (consent checks: every 4–6 s per
#: connected peer) and, without peers, at least this often.
SUSPEND_CHECK_INTERVAL = 60.0


# -- start-up checks ---------------------------------------------------------------------------


def has_net_admin() -> bool:
    """Does this process hold CAP_NET_ADMIN in its effective set?"""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except (OSError, ValueError, IndexError):
        pass
    return os.geteuid() == 0


def check_privileges(interface: str) -> None:
    """Raise :class:`RuntimeFailure` (one line) unless we may create and configure a TUN."""
    if not has_net_admin():
        raise RuntimeFailure(
            f"p2ptun up: creating interface {interface} needs CAP_NET_ADMIN "
            f"(running as uid {os.geteuid()} without it); run as root or from the systemd unit"
        )


def routes_for(
    addresses: Iterable[IPInterface], allowed_ips: Iterable[IPNetwork]
) -> list[IPNetwork]:
    """The ``allowed_ips`` prefixes that the interface's own prefixes do not already route."""
    connected = [a.network for a in addresses]
    needed: list[IPNetwork] = []
    for net in allowed_ips:
        if is_exit_route(net):
            continue  # an exit node's default route: policy routing, never the main table
        covered = any(
            net.version == c.version and net.subnet_of(c)  # type: ignore[arg-type]
            for c in connected
        )
        if not covered:
            needed.append(net)
    return needed


def signaling_client(
    config: NodeConfig,
    host: Host,
    revocations: bytes | None = None,
    replay: ReplayRecord | None = None,
) -> SignalingClient:
    """The signaling client for a node config: this node's name and key, the rendezvous'
    address and key, the configured peers' keys (which sealed messages it accepts) and, for a
    member of a network, its certificate and the newest revocation list it knows; ``replay``
    remembers the sealed-message counters accepted (the daemon's state file, kept across the
    clients a reload replaces)."""
    network = config.network
    return SignalingClient(
        host,
        name=config.name,
        private_key=config.private_key,
        rendezvous=config.rendezvous.addresses,
        rendezvous_key=config.rendezvous.public_key,
        peers={p.name: p.public_key for p in config.peers},
        certificate=None if network is None else network.certificate.encode(),
        revocations=revocations,
        replay=replay,
    )


# -- the daemon --------------------------------------------------------------------------------


class NodeDaemon:
    """The node daemon for one config. :meth:`run` is the whole service life.

    It is also the :class:`~p2ptun.node.peer.NodeContext` its peers see: the data path, the
    ICE transport and the current signaling client.
    """

    def __init__(
        self,
        config: NodeConfig,
        *,
        host: Host | None = None,
        notifier: Notifier | None = None,
        control_socket: bool = True,
        seal_state: ReplayRecord | None = None,
        peer_relay: PeerRelayFactory | None = None,
    ) -> None:
        """``host``: the machine (default: this one, :class:`SystemHost`; the tests' in-memory
        network gives another). ``control_socket``: serve ``status``/``ping`` on the config's
        control socket (off for daemons that share a process in tests). ``seal_state``: where
        the sealed-message counters accepted are kept (default: the state file of
        :func:`~p2ptun.node.sealstate.seal_state_path`; daemons that share a process in tests
        pass an in-memory record). ``peer_relay``: binds the peer relay a ``[relay]`` section
        asks for (:mod:`p2ptun.node.peer_relay`; the composition root's caller gives it)."""
        self.config = config
        self._peer_relay_factory = peer_relay
        self.relay_offer: RelayOffer | None = None
        self.relay_server: PeerRelayServer | None = None
        #: The peer relays we use, by server IP: the peer that runs each (for the status).
        self._relay_owners: dict[str, str] = {}
        self.host: Host = host if host is not None else SystemHost()
        self.notifier = notifier if notifier is not None else Notifier()
        self.control_socket = control_socket
        self.mtu = config.interface.mtu or DEFAULT_MTU
        self.peers: dict[str, PeerSession] = {}
        self._tunnel: WgTunnel | None = None
        self._transport: IceTransport | None = None
        self._endpoints: list[DatagramPort] = []
        self.dispatchers: list[Dispatcher] = []
        """One per UDP endpoint: the only owner of its dispatch (built in _open_data_path)."""
        self._stop_requested = trio.Event()
        self.signaling: SignalingClient | None = None
        self._signaling_scope: trio.CancelScope | None = None
        self._peer_scopes: dict[str, trio.CancelScope] = {}
        self._rendezvous_warned = False
        self._last_status_line = ""
        self._nursery: trio.Nursery | None = None
        self._suspend = SuspendDetector()
        self._restart_after_round = False
        self._last_consent_regather = -CONSENT_REGATHER_INTERVAL
        #: The sealed-message counters accepted, on disk (replays refused across restarts).
        self.seal_state: ReplayRecord = (
            seal_state
            if seal_state is not None
            else SealStateFile(seal_state_path(config.interface.name), config.public_key)
        )
        #: When the current rendezvous connection registered (None: not registered yet).
        self._registered_at: float | None = None
        self.network = (
            NetworkPeers(config.network, config.name) if config.network is not None else None
        )
        self._peers_lock = trio.Lock()
        self._members_changed = trio.Event()
        self.names: DnsResponder | None = None
        #: The ``[metrics]`` endpoint while it runs (None without the section).
        self.metrics: HttpServer | None = None
        #: The exit node asked for (config or ``p2ptun set exit-node``) and what came of it.
        self.exit_choice: str | None = config.exit_node
        self.exit: ExitDecision = OFF
        #: Every wanted peer with its full allowed IPs (exit routes included).
        self._full_peers: dict[str, PeerConfig] = {}
        #: Forwarding, our nftables table and the exit routing on the host.
        self.routing = HostRouting(
            self.host,
            self.interface,
            config.control_socket.removesuffix(".sock") + ".nftables" if control_socket else None,
        )
        #: Our directly connected LAN prefixes (a peer's route inside one is refused).
        self._lans: tuple[IPNetwork, ...] = ()
        self._refused_logged: set[tuple[str, IPNetwork]] = set()

    # -- NodeContext ------------------------------------------------------------------------

    @property
    def tunnel(self) -> WgTunnel:
        assert self._tunnel is not None
        return self._tunnel

    @property
    def transport(self) -> IceTransport:
        assert self._transport is not None
        return self._transport

    @property
    def lite(self) -> bool:
        return self.config.ice.lite

    @property
    def on_demand_idle(self) -> float | None:
        ice = self.config.ice
        return float(ice.idle_timeout) if ice.on_demand else None

    def peer_changed(self) -> None:
        self._notify_status()

    def regather(self, reason: str) -> bool:
        """A peer's path lost consent: our candidates may be stale (a NAT renumbered or lost
        its mappings, which no netlink event tells). Gather again (docs/ARCHITECTURE.md §4);
        when the round is done the peers waiting for it restart (:meth:`_round_done`).
        Returns False when the candidates were gathered a moment ago (restart now)."""
        transport = self.transport
        if not transport.gathering_complete:
            return True  # a round is under way
        now = trio.current_time()
        if now - self._last_consent_regather < CONSENT_REGATHER_INTERVAL:
            return False
        self._last_consent_regather = now
        log.info("regathering", reason=reason)
        transport.regather(restart_sessions=False)
        return True

    # -- lifetime --------------------------------------------------------------------------

    @property
    def interface(self) -> str:
        return self.config.interface.name

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The service life of ``p2ptun up``: :meth:`serve` until SIGTERM/SIGINT; SIGHUP
        reloads the config. Raises :class:`RuntimeFailure` (one line) when the node cannot
        start."""
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            check_privileges(self.interface)
            async with trio.open_nursery() as nursery:
                await nursery.start(self.serve)
                task_status.started()
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        await self.reload()
                        continue
                    log.info("stopping", signal=signal.Signals(signum).name)
                    self.stop()
                    break

    def stop(self) -> None:
        """Ask :meth:`serve` to stop cleanly (byes, relays released, routes removed)."""
        self._stop_requested.set()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the node on its host, run it until :meth:`stop`, tear it down."""
        cfg = self.config
        if await self.host.interface_exists(self.interface):
            raise RuntimeFailure(
                f"interface {self.interface} already exists (another p2ptun daemon or another "
                "program owns it); choose another [interface] name or remove it"
            )
        if self.control_socket:
            control.prepare_socket_path(cfg.control_socket)
        # Every underlay socket carries the mark, so that an exit node (now or selected later)
        # never routes the tunnel's own traffic into the tunnel (p2ptun.net.forwarding).
        self.host.set_fwmark(cfg.interface.fwmark)
        metrics = await self._bind_metrics()
        try:
            tunnel = await self._open_data_path()
            await self._start_routing()
        except BaseException:
            if metrics is not None:
                await metrics.listener.aclose()
            if self._tunnel is not None:
                await self._teardown(self._tunnel)
            raise
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for endpoint, dispatcher in zip(self._endpoints, self.dispatchers, strict=True):
                    nursery.start_soon(endpoint.receive_loop, dispatcher)
                await nursery.start(tunnel.run)
                if self.control_socket:
                    await nursery.start(control.serve, cfg.control_socket, self._handle_control)
                await self._start_peer_relay(nursery)
                if metrics is not None:
                    await nursery.start(metrics.serve)
                await self._start_signaling(nursery)
                await nursery.start(self.transport.run)
                for session in self.peers.values():
                    self._start_peer(session)
                nursery.start_soon(self._watch_network)
                nursery.start_soon(self._watch_suspend)
                if self.network is not None:
                    nursery.start_soon(self._watch_expiry)
                    network_cfg = self.network.config
                    if network_cfg.dns and network_cfg.domain:
                        # Imported here: the DNS wire format library costs 50 ms of start-up,
                        # which a node that answers no names should not pay.
                        from p2ptun.node.names import DnsResponder

                        self.names = DnsResponder(
                            self.host, self.interface, cfg.interface.addresses, network_cfg.domain
                        )
                        self._update_names()
                        await nursery.start(self.names.run)
                log.info(
                    "node up",
                    name=cfg.name,
                    interface=self.interface,
                    addresses=",".join(str(a) for a in cfg.interface.addresses),
                    mtu=self.mtu,
                    port=tunnel.listen_port,
                    peers=len(self.peers),
                    control=cfg.control_socket if self.control_socket else "-",
                )
                self.notifier.ready(self._status_line())
                task_status.started()
                await self._stop_requested.wait()
                self.notifier.stopping()
                await self._stop()
                nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            await self._teardown(tunnel)
        log.info("node stopped", interface=self.interface)

    # -- the peer relay (p2ptun.node.peer_relay) -----------------------------------------

    async def _start_peer_relay(self, nursery: trio.Nursery) -> None:
        relay = self.config.relay
        if relay is None:
            return
        if self._peer_relay_factory is None:
            raise RuntimeFailure("[relay] enable = true: this build of the node has no relay")
        secret = self.host.random_bytes(32).hex()
        server = await self._peer_relay_factory(
            self.host,
            relay.listen,
            relay.relay_address,
            relay.relay_ports,
            relay.allow_peers,
            secret,
        )
        self.relay_server = server
        self.relay_offer = RelayOffer(relay, secret)
        server.set_users(self.peers)
        nursery.start_soon(server.serve)
        nursery.start_soon(self._renew_grants)
        log.info(
            "peer relay on",
            url=self.relay_offer.url,
            listen=format_address(relay.listen),
            ports=f"{relay.relay_ports[0]}-{relay.relay_ports[1]}",
        )

    def _grant_relay(self, peer: str) -> None:
        """Send ``peer`` (online) credentials for our peer relay, if we run one."""
        offer, client = self.relay_offer, self.signaling
        if offer is None or client is None or peer not in self.peers:
            return
        if client.send_to(peer, offer.grant(peer, self.host.wall_clock())):
            log.info("peer relay granted", peer=peer)

    async def _renew_grants(self) -> None:
        while True:
            await trio.sleep(GRANT_RENEW)
            for name, session in self.peers.items():
                if session.online:
                    self._grant_relay(name)

    def _relay_granted(self, peer: str, grant: RelayGrant) -> None:
        """A peer offers its relay: a TURN server of ours from now on; gather and restart
        ICE so that its relayed candidate takes part (p2ptun.node.peer_relay)."""
        server = turn_server_from_grant(grant, self.config.name)
        if isinstance(server, str):
            log.warning("peer relay grant refused", peer=peer, reason=server)
            return
        configured = {t.host for t in self.config.ice.turn} | {
            host for host, _ in self.config.rendezvous.addresses
        }
        owner = self._relay_owners.get(server.host, peer)
        if owner != peer or server.host in configured:
            why = f"{owner}'s relay" if owner != peer else "one of our configured servers"
            log.warning("peer relay grant refused", peer=peer, reason=why)
            return
        self._relay_owners[server.host] = peer
        if self.transport.gatherer.add_turn_server(server):
            log.info("using the relay of a peer", peer=peer, server=server.url)
            self._restart_after_round = True
            self.transport.regather(restart_sessions=False)

    async def _bind_metrics(self) -> HttpServer | None:
        """The ``[metrics]`` endpoint's listener, bound before anything else opens (a busy
        port ends the start with one line); None without the section."""
        settings = self.config.metrics
        if settings is None:
            return None
        # Imported here: prometheus_client costs start-up time a node without metrics saves.
        from p2ptun.net.metrics import bind_metrics
        from p2ptun.node.metrics import NodeCollector

        self.metrics = await bind_metrics(
            self.host, settings.listen, NodeCollector(self, trio.current_time)
        )
        return self.metrics

    async def _stop(self) -> None:
        """Say goodbye to the peers and release the relays while the sockets still run."""
        with trio.CancelScope(shield=True):
            for session in self.peers.values():
                session.close()
            with trio.move_on_after(3):
                await self.transport.aclose()
            if self.signaling is not None:
                with trio.move_on_after(0.2):  # let the signaling writer flush the byes
                    await trio.sleep(0.2)
                self.signaling.stop()

    async def _open_data_path(self) -> WgTunnel:
        """TUN, addresses, MTU, up, routes, UDP sockets, WireGuard device, ICE transport,
        peers."""
        cfg = self.config
        host = self.host
        tun = host.open_tun(self.interface)
        endpoints: list[DatagramPort] = []
        try:
            await host.configure_interface(self.interface, cfg.interface.addresses, self.mtu)
            endpoints = host.open_datagram_ports(cfg.ice.port)
            device = Device(
                cfg.private_key, rng=host.random_bytes, wall_clock=host.wall_clock, mtu=self.mtu
            )
            # learn_endpoints: until ICE selects a pair, answer an authenticated handshake
            # where it came from (the two sides select within a round trip of each other).
            tunnel = WgTunnel(
                device,
                tun,
                endpoints,
                mss=mss_for_mtu(self.mtu),
                learn_endpoints=True,
                on_path_quiet=self._path_quiet,
                on_relayed_roam=self._relayed_roam,
                on_no_path=self._no_path,
                firewall=None if firewall_off() else Firewall(self._firewall_policy(cfg)),
            )
            self._tunnel = tunnel
            transport = IceTransport(
                endpoints,
                GatherOptions.from_config(cfg.ice, self.interface),
                host=host,
                agent_config=dataclasses.replace(
                    NODE_AGENT_CONFIG, hard_nat=HardNatConfig() if cfg.ice.hard_nat else None
                ),
                credentials=self._turn_credentials,
                relayed_wireguard=tunnel.receive_relayed,
                after_relay_batch=tunnel.flush,
                on_gathered=self._round_done,
                on_timer=self._check_suspend,
                on_mapping_moved=self._mapping_moved,
            )
            self._transport = transport
            # Each socket's dispatch has one owner, built here with every handler it needs:
            # WireGuard to the data path, STUN and ChannelData to the mux (ICE, TURN).
            mux = transport.mux
            self._endpoints = endpoints
            self.dispatchers = [
                Dispatcher(
                    stun=mux.on_stun,
                    channel_data=mux.on_channel_data,
                    wireguard=tunnel.on_datagram,
                    drained=tunnel.udp_drained,
                )
                for _ in endpoints
            ]
            await self._refresh_lans()
            for peer_cfg in self.wanted_peers():
                await self._add_peer(peer_cfg)
        except BaseException:
            for ep in endpoints:
                ep.close()
            tun.close()
            self._tunnel = None
            raise
        return tunnel

    async def _teardown(self, tunnel: WgTunnel) -> None:
        """Remove routes, close the TUN device (the interface goes with it) and the sockets.
        Runs shielded: a second signal must not leave half the state behind."""
        with trio.CancelScope(shield=True):
            await self._stop_routing()
            for session in list(self.peers.values()):
                for prefix in session.routes:
                    with contextlib.suppress(P2ptunError):
                        await self.host.remove_route(self.interface, prefix)
            tunnel.close()
            for endpoint in self._endpoints:
                endpoint.close()
            self._tunnel = None
        self.notifier.close()

    # -- signaling ------------------------------------------------------------------------

    async def _start_signaling(self, nursery: trio.Nursery) -> None:
        network = self.network
        client = signaling_client(
            self.config,
            self.host,
            None if network is None else network.revocations,
            self.seal_state,
        )
        explicit = {p.name for p in self.config.peers}
        for name, session in self.peers.items():
            if name not in explicit:  # a member: its presence is announced, not watched
                client.core.add_peer(name, session.config.public_key)
        scope = trio.CancelScope()
        self.signaling = client
        self._signaling_scope = scope
        await nursery.start(self._run_signaling, client, scope)

    async def _run_signaling(
        self,
        client: SignalingClient,
        scope: trio.CancelScope,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        with scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(client.run)
                nursery.start_soon(self._signaling_events, client)
                nursery.start_soon(self._signaling_signals, client)
                task_status.started()

    async def _replace_signaling(self) -> None:
        """The peer set changed (reload): the signaling client knows its peers from the start,
        so a new one replaces it. Established paths do not depend on it."""
        old, old_scope = self.signaling, self._signaling_scope
        if old is not None:
            old.stop()
        if old_scope is not None:
            old_scope.cancel()
        self._rendezvous_warned = False
        assert self._nursery is not None
        await self._start_signaling(self._nursery)
        for session in self.peers.values():
            session.signaling_replaced()

    async def _signaling_events(self, client: SignalingClient) -> None:
        async for event in client.events:
            if client is not self.signaling:
                continue
            # The address of this attempt (one of several for a rendezvous cluster).
            rv = format_address(client.rendezvous)
            if isinstance(event, RegisteredEvent):
                self._registered_at = trio.current_time()
                self._rendezvous_warned = False
                log.info("rendezvous connected", rendezvous=rv, name=event.name)
                self._regather_if_servers_failed()
            elif isinstance(event, Disconnected):
                if not self._rendezvous_warned:
                    self._rendezvous_warned = True
                    log.warning(
                        f"rendezvous {rv} unreachable ({event.reason}); "
                        "retrying in the background, tunnels keep running"
                    )
                for session in self.peers.values():
                    session.online = None
            elif isinstance(event, RegistrationRefused):
                log.error(
                    "rendezvous refused registration",
                    rendezvous=rv,
                    reason=event.reason.name,
                    text=event.text,
                )
            elif isinstance(event, PresenceChanged):
                target = self.peers.get(event.peer)
                if target is not None:
                    log.info("peer presence", peer=event.peer, online=event.online)
                    target.on_presence(event.online)
                    if event.online:
                        self._grant_relay(event.peer)
            elif isinstance(event, MemberAnnounced):
                await self._member_announced(client, event.name, event.certificate)
            elif isinstance(event, RevocationsReceived) and self.network is not None:
                try:
                    await self.apply_revocations(event.blob, publish=False)
                except (MembershipDecodeError, CertificateRejected) as exc:
                    # Not newer, or not our authority's: a rendezvous cannot roll one back.
                    log.debug("revocation list ignored", reason=str(exc))
            self._notify_status()

    async def _signaling_signals(self, client: SignalingClient) -> None:
        async for received in client.signals:
            session = self.peers.get(received.peer)
            if session is None or client is not self.signaling:
                continue
            if isinstance(received.message, RelayGrant):
                self._relay_granted(received.peer, received.message)
                continue
            session.on_signal(received)

    async def _turn_credentials(self, server: TurnServerConfig) -> IssuedCredentials:
        """Rendezvous-issued credentials for a TURN server configured without them."""
        client = self.signaling
        try:
            if client is None:
                raise TurnCredentialsUnavailable("no signaling client")
            creds = await client.turn_credentials(timeout=15.0)
        except TurnCredentialsUnavailable as exc:
            raise RuntimeFailure(f"{server.url}: {exc}") from None
        return IssuedCredentials(creds.username, creds.password, float(creds.ttl))

    # -- the network's members -------------------------------------------------------------

    async def _member_announced(
        self, client: SignalingClient, name: str, certificate: bytes
    ) -> None:
        network = self.network
        if network is None or any(p.name == name for p in self.config.peers):
            return
        member = network.announce(name, certificate, self.host.wall_clock())
        if member is None:
            return
        await self.sync_peers()
        self._members_changed.set()

    async def apply_revocations(self, blob: bytes, *, publish: bool = True) -> list[str]:
        """A revocation list (from the rendezvous, the config, or ``p2ptun ca revoke`` here):
        verify it against our authority, drop the members it revokes, and (``publish``) hand
        it to the rendezvous. Raises MembershipDecodeError or CertificateRejected for a list
        that is not a newer one of our authority. Returns the names removed."""
        network = self.network
        assert network is not None, "not a member of a network"
        gone = network.revoke(blob, self.host.wall_clock())
        if publish and self.signaling is not None:
            self.signaling.core.publish_revocations(blob)
            self.signaling.flush()
        if gone:
            await self.sync_peers()
        return gone

    async def _watch_expiry(self) -> None:
        """Drop members when their certificates expire (wall clock), within a second."""
        network = self.network
        assert network is not None
        while True:
            self._members_changed = trio.Event()
            due = network.roster.next_expiry()
            wait = 3600.0 if due is None else min(3600.0, max(0.0, due - self.host.wall_clock()))
            with trio.move_on_after(wait + (0.0 if due is None else 0.05)):
                await self._members_changed.wait()
                continue
            if network.expire(self.host.wall_clock()):
                await self.sync_peers()

    def wanted_peers(self) -> list[PeerConfig]:
        """The peers this node runs: the config's ``[[peer]]`` entries and the verified
        members of its network, each with the exit routes only if it is the active exit node
        (which this decides again: :attr:`exit`)."""
        explicit = list(self.config.peers)
        full = explicit if self.network is None else explicit + self.network.peers(explicit)
        self._full_peers = {p.name: p for p in full}
        versions = {a.version for a in self.config.interface.addresses}
        decision = decide_exit(self.exit_choice, self._full_peers, versions)
        if decision != self.exit:
            if decision.state in ("refused", "waiting"):
                log.warning("exit node not used", exit_node=decision.name, reason=decision.reason)
            self.exit = decision
        for peer in full:
            for route, why in refused_routes(peer, self._lans):
                if (peer.name, route) not in self._refused_logged:
                    self._refused_logged.add((peer.name, route))
                    log.warning("peer route refused", peer=peer.name, route=str(route), reason=why)
        return [effective_peer(p, decision, self._lans) for p in full]

    async def _refresh_lans(self) -> None:
        """Our directly connected prefixes (not the tunnel's): a peer's route inside one of
        them is refused (p2ptun.node.routes)."""
        try:
            local = await self.host.local_addresses(exclude=[self.interface])
        except P2ptunError as exc:
            log.warning("cannot list local addresses", error=str(exc))
            return
        self._lans = tuple(lan_prefixes([(a.address, a.prefixlen) for a in local]))

    async def sync_peers(
        self, *, addresses_changed: bool = False, start: bool = True, lans_changed: bool = False
    ) -> list[PeerSession]:
        """Bring the running peers to :meth:`wanted_peers`: remove those gone or with a new
        key (a new key is a new WireGuard peer), add the new ones, update the routes of those
        whose allowed IPs changed; the signaling client learns the members added and
        forgets the ones removed. The one path for reloads and membership changes. Returns
        the sessions added (started if ``start`` and the node runs). ``lans_changed``: read
        our LAN prefixes again first (a network change or a reload); a member's arrival
        does not, so that joining a network never waits on the host."""
        async with self._peers_lock:
            if lans_changed:
                await self._refresh_lans()
            wanted = {p.name: p for p in self.wanted_peers()}
            explicit = {p.name for p in self.config.peers}
            client = self.signaling
            for name, session in list(self.peers.items()):
                target = wanted.get(name)
                if (
                    target is None
                    or target.public_key != session.config.public_key
                    or target.preshared_key != session.config.preshared_key
                ):
                    await self._remove_peer(name)
                    if client is not None and name not in explicit:
                        client.core.remove_peer(name)
            added = []
            for name, target in wanted.items():
                current = self.peers.get(name)
                if current is None:
                    added.append(await self._add_peer(target))
                    if client is not None and name not in explicit:
                        client.core.add_peer(name, target.public_key)
                elif target != current.config or addresses_changed:
                    await self._update_peer_routes(current, target)
            if client is not None:
                client.flush()
            if start and self._nursery is not None:
                for session in added:
                    self._start_peer(session)
            if self.relay_server is not None:
                self.relay_server.set_users(self.peers)
            self._update_names()
            if self._tunnel is not None:
                await self._apply_exit()
            return added

    # -- subnet routes and the exit node (p2ptun.node.routes, p2ptun.net.forwarding) ------

    async def _start_routing(self) -> None:
        """Remove what a crashed run left (our nftables table, exit rules), then forward the
        advertised routes our certificate carries and select the exit node, if any."""
        await self.routing.start(self.config.interface)
        await self._apply_forwarding()
        await self._apply_exit()

    async def _apply_forwarding(self) -> None:
        network = self.config.network
        signed = None if network is None else network.certificate.details.routes
        await self.routing.apply_forwarding(self.config.interface, signed)

    async def _apply_exit(self) -> None:
        """Bring the host's policy routing to :attr:`exit` (refused if the host says no)."""
        self.exit = await self.routing.apply_exit(self.config.interface, self.exit)

    async def _stop_routing(self) -> None:
        """Remove our policy rules, exit table and nftables table (shielded by the caller)."""
        await self.routing.stop(self.config.interface.fwmark)

    async def select_exit_node(self, name: str | None) -> ExitDecision:
        """``p2ptun set exit-node NAME|off``: refused (ValueError, one line) for a name that is
        not a peer or may not route 0.0.0.0/0 or ::/0; else in force at once."""
        if name is not None:
            if name not in self._full_peers:
                known = ", ".join(sorted(self._full_peers)) or "none"
                raise ValueError(f"no peer named {name!r} (peers: {known})")
            versions = {a.version for a in self.config.interface.addresses}
            decision = decide_exit(name, self._full_peers, versions)
            if decision.state != "active":
                raise ValueError(decision.reason)
        self.exit_choice = name
        await self.sync_peers()
        return self.exit

    def _update_names(self) -> None:
        """The DNS names: this node's and every member's, from their certificates."""
        if self.names is None or self.network is None:
            return
        records = {
            name: [a.ip for a in member.addresses]
            for name, member in self.network.roster.members.items()
            if name in self.peers
        }
        own = self.network.config.certificate
        records[own.name] = [a.ip for a in own.details.addresses]
        self.names.update(records)

    # -- the network ----------------------------------------------------------------------

    def _path_quiet(self, wg: Peer, event: PathQuiet) -> None:
        for session in self.peers.values():
            if session.wg is wg:
                session.path_quiet(event.unanswered)
                return

    def _no_path(self, wg: Peer) -> None:
        """Traffic for a peer found no path: on demand, that starts its connection."""
        if not self.config.ice.on_demand:
            return
        for session in self.peers.values():
            if session.wg is wg:
                session.demand()
                return

    def _relayed_roam(self, wg: Peer, address: Address, relay: TurnRelay) -> None:
        for session in self.peers.values():
            if session.wg is wg:
                session.relayed_roam(address, relay)
                return

    def _signaling_went_through(self, old_mapping_seen_at: float) -> bool:
        """Was the rendezvous connection made before the STUN server last saw our old
        mapping? Then it went through that mapping and died with it (though TCP has not
        noticed); one made later (the rendezvous was down meanwhile) may already use the new
        mapping, and dropping it would lose what it carries."""
        return self._registered_at is None or self._registered_at <= old_mapping_seen_at

    def _regather_if_servers_failed(self) -> None:
        """Registered again: the rendezvous is reachable, and with it, usually, the STUN and
        TURN servers that failed in the latest round (the same host, often the same process).
        Gather at once instead of waiting for the stuck round's retransmissions or the relay
        backoff; the sessions take the new candidates as trickle."""
        gathered = self.transport.last_gather
        if not self.transport.gathering_complete:
            return  # a round under way asks the servers already
        if gathered is not None and any(f.kind != "host" for f in gathered.failures):
            log.info("rendezvous back: gathering again")
            self.transport.regather(restart_sessions=False)

    def _round_done(self, rounds: int) -> None:
        gathered = self.transport.last_gather
        if (
            gathered is not None
            and gathered.mapping_moved
            and self.signaling is not None
            and self._signaling_went_through(gathered.old_mapping_seen_at)
        ):
            # Our NAT rebound or changed its address: connect again now, so that the restart
            # offers go out at once.
            self.signaling.reconnect_now("our NAT mapping changed")
        if self._restart_after_round and rounds > 1:
            self._restart_after_round = False
            for session in self.peers.values():
                session.restart("network change")
        for session in self.peers.values():
            session.round_done()

    def _mapping_moved(self) -> None:
        """A keepalive Binding found our NAT mapping moved while no path complained (an idle
        node whose NAT renumbered or rebound): the same as a network change, before traffic
        meets the dead paths."""
        log.info("our NAT mapping moved: regathering, restarting ICE")
        seen = self.transport.gatherer.old_mapping_seen_at
        if self.signaling is not None and self._signaling_went_through(seen):
            self.signaling.reconnect_now("our NAT mapping changed")
        self._restart_after_round = True
        self.transport.regather(restart_sessions=False)

    async def _watch_network(self) -> None:
        """Network changes (debounced by the monitor) → regather, then ICE restart for every
        peer (:meth:`_round_done`)."""
        try:
            async with self.host.network_changes(exclude=[self.interface]) as monitor:
                async for changes in monitor:
                    kinds = {c.kind for c in changes}
                    log.info(
                        "network change: regathering, restarting ICE",
                        changes=",".join(sorted(k.value for k in kinds)),
                    )
                    # Our LAN may have changed: the peer routes refused inside it, and the
                    # LAN prefixes an exit node leaves outside (or takes), follow.
                    await self.sync_peers(lans_changed=True)
                    # The rendezvous connection may hang on an address or route that is
                    # gone (TCP only notices after its keepalive timeout): reconnect now,
                    # so that the restart offers go out at once.
                    await self._regather_and_restart(
                        reconnect=bool(kinds - {ChangeKind.ADDRESS_ADDED, ChangeKind.LINK_UP})
                    )
        except P2ptunError as exc:
            log.warning("network monitor unavailable", error=str(exc))

    async def _regather_and_restart(self, *, reconnect: bool) -> None:
        """Regather, then restart ICE for every peer once the round is done (_round_done)."""
        if reconnect:
            await self._replace_signaling()
        self._restart_after_round = True
        self.transport.regather(restart_sessions=False)

    async def _watch_suspend(self) -> None:
        """A resume from suspend leaves every binding stale without any netlink event
        (docs/ARCHITECTURE.md §4): treat it like a network change. The clocks are sampled on the
        ICE timer's wake-ups (:meth:`_check_suspend`); this loop only bounds the gap when no
        peer is connected, so it adds one wake-up a minute."""
        while True:
            self._check_suspend()
            await trio.sleep(SUSPEND_CHECK_INTERVAL)

    def _check_suspend(self) -> None:
        slept = self._suspend.sample(*self.host.suspend_clocks())
        if slept is not None and self._nursery is not None:
            log.info("resumed from suspend: regathering, restarting ICE", slept=f"{slept:.0f}s")
            self._nursery.start_soon(functools.partial(self._regather_and_restart, reconnect=True))

    # -- peers ----------------------------------------------------------------------------

    async def _add_peer(self, peer_cfg: PeerConfig) -> PeerSession:
        tunnel = self.tunnel
        wg = tunnel.device.add_peer(
            peer_cfg.public_key,
            preshared_key=peer_cfg.preshared_key,
            allowed_ips=peer_cfg.allowed_ips,
            persistent_keepalive=peer_cfg.persistent_keepalive,
        )
        tunnel.set_endpoint(wg, None)
        if tunnel.firewall is not None:
            tunnel.firewall.add_peer(wg, peer_cfg.name, peer_cfg.groups)
        session = PeerSession(self, peer_cfg, wg)
        session.relay_owners = self._relay_owners
        self.peers[peer_cfg.name] = session
        for prefix in routes_for(self.config.interface.addresses, peer_cfg.allowed_ips):
            await self.host.add_route(self.interface, prefix)
            session.routes.append(prefix)
        log.info(
            "peer added",
            peer=peer_cfg.name,
            key=encode_key(peer_cfg.public_key)[:8],
            allowed_ips=",".join(str(n) for n in peer_cfg.allowed_ips),
        )
        return session

    def _start_peer(self, session: PeerSession) -> None:
        assert self._nursery is not None
        scope = trio.CancelScope()
        self._peer_scopes[session.name] = scope
        self._nursery.start_soon(self._run_peer, session, scope)

    @staticmethod
    async def _run_peer(session: PeerSession, scope: trio.CancelScope) -> None:
        with scope:
            await session.run()

    async def _remove_peer(self, name: str, reason: str = "removed") -> None:
        session = self.peers.pop(name)
        session.close(reason)
        scope = self._peer_scopes.pop(name, None)
        if scope is not None:
            scope.cancel()
        for prefix in session.routes:
            with contextlib.suppress(P2ptunError):
                await self.host.remove_route(self.interface, prefix)
        if self._tunnel is not None:
            self._tunnel.remove_peer(session.wg)
        log.info("peer removed", peer=name)

    async def _update_peer_routes(self, session: PeerSession, new: PeerConfig) -> None:
        """Same peer (name and key), new allowed IPs: WireGuard routing and kernel routes."""
        tunnel = self.tunnel
        tunnel.device.allowed_ips.remove_value(session.wg)
        for net in new.allowed_ips:
            tunnel.device.allowed_ips.insert(net, session.wg)
        wanted = routes_for(self.config.interface.addresses, new.allowed_ips)
        for prefix in [r for r in session.routes if r not in wanted]:
            with contextlib.suppress(P2ptunError):
                await self.host.remove_route(self.interface, prefix)
            session.routes.remove(prefix)
        for prefix in [r for r in wanted if r not in session.routes]:
            await self.host.add_route(self.interface, prefix)
            session.routes.append(prefix)
        session.wg.persistent_keepalive = new.persistent_keepalive
        if tunnel.firewall is not None:
            tunnel.firewall.add_peer(session.wg, new.name, new.groups)
        session.config = new
        log.info(
            "peer updated",
            peer=new.name,
            allowed_ips=",".join(str(n) for n in new.allowed_ips),
        )

    # -- reload ---------------------------------------------------------------------------

    async def reload(self) -> bool:
        """SIGHUP: load the config file again and apply the difference. Returns whether the
        new config was taken; a refused one leaves everything as it was."""
        old = self.config
        self.notifier.reloading()
        try:
            try:
                new = await trio.to_thread.run_sync(config_mod.load_node, old.path)
            except P2ptunError as exc:
                log.error("reload refused, keeping the running config", error=str(exc))
                return False
            problem = _reload_blocker(old, new)
            if problem is not None:
                log.error("reload refused, keeping the running config", error=problem)
                return False
            try:
                await self._apply(old, new)
            except P2ptunError as exc:
                log.error("reload partly applied", error=str(exc))
                return False
            for warning in new.warnings:
                log.warning("config warning", warning=warning)
            if new.metrics != old.metrics:
                log.warning("[metrics] changed: it applies at the next start", path=new.path)
            log.info("config reloaded", path=new.path, peers=len(new.peers))
            return True
        finally:
            self.notifier.ready(self._status_line())

    async def _apply(self, old: NodeConfig, new: NodeConfig) -> None:
        old_if, new_if = old.interface, new.interface
        self.config = new
        if new.ice != old.ice:
            log.warning(
                "[ice] changed: STUN/TURN servers, lite and port apply at the next restart; "
                "the rest of the new config is applied now",
                path=new.path,
            )
        if new_if.addresses != old_if.addresses or new_if.mtu != old_if.mtu:
            self.mtu = new_if.mtu or DEFAULT_MTU
            gone = [a for a in old_if.addresses if a not in new_if.addresses]
            if gone:
                await self.host.remove_addresses(self.interface, gone)
            await self.host.configure_interface(self.interface, new_if.addresses, self.mtu)
            self.tunnel.mss = mss_for_mtu(self.mtu)
            self.tunnel.device.mtu = self.mtu
        network = new.network
        if network is not None and self.network is not None:
            self.network.config = network
            if network.revocations is not None:
                with contextlib.suppress(MembershipDecodeError, CertificateRejected):
                    await self.apply_revocations(network.revocations)
        signaling_changed = (
            {(p.name, p.public_key) for p in old.peers}
            != {(p.name, p.public_key) for p in new.peers}
            or old.rendezvous != new.rendezvous
            or old.name != new.name
        )
        addresses_changed = new_if.addresses != old_if.addresses
        if new.exit_node != old.exit_node:
            self.exit_choice = new.exit_node
        if (
            new_if.advertise_routes != old_if.advertise_routes
            or new_if.masquerade != old_if.masquerade
            or new.network != old.network
        ):
            await self._apply_forwarding()
        if new_if.exit_node_allow_lan != old_if.exit_node_allow_lan:
            addresses_changed = True  # the LAN rules follow (applied by sync_peers)
        if new_if.fwmark != old_if.fwmark:
            log.warning("[interface] fwmark changed: it applies at the next start")
        firewall = self.tunnel.firewall
        new_policy = self._firewall_policy(new)
        if new_policy != self._firewall_policy(old) and firewall is not None:
            cut = firewall.set_policy(new_policy)
            log.info(
                "firewall rules replaced",
                inbound=len(new.firewall.inbound),
                outbound=len(new.firewall.outbound),
                flows_cut=cut,
            )
        if signaling_changed and self._nursery is not None:
            # New peers start once the new client runs (it is told the members as it starts).
            added = await self.sync_peers(
                addresses_changed=addresses_changed, start=False, lans_changed=True
            )
            await self._replace_signaling()
            for session in added:
                self._start_peer(session)
        else:
            await self.sync_peers(addresses_changed=addresses_changed, lans_changed=True)
            if (
                network is not None
                and old.network is not None
                and network.certificate != old.network.certificate
                and self.signaling is not None
            ):
                log.info("certificate renewed", not_after=network.certificate.details.not_after)
                self.signaling.core.update_certificate(network.certificate.encode())
                self.signaling.flush()

    # -- status ---------------------------------------------------------------------------

    def _status_line(self) -> str:
        now = trio.current_time()
        connected = sum(1 for s in self.peers.values() if s.state(now) == "connected")
        return (
            f"interface {self.interface} up, {connected}/{len(self.peers)} peers connected, "
            f"rendezvous {self._rendezvous_state()}"
        )

    def _notify_status(self) -> None:
        line = self._status_line()
        if line != self._last_status_line:
            self._last_status_line = line
            self.notifier.status(line)

    def _rendezvous_state(self) -> str:
        return "connected" if self.rendezvous_connected() else "disconnected"

    def rendezvous_connected(self) -> bool:
        client = self.signaling
        return client is not None and client.ready

    def status(self) -> dict[str, Any]:
        """The status object of docs/ARCHITECTURE.md §3: ``{"node": {...}, "peers": [...]}``."""
        now = trio.current_time()
        cfg = self.config
        return {
            "node": {
                "name": cfg.name,
                "interface": self.interface,
                "addresses": [str(a) for a in cfg.interface.addresses],
                "rendezvous": self._rendezvous_state(),
                "port_mapping": self._port_mapping_status(),
                "routes": self.routing.status(cfg.interface.masquerade),
                "exit_node": self.exit.as_dict(cfg.interface.exit_node_allow_lan),
                **self._firewall_status(),
            },
            "peers": [self._peer_status(session, now) for session in self.peers.values()],
        }

    def _peer_status(self, session: PeerSession, now: float) -> dict[str, Any]:
        status = session.status(now)
        full = self._full_peers.get(session.name, session.config)
        status["routes"] = peer_routes_status(full, session.config, self._lans)
        firewall = self._tunnel.firewall if self._tunnel is not None else None
        if firewall is not None:
            status["firewall_dropped"] = firewall.dropped(session.wg)
        return status

    @staticmethod
    def _firewall_policy(cfg: NodeConfig) -> Policy:
        """The configured rules, and the node's own name server (UDP 53 on its overlay
        addresses) open to every member when it serves names."""
        network = cfg.network
        if network is None or not (network.dns and network.domain):
            return cfg.firewall
        from p2ptun.node.names import DNS_PORT  # imported where names are served (start-up)

        hosts = [ipaddress.ip_network(a.ip) for a in cfg.interface.addresses]
        return with_own_services(cfg.firewall, [("udp", DNS_PORT)], hosts)

    def _firewall_status(self) -> dict[str, Any]:
        """``{"firewall": {...}}`` (:meth:`p2ptun.firewall.Firewall.status`) for the node part
        once the data path runs, else nothing (the top level keeps the contract's two keys)."""
        firewall = self._tunnel.firewall if self._tunnel is not None else None
        return {} if firewall is None else {"firewall": firewall.status()}

    def _port_mapping_status(self) -> dict[str, str] | None:
        """The mapping the gateway holds for us (``[ice] port_mapping``), or None."""
        transport = self._transport
        mapper = transport.gatherer.port_mapper if transport is not None else None
        mapping = mapper.mapping if mapper is not None else None
        if mapping is None:
            return None
        return {
            "via": mapping.describe(),
            "protocol": mapping.protocol,
            "gateway": mapping.gateway,
            "external": format_address(mapping.external),
        }

    async def _handle_control(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request["cmd"]
        if cmd == "status":
            return {"ok": True, "status": self.status()}
        if cmd == "ping":
            name = request.get("peer")
            session = self.peers.get(name) if isinstance(name, str) else None
            if session is None:
                known = ", ".join(sorted(self.peers)) or "none"
                raise ValueError(f"no peer named {name!r} (configured: {known})")
            timeout = request.get("timeout", 3.0)
            if isinstance(timeout, bool) or not isinstance(timeout, int | float):
                raise ValueError("timeout must be a number of seconds")
            timeout = min(max(float(timeout), 0.1), 4.0)  # the control request allows 5 s
            return {"ok": True, "ping": await session.ping(timeout)}
        if cmd == "debug":
            return {"ok": True, "debug": self.debug()}
        if cmd == "revocations":
            return await self._control_revocations(request)
        if cmd == "set":
            if "exit_node" not in request:
                raise ValueError("nothing to set (expected exit_node)")
            name = request["exit_node"]
            if name is not None and not isinstance(name, str):
                raise ValueError("exit_node must be a peer name or null")
            decision = await self.select_exit_node(name)
            return {
                "ok": True,
                "exit_node": decision.as_dict(self.config.interface.exit_node_allow_lan),
            }
        raise ValueError(f"unknown command {cmd!r}")

    async def _control_revocations(self, request: dict[str, Any]) -> dict[str, Any]:
        """``p2ptun ca revoke`` on this machine hands the new list to the node to publish."""
        import base64
        import binascii

        text = request.get("list")
        if self.network is None:
            raise ValueError("this node is not a member of a network")
        try:
            blob = base64.b64decode(text if isinstance(text, str) else "", validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("list must be base64") from None
        try:
            gone = await self.apply_revocations(blob)
        except (MembershipDecodeError, CertificateRejected) as exc:
            raise ValueError(str(exc)) from None
        return {"ok": True, "removed": gone}

    def debug(self) -> dict[str, Any]:
        """Internals for troubleshooting (not part of the status contract): the data path's
        counters, the ICE transport's and its mux's, the relays, and each peer's ICE state."""
        now = trio.current_time()
        transport = self.transport
        peers = {}
        for name, session in self.peers.items():
            attempts = []
            for attempt in (session.current, session.active, *session.retired):
                if attempt is None:
                    continue
                agent = attempt.agent
                attempts.append(
                    {
                        "ufrag": attempt.ufrag,
                        "role": "controlling" if agent.controlling else "controlled",
                        "state": agent.state.value,
                        "current": attempt is session.current,
                        "active": attempt is session.active,
                        "local_candidates": len(agent.local_candidates),
                        "remote_candidates": len(agent.remote_candidates),
                        "stats": dataclasses.asdict(agent.stats),
                    }
                )
            peers[name] = {
                "online": session.online,
                "stale_wakeups": session.stale_wakeups,
                "attempts": attempts,
            }
        return {
            "tunnel": self.tunnel.status(),
            "ice": transport.counters.as_dict(),
            "mux": transport.mux.counters.as_dict(),
            "relays": [
                {
                    "server": r.url,
                    "state": r.state.value,
                    "relayed": None if r.relay is None else format_address(r.relay.relayed),
                    "tx_dropped": None if r.relay is None else r.relay.counters.tx_dropped,
                    "failure": r.failure,
                }
                for r in transport.gatherer.relay_status()
            ],
            "round": transport.round,
            "candidates": [c.to_attribute() for c in transport.candidates],
            "peers": peers,
            "time": now,
        }


def _reload_blocker(old: NodeConfig, new: NodeConfig) -> str | None:
    """Why ``new`` cannot be applied to a running daemon of ``old`` (None: it can)."""
    if new.interface.name != old.interface.name:
        return (
            f"{new.path}: interface.name changed from {old.interface.name!r} to "
            f"{new.interface.name!r}; restart the daemon to rename the interface"
        )
    if new.name != old.name:
        return f"{new.path}: name changed from {old.name!r}; restart the daemon to change it"
    if new.private_key != old.private_key:
        return f"{new.path}: the private key changed; restart the daemon to change it"
    if (old.network is None) != (new.network is None) or (
        old.network is not None and new.network is not None and old.network.ca != new.network.ca
    ):
        return f"{new.path}: [network] changed its authority; restart the daemon to change it"
    return None


# -- entry point -------------------------------------------------------------------------------


def run(cfg: NodeConfig, *, peer_relay: PeerRelayFactory | None = None) -> int:
    """``p2ptun up``: run the node in the foreground until SIGTERM/SIGINT; the exit code.
    ``peer_relay``: see :class:`NodeDaemon`."""
    daemon = NodeDaemon(cfg, peer_relay=peer_relay)
    trio.run(daemon.run)
    return EXIT_OK


__all__ = [
    "DEFAULT_MTU",
    "NodeDaemon",
    "default_mtu",
    "routes_for",
    "run",
]

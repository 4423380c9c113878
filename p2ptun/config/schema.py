"""The configuration's shape: the frozen dataclasses a node or rendezvous config loads into.

The file format is the user contract of docs/ARCHITECTURE.md §3;
:mod:`p2ptun.config.node` and :mod:`p2ptun.config.rendezvous` fill these from TOML.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from typing import Literal

from p2ptun.addr import Address
from p2ptun.firewall import Policy
from p2ptun.keys import public_key
from p2ptun.membership import Certificate

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_STUN_PORT = 3478
DEFAULT_TURNS_PORT = 5349
DEFAULT_RENDEZVOUS_PORT = 7070
IFNAMSIZ = 16  # Linux: 15 characters and the terminating NUL
NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
"""Node and peer names; match with ``fullmatch`` (so that no trailing newline slips through)."""
NAME_RULE = (
    "1-63 characters: lower-case letters, digits, '.', '_', '-', starting with a letter or digit"
)
IFNAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,15}")
"""Interface names; match with ``fullmatch``."""


# --------------------------------------------------------------------------------------------
# The dataclasses


DEFAULT_FWMARK = 0x7074
"""The mark on every underlay socket and the routing table of the exit-node routes
(``[interface] fwmark``): one number for both, as wg-quick does."""


@dataclass(frozen=True)
class InterfaceConfig:
    name: str
    addresses: tuple[IPInterface, ...]
    mtu: int | None = None  # None: computed from the worst path overhead
    #: Networks behind this node that it forwards for its peers (``advertise_routes``).
    advertise_routes: tuple[IPNetwork, ...] = ()
    #: Forwarded flows leave with this node's address (source NAT), else unchanged.
    masquerade: bool = True
    #: The underlay sockets' mark and the exit-node routing table (DEFAULT_FWMARK).
    fwmark: int = DEFAULT_FWMARK
    #: With an exit node, the directly connected LAN prefixes stay outside the tunnel.
    exit_node_allow_lan: bool = True


@dataclass(frozen=True)
class RendezvousRef:
    """Where a node finds the rendezvous server, and the key it must present."""

    host: str
    port: int
    public_key: bytes
    #: More instances of the same rendezvous (a cluster): ``address = ["a:7070", "b:7070"]``.
    more: tuple[Address, ...] = ()

    @property
    def address(self) -> Address:
        return (self.host, self.port)

    @property
    def addresses(self) -> tuple[Address, ...]:
        """Every configured address, the first first (the node fails over in this order)."""
        return (self.address, *self.more)


TurnTransport = Literal["udp", "tcp", "tls"]


@dataclass(frozen=True)
class TurnServerConfig:
    """One TURN server a node may allocate relays on (RFC 7065 URI)."""

    url: str
    host: str
    port: int
    transport: TurnTransport
    username: str | None = None  # None: use credentials issued by the rendezvous
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None


DEFAULT_IDLE_TIMEOUT = 300
"""Seconds without data after which an on-demand tunnel is closed (``[ice] idle_timeout``)."""


@dataclass(frozen=True)
class IceConfig:
    stun: tuple[Address, ...] = ()
    turn: tuple[TurnServerConfig, ...] = ()
    lite: bool = False
    port: int = 0
    ipv6_link_local: bool = False
    #: Map our UDP port on the default gateway (PCP, NAT-PMP, UPnP) for a candidate.
    port_mapping: bool = True
    #: Probe a symmetric NAT's predicted ports while relayed (``hard_nat``, p2ptun.ice.hardnat).
    hard_nat: bool = True
    #: Connect to a peer only when traffic for it appears (or it connects to us), and close a
    #: tunnel that carried no data for ``idle_timeout`` seconds (when the peer does the same).
    on_demand: bool = False
    idle_timeout: int = DEFAULT_IDLE_TIMEOUT


@dataclass(frozen=True)
class RelayConfig:
    """``[relay]``: this node relays for its own peers (a peer relay) with the embedded TURN
    server: on ``listen`` (UDP and TCP), relayed ports in ``relay_ports`` on
    ``relay_address`` — a public address of this node (or one a port mapping forwards);
    ``allow_peers`` opens networks the TURN deny list closes (as in the rendezvous)."""

    enable: bool
    listen: Address
    relay_address: str
    relay_ports: tuple[int, int]
    allow_peers: tuple[IPNetwork, ...] = ()


DEFAULT_PEER_RELAY_PORT = 3479


@dataclass(frozen=True)
class PeerConfig:
    name: str
    public_key: bytes
    allowed_ips: tuple[IPNetwork, ...]
    preshared_key: bytes | None = field(default=None, repr=False)
    persistent_keepalive: int | None = None
    #: ``[[peer]] exit_node = true``: send all traffic through this peer (its allowed_ips
    #: hold 0.0.0.0/0 and/or ::/0).
    exit_node: bool = False
    #: Groups the firewall rules see the peer in (``groups``; a member's: its certificate's).
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class NetworkConfig:
    """``[network]``: this node is a member of a network (docs/ARCHITECTURE.md §3a)."""

    #: The network authority's Ed25519 public key (``ca``).
    ca: bytes
    cert_file: str
    #: This node's certificate, read from ``cert_file`` and verified against ``ca``.
    certificate: Certificate = field(repr=False)
    #: DNS domain the node answers ``NAME.DOMAIN`` for ("" for none).
    domain: str = ""
    #: A revocation list file this node publishes (``revocations``), or None.
    revocations_file: str | None = None
    revocations: bytes | None = field(default=None, repr=False)
    #: Answer DNS on the overlay address (``dns``, default: when there is a domain).
    dns: bool = True

    @property
    def name(self) -> str:
        """The network's name (from the certificate)."""
        return self.certificate.network


@dataclass(frozen=True)
class MetricsSettings:
    """``[metrics]``: where the Prometheus text endpoint listens (off when the section is
    absent)."""

    listen: Address


DEFAULT_METRICS_PORT = 9560


@dataclass(frozen=True)
class WebSettings:
    """``[web]`` of the rendezvous: the network map page (off when the section is absent)."""

    listen: Address
    admin_token: str = field(repr=False)


DEFAULT_WEB_PORT = 8080


@dataclass(frozen=True)
class RedisUrl:
    """``redis://[[user]:password@]host[:port][/db]`` (``rediss://`` for TLS)."""

    host: str
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False

    @property
    def where(self) -> str:
        """``host:port`` for log lines (never the password)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class ClusterSettings:
    """``[cluster]`` of the rendezvous: instances sharing one Redis (off when absent)."""

    redis: RedisUrl
    #: This instance's id among the others (default: host name, process id, random).
    instance: str | None = None
    #: A node's presence key lives this long unless its instance refreshes it (a third of it).
    presence_ttl: float = 15.0
    #: CA certificates (PEM file) to verify a ``rediss://`` server with, instead of the
    #: system's.
    tls_ca: str | None = None


@dataclass(frozen=True)
class NodeConfig:
    path: str
    name: str
    private_key: bytes = field(repr=False)
    interface: InterfaceConfig
    rendezvous: RendezvousRef
    ice: IceConfig
    peers: tuple[PeerConfig, ...]
    warnings: tuple[str, ...] = ()
    network: NetworkConfig | None = None
    relay: RelayConfig | None = None
    metrics: MetricsSettings | None = None
    #: The peer (or member) all traffic goes through: ``[network] exit_node`` or the
    #: ``[[peer]]`` with ``exit_node = true``; None: none.
    exit_node: str | None = None
    #: ``[firewall]``: rules between this node and its peers (the default without one).
    firewall: Policy = field(default_factory=Policy)

    @property
    def public_key(self) -> bytes:
        return public_key(self.private_key)

    @property
    def control_socket(self) -> str:
        return control_socket_path(self.interface.name)


@dataclass(frozen=True)
class StunServerSettings:
    listen: tuple[Address, ...]
    #: RFC 5780's alternate address and port (``[stun] alternate``), or None.
    alternate: Address | None = None

    def behavior_primary(self) -> Address:
        """The listen address the alternate pairs with: the first of its family with a
        specific IP (the loader checks there is one)."""
        assert self.alternate is not None
        return next(a for a in self.listen if _pairs_with(a, self.alternate))


def _pairs_with(listen: Address, alternate: Address) -> bool:
    ip = ipaddress.ip_address(listen[0])
    return not ip.is_unspecified and ip.version == ipaddress.ip_address(alternate[0]).version


@dataclass(frozen=True)
class TurnServerSettings:
    realm: str
    relay_address: str
    relay_ports: tuple[int, int]
    users: dict[str, str] = field(default_factory=dict, repr=False, hash=False)
    auth_secret: str | None = field(default=None, repr=False)
    tls_listen: tuple[Address, ...] = ()
    tls_cert: str | None = None
    tls_key: str | None = None
    allow_peers: tuple[IPNetwork, ...] = ()
    user_quota: int = 10
    max_lifetime: int = 3600
    credential_lifetime: int = 86400
    extra_relay_address: str | None = None
    """The relay address of the other family (``relay_address = ["v4", "v6"]``)."""
    #: A node's peer relay (not from a rendezvous config): see TurnServerOptions.peer_relay.
    peer_relay: bool = False


@dataclass(frozen=True)
class NodeEntry:
    name: str
    public_key: bytes


@dataclass(frozen=True)
class NetworkEntry:
    """``[[network]]`` of the rendezvous: a network whose members it admits."""

    ca: bytes
    #: The network's name, if the operator gave it (else any name the authority signs).
    name: str | None = None
    #: A revocation list file to serve (re-read on SIGHUP), or None.
    revocations_file: str | None = None
    revocations: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class RendezvousConfig:
    path: str
    listen: Address
    private_key: bytes = field(repr=False)
    database: str
    open_registration: bool
    stun: StunServerSettings | None
    turn: TurnServerSettings | None
    nodes: tuple[NodeEntry, ...]
    warnings: tuple[str, ...] = ()
    networks: tuple[NetworkEntry, ...] = ()
    #: Self-registered nodes (open registration) get TURN credentials too.
    open_registration_turn: bool = False
    metrics: MetricsSettings | None = None
    web: WebSettings | None = None
    cluster: ClusterSettings | None = None

    @property
    def public_key(self) -> bytes:
        return public_key(self.private_key)


Config = NodeConfig | RendezvousConfig


def control_socket_path(interface: str, run_dir: str | None = None) -> str:
    """The node's control socket (docs/ARCHITECTURE.md §3): ``/run/p2ptun/<interface>.sock``."""
    base = run_dir or os.environ.get("P2PTUN_RUN_DIR", "/run/p2ptun")
    return os.path.join(base, f"{interface}.sock")

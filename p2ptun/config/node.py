"""The node config (``p2ptun up -c FILE``, docs/ARCHITECTURE.md §3) read into
:class:`NodeConfig`."""

from __future__ import annotations

import ipaddress
import os
import time
from typing import Any

from p2ptun.addr import parse_host_port
from p2ptun.config.firewall import firewall_policy, groups_of
from p2ptun.config.reader import ConfigFile, Table, type_name
from p2ptun.config.schema import (
    DEFAULT_FWMARK,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_PEER_RELAY_PORT,
    DEFAULT_RENDEZVOUS_PORT,
    IFNAME_RE,
    IFNAMSIZ,
    IceConfig,
    InterfaceConfig,
    IPNetwork,
    NetworkConfig,
    NodeConfig,
    PeerConfig,
    RelayConfig,
    RendezvousRef,
    TurnServerConfig,
)
from p2ptun.config.values import (
    check_name,
    metrics_settings,
    parse_interface_address,
    parse_ip_literal,
    parse_listen,
    parse_network,
    parse_port_range,
    parse_stun_server,
    parse_turn_url,
)
from p2ptun.keys import decode_key, public_key
from p2ptun.membership import (
    CertificateRejected,
    MembershipDecodeError,
    check_domain,
    read_certificate_text,
    read_revocations_text,
    verify_certificate,
)


def node_config(source: ConfigFile, data: dict[str, Any]) -> NodeConfig:
    """Build a :class:`NodeConfig` from the decoded file (docs/ARCHITECTURE.md §3)."""
    top = source.top(data)
    top.expect(
        "name",
        "private_key",
        "private_key_file",
        "interface",
        "rendezvous",
        "ice",
        "peer",
        "network",
        "relay",
        "metrics",
        "firewall",
    )
    name = check_name(top, "name", top.string("name", required=True))
    private = top.private_key()
    own_public = public_key(private)

    iface_t = top.table("interface", required=True)
    assert iface_t is not None
    interface = _interface(iface_t)

    rv_t = top.table("rendezvous", required=True)
    assert rv_t is not None
    # One host:port, or several (the instances of a rendezvous cluster, tried in turn).
    if isinstance(rv_t.data.get("address"), list):
        rv_raw = rv_t.strings("address", required=True)
        if not rv_raw:
            raise rv_t.error("address", "empty", "at least one host:port")
    else:
        rv_raw = [("address", rv_t.string("address", required=True))]
    rv_all = [
        rv_t.parse(key, raw, lambda s: parse_host_port(s, DEFAULT_RENDEZVOUS_PORT), "a host:port")
        for key, raw in rv_raw
    ]
    (rv_host, rv_port), rv_more = rv_all[0], tuple(rv_all[1:])
    rv_key = rv_t.key_value("public_key")
    assert rv_key is not None
    rv_t.check_unknown()

    ice_t = top.table("ice")
    ice = _ice(ice_t) if ice_t is not None else IceConfig()

    peers = _peers(top, own_public, name)
    network_t = top.table("network")
    network = None
    if network_t is not None:
        network = _network(network_t, name, own_public, interface)
    relay_t = top.table("relay")
    relay = _relay(relay_t) if relay_t is not None else None
    metrics = metrics_settings(top)
    firewall = firewall_policy(top)
    top.check_unknown()
    exit_node = _exit_node(top, name, peers, network_t)
    warnings = list(source.warnings)
    if network is not None:
        signed = set(network.certificate.details.routes)
        for route in interface.advertise_routes:
            if route not in signed:
                warnings.append(
                    f"{source.file}: interface.advertise_routes: {route} is not in this node's "
                    "certificate: peers will ignore it (sign it: 'p2ptun ca sign --routes')"
                )
    return NodeConfig(
        path=source.file,
        name=name,
        private_key=private,
        interface=interface,
        rendezvous=RendezvousRef(rv_host, rv_port, rv_key, rv_more),
        ice=ice,
        peers=peers,
        warnings=tuple(warnings),
        network=network,
        relay=relay,
        metrics=metrics,
        exit_node=exit_node,
        firewall=firewall,
    )


def _exit_node(
    top: Table, name: str, peers: tuple[PeerConfig, ...], network_t: Table | None
) -> str | None:
    """The exit node: ``[network] exit_node`` (a member, or a ``[[peer]]``) or the one
    ``[[peer]]`` with ``exit_node = true``. A configured peer must have a default route in
    its allowed_ips; a member's certificate is checked when it comes online."""
    flagged = [p for p in peers if p.exit_node]
    chosen = network_t.data.get("exit_node") if network_t is not None else None
    if len(flagged) > 1:
        raise top.error(
            "peer", f"exit_node = true on {flagged[0].name!r} and {flagged[1].name!r}", "one only"
        )
    if chosen is not None and flagged:
        assert network_t is not None
        raise network_t.error(
            "exit_node",
            f"{chosen!r}, but [[peer]] {flagged[0].name!r} says exit_node = true too",
            "choose one place",
        )
    if chosen is None:
        return flagged[0].name if flagged else None
    assert network_t is not None and isinstance(chosen, str)
    if chosen == name:
        raise network_t.error("exit_node", f"{chosen!r} is this node itself", "name a peer")
    explicit = next((p for p in peers if p.name == chosen), None)
    if explicit is not None and not any(n.prefixlen == 0 for n in explicit.allowed_ips):
        raise network_t.error(
            "exit_node",
            f"peer {chosen!r} has no 0.0.0.0/0 or ::/0 in its allowed_ips",
            'add "0.0.0.0/0" to its allowed_ips',
        )
    return chosen


def _not_advertisable(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.is_unspecified or ip.is_loopback or ip.is_multicast


def _relay(t: Table) -> RelayConfig | None:
    """``[relay]``: a peer relay (docs/ARCHITECTURE.md §3a). None unless ``enable``."""
    enable = t.boolean("enable")
    listen = t.parse(
        "listen",
        t.string("listen", f"0.0.0.0:{DEFAULT_PEER_RELAY_PORT}"),
        lambda s: parse_listen(s, DEFAULT_PEER_RELAY_PORT),
        "an IP address and port, e.g. 0.0.0.0:3479",
    )
    address_raw = t.string("relay_address", required=enable)
    address = None
    if address_raw is not None:
        address = t.parse(
            "relay_address", address_raw, parse_ip_literal, "this node's public IP address"
        )
    if address is not None and _not_advertisable(address):
        raise t.error(
            "relay_address",
            f"{address} cannot be given to peers",
            "this node's public IP address (not unspecified, loopback or multicast)",
        )
    ports = t.parse(
        "relay_ports", t.string("relay_ports", "50000-50999"), parse_port_range, "a port range"
    )
    allow = tuple(
        t.parse(k, raw, parse_network, "a network/prefix") for k, raw in t.strings("allow_peers")
    )
    t.check_unknown()
    if not enable or address is None:
        return None
    return RelayConfig(enable, listen, address, ports, allow)


def _relative(t: Table, path: str) -> str:
    """A file name in the config: relative ones are relative to the config's directory."""
    if os.path.isabs(path):
        return path
    return os.path.join(os.path.dirname(os.path.abspath(t.source.file)), path)


def _read_text(t: Table, key: str, path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read(1 << 21)
    except FileNotFoundError:
        raise t.error(key, f"{path}: no such file", what) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise t.error(key, f"{path}: cannot read: {exc}") from None


def authority_key(t: Table, key: str = "ca") -> bytes:
    """The network authority's Ed25519 public key (base64, the content of ``ca.pub``)."""
    raw = t.string(key, required=True)
    try:
        return decode_key(raw)
    except ValueError as exc:
        raise t.error(
            key, f"{exc}", "the content of the authority's ca.pub ('p2ptun ca init')"
        ) from None


def read_revocations(t: Table, key: str, authority: bytes) -> tuple[str, bytes]:
    """A revocation list file at ``key``: its path and bytes, verified against ``authority``."""
    path = _relative(t, t.string(key, required=True))
    try:
        crl = read_revocations_text(_read_text(t, key, path, "written by 'p2ptun ca revoke'"))
        crl.verify(authority)
    except (MembershipDecodeError, CertificateRejected) as exc:
        raise t.error(key, f"{path}: {exc}") from None
    return path, crl.encode()


def _network(t: Table, name: str, own_public: bytes, interface: InterfaceConfig) -> NetworkConfig:
    ca = authority_key(t)
    cert_path = _relative(t, t.string("cert_file", required=True))
    text = _read_text(t, "cert_file", cert_path, "written by 'p2ptun join' or 'p2ptun ca sign'")
    try:
        cert = read_certificate_text(text)
        verify_certificate(cert, ca, time.time())
    except (MembershipDecodeError, CertificateRejected) as exc:
        raise t.error("cert_file", f"{cert_path}: {exc}") from None
    if cert.name != name:
        raise t.error(
            "cert_file", f"{cert_path}: issued for {cert.name!r}, but this node is {name!r}"
        )
    if cert.public_key != own_public:
        raise t.error(
            "cert_file",
            f"{cert_path}: certifies another key than this node's private key",
            "sign this node's public key: 'p2ptun pubkey < KEY'",
        )
    missing = [a for a in cert.details.addresses if a not in interface.addresses]
    if missing:
        raise t.error(
            "cert_file",
            f"{cert_path}: certifies {', '.join(map(str, missing))}, which [interface] "
            "address lacks",
            "add it to [interface] address",
        )
    domain = t.string("domain", "")
    try:
        check_domain(domain)
    except ValueError as exc:
        raise t.error("domain", str(exc)) from None
    dns = t.boolean("dns", bool(domain))
    if dns and not domain:
        raise t.error("dns", "needs a domain", 'set domain = "home" or dns = false')
    exit_node = t.string("exit_node")
    if exit_node is not None:
        check_name(t, "exit_node", exit_node)
    revocations_file = None
    revocations = None
    if t.has("revocations"):
        revocations_file, revocations = read_revocations(t, "revocations", ca)
    else:
        t.known.append("revocations")
    t.check_unknown()
    return NetworkConfig(ca, cert_path, cert, domain, revocations_file, revocations, dns)


def _interface(t: Table) -> InterfaceConfig:
    ifname = t.string("name", required=True)
    if len(ifname) >= IFNAMSIZ:
        raise t.error("name", f"{ifname!r} is {len(ifname)} characters", "Linux allows at most 15")
    if not IFNAME_RE.fullmatch(ifname) or ifname in (".", ".."):
        raise t.error(
            "name",
            f"{ifname!r} is not a valid interface name",
            "use letters, digits, '_', '-', '.'",
        )
    addresses = []
    for key, raw in t.strings("address", required=True):
        addresses.append(t.parse(key, raw, parse_interface_address, "an address/prefix"))
    if not addresses:
        raise t.error("address", "empty", 'give at least one, e.g. ["10.77.0.1/24"]')
    if len(set(addresses)) != len(addresses):
        raise t.error("address", "lists the same address twice")
    mtu = t.integer("mtu")
    if mtu is not None:
        has_v6 = any(a.version == 6 for a in addresses)
        low = 1280 if has_v6 else 576
        if not low <= mtu <= 65535:
            raise t.error("mtu", f"{mtu} is out of range", f"expected {low}-65535")
    routes: list[IPNetwork] = []
    for key, raw in t.strings("advertise_routes"):
        route = t.parse(key, raw, parse_network, "a network/prefix, e.g. 192.168.1.0/24")
        if route in routes:
            raise t.error(key, f"{route} is listed twice")
        routes.append(route)
    masquerade = t.boolean("masquerade", True)
    fwmark = t.integer("fwmark", DEFAULT_FWMARK)
    if not 1 <= fwmark <= 0xFFFFFFFF or fwmark in RESERVED_TABLES:
        raise t.error(
            "fwmark",
            f"{fwmark} is out of range or a reserved routing table",
            "1-4294967295, not 253-255 (default, main, local)",
        )
    allow_lan = t.boolean("exit_node_allow_lan", True)
    t.check_unknown()
    return InterfaceConfig(
        ifname, tuple(addresses), mtu, tuple(routes), masquerade, fwmark, allow_lan
    )


RESERVED_TABLES = (253, 254, 255)


def _ice(t: Table) -> IceConfig:
    stun = tuple(
        t.parse(key, raw, parse_stun_server, "a STUN server host[:port]")
        for key, raw in t.strings("stun")
    )
    turn = []
    for i, item in enumerate(t.array("turn")):
        key = f"turn[{i}]"
        if not isinstance(item, dict):
            raise t.error(
                key,
                f"expected a table, got {type_name(item)}",
                '{ url = "turn:host:3478", username = "u", password = "p" }',
            )
        turn.append(_turn_server(Table(t.source, item, t.key(key))))
    lite = t.boolean("lite")
    port = t.integer("port", 0)
    if not 0 <= port <= 65535:
        raise t.error("port", f"{port} is out of range", "expected 0 (any) or 1-65535")
    link_local = t.boolean("ipv6_link_local")
    port_mapping = t.boolean("port_mapping", True)
    hard_nat = t.boolean("hard_nat", True)
    on_demand = t.boolean("on_demand")
    idle_timeout = t.integer("idle_timeout", DEFAULT_IDLE_TIMEOUT)
    if not 10 <= idle_timeout <= 86400:
        raise t.error("idle_timeout", f"{idle_timeout} is out of range", "expected 10-86400 s")
    t.check_unknown()
    return IceConfig(
        stun,
        tuple(turn),
        lite,
        port,
        link_local,
        port_mapping,
        hard_nat,
        on_demand,
        idle_timeout,
    )


def _turn_server(t: Table) -> TurnServerConfig:
    url = t.string("url", required=True)
    host, port, transport = t.parse("url", url, parse_turn_url, "a TURN URL")
    username = t.string("username")
    password = t.secret("password")
    if (username is None) != (password is None):
        missing = "password" if password is None else "username"
        raise t.error(
            missing,
            "missing",
            "give both username and password, or neither to use "
            "credentials issued by the rendezvous",
        )
    ca_file = t.string("ca_file")
    if ca_file is not None and transport != "tls":
        raise t.error("ca_file", "only applies to turns: URLs")
    t.check_unknown()
    return TurnServerConfig(url, host, port, transport, username, password, ca_file)


def _peers(top: Table, own_public: bytes, own_name: str) -> tuple[PeerConfig, ...]:
    peers: list[PeerConfig] = []
    names: dict[str, str] = {}
    keys: dict[bytes, str] = {}
    routes: list[tuple[IPNetwork, str, str]] = []
    for t in top.tables("peer"):
        name = check_name(t, "name", t.string("name", required=True))
        if name == own_name:
            raise t.error("name", f"{name!r} is this node's own name")
        if name in names:
            raise t.error("name", f"duplicate peer name {name!r}", f"first used at {names[name]}")
        names[name] = t.path
        key = t.key_value("public_key")
        assert key is not None
        if key == own_public:
            raise t.error(
                "public_key",
                "is this node's own public key",
                "use the peer's key: 'p2ptun pubkey < peer.key'",
            )
        if key in keys:
            raise t.error("public_key", "duplicate peer key", f"already used by {keys[key]}")
        keys[key] = t.path
        nets = []
        for key_name, raw in t.strings("allowed_ips", required=True):
            net = t.parse(key_name, raw, parse_network, "a network/prefix")
            for other, other_key, other_peer in routes:
                if net.prefixlen == 0 or other.prefixlen == 0:
                    # Default routes are exit routes: used only by the selected exit node.
                    if net == other:
                        raise t.error(
                            key_name,
                            f"{net} is also in peer {other_peer!r}'s allowed_ips ({other_key})",
                            "one exit route per family",
                        )
                    continue
                if net.version == other.version and net.overlaps(other):  # type: ignore[arg-type,unused-ignore]
                    raise t.error(
                        key_name,
                        f"{net} overlaps {other} of peer {other_peer!r} ({other_key})",
                        "each address must route to one peer",
                    )
            nets.append(net)
        for net in nets:
            routes.append((net, t.key("allowed_ips"), name))
        psk = None
        if t.has("preshared_key") or t.has("preshared_key_file"):
            psk = t.private_key("preshared_key")
        else:
            t.known += ["preshared_key", "preshared_key_file"]
        keepalive = t.integer("persistent_keepalive")
        if keepalive is not None and not 0 <= keepalive <= 65535:
            raise t.error(
                "persistent_keepalive",
                f"{keepalive} is out of range",
                "seconds, 0 (off) to 65535",
            )
        exit_node = t.boolean("exit_node")
        if exit_node and not any(n.prefixlen == 0 for n in nets):
            raise t.error(
                "exit_node",
                "this peer has no 0.0.0.0/0 or ::/0 in its allowed_ips",
                'add "0.0.0.0/0" (and "::/0") to its allowed_ips',
            )
        groups = groups_of(t)
        t.check_unknown()
        peers.append(
            PeerConfig(
                name, key, tuple(nets), psk, keepalive or None, groups=groups, exit_node=exit_node
            )
        )
    return tuple(peers)

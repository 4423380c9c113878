"""The rendezvous config (``p2ptun rendezvous -c FILE``, docs/ARCHITECTURE.md §3) read into
:class:`RendezvousConfig`."""

from __future__ import annotations

import os
from typing import Any

from p2ptun.config.examples import SECRET_HINT, placeholder_problem
from p2ptun.config.node import authority_key, read_revocations
from p2ptun.config.reader import ConfigFile, Table
from p2ptun.config.schema import (
    DEFAULT_RENDEZVOUS_PORT,
    DEFAULT_STUN_PORT,
    DEFAULT_TURNS_PORT,
    NetworkEntry,
    NodeEntry,
    RendezvousConfig,
    StunServerSettings,
    TurnServerSettings,
)
from p2ptun.config.values import (
    check_name,
    parse_ip_literal,
    parse_listen,
    parse_network,
    parse_port_range,
)


def rendezvous_config(source: ConfigFile, data: dict[str, Any]) -> RendezvousConfig:
    """Build a :class:`RendezvousConfig` from the decoded file (docs/ARCHITECTURE.md §3)."""
    top = source.top(data)
    top.expect(
        "listen",
        "private_key",
        "private_key_file",
        "database",
        "open_registration",
        "open_registration_turn",
        "stun",
        "turn",
        "node",
        "network",
    )
    listen = top.parse(
        "listen",
        top.string("listen", f"0.0.0.0:{DEFAULT_RENDEZVOUS_PORT}"),
        lambda s: parse_listen(s, DEFAULT_RENDEZVOUS_PORT),
        "a listen address ip:port",
    )
    private = top.private_key()
    database = top.string("database", "/var/lib/p2ptun/rendezvous.sqlite")
    if not database:
        raise top.error("database", "empty", "a path such as /var/lib/p2ptun/rendezvous.sqlite")
    open_reg = top.boolean("open_registration")
    open_turn = top.boolean("open_registration_turn")
    if open_reg:
        source.warnings.append(
            f"{source.file}: open_registration = true: anyone who can reach "
            "the signaling port may claim a name not yet taken (rate-limited and capped)"
        )
    if open_turn and not open_reg:
        raise top.error("open_registration_turn", "only applies with open_registration = true")
    if open_turn:
        source.warnings.append(
            f"{source.file}: open_registration_turn = true: self-registered nodes get TURN "
            "credentials, so anyone may relay through this server"
        )

    stun = None
    stun_t = top.table("stun")
    if stun_t is not None:
        listens = tuple(
            stun_t.parse(k, raw, lambda s: parse_listen(s, DEFAULT_STUN_PORT), "an ip:port")
            for k, raw in stun_t.strings("listen", required=True)
        )
        stun_t.check_unknown()
        stun = StunServerSettings(listens)

    turn = None
    turn_t = top.table("turn")
    if turn_t is not None:
        if stun is None or not stun.listen:
            raise turn_t.error(
                None,
                "TURN is served on the [stun] listeners",
                'add [stun] listen = ["0.0.0.0:3478"]',
            )
        turn = _turn_settings(turn_t)

    nodes: list[NodeEntry] = []
    seen_names: dict[str, str] = {}
    seen_keys: dict[bytes, str] = {}
    for t in top.tables("node"):
        name = check_name(t, "name", t.string("name", required=True))
        if name in seen_names:
            raise t.error(
                "name", f"duplicate node name {name!r}", f"first used at {seen_names[name]}"
            )
        seen_names[name] = t.path
        key = t.key_value("public_key")
        assert key is not None
        if key in seen_keys:
            raise t.error("public_key", "duplicate node key", f"already used by {seen_keys[key]}")
        seen_keys[key] = t.path
        t.check_unknown()
        nodes.append(NodeEntry(name, key))
    networks: list[NetworkEntry] = []
    seen_cas: dict[bytes, str] = {}
    for t in top.tables("network"):
        ca = authority_key(t)
        if ca in seen_cas:
            raise t.error("ca", "the same authority twice", f"already at {seen_cas[ca]}")
        seen_cas[ca] = t.path
        net_name = t.string("name")
        if net_name is not None:
            check_name(t, "name", net_name)
        revocations_file = None
        revocations = None
        if t.has("revocations"):
            revocations_file, revocations = read_revocations(t, "revocations", ca)
        else:
            t.known.append("revocations")
        t.check_unknown()
        networks.append(NetworkEntry(ca, net_name, revocations_file, revocations))
    if not nodes and not open_reg and not networks:
        source.warnings.append(
            f"{source.file}: no [[node]] or [[network]] entries and open_registration = "
            "false: no node can register"
        )
    top.check_unknown()
    return RendezvousConfig(
        path=source.file,
        listen=listen,
        private_key=private,
        database=database,
        open_registration=open_reg,
        open_registration_turn=open_turn,
        stun=stun,
        turn=turn,
        nodes=tuple(nodes),
        warnings=tuple(source.warnings),
        networks=tuple(networks),
    )


def _relay_addresses(t: Table) -> tuple[str, str | None]:
    """``relay_address``: one address, or an IPv4 and an IPv6 one (a dual-stack relay,
    RFC 8656 §7.2)."""
    if not isinstance(t.data.get("relay_address"), list):
        raw = t.string("relay_address", required=True)
        return t.parse("relay_address", raw, parse_ip_literal, "an IP address"), None
    items = t.strings("relay_address", required=True)
    hint = 'one address, or one of each family: ["203.0.113.10", "2001:db8::10"]'
    if not 1 <= len(items) <= 2:
        raise t.error("relay_address", f"{len(items)} addresses", hint)
    hosts = [t.parse(key, raw, parse_ip_literal, "an IP address") for key, raw in items]
    if len(hosts) == 2 and (":" in hosts[0]) == (":" in hosts[1]):
        raise t.error("relay_address", "two addresses of one family", hint)
    return hosts[0], (hosts[1] if len(hosts) == 2 else None)


def _turn_settings(t: Table) -> TurnServerSettings:
    realm = t.string("realm", "p2ptun")
    if not realm or len(realm) > 127:
        raise t.error("realm", "must be 1-127 characters")
    relay, extra_relay = _relay_addresses(t)
    ports = t.parse(
        "relay_ports", t.string("relay_ports", "49152-65535"), parse_port_range, "a port range"
    )
    users_t = t.table("users")
    users: dict[str, str] = {}
    if users_t is not None:
        for user, password in users_t.data.items():
            users_t.known.append(user)
            if not isinstance(password, str) or not password:
                raise users_t.error(user, "expected a non-empty password string")
            if ":" in user or not user:
                raise users_t.error(user, "user names cannot contain ':'")
            problem = placeholder_problem(password)
            if problem is not None:
                raise users_t.error(user, problem, SECRET_HINT)
            users[user] = password
    secret = t.secret("auth_secret")
    if secret is not None and len(secret) < 16:
        raise t.error("auth_secret", "too short", "use at least 16 random characters")
    if not users and secret is None:
        raise t.error(
            None,
            "no credentials: TURN would refuse everyone",
            'set users = { name = "password" } and/or auth_secret',
        )
    tls_listen = tuple(
        t.parse(k, raw, lambda s: parse_listen(s, DEFAULT_TURNS_PORT), "an ip:port")
        for k, raw in t.strings("tls_listen")
    )
    tls_cert = t.string("tls_cert")
    tls_key = t.string("tls_key")
    if tls_listen and (tls_cert is None or tls_key is None):
        raise t.error("tls_listen", "needs tls_cert and tls_key")
    for key, value in (("tls_cert", tls_cert), ("tls_key", tls_key)):
        if value is not None and not os.access(value, os.R_OK):
            raise t.error(key, f"{value}: cannot be read")
    allow = tuple(
        t.parse(k, raw, parse_network, "a network/prefix") for k, raw in t.strings("allow_peers")
    )
    quota = t.integer("user_quota", 10)
    if not 1 <= quota <= 10000:
        raise t.error("user_quota", f"{quota} is out of range", "expected 1-10000")
    max_lifetime = t.integer("max_lifetime", 3600)
    if not 600 <= max_lifetime <= 86400:
        raise t.error("max_lifetime", f"{max_lifetime} is out of range", "seconds, 600-86400")
    cred_lifetime = t.integer("credential_lifetime", 86400)
    if not 60 <= cred_lifetime <= 30 * 86400:
        raise t.error(
            "credential_lifetime", f"{cred_lifetime} is out of range", "seconds, 60-2592000"
        )
    t.check_unknown()
    return TurnServerSettings(
        realm=realm,
        relay_address=relay,
        extra_relay_address=extra_relay,
        relay_ports=ports,
        users=users,
        auth_secret=secret,
        tls_listen=tls_listen,
        tls_cert=tls_cert,
        tls_key=tls_key,
        allow_peers=allow,
        user_quota=quota,
        max_lifetime=max_lifetime,
        credential_lifetime=cred_lifetime,
    )

"""The rendezvous config (``p2ptun rendezvous -c FILE``, docs/ARCHITECTURE.md §3) read into
:class:`RendezvousConfig`."""

from __future__ import annotations

import ipaddress
import os
from typing import Any
from urllib.parse import unquote, urlsplit

from p2ptun.addr import Address, format_address
from p2ptun.config.examples import SECRET_HINT, placeholder_problem
from p2ptun.config.node import authority_key, read_revocations
from p2ptun.config.reader import ConfigFile, Table
from p2ptun.config.schema import (
    DEFAULT_RENDEZVOUS_PORT,
    DEFAULT_STUN_PORT,
    DEFAULT_TURNS_PORT,
    DEFAULT_WEB_PORT,
    ClusterSettings,
    NetworkEntry,
    NodeEntry,
    RedisUrl,
    RendezvousConfig,
    StunServerSettings,
    TurnServerSettings,
    WebSettings,
)
from p2ptun.config.values import (
    check_name,
    metrics_settings,
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
        "metrics",
        "web",
        "cluster",
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
        alternate = _alternate(stun_t, listens)
        stun_t.check_unknown()
        stun = StunServerSettings(listens, alternate)

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
    metrics = metrics_settings(top)
    web_t = top.table("web")
    web = _web(web_t) if web_t is not None else None
    cluster_t = top.table("cluster")
    cluster = _cluster(cluster_t) if cluster_t is not None else None
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
        metrics=metrics,
        web=web,
        cluster=cluster,
    )


def _web(t: Table) -> WebSettings:
    """``[web]``: ``listen`` and the admin token (``admin_token`` or ``admin_token_file``)."""
    listen = t.parse(
        "listen",
        t.string("listen", required=True),
        lambda s: parse_listen(s, DEFAULT_WEB_PORT),
        "an ip:port such as 127.0.0.1:8080",
    )
    token = t.secret("admin_token")
    token_file = t.string("admin_token_file")
    if (token is None) == (token_file is None):
        raise t.error(
            None,
            "needs exactly one of admin_token and admin_token_file",
            "the map page is shown only to whoever presents the token",
        )
    if token_file is not None:
        path = token_file
        if not os.path.isabs(path):
            path = os.path.join(os.path.dirname(os.path.abspath(t.source.file)), path)
        try:
            with open(path, encoding="utf-8") as f:
                token = f.read(4096).strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise t.error("admin_token_file", f"{token_file}: {reason}") from None
    assert token is not None
    if len(token) < 16 or any(c.isspace() for c in token):
        raise t.error(
            "admin_token_file" if token_file is not None else "admin_token",
            "too short or has spaces",
            "at least 16 random characters, e.g. from: openssl rand -hex 16",
        )
    t.check_unknown()
    return WebSettings(listen, token)


def _alternate(t: Table, listens: tuple[Address, ...]) -> Address | None:
    """``[stun] alternate``: RFC 5780's second address and port, paired with the first listen
    address of its family that has a specific IP; both must differ from that one's."""
    raw = t.string("alternate")
    if raw is None:
        return None
    ip, port = t.parse(
        "alternate", raw, lambda s: parse_listen(s, DEFAULT_STUN_PORT + 1), "an ip:port"
    )
    family = ipaddress.ip_address(ip).version
    if ipaddress.ip_address(ip).is_unspecified:
        raise t.error("alternate", f"{raw}: a wildcard", "the server's second IP address:port")
    primary = next(
        (
            a
            for a in listens
            if not ipaddress.ip_address(a[0]).is_unspecified
            and ipaddress.ip_address(a[0]).version == family
        ),
        None,
    )
    if primary is None:
        raise t.error(
            "alternate",
            f"no listen address of IPv{family} with a specific IP to pair it with",
            'list the primary address itself, e.g. listen = ["203.0.113.10:3478"]',
        )
    if ip == primary[0] or port == primary[1]:
        raise t.error(
            "alternate",
            f"{raw} shares its IP or port with {format_address(primary)}",
            "another IP address and another port of this server (RFC 5780)",
        )
    if (ip, port) in listens or (ip, primary[1]) in listens or (primary[0], port) in listens:
        raise t.error(
            "alternate",
            f"{raw} overlaps a listen address",
            "addresses the [stun] listeners do not use: the alternate's sockets are its own",
        )
    return ip, port


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


def parse_redis_url(text: str) -> RedisUrl:
    """Parse a Redis URL; ValueError with a reason when it is not one."""
    parts = urlsplit(text)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError("must start with redis:// or rediss://")
    if not parts.hostname:
        raise ValueError("has no host")
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError("has a bad port") from None
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError("the database (after the /) must be a number")
    if parts.query or parts.fragment:
        raise ValueError("takes no ?query or #fragment")
    return RedisUrl(
        parts.hostname,
        port,
        int(path) if path else 0,
        unquote(parts.username) if parts.username else None,
        unquote(parts.password) if parts.password is not None else None,
        parts.scheme == "rediss",
    )


def _cluster(t: Table) -> ClusterSettings:
    """``[cluster]``: ``redis`` (a URL), ``instance``, ``presence_ttl`` (seconds), ``tls_ca``
    (a PEM file, for ``rediss://``)."""
    url = t.parse(
        "redis",
        t.string("redis", required=True),
        parse_redis_url,
        "a URL such as redis://10.0.0.5:6379/0 (rediss:// for TLS)",
    )
    instance = t.string("instance")
    if instance is not None and (
        not instance or len(instance) > 64 or not instance.isprintable() or " " in instance
    ):
        raise t.error("instance", "1-64 printable characters without spaces")
    ttl = t.number("presence_ttl", 15.0)
    if not 3.0 <= ttl <= 600.0:
        raise t.error("presence_ttl", "must be between 3 and 600 seconds")
    tls_ca = t.string("tls_ca")
    if tls_ca is not None:
        if not url.tls:
            raise t.error("tls_ca", "only applies to a rediss:// (TLS) URL")
        if not os.path.isabs(tls_ca):
            tls_ca = os.path.join(os.path.dirname(os.path.abspath(t.source.file)), tls_ca)
        if not os.path.isfile(tls_ca):
            raise t.error("tls_ca", f"{tls_ca}: no such file")
    t.check_unknown()
    return ClusterSettings(url, instance, float(ttl), tls_ca)

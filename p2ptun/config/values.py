"""Parsers for the values inside config keys: addresses, networks, TURN and STUN URLs, ranges.

Each takes the key's text and returns a typed value, or raises ValueError with a short reason
that :meth:`p2ptun.config.reader.Table.parse` turns into a one-line ConfigError.
"""

from __future__ import annotations

import ipaddress

from p2ptun.addr import Address, parse_host_port
from p2ptun.config.reader import Table
from p2ptun.config.schema import (
    DEFAULT_METRICS_PORT,
    DEFAULT_STUN_PORT,
    DEFAULT_TURNS_PORT,
    NAME_RE,
    NAME_RULE,
    IPInterface,
    IPNetwork,
    MetricsSettings,
    TurnTransport,
)


def _digits(text: str) -> bool:
    """ASCII digits only (``str.isdigit`` also takes other scripts' digits and superscripts)."""
    return text.isascii() and text.isdigit()


def parse_interface_address(text: str) -> IPInterface:
    if "/" not in text:
        raise ValueError("a prefix length is required, e.g. 10.77.0.1/24")
    try:
        return ipaddress.ip_interface(text)
    except ValueError as exc:
        raise ValueError(str(exc).rstrip(".")) from None


def parse_network(text: str) -> IPNetwork:
    if "/" not in text:
        raise ValueError("a prefix length is required, e.g. 10.77.0.2/32")
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(str(exc).rstrip(".")) from None
        raise ValueError(f"host bits are set; did you mean {loose}?") from None


def parse_turn_url(text: str) -> tuple[str, int, TurnTransport]:
    """``turn:host[:port][?transport=udp|tcp]`` or ``turns:host[:port][?transport=tcp]``
    (RFC 7065). Returns host, port and our transport name (``tls`` for ``turns:``)."""
    scheme, sep, rest = text.partition(":")
    if not sep or scheme not in ("turn", "turns"):
        raise ValueError("the scheme must be 'turn:' or 'turns:'")
    if rest.startswith("//"):
        raise ValueError("write turn:host:port, without '//'")
    hostport, _, query = rest.partition("?")
    transport = "udp" if scheme == "turn" else "tcp"
    if query:
        name, eq, value = query.partition("=")
        if name != "transport" or not eq:
            raise ValueError("the only query parameter is ?transport=udp|tcp")
        if value not in ("udp", "tcp"):
            raise ValueError(f"transport {value!r} is unknown; use udp or tcp")
        transport = value
    if scheme == "turns" and transport == "udp":
        raise ValueError("turns: runs over TLS, so its transport is tcp (DTLS is not supported)")
    host, port = parse_host_port(
        hostport, DEFAULT_TURNS_PORT if scheme == "turns" else DEFAULT_STUN_PORT
    )
    return host, port, ("tls" if scheme == "turns" else transport)  # type: ignore[return-value]


def parse_stun_server(text: str) -> Address:
    """``host[:port]`` or ``stun:host[:port]`` (RFC 7064)."""
    if text.startswith("stuns:"):
        raise ValueError("stuns: is not supported; use stun:host:port")
    if text.startswith("stun:"):
        text = text[5:]
    return parse_host_port(text, DEFAULT_STUN_PORT)


def parse_port_range(text: str) -> tuple[int, int]:
    lo_text, sep, hi_text = text.partition("-")
    if not sep or not _digits(lo_text) or not _digits(hi_text):
        raise ValueError("expected LOW-HIGH, e.g. 49152-65535")
    lo, hi = int(lo_text), int(hi_text)
    if not 1024 <= lo <= hi <= 65535:
        raise ValueError("expected 1024 <= LOW <= HIGH <= 65535")
    return lo, hi


def parse_ip_literal(text: str) -> str:
    return str(ipaddress.ip_address(text))


def parse_listen(text: str, default_port: int) -> Address:
    host, port = parse_host_port(text, default_port)
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        raise ValueError("listen addresses must be IP literals such as 0.0.0.0 or [::]") from None
    return host, port


def check_name(table: Table, key: str, value: str) -> str:
    """A node or peer name at ``key``: :data:`~p2ptun.config.schema.NAME_RE`, else a ConfigError."""
    if not NAME_RE.fullmatch(value):
        raise table.error(key, f"{value!r} is not a valid name", NAME_RULE)
    return value


def metrics_settings(top: Table) -> MetricsSettings | None:
    """``[metrics] listen = "127.0.0.1:9560"`` of either daemon, or None without the section."""
    t = top.table("metrics")
    if t is None:
        return None
    raw = t.string("listen", required=True)
    listen = t.parse(
        "listen",
        raw,
        lambda s: parse_listen(s, DEFAULT_METRICS_PORT),
        "an ip:port such as 127.0.0.1:9560",
    )
    t.check_unknown()
    return MetricsSettings(listen)

"""Transport addresses: ``(host, port)`` tuples, as the socket API uses them.

``host`` is a literal IPv4 or IPv6 address (no brackets, no scope) once resolved; config values
may still hold a DNS name until the trio layer resolves them.
"""

from __future__ import annotations

import ipaddress
import re

Address = tuple[str, int]

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?$"
)


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def is_hostname(host: str) -> bool:
    """A DNS name or an IP literal."""
    return is_ip(host) or bool(_HOSTNAME.match(host))


def parse_host_port(text: str, default_port: int | None = None) -> Address:
    """Parse ``host:port``, ``[v6]:port``, or (with a default port) ``host`` / ``[v6]`` / ``v6``.

    Raises ValueError with a short reason.
    """
    text = text.strip()
    if not text:
        raise ValueError("empty address")
    host: str
    port_text: str | None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError("missing ']' after IPv6 address")
        host = text[1:end]
        rest = text[end + 1 :]
        if rest == "":
            port_text = None
        elif rest.startswith(":"):
            port_text = rest[1:]
        else:
            raise ValueError("expected ':port' after ']'")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    elif text.count(":") > 1:
        # A bare IPv6 literal has no port.
        host, port_text = text, None
        if not is_ip(host):
            raise ValueError("IPv6 addresses with a port must be written [addr]:port")
    elif ":" in text:
        host, port_text = text.rsplit(":", 1)
    else:
        host, port_text = text, None
    if not is_hostname(host):
        raise ValueError(f"{host!r} is not a host name or IP address")
    if port_text is None:
        if default_port is None:
            raise ValueError("missing ':port'")
        return host, default_port
    if not port_text.isdigit():
        raise ValueError(f"port {port_text!r} is not a number")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range 1-65535")
    return host, port


def is_ipv6(host: str) -> bool:
    """Whether the IP literal ``host`` is an IPv6 address: it has a colon, which no IPv4
    literal has. The one address-family test of the project (cheap enough for the data path;
    ``host`` must already be an IP literal)."""
    return ":" in host


def format_address(addr: Address) -> str:
    """``1.2.3.4:5`` or ``[2001:db8::1]:5``."""
    host, port = addr[0], addr[1]
    if is_ipv6(host):
        return f"[{host}]:{port}"
    return f"{host}:{port}"

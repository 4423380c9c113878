"""Transport addresses: ``(host, port)`` tuples, as the socket API uses them.

``host`` is a literal IPv4 or IPv6 address (no brackets, no scope) once resolved; config values
may still hold a DNS name until the trio layer resolves them.

Per-source limits (what one stranger may hold or cost a server) count under
:func:`source_key` — an IPv4 address, or an IPv6 address's /64 — and spend from a
:class:`SourceBudget`, a token bucket per source with a bounded table. Both are sans-I/O: the
caller passes ``now``.
"""

from __future__ import annotations

import ipaddress
import re
from collections import OrderedDict

Address = tuple[str, int]

_HOSTNAME = re.compile(
    r"(?=.{1,253}\Z)(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?"
)
_NUMERIC_LABEL = re.compile(r"[0-9]+")


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def is_hostname(host: str) -> bool:
    """A DNS name or an IP literal.

    The whole text must match (no trailing newline slips through), and a name whose last label
    is all digits is refused: no top-level domain is numeric (RFC 3696 §2), so ``1.2.3`` is a
    mistyped address, not a name to resolve."""
    if is_ip(host):
        return True
    if not _HOSTNAME.fullmatch(host):
        return False
    last = host.rstrip(".").rsplit(".", 1)[-1]
    return not _NUMERIC_LABEL.fullmatch(last)


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
    if not port_text.isascii() or not port_text.isdigit():
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


def source_key(host: str) -> str:
    """What per-source limits count a client under: an IPv4 address as itself (an IPv4-mapped
    IPv6 address as its IPv4 address), an IPv6 address by its /64 — the block one subscriber
    usually holds whole, so that the 2^64 addresses of one attacker count as one source — and
    anything that is not an IP literal as itself."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped
        if mapped is not None:
            return str(mapped)
        return str(ipaddress.IPv6Network(((int(ip) >> 64) << 64, 64)))
    return str(ip)


class SourceBudget:
    """A token bucket per source key (:func:`source_key`): each source may spend ``rate``
    tokens a second, ``burst`` at once. The table keeps at most ``max_sources`` sources; the
    one seen least recently is forgotten first (it comes back with a full bucket), so the
    memory is bounded whatever the number of sources. Sans-I/O: ``now`` is any monotonic clock.
    """

    __slots__ = ("_buckets", "burst", "max_sources", "rate")

    def __init__(self, rate: float, burst: float, max_sources: int) -> None:
        if rate < 0 or burst < 0 or max_sources < 1:
            raise ValueError("rate and burst must not be negative, max_sources at least 1")
        self.rate = rate
        self.burst = burst
        self.max_sources = max_sources
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, key: str, now: float, cost: float = 1.0) -> bool:
        """Spend ``cost`` tokens of ``key``'s bucket if it holds them; False (nothing spent)
        when it does not."""
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            if len(buckets) >= self.max_sources:
                buckets.popitem(last=False)
            bucket = buckets[key] = [self.burst, now]
        else:
            buckets.move_to_end(key)
            if now > bucket[1]:
                bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
                bucket[1] = now
        if bucket[0] >= cost:
            bucket[0] -= cost
            return True
        return False

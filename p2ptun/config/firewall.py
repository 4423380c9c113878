"""``[firewall]`` of the node config and ``groups`` of a ``[[peer]]``, read into a
:class:`~p2ptun.firewall.Policy` (docs/ARCHITECTURE.md §3, README "Firewall").

::

    [firewall]                      # optional; bounds of the flow table
    max_flows = 16384
    [[firewall.inbound]]            # absent: inbound ICMP only; inbound = []: nothing
    proto = "tcp"                   # tcp, udp, icmp, any (default any)
    port = 22                       # a number, "8000-8999" or "any" (default)
    groups = ["admin"]              # the peer holds every one of them ...
    peers = ["laptop"]              # ... or is one of these (neither: any peer)
    cidr = ["10.1.0.0/16"]          # the remote address (optional)
    local_cidr = ["10.9.0.1/32"]    # our address (optional)
    [[firewall.outbound]]           # absent: any outbound flow
"""

from __future__ import annotations

from p2ptun.config.reader import Table
from p2ptun.config.values import parse_network
from p2ptun.firewall import PROTOCOLS, Policy, Rule
from p2ptun.membership.codec import check_name as check_membership_name

MAX_RULES = 256
"""Rules per direction (each is compared with a new flow's first packet)."""
MAX_GROUPS = 16  # as in a certificate (p2ptun.membership.details)


def parse_port(text: str | int) -> tuple[int, int] | None:
    """``22``, ``"22"``, ``"8000-8999"`` or ``"any"`` (None)."""
    if isinstance(text, int):
        lo = hi = text
    elif text == "any":
        return None
    else:
        lo_text, sep, hi_text = text.partition("-")
        if not lo_text.strip().isdigit() or (sep and not hi_text.strip().isdigit()):
            raise ValueError("expected a port, a range such as 8000-8999, or any")
        lo = int(lo_text)
        hi = int(hi_text) if sep else lo
    if not 0 <= lo <= hi <= 65535:
        raise ValueError("ports are 0-65535, the lower one first")
    return (lo, hi)


def groups_of(t: Table, key: str = "groups") -> tuple[str, ...]:
    """An array of group names (certificate rules: lower-case, 1-63 characters), sorted."""
    groups = set()
    for key_name, raw in t.strings(key):
        try:
            check_membership_name(raw, "group name")
        except ValueError as exc:
            raise t.error(key_name, str(exc)) from None
        groups.add(raw)
    if len(groups) > MAX_GROUPS:
        raise t.error(key, f"at most {MAX_GROUPS} groups")
    return tuple(sorted(groups))


def _rule(t: Table) -> Rule:
    proto = t.string("proto", "any")
    if proto not in PROTOCOLS:
        raise t.error("proto", f"{proto!r} is not a protocol", "one of: " + ", ".join(PROTOCOLS))
    ports = None
    if t.has("port"):
        raw = t.data["port"]
        t.known.append("port")
        if isinstance(raw, bool) or not isinstance(raw, int | str):
            raise t.error("port", 'expected a port number or a string such as "8000-8999"')
        try:
            ports = parse_port(raw)
        except ValueError as exc:
            raise t.error("port", f"{raw!r}: {exc}") from None
        if ports is not None and proto not in ("tcp", "udp", "any"):
            raise t.error("port", f"{proto} has no ports", 'use proto = "tcp" or "udp"')
    peers = set()
    for key_name, raw in t.strings("peers"):
        if not raw:
            raise t.error(key_name, "empty peer name")
        peers.add(raw)
    groups = groups_of(t)
    cidrs = tuple(
        t.parse(k, raw, parse_network, "a network/prefix") for k, raw in t.strings("cidr")
    )
    local = tuple(
        t.parse(k, raw, parse_network, "a network/prefix") for k, raw in t.strings("local_cidr")
    )
    t.check_unknown()
    return Rule(proto, ports, frozenset(peers), frozenset(groups), cidrs, local)


def _rules(top: Table, name: str, default: tuple[Rule, ...]) -> tuple[Rule, ...]:
    if not top.has(name):
        top.known.append(name)
        return default
    rules = tuple(_rule(t) for t in top.tables(name))
    if len(rules) > MAX_RULES:
        raise top.error(name, f"{len(rules)} rules (at most {MAX_RULES})")
    return rules


def firewall_policy(top: Table) -> Policy:
    """The node's policy: ``[firewall]``, or the default without one."""
    t = top.table("firewall")
    if t is None:
        return Policy()
    default = Policy()
    inbound = _rules(t, "inbound", default.inbound)
    outbound = _rules(t, "outbound", default.outbound)
    max_flows = t.integer("max_flows", default.max_flows)
    if not 16 <= max_flows <= 1_000_000:
        raise t.error("max_flows", f"{max_flows} is out of range", "16 to 1000000")
    per_peer = t.integer("max_flows_per_peer", min(default.max_flows_per_peer, max_flows))
    if not 1 <= per_peer <= max_flows:
        raise t.error("max_flows_per_peer", f"{per_peer} is out of range", "1 to max_flows")
    timeouts = {}
    for key, value in (
        ("tcp_timeout", default.tcp_timeout),
        ("udp_timeout", default.udp_timeout),
        ("icmp_timeout", default.icmp_timeout),
    ):
        seconds = t.number(key, value)
        if not 1 <= seconds <= 7 * 86400:
            raise t.error(key, f"{seconds} is out of range", "seconds, 1 to 604800")
        timeouts[key] = float(seconds)
    t.check_unknown()
    return Policy(inbound, outbound, max_flows, per_peer, **timeouts)

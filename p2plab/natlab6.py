"""IPv6 for the NAT lab: dual-stack sites (:meth:`p2plab.natlab.NatLab.enable_ipv6`).

IPv6 is opt-in per lab, so labs that do not ask for it stay IPv4-only as before. With it, the
internet, the server and the chosen sites get addresses from the documentation prefix
2001:db8::/32 (RFC 3849)::

    server 2001:db8::10, ::11 /64 ── inet 2001:db8::1
    site i: router WAN 2001:db8:100:i::2/64 (gateway ::1 in inet),
            LAN 2001:db8:i::/64 (router ::1, host ::2), routed by inet via the router's WAN

There is no IPv6 NAT. Instead every site router runs the firewall of a home router (RFC 6092's
recommended default for UDP, the way consumer routers ship it): what the LAN sends out is
allowed, and it opens a pinhole (a conntrack entry) through which only replies from that exact
remote address and port come back — address-and-port-dependent filtering, like a
port-restricted cone NAT that keeps every address and port as it is. Unsolicited inbound
traffic is dropped silently; ICMPv6 (neighbour discovery, errors, echo) passes. A ``none`` site
is open (a public host), a ``udp-blocked`` site drops UDP over IPv6 as well.

Addresses are added with ``nodad`` (no duplicate address detection: usable at once), routers
forward (``net.ipv6.conf.all.forwarding=1``). The internet's ``ip6 lab6`` table counts the bytes
it forwards per (ingress link, egress link), like its IPv4 ``ip lab`` table:
:meth:`~p2plab.natlab.NatLab.counters6` tells a test whether IPv6 traffic went straight between
two sites. :meth:`~p2plab.natlab.NatLab.block` and the loss of
:meth:`~p2plab.natlab.NatLab.set_netem` act on IPv4 only (their rules live in the ``ip lab``
table); the delay line delays both families.
"""

from __future__ import annotations

import dataclasses
import ipaddress

SERVER6_NET = "2001:db8::/64"
SERVER6_GW = "2001:db8::1"
SERVER6_ADDRS = ("2001:db8::10", "2001:db8::11")
"""The server's two public IPv6 addresses."""


@dataclasses.dataclass(frozen=True)
class Site6:
    """The IPv6 address plan of site ``index``."""

    index: int
    wan_net: str
    wan_gw: str
    wan_addr: str
    lan_net: str
    lan_gw: str
    host_addr: str

    @classmethod
    def plan(cls, index: int) -> Site6:
        wan = ipaddress.IPv6Network(f"2001:db8:100:{index:x}::/64")
        lan = ipaddress.IPv6Network(f"2001:db8:{index:x}::/64")
        return cls(
            index=index,
            wan_net=str(wan),
            wan_gw=str(wan[1]),
            wan_addr=str(wan[2]),
            lan_net=str(lan),
            lan_gw=str(lan[1]),
            host_addr=str(lan[2]),
        )


def sysctl_script(forward: bool) -> str:
    """Shell lines turning IPv6 on in a namespace (and forwarding, for routers)."""
    s = "echo 0 > /proc/sys/net/ipv6/conf/all/disable_ipv6\n"
    s += "echo 0 > /proc/sys/net/ipv6/conf/default/disable_ipv6\n"
    s += "echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad\n"
    # The links came up with IPv4 only in mind: their link-local addresses are still in
    # duplicate address detection (tentative for ~2 s, and neighbour discovery waits for
    # them). Restart IPv6 on each without DAD, so that the lab is usable at once.
    s += "for d in /proc/sys/net/ipv6/conf/*; do n=${d##*/}; case $n in all|default|lo) ;;\n"
    s += "  *) echo 0 > $d/accept_dad; echo 1 > $d/disable_ipv6; echo 0 > $d/disable_ipv6;;\n"
    s += "esac; done\n"
    if forward:
        s += "echo 1 > /proc/sys/net/ipv6/conf/all/forwarding\n"
    return s


def inet_ruleset(outer_links: list[str]) -> str:
    """The internet's ``ip6 lab6`` table: one counter per (ingress link, egress link);
    ``outer_links[k]`` is link k's interface in the internet (0 = the server's)."""
    n = len(outer_links)
    lines = ["table ip6 lab6 {"]
    lines += [f"  counter c_{a}_{b} {{}}" for a in range(n) for b in range(n) if a != b]
    lines += ["  chain forward {", "    type filter hook forward priority filter; policy accept;"]
    for a in range(n):
        for b in range(n):
            if a != b:
                ia, ib = outer_links[a], outer_links[b]
                lines.append(f'    iifname "{ia}" oifname "{ib}" counter name "c_{a}_{b}"')
    lines += ["  }", "}", ""]
    return "\n".join(lines)


def router_ruleset(nat: str, wan_if: str, lan_if: str) -> str:
    """A site router's ``ip6 lab6`` table: the home router's stateful firewall (see the module
    docstring) for NAT type ``nat``'s site."""
    wan, lan = f'"{wan_if}"', f'"{lan_if}"'
    fwd = ["    type filter hook forward priority filter; policy drop;"]
    if nat == "udp-blocked":
        fwd.append("    meta l4proto udp drop")
    fwd += [
        "    ct state established,related accept",
        "    ct state invalid drop",
        "    meta l4proto ipv6-icmp accept",
        f"    iifname {lan} oifname {wan} accept",
    ]
    if nat == "none":
        fwd.append(f"    iifname {wan} oifname {lan} accept")
    return "\n".join(
        [
            "table ip6 lab6 {",
            "  chain input {",
            "    type filter hook input priority filter; policy accept;",
            "    meta l4proto ipv6-icmp accept",
            f"    iifname {wan} ct state established,related accept",
            f"    iifname {wan} drop",
            "  }",
            "  chain forward {",
            *fwd,
            "  }",
            "}",
            "",
        ]
    )

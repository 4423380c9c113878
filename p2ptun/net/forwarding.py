"""Forwarding for subnet routes and an exit node: nftables, sysctls and policy routing.

What the node asks of the kernel when it forwards for its peers (``[interface]
advertise_routes``) or sends everything through a peer (an exit node), done the way wg-quick
does it and undone on exit:

- **One nftables table of our own**, ``inet p2ptun-<interface>`` (:func:`nft_ruleset`):
  source NAT (masquerade) of flows forwarded from the tunnel to another interface, when
  ``[interface] masquerade`` is on; TCP MSS clamped to the route's MTU on every SYN forwarded
  into or out of the tunnel (the data path clamps what crosses the tunnel too,
  :mod:`p2ptun.node.mss`; this covers the LAN side's MTU); and, with an exit node, the mark of
  our underlay sockets kept in the flow's conntrack entry and put back on its replies, so
  that reverse-path filtering with ``src_valid_mark`` sees them as ours. The table is written
  in one ``nft -f`` transaction that first deletes any table of the same name (left by a
  crash) and is deleted when the node stops.
- **IP forwarding** per family (``net.ipv4.ip_forward``, ``net.ipv6.conf.all.forwarding``):
  set to 1 when the node advertises routes of that family, and left so (other services may
  rely on it once on); a host where it cannot be set says so in one line.
- **Policy routing for an exit node** (:func:`exit_rule_commands`), per family: the default
  route through the tunnel in a table of its own (``[interface] fwmark``, also the mark);
  ``ip rule not fwmark M lookup T`` sends every unmarked packet there, and before it ``ip
  rule lookup main suppress_prefixlength 0`` lets every more specific route of the main table
  win (directly connected LANs, the overlay, the peers' subnet routes). The node's own
  underlay sockets carry the mark (``SO_MARK``, :meth:`SystemHost.set_fwmark
  <p2ptun.net.system.SystemHost.set_fwmark>`), so WireGuard, ICE, STUN/TURN, the rendezvous and
  port mapping never enter the tunnel they carry. With ``exit_node_allow_lan = false`` the
  connected LAN prefixes go through the tunnel too (two rules per prefix ahead of the
  suppressing one: marked to main, unmarked to the exit table).

The command texts are pure functions (tested without a kernel); :func:`run_commands` and the
``SystemHost`` methods run them with ``nft`` and ``ip`` (iproute2), in another network
namespace when the host was made for one.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Sequence

import trio

from p2ptun.errors import RuntimeFailure
from p2ptun.net.ports import IPNetwork

PREF_LAN_MARKED = 32760
"""``to LAN fwmark M lookup main``: our underlay to the LAN stays out (allow_lan off)."""
PREF_LAN = 32761
"""``to LAN lookup T``: everything else to the LAN through the exit node (allow_lan off)."""
PREF_SUPPRESS = 32762
"""``lookup main suppress_prefixlength 0``: main's specific routes win."""
PREF_EXIT = 32763
"""``not fwmark M lookup T``: all that is left, through the exit node."""
RULE_PREFS = (PREF_LAN_MARKED, PREF_LAN, PREF_SUPPRESS, PREF_EXIT)

FORWARDING_SYSCTL = {
    4: "net/ipv4/ip_forward",
    6: "net/ipv6/conf/all/forwarding",
}
SRC_VALID_MARK = "net/ipv4/conf/all/src_valid_mark"


def nft_table(interface: str) -> str:
    """The name of our nftables table (``inet`` family) for ``interface``."""
    return f"p2ptun-{interface}"


def nft_ruleset(interface: str, *, forward: bool, masquerade: bool, mark: int | None) -> str | None:
    """The table's text (``nft -f``), replacing any earlier one; None when nothing is
    needed. ``forward``: the node forwards for its peers (MSS clamp, and ``masquerade``);
    ``mark``: an exit node is in use (conntrack keeps the underlay mark for the replies)."""
    table = nft_table(interface)
    ifname = f'"{interface}"'
    chains: list[str] = []
    if forward:
        chains += [
            "  chain forward {",
            "    type filter hook forward priority mangle; policy accept;",
            f"    iifname {ifname} tcp flags syn / syn,rst tcp option maxseg size set rt mtu",
            f"    oifname {ifname} tcp flags syn / syn,rst tcp option maxseg size set rt mtu",
            "  }",
        ]
        if masquerade:
            chains += [
                "  chain postrouting {",
                "    type nat hook postrouting priority srcnat; policy accept;",
                f"    iifname {ifname} oifname != {ifname} masquerade",
                "  }",
            ]
    if mark is not None:
        chains += [
            "  chain premangle {",
            "    type filter hook prerouting priority mangle; policy accept;",
            "    meta l4proto { tcp, udp } meta mark set ct mark",
            "  }",
            "  chain postmangle {",
            "    type filter hook postrouting priority mangle; policy accept;",
            f"    meta l4proto {{ tcp, udp }} meta mark {mark:#x} ct mark set meta mark",
            "  }",
        ]
    if not chains:
        return None
    return "\n".join(
        [
            f"table inet {table}",
            f"delete table inet {table}",
            f"table inet {table} {{",
            *chains,
            "}",
            "",
        ]
    )


def nft_delete(interface: str) -> str:
    """Delete our table if it exists (declaring it first makes the delete never fail)."""
    table = nft_table(interface)
    return f"table inet {table}\ndelete table inet {table}\n"


def exit_rule_commands(
    interface: str,
    mark: int,
    defaults: Sequence[IPNetwork],
    lan: Sequence[IPNetwork] = (),
) -> list[list[str]]:
    """``ip`` argument lists that send everything but our marked underlay through
    ``interface`` (module docstring): per family of ``defaults`` (0.0.0.0/0, ::/0), and the
    ``lan`` prefixes of that family through the tunnel as well."""
    table, fwmark = mark, hex(mark)
    lines: list[str] = []
    for net in defaults:
        ip = f"ip -{net.version}"
        lines.append(f"{ip} route replace {net} dev {interface} table {table}")
        for prefix in (p for p in lan if p.version == net.version):
            lines.append(
                f"{ip} rule add to {prefix} fwmark {fwmark} lookup main priority {PREF_LAN_MARKED}"
            )
            lines.append(f"{ip} rule add to {prefix} lookup {table} priority {PREF_LAN}")
        lines.append(f"{ip} rule add lookup main suppress_prefixlength 0 priority {PREF_SUPPRESS}")
        lines.append(f"{ip} rule add not fwmark {fwmark} lookup {table} priority {PREF_EXIT}")
    # Interface names and prefixes hold no spaces (the config checks the names).
    return [line.split() for line in lines]


def exit_clear_commands(mark: int, present: Sequence[tuple[int, int]]) -> list[list[str]]:
    """``ip`` argument lists that remove our rules among the ``present`` ``(IP version,
    priority)`` pairs (one deletion per rule found: the kernel deletes the first match)."""
    table = str(mark)
    match = {
        PREF_EXIT: ["lookup", table],
        PREF_LAN: ["lookup", table],
        PREF_LAN_MARKED: ["fwmark", hex(mark), "lookup", "main"],
        PREF_SUPPRESS: ["lookup", "main", "suppress_prefixlength", "0"],
    }
    return [
        ["ip", f"-{version}", "rule", "del", "priority", str(priority), *match[priority]]
        for version, priority in present
        if priority in match
    ]


def exit_flush_commands(mark: int, versions: Iterable[int] = (4, 6)) -> list[list[str]]:
    """Empty our routing table in the IP ``versions`` given."""
    return [["ip", f"-{v}", "route", "flush", "table", str(mark)] for v in sorted(set(versions))]


def lan_prefixes(addresses: Sequence[tuple[str, int]]) -> list[IPNetwork]:
    """The connected prefixes of ``(address, prefixlen)`` pairs (no link-local), each once."""
    nets: list[IPNetwork] = []
    for address, prefixlen in addresses:
        ip = ipaddress.ip_address(address)
        if ip.is_link_local or ip.is_loopback:
            continue
        net = ipaddress.ip_network(f"{address}/{prefixlen}", strict=False)
        if net.prefixlen and net not in nets:
            nets.append(net)
    return nets


# -- running them ----------------------------------------------------------------------------


def _in_netns(netns: str | None, argv: list[str]) -> list[str]:
    return argv if netns is None else ["ip", "netns", "exec", netns, *argv]


COMMAND_TIMEOUT = 10.0
"""Seconds one ``ip`` or ``nft`` may take before the node gives up on it (it is killed)."""


async def run_command(
    argv: list[str], *, netns: str | None = None, stdin: bytes | None = None
) -> str | None:
    """Run one command; None on success, else its error text (one line)."""
    try:
        with trio.fail_after(COMMAND_TIMEOUT):
            result = await trio.run_process(
                _in_netns(netns, argv),
                stdin=stdin,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
    except OSError as exc:
        return f"{argv[0]}: {exc.strerror}"
    except trio.TooSlowError:
        return f"{argv[0]}: no answer within {COMMAND_TIMEOUT:g} s"
    if result.returncode == 0:
        return None
    text = (result.stderr or result.stdout).decode(errors="replace").strip()
    return " ".join(text.split()) or f"{argv[0]} exited with {result.returncode}"


async def apply_nft(text: str, *, netns: str | None = None) -> None:
    """Load ``text`` in one nftables transaction; RuntimeFailure (one line) if refused."""
    error = await run_command(["nft", "-f", "-"], netns=netns, stdin=text.encode())
    if error is not None:
        raise RuntimeFailure(f"nftables refused our table: {error}")


async def run_commands(commands: list[list[str]], *, netns: str | None = None) -> None:
    """Run ``ip`` commands in order; RuntimeFailure (one line) at the first that fails."""
    for argv in commands:
        error = await run_command(argv, netns=netns)
        if error is not None:
            raise RuntimeFailure(f"{' '.join(argv)}: {error}")


async def write_sysctl(key: str, value: str, *, netns: str | None = None) -> str | None:
    """Set ``/proc/sys/<key>``; None when it holds ``value`` afterwards, else why not."""
    path = os.path.join("/proc/sys", key)
    if netns is not None:
        return await run_command(["sysctl", "-qw", f"{key.replace('/', '.')}={value}"], netns=netns)
    try:
        with open(path) as f:
            if f.read().strip() == value:
                return None
        with open(path, "w") as f:
            f.write(value)
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    return None


__all__ = [
    "FORWARDING_SYSCTL",
    "RULE_PREFS",
    "apply_nft",
    "exit_clear_commands",
    "exit_flush_commands",
    "exit_rule_commands",
    "lan_prefixes",
    "nft_delete",
    "nft_ruleset",
    "nft_table",
    "run_commands",
    "write_sysctl",
]

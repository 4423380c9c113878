"""A plain host on a LAN behind a lab site's host: what a node's subnet route leads to.

:func:`add_lan_host` gives a lab site host a second interface into a LAN of its own (by
default ``192.168.1.0/24``: the site host is ``.1`` and the LAN's router, the plain host
``.10`` with its default route through it). The plain host runs no p2ptun: it is the printer
or NAS a node advertises a route to. The namespace and the veth pair carry the lab's prefix and
go when the lab closes (a cleanup of the lab), pass or fail.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import subprocess
from collections.abc import Sequence

from p2plab.natlab import LabError, NatLab


@dataclasses.dataclass(frozen=True)
class LanHost:
    """The plain host: its namespace, its address and the site host's address on the LAN."""

    ns: str
    address: str
    router: str
    network: str
    address6: str | None = None
    router6: str | None = None

    def argv(self, *argv: str) -> list[str]:
        """``argv`` run in the plain host's namespace."""
        return ["ip", "netns", "exec", self.ns, *argv]

    def popen(self, lab: NatLab, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[str]:
        """Start ``argv`` on the plain host; the lab stops it by PID when it closes."""
        proc: subprocess.Popen[str] = subprocess.Popen(self.argv(*argv), **kwargs)  # type: ignore[call-overload]
        lab.add_cleanup(lambda: lab.stop(proc))
        return proc


def _ip_batch(lines: Sequence[str], ns: str | None = None) -> None:
    where = [] if ns is None else ["-n", ns]
    proc = subprocess.run(
        ["ip", *where, "-batch", "-"],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    if proc.returncode != 0:
        raise LabError(f"lan host setup failed: {proc.stderr.strip()}")


def add_lan_host(
    lab: NatLab, site: int, network: str = "192.168.1.0/24", network6: str | None = None
) -> LanHost:
    """A plain host on a new LAN behind site ``site``'s host (module docstring); with
    ``network6`` the LAN is dual-stack (router ``::1``, host ``::a``, no DAD wait)."""
    net = ipaddress.ip_network(network)
    ns = f"{lab.prefix}-lan{site}"
    site_ns = lab.ns(f"site{site}")
    near, far = f"{lab.prefix}l{site}a", f"{lab.prefix}l{site}b"
    router, address = str(net[1]), str(net[10])
    _ip_batch([f"netns add {ns}"])

    def remove() -> None:
        with contextlib.suppress(LabError):
            _ip_batch([f"netns del {ns}"])

    lab.add_cleanup(remove)
    _ip_batch([f"link add {near} netns {site_ns} type veth peer name {far} netns {ns}"])
    _ip_batch([f"link set {near} up", f"addr add {router}/{net.prefixlen} dev {near}"], site_ns)
    _ip_batch(
        [
            "link set lo up",
            f"link set {far} up",
            f"addr add {address}/{net.prefixlen} dev {far}",
            f"route add default via {router} dev {far}",
        ],
        ns,
    )
    if network6 is not None:
        net6 = ipaddress.ip_network(network6)
        router6, address6 = str(net6[1]), str(net6[10])
        _ip_batch([f"addr add {router6}/{net6.prefixlen} dev {near} nodad"], site_ns)
        _ip_batch(
            [
                f"addr add {address6}/{net6.prefixlen} dev {far} nodad",
                f"route add default via {router6} dev {far}",
            ],
            ns,
        )
        return LanHost(ns, address, router, str(net), address6, router6)
    return LanHost(ns, address, router, str(net))


__all__ = ["LanHost", "add_lan_host"]

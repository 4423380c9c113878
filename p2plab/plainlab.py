"""Two namespaces on one veth: the plain-link topology of ``scripts/bench plain``.

The NAT lab (:mod:`p2plab.natlab`) puts two router namespaces with conntrack between the
sites; real users' NAT routers are other machines, so a benchmark there charges the tunnel for
forwarding it does not do. This lab has nothing in the path but one veth pair::

    site1 (10.98.0.1/24) ──── veth ──── site2 (10.98.0.2/24)

It offers the part of :class:`~p2plab.natlab.NatLab`'s interface the bench uses (``exec``,
``popen``, ``stop``, ``add_cleanup``, ``site``, the path counters, ``close``), so one set of
tunnel drivers measures both topologies. ``server`` is site1's namespace: the rendezvous of a
p2ptun row runs beside the first node, where it only signals (the data goes straight across
the veth, which :meth:`direct_bytes` shows).

Every name carries the instance prefix; :meth:`close` stops the processes it started (by PID)
and deletes its two namespaces, nothing else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import secrets

from p2plab.natlab import LabError, NamespaceLab, _netns_exists, _run

NET = "10.98.0.0/24"
PREFIXLEN = 24


@dataclasses.dataclass
class PlainSite:
    """One end of the link. ``host_addr``, ``wan_addr`` and ``mapped_addr`` are all the
    one address (no NAT): the names the NAT lab's drivers use for them."""

    index: int
    addr: str

    @property
    def host_addr(self) -> str:
        return self.addr

    @property
    def wan_addr(self) -> str:
        return self.addr

    @property
    def mapped_addr(self) -> str:
        return self.addr


class PlainLab(NamespaceLab):
    """Two namespaces ``<prefix>-site1`` and ``<prefix>-site2`` joined by one veth."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix
        self.sites = [PlainSite(1, "10.98.0.1"), PlainSite(2, "10.98.0.2")]
        self._closed = False
        self._baseline = 0

    @property
    def namespaces(self) -> list[str]:
        return [f"{self.prefix}-site1", f"{self.prefix}-site2"]

    def veth(self, k: int) -> str:
        """Site ``k``'s end of the veth."""
        return f"{self.prefix}-v{k}"

    @classmethod
    def create(cls, prefix: str | None = None) -> PlainLab:
        """Build a new instance (``prefix`` defaults to ``pp`` + 6 random hex digits)."""
        lab = cls(prefix or "pp" + secrets.token_hex(3))
        if any(_netns_exists(ns) for ns in lab.namespaces):
            raise LabError(f"a lab named {lab.prefix!r} exists already")
        try:
            lab._build()
        except BaseException:
            lab.close()
            raise
        return lab

    def _build(self) -> None:
        ns1, ns2 = self.namespaces
        v1, v2 = self.veth(1), self.veth(2)
        for ns in (ns1, ns2):
            _run(["ip", "netns", "add", ns])
        _run(["ip", "link", "add", v1, "netns", ns1, "type", "veth", "peer", v2, "netns", ns2])
        for ns, dev, site in ((ns1, v1, self.sites[0]), (ns2, v2, self.sites[1])):
            batch = (
                f"link set lo up\nlink set {dev} up\naddr add {site.addr}/{PREFIXLEN} dev {dev}\n"
            )
            _run(["ip", "-n", ns, "-batch", "-"], input=batch)

    def close(self) -> None:
        """Stop the processes started here, run the cleanups, delete the namespaces (and so
        the veth). Idempotent; never touches anything else."""
        if self._closed:
            return
        self._closed = True
        self._stop_processes()
        self._run_cleanups()
        for ns in self.namespaces:
            if _netns_exists(ns):
                with contextlib.suppress(LabError):
                    _run(["ip", "netns", "del", ns])

    def __enter__(self) -> PlainLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ hosts and programs

    def site(self, ref: int | str) -> PlainSite:
        """``1``, ``2``, ``"site1"`` or ``"site2"``."""
        text = str(ref).removeprefix("site")
        if text not in ("1", "2"):
            raise LabError(f"no site {ref!r} in a plain lab")
        return self.sites[int(text) - 1]

    def ns(self, host: str) -> str:
        """Namespace of ``site1``, ``site2`` or ``server`` (site1's)."""
        if host in ("server", "srv"):
            return self.namespaces[0]
        return self.namespaces[self.site(host).index - 1]

    # ------------------------------------------------------------------ counters

    def _veth_bytes(self) -> int:
        out = _run(["ip", "-n", self.namespaces[0], "-s", "-j", "link", "show", self.veth(1)])
        stats = json.loads(out.stdout)[0]["stats64"]
        return int(stats["rx"]["bytes"]) + int(stats["tx"]["bytes"])

    def reset_counters(self) -> None:
        """Start counting the link's bytes from now."""
        self._baseline = self._veth_bytes()

    def direct_bytes(self, a: int | str, b: int | str) -> int:
        """Bytes across the veth (both directions) since :meth:`reset_counters`."""
        return self._veth_bytes() - self._baseline

    def server_bytes(self, site: int | str) -> int:
        """No server link here: always 0."""
        return 0

    def block(self, a: int | str, b: int | str) -> None:
        raise LabError("a plain lab has nothing to block: relayed rows need the NAT lab")

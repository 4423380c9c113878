"""The NAT lab: network namespaces joined by veth links, NATs made of nftables rulesets.

Topology (``P`` is the instance prefix, e.g. ``pl3f9a``; site numbers start at 1)::

    P-server ──(203.0.113.0/28)── P-inet ──(198.51.100.16i/28)── P-nat<i> ──(LAN)── P-site<i>

- ``P-inet`` (host name ``inet``) is "the internet": it only routes, it has no default route and
  blackholes private ranges, so nothing aimed at a private address leaves the lab. Its forward
  chain counts bytes per (ingress link, egress link), so a test can tell whether traffic went
  straight between two sites or through the server, and it can block traffic between two links.
- ``P-server`` (host name ``server``) has two public addresses, 203.0.113.10 and .11 (RFC 5780
  discovery needs two), gateway 203.0.113.1.
- Site ``i`` has a router ``P-nat<i>`` (host name ``nat<i>``): WAN 198.51.100.(16i+2)/28, gateway
  198.51.100.(16i+1) in ``P-inet``; and one LAN host ``P-site<i>`` (host name ``site<i>``). Behind
  a NAT the LAN is 10.0.i.0/24 (router .1, host .2); at a ``none`` site the LAN is the public
  192.0.2.(16i)/28 (router .16i+1, host .16i+2), routed without NAT.

A site host may get a **second uplink** (:meth:`NatLab.add_uplink`, a multi-homed host: Wi-Fi
and Ethernet, two ISPs): a router ``P-nat<i>b`` (host name ``nat<i>b``) with a NAT of its own
on WAN 203.0.113.(16i+2)/28 (gateway .16i+1 in ``P-inet``) and a LAN 10.0.(100+i).0/24 to a
second veth of the host (.2). The host routes by source as a careful admin sets it up
(``ip rule from <uplink 1 address> table 101``, ``from <uplink 2 address> table 102``, each
table with its uplink's default route) and keeps both default routes in its main table, one
preferred: :meth:`NatLab.set_uplink` moves it, :meth:`NatLab.set_uplink_link` takes an uplink's
link down or up, :meth:`NatLab.uplink_bytes` tells which carried the traffic.

NAT types (per site):

- ``none``: no NAT, the host is public and reachable from anywhere.
- ``cone``: full cone: endpoint-independent mapping and filtering. Masquerade keeps the source
  port; a dynamic nft map remembers each mapped UDP port (refreshed on every outbound packet,
  120 s timeout) and inbound UDP to the router's current address is DNATed back to its owner.
- ``prc``: port-restricted cone: plain masquerade (endpoint-independent mapping,
  address-and-port-dependent filtering).
- ``sym``: symmetric: masquerade fully-random (a new port per destination).
- ``sym-seq``: symmetric with sequential port allocation: every new UDP flow (a new
  destination address or port) is masqueraded to the next port of a counter (nft ``numgen
  inc``, from :data:`SEQ_FIRST_PORT`), shared by all the site's hosts — a predictable
  symmetric NAT, as many home and carrier routers are. TCP keeps plain masquerade.
- ``udp-blocked``: like ``prc`` but UDP is dropped in both directions; only TCP (and ICMP) pass.

Every router silently drops unsolicited inbound traffic to itself (no ICMP port-unreachable).

IPv6 is opt-in (``NatLab.create(..., ipv6=True)``, :meth:`NatLab.enable_ipv6`): dual-stack sites
with 2001:db8::/32 addresses, no NAT, a home router's stateful firewall (:mod:`p2plab.natlab6`).

Impairments: this kernel has no ``sch_netem``, so :meth:`NatLab.set_netem` drops packets with an
nftables ``numgen random`` rule in the internet and delays them with a userspace delay line
(:mod:`p2plab.delay`) that the link's egress is redirected through (tc ``mirred``).

The lab is built with few subprocesses (one ``ip -batch`` for namespaces and links, then one
``ip netns exec NS sh`` per namespace running ``ip -batch`` and ``nft -f``), so a two-site lab
comes up in well under a second. Its state (names, current addresses) is saved as JSON under
``/run/p2ptun-lab/<prefix>.json`` so that a later process (``scripts/natlab``) can load it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from p2plab import natlab6
from p2ptun.log import get_logger

log = get_logger("lab")

NAT_TYPES = ("none", "cone", "prc", "sym", "sym-seq", "udp-blocked")
"""NAT behaviours a site can have (see the module docstring)."""

DEFAULT_STATE_DIR = Path("/run/p2ptun-lab")

SEQ_FIRST_PORT = 20000
"""The first public port a ``sym-seq`` NAT hands out; the counter wraps after
:data:`SEQ_PORTS` new flows."""
SEQ_PORTS = 4096
"""Where each lab instance keeps ``<prefix>.json``."""

SERVER_ADDRS = ("203.0.113.10", "203.0.113.11")
"""The server's two public addresses."""
SERVER_NET = "203.0.113.0/28"
SERVER_GW = "203.0.113.1"

MAX_SITES = 14
PRIVATE_RANGES = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")
CONE_TIMEOUT_S = 120
CMD_TIMEOUT_S = 30.0
"""Upper bound for any lab-internal command (ip, nft, tc, conntrack)."""

SiteRef = int | str
"""A site: its number (1-based), ``"site<i>"`` or ``"nat<i>"``; ``"server"`` (or 0) where the
server link is meaningful too (counters, blocking, netem)."""


class LabError(RuntimeError):
    """A lab operation failed (command error, bad argument, missing instance)."""


def lab_unavailable_reason() -> str | None:
    """Why a lab cannot be built here, or None if it can (root, ``ip``, ``nft``, netns)."""
    if os.geteuid() != 0:
        return "the NAT lab needs root"
    for tool in ("ip", "nft", "tc", "conntrack"):
        if shutil.which(tool) is None:
            return f"the NAT lab needs {tool!r} on PATH"
    name = "plchk" + secrets.token_hex(3)
    try:
        proc = subprocess.run(
            ["ip", "netns", "add", name], capture_output=True, text=True, timeout=10
        )
        if proc.returncode != 0:
            return f"ip netns unusable: {proc.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
    return None


def _run(
    argv: Sequence[str], *, input: str | None = None, timeout: float = CMD_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """Run a lab-internal command; raise :class:`LabError` with its stderr if it fails."""
    try:
        proc = subprocess.run(
            list(argv), input=input, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"timed out after {timeout}s: {' '.join(argv)}") from exc
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()
        raise LabError(f"command failed ({proc.returncode}): {' '.join(argv)}: {detail}")
    return proc


@dataclasses.dataclass
class Site:
    """One site: a router namespace with a NAT and one LAN host namespace behind it."""

    index: int
    nat: str
    wan_net: str
    wan_gw: str
    wan_addr: str
    lan_net: str
    lan_gw: str
    host_addr: str

    @property
    def public(self) -> bool:
        """True for a ``none`` site: its host has a public, routed address."""
        return self.nat == "none"

    @property
    def wan_prefixlen(self) -> int:
        return ipaddress.ip_network(self.wan_net).prefixlen

    @property
    def lan_prefixlen(self) -> int:
        return ipaddress.ip_network(self.lan_net).prefixlen

    @property
    def mapped_addr(self) -> str:
        """The address the outside sees: the host's own at a ``none`` site, else the NAT's."""
        return self.host_addr if self.public else self.wan_addr

    @classmethod
    def plan(cls, index: int, nat: str) -> Site:
        """The default address plan for site ``index`` with NAT type ``nat``."""
        wan = ipaddress.ip_network(f"198.51.100.{16 * index}/28")
        if nat == "none":
            lan = ipaddress.ip_network(f"192.0.2.{16 * index}/28")
        else:
            lan = ipaddress.ip_network(f"10.0.{index}.0/24")
        return cls(
            index=index,
            nat=nat,
            wan_net=str(wan),
            wan_gw=str(wan[1]),
            wan_addr=str(wan[2]),
            lan_net=str(lan),
            lan_gw=str(lan[1]),
            host_addr=str(lan[2]),
        )


@dataclasses.dataclass
class Uplink:
    """A site host's second uplink (:meth:`NatLab.add_uplink`): a router of its own with a NAT
    and public address, and a LAN of its own to the host."""

    site: int
    nat: str
    ns: str
    wan_net: str
    wan_gw: str
    wan_addr: str
    lan_net: str
    lan_gw: str
    host_addr: str

    @property
    def lan_prefixlen(self) -> int:
        return ipaddress.ip_network(self.lan_net).prefixlen

    @classmethod
    def plan(cls, index: int, nat: str, ns: str) -> Uplink:
        """Site ``index``'s second uplink: WAN 203.0.113.(16i)/28 (the router at .16i+2, its
        gateway in the internet at .16i+1), LAN 10.0.(100+i).0/24 (router .1, host .2)."""
        wan = ipaddress.ip_network(f"203.0.113.{16 * index}/28")
        lan = ipaddress.ip_network(f"10.0.{100 + index}.0/24")
        return cls(
            site=index,
            nat=nat,
            ns=ns,
            wan_net=str(wan),
            wan_gw=str(wan[1]),
            wan_addr=str(wan[2]),
            lan_net=str(lan),
            lan_gw=str(lan[1]),
            host_addr=str(lan[2]),
        )


UPLINK_TABLES = (101, 102)
"""The site host's routing tables of uplink 1 and 2 (source policy routing)."""
BACKUP_METRIC = 200
"""The metric of the main table's default route through the uplink that is not the default."""


class NamespaceLab:
    """Programs in a lab's namespaces, shared by :class:`NatLab` and
    :class:`p2plab.plainlab.PlainLab`: run one and wait (:meth:`exec`), start one that the lab
    stops by PID when it closes (:meth:`popen`, :meth:`stop`), and cleanups (:meth:`add_cleanup`).
    A subclass names its hosts (:meth:`ns`) and closes with :meth:`_stop_processes` and
    :meth:`_run_cleanups`."""

    prefix: str

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[Any]] = []
        self._cleanups: list[Callable[[], object]] = []

    def ns(self, host: str) -> str:
        """Namespace name of a host name."""
        raise NotImplementedError

    def _ns_argv(self, host: str, argv: Sequence[str]) -> list[str]:
        if not argv:
            raise LabError("no command given")
        return ["ip", "netns", "exec", self.ns(host), *argv]

    def exec(
        self,
        host: str,
        *argv: str,
        check: bool = False,
        timeout: float = 60.0,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in ``host``'s namespace and wait (at most ``timeout`` s); text output.

        Raises :class:`subprocess.TimeoutExpired` on timeout (the process is killed) and
        :class:`subprocess.CalledProcessError` if ``check`` and it fails.
        """
        return subprocess.run(
            self._ns_argv(host, argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            check=check,
            env=None if env is None else dict(env),
        )

    def popen(self, host: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in ``host``'s namespace. The PID is the program's own (``ip netns
        exec`` execs it). The lab stops it (SIGTERM, then SIGKILL) when it closes."""
        proc: subprocess.Popen[Any] = subprocess.Popen(self._ns_argv(host, argv), **kwargs)
        self._procs.append(proc)
        log.debug("started", host=host, pid=proc.pid, argv=" ".join(argv))
        return proc

    def add_cleanup(self, fn: Callable[[], object]) -> None:
        """Call ``fn`` when the lab closes, after its processes are stopped (LIFO)."""
        self._cleanups.append(fn)

    def stop(self, proc: subprocess.Popen[Any], timeout: float = 5.0) -> int | None:
        """Stop a process started by :meth:`popen` (by PID); returns its exit status."""
        _stop_process(proc, timeout)
        with contextlib.suppress(ValueError):
            self._procs.remove(proc)
        return proc.returncode

    def _stop_processes(self) -> None:
        for proc in self._procs:
            _stop_process(proc)
        self._procs.clear()

    def _run_cleanups(self) -> None:
        for fn in reversed(self._cleanups):
            try:
                fn()
            except Exception as exc:
                log.error("lab cleanup failed", prefix=self.prefix, error=repr(exc))
        self._cleanups.clear()


class NatLab(NamespaceLab):
    """One lab instance. Build with :meth:`create`, reattach with :meth:`load`, end with
    :meth:`close` (also a context manager).

    Host names accepted by :meth:`ns`, :meth:`exec` and :meth:`popen`: ``server``, ``inet``
    (``internet``), ``site<i>``, ``nat<i>``, or a full namespace name of this instance.
    """

    def __init__(
        self,
        prefix: str,
        sites: Sequence[Site],
        *,
        state_dir: Path | None = DEFAULT_STATE_DIR,
        created: float | None = None,
    ) -> None:
        super().__init__()
        self.prefix = prefix
        self.sites: list[Site] = list(sites)
        self.state_dir = state_dir
        self.created = time.time() if created is None else created
        self.server_addrs: tuple[str, str] = SERVER_ADDRS
        self._closed = False
        self.netem: dict[int, dict[str, Any]] = {}
        """Link impairments in force: link (0 = server, i = site i) -> settings and PIDs."""
        self.uplinks: dict[int, Uplink] = {}
        """Second uplinks of site hosts (:meth:`add_uplink`), by site."""
        self.default_uplink: dict[int, int] = {}
        """The uplink (1 or 2) a multi-homed site host's main default route goes through."""
        self.ipv6_sites: list[int] = []
        """Sites that are dual-stack (:meth:`enable_ipv6`); empty: the lab is IPv4-only."""

    # ------------------------------------------------------------------ names

    @property
    def ns_inet(self) -> str:
        return f"{self.prefix}-inet"

    @property
    def ns_server(self) -> str:
        return f"{self.prefix}-server"

    def ns_nat(self, site: SiteRef) -> str:
        return f"{self.prefix}-nat{self.site(site).index}"

    def ns_host(self, site: SiteRef) -> str:
        return f"{self.prefix}-site{self.site(site).index}"

    @property
    def namespaces(self) -> list[str]:
        """Every namespace this instance owns, in build order."""
        names = [self.ns_inet, self.ns_server]
        for s in self.sites:
            names += [f"{self.prefix}-nat{s.index}", f"{self.prefix}-site{s.index}"]
        names += [up.ns for up in self.uplinks.values()]
        return names

    def _link_names(self, k: int) -> tuple[str, str]:
        """(inet-side, inner-side) veth names of link ``k`` (0 = server, i = site i's WAN)."""
        if k == 0:
            return f"{self.prefix}-i0", f"{self.prefix}-srv"
        return f"{self.prefix}-i{k}", f"{self.prefix}-w{k}"

    def _inner_ns(self, k: int) -> str:
        return self.ns_server if k == 0 else f"{self.prefix}-nat{k}"

    def _lan_names(self, i: int) -> tuple[str, str]:
        """(router-side, host-side) veth names of site ``i``'s LAN."""
        return f"{self.prefix}-l{i}", f"{self.prefix}-h{i}"

    def if_host(self, site: SiteRef) -> str:
        """The LAN interface name inside a site's host namespace."""
        return self._lan_names(self.site(site).index)[1]

    def if_lan(self, site: SiteRef) -> str:
        """The LAN interface name inside a site's router namespace."""
        return self._lan_names(self.site(site).index)[0]

    def if_wan(self, site: SiteRef) -> str:
        """The WAN interface name inside a site's router namespace."""
        return self._link_names(self.site(site).index)[1]

    @property
    def if_server(self) -> str:
        """The server's interface name (inside ``P-server``)."""
        return self._link_names(0)[1]

    def site(self, ref: SiteRef) -> Site:
        """Resolve ``1``, ``"site1"`` or ``"nat1"`` to the :class:`Site`."""
        k = self._endpoint(ref)
        if k == 0:
            raise LabError("the server is not a site")
        return self.sites[k - 1]

    def _endpoint(self, ref: SiteRef) -> int:
        """0 for the server, i for site i."""
        if isinstance(ref, str):
            text = ref
            if text in ("server", "srv"):
                return 0
            for stem in ("site", "nat"):
                if text.startswith(stem) and text[len(stem) :].isdigit():
                    text = text[len(stem) :]
                    break
            if not text.isdigit():
                raise LabError(f"unknown site {ref!r}")
            k = int(text)
        else:
            k = ref
        if not 0 <= k <= len(self.sites):
            raise LabError(f"no site {ref!r} (lab has {len(self.sites)})")
        return k

    def ns(self, host: str) -> str:
        """Namespace name of a host name (see the class docstring)."""
        if host in ("server", "srv"):
            return self.ns_server
        if host in ("inet", "internet"):
            return self.ns_inet
        if host in self.namespaces:
            return host
        if host.startswith("nat") and host.endswith("b") and host[3:-1].isdigit():
            up = self.uplinks.get(int(host[3:-1]))
            if up is not None:
                return up.ns
        for stem in ("site", "nat"):
            if host.startswith(stem) and host[len(stem) :].isdigit():
                k = int(host[len(stem) :])
                if 1 <= k <= len(self.sites):
                    return f"{self.prefix}-{stem}{k}"
        raise LabError(f"unknown lab host {host!r} (hosts: {', '.join(self.hosts())})")

    def hosts(self) -> list[str]:
        """All host names of this lab."""
        names = ["inet", "server"]
        for s in self.sites:
            names += [f"nat{s.index}", f"site{s.index}"]
        names += [f"nat{i}b" for i in self.uplinks]
        return names

    # ------------------------------------------------------------------ build / teardown

    @classmethod
    def create(
        cls,
        sites: Sequence[str] = ("cone", "cone"),
        *,
        prefix: str | None = None,
        state_dir: Path | None = DEFAULT_STATE_DIR,
        ipv6: bool | Sequence[int] = False,
    ) -> NatLab:
        """Build a lab with one site per entry of ``sites`` (NAT types, see :data:`NAT_TYPES`).

        ``ipv6``: make the server and every site (``True``) or the listed site numbers
        dual-stack (:meth:`enable_ipv6`); by default the lab is IPv4-only.

        ``prefix`` defaults to ``pl`` + 4 random hex digits; it must be unused. If the build
        fails halfway, everything made so far is removed before the error propagates.
        ``state_dir=None`` keeps no state file.
        """
        for nat in sites:
            if nat not in NAT_TYPES:
                raise LabError(f"unknown NAT type {nat!r} (one of {', '.join(NAT_TYPES)})")
        if not 1 <= len(sites) <= MAX_SITES:
            raise LabError(f"a lab has 1..{MAX_SITES} sites, not {len(sites)}")
        plan = [Site.plan(i, nat) for i, nat in enumerate(sites, start=1)]
        if prefix is None:
            for _ in range(20):
                lab = cls("pl" + secrets.token_hex(2), plan, state_dir=state_dir)
                if not lab._name_taken():
                    break
            else:
                raise LabError("could not find an unused lab prefix")
        else:
            _check_prefix(prefix)
            lab = cls(prefix, plan, state_dir=state_dir)
            if lab._name_taken():
                raise LabError(f"a lab named {prefix!r} exists already")
        # From here on every namespace with this lab's names is ours: none existed before.
        start = time.monotonic()
        try:
            lab.save()  # first: a later `down` can clean up even a half-built lab
            lab._build()
            if ipv6 is not False:
                lab.enable_ipv6(None if ipv6 is True else ipv6)
        except BaseException:
            log.error("lab build failed, tearing down", prefix=lab.prefix)
            lab.close()
            raise
        log.info(
            "lab up",
            prefix=lab.prefix,
            sites=",".join(sites),
            seconds=f"{time.monotonic() - start:.2f}",
        )
        return lab

    def _name_taken(self) -> bool:
        """True if any namespace or the state file this lab would create exists already."""
        if any(_netns_exists(ns) for ns in self.namespaces):
            return True
        return self.state_dir is not None and (self.state_dir / f"{self.prefix}.json").exists()

    def _build(self) -> None:
        p = self.prefix
        lines = [f"netns add {ns}" for ns in self.namespaces]
        for k in range(len(self.sites) + 1):
            outer, inner = self._link_names(k)
            lines.append(
                f"link add {outer} netns {self.ns_inet} type veth"
                f" peer name {inner} netns {self._inner_ns(k)}"
            )
        for s in self.sites:
            rtr, hst = self._lan_names(s.index)
            lines.append(
                f"link add {rtr} netns {p}-nat{s.index} type veth"
                f" peer name {hst} netns {p}-site{s.index}"
            )
        _run(["ip", "-batch", "-"], input="\n".join(lines) + "\n")

        scripts: dict[str, tuple[list[str], str | None, bool]] = {}
        # the internet
        ip = ["link set lo up", f"link set {self._link_names(0)[0]} up"]
        ip.append(f"addr add {SERVER_GW}/28 dev {self._link_names(0)[0]}")
        for s in self.sites:
            outer = self._link_names(s.index)[0]
            ip += [f"link set {outer} up", f"addr add {s.wan_gw}/{s.wan_prefixlen} dev {outer}"]
            if s.public:
                ip.append(f"route add {s.lan_net} via {s.wan_addr} dev {outer}")
        ip += [f"route add blackhole {net}" for net in PRIVATE_RANGES]
        scripts[self.ns_inet] = (ip, self._inet_ruleset(), True)
        # the server
        srv = self._link_names(0)[1]
        ip = ["link set lo up", f"link set {srv} up"]
        ip += [f"addr add {a}/28 dev {srv}" for a in self.server_addrs]
        ip.append(f"route add default via {SERVER_GW} dev {srv}")
        scripts[self.ns_server] = (ip, None, False)
        for s in self.sites:
            wan = self._link_names(s.index)[1]
            lan, hif = self._lan_names(s.index)
            ip = ["link set lo up", f"link set {wan} up", f"link set {lan} up"]
            ip += [
                f"addr add {s.wan_addr}/{s.wan_prefixlen} dev {wan}",
                f"addr add {s.lan_gw}/{s.lan_prefixlen} dev {lan}",
                f"route add default via {s.wan_gw} dev {wan}",
            ]
            scripts[f"{p}-nat{s.index}"] = (ip, self._nat_ruleset(s.nat, wan, lan), True)
            ip = [
                "link set lo up",
                f"link set {hif} up",
                f"addr add {s.host_addr}/{s.lan_prefixlen} dev {hif}",
                f"route add default via {s.lan_gw} dev {hif}",
            ]
            scripts[f"{p}-site{s.index}"] = (ip, None, False)

        with tempfile.TemporaryDirectory(prefix=f"{p}-build-") as tmp:
            procs: list[tuple[str, subprocess.Popen[str]]] = []
            for ns, (ip_lines, ruleset, forward) in scripts.items():
                sh = _sysctl_script(forward)
                ip_file = Path(tmp, f"{ns}.ip")
                ip_file.write_text("\n".join(ip_lines) + "\n")
                sh += f"ip -batch {ip_file}\n"
                if ruleset is not None:
                    nft_file = Path(tmp, f"{ns}.nft")
                    nft_file.write_text(ruleset)
                    sh += f"nft -f {nft_file}\n"
                argv = ["ip", "netns", "exec", ns, "sh", "-ec", sh]
                procs.append(
                    (
                        ns,
                        subprocess.Popen(
                            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
                        ),
                    )
                )
            errors = []
            deadline = time.monotonic() + CMD_TIMEOUT_S
            for ns, proc in procs:
                try:
                    out, _ = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    out, _ = proc.communicate()
                    errors.append(f"{ns}: timed out")
                    continue
                if proc.returncode != 0:
                    errors.append(f"{ns}: {out.strip()}")
            if errors:
                raise LabError("lab setup failed: " + "; ".join(errors))

    def _inet_ruleset(self) -> str:
        """Forward chain of the internet: blocked link pairs, then one counter per pair."""
        n = len(self.sites) + 1
        lines = ["table ip lab {", "  set blocked { type ifname . ifname; }"]
        lines += [f"  counter c_{a}_{b} {{}}" for a in range(n) for b in range(n) if a != b]
        lines += [
            "  chain forward {",
            "    type filter hook forward priority filter; policy accept;",
            "    iifname . oifname @blocked drop",
        ]
        for k in range(n):
            outer = self._link_names(k)[0]
            lines.append(f'    iifname "{outer}" jump up_{k}')
            lines.append(f'    oifname "{outer}" jump down_{k}')
        for a in range(n):
            for b in range(n):
                if a != b:
                    ia, ib = self._link_names(a)[0], self._link_names(b)[0]
                    lines.append(f'    iifname "{ia}" oifname "{ib}" counter name "c_{a}_{b}"')
        lines.append("  }")
        lines += [f"  chain {d}_{k} {{}}" for k in range(n) for d in ("up", "down")]
        lines += ["}", ""]
        return "\n".join(lines)

    @staticmethod
    def _nat_ruleset(nat: str, wan_if: str, lan_if: str) -> str:
        """A router's ruleset for NAT type ``nat`` between its ``wan_if`` and ``lan_if``."""
        wan = f'"{wan_if}"'
        lan = f'"{lan_if}"'
        fwd = ["    type filter hook forward priority filter; policy drop;"]
        if nat == "udp-blocked":
            fwd.append("    meta l4proto udp drop")
        fwd += [
            "    ct state established,related accept",
            f"    iifname {lan} oifname {wan} accept",
        ]
        if nat == "none":
            fwd.append(f"    iifname {wan} oifname {lan} accept")
        elif nat == "cone":
            fwd.append(f"    iifname {wan} oifname {lan} ct status dnat accept")
        lines = [
            "table ip lab {",
            "  chain input {",
            "    type filter hook input priority filter; policy accept;",
            f"    iifname {wan} ct state established,related accept",
            f"    iifname {wan} drop",
            "  }",
            "  chain forward {",
            *fwd,
            "  }",
        ]
        if nat != "none":
            masq = "masquerade fully-random" if nat == "sym" else "masquerade"
            seq = []
            if nat == "sym-seq":
                # a nat chain sees only a flow's first packet: one counter step per new flow.
                # The counter goes through a map to the port: numgen's value is in host byte
                # order, a port in network order (``:numgen ...`` directly steps by 256).
                ports = ", ".join(f"{i} : {SEQ_FIRST_PORT + i}" for i in range(SEQ_PORTS))
                seq = [
                    f"    oifname {wan} meta l4proto udp masquerade to"
                    f" :numgen inc mod {SEQ_PORTS} map {{ {ports} }}"
                ]
            lines += [
                "  chain postrouting {",
                "    type nat hook postrouting priority srcnat; policy accept;",
                *seq,
                f"    oifname {wan} {masq}",
                "  }",
            ]
        if nat == "cone":
            t = f"{CONE_TIMEOUT_S}s"
            lines += [
                "  map cone {",
                "    type inet_service : ipv4_addr . inet_service",
                f"    flags dynamic,timeout; timeout {t};",
                "  }",
                "  chain prerouting {",
                "    type nat hook prerouting priority dstnat; policy accept;",
                f"    iifname {wan} fib daddr type local meta l4proto udp"
                " dnat ip to udp dport map @cone",
                "  }",
                "  chain remember {",
                "    type filter hook postrouting priority srcnat + 10; policy accept;",
                f"    oifname {wan} ct direction original ct status snat meta l4proto udp"
                f" update @cone {{ udp sport timeout {t} :"
                " ct original ip saddr . ct original proto-src }",
                f"    oifname {wan} ct direction reply ct status dnat meta l4proto udp"
                f" update @cone {{ udp sport timeout {t} :"
                " ct reply ip saddr . ct reply proto-src }",
                "  }",
            ]
        lines += ["}", ""]
        return "\n".join(lines)

    def close(self) -> None:
        """Stop processes started by :meth:`popen`, delete this instance's namespaces (and so
        its veths) and its state file. Idempotent; never touches anything else."""
        if self._closed:
            return
        self._closed = True
        self._stop_processes()
        for k, entry in self.netem.items():
            self._kill_delay_lines(k, entry)
        self._run_cleanups()
        existing = [ns for ns in self.namespaces if _netns_exists(ns)]
        if existing:
            lines = "".join(f"netns del {ns}\n" for ns in existing)
            with contextlib.suppress(LabError):
                _run(["ip", "-force", "-batch", "-"], input=lines)
        left = [ns for ns in self.namespaces if _netns_exists(ns)]
        if left:
            log.error("lab namespaces left behind", prefix=self.prefix, left=",".join(left))
        if self.state_dir is not None:
            with contextlib.suppress(FileNotFoundError):
                (self.state_dir / f"{self.prefix}.json").unlink()
        log.info("lab down", prefix=self.prefix)

    def __enter__(self) -> NatLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ state

    def to_dict(self) -> dict[str, Any]:
        """Everything needed to reattach to this lab (see :meth:`from_dict`)."""
        return {
            "prefix": self.prefix,
            "created": self.created,
            "pid": os.getpid(),
            "server_addrs": list(self.server_addrs),
            "sites": [dataclasses.asdict(s) for s in self.sites],
            "namespaces": self.namespaces,
            "netem": {str(k): v for k, v in self.netem.items()},
            "uplinks": [dataclasses.asdict(up) for up in self.uplinks.values()],
            "default_uplink": {str(k): v for k, v in self.default_uplink.items()},
            "ipv6_sites": list(self.ipv6_sites),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], state_dir: Path | None = None) -> NatLab:
        sites = [Site(**s) for s in data["sites"]]
        lab = cls(data["prefix"], sites, state_dir=state_dir, created=data.get("created"))
        lab.netem = {int(k): dict(v) for k, v in data.get("netem", {}).items()}
        lab.uplinks = {up["site"]: Uplink(**up) for up in data.get("uplinks", [])}
        lab.default_uplink = {int(k): v for k, v in data.get("default_uplink", {}).items()}
        lab.ipv6_sites = [int(i) for i in data.get("ipv6_sites", [])]
        return lab

    def save(self) -> None:
        """Write the state file (atomically); no-op without a state dir."""
        if self.state_dir is None:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        path = self.state_dir / f"{self.prefix}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, prefix: str, state_dir: Path = DEFAULT_STATE_DIR) -> NatLab:
        """Reattach to a lab built by another process from its state file."""
        path = state_dir / f"{prefix}.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise LabError(f"no lab named {prefix!r} (no {path})") from None
        return cls.from_dict(data, state_dir=state_dir)

    @staticmethod
    def list_saved(state_dir: Path = DEFAULT_STATE_DIR) -> list[str]:
        """Prefixes of all labs with a state file."""
        if not state_dir.is_dir():
            return []
        return sorted(p.stem for p in state_dir.glob("*.json"))

    def status(self) -> dict[str, Any]:
        """State plus liveness (which namespaces exist), counters and blocked pairs."""
        data = self.to_dict()
        data["alive"] = {ns: _netns_exists(ns) for ns in self.namespaces}
        if data["alive"].get(self.ns_inet):
            with contextlib.suppress(LabError):
                data["counters"] = {f"{a}->{b}": v for (a, b), v in self.counters().items()}
                data["blocked"] = [list(p) for p in self.blocked_pairs()]
        data.pop("pid")
        return data

    # ------------------------------------------------------------------ running programs

    def probe(self, host: str, *args: str, timeout: float = 30.0) -> dict[str, Any]:
        """Run ``python -m p2plab.probe ARGS`` in ``host`` and return its JSON result."""
        proc = self.exec(host, sys.executable, "-m", "p2plab.probe", *args, timeout=timeout)
        if proc.returncode != 0:
            raise LabError(f"probe {' '.join(args)} in {host} failed: {proc.stderr.strip()}")
        result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
        return result

    def start_reflector(
        self,
        host: str,
        listen: Iterable[tuple[str, int]],
        tcp: Iterable[tuple[str, int]] = (),
        timeout: float = 10.0,
    ) -> subprocess.Popen[str]:
        """Start the probe reflector in ``host`` (see :mod:`p2plab.probe`), wait until it
        is bound; the lab stops it on :meth:`close` (or call :meth:`stop`)."""
        argv = [sys.executable, "-m", "p2plab.probe", "reflect"]
        argv += [a for ep in listen for a in ("--listen", f"{ep[0]}:{ep[1]}")]
        argv += [a for ep in tcp for a in ("--tcp", f"{ep[0]}:{ep[1]}")]
        proc: subprocess.Popen[str] = self.popen(
            host, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        if wait_for_line(proc.stdout, '"ready"', timeout) is None:
            self.stop(proc)
            err = proc.stderr.read() if proc.stderr else ""
            raise LabError(f"reflector in {host} did not start: {err.strip()}")
        return proc

    # ------------------------------------------------------------------ counters / blocking

    def counters(self) -> dict[tuple[int, int], int]:
        """Bytes forwarded by the internet per (from, to) link: 0 = server, i = site i."""
        out = _run(["ip", "netns", "exec", self.ns_inet, "nft", "-j", "list", "counters"])
        result: dict[tuple[int, int], int] = {}
        for item in json.loads(out.stdout)["nftables"]:
            c = item.get("counter")
            if c and c.get("table") == "lab" and c["name"].startswith("c_"):
                _, a, b = c["name"].split("_")
                result[int(a), int(b)] = int(c["bytes"])
        return result

    def counter_bytes(self, src: SiteRef, dst: SiteRef) -> int:
        """Bytes the internet forwarded from ``src``'s link to ``dst``'s link (sites or
        ``"server"``). Site-to-site bytes mean a direct path; site-to-server bytes carry
        signaling, STUN and relayed traffic."""
        return self.counters()[self._endpoint(src), self._endpoint(dst)]

    def server_bytes(self, site: SiteRef) -> int:
        """Bytes between ``site`` and the server, both directions."""
        c = self.counters()
        k = self._endpoint(site)
        return c[k, 0] + c[0, k]

    def direct_bytes(self, a: SiteRef, b: SiteRef) -> int:
        """Bytes between two sites (or a site and the server), both directions."""
        c = self.counters()
        ka, kb = self._endpoint(a), self._endpoint(b)
        return c[ka, kb] + c[kb, ka]

    def reset_counters(self) -> None:
        """Zero all internet forward counters."""
        self._nft(self.ns_inet, "reset counters table ip lab")
        if self.ipv6_sites:
            self._nft(self.ns_inet, "reset counters table ip6 lab6")

    def block(self, a: SiteRef, b: SiteRef) -> None:
        """Drop all traffic between ``a`` and ``b`` (sites or ``"server"``) in the internet."""
        self._nft(self.ns_inet, f"add element ip lab blocked {{ {self._pair_elems(a, b)} }}")
        log.info("blocked", prefix=self.prefix, a=a, b=b)

    def unblock(self, a: SiteRef, b: SiteRef) -> None:
        """Undo :meth:`block` (no error if not blocked)."""
        for elem in self._pair_elems(a, b).split(", "):
            with contextlib.suppress(LabError):
                self._nft(self.ns_inet, f"delete element ip lab blocked {{ {elem} }}")
        log.info("unblocked", prefix=self.prefix, a=a, b=b)

    def blocked_pairs(self) -> list[tuple[int, int]]:
        """Blocked (from, to) link pairs."""
        out = _run(
            [
                "ip",
                "netns",
                "exec",
                self.ns_inet,
                "nft",
                "-j",
                "list",
                "set",
                "ip",
                "lab",
                "blocked",
            ]
        )
        names = {self._link_names(k)[0]: k for k in range(len(self.sites) + 1)}
        pairs: list[tuple[int, int]] = []
        for item in json.loads(out.stdout)["nftables"]:
            for elem in item.get("set", {}).get("elem", []):
                concat = elem["concat"]
                pairs.append((names[concat[0]], names[concat[1]]))
        return sorted(pairs)

    def _pair_elems(self, a: SiteRef, b: SiteRef) -> str:
        ia, ib = self._link_names(self._endpoint(a))[0], self._link_names(self._endpoint(b))[0]
        if ia == ib:
            raise LabError("cannot block a link against itself")
        return f'"{ia}" . "{ib}", "{ib}" . "{ia}"'

    def _nft(self, ns: str, command: str) -> None:
        _run(["ip", "netns", "exec", ns, "nft", command])

    # ------------------------------------------------------------------ knobs

    def set_netem(
        self,
        site: SiteRef,
        *,
        loss: float = 0.0,
        delay_ms: float = 0.0,
        jitter_ms: float = 0.0,
        direction: str = "both",
    ) -> None:
        """Impair ``site``'s (or the server's) link to the internet; replaces earlier settings.

        ``loss`` in percent and ``delay_ms`` ± ``jitter_ms`` apply to each selected direction:
        ``up`` (leaving the site), ``down`` (towards it) or ``both``. This kernel has no
        ``sch_netem``: loss is an nftables ``numgen random`` drop in the internet's forward
        chain, delay a userspace delay line (:mod:`p2plab.delay`) that the link's egress is
        redirected through. All zero means :meth:`clear_netem`.
        """
        k = self._endpoint(site)
        dirs = self._directions(direction)
        if not 0 <= loss <= 100 or delay_ms < 0 or jitter_ms < 0:
            raise LabError("loss must be 0..100 %, delay and jitter >= 0 ms")
        self.clear_netem(k)
        if not loss and not delay_ms:
            return
        entry: dict[str, Any] = {
            "loss": loss,
            "delay_ms": delay_ms,
            "jitter_ms": jitter_ms,
            "direction": direction,
            "pids": [],
        }
        self.netem[k] = entry
        try:
            if loss:
                threshold = round(loss * 100)
                cmds = "".join(
                    f"add rule ip lab {d}_{k} numgen random mod 10000 < {threshold} drop\n"
                    for d in dirs
                )
                _run(["ip", "netns", "exec", self.ns_inet, "nft", "-f", "-"], input=cmds)
            if delay_ms:
                for d in dirs:
                    entry["pids"].append(self._start_delay_line(k, d, delay_ms, jitter_ms))
        finally:
            self.save()
        log.info(
            "netem",
            prefix=self.prefix,
            link=k,
            loss=loss,
            delay_ms=delay_ms,
            jitter_ms=jitter_ms,
            dir=direction,
        )

    def _delay_dev(self, k: int, d: str) -> tuple[str, str, str]:
        """(namespace, device, tap) of link ``k``'s egress in direction ``d``."""
        outer, inner = self._link_names(k)
        if d == "up":
            return self._inner_ns(k), inner, f"{self.prefix}-u{k}"
        return self.ns_inet, outer, f"{self.prefix}-d{k}"

    def _start_delay_line(self, k: int, d: str, delay_ms: float, jitter_ms: float) -> int:
        ns, dev, tap = self._delay_dev(k, d)
        argv = [sys.executable, "-m", "p2plab.delay", "--dev", dev, "--tap", tap]
        argv += ["--delay-ms", str(delay_ms), "--jitter-ms", str(jitter_ms)]
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,  # outlives a `natlab netem` invocation
        )
        self._procs.append(proc)
        assert proc.stdout is not None
        if wait_for_line(proc.stdout, "ready", 10.0) is None:
            self.stop(proc)
            raise LabError(f"delay line for link {k} {d} did not start")
        proc.stdout.close()
        tc = ["tc", "-n", ns]
        _run([*tc, "qdisc", "replace", "dev", dev, "clsact"])
        redirect = ["match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", tap]
        _run([*tc, "filter", "add", "dev", dev, "egress", "protocol", "all", "u32", *redirect])
        return proc.pid

    def clear_netem(self, site: SiteRef) -> None:
        """Remove loss and delay from ``site``'s link, both directions."""
        k = self._endpoint(site)
        cmds = "".join(f"flush chain ip lab {d}_{k}\n" for d in ("up", "down"))
        _run(["ip", "netns", "exec", self.ns_inet, "nft", "-f", "-"], input=cmds)
        for d in ("up", "down"):
            ns, dev, _tap = self._delay_dev(k, d)
            subprocess.run(
                ["tc", "-n", ns, "qdisc", "del", "dev", dev, "clsact"],
                capture_output=True,
                timeout=CMD_TIMEOUT_S,
            )
        entry = self.netem.pop(k, None)
        if entry:
            self._kill_delay_lines(k, entry)
            self.save()

    def _kill_delay_lines(self, k: int, entry: Mapping[str, Any]) -> None:
        """Stop link ``k``'s delay lines by PID (only if the PID still runs our delay line)."""
        for pid in entry.get("pids", []):
            own = [p for p in self._procs if p.pid == pid]
            if own:
                self.stop(own[0])
                continue
            taps = {self._delay_dev(k, d)[2] for d in ("up", "down")}
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"p2plab.delay" in cmdline and any(t.encode() in cmdline for t in taps):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + 3.0
                while _pid_running(pid) and time.monotonic() < deadline:
                    time.sleep(0.02)

    @staticmethod
    def _directions(direction: str) -> list[str]:
        if direction == "both":
            return ["up", "down"]
        if direction not in ("up", "down"):
            raise LabError(f"direction must be up, down or both, not {direction!r}")
        return [direction]

    def flush_nat(self, site: SiteRef, uplink: int = 1) -> None:
        """Forget a NAT's mappings: flush conntrack in its router, and its full-cone map
        (``uplink=2``: the router of the site's second uplink, :meth:`add_uplink`)."""
        s = self.site(site)
        if uplink == 2:
            up = self.uplink(s.index)
            ns, nat = up.ns, up.nat
        else:
            ns, nat = self.ns_nat(s.index), s.nat
        proc = subprocess.run(
            ["ip", "netns", "exec", ns, "conntrack", "-F"],
            capture_output=True,
            text=True,
            timeout=CMD_TIMEOUT_S,
        )
        if proc.returncode != 0:
            raise LabError(f"conntrack -F failed in {ns}: {proc.stderr.strip()}")
        if nat == "cone":
            self._nft(ns, "flush map ip lab cone")
        log.info("nat flushed", prefix=self.prefix, site=s.index, uplink=uplink)

    def renumber_nat(self, site: SiteRef, addr: str | None = None) -> str:
        """Give a site's router a new WAN address (default: the next free one in its /28),
        keep routes working, forget the NAT's mappings. Returns the new address."""
        s = self.site(site)
        net = ipaddress.ip_network(s.wan_net)
        new = self._pick_addr(net, addr, taken={s.wan_gw, s.wan_addr}, after=s.wan_addr)
        wan = self._link_names(s.index)[1]
        _run(
            ["ip", "-n", self.ns_nat(s.index), "-batch", "-"],
            input=(
                f"addr add {new}/{net.prefixlen} dev {wan}\n"
                f"addr del {s.wan_addr}/{net.prefixlen} dev {wan}\n"
                f"route replace default via {s.wan_gw} dev {wan}\n"
            ),
        )
        old, s.wan_addr = s.wan_addr, new
        if s.public:
            outer = self._link_names(s.index)[0]
            _run(
                ["ip", "-n", self.ns_inet, "route", "replace", s.lan_net, "via", new, "dev", outer]
            )
        self.flush_nat(s.index)
        self.save()
        log.info("nat renumbered", prefix=self.prefix, site=s.index, old=old, new=new)
        return new

    def set_host_address(self, site: SiteRef, addr: str | None = None) -> str:
        """Give a site's LAN host a new address in its LAN (default: the next free one), keep
        its default route. Returns the new address."""
        s = self.site(site)
        net = ipaddress.ip_network(s.lan_net)
        new = self._pick_addr(net, addr, taken={s.lan_gw, s.host_addr}, after=s.host_addr)
        hif = self._lan_names(s.index)[1]
        _run(
            ["ip", "-n", self.ns_host(s.index), "-batch", "-"],
            input=(
                f"addr add {new}/{net.prefixlen} dev {hif}\n"
                f"addr del {s.host_addr}/{net.prefixlen} dev {hif}\n"
                f"route replace default via {s.lan_gw} dev {hif}\n"
            ),
        )
        old, s.host_addr = s.host_addr, new
        self.save()
        log.info("host renumbered", prefix=self.prefix, site=s.index, old=old, new=new)
        return new

    # ------------------------------------------------------------------ IPv6

    @property
    def server6_addrs(self) -> tuple[str, str]:
        """The server's two public IPv6 addresses (once :meth:`enable_ipv6` ran)."""
        if not self.ipv6_sites:
            raise LabError("this lab is IPv4-only (see enable_ipv6)")
        return natlab6.SERVER6_ADDRS

    def site6(self, site: SiteRef) -> natlab6.Site6:
        """``site``'s IPv6 address plan; :class:`LabError` if the site is IPv4-only."""
        k = self.site(site).index
        if k not in self.ipv6_sites:
            raise LabError(f"site {k} has no IPv6")
        return natlab6.Site6.plan(k)

    def enable_ipv6(self, sites: Iterable[SiteRef] | None = None) -> None:
        """Make the internet, the server and ``sites`` (default: all) dual-stack: addresses
        from 2001:db8::/32, no NAT, a home router's stateful firewall on each site router
        (:mod:`p2plab.natlab6`). Once per lab."""
        if self.ipv6_sites:
            raise LabError("IPv6 is enabled already")
        refs = [s.index for s in self.sites] if sites is None else list(sites)
        chosen = sorted({self.site(s).index for s in refs})
        if not chosen:
            raise LabError("enable_ipv6 needs at least one site")
        self.ipv6_sites = chosen
        self.save()
        srv_outer, srv = self._link_names(0)
        net_len = ipaddress.IPv6Network(natlab6.SERVER6_NET).prefixlen
        inet = [f"addr add {natlab6.SERVER6_GW}/{net_len} dev {srv_outer} nodad"]
        server = [f"addr add {a}/{net_len} dev {srv} nodad" for a in natlab6.SERVER6_ADDRS]
        server.append(f"route add ::/0 via {natlab6.SERVER6_GW} dev {srv}")
        scripts: dict[str, tuple[list[str], str | None, bool]] = {
            self.ns_server: (server, None, False)
        }
        for i in chosen:
            plan = natlab6.Site6.plan(i)
            outer, wan = self._link_names(i)
            lan, hif = self._lan_names(i)
            inet += [
                f"addr add {plan.wan_gw}/64 dev {outer} nodad",
                f"route add {plan.lan_net} via {plan.wan_addr} dev {outer}",
            ]
            router = [
                f"addr add {plan.wan_addr}/64 dev {wan} nodad",
                f"addr add {plan.lan_gw}/64 dev {lan} nodad",
                f"route add ::/0 via {plan.wan_gw} dev {wan}",
            ]
            rules = natlab6.router_ruleset(self.sites[i - 1].nat, wan, lan)
            scripts[self.ns_nat(i)] = (router, rules, True)
            host = [
                f"addr add {plan.host_addr}/64 dev {hif} nodad",
                f"route add ::/0 via {plan.lan_gw} dev {hif}",
            ]
            scripts[self.ns_host(i)] = (host, None, False)
        outers = [self._link_names(k)[0] for k in range(len(self.sites) + 1)]
        scripts[self.ns_inet] = (inet, natlab6.inet_ruleset(outers), True)
        with tempfile.TemporaryDirectory(prefix=f"{self.prefix}-ipv6-") as tmp:
            for n, (ns, (ip_lines, ruleset, forward)) in enumerate(scripts.items()):
                sh = natlab6.sysctl_script(forward)
                ip_file = Path(tmp, f"{n}.ip")
                ip_file.write_text("\n".join(ip_lines) + "\n")
                sh += f"ip -batch {ip_file}\n"
                if ruleset is not None:
                    nft_file = Path(tmp, f"{n}.nft")
                    nft_file.write_text(ruleset)
                    sh += f"nft -f {nft_file}\n"
                _run(["ip", "netns", "exec", ns, "sh", "-ec", sh])
        log.info("ipv6 up", prefix=self.prefix, sites=",".join(map(str, chosen)))

    def counters6(self) -> dict[tuple[int, int], int]:
        """IPv6 bytes forwarded by the internet per (from, to) link: 0 = server, i = site i
        (like :meth:`counters` for IPv4)."""
        if not self.ipv6_sites:
            raise LabError("this lab is IPv4-only (see enable_ipv6)")
        out = _run(["ip", "netns", "exec", self.ns_inet, "nft", "-j", "list", "counters"])
        result: dict[tuple[int, int], int] = {}
        for item in json.loads(out.stdout)["nftables"]:
            c = item.get("counter")
            if c and c.get("table") == "lab6" and c["name"].startswith("c_"):
                _, a, b = c["name"].split("_")
                result[int(a), int(b)] = int(c["bytes"])
        return result

    def direct_bytes6(self, a: SiteRef, b: SiteRef) -> int:
        """IPv6 bytes between two sites (or a site and the server), both directions."""
        c = self.counters6()
        ka, kb = self._endpoint(a), self._endpoint(b)
        return c[ka, kb] + c[kb, ka]

    # ------------------------------------------------------------------ a second uplink

    def uplink(self, site: SiteRef) -> Uplink:
        """The second uplink of ``site`` (:meth:`add_uplink`)."""
        k = self.site(site).index
        if k not in self.uplinks:
            raise LabError(f"site {k} has no second uplink")
        return self.uplinks[k]

    def _uplink_names(self, i: int) -> tuple[str, str, str, str]:
        """(internet side, router WAN, router LAN, host side) veth names of site ``i``'s second
        uplink."""
        p = self.prefix
        return f"{p}-x{i}", f"{p}-y{i}", f"{p}-m{i}", f"{p}-g{i}"

    def _uplink_route(self, site: Site, n: int) -> tuple[str, str, str, str]:
        """(host address, gateway, host interface, LAN) of uplink ``n`` of ``site``'s host."""
        if n == 1:
            return site.host_addr, site.lan_gw, self.if_host(site.index), site.lan_net
        if n != 2:
            raise LabError(f"uplink {n}: a host has uplinks 1 and 2")
        up = self.uplink(site.index)
        return up.host_addr, up.lan_gw, self._uplink_names(site.index)[3], up.lan_net

    def add_uplink(self, site: SiteRef, nat: str = "prc") -> Uplink:
        """Give ``site``'s host a second uplink: a router namespace ``P-nat<i>b`` (host name
        ``nat<i>b``) with a ``nat`` NAT (not ``none``) on a public address of its own
        (:meth:`Uplink.plan`), and a second veth to the host. The host routes by source
        (``ip rule from <address> table 101|102``: what leaves from an uplink's address goes
        through that uplink) and keeps a default route through each in its main table, the
        first uplink's preferred (:meth:`set_uplink` moves it)."""
        s = self.site(site)
        i = s.index
        if nat not in NAT_TYPES or nat == "none":
            raise LabError(f"a second uplink needs a NAT type other than none, not {nat!r}")
        if i in self.uplinks:
            raise LabError(f"site {i} has a second uplink already")
        ns = f"{self.prefix}-nat{i}b"
        if _netns_exists(ns):
            raise LabError(f"namespace {ns} exists already")
        up = Uplink.plan(i, nat, ns)
        self.uplinks[i] = up  # from here on close() removes the namespace
        self.save()
        outer, wan, lan, hif = self._uplink_names(i)
        links = [
            f"netns add {ns}",
            f"link add {outer} netns {self.ns_inet} type veth peer name {wan} netns {ns}",
            f"link add {lan} netns {ns} type veth peer name {hif} netns {self.ns_host(i)}",
        ]
        _run(["ip", "-batch", "-"], input="\n".join(links) + "\n")
        wan_len = ipaddress.ip_network(up.wan_net).prefixlen
        inet = [f"link set {outer} up", f"addr add {up.wan_gw}/{wan_len} dev {outer}"]
        _run(["ip", "-n", self.ns_inet, "-batch", "-"], input="\n".join(inet) + "\n")
        router = [
            "link set lo up",
            f"link set {wan} up",
            f"link set {lan} up",
            f"addr add {up.wan_addr}/{wan_len} dev {wan}",
            f"addr add {up.lan_gw}/{up.lan_prefixlen} dev {lan}",
            f"route add default via {up.wan_gw} dev {wan}",
        ]
        with tempfile.TemporaryDirectory(prefix=f"{self.prefix}-uplink-") as tmp:
            ip_file = Path(tmp, "router.ip")
            ip_file.write_text("\n".join(router) + "\n")
            nft_file = Path(tmp, "router.nft")
            nft_file.write_text(self._nat_ruleset(nat, wan, lan))
            script = _sysctl_script(True) + f"ip -batch {ip_file}\nnft -f {nft_file}\n"
            _run(["ip", "netns", "exec", ns, "sh", "-ec", script])
        a1, gw1, if1, net1 = self._uplink_route(s, 1)
        t1, t2 = UPLINK_TABLES
        host = [
            f"link set {hif} up",
            f"addr add {up.host_addr}/{up.lan_prefixlen} dev {hif}",
            f"route replace {net1} dev {if1} table {t1}",
            f"route replace default via {gw1} dev {if1} table {t1}",
            f"route replace {up.lan_net} dev {hif} table {t2}",
            f"route replace default via {up.lan_gw} dev {hif} table {t2}",
            f"rule add from {a1} table {t1} pref {t1 * 10}",
            f"rule add from {up.host_addr} table {t2} pref {t2 * 10}",
            f"route replace default via {up.lan_gw} dev {hif} metric {BACKUP_METRIC}",
        ]
        rp = f"echo 0 > /proc/sys/net/ipv4/conf/{hif}/rp_filter\nip -batch -\n"
        _run(
            ["ip", "netns", "exec", self.ns_host(i), "sh", "-ec", rp],
            input="\n".join(host) + "\n",
        )
        self.default_uplink[i] = 1
        self.save()
        log.info("uplink added", prefix=self.prefix, site=i, nat=nat, public=up.wan_addr)
        return up

    def set_uplink(self, site: SiteRef, n: int) -> None:
        """Move ``site``'s host's default route (the main table's) to uplink ``n`` (1 or 2):
        Wi-Fi to Ethernet. The other uplink keeps a default route of a higher metric (when its
        link is up), and the source rules stay: what leaves from an address still goes through
        its own uplink."""
        s = self.site(site)
        _addr, gw, dev, _net = self._uplink_route(s, n)
        _addr, other_gw, other_dev, _net = self._uplink_route(s, 3 - n)
        ns = self.ns_host(s.index)
        _run(["ip", "-n", ns, "route", "replace", "default", "via", gw, "dev", dev, "metric", "0"])
        with contextlib.suppress(LabError):  # the other link may be down
            backup = ["default", "via", other_gw, "dev", other_dev, "metric", str(BACKUP_METRIC)]
            _run(["ip", "-n", ns, "route", "replace", *backup])
        self.default_uplink[s.index] = n
        self.save()
        log.info("default route moved", prefix=self.prefix, site=s.index, uplink=n)

    def set_uplink_link(self, site: SiteRef, n: int, up: bool) -> None:
        """Take uplink ``n``'s link of ``site``'s host down (the kernel drops its routes: the
        other uplink's default route is what is left) or up again (its source table and a
        default route of the backup metric come back; :meth:`set_uplink` makes it the
        default)."""
        s = self.site(site)
        _addr, gw, dev, net = self._uplink_route(s, n)
        ns = self.ns_host(s.index)
        if not up:
            _run(["ip", "-n", ns, "link", "set", "dev", dev, "down"])
            log.info("uplink down", prefix=self.prefix, site=s.index, uplink=n)
            return
        table = UPLINK_TABLES[n - 1]
        lines = [
            f"link set dev {dev} up",
            f"route replace {net} dev {dev} table {table}",
            f"route replace default via {gw} dev {dev} table {table}",
            f"route replace default via {gw} dev {dev} metric {BACKUP_METRIC}",
        ]
        _run(["ip", "-n", ns, "-batch", "-"], input="\n".join(lines) + "\n")
        log.info("uplink up", prefix=self.prefix, site=s.index, uplink=n)

    def uplink_bytes(self, site: SiteRef, n: int) -> int:
        """Bytes through uplink ``n`` of ``site``'s host so far (its veth, both directions):
        tells which uplink carried a stretch of traffic."""
        s = self.site(site)
        _addr, _gw, dev, _net = self._uplink_route(s, n)
        out = _run(["ip", "-n", self.ns_host(s.index), "-j", "-s", "link", "show", "dev", dev])
        stats = json.loads(out.stdout)[0]["stats64"]
        return int(stats["rx"]["bytes"]) + int(stats["tx"]["bytes"])

    @staticmethod
    def _pick_addr(
        net: ipaddress.IPv4Network | ipaddress.IPv6Network,
        addr: str | None,
        *,
        taken: set[str],
        after: str,
    ) -> str:
        if addr is not None:
            ip = ipaddress.ip_address(addr)
            if ip not in net or ip in (net.network_address, net.broadcast_address):
                raise LabError(f"{addr} is not a host address in {net}")
            if addr in taken:
                raise LabError(f"{addr} is in use")
            return addr
        hosts = [str(h) for h in net.hosts()]
        start = hosts.index(after) if after in hosts else 0
        for h in hosts[start + 1 :] + hosts[: start + 1]:
            if h not in taken:
                return h
        raise LabError(f"no free address in {net}")


def _sysctl_script(forward: bool) -> str:
    """Shell lines setting a namespace's sysctls (run inside it, before its addresses)."""
    s = "echo 0 > /proc/sys/net/ipv4/conf/all/rp_filter\n"
    s += "for f in /proc/sys/net/ipv4/conf/*/rp_filter; do echo 0 > $f; done\n"
    s += "echo 1 > /proc/sys/net/ipv4/conf/all/promote_secondaries\n"
    s += "echo 1 > /proc/sys/net/ipv4/conf/default/promote_secondaries\n"
    if forward:
        s += "echo 1 > /proc/sys/net/ipv4/ip_forward\n"
    return s


def _pid_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _netns_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def _check_prefix(prefix: str) -> None:
    # longest interface name is "<prefix>-srv" / "<prefix>-i14": prefix + 4 characters
    if not prefix or len(prefix) > 11:
        raise LabError(f"lab prefix {prefix!r} must be 1..11 characters")
    if not all(c.isalnum() for c in prefix) or not prefix.isascii():
        raise LabError(f"lab prefix {prefix!r} must be ASCII letters and digits")


def _stop_process(proc: subprocess.Popen[Any], timeout: float = 5.0) -> None:
    """SIGTERM, wait up to ``timeout``, then SIGKILL; by PID only."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)


def wait_until(
    predicate: Callable[[], object], timeout: float, interval: float = 0.05, what: str = ""
) -> object:
    """Poll ``predicate`` until it returns something truthy (returned) or raise
    :class:`TimeoutError` after ``timeout`` seconds: the bounded wait for end-to-end tests."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"not true within {timeout}s: {what or predicate!r}")
        time.sleep(interval)


def parse_sites(text: str) -> list[str]:
    """``"cone,sym"`` -> ``["cone", "sym"]`` (validated)."""
    sites = [s.strip() for s in text.split(",") if s.strip()]
    for s in sites:
        if s not in NAT_TYPES:
            raise LabError(f"unknown NAT type {s!r} (one of {', '.join(NAT_TYPES)})")
    return sites


def iter_lines(stream: IO[str], deadline: float) -> Iterator[str]:
    """Lines from a pipe until EOF or ``deadline`` (time.monotonic()); never blocks past it."""
    import select

    buf = ""
    fd = stream.fileno()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            return
        chunk = os.read(fd, 65536)
        if not chunk:
            if buf:
                yield buf
            return
        buf += chunk.decode(errors="replace")
        while "\n" in buf:
            line, buf = buf.split("\n", 1)
            yield line


def wait_for_line(stream: IO[str], predicate: Iterable[str] | str, timeout: float) -> str | None:
    """Read lines from ``stream`` until one contains a wanted substring; None on timeout/EOF."""
    wanted = [predicate] if isinstance(predicate, str) else list(predicate)
    for line in iter_lines(stream, time.monotonic() + timeout):
        if any(w in line for w in wanted):
            return line
    return None

"""Port-mapping candidates with real daemons: miniupnpd on the NAT lab's routers turns pairs
that relay today into direct ones (docs/ARCHITECTURE.md §4).

One lab for the module: site1 a port-restricted cone, site2 and site3 symmetric NATs. Each
case starts miniupnpd (:mod:`p2plab.miniupnpd`; coturn on the server answers its STUN test)
on the routers it names, starts the two nodes (port mapping is on by default), and records
the path, the time from the second ``p2ptun up`` to the first ping reply (over whichever path
came first) and to the direct path. Without a mapping
prc/sym and sym/sym relay (tests/e2e/test_node_matrix.py); with one they go direct, straight
between the NATs (the lab's forward counters), and ``p2ptun status`` says through which
mapping. When the nodes stop (SIGTERM) their mappings are gone from miniupnpd.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from nodelab import MB, Deployment, report

from p2plab.coturn import start_coturn
from p2plab.miniupnpd import MiniUpnpd, start_miniupnpd
from p2plab.natlab import NatLab

pytestmark = [pytest.mark.lab, pytest.mark.slow]

LabFactory = Callable[..., NatLab]
SITES = ("prc", "sym", "sym")
STUN_PORT = 3490  # coturn for miniupnpd's STUN test; the rendezvous has 3478
RESULTS: dict[str, str] = {}


@pytest.fixture(scope="module")
def dep(
    natlab_module: LabFactory, tmp_path_factory: pytest.TempPathFactory, request: Any
) -> Iterator[Deployment]:
    lab = natlab_module(list(SITES))
    start_coturn(lab, port=STUN_PORT)
    deployment = Deployment.per_site(lab, tmp_path_factory.mktemp("portmap"))
    try:
        yield deployment
    finally:
        deployment.stop_all()
        if RESULTS:
            report(request, "\n[portmap] path chosen, second `p2ptun up` -> first ping reply")
            for line in RESULTS.values():
                report(request, f"[portmap]   {line}")


def _miniupnpd(dep: Deployment, site: int, **kwargs: Any) -> MiniUpnpd:
    lab = dep.lab
    return start_miniupnpd(
        lab, site, stun=(lab.server_addrs[0], STUN_PORT), stun_alt=lab.server_addrs[1:], **kwargs
    )


def _run_case(
    dep: Deployment, case: str, a_site: int, b_site: int, routers: dict[int, dict[str, Any]]
) -> None:
    lab = dep.lab
    a, b = dep.nodes[a_site - 1], dep.nodes[b_site - 1]
    dep.fresh_sites(a, b)
    daemons: dict[int, MiniUpnpd] = {}
    try:
        for site, options in routers.items():
            daemons[site] = _miniupnpd(dep, site, **options)
        dep.start_node(a, peers=[b])
        dep.wait_ready(a)
        t_up = time.monotonic()
        dep.start_node(b, peers=[a])
        first_ping = dep.first_ping(a, b) - t_up
        dep.wait_connected([a, b])
        entry = dep.wait_path(a, b, "direct", timeout=20)
        direct_after = time.monotonic() - t_up
        back = dep.peer_status(b, a)
        via = entry.get("via") or back.get("via")
        RESULTS[case] = (
            f"{case:<26} path={entry['path']:<6} first ping {first_ping:5.2f} s, "
            f"direct by {direct_after:5.2f} s   via {via}"
        )
        print(f"[portmap] {RESULTS[case]}")
        # Each side with miniupnpd holds a mapping (UPnP's comes last: ~3 s, after PCP and
        # NAT-PMP went unanswered), and status names it.
        for site in routers:
            node = dep.nodes[site - 1]
            deadline = time.monotonic() + 10
            while (mapping := dep.status(node)["node"]["port_mapping"]) is None:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert mapping is not None and mapping["gateway"] == f"10.0.{site}.1", mapping
            assert any(
                r.external_port == int(mapping["external"].rsplit(":", 1)[1])
                for r in daemons[site].mappings()
            )
        assert via is not None and "port mapping" in via, (entry, back)
        dep.assert_ping(a, b)
        dep.assert_ping(b, a)
        lab.reset_counters()
        dep.tcp_transfer(a, b, 2 * MB)
        assert lab.direct_bytes(a.site, b.site) > 2 * MB, lab.counters()
        assert lab.server_bytes(a.site) < MB and lab.server_bytes(b.site) < MB
    finally:
        codes = dep.stop_nodes()
        try:
            # SIGTERM: each node deleted its mapping before it exited.
            for site, daemon in daemons.items():
                node_ip = f"10.0.{site}.2"
                left = [m for m in daemon.mappings() if m.internal_ip == node_ip]
                assert left == [], f"mappings left on nat{site} after SIGTERM: {left}"
                if daemon.root_desc_url and routers[site].get("upnp", True):
                    listed = lab.exec(
                        f"site{site}", "upnpc", "-u", daemon.root_desc_url, "-l", timeout=15
                    ).stdout
                    assert f"->{node_ip}:" not in listed, listed
        finally:
            for daemon in daemons.values():
                daemon.stop()
    assert codes == {a.name: 0, b.name: 0}, codes


def test_prc_sym_pcp_on_the_sym_router(dep: Deployment) -> None:
    _run_case(dep, "prc-sym, PCP at sym", 1, 2, {2: {}})


def test_sym_sym_natpmp_on_one_router_upnp_on_the_other(dep: Deployment) -> None:
    _run_case(dep, "sym-sym, NAT-PMP / UPnP", 2, 3, {2: {"pcp": False}, 3: {"natpmp": False}})


def test_mapping_is_requested_again_after_a_network_change(dep: Deployment) -> None:
    """The sym side's host gets a new LAN address while connected through its PCP mapping:
    the node regathers (docs/ARCHITECTURE.md §4), maps again from its new address, and the
    path is direct again; on SIGTERM the new mapping is deleted. (The old one cannot be: its
    address is gone, and miniupnpd lets only the owner delete it; its lease ends it.)"""
    lab = dep.lab
    a, b = dep.nodes[0], dep.nodes[1]
    dep.fresh_sites(a, b)
    daemon = _miniupnpd(dep, 2)
    new_ip = None
    try:
        dep.start_node(a, peers=[b])
        dep.wait_ready(a)
        dep.start_node(b, peers=[a])
        dep.first_ping(a, b)
        dep.wait_path(a, b, "direct", timeout=20)
        new_ip = lab.set_host_address(2)
        t_change = time.monotonic()
        deadline = t_change + 20
        while time.monotonic() < deadline:
            if any(m.internal_ip == new_ip for m in daemon.mappings()):
                break
            time.sleep(0.1)
        remapped = time.monotonic() - t_change
        assert any(m.internal_ip == new_ip for m in daemon.mappings()), daemon.mappings()
        dep.wait_path(a, b, "direct", timeout=20)
        dep.assert_ping(a, b)
        via = dep.peer_status(a, b).get("via")
        direct_again = time.monotonic() - t_change
        RESULTS["network change"] = (
            f"{'prc-sym, host renumbered':<26} path=direct mapped again {remapped:5.2f} s, "
            f"direct again {direct_again:5.2f} s   via {via}"
        )
        print(f"[portmap] {RESULTS['network change']}")
        codes = dep.stop_nodes()
        assert codes == {a.name: 0, b.name: 0}, codes
        left = [m for m in daemon.mappings() if m.internal_ip == new_ip]
        assert left == [], f"mappings left after SIGTERM: {left}"
    finally:
        dep.stop_nodes()
        daemon.stop()
        if new_ip is not None:
            lab.set_host_address(2, "10.0.2.2")

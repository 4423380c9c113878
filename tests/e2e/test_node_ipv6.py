"""The IPv6 underlay with real daemons: two sites behind symmetric IPv4 NATs that both have IPv6
(no NAT, a home router's stateful firewall) connect directly over IPv6; with IPv6 at one site
only, the same pair relays over IPv4 as before; a node that knows the rendezvous' STUN/TURN by
its IPv6 address only allocates its relay over IPv6 (docs/ARCHITECTURE.md §4).

One lab for the module: three sites behind symmetric NATs (``masquerade fully-random``), sites 1
and 2 dual-stack (:meth:`p2plab.natlab.NatLab.enable_ipv6`), site 3 IPv4-only; one rendezvous
on the server (signaling on IPv4, STUN/TURN on IPv4 and IPv6); nodes with an IPv4 and an IPv6
overlay address each. Each case pings both overlay families, moves data over TCP inside the
tunnel and reads the internet's counters (IPv4 and IPv6 apart) to see where it went. For the
record each case prints the path and the time from the second ``p2ptun up`` to the first ping.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from nodelab import MB, RV, Deployment, report

from p2plab.natlab import NatLab

pytestmark = [pytest.mark.lab, pytest.mark.slow]

LabFactory = Callable[..., NatLab]
RV6 = "2001:db8::10"
RESULTS: dict[str, str] = {}


@pytest.fixture(scope="module")
def dualstack(
    natlab_module: LabFactory, tmp_path_factory: pytest.TempPathFactory, request: Any
) -> Iterator[Deployment]:
    """The module's deployment: ``n<i>`` at ``site<i>``, overlay 10.77.0.i and fd77::i."""
    lab = natlab_module(["sym", "sym", "sym"], ipv6=[1, 2])
    dep = Deployment(lab, tmp_path_factory.mktemp("ipv6"))
    for i in (1, 2, 3):
        node = dep.add_node(f"n{i}", f"site{i}", f"10.77.0.{i}/24", ifname=f"p2p{dep.tag}n{i}")
        node.address6 = f"fd77::{i}/64"
    dep.start_rendezvous(stun_listen=[f"[{RV6}]:3478"])
    try:
        yield dep
    finally:
        dep.stop_all()
        if RESULTS:
            report(request, "\n[ipv6] path chosen, second `p2ptun up` -> first ping reply")
            for line in RESULTS.values():
                report(request, f"[ipv6]   {line}")


def _connect(dep: Deployment, a: int, b: int, path: str) -> tuple[dict[str, Any], float]:
    """Start nodes ``a`` and ``b``; wait for ``path`` on both; (a's entry, first ping s)."""
    na, nb = dep.nodes[a - 1], dep.nodes[b - 1]
    dep.fresh_sites(na, nb)
    dep.start_node(na, peers=[nb])
    dep.wait_ready(na)
    t_up = time.monotonic()
    dep.start_node(nb, peers=[na])
    first = dep.first_ping(na, nb) - t_up
    dep.wait_connected([na, nb])
    return dep.wait_path(na, nb, path), first


def _record(case: str, entry: dict[str, Any], back: dict[str, Any], first: float) -> None:
    local = (entry["local_candidate"], back["local_candidate"])
    RESULTS[case] = (
        f"{case:<20} path={entry['path']:<6} first ping {first:5.2f} s   "
        f"{local[0]['type']} {local[0]['address']} <-> {local[1]['type']} {local[1]['address']}"
    )
    print(f"[ipv6] {RESULTS[case]}")


def test_sym_sym_both_ipv6_direct(dualstack: Deployment) -> None:
    dep, lab = dualstack, dualstack.lab
    a, b = dep.nodes[0], dep.nodes[1]
    try:
        entry, first = _connect(dep, 1, 2, "direct")
        back = dep.peer_status(b, a)
        _record("sym/sym both IPv6", entry, back, first)
        for end, site in ((entry, 1), (back, 2)):
            # Host candidates at the sites' global IPv6 addresses, nothing through a NAT.
            assert end["local_candidate"]["type"] == "host", end
            assert end["local_candidate"]["address"].startswith(f"[{lab.site6(site).host_addr}]")
        assert entry["remote_candidate"]["address"].startswith(f"[{lab.site6(2).host_addr}]")
        for src, dst in ((a, b), (b, a)):
            dep.assert_ping(src, dst)
            assert dst.tunnel_ip6 is not None
            result = lab.exec(src.site, "ping", "-c", "2", "-W", "2", dst.tunnel_ip6, timeout=30)
            assert result.returncode == 0, result.stdout + dep.logs()
        lab.reset_counters()
        dep.tcp_transfer(a, b, 4 * MB)
        dep.tcp_transfer(b, a, 1 * MB, port=5002)
        # Straight between the sites over IPv6: not through the server, not over IPv4.
        assert lab.direct_bytes6(1, 2) > 5 * MB, lab.counters6()
        assert lab.direct_bytes(1, 2) < 64 * 1024, lab.counters()
        assert lab.server_bytes(1) < MB and lab.server_bytes(2) < MB, lab.counters()
        assert lab.direct_bytes6(1, "server") < MB, lab.counters6()
    finally:
        codes = dep.stop_nodes()
    assert codes == {a.name: 0, b.name: 0}, codes


def test_sym_sym_one_ipv6_relays(dualstack: Deployment) -> None:
    """IPv6 at one site only: no pair of the same family can punch through, so it relays."""
    dep, lab = dualstack, dualstack.lab
    a, c = dep.nodes[0], dep.nodes[2]
    try:
        entry, first = _connect(dep, 1, 3, "relay")
        back = dep.peer_status(c, a)
        _record("sym/sym one IPv6", entry, back, first)
        assert "relay" in {entry["local_candidate"]["type"], back["local_candidate"]["type"]}
        dep.assert_ping(a, c)
        assert c.tunnel_ip6 is not None
        result = lab.exec(a.site, "ping", "-c", "2", "-W", "2", c.tunnel_ip6, timeout=30)
        assert result.returncode == 0, result.stdout + dep.logs()
        lab.reset_counters()
        dep.tcp_transfer(a, c, 1 * MB)
        assert lab.direct_bytes(1, 3) < 64 * 1024, lab.counters()
        assert lab.server_bytes(1) > MB and lab.server_bytes(3) > MB, lab.counters()
    finally:
        codes = dep.stop_nodes()
    assert codes == {a.name: 0, c.name: 0}, codes


def test_stun_and_turn_over_ipv6(dualstack: Deployment) -> None:
    """A node that knows the rendezvous' STUN/TURN only by its IPv6 address allocates its
    relay over IPv6 (an IPv4 relayed address, the default family) and reaches an IPv4-only
    peer behind a symmetric NAT through it or the peer's relay."""
    dep, lab = dualstack, dualstack.lab
    a, c = dep.nodes[0], dep.nodes[2]
    mark = dep.rendezvous_log_size()
    try:
        dep.fresh_sites(a, c)
        dep.start_node(
            a,
            peers=[c],
            stun=[f"[{RV6}]:3478"],
            turn_servers=[f'{{ url = "turn:[{RV6}]:3478?transport=udp" }}'],
        )
        dep.wait_ready(a)
        t_up = time.monotonic()
        dep.start_node(c, peers=[a])
        first = dep.first_ping(a, c) - t_up
        dep.wait_connected([a, c])
        entry = dep.wait_path(a, c, "relay")
        _record("TURN over IPv6", entry, dep.peer_status(c, a), first)
        # The allocation came over IPv6, from the site's own address (no NAT), with an
        # IPv4 relayed address.
        client = f"udp:[{lab.site6(1).host_addr}]:"
        created = [
            line
            for line in dep.rendezvous_log(mark).splitlines()
            if "allocation created" in line and client in line
        ]
        assert created and f"relay={RV}:" in created[0], dep.rendezvous_log(mark)
        dep.assert_ping(a, c)
        assert lab.direct_bytes6(1, "server") > 0, lab.counters6()
    finally:
        codes = dep.stop_nodes()
    assert codes == {a.name: 0, c.name: 0}, codes

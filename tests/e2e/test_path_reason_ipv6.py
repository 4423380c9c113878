"""Why a path is what it is, on the IPv6 underlay: two sites behind symmetric IPv4 NATs that
both have IPv6 read ``direct (host↔host) over IPv6``; with IPv6 at one site only, the pair
relays and each side names the side without IPv6 (docs/ARCHITECTURE.md §3, §4).

Sites: sym, sym, sym; sites 1 and 2 dual-stack (:meth:`p2plab.natlab.NatLab.enable_ipv6`).
Prints the path, the reason and the time from the second ``p2ptun up`` to the first ping.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from nodelab import Deployment, report

from p2plab.natlab import NatLab, wait_until

pytestmark = [pytest.mark.lab, pytest.mark.slow]

LabFactory = Callable[..., NatLab]
RV6 = "2001:db8::10"


@pytest.fixture(scope="module")
def dualstack(
    natlab_module: LabFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    lab = natlab_module(["sym", "sym", "sym"], ipv6=[1, 2])
    dep = Deployment(lab, tmp_path_factory.mktemp("reason6"))
    for i in (1, 2, 3):
        dep.add_node(f"n{i}", f"site{i}", f"10.77.0.{i}/24", ifname=f"p2p{dep.tag}n{i}")
    dep.start_rendezvous(stun_listen=[f"[{RV6}]:3478"])
    try:
        yield dep
    finally:
        dep.stop_all()


@pytest.mark.parametrize(
    ("other", "path", "says_a", "says_b"),
    [
        (2, "direct", "direct (host↔host) over IPv6", "direct (host↔host) over IPv6"),
        (3, "relay", "no IPv6 on the peer", "no IPv6 here"),
    ],
    ids=["both-ipv6", "one-ipv6"],
)
def test_ipv6_in_the_reason(
    dualstack: Deployment, request: Any, other: int, path: str, says_a: str, says_b: str
) -> None:
    dep = dualstack
    a, b = dep.nodes[0], dep.nodes[other - 1]
    try:
        dep.fresh_sites(a, b)
        dep.start_node(a, peers=[b])
        dep.wait_ready(a)
        t_up = time.monotonic()
        dep.start_node(b, peers=[a])
        first = dep.first_ping(a, b) - t_up
        dep.wait_path(a, b, path)
        found: dict[str, dict[str, Any]] = {}

        def said() -> bool:
            found["a"], found["b"] = dep.peer_status(a, b), dep.peer_status(b, a)
            return says_a in str(found["a"].get("reason")) and says_b in str(
                found["b"].get("reason")
            )

        try:
            wait_until(said, 20, interval=0.5, what="the IPv6 reasons")
        except TimeoutError:
            raise AssertionError(f"reasons: {found}\n" + dep.logs()) from None
        facts = found["a"]["reason_facts"]["ipv6"]
        assert facts == {"local": True, "remote": other == 2}, facts
        line = f"sym/sym, IPv6 at {'both sites' if other == 2 else 'one site'}  path={path}  "
        line += f"first ping {first:.2f} s  {found['a']['reason']}"
        report(request, f"\n[path-reason-6] {line}")
        print(f"[path-reason-6] {line}")
    finally:
        codes = dep.stop_nodes()
    assert set(codes.values()) == {0}, codes

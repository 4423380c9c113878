"""Real daemons through network events, one test per event (docs/ARCHITECTURE.md §4): each
runs a 50 ms ping stream and a paced TCP transfer inside the tunnel across the event, records
the longest gap between ping replies, and requires the TCP connection to survive (length and
SHA-256 equal at both ends).

Events (the NAT types of the two sites in brackets):

- the NAT's public address changes [prc/prc];
- a symmetric NAT forgets its mappings [cone/sym, direct], and [sym/sym, relayed];
- a port-restricted NAT forgets its mappings [prc/prc] (the same ports come back, but the
  filtering state is gone);
- the host's LAN address is renumbered [prc/prc];
- the direct path silently drops everything while the relay works [cone/cone], and heals
  (the tunnel goes back to the direct path);
- a node frozen 40 s (SIGSTOP) while its symmetric NAT forgets every mapping, then woken
  [cone/sym]: the gap is counted from the wake-up;
- a multi-homed host (a second uplink with a NAT of its own, source policy routing:
  ``NatLab.add_uplink``) moves its default route from uplink 1 to uplink 2, Wi-Fi to Ethernet
  [prc+prc/prc]: the tunnel moves to uplink 2;
- the same host's uplink 1 goes away (link down) while the default route uses it
  [prc+prc/prc];
- the peer's daemon stopped (SIGTERM) or killed (SIGKILL) and started again [cone/cone]: the
  time from its start to the first ping reply.

Before those, a multi-homed host whose default route uses a symmetric uplink [prc+sym/prc]
must be reached through its other, port-restricted uplink — which works only when it answers
from the address it was asked at (``IP_PKTINFO``; with ``P2PTUN_PKTINFO=off`` the pair is
relayed).

The exact timings are asserted on the in-memory lab (``tests/unit/test_memlab.py``, virtual
time); here the gaps are reported and bounded loosely (:data:`GAP_BOUND`), as a real machine
shared with other work adds its own delays.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from nodelab import MB, Deployment, Node, PingStream, report

from p2plab.natlab import NatLab, wait_until
from p2plab.recovery import longest_gap

pytestmark = [pytest.mark.lab, pytest.mark.slow]

LabFactory = Callable[..., NatLab]

# n1 n2: prc prc · n3 n4: cone sym · n5 n6: sym sym · n7 n8: cone cone · n9: prc + a second,
# symmetric uplink · n10: prc (the multi-homed hosts' peer) · n11: prc + a second prc uplink
SITES = ("prc", "prc", "cone", "sym", "sym", "sym", "cone", "cone", "prc", "prc", "prc")
GAP_BOUND = 5.0
"""Seconds: a gap above this is a failure here (the target, 2 s, is asserted in memory)."""
PING_INTERVAL = 0.05
TRANSFER_SIZE = 2 * MB
TRANSFER_RATE = 150_000.0
"""Bytes/s: the transfer outlasts the event and the recovery."""


@pytest.fixture(scope="module")
def recovery(
    natlab_module: LabFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    dep = Deployment.per_site(natlab_module(list(SITES)), tmp_path_factory.mktemp("recovery"))
    try:
        yield dep
    finally:
        dep.stop_all()


@pytest.fixture
def rec(recovery: Deployment) -> Iterator[Deployment]:
    """The module's deployment; the nodes and the blocks a test left are removed after it."""
    try:
        yield recovery
    finally:
        recovery.stop_nodes()
        for a, b in recovery.lab.blocked_pairs():
            recovery.lab.unblock(a, b)


def _start_pair(dep: Deployment, a: Node, b: Node, path: str) -> None:
    dep.fresh_sites(a, b)
    dep.start_node(a, peers=[b])
    dep.start_node(b, peers=[a])
    dep.wait_connected([a, b])
    dep.wait_path(a, b, path)
    dep.assert_ping(a, b)


def _across(
    dep: Deployment,
    a: Node,
    b: Node,
    event: Callable[[], float | None],
    what: str,
    settle: float = 15.0,
) -> dict[str, Any]:
    """Ping a -> b every 50 ms and send a paced TCP stream a -> b; run ``event`` (which may
    return the moment from which the gap counts, e.g. a wake-up) once data flows; wait until
    the pings are answered again; finish the transfer. Returns the measurements."""
    handshakes = (a.handshakes(), b.handshakes())
    pings = PingStream(dep, a, b, interval=PING_INTERVAL, duration=120)
    transfer = dep.start_transfer(a, b, TRANSFER_SIZE, rate=TRANSFER_RATE)
    rx0 = dep.peer_status(b, a)["rx_bytes"]
    wait_until(
        lambda: dep.peer_status(b, a).get("rx_bytes", 0) > rx0 + 128 * 1024,
        15,
        interval=0.1,
        what="transfer under way",
    )
    t_event = time.time()
    woke = event()
    counted_from = woke or t_event
    try:
        wait_until(
            lambda: pings.replies_after(max(counted_from, time.time() - 1.0)) >= 5,
            60,
            interval=0.1,
            what=f"pings answered again after {what}",
        )
    except TimeoutError:
        raise AssertionError(f"no recovery from {what}:\n" + dep.logs()) from None
    time.sleep(settle)
    result = transfer.finish(timeout=180)
    pings.stop()
    gap = longest_gap(pings.replies(), counted_from, time.time(), from_start=woke is not None)
    dep.wait_connected([a, b])
    return {
        "gap_s": gap,
        "new_handshakes": (a.handshakes() - handshakes[0], b.handshakes() - handshakes[1]),
        "path": dep.peer_status(a, b)["path"],
        "bytes": result["bytes"],
    }


def _report(request: pytest.FixtureRequest, event: str, got: dict[str, Any]) -> None:
    report(
        request,
        f"[recovery] {event}: longest gap {got['gap_s']:.2f} s (50 ms pings), TCP "
        f"{got['bytes']} bytes intact, path {got['path']}, new handshakes "
        f"{got['new_handshakes']}",
    )
    assert got["gap_s"] <= GAP_BOUND, f"{event}: no traffic for {got['gap_s']:.2f} s"


def test_nat_public_address_changes(rec: Deployment, request: pytest.FixtureRequest) -> None:
    a, b = rec.node("n1"), rec.node("n2")
    _start_pair(rec, a, b, "direct")
    got = _across(rec, a, b, lambda: rec.lab.renumber_nat(b.site) and None, "the renumbering")
    _report(request, "NAT public address changed (prc/prc)", got)


def test_symmetric_nat_flushed_direct(rec: Deployment, request: pytest.FixtureRequest) -> None:
    a, b = rec.node("n3"), rec.node("n4")  # cone, sym
    _start_pair(rec, a, b, "direct")
    got = _across(rec, a, b, lambda: rec.lab.flush_nat(b.site), "the NAT flush")
    _report(request, "symmetric NAT flushed (cone/sym, direct)", got)


def test_symmetric_nat_flushed_relayed(rec: Deployment, request: pytest.FixtureRequest) -> None:
    a, b = rec.node("n5"), rec.node("n6")  # sym, sym
    _start_pair(rec, a, b, "relay")
    got = _across(rec, a, b, lambda: rec.lab.flush_nat(b.site), "the NAT flush")
    _report(request, "symmetric NAT flushed (sym/sym, relayed)", got)


def test_port_restricted_nat_flushed(rec: Deployment, request: pytest.FixtureRequest) -> None:
    a, b = rec.node("n1"), rec.node("n2")  # prc, prc
    _start_pair(rec, a, b, "direct")
    got = _across(rec, a, b, lambda: rec.lab.flush_nat(b.site), "the NAT flush")
    _report(request, "port-restricted NAT flushed (prc/prc)", got)


def test_host_lan_address_renumbered(rec: Deployment, request: pytest.FixtureRequest) -> None:
    a, b = rec.node("n1"), rec.node("n2")  # prc, prc
    _start_pair(rec, a, b, "direct")
    got = _across(
        rec, a, b, lambda: rec.lab.set_host_address(b.site) and None, "the host renumbering"
    )
    _report(request, "host LAN address renumbered (prc/prc)", got)


def test_direct_path_black_holed_then_healed(
    rec: Deployment, request: pytest.FixtureRequest
) -> None:
    a, b = rec.node("n7"), rec.node("n8")  # cone, cone
    _start_pair(rec, a, b, "direct")
    got = _across(rec, a, b, lambda: rec.lab.block(a.site, b.site), "the black hole", settle=5)
    assert got["path"] == "relay", got
    _report(request, "direct path black-holed, relay available (cone/cone)", got)
    healed = time.monotonic()
    rec.lab.unblock(a.site, b.site)
    rec.wait_path(a, b, "direct", timeout=90)
    report(
        request,
        f"[recovery] direct path healed: back on it after {time.monotonic() - healed:.1f} s",
    )
    rec.assert_ping(a, b)


def test_node_frozen_while_its_symmetric_nat_forgets(
    rec: Deployment, request: pytest.FixtureRequest
) -> None:
    a, b = rec.node("n3"), rec.node("n4")  # cone, sym
    _start_pair(rec, a, b, "direct")
    assert b.proc is not None

    def freeze() -> float:
        os.kill(b.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
        try:
            time.sleep(2)
            rec.lab.flush_nat(b.site)
            time.sleep(38)
        finally:
            os.kill(b.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
        return time.time()

    got = _across(rec, a, b, freeze, "the freeze")
    _report(request, "node frozen 40 s while its symmetric NAT forgot it (cone/sym)", got)


# -- a multi-homed host (two uplinks, source policy routing) -------------------------------------


def _multihomed(dep: Deployment, node: Node, uplink2: str, default: int) -> None:
    """Give ``node``'s host its second uplink (once per module; ``uplink2`` its NAT type) and
    put it back in order: both links up, the default route through uplink ``default``, both
    NATs without mappings."""
    lab = dep.lab
    index = lab.site(node.site).index
    if index not in lab.uplinks:
        lab.add_uplink(node.site, uplink2)
    assert lab.uplink(node.site).nat == uplink2
    lab.set_uplink_link(node.site, 1, up=True)
    lab.set_uplink(node.site, default)
    lab.flush_nat(node.site, uplink=2)


def _uplink_of(dep: Deployment, node: Node, peer: Node) -> int:
    """Which uplink ``node``'s selected pair to ``peer`` goes through (by its local candidate's
    public address); 0 if neither (a relayed pair)."""
    local = dep.peer_status(node, peer).get("local_candidate") or {}
    host = str(local.get("address", "")).rpartition(":")[0]
    return {dep.lab.site(node.site).wan_addr: 1, dep.lab.uplink(node.site).wan_addr: 2}.get(host, 0)


def test_multihomed_host_is_reached_through_the_uplink_it_was_asked_at(
    rec: Deployment, request: pytest.FixtureRequest
) -> None:
    a, b = rec.node("n9"), rec.node("n10")  # prc + symmetric uplink 2, prc
    # The default route uses the symmetric uplink: no direct path to a port-restricted peer
    # there. The other uplink's NAT maps endpoint-independently: b can reach a through it if a
    # answers from that uplink's address, and its own checks leave from it.
    _multihomed(rec, a, "sym", default=2)
    rec.fresh_sites(a, b)
    rec.start_node(a, peers=[b])
    rec.start_node(b, peers=[a])
    rec.wait_connected([a, b])
    entry = rec.wait_path(a, b, "direct", timeout=30)
    assert _uplink_of(rec, a, b) == 1, entry
    before = rec.lab.uplink_bytes(a.site, 1)
    result = rec.tcp_transfer(a, b, MB)
    through = rec.lab.uplink_bytes(a.site, 1) - before
    assert through > MB, through
    report(
        request,
        f"[recovery] multi-homed host, default route on its symmetric uplink: direct through "
        f"the other ({entry['local_candidate']['address']}), {result['bytes']} bytes of TCP "
        f"intact, {through} bytes through uplink 1",
    )


def test_default_route_moves_to_the_other_uplink(
    rec: Deployment, request: pytest.FixtureRequest
) -> None:
    a, b = rec.node("n11"), rec.node("n10")  # prc + prc uplink 2, prc
    _multihomed(rec, a, "prc", default=1)
    _start_pair(rec, a, b, "direct")
    assert _uplink_of(rec, a, b) == 1
    moved: dict[str, int] = {}

    def wifi_to_ethernet() -> None:
        moved["before"] = rec.lab.uplink_bytes(a.site, 2)
        rec.lab.set_uplink(a.site, 2)

    got = _across(rec, a, b, wifi_to_ethernet, "the default route's move")
    wait_until(lambda: _uplink_of(rec, a, b) == 2, 30, interval=0.2, what="the tunnel on uplink 2")
    through = rec.lab.uplink_bytes(a.site, 2) - moved["before"]
    assert through > TRANSFER_SIZE // 2, through
    _report(request, "default route moved to the second uplink (prc+prc/prc)", got)


def test_uplink_link_goes_down(rec: Deployment, request: pytest.FixtureRequest) -> None:
    a, b = rec.node("n11"), rec.node("n10")  # prc + prc uplink 2, prc
    _multihomed(rec, a, "prc", default=1)
    _start_pair(rec, a, b, "direct")
    assert _uplink_of(rec, a, b) == 1
    try:
        got = _across(
            rec, a, b, lambda: rec.lab.set_uplink_link(a.site, 1, up=False), "the link loss"
        )
        assert _uplink_of(rec, a, b) == 2, rec.peer_status(a, b)
    finally:
        rec.lab.set_uplink_link(a.site, 1, up=True)
    _report(request, "uplink 1 went down, default route on it (prc+prc/prc)", got)


# -- the peer's daemon restarted ------------------------------------------------------------


@pytest.mark.parametrize("how", ["stopped", "killed"])
def test_peer_daemon_restarted(rec: Deployment, request: pytest.FixtureRequest, how: str) -> None:
    """The peer's daemon is stopped (SIGTERM: it says goodbye) or killed (SIGKILL: it says
    nothing, and we keep a WireGuard session whose keys died with it), then started again:
    the time from its start to the first ping reply through it."""
    a, b = rec.node("n7"), rec.node("n8")  # cone, cone
    _start_pair(rec, a, b, "direct")
    assert b.proc is not None
    pings = PingStream(rec, a, b, interval=PING_INTERVAL, duration=60)
    try:
        wait_until(lambda: pings.replies_after(0) > 0, 15, interval=0.1, what="pings answered")
        if how == "killed":
            b.proc.kill()
            b.proc.wait(timeout=10)
            gone = time.time()
            # The tunnel has noticed nothing (no goodbye); the restart comes once the ping
            # stream has gone unanswered for half a second, as a service manager's would.
            wait_until(
                lambda: time.time() - max([gone, *pings.replies()]) >= 0.5,
                5,
                interval=0.05,
                what="the ping stream unanswered",
            )
        else:
            assert rec.stop_node(b) == 0
            # Its goodbye reached us: the peer is no longer connected.
            wait_until(
                lambda: rec.peer_status(a, b).get("state") != "connected",
                5,
                interval=0.05,
                what=f"{a.name} sees {b.name} gone",
            )
        started = time.time()
        rec.start_node(b, peers=[a])
        wait_until(
            lambda: pings.replies_after(started) > 0,
            30,
            interval=0.05,
            what="a reply from the restarted daemon",
        )
        first = min(t for t in pings.replies() if t > started)
    finally:
        pings.stop()
    report(
        request,
        f"[recovery] peer daemon {how} and started again (cone/cone): first ping "
        f"{first - started:.2f} s after its start",
    )
    assert first - started <= GAP_BOUND, f"first ping {first - started:.2f} s after the start"

"""Real daemons through network trouble (docs/ARCHITECTURE.md §4): a NAT that forgets its mappings
or gets a new public address in the middle of a TCP transfer, and loss and delay while two
nodes set up.

One lab for the module (sites: cone, sym, prc, prc, prc, prc), one rendezvous, one node
identity per site; each test starts the two nodes it needs and stops them at the end.

- NAT flushed (``lab.flush_nat``) on the symmetric side of a direct cone/sym pair: its next
  packets leave from a new port, so the old path is dead for the cone side.
- NAT renumbered (``lab.renumber_nat``) on one side of a direct prc/prc pair: a new public
  address, every mapping gone; the other NAT filters the new address until ICE restarts.

In both, a paced TCP transfer runs inside the tunnel across the change and must finish with
length and SHA-256 equal at both ends (one connection: it survived), and a ping stream shows
when the tunnel answered again. Recovery is printed: how long the tunnel stayed dark after the
change (ping) and how long the receiving end of the TCP connection got nothing (TCP's own
retransmission backoff adds to that); nothing asserts on time.

- 10 % loss and 50 ms delay on both sites' links (each direction) from before the nodes start:
  they still connect, ping gets through, a small TCP transfer completes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from nodelab import (
    CONNECT_TIMEOUT,
    MB,
    Deployment,
    Node,
    PingStream,
    dark_time,
    report,
    tcp_stall,
)

from p2plab.natlab import NatLab, wait_until

pytestmark = [pytest.mark.lab, pytest.mark.slow]

LabFactory = Callable[..., NatLab]

SITES = ("cone", "sym", "prc", "prc", "prc", "prc")
RECOVERY_TIMEOUT = 30.0
"""Consent turns suspect after two missed checks (~10 s), then ICE restarts: well inside."""
TRANSFER_SIZE = 3 * MB
TRANSFER_RATE = 300_000.0
"""Bytes/s: the transfer takes ~10 s at full health, so the change lands in its middle."""


@pytest.fixture(scope="module")
def resilience(
    natlab_module: LabFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    dep = Deployment.per_site(natlab_module(list(SITES)), tmp_path_factory.mktemp("resilience"))
    try:
        yield dep
    finally:
        dep.stop_all()


@pytest.fixture
def res_dep(resilience: Deployment) -> Iterator[Deployment]:
    """The module's deployment; nodes and link impairments a test left are removed after it."""
    try:
        yield resilience
    finally:
        resilience.stop_nodes()
        for site in resilience.lab.sites:
            resilience.lab.clear_netem(site.index)


def _start_pair(dep: Deployment, a: Node, b: Node, path: str) -> None:
    dep.fresh_sites(a, b)
    dep.start_node(a, peers=[b])
    dep.start_node(b, peers=[a])
    dep.wait_connected([a, b])
    dep.wait_path(a, b, path)
    dep.assert_ping(a, b)


def _transfer_across(
    dep: Deployment, a: Node, b: Node, change: Callable[[], object], what: str
) -> dict[str, Any]:
    """A paced transfer a -> b and a ping stream b -> a; ``change`` in the middle; both
    must recover. Returns the measurements."""
    handshakes = (a.handshakes(), b.handshakes())
    pings = PingStream(dep, b, a, interval=0.1, duration=90)
    transfer = dep.start_transfer(a, b, TRANSFER_SIZE, rate=TRANSFER_RATE)
    # Data is flowing through the tunnel before the change.
    rx0 = dep.peer_status(b, a)["rx_bytes"]
    wait_until(
        lambda: dep.peer_status(b, a).get("rx_bytes", 0) > rx0 + 256 * 1024,
        15,
        interval=0.1,
        what="transfer under way",
    )
    t_wall, t_mono = time.time(), time.monotonic()
    change()
    try:
        wait_until(
            lambda: pings.replies_after(max(t_wall, time.time() - 1.0)) >= 3,
            RECOVERY_TIMEOUT,
            interval=0.2,
            what=f"ping answered again after {what}",
        )
    except TimeoutError:
        raise AssertionError(f"no recovery from {what}:\n" + dep.logs()) from None
    result = transfer.finish(timeout=120)
    pings.stop()
    dark = dark_time(pings.replies(), t_wall)
    stall = tcp_stall(result["gaps"], t_mono)
    dep.wait_connected([a, b])
    return {
        "dark_s": dark,
        "tcp_stall_s": stall,
        "new_handshakes": (a.handshakes() - handshakes[0], b.handshakes() - handshakes[1]),
        "path": dep.peer_status(a, b)["path"],
    }


def test_nat_flush_during_transfer(res_dep: Deployment, request: pytest.FixtureRequest) -> None:
    dep = res_dep
    a, b = dep.node("n1"), dep.node("n2")  # cone, sym
    _start_pair(dep, a, b, "direct")
    old = dep.peer_status(a, b)["remote_candidate"]
    got = _transfer_across(dep, a, b, lambda: dep.lab.flush_nat(b.site), "the NAT flush")
    report(
        request,
        f"[node-resilience] sym NAT flushed under TCP (cone/sym): tunnel dark "
        f"{got['dark_s']:.2f} s, TCP receiver stalled {got['tcp_stall_s']:.2f} s, "
        f"path {got['path']}, new handshakes {got['new_handshakes']}, "
        f"{b.name} seen at {old['address']} -> "
        f"{dep.peer_status(a, b)['remote_candidate']['address']}",
    )
    dep.assert_ping(a, b)


def test_nat_renumbered_during_transfer(
    res_dep: Deployment, request: pytest.FixtureRequest
) -> None:
    dep = res_dep
    a, b = dep.node("n3"), dep.node("n4")  # prc, prc
    _start_pair(dep, a, b, "direct")
    old_wan = dep.lab.site(a.site).wan_addr
    new_wan: list[str] = []
    got = _transfer_across(
        dep, a, b, lambda: new_wan.append(dep.lab.renumber_nat(a.site)), "the renumbering"
    )
    remote = dep.peer_status(b, a)["remote_candidate"]
    report(
        request,
        f"[node-resilience] prc NAT renumbered {old_wan} -> {new_wan[0]} under TCP (prc/prc): "
        f"tunnel dark {got['dark_s']:.2f} s, TCP receiver stalled {got['tcp_stall_s']:.2f} s, "
        f"path {got['path']}, new handshakes {got['new_handshakes']}, "
        f"{b.name} now sends to {remote['type']} {remote['address']}",
    )
    # The peer found the new address (directly, or through a relay if it had to).
    assert remote["address"].startswith(f"{new_wan[0]}:") or got["path"] == "relay", remote
    dep.assert_ping(b, a)


def test_loss_and_delay_during_setup(res_dep: Deployment, request: pytest.FixtureRequest) -> None:
    dep = res_dep
    lab = dep.lab
    a, b = dep.node("n5"), dep.node("n6")  # prc, prc
    dep.fresh_sites(a, b)
    for node in (a, b):
        lab.set_netem(node.site, loss=10, delay_ms=50)
    dep.start_node(a, peers=[b])
    dep.wait_ready(a)
    t_up = time.monotonic()
    dep.start_node(b, peers=[a])
    first_ping = dep.first_ping(a, b, timeout=CONNECT_TIMEOUT + 15) - t_up
    dep.wait_connected([a, b])
    entry = dep.peer_status(a, b)
    # Each echo crosses four impaired link directions: ~66 % come back; 5 of 20 is plenty.
    pings = dep.lab.exec(
        a.site, "ping", "-n", "-c", "20", "-i", "0.2", "-W", "2", b.tunnel_ip, timeout=60
    )
    replies = pings.stdout.count("bytes from")
    report(
        request,
        f"[node-resilience] 10 % loss + 50 ms delay on both sites (prc/prc): first ping "
        f"{first_ping:.2f} s after the second `p2ptun up`, path {entry['path']}, "
        f"rtt {entry['rtt_ms']} ms, {replies}/20 pings answered",
    )
    assert replies >= 5, pings.stdout + dep.logs()
    dep.start_transfer(a, b, 64 * 1024).finish(timeout=60)

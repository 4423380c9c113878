"""End to end in the NAT lab: a rendezvous on the public server, two ``p2ptun up`` nodes behind
NATs, traffic through the tunnel.

Here: a relayed path moves to a direct one without a new handshake, a host address change
restarts ICE under a live TCP connection, and rendezvous loss leaves the tunnel running. The
NAT-type matrix (direct or relayed, UDP blocked, coturn) is ``test_node_matrix.py``; NAT
flushing/renumbering and loss/delay are ``test_node_resilience.py``; three nodes, SIGHUP and
SIGTERM teardown are ``test_node_mesh.py``; the shared setup is ``nodelab.py``.

Every process is started with ``lab.popen`` (stopped by PID when the lab closes), every file
lives in the test's tmp directory, and the lab's namespaces are removed pass or fail. Waits are
bounded polls; the lab's forward counters tell whether traffic went straight between the
sites or through the server.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from nodelab import LAB_FIREWALL, Deployment, EchoConnection, Node, report

from p2plab.natlab import NatLab, wait_for_line, wait_until

pytestmark = [pytest.mark.lab, pytest.mark.slow]

LabFactory = Callable[..., NatLab]


@pytest.fixture
def deployment(natlab: LabFactory, tmp_path: Path) -> Iterator[Callable[..., Deployment]]:
    """Build a lab with one site per NAT type, a rendezvous, and a node per site (alice,
    bob, carol), each knowing the others; the nodes are stopped before the rendezvous."""
    made: list[Deployment] = []

    def make(
        sites: list[str],
        turn: str = "udp",
        blocked: list[tuple[str, str]] | None = None,
        ice_extra: str = "",
        extra: str = "",
    ) -> Deployment:
        lab = natlab(sites)
        for a, b in blocked or []:
            lab.block(a, b)
        dep = Deployment(lab, tmp_path)
        made.append(dep)
        names = ["alice", "bob", "carol"]
        for i, _site in enumerate(sites):
            dep.add_node(names[i], f"site{i + 1}", f"10.77.0.{i + 1}/24")
        dep.start_rendezvous()
        for node in dep.nodes:
            dep.start_node(node, turn=turn, ice_extra=ice_extra, extra=extra)
        return dep

    yield make
    for dep in made:
        dep.stop_all()


def test_relay_moves_to_direct_without_new_handshake(
    deployment: Callable[..., Deployment],
) -> None:
    # Hole punching fails at first: relayed.
    dep = deployment(["cone", "cone"], blocked=[("site1", "site2")])
    lab = dep.lab
    alice, bob = dep.nodes
    dep.wait_connected()
    assert dep.peer_status(alice, bob)["path"] == "relay"
    assert dep.ping(alice, bob).returncode == 0
    before = (alice.handshakes(), bob.handshakes())
    assert before == (1, 1)

    lab.unblock("site1", "site2")
    wait_until(
        lambda: (
            dep.peer_status(alice, bob).get("path") == "direct"
            and dep.peer_status(bob, alice).get("path") == "direct"
        ),
        30,
        interval=0.3,
        what="moved to the direct path",
    )
    lab.reset_counters()
    assert dep.ping(alice, bob).returncode == 0
    assert lab.direct_bytes("site1", "site2") > 0
    assert (alice.handshakes(), bob.handshakes()) == before


def test_network_change_restarts_ice_and_tcp_survives(
    deployment: Callable[..., Deployment],
) -> None:
    dep = deployment(["cone", "prc"])
    alice, bob = dep.nodes
    dep.wait_connected()
    lab = dep.lab
    conn = EchoConnection(dep, alice, bob)
    assert conn.roundtrip("before") == "before"
    old_local = dep.peer_status(alice, bob)["local_candidate"]
    handshakes = alice.handshakes()

    new_addr = lab.set_host_address("site1")  # the node's LAN address changes under it
    wait_until(
        lambda: (
            dep.peer_status(alice, bob).get("local_candidate") not in (None, old_local)
            and dep.peer_status(alice, bob).get("state") == "connected"
        ),
        30,
        interval=0.3,
        what="ICE restarted onto a new pair",
    )
    assert "network change" in alice.log()
    # The same TCP connection carries on over the new path; the WireGuard session too.
    assert conn.roundtrip("after") == "after"
    assert alice.handshakes() == handshakes
    assert new_addr != "10.0.1.2"


def test_partial_checksums_follow_what_the_peer_offers(
    deployment: Callable[..., Deployment], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between two p2ptun nodes TCP segments leave their checksums partial (each node offered
    to complete them); a peer restarted with ``P2PTUN_OFFLOAD`` lacking ``partial`` offers
    nothing and uses nothing, and full checksums flow both ways."""
    dep = deployment(["cone", "cone"])
    alice, bob = dep.nodes
    dep.wait_connected()

    def partial(node: Node) -> int:
        return int(dep.debug(node)["tunnel"]["tunnel"]["partial_checksums"])

    size = 4 << 20
    dep.tcp_transfer(alice, bob, size)
    dep.tcp_transfer(bob, alice, size, port=5002)
    assert partial(alice) > size // 1500 and partial(bob) > size // 1500

    dep.stop_node(bob)
    monkeypatch.setenv("P2PTUN_OFFLOAD", "udp,tun,tso")
    dep.start_node(bob)
    monkeypatch.delenv("P2PTUN_OFFLOAD")
    dep.wait_connected()
    before = partial(alice)
    dep.tcp_transfer(alice, bob, size, port=5003)
    dep.tcp_transfer(bob, alice, size, port=5004)
    assert partial(alice) == before and partial(bob) == 0
    assert dep.debug(bob)["tunnel"]["tunnel"]["tso_segments"] > 0  # TSO itself still on


@pytest.mark.parametrize("gso", [0, 16], ids=["datagrams", "udp-segment"])
def test_inner_udp_runs_cross_as_super_datagrams(
    deployment: Callable[..., Deployment], gso: int
) -> None:
    """UDP through the tunnel with the TUN device's UDP offloads (USO): bob writes runs of
    alice's datagrams as UDP GSO packets (his kernel cuts them again), and an application's
    ``UDP_SEGMENT`` sends at alice are cut by her node before encryption. Every datagram
    arrives intact and separate."""
    udp_in = '[[firewall.inbound]]\nproto = "udp"\nport = 5301\n'
    dep = deployment(["cone", "cone"], extra=LAB_FIREWALL + udp_in)
    alice, bob = dep.nodes
    dep.wait_connected()
    lab = dep.lab
    sink = lab.popen(
        bob.site,
        [sys.executable, "-m", "p2plab.udpcheck", "sink", bob.tunnel_ip, "5301"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert sink.stdout is not None
    assert wait_for_line(sink.stdout, "ready", 10.0) is not None
    count, size = 4096, 1200
    out = lab.exec(
        alice.site,
        *(sys.executable, "-m", "p2plab.udpcheck", "source", bob.tunnel_ip, "5301"),
        *(str(count), str(size), str(gso)),
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    got, _ = sink.communicate(timeout=30)
    result = json.loads(got.strip().splitlines()[-1])
    sent = dep.debug(alice)["tunnel"]["tunnel"]
    received = dep.debug(bob)["tunnel"]
    assert result["bad"] == 0, result
    # UDP: a few may be lost on a loaded machine, not more.
    assert result["datagrams"] >= count * 0.98, (result, sent, received)
    assert received["tun"]["tx_dropped"] == 0, received["tun"]  # the kernel took every write
    received = received["tunnel"]
    assert received["gro_segments"] > 0, received  # runs written as UDP GSO packets
    if gso:
        assert sent["uso_packets"] > 0 and sent["uso_datagrams"] >= sent["uso_packets"], sent
    else:
        assert sent["uso_packets"] == 0, sent


def test_on_demand_connects_at_the_first_packet_and_closes_when_idle(
    deployment: Callable[..., Deployment], request: pytest.FixtureRequest
) -> None:
    """Both nodes on demand: online but no tunnel until alice pings bob; the first reply
    comes once signaling, ICE and the handshake are done; after idle_timeout without data the
    tunnel closes on both sides (and stays closed); bob's traffic opens it again."""
    dep = deployment(["cone", "prc"], ice_extra="on_demand = true\nidle_timeout = 10\n")
    alice, bob = dep.nodes

    def idle(a: Node, b: Node) -> bool:
        peer = dep.peer_status(a, b)
        return peer.get("state") == "disconnected" and peer.get("reason") == (
            "idle: connects on demand"
        )

    wait_until(lambda: idle(alice, bob) and idle(bob, alice), 30, what="both online, idle")
    assert "offer" not in alice.log() and "offer" not in bob.log()
    t0 = time.monotonic()
    first = dep.first_ping(alice, bob) - t0
    assert "connecting on demand" in alice.log()
    assert dep.peer_status(alice, bob)["state"] == "connected"
    dep.tcp_transfer(alice, bob, 1 << 20)
    t_data = time.monotonic()
    wait_until(lambda: idle(alice, bob) and idle(bob, alice), 40, interval=0.5, what="idle close")
    closed_after = time.monotonic() - t_data
    assert "closing the idle tunnel" in alice.log() + bob.log()
    assert dep.peer_status(alice, bob)["path"] is None
    time.sleep(2.0)  # past the first retry delay: nobody reconnects without traffic
    assert idle(alice, bob) and idle(bob, alice)
    t0 = time.monotonic()
    again = dep.first_ping(bob, alice) - t0
    report(
        request,
        f"[on demand] first packet alice->bob answered after {first:.2f} s; closed "
        f"{closed_after:.1f} s after the last data (idle_timeout 10 s); bob->alice again "
        f"after {again:.2f} s",
    )


def test_rendezvous_loss_keeps_the_tunnel(deployment: Callable[..., Deployment]) -> None:
    dep = deployment(["cone", "cone"])
    alice, bob = dep.nodes
    dep.wait_connected()
    assert dep.rendezvous is not None
    dep.lab.stop(dep.rendezvous)
    wait_until(
        lambda: dep.status(alice).get("node", {}).get("rendezvous") == "disconnected",
        30,
        interval=0.3,
        what="rendezvous seen as gone",
    )
    # Well past the signaling dead-peer timeout: the tunnel does not care.
    for _ in range(3):
        assert dep.ping(alice, bob, count=2).returncode == 0
        assert dep.peer_status(alice, bob)["state"] == "connected"
        time.sleep(2)
    dep.start_rendezvous()
    wait_until(
        lambda: all(
            dep.status(n).get("node", {}).get("rendezvous") == "connected" for n in dep.nodes
        ),
        60,
        interval=0.5,
        what="both nodes back on the rendezvous",
    )
    assert dep.ping(alice, bob).returncode == 0

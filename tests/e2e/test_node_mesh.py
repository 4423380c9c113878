"""Three real daemons (docs/ARCHITECTURE.md §4): a peer added by SIGHUP, a full mesh, and SIGTERM
teardown that leaves nothing behind.

One lab for the module (sites: cone, prc, sym, so the mesh has two direct pairs and a relayed
one: cone/prc, cone/sym direct; prc/sym relayed), one rendezvous, one node identity per site
(``n1``, ``n2``, ``n3``); each test starts the nodes it needs and stops them at the end.
"""

from __future__ import annotations

import base64
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from itertools import permutations

import pytest
from nodelab import CONNECT_TIMEOUT, Deployment, Node, keypair, report, wait_log

from p2plab.natlab import NatLab

pytestmark = [pytest.mark.lab, pytest.mark.slow]

LabFactory = Callable[..., NatLab]

SITES = ("cone", "prc", "sym")
#: Seconds from the SIGHUP to the first ping reply from the added peer, at most.
SIGHUP_BOUND = 2.0
EXPECTED_PATHS = {("n1", "n2"): "direct", ("n1", "n3"): "direct", ("n2", "n3"): "relay"}


@pytest.fixture(scope="module")
def mesh(
    natlab_module: LabFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    # n3 (carol) gets the smallest public key: her offers win glare against both others
    # (docs/ARCHITECTURE.md §2: raw 32 bytes compared), which the SIGHUP test relies on.
    small, mid, large = sorted((keypair() for _ in SITES), key=lambda k: base64.b64decode(k[1]))
    dep = Deployment.per_site(
        natlab_module(list(SITES)), tmp_path_factory.mktemp("mesh"), keys=[mid, large, small]
    )
    try:
        yield dep
    finally:
        dep.stop_all()


@pytest.fixture
def mesh_dep(mesh: Deployment) -> Iterator[Deployment]:
    """The module's deployment; the nodes a test started are stopped after it."""
    try:
        yield mesh
    finally:
        mesh.stop_nodes()


def _ping_all(dep: Deployment, nodes: list[Node]) -> None:
    for src, dst in permutations(nodes, 2):
        dep.assert_ping(src, dst, count=2)


def _check_paths(dep: Deployment) -> None:
    for (x, y), path in EXPECTED_PATHS.items():
        dep.wait_path(dep.node(x), dep.node(y), path)


def test_sighup_adds_a_third_peer(mesh_dep: Deployment, request: pytest.FixtureRequest) -> None:
    dep = mesh_dep
    alice, bob, carol = dep.nodes
    dep.fresh_sites(alice, bob, carol)
    dep.start_node(alice, peers=[bob])
    dep.start_node(bob, peers=[alice])
    dep.wait_connected([alice, bob])
    dep.assert_ping(alice, bob)
    assert [p["name"] for p in dep.status(alice)["peers"]] == ["n2"]

    # carol knows both from the start and offers to both at once; they refuse (she is not in
    # their configs yet). Then alice and bob learn about her by SIGHUP and offer to her: her
    # key is the smallest, so her (refused) offers would win glare over theirs.
    dep.start_node(carol, peers=[alice, bob])
    dep.wait_ready(carol)
    t_hup = time.monotonic()
    for node in (alice, bob):
        dep.node_config(node, peers=[p for p in dep.nodes if p is not node])
        assert node.proc is not None
        node.proc.send_signal(signal.SIGHUP)
    first_ping = {n.name: dep.first_ping(n, carol) - t_hup for n in (alice, bob)}
    dep.wait_connected([alice, bob, carol])
    report(
        request,
        "[node-mesh] SIGHUP added carol: first ping after the SIGHUP "
        + ", ".join(f"{name} -> n3 {t:.2f} s" for name, t in first_ping.items()),
    )
    # A peer added by SIGHUP connects as fast as a peer at start (n1 -> n3 direct, n2 -> n3
    # relayed: typically 0.25 and 0.65 s here).
    slow = {name: t for name, t in first_ping.items() if t > SIGHUP_BOUND}
    assert not slow, f"first ping later than {SIGHUP_BOUND} s after the SIGHUP: {slow}"
    _check_paths(dep)
    _ping_all(dep, [alice, bob, carol])
    for node in (alice, bob):
        log = node.log()
        assert "config reloaded" in log and "peer added peer=n3" in log, log[-2000:]
        assert "peer removed" not in log and "reload refused" not in log
        assert node.proc is not None and node.proc.poll() is None
    # The alice-bob tunnel was not rebuilt by the reload: still its first handshake.
    for node, peer in ((alice, bob), (bob, alice)):
        assert node.log().count(f"handshake completed peer={peer.pub[:8]}") == 1, node.log()
    # Nobody had to wait for an unanswered offer to time out (OFFER_TIMEOUT, 20 s) and be
    # made again: the refused offers were not left standing in the way.
    for node in (alice, bob, carol):
        assert "offer not answered" not in node.log(), dep.logs()


def _netns_list(prefix: str) -> set[str]:
    """Named network namespaces whose names start with ``prefix`` (this lab's: a machine
    shared with other test runs has theirs come and go meanwhile)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    names = {line.split()[0] for line in out.stdout.splitlines() if line.strip()}
    return {name for name in names if name.startswith(prefix)}


def _allocations(log: str, name: str) -> tuple[Counter[str], Counter[str]]:
    """TURN allocations of node ``name`` in the rendezvous log: client 5-tuples created, and
    the same released by the client (Refresh with lifetime 0)."""
    created: Counter[str] = Counter()
    released: Counter[str] = Counter()
    clients = set()
    for m in re.finditer(r"allocation created client=(\S+) .*user=\d+:(\S+)", log):
        if m.group(2) == name:
            created[m.group(1)] += 1
            clients.add(m.group(1))
    for m in re.finditer(r'allocation deleted client=(\S+) reason="refreshed to 0"', log):
        if m.group(1) in clients:
            released[m.group(1)] += 1
    return created, released


def _after_stopping(log: str) -> list[str]:
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if " stopping " in line:
            return lines[i + 1 :]
    return []


def test_mesh_then_sigterm_leaves_nothing_behind(
    mesh_dep: Deployment, request: pytest.FixtureRequest
) -> None:
    dep = mesh_dep
    lab = dep.lab
    nodes = list(dep.nodes)
    dep.fresh_sites(*nodes)
    namespaces = _netns_list(lab.prefix)
    rv_mark = dep.rendezvous_log_size()
    t_up = time.monotonic()
    for node in nodes:
        dep.start_node(node)
    dep.wait_connected(nodes, timeout=CONNECT_TIMEOUT)
    connected = time.monotonic() - t_up
    _check_paths(dep)
    _ping_all(dep, nodes)
    report(request, f"[node-mesh] 3-node mesh: all pairs connected {connected:.2f} s after start")

    # SIGTERM one at a time: each exits 0, the others hear its goodbye.
    for i, node in enumerate(nodes):
        assert dep.stop_node(node) == 0, node.log()[-2000:]
        for other in nodes[i + 1 :]:
            wait_log(other, f"peer said bye peer={node.name}", 10.0)

    for node in nodes:
        ns = lab.ns(node.site)
        links = lab.exec(node.site, "ip", "-o", "link", "show").stdout
        assert node.ifname not in links, links
        assert "p2p" not in links, links
        routes = lab.exec(node.site, "ip", "route", "show", "table", "all").stdout
        assert "10.77." not in routes, routes
        # No process left in the namespace, so no socket either.
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
        assert pids.stdout.strip() == "", pids.stdout
        sockets = lab.exec(node.site, "ss", "-Htuanp", "exclude", "time-wait").stdout
        assert sockets.strip() == "", sockets
        assert "Traceback" not in node.log()
    assert list(dep.run_dir.glob("*.sock")) == []
    assert _netns_list(lab.prefix) == namespaces == set(lab.namespaces)

    # Every TURN allocation a node made was released by the node itself on the way out.
    rv_log = dep.rendezvous_log(rv_mark)
    for node in nodes:
        created, released = _allocations(rv_log, node.name)
        assert created and released == created, (node.name, created, released)

    # Going down means going down: no new relay, no new offer once SIGTERM arrived.
    late = {
        node.name: [
            line
            for line in _after_stopping(node.log())
            if "relay allocated" in line or "node.peer offer" in line
        ]
        for node in nodes
    }
    assert not any(late.values()), late

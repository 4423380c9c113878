"""Why a path is what it is, with real daemons in the NAT lab: ``p2ptun status`` (``reason``,
``reason_facts``) and ``p2ptun ping PEER --until-direct``.

One lab for the module (sites cone, cone, sym, sym, prc, udp-blocked) and one rendezvous;
each case starts the two nodes it needs and stops them:

- cone / cone: direct, the reason names the pair's candidate types on both sides, and the
  readable status lists it;
- sym / sym: relayed through the rendezvous' TURN, the reason names the symmetric NAT (both
  nodes' checks through the relays show the NATs mapping per destination), and
  ``--until-direct`` gives up after its timeout with exit 1 and that reason;
- cone / cone with the direct route blocked in the lab's internet: relayed at first;
  ``--until-direct`` runs meanwhile, the block is lifted, and it exits 0 once the nodes moved
  to the direct pair (their direct retry), saying how long that took;
- cone / sym: direct, and the cone side sees the peer's symmetric NAT (its check came from a
  port no server saw); prc / sym: relayed, the prc side names the peer's symmetric NAT and
  the sym side its own; udp-blocked / cone: relayed over TURN/TCP, the blocked side has no
  server-reflexive candidate and says so.

Each case prints the path, the reason and the time from the second ``p2ptun up`` to the first
ping reply through the tunnel; nothing asserts on time.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from nodelab import RV, Deployment, Node, report

from p2plab.natlab import NatLab, wait_for_line, wait_until

pytestmark = [pytest.mark.lab, pytest.mark.slow]

LabFactory = Callable[..., NatLab]

SITES = ("cone", "cone", "sym", "sym", "prc", "udp-blocked")
RESULTS: list[str] = []


@pytest.fixture(scope="module")
def reasons(
    natlab_module: LabFactory, tmp_path_factory: pytest.TempPathFactory, request: Any
) -> Iterator[Deployment]:
    dep = Deployment.per_site(natlab_module(list(SITES)), tmp_path_factory.mktemp("reason"))
    try:
        yield dep
    finally:
        dep.stop_all()
        if RESULTS:
            report(request, "\n[path-reason] path, reason, second `p2ptun up` -> first ping")
            for line in RESULTS:
                report(request, f"[path-reason]   {line}")


@pytest.fixture
def dep(reasons: Deployment) -> Iterator[Deployment]:
    try:
        yield reasons
    finally:
        reasons.stop_nodes()


def _cli(dep: Deployment, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "p2ptun", *args],
        capture_output=True,
        text=True,
        env=dep.env(),
        timeout=timeout,
    )


def _start_pair(dep: Deployment, a: Node, b: Node, **config: Any) -> float:
    """Start ``a`` then ``b`` (each knowing the other); seconds from ``b``'s start to the
    first ping reply from ``a`` through the tunnel."""
    dep.fresh_sites(a, b)
    dep.start_node(a, peers=[b], **config)
    dep.wait_ready(a)
    t_up = time.monotonic()
    dep.start_node(b, peers=[a], **config)
    return dep.first_ping(a, b) - t_up


def _record(case: str, entry: dict[str, Any], first_ping: float) -> None:
    line = f"{case:<16} path={entry['path']:<6} first ping {first_ping:5.2f} s  {entry['reason']}"
    RESULTS.append(line)
    print(f"[path-reason] {line}")


def test_cone_cone_direct_with_its_candidate_types(dep: Deployment) -> None:
    a, b = dep.nodes[0], dep.nodes[1]
    first_ping = _start_pair(dep, a, b)
    dep.wait_path(a, b, "direct")
    for x, y in ((a, b), (b, a)):
        entry = dep.peer_status(x, y)
        local, remote = entry["local_candidate"]["type"], entry["remote_candidate"]["type"]
        assert entry["reason"] == f"direct ({local}↔{remote})", entry
        assert entry["reason_facts"]["remote_nat"] != "symmetric", entry
        assert entry["reason_facts"]["local_nat"] != "symmetric", entry
        assert entry["reason_facts"]["relay_server"] is None
    entry = dep.peer_status(a, b)
    _record("cone/cone", entry, first_ping)
    table = _cli(dep, "status", "--interface", a.ifname)
    assert table.returncode == 0, table.stderr
    assert f"  {b.name}: {entry['reason']}" in table.stdout.splitlines(), table.stdout
    # Plain ping is unchanged: one probe of the selected pair.
    plain = _cli(dep, "ping", b.name, "--interface", a.ifname)
    assert plain.returncode == 0 and plain.stdout.startswith(f"{b.name}: direct ("), plain
    assert " rtt " in plain.stdout, plain.stdout
    # Direct already: --until-direct answers at once, exit 0.
    ping = _cli(dep, "ping", b.name, "--until-direct", "--interface", a.ifname)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert ping.stdout.startswith(f"{b.name}: direct for "), ping.stdout
    assert "rtt " in ping.stdout


def test_sym_sym_relayed_and_the_reason_names_the_symmetric_nat(dep: Deployment) -> None:
    a, b = dep.nodes[2], dep.nodes[3]
    first_ping = _start_pair(dep, a, b)
    dep.wait_path(a, b, "relay")
    found: dict[str, dict[str, Any]] = {}

    def named() -> bool:
        found["a"], found["b"] = dep.peer_status(a, b), dep.peer_status(b, a)
        return all("symmetric NAT" in str(e.get("reason")) for e in found.values())

    try:
        wait_until(named, 20, interval=0.5, what="reason names the symmetric NAT")
    except TimeoutError:
        raise AssertionError(f"reasons: {found}\n" + dep.logs()) from None
    for entry in found.values():
        assert entry["path"] == "relay"
        assert entry["reason"].startswith("relay: "), entry["reason"]
        assert "no port mapping on either side, no IPv6" in entry["reason"]
        assert entry["reason_facts"]["relay_server"] == RV
        assert entry["reason_facts"]["remote_nat"] == "symmetric"
    _record("sym/sym", found["a"], first_ping)
    ping = _cli(dep, "ping", b.name, "--until-direct", "--timeout", "2", "--interface", a.ifname)
    assert ping.returncode == 1, ping.stdout + ping.stderr
    assert ping.stdout.startswith(f"{b.name}: relay: "), ping.stdout
    err = ping.stderr.strip()
    assert err.startswith(f"p2ptun ping: no direct path to {b.name} within 2 s (relay: "), err
    assert "symmetric NAT" in err and len(ping.stderr.splitlines()) == 1


def test_until_direct_waits_for_the_direct_path_after_a_relayed_start(dep: Deployment) -> None:
    a, b = dep.nodes[0], dep.nodes[1]
    lab = dep.lab
    lab.block(a.site, b.site)
    waiter = None
    try:
        first_ping = _start_pair(dep, a, b)
        entry = dep.wait_path(a, b, "relay")
        assert entry["reason"].startswith("relay: "), entry
        _record("cone/cone (blocked)", entry, first_ping)
        argv = ["-m", "p2ptun", "ping", b.name, "--until-direct", "--timeout", "90"]
        waiter = subprocess.Popen(
            [sys.executable, *argv, "--interface", a.ifname],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dep.env(),
        )
        assert waiter.stdout is not None
        told = wait_for_line(waiter.stdout, "waiting up to 90 s for a direct path", 15)
        assert told is not None and told.startswith(f"{b.name}: relay: "), told
        unblocked = time.monotonic()
        lab.unblock(a.site, b.site)
        out, err = waiter.communicate(timeout=120)
        took = time.monotonic() - unblocked
        assert waiter.returncode == 0, out + err + dep.logs()
        assert out.startswith(f"{b.name}: direct after "), out
        after = float(out.split("direct after ")[1].split(" s")[0])
        entry = dep.peer_status(a, b)
        assert entry["path"] == "direct" and entry["reason"].startswith("direct ("), entry
        line = f"--until-direct: direct {took:.1f} s after the unblock ({after:.1f} s after start)"
        RESULTS.append(line)
        print(f"[path-reason] {line}")
        dep.assert_ping(a, b)
    finally:
        if waiter is not None and waiter.poll() is None:
            waiter.kill()
            waiter.wait(5)
        lab.unblock(a.site, b.site)


# (case, site index of a, of b, path, what a's reason must say, what b's must, TURN transport)
MORE = [
    ("cone/sym", 1, 3, "direct", "direct (", "direct (", "udp"),
    (
        "prc/sym",
        5,
        3,
        "relay",
        "peer behind symmetric NAT",
        "this node behind symmetric NAT",
        "udp",
    ),
    (
        "udp-blocked/cone",
        6,
        1,
        "relay",
        "no server-reflexive candidate here (UDP blocked?)",
        "no server-reflexive candidate on the peer (UDP blocked there?)",
        "tcp",
    ),
]


@pytest.mark.parametrize("case", MORE, ids=[c[0] for c in MORE])
def test_more_nat_pairs_and_their_reasons(
    dep: Deployment, case: tuple[str, int, int, str, str, str, str]
) -> None:
    name, i, j, path, says_a, says_b, turn = case
    a, b = dep.nodes[i - 1], dep.nodes[j - 1]
    first_ping = _start_pair(dep, a, b, turn=turn)
    dep.wait_path(a, b, path)
    found: dict[str, dict[str, Any]] = {}

    def said() -> bool:
        found["a"], found["b"] = dep.peer_status(a, b), dep.peer_status(b, a)
        return says_a in str(found["a"].get("reason")) and says_b in str(found["b"].get("reason"))

    try:
        wait_until(said, 20, interval=0.5, what=f"{name}: reasons")
    except TimeoutError:
        raise AssertionError(f"{name}: reasons {found}\n" + dep.logs()) from None
    for entry in found.values():
        assert entry["path"] == path and entry["reason"].startswith(f"{path}"), entry
    if name == "cone/sym":
        assert found["a"]["reason_facts"]["remote_nat"] == "symmetric", found["a"]
    _record(name, found["a"], first_ping)
    RESULTS.append(f"{'':<16} other side: {found['b']['reason']}")
    dep.assert_ping(a, b)

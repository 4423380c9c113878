"""M5 against the real node daemon in the NAT lab: a flood of WireGuard initiations at a node's
UDP port (valid MAC1 — the attacker knows the node's public key) is met with cookie replies,
the node's CPU per hostile initiation stays small, and its tunnel keeps carrying pings.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "e2e"))
from hostile_env import proc_stats
from nodelab import Deployment, PingStream

from p2plab.natlab import NatLab
from p2ptun.node import control

pytestmark = [pytest.mark.lab, pytest.mark.slow]

RATE = 3000
SECONDS = 6.0


def test_node_demands_cookies_under_a_flood(natlab: Callable[..., NatLab], tmp_path: Path) -> None:
    lab = natlab(["none", "none", "none"])
    dep = Deployment(lab, tmp_path)
    alice = dep.add_node("alice", "site1", "10.77.0.1/24")
    bob = dep.add_node("bob", "site2", "10.77.0.2/24")
    dep.start_rendezvous()
    try:
        for node in (alice, bob):
            dep.start_node(node, peers=[n for n in (alice, bob) if n is not node])
        dep.wait_connected([alice, bob])
        reply = control.request(
            str(dep.run_dir / f"{alice.ifname}.sock"), {"cmd": "debug"}, timeout=10
        )
        port = reply["debug"]["tunnel"]["listen_port"]
        target = f"{lab.site('site1').host_addr}:{port}"
        assert alice.proc is not None
        pings = PingStream(dep, bob, alice, interval=0.05, duration=int(SECONDS) + 2)
        before = proc_stats(alice.proc.pid)
        flood = lab.exec(
            "site3",
            sys.executable,
            "-m",
            "p2plab.hostile",
            "wg-flood",
            target,
            alice.pub,
            "--rate",
            str(RATE),
            "--seconds",
            str(SECONDS),
            timeout=60,
        )
        after = proc_stats(alice.proc.pid)
        time.sleep(1.0)
        pings.stop()
        result = json.loads(flood.stdout.strip().splitlines()[-1])
        replies = len(pings.replies())
        expected = int((SECONDS + 1) / 0.05)
        per = (after.cpu - before.cpu) / max(1, result["sent"])
        counters = control.request(
            str(dep.run_dir / f"{alice.ifname}.sock"), {"cmd": "debug"}, timeout=10
        )["debug"]["tunnel"]["counters"]
        print(
            f"FIGURE M5 node: {result['sent']} initiations in {SECONDS:.0f} s, "
            f"{result['cookie_replies']} cookie replies; alice's CPU "
            f"{per * 1e6:.0f} µs per initiation ({after.cpu - before.cpu:.2f} s); "
            f"pings bob->alice {replies}/{expected}; "
            f"handshake work: {counters.get('unknown_peer', 0)} unknown-peer initiations"
        )
        assert result["cookie_replies"] >= 0.8 * result["sent"]
        assert per < 100e-6
        assert replies >= 0.95 * expected
    finally:
        dep.stop_all()

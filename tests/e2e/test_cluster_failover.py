"""A rendezvous cluster in the NAT lab: two ``p2ptun rendezvous`` instances on the lab's
server (signaling, STUN and TURN on :data:`RV` and on :data:`RV_ALT`) sharing a redis-server
started in the server's namespace, and two real ``p2ptun up`` nodes behind port-restricted
NATs, each listing both instances (its own first). The nodes connect through the two
instances; then one instance is killed (SIGKILL) or stopped (SIGTERM): its node registers on
the other within 5 s and the tunnel between them never stops (a ping every 0.1 s across it).
"""

from __future__ import annotations

import itertools
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from nodelab import RV, RV_ALT, Deployment, Node, PingStream, report

from p2plab.natlab import NatLab, wait_until

pytestmark = [
    pytest.mark.lab,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
]

LabFactory = Callable[..., NatLab]
REDIS_PORT = 6390


def registered_with(node: Node, address: str) -> bool:
    """Has ``node`` logged its registration with the instance at ``address``:7070?"""
    return any(
        "rendezvous connected" in line and f"{address}:7070" in line
        for line in node.log().splitlines()
    )


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
def test_stopped_instance_keeps_tunnels(
    natlab: LabFactory, tmp_path: Path, request: pytest.FixtureRequest, how: signal.Signals
) -> None:
    lab = natlab(["prc", "prc"])
    dep = Deployment(lab, tmp_path)
    a = dep.add_node("alice", "site1", "10.77.0.1/24")
    b = dep.add_node("bob", "site2", "10.77.0.2/24")
    redis = lab.popen(
        "server",
        [
            "redis-server",
            "--port",
            str(REDIS_PORT),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
            "--loglevel",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(
            lambda: (
                lab.exec("server", "redis-cli", "-p", str(REDIS_PORT), "ping").stdout.strip()
                == "PONG"
            ),
            10,
            what="redis-server",
        )
        cluster = f'[cluster]\nredis = "redis://127.0.0.1:{REDIS_PORT}/0"\npresence_ttl = 6\n'
        dep.rendezvous_extra = cluster + 'instance = "rv-a"\n'
        dep.start_rendezvous()
        # The second instance: the same config on the server's second address.
        text = (tmp_path / "rendezvous.toml").read_text()
        alt = tmp_path / "rendezvous-b.toml"
        alt.write_text(text.replace(RV, RV_ALT).replace('"rv-a"', '"rv-b"'))
        alt.chmod(0o600)
        with (tmp_path / "rendezvous-b.log").open("ab") as log:
            rv_b = lab.popen(
                "server",
                [
                    sys.executable,
                    "-m",
                    "p2ptun",
                    "rendezvous",
                    "-c",
                    str(alt),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dep.env(),
            )
        # Both instances serve (and are linked to Redis) before the nodes start, so that each
        # node registers with its own first.
        for log_path in (dep.rendezvous_log_path, tmp_path / "rendezvous-b.log"):
            wait_until(
                lambda path=log_path: (
                    "rendezvous ready" in path.read_text(errors="replace")
                    and "cluster: linked to Redis" in path.read_text(errors="replace")
                ),
                15,
                what=f"{log_path.name}: ready and linked",
            )
        dep.node_rendezvous = {
            "alice": f'["{RV}:7070", "{RV_ALT}:7070"]',
            "bob": f'["{RV_ALT}:7070", "{RV}:7070"]',
        }
        dep.start_node(a, peers=[b])
        dep.start_node(b, peers=[a])
        dep.wait_connected([a, b])
        dep.assert_ping(a, b)
        assert registered_with(b, RV_ALT)
        stream = PingStream(dep, a, b, interval=0.1, duration=40)
        time.sleep(2)
        killed = time.time()
        rv_b.kill()
        rv_b.wait(5)
        wait_until(
            lambda: registered_with(b, RV),
            5,
            what="bob registered on the other instance",
        )
        moved = time.time() - killed
        time.sleep(8)  # past the presence TTL of the killed instance's keys
        stream.stop()
        replies = [t for t in stream.replies() if t > killed - 2]
        gaps = [later - earlier for earlier, later in itertools.pairwise(replies)]
        worst = max(gaps)
        report(
            request,
            f"{how.name}: bob on the other instance {moved:.2f} s later; "
            f"longest ping gap across it {worst:.2f} s ({len(replies)} replies)",
        )
        assert moved < 5.0
        assert worst < 1.0, f"the tunnel stopped for {worst:.2f} s"
        assert replies[-1] > killed + 7  # the stream ran on to the end
        dep.assert_ping(b, a)
    finally:
        dep.stop_all()
        lab.stop(redis)

"""An exit node for both families with real daemons in a dual-stack NAT lab (README, "Subnet
routes and exit node").

Two cone sites with IPv6 behind a home router's firewall (``p2plab/natlab6.py``); ``home``
(site 1) is signed for ``0.0.0.0/0`` and ``::/0`` and advertises both, ``laptop`` (site 2,
overlay addresses of both families) selects it; ``home`` also routes an IPv6 LAN
(``fd00:1::/64``) with a plain host on it. The lab's server answers each TCP connection
with the source it saw, on an IPv4 and an IPv6 address: both see ``home``'s site, the tunnel
between the two nodes (direct, over IPv6 or IPv4: each family's underlay marked) keeps
working, and SIGTERM leaves the rules, tables and nftables of both families as they were.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from nodelab import (
    CONNECT_TIMEOUT,
    RV_ALT,
    WHOAMI_CLIENT,
    WHOAMI_SERVER,
    Deployment,
    report,
    routing_snapshot,
    wait_log,
)

from p2plab.lanhost import add_lan_host
from p2plab.natlab import NatLab, wait_for_line

pytestmark = [pytest.mark.lab, pytest.mark.slow]

LabFactory = Callable[..., NatLab]
PORT = 5082
LAN6 = "fd00:1::/64"
"""An IPv6 LAN behind home (a plain host on it, p2plab.lanhost), signed and advertised."""


def test_exit_node_for_both_families(
    natlab: LabFactory, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    lab = natlab(["cone", "cone"], ipv6=True)
    dep = Deployment(lab, tmp_path)
    home = dep.add_node("home", "site1", "10.77.0.1/24", ifname=f"p2p{dep.tag}h")
    laptop = dep.add_node("laptop", "site2", "10.77.0.2/24", ifname=f"p2p{dep.tag}l")
    home.address6, laptop.address6 = "fd77::1/64", "fd77::2/64"

    def cli(*args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "p2ptun", *args],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=tmp_path,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    cli("ca", "init", "--network", "home", "--out", "ca")
    ca_pub = (tmp_path / "ca" / "ca.pub").read_text().strip()
    for node, routes in ((home, ["--routes", f"0.0.0.0/0,::/0,{LAN6}"]), (laptop, [])):
        cert = cli(
            "ca", "sign", "--ca", "ca", "--name", node.name, "--ip", ",".join(node.addresses),
            "--pubkey", node.pub, *routes,
        )  # fmt: skip
        (tmp_path / f"{node.name}.crt").write_text(cert)
    dep.rendezvous_extra = f'[[network]]\nca = "{ca_pub}"\n'
    lan = add_lan_host(lab, 1, "192.168.1.0/24", LAN6)
    server6 = lab.server6_addrs[1]
    for address in (RV_ALT, server6):
        proc = lab.popen(
            "server",
            [sys.executable, "-c", WHOAMI_SERVER, address, str(PORT)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        assert wait_for_line(proc.stdout, "ready", 10.0) is not None

    def network(name: str, exit_node: str = "") -> str:
        text = f'[network]\nca = "{ca_pub}"\ncert_file = "{tmp_path / f"{name}.crt"}"\n'
        return text + (f'exit_node = "{exit_node}"\n' if exit_node else "")

    def whoami(address: str) -> str:
        out = lab.exec("site2", sys.executable, "-c", WHOAMI_CLIENT, address, str(PORT))
        assert out.returncode == 0, out.stderr + dep.logs()
        return out.stdout.strip()

    try:
        before = routing_snapshot(lab, "site2")
        assert whoami(server6) == lab.site6("site2").host_addr
        dep.start_rendezvous()
        dep.start_node(
            home,
            peers=[],
            interface_extra=f'advertise_routes = ["0.0.0.0/0", "::/0", "{LAN6}"]\n',
            extra=network("home"),
        )
        dep.start_node(laptop, peers=[], extra=network("laptop", "home"))
        dep.wait_connected([home, laptop], timeout=CONNECT_TIMEOUT)
        wait_log(laptop, "exit node in use")
        assert dep.status(laptop)["node"]["exit_node"]["routes"] == ["0.0.0.0/0", "::/0"]
        assert dep.status(home)["node"]["routes"]["forwarding"] == {"ipv4": "on", "ipv6": "on"}
        assert whoami(server6) == lab.site6("site1").host_addr
        assert whoami(RV_ALT) == lab.site("site1").mapped_addr
        peer = dep.peer_status(laptop, home)
        assert peer["path"] == "direct", peer
        # An IPv6 subnet route: the plain host behind home answers over IPv6.
        assert LAN6 in peer["routes"]["accepted"], peer["routes"]
        assert lan.address6 is not None
        ping = lab.exec("site2", "ping", "-6", "-c", "2", "-i", "0.2", "-W", "2", lan.address6)
        assert ping.returncode == 0, ping.stdout + dep.logs()
        dep.assert_ping(laptop, home)
        report_path = peer["remote_candidate"]["address"]
        assert dep.stop_node(laptop) == 0, laptop.log()[-2000:]
        assert routing_snapshot(lab, "site2") == before
        report(request, f"[routes6] exit node for both families, tunnel direct to {report_path}")
    finally:
        dep.stop_all()

"""End to end in the NAT lab: a rendezvous on the public server, two ``p2ptun up`` nodes behind
NATs, traffic through the tunnel.

Every process is started with ``lab.popen`` (stopped by PID when the lab closes), every file
lives in the test's tmp directory, and the lab's namespaces are removed pass or fail. Waits are
bounded polls; the lab's forward counters tell whether traffic went straight between the
sites or through the server.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from p2ptun.keys import encode_key, generate_private_key, public_key
from p2ptun.lab.natlab import NatLab, wait_until

pytestmark = [pytest.mark.lab, pytest.mark.slow]

LabFactory = Callable[..., NatLab]
RV = "203.0.113.10"
CONNECT_TIMEOUT = 30.0
MB = 1 << 20

TCP_SERVER = """
import hashlib, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
print("ready", flush=True)
s.settimeout(60)
c, _ = s.accept()
c.settimeout(60)
h = hashlib.sha256()
n = 0
while True:
    data = c.recv(1 << 16)
    if not data:
        break
    h.update(data)
    n += len(data)
print(n, h.hexdigest(), flush=True)
"""

TCP_CLIENT = """
import hashlib, random, socket, sys
data = random.Random(int(sys.argv[3])).randbytes(int(sys.argv[4]))
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
c.sendall(data)
c.shutdown(socket.SHUT_WR)
c.recv(1)
print(len(data), hashlib.sha256(data).hexdigest(), flush=True)
"""


def _keys() -> tuple[str, str]:
    private = generate_private_key()
    return encode_key(private), encode_key(public_key(private))


@dataclass
class Node:
    name: str
    site: str
    ifname: str
    address: str
    key: str
    pub: str
    proc: subprocess.Popen[bytes] | None = None

    @property
    def tunnel_ip(self) -> str:
        return self.address.split("/")[0]


@dataclass
class Deployment:
    """A rendezvous on the lab's server and one node per site."""

    lab: NatLab
    workdir: Path
    tag: str = field(default_factory=lambda: secrets.token_hex(2))
    rv_key: tuple[str, str] = field(default_factory=_keys)
    nodes: list[Node] = field(default_factory=list)
    rendezvous: subprocess.Popen[bytes] | None = None

    @property
    def run_dir(self) -> Path:
        return self.workdir / "run"

    def env(self) -> dict[str, str]:
        return {**os.environ, "P2PTUN_RUN_DIR": str(self.run_dir)}

    def add_node(self, name: str, site: str, address: str) -> Node:
        key, pub = _keys()
        node = Node(name, site, f"p2p{self.tag}{name[0]}", address, key, pub)
        self.nodes.append(node)
        return node

    def start_rendezvous(self) -> None:
        secret = secrets.token_hex(16)
        nodes = "".join(
            f'[[node]]\nname = "{n.name}"\npublic_key = "{n.pub}"\n' for n in self.nodes
        )
        path = self.workdir / "rendezvous.toml"
        path.write_text(
            f'listen = "{RV}:7070"\nprivate_key = "{self.rv_key[0]}"\n'
            f'database = "{self.workdir}/rv.sqlite"\n'
            f'[stun]\nlisten = ["{RV}:3478"]\n'
            f'[turn]\nrealm = "lab"\nrelay_address = "{RV}"\nrelay_ports = "49152-49999"\n'
            f'auth_secret = "{secret}"\n' + nodes
        )
        path.chmod(0o600)
        log = (self.workdir / "rendezvous.log").open("ab")
        self.rendezvous = self.lab.popen(
            "server",
            [sys.executable, "-m", "p2ptun", "rendezvous", "-c", str(path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env(),
        )
        log.close()

    def node_config(self, node: Node, turn: str = "udp") -> Path:
        peers = "".join(
            f'[[peer]]\nname = "{p.name}"\npublic_key = "{p.pub}"\n'
            f'allowed_ips = ["{p.tunnel_ip}/32"]\n'
            for p in self.nodes
            if p is not node
        )
        path = self.workdir / f"{node.name}.toml"
        path.write_text(
            f'name = "{node.name}"\nprivate_key = "{node.key}"\n'
            f'[interface]\nname = "{node.ifname}"\naddress = ["{node.address}"]\n'
            f'[rendezvous]\naddress = "{RV}:7070"\npublic_key = "{self.rv_key[1]}"\n'
            f'[ice]\nstun = ["{RV}:3478"]\n'
            f'turn = [{{ url = "turn:{RV}:3478?transport={turn}" }}]\n' + peers
        )
        path.chmod(0o600)
        return path

    def start_node(self, node: Node, turn: str = "udp") -> None:
        path = self.node_config(node, turn)
        log = (self.workdir / f"{node.name}.log").open("ab")
        node.proc = self.lab.popen(
            node.site,
            [sys.executable, "-m", "p2ptun", "up", "-c", str(path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env(),
        )
        log.close()

    def status(self, node: Node) -> dict[str, Any]:
        out = subprocess.run(
            [sys.executable, "-m", "p2ptun", "status", "--json", "--interface", node.ifname],
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=15,
        )
        if out.returncode != 0:
            return {}
        status: dict[str, Any] = json.loads(out.stdout)
        return status

    def peer_status(self, node: Node, peer: Node) -> dict[str, Any]:
        for entry in self.status(node).get("peers", []):
            if entry["name"] == peer.name:
                return dict(entry)
        return {}

    def wait_connected(self, timeout: float = CONNECT_TIMEOUT) -> None:
        def all_connected() -> bool:
            return all(
                self.peer_status(a, b).get("state") == "connected"
                for a in self.nodes
                for b in self.nodes
                if a is not b
            )

        try:
            wait_until(all_connected, timeout, interval=0.2, what="all peers connected")
        except TimeoutError:
            raise AssertionError("nodes did not connect:\n" + self.logs()) from None

    def logs(self) -> str:
        parts = []
        for log in sorted(self.workdir.glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()[-30:]
            parts.append(f"--- {log.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    def ping(self, src: Node, dst: Node, count: int = 3) -> subprocess.CompletedProcess[str]:
        return self.lab.exec(
            src.site, "ping", "-c", str(count), "-i", "0.2", "-W", "2", dst.tunnel_ip, timeout=30
        )

    def tcp_transfer(self, src: Node, dst: Node, size: int, port: int = 5001) -> None:
        """``size`` random bytes from ``src`` to ``dst`` over TCP in the tunnel; SHA-256 and
        length must match at both ends."""
        server = self.lab.popen(
            dst.site,
            [sys.executable, "-c", TCP_SERVER, dst.tunnel_ip, str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready"
        seed = secrets.randbits(32)
        client = self.lab.exec(
            src.site,
            sys.executable,
            "-c",
            TCP_CLIENT,
            dst.tunnel_ip,
            str(port),
            str(seed),
            str(size),
            timeout=120,
        )
        assert client.returncode == 0, client.stderr
        out, err = server.communicate(timeout=60)
        sent = client.stdout.split()
        received = out.split()
        assert received == sent and int(sent[0]) == size, (sent, received, err)


@pytest.fixture
def deployment(natlab: LabFactory, tmp_path: Path) -> Callable[..., Deployment]:
    def make(sites: list[str], turn: str = "udp") -> Deployment:
        lab = natlab(sites)
        dep = Deployment(lab, tmp_path)
        names = ["alice", "bob", "carol"]
        for i, _site in enumerate(sites):
            dep.add_node(names[i], f"site{i + 1}", f"10.77.0.{i + 1}/24")
        dep.start_rendezvous()
        for node in dep.nodes:
            dep.start_node(node, turn)
        return dep

    return make


def test_cone_cone_direct_ping_and_tcp(deployment: Callable[..., Deployment]) -> None:
    dep = deployment(["cone", "cone"])
    alice, bob = dep.nodes
    dep.wait_connected()
    for a, b in ((alice, bob), (bob, alice)):
        entry = dep.peer_status(a, b)
        assert entry["path"] == "direct", entry
        assert entry["local_candidate"]["type"] in ("host", "srflx", "prflx")
    ping = dep.ping(alice, bob)
    assert ping.returncode == 0, ping.stdout + ping.stderr + dep.logs()

    dep.lab.reset_counters()
    dep.tcp_transfer(alice, bob, 4 * MB)
    dep.tcp_transfer(bob, alice, 1 * MB, port=5002)
    # Straight between the NATs, not through the server.
    assert dep.lab.direct_bytes("site1", "site2") > 5 * MB
    assert dep.lab.server_bytes("site1") < MB and dep.lab.server_bytes("site2") < MB
    after = dep.peer_status(alice, bob)
    assert after["rx_bytes"] > MB and after["tx_bytes"] > 4 * MB
    assert after["consent_age"] is not None and after["last_handshake"] is not None

    # SIGTERM: exit 0, the relay allocation released on the server, the peer told.
    assert alice.proc is not None
    assert dep.lab.stop(alice.proc) == 0
    rv_log = (dep.workdir / "rendezvous.log").read_text()
    assert "refreshed to 0" in rv_log, rv_log[-2000:]
    wait_until(lambda: "peer said bye" in (dep.workdir / "bob.log").read_text(), 10, what="bye")
    assert dep.lab.exec(alice.site, "ip", "link", "show", alice.ifname).returncode != 0


def test_symmetric_vs_port_restricted_relays(deployment: Callable[..., Deployment]) -> None:
    dep = deployment(["sym", "prc"])
    alice, bob = dep.nodes
    dep.wait_connected()
    for a, b in ((alice, bob), (bob, alice)):
        assert dep.peer_status(a, b)["path"] == "relay"
    assert dep.ping(alice, bob).returncode == 0
    dep.lab.reset_counters()
    dep.tcp_transfer(alice, bob, 1 * MB)
    assert dep.lab.server_bytes("site1") > MB and dep.lab.server_bytes("site2") > MB
    assert dep.lab.direct_bytes("site1", "site2") == 0


def test_udp_blocked_uses_turn_over_tcp(deployment: Callable[..., Deployment]) -> None:
    dep = deployment(["udp-blocked", "cone"], turn="tcp")
    alice, bob = dep.nodes
    dep.wait_connected()
    entry = dep.peer_status(alice, bob)
    assert entry["path"] == "relay" and entry["local_candidate"]["type"] == "relay", entry
    assert dep.ping(alice, bob).returncode == 0
    dep.tcp_transfer(bob, alice, 1 * MB)


def _handshakes(dep: Deployment, node: Node) -> int:
    return (dep.workdir / f"{node.name}.log").read_text().count("handshake completed")


def test_relay_moves_to_direct_without_new_handshake(natlab: LabFactory, tmp_path: Path) -> None:
    lab = natlab(["cone", "cone"])
    lab.block("site1", "site2")  # hole punching fails at first: relayed
    dep = Deployment(lab, tmp_path)
    alice = dep.add_node("alice", "site1", "10.77.0.1/24")
    bob = dep.add_node("bob", "site2", "10.77.0.2/24")
    dep.start_rendezvous()
    dep.start_node(alice)
    dep.start_node(bob)
    dep.wait_connected()
    assert dep.peer_status(alice, bob)["path"] == "relay"
    assert dep.ping(alice, bob).returncode == 0
    before = (_handshakes(dep, alice), _handshakes(dep, bob))
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
    assert (_handshakes(dep, alice), _handshakes(dep, bob)) == before


ECHO_SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
print("ready", flush=True)
c, _ = s.accept()
f = c.makefile("rwb")
for line in f:
    f.write(line)
    f.flush()
"""

ECHO_CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
f = c.makefile("rwb")
for line in sys.stdin.buffer:
    f.write(line)
    f.flush()
    sys.stdout.buffer.write(f.readline())
    sys.stdout.flush()
"""


def test_network_change_restarts_ice_and_tcp_survives(
    deployment: Callable[..., Deployment],
) -> None:
    dep = deployment(["cone", "prc"])
    alice, bob = dep.nodes
    dep.wait_connected()
    lab = dep.lab
    server = lab.popen(
        bob.site,
        [sys.executable, "-c", ECHO_SERVER, bob.tunnel_ip, "5003"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None and server.stdout.readline().strip() == "ready"
    client = lab.popen(
        alice.site,
        [sys.executable, "-c", ECHO_CLIENT, bob.tunnel_ip, "5003"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert client.stdin is not None and client.stdout is not None
    client.stdin.write("before\n")
    client.stdin.flush()
    assert client.stdout.readline() == "before\n"
    old_local = dep.peer_status(alice, bob)["local_candidate"]
    handshakes = _handshakes(dep, alice)

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
    assert "network change" in (dep.workdir / "alice.log").read_text()
    # The same TCP connection carries on over the new path; the WireGuard session too.
    client.stdin.write("after\n")
    client.stdin.flush()
    assert client.stdout.readline() == "after\n"
    assert _handshakes(dep, alice) == handshakes
    assert new_addr != "10.0.1.2"


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

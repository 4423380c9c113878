"""The firewall between peers with real daemons in the NAT lab.

One lab for the module (three cone sites) and one rendezvous; n1 is the guarded node, n2 is
in group ``admin`` (n1's ``[[peer]] groups``), n3 in none. n1's rules: TCP port 22 for
``admin``, ICMP from anyone (the default), nothing else inbound; outbound is the default
(any, and its replies). n2 and n3 run the lab's rules (TCP and ICMP in).

- n2 reaches n1's port 22, n3 does not; neither reaches port 8080; both ping n1;
- n1's own connection to a server at n2 gets its replies (connection tracking);
- UDP from n3 is dropped; ``p2ptun status`` (``--json`` and text) shows the rule's flows,
  the drops by reason and per peer;
- SIGHUP with new rules (port 8080 for anyone, no port 22): n2's open connection to port 22 is
  cut, n3 now reaches 8080.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest
from nodelab import ECHO_CLIENT, Deployment, Node

from p2plab.natlab import NatLab, wait_for_line, wait_until

pytestmark = [pytest.mark.lab, pytest.mark.slow]

LabFactory = Callable[..., NatLab]

RULES = """
[[firewall.inbound]]
proto = "tcp"
port = 22
groups = ["admin"]

[[firewall.inbound]]
proto = "icmp"
"""

RELOADED = """
[[firewall.inbound]]
proto = "tcp"
port = "8000-8999"
"""

SERVER = """
import socket, sys, threading
def echo(c):
    with c, c.makefile("rwb") as f:
        for line in f:
            f.write(line)
            f.flush()
def serve(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], port))
    s.listen(16)
    while True:
        c, _ = s.accept()
        threading.Thread(target=echo, args=(c,), daemon=True).start()
for port in sys.argv[2:]:
    threading.Thread(target=serve, args=(int(port),), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""
"""Line-echo servers on each port given."""

CONNECT = """
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
    c.sendall(b"hello %s\\n" % sys.argv[2].encode())
    print(c.makefile("rb").readline().decode().strip())
except OSError as exc:
    print("failed:", exc)
"""

UDP_SEND = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(int(sys.argv[3])):
    s.sendto(b"x" * 64, (sys.argv[1], int(sys.argv[2])))
"""


@pytest.fixture(scope="module")
def fw(natlab_module: LabFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    dep = Deployment.per_site(
        natlab_module(["cone", "cone", "cone"]), tmp_path_factory.mktemp("fw")
    )
    n1, n2, n3 = dep.nodes
    n2.groups = ("admin",)
    servers: list[subprocess.Popen[str]] = []
    try:
        dep.start_node(n1, extra=RULES)
        dep.start_node(n2)
        dep.start_node(n3)
        for node, ports in ((n1, ("22", "8080")), (n2, ("8443",))):
            dep.wait_ready(node)
            server = dep.lab.popen(
                node.site,
                [sys.executable, "-c", SERVER, node.tunnel_ip, *ports],
                stdout=subprocess.PIPE,
                text=True,
            )
            servers.append(server)
            assert server.stdout is not None
            assert wait_for_line(server.stdout, "ready", 10.0) is not None
        dep.wait_connected()
        yield dep
    finally:
        for server in servers:
            dep.lab.stop(server)
        dep.stop_all()


def connect(dep: Deployment, src: Node, dst: Node, port: int, timeout: float = 3.0) -> str:
    out = dep.lab.exec(
        src.site,
        sys.executable,
        "-c",
        CONNECT,
        dst.tunnel_ip,
        str(port),
        str(timeout),
        timeout=timeout + 10,
    )
    return out.stdout.strip()


def test_port_22_for_admin_only_and_icmp_for_all(fw: Deployment) -> None:
    n1, n2, n3 = fw.nodes
    assert connect(fw, n2, n1, 22) == "hello 22"
    assert connect(fw, n3, n1, 22).startswith("failed")
    assert connect(fw, n2, n1, 8080).startswith("failed")
    fw.assert_ping(n2, n1)
    fw.assert_ping(n3, n1)


def test_replies_to_outbound_connections_pass(fw: Deployment) -> None:
    n1, n2, _ = fw.nodes
    assert connect(fw, n1, n2, 8443) == "hello 8443"


def test_drops_counted_in_status(fw: Deployment) -> None:
    n1, _, n3 = fw.nodes
    fw.lab.exec(n3.site, sys.executable, "-c", UDP_SEND, n1.tunnel_ip, "5353", "5", timeout=10)
    connect(fw, n3, n1, 22, timeout=1.0)

    def counted() -> dict[str, object] | None:
        status = fw.status(n1)
        firewall = status.get("firewall", {})
        by_peer = {p["name"]: p.get("firewall_dropped", 0) for p in status.get("peers", [])}
        if firewall and firewall["dropped"]["inbound"]["default_deny"] >= 5 and by_peer["n3"] >= 5:
            return status
        return None

    status = wait_until(counted, 10.0, interval=0.2, what="drops counted")
    assert isinstance(status, dict)
    firewall = status["firewall"]
    rules = {r["rule"]: r["flows"] for r in firewall["inbound"]}
    assert rules["tcp/22 groups=admin"] >= 1
    assert rules["icmp any peer"] >= 1
    assert firewall["outbound"][0]["flows"] >= 1  # n1's connection to n2, its pings' replies
    assert firewall["flows"] >= 1 and firewall["max_flows"] == 16384
    text = subprocess.run(
        [sys.executable, "-m", "p2ptun", "status", "--interface", n1.ifname],
        capture_output=True,
        text=True,
        env=fw.env(),
        timeout=15,
        check=True,
    ).stdout
    assert "firewall: " in text and "inbound  tcp/22 groups=admin:" in text, text
    assert "by peer: " in text and "n3 " in text, text


def test_sighup_replaces_rules_and_cuts_flows(fw: Deployment) -> None:
    n1, n2, n3 = fw.nodes
    client = fw.lab.popen(
        n2.site,
        [sys.executable, "-c", ECHO_CLIENT, n1.tunnel_ip, "22"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )

    def roundtrip(text: str, timeout: float) -> str | None:
        assert client.stdin is not None and client.stdout is not None
        client.stdin.write(text + "\n")
        client.stdin.flush()
        line = wait_for_line(client.stdout, text, timeout)
        return None if line is None else line.strip()

    try:
        assert roundtrip("before", timeout=10) == "before"
        assert n1.config_path is not None
        fw.node_config(n1, extra=RELOADED)
        mark = len(n1.log())
        assert n1.proc is not None
        n1.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "firewall rules replaced" in n1.log()[mark:], 15.0, what="reload logged")
        assert "flows_cut=" in n1.log()[mark:]
        assert roundtrip("after", timeout=3) is None  # n2's open connection to 22 was cut
        assert connect(fw, n3, n1, 8080) == "hello 8080"
        assert connect(fw, n2, n1, 22).startswith("failed")
        # The new inbound list has no ICMP rule: the default's ICMP went with the old list.
        assert fw.ping(n3, n1, count=1).returncode != 0
    finally:
        fw.lab.stop(client)

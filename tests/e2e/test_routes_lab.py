"""Subnet routes and an exit node with real daemons in the NAT lab (README, "Subnet routes and
exit node"; docs/ARCHITECTURE.md §4).

One lab for the module: two cone sites; ``home`` at site 1 with a plain host (no p2ptun) on a
LAN behind it (``192.168.1.0/24``, :mod:`p2plab.lanhost`), ``laptop`` at site 2; both members
of one network whose authority signed ``home`` for ``192.168.1.0/24`` and ``0.0.0.0/0``.
``home`` also advertises ``192.168.2.0/24``, which nobody signed. The "internet host" is the
lab's server at its second address: a TCP server there answers each connection with the
source address it saw.

- the LAN host answers ping and TCP from ``laptop`` through the signed route (masqueraded:
  it sees ``home``'s LAN address); the unsigned route is refused by ``home`` (log, status) and
  absent at ``laptop``;
- ``laptop`` with ``home`` as its exit node: the internet host sees site 1's public address;
  the tunnel keeps working and a network change at site 2 (new rendezvous connection, STUN,
  ICE restart) goes outside it (the rendezvous sees site 2's address); ``p2ptun set exit-node
  off`` and back; a refused selection; SIGKILL leaves the rules, the next start removes them,
  and SIGTERM leaves ``ip rule``, every routing table and the nftables ruleset as they were.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from nodelab import (
    CONNECT_TIMEOUT,
    MB,
    RV_ALT,
    TCP_CLIENT,
    TCP_SERVER,
    WHOAMI_CLIENT,
    WHOAMI_SERVER,
    Deployment,
    Node,
    report,
    routing_snapshot,
    wait_log,
)

from p2plab.lanhost import LanHost, add_lan_host
from p2plab.natlab import NatLab, wait_for_line, wait_until

pytestmark = [pytest.mark.lab, pytest.mark.slow]

LabFactory = Callable[..., NatLab]

SIGNED = "192.168.1.0/24"
UNSIGNED = "192.168.2.0/24"
OWN_LAN = "10.0.2.0/24"
"""Site 2's LAN: a route to it from a peer would take laptop's own LAN; laptop refuses it."""
INTERNET_PORT = 5080


class Routes:
    """The module's deployment, CA, plain LAN host and internet host."""

    def __init__(self, dep: Deployment, lan: LanHost, ca_pub: str, certs: dict[str, Path]):
        self.dep = dep
        self.lan = lan
        self.ca_pub = ca_pub
        self.certs = certs
        self.home = dep.node("home")
        self.laptop = dep.node("laptop")

    def network(self, node: Node, exit_node: str | None = None) -> str:
        text = f'[network]\nca = "{self.ca_pub}"\ncert_file = "{self.certs[node.name]}"\n'
        return text + (f'exit_node = "{exit_node}"\n' if exit_node else "")

    def start_home(self) -> None:
        routes = f'advertise_routes = ["{SIGNED}", "{UNSIGNED}", "0.0.0.0/0"]\n'
        self.dep.start_node(
            self.home, peers=[], interface_extra=routes, extra=self.network(self.home)
        )

    def start_laptop(self, exit_node: str | None = None) -> None:
        self.dep.start_node(self.laptop, peers=[], extra=self.network(self.laptop, exit_node))

    def p2ptun(self, node: Node, *args: str) -> subprocess.CompletedProcess[str]:
        """``p2ptun ARGS --interface IF`` in the node's namespace (the README's commands;
        ``--interface``: the lab's nodes share one run directory)."""
        RAN.add(" ".join(("p2ptun", *args)))
        return self.dep.lab.exec(
            node.site,
            sys.executable,
            "-m",
            "p2ptun",
            *args,
            "--interface",
            node.ifname,
            env=self.dep.env(),
            timeout=20,
        )

    def whoami(self, node: Node) -> str:
        """The source address the internet host sees for a connection from ``node``'s host."""
        out = self.dep.lab.exec(
            node.site, sys.executable, "-c", WHOAMI_CLIENT, RV_ALT, str(INTERNET_PORT), timeout=20
        )
        assert out.returncode == 0, out.stderr + self.dep.logs()
        return out.stdout.strip()


RAN: set[str] = set()
"""The p2ptun commands the tests ran (keys shown as ``KEY``), for the README's check."""
README = Path(__file__).resolve().parents[2] / "README.md"


def readme_commands() -> set[str]:
    """The commands in the README's "Subnet routes and exit node" section (sh blocks)."""
    section = README.read_text().split("## Subnet routes and exit node", 1)[1].split("\n## ")[0]
    commands = set()
    for block in section.split("```sh\n")[1:]:
        for line in block.split("```", 1)[0].splitlines():
            command = line.split("#", 1)[0].strip()
            if command:
                commands.add(" ".join(command.split()))
    return commands


def _ca(tmp: Path, dep: Deployment) -> tuple[str, dict[str, Path]]:
    """``p2ptun ca init`` and ``ca sign`` (the README's commands): ``home`` signed for the
    LAN and as an exit node, ``laptop`` plain."""

    def cli(*args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "p2ptun", *args],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=tmp,
        )
        assert out.returncode == 0, out.stderr
        RAN.add(" ".join(("p2ptun", *args)).replace(dep.node("home").pub, "KEY"))
        return out.stdout

    ca_dir = tmp / "ca"
    cli("ca", "init", "--network", "home", "--out", "ca")
    ca_pub = (ca_dir / "ca.pub").read_text().strip()
    certs = {}
    for node, routes in (
        (dep.node("home"), ["--routes", f"{SIGNED},0.0.0.0/0"]),
        (dep.node("laptop"), []),
    ):
        text = cli(
            "ca", "sign", "--ca", "ca", "--name", node.name, "--ip", node.address,
            "--pubkey", node.pub, *routes,
        )  # fmt: skip
        path = tmp / f"{node.name}.crt"
        path.write_text(text)
        certs[node.name] = path
    return ca_pub, certs


@pytest.fixture(scope="module")
def routes(natlab_module: LabFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Routes]:
    lab = natlab_module(["cone", "cone"])
    tmp = tmp_path_factory.mktemp("routes")
    dep = Deployment(lab, tmp)
    dep.add_node("home", "site1", "10.77.0.1/24", ifname=f"p2p{dep.tag}h")
    dep.add_node("laptop", "site2", "10.77.0.2/24", ifname=f"p2p{dep.tag}l")
    ca_pub, certs = _ca(tmp, dep)
    dep.rendezvous_extra = f'[[network]]\nca = "{ca_pub}"\n'
    lan = add_lan_host(lab, 1, SIGNED)
    internet = lab.popen(
        "server",
        [sys.executable, "-c", WHOAMI_SERVER, RV_ALT, str(INTERNET_PORT)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert internet.stdout is not None
    assert wait_for_line(internet.stdout, "ready", 10.0) is not None
    # Strict reverse-path filtering at site 2: the exit node's replies must still come in.
    lab.exec("site2", "sh", "-c", "echo 1 > /proc/sys/net/ipv4/conf/all/rp_filter", check=True)
    dep.start_rendezvous()
    env = Routes(dep, lan, ca_pub, certs)
    try:
        yield env
    finally:
        dep.stop_all()


@pytest.fixture(autouse=True)
def _stop_nodes(request: pytest.FixtureRequest) -> Iterator[None]:
    """The nodes a test started are stopped after it, pass or fail."""
    yield
    if "routes" in request.fixturenames:
        request.getfixturevalue("routes").dep.stop_nodes()


def _avg_rtt(lab: NatLab, site: str, address: str) -> float:
    """Average RTT (ms) of 10 pings from ``site`` to ``address``."""
    out = lab.exec(site, "ping", "-c", "10", "-i", "0.1", "-W", "2", "-q", address)
    assert out.returncode == 0, out.stdout
    return float(out.stdout.rsplit("=", 1)[1].split("/")[1])


def test_subnet_route_reaches_a_plain_lan_host(
    routes: Routes, request: pytest.FixtureRequest
) -> None:
    dep, lab, home, laptop = routes.dep, routes.dep.lab, routes.home, routes.laptop
    before_home = routing_snapshot(lab, "site1")
    routes.start_home()
    routes.start_laptop()
    dep.wait_connected([home, laptop], timeout=CONNECT_TIMEOUT)

    # The unsigned route: refused by the node itself (log and status), never used by peers.
    wait_log(home, "advertised route refused")
    node_status = dep.status(home)["node"]["routes"]
    assert node_status["advertised"] == [SIGNED, "0.0.0.0/0"]
    assert node_status["refused"] == [
        {"route": UNSIGNED, "reason": "not in this node's certificate"}
    ]
    assert node_status["forwarding"] == {"ipv4": "on"}
    assert lab.exec("site1", "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"
    peer_routes = dep.peer_status(laptop, home)["routes"]
    assert peer_routes == {"accepted": [SIGNED], "refused": [], "unused": ["0.0.0.0/0"]}
    table = lab.exec("site2", "ip", "route").stdout
    assert f"{SIGNED} dev {laptop.ifname}" in table, table
    assert UNSIGNED not in table and f"default dev {laptop.ifname}" not in table, table
    shown = routes.p2ptun(laptop, "status").stdout
    assert f"routes via home: {SIGNED}" in shown, shown

    # ping and TCP from site 2's node to the plain host, which sees home's LAN address.
    t0 = time.monotonic()
    ping = lab.exec("site2", "ping", "-c", "3", "-i", "0.2", "-W", "2", routes.lan.address)
    assert ping.returncode == 0, ping.stdout + dep.logs()
    first = time.monotonic() - t0
    server = routes.lan.popen(
        lab,
        [sys.executable, "-c", WHOAMI_SERVER, routes.lan.address, "5081"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    assert wait_for_line(server.stdout, "ready", 10.0) is not None
    out = lab.exec("site2", sys.executable, "-c", WHOAMI_CLIENT, routes.lan.address, "5081")
    assert out.returncode == 0, out.stderr + dep.logs()
    assert out.stdout.strip() == routes.lan.router  # masqueraded by home
    # The other way: the LAN host sends 4 MiB to laptop's overlay address (not masqueraded:
    # laptop accepts the LAN's source from home by cryptokey routing); big segments from the
    # 1500-byte LAN into the tunnel, their MSS clamped.
    assert "maxseg size set rt mtu" in lab.exec("site1", "nft", "list", "ruleset").stdout
    sink = lab.popen(
        "site2",
        [sys.executable, "-c", TCP_SERVER, laptop.tunnel_ip, "5082"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert sink.stdout is not None
    assert wait_for_line(sink.stdout, "ready", 10.0) is not None
    size = 4 * MB
    t0 = time.monotonic()
    sender = routes.lan.popen(
        lab,
        [sys.executable, "-c", TCP_CLIENT, laptop.tunnel_ip, "5082", "7", str(size), "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    sent_out, _ = sender.communicate(timeout=60)
    got_out, _ = sink.communicate(timeout=30)
    took = time.monotonic() - t0
    sent, got = json.loads(sent_out.strip()), json.loads(got_out.strip().splitlines()[-1])
    assert (
        (got["bytes"], got["sha256"]) == (sent["bytes"], sent["sha256"]) == (size, sent["sha256"])
    )
    # And laptop -> the LAN host: laptop leaves its segments' TCP checksums partial (home
    # said it completes them), home writes them to TUN as partial and forwards them. With
    # checksum offload off on home's LAN link the kernel must complete each checksum in
    # software before it leaves, and the LAN host's kernel verifies it: a wrong partial sum
    # would stall the transfer.
    lan_link = f"{lab.prefix}l1a"
    lab.exec("site1", "ethtool", "-K", lan_link, "tx", "off", check=True)
    partial_before = dep.debug(laptop)["tunnel"]["tunnel"]["partial_checksums"]
    lan_sink = routes.lan.popen(
        lab,
        [sys.executable, "-c", TCP_SERVER, routes.lan.address, "5083"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert lan_sink.stdout is not None
    assert wait_for_line(lan_sink.stdout, "ready", 10.0) is not None
    t0 = time.monotonic()
    up = lab.popen(
        "site2",
        [sys.executable, "-c", TCP_CLIENT, routes.lan.address, "5083", "8", str(size), "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    sent_out, _ = up.communicate(timeout=60)
    got_out, _ = lan_sink.communicate(timeout=30)
    took_up = time.monotonic() - t0
    sent, got = json.loads(sent_out.strip()), json.loads(got_out.strip().splitlines()[-1])
    assert (got["bytes"], got["sha256"]) == (size, sent["sha256"])
    partial = dep.debug(laptop)["tunnel"]["tunnel"]["partial_checksums"] - partial_before
    assert partial > size // 1500, partial  # nearly every segment
    lan_rtt = _avg_rtt(lab, "site2", routes.lan.address)
    home_rtt = _avg_rtt(lab, "site2", home.tunnel_ip)
    report(
        request,
        f"[routes] LAN host behind home: 3 pings in {first:.2f} s, TCP through; avg RTT "
        f"{lan_rtt:.3f} ms to the LAN host, {home_rtt:.3f} ms to home's overlay address; "
        f"4 MiB from the LAN host to laptop in {took:.2f} s, from laptop to the LAN host "
        f"(partial checksums, completed by home's kernel) in {took_up:.2f} s",
    )

    # Stopping home removes its nftables table and everything else it added.
    assert dep.stop_node(home) == 0, home.log()[-2000:]
    assert routing_snapshot(lab, "site1") == before_home
    dep.stop_node(laptop)


def test_exit_node(routes: Routes, request: pytest.FixtureRequest) -> None:
    dep, lab, home, laptop = routes.dep, routes.dep.lab, routes.home, routes.laptop
    site1 = lab.site("site1").mapped_addr
    site2 = lab.site("site2").mapped_addr
    dep.fresh_sites(home, laptop)
    before = routing_snapshot(lab, "site2")
    routes.start_home()
    assert routes.whoami(laptop) == site2

    # Selected in the config: in force once home is online as a member signed for 0.0.0.0/0.
    routes.start_laptop(exit_node="home")
    dep.wait_connected([home, laptop], timeout=CONNECT_TIMEOUT)
    wait_log(laptop, "exit node in use")
    exit_status = dep.status(laptop)["node"]["exit_node"]
    assert exit_status["state"] == "active", exit_status
    assert routes.whoami(laptop) == site1
    ping = lab.exec("site2", "ping", "-c", "2", "-i", "0.2", "-W", "2", RV_ALT)
    assert ping.returncode == 0, ping.stdout + dep.logs()
    # The LAN stays outside the tunnel: site 2's router answers (home could not reach it).
    ping = lab.exec("site2", "ping", "-c", "1", "-W", "2", lab.site("site2").lan_gw)
    assert ping.returncode == 0, ping.stdout

    # No loop: a network change at site 2 makes a new rendezvous connection, gathers again
    # (STUN, TURN) and restarts ICE, all of it outside the tunnel.
    mark = dep.rendezvous_log_size()
    lan_if = lab.if_host("site2")
    lab.exec("site2", "ip", "addr", "add", "10.0.2.77/24", "dev", lan_if, check=True)
    time.sleep(0.5)
    lab.exec("site2", "ip", "addr", "del", "10.0.2.77/24", "dev", lan_if, check=True)
    online = "node online name=laptop"
    wait_until(lambda: online in dep.rendezvous_log(mark), 20.0, what="laptop online again")
    line = next(x for x in dep.rendezvous_log(mark).splitlines() if online in x)
    assert f"peer={site2}:" in line, line
    dep.wait_connected([home, laptop], timeout=CONNECT_TIMEOUT)
    assert dep.peer_status(laptop, home)["path"] == "direct"
    assert routes.whoami(laptop) == site1
    dep.assert_ping(laptop, home)

    # Off and on again through the control socket (the README's commands).
    out = routes.p2ptun(laptop, "set", "exit-node", "off")
    assert out.returncode == 0, out.stderr
    assert routes.whoami(laptop) == site2
    assert routing_snapshot(lab, "site2")["ip -4 rule"] == before["ip -4 rule"]
    out = routes.p2ptun(laptop, "set", "exit-node", "home")
    assert out.returncode == 0, out.stderr
    assert routes.whoami(laptop) == site1
    shown = routes.p2ptun(laptop, "status").stdout
    assert "exit node: home active" in shown, shown

    # Refused: a name that is no peer; a peer not signed for 0.0.0.0/0 (laptop, seen by home).
    out = routes.p2ptun(laptop, "set", "exit-node", "nas")
    assert out.returncode == 1 and "no peer named 'nas'" in out.stderr, out.stderr
    out = routes.p2ptun(home, "set", "exit-node", "laptop")
    assert out.returncode == 1 and "laptop may not route 0.0.0.0/0" in out.stderr, out.stderr
    assert routes.whoami(laptop) == site1

    # A crash leaves the rules; the next start removes them, SIGTERM leaves nothing.
    assert laptop.proc is not None
    laptop.proc.kill()
    laptop.proc.wait(timeout=10)
    assert f"lookup {0x7074}" in lab.exec("site2", "ip", "rule").stdout
    assert f"p2ptun-{laptop.ifname}" in lab.exec("site2", "nft", "list", "tables").stdout
    routes.start_laptop()
    dep.wait_connected([home, laptop], timeout=CONNECT_TIMEOUT)
    # The new run removed what the killed one left (its own interface has its own routes).
    after = routing_snapshot(lab, "site2")
    for what in ("ip -4 rule", "ip -6 rule", "nft list ruleset"):
        assert after[what] == before[what], what
    assert f"table {0x7074}" not in after["ip -4 route show table all"]
    assert routes.whoami(laptop) == site2
    t0 = time.monotonic()
    out = routes.p2ptun(laptop, "set", "exit-node", "home")
    switched = time.monotonic() - t0
    assert out.returncode == 0, out.stderr
    assert routes.whoami(laptop) == site1
    assert dep.stop_node(laptop) == 0, laptop.log()[-2000:]
    assert routing_snapshot(lab, "site2") == before
    dep.stop_node(home)
    missing = readme_commands() - RAN
    assert not missing, f"README commands no test ran: {missing}"
    report(request, f"[routes] exit node: 'p2ptun set exit-node home' returned in {switched:.2f} s")


def test_peer_entries_do_the_same_by_hand(routes: Routes) -> None:
    """Without a network: ``home``'s ``[[peer]]`` entry at ``laptop`` lists the LAN and
    ``0.0.0.0/0`` with ``exit_node = true`` (and ``exit_node_allow_lan = false``: laptop's
    own LAN through home too); a SIGHUP with it gone restores direct routing."""
    dep, lab, home, laptop = routes.dep, routes.dep.lab, routes.home, routes.laptop
    site1 = lab.site("site1").mapped_addr
    site2 = lab.site("site2").mapped_addr
    dep.fresh_sites(home, laptop)
    before = routing_snapshot(lab, "site2")

    def peer(node: Node, allowed: list[str], exit_node: bool) -> str:
        return (
            f'[[peer]]\nname = "{node.name}"\npublic_key = "{node.pub}"\n'
            f"allowed_ips = {json.dumps(allowed)}\n" + ("exit_node = true\n" if exit_node else "")
        )

    dep.start_node(
        home,
        peers=[],
        interface_extra=f'advertise_routes = ["{SIGNED}", "0.0.0.0/0"]\n',
        extra=peer(laptop, ["10.77.0.2/32"], False),
    )
    dep.start_node(
        laptop,
        peers=[],
        interface_extra="exit_node_allow_lan = false\n",
        extra=peer(home, ["10.77.0.1/32", SIGNED, OWN_LAN, "0.0.0.0/0"], True),
    )
    dep.wait_connected([home, laptop], timeout=CONNECT_TIMEOUT)
    wait_log(laptop, "exit node in use")
    assert dep.status(home)["node"]["routes"]["refused"] == []
    # laptop's entry for home also lists laptop's own LAN: refused, the kernel's route kept.
    refused = dep.peer_status(laptop, home)["routes"]["refused"]
    assert refused == [{"route": OWN_LAN, "reason": f"inside our own LAN {OWN_LAN}"}]
    assert "peer route refused" in laptop.log()
    table = lab.exec("site2", "ip", "route").stdout
    assert f"{OWN_LAN} dev {lab.if_host('site2')} proto kernel" in table, table
    assert f"{OWN_LAN} dev {laptop.ifname}" not in table, table
    assert routes.whoami(laptop) == site1
    ping = lab.exec("site2", "ping", "-c", "2", "-i", "0.2", "-W", "2", routes.lan.address)
    assert ping.returncode == 0, ping.stdout + dep.logs()
    # exit_node_allow_lan = false: site 2's own LAN goes through home too, which cannot
    # reach it; the node's own underlay to its gateway (marked) still goes out directly.
    router = lab.site("site2").lan_gw
    assert "to 10.0.2.0/24 lookup" in lab.exec("site2", "ip", "rule").stdout
    ping = lab.exec("site2", "ping", "-c", "1", "-W", "1", router)
    assert ping.returncode != 0, ping.stdout
    assert dep.peer_status(laptop, home)["state"] == "connected"

    # The same peer without exit_node = true, and SIGHUP: direct again, the LAN still routed.
    dep.node_config(
        laptop, peers=[], extra=peer(home, ["10.77.0.1/32", SIGNED, OWN_LAN, "0.0.0.0/0"], False)
    )
    assert laptop.proc is not None
    laptop.proc.send_signal(signal.SIGHUP)
    wait_log(laptop, "exit node left")
    assert routes.whoami(laptop) == site2
    assert dep.status(laptop)["node"]["exit_node"] is None
    ping = lab.exec("site2", "ping", "-c", "2", "-i", "0.2", "-W", "2", routes.lan.address)
    assert ping.returncode == 0, ping.stdout + dep.logs()
    assert lab.exec("site2", "ping", "-c", "1", "-W", "2", router).returncode == 0
    assert dep.stop_node(laptop) == 0, laptop.log()[-2000:]
    assert routing_snapshot(lab, "site2") == before
    dep.stop_node(home)

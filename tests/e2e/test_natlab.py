"""The NAT lab itself: each NAT type maps and filters as its name says (checked with raw UDP
sockets and independently with coturn's RFC 5780 ``turnutils_natdiscovery``), the knobs work,
and teardown leaves nothing behind."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from p2plab import coturn
from p2plab.natlab import NAT_TYPES, LabError, NatLab, wait_for_line

pytestmark = pytest.mark.lab

LabFactory = Callable[..., NatLab]
REPO = Path(__file__).resolve().parents[2]
REFLECT_PORT = 4000
ALT_PORT = 4001


def _reflector_eps(lab: NatLab) -> list[tuple[str, int]]:
    a, b = lab.server_addrs
    return [(a, REFLECT_PORT), (a, ALT_PORT), (b, REFLECT_PORT), (b, ALT_PORT)]


def _classify(lab: NatLab, host: str) -> dict[str, Any]:
    a, b = lab.server_addrs
    return lab.probe(
        host,
        "nat",
        *("--primary", f"{a}:{REFLECT_PORT}", "--alt-addr", f"{b}:{REFLECT_PORT}"),
        *("--alt-port", f"{a}:{ALT_PORT}", "--alt-both", f"{b}:{ALT_PORT}"),
    )


@pytest.fixture(scope="module")
def all_types(natlab_module: LabFactory) -> Iterator[NatLab]:
    """One site of every NAT type (site i has type NAT_TYPES[i-1]), reflector and coturn on
    the server."""
    lab = natlab_module(list(NAT_TYPES))
    lab.start_reflector("server", _reflector_eps(lab), tcp=[(lab.server_addrs[0], REFLECT_PORT)])
    yield lab


@pytest.fixture(scope="module")
def probe_results(all_types: NatLab) -> dict[str, dict[str, Any]]:
    """Raw-socket classification from every site, run concurrently."""
    lab = all_types
    with ThreadPoolExecutor(len(lab.sites)) as pool:
        futures = {s.nat: pool.submit(_classify, lab, f"site{s.index}") for s in lab.sites}
        return {nat: f.result() for nat, f in futures.items()}


@pytest.fixture(scope="module")
def natdiscovery_results(all_types: NatLab) -> dict[str, coturn.NatDiscovery]:
    """coturn's RFC 5780 verdicts from every site, run concurrently."""
    lab = all_types
    server = coturn.start_coturn(lab)
    try:
        with ThreadPoolExecutor(len(lab.sites)) as pool:
            futures = {
                s.nat: pool.submit(coturn.natdiscovery, lab, f"site{s.index}", lab.server_addrs[0])
                for s in lab.sites
            }
            return {nat: f.result() for nat, f in futures.items()}
    finally:
        server.stop()


# expected (mapping, filtering) in RFC 5780 terms
EXPECTED = {
    "none": ("endpoint-independent", "endpoint-independent"),
    "cone": ("endpoint-independent", "endpoint-independent"),
    "prc": ("endpoint-independent", "address-and-port-dependent"),
    "sym": ("address-and-port-dependent", "address-and-port-dependent"),
    "sym-seq": ("address-and-port-dependent", "address-and-port-dependent"),
    "udp-blocked": ("blocked", "blocked"),
}


@pytest.mark.parametrize("nat", NAT_TYPES)
def test_raw_socket_mapping_and_filtering(
    nat: str, all_types: NatLab, probe_results: dict[str, dict[str, Any]]
) -> None:
    lab = all_types
    site = next(s for s in lab.sites if s.nat == nat)
    result = probe_results[nat]
    assert (result["mapping"], result["filtering"]) == EXPECTED[nat], result
    if nat == "udp-blocked":
        return
    mapped_addrs = {m.rpartition(":")[0] for m in result["mapped"]}
    assert mapped_addrs == {site.mapped_addr}
    first_port = int(result["mapped"][0].rpartition(":")[2])
    if not nat.startswith("sym"):  # no NAT, or masquerade keeping the port
        assert first_port == result["local_port"]


@pytest.mark.parametrize("nat", ["sym", "sym-seq"])
def test_symmetric_port_allocation(nat: str, all_types: NatLab) -> None:
    """One socket, four destinations: ``sym-seq`` hands out consecutive ports (what port
    prediction relies on), ``sym`` random ones."""
    lab = all_types
    site = next(s for s in lab.sites if s.nat == nat)
    servers = [arg for ep in _reflector_eps(lab) for arg in ("--server", f"{ep[0]}:{ep[1]}")]
    result = lab.probe(f"site{site.index}", "sequence", *servers)
    mapped = result["mapped"]
    assert None not in mapped, result
    assert {m.rpartition(":")[0] for m in mapped} == {site.wan_addr}
    ports = [int(m.rpartition(":")[2]) for m in mapped]
    steps = [b - a for a, b in itertools.pairwise(ports)]
    if nat == "sym-seq":
        assert steps == [1, 1, 1], ports
    else:
        assert len(set(ports)) == 4 and steps != [1, 1, 1], ports


def test_udp_blocked_site_still_has_tcp(all_types: NatLab) -> None:
    lab = all_types
    site = next(s for s in lab.sites if s.nat == "udp-blocked")
    result = lab.probe(f"site{site.index}", "tcp", "--server", f"{lab.server_addrs[0]}:4000")
    assert result["ok"], result
    assert result["seen"].rpartition(":")[0] == site.wan_addr


SILENCE_CHECK = """
import socket, sys
for addr in sys.argv[1:]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.3)
    s.connect((addr, 9))
    s.send(b"x")
    try:
        s.recv(16)
        print(addr, "answered")
    except ConnectionRefusedError:
        print(addr, "refused")
    except TimeoutError:
        print(addr, "silent")
"""


def test_routers_are_silent_and_internet_has_no_default_route(all_types: NatLab) -> None:
    lab = all_types
    wans = [s.wan_addr for s in lab.sites]
    out = lab.exec("server", sys.executable, "-c", SILENCE_CHECK, *wans, check=True).stdout
    assert out.split() == [w for addr in wans for w in (addr, "silent")], out
    routes = lab.exec("inet", "ip", "-4", "route", "show", "default", check=True).stdout
    assert routes.strip() == ""
    # a private destination dies inside the lab without an answer
    lost = lab.exec("site2", "ping", "-c1", "-W1", "10.0.3.2")
    assert lost.returncode != 0


# turnutils_natdiscovery prints "NAT with <verdict> Mapping!" / "... Filtering!"; for a site
# without UDP it prints only "STUN receive timeout.." lines.
NATDISCOVERY_EXPECTED = {
    "none": ("Endpoint Independent", "Endpoint Independent"),
    "cone": ("Endpoint Independent", "Endpoint Independent"),
    "prc": ("Endpoint Independent", "Address and Port Dependent"),
    "sym": ("Address and Port Dependent", "Address and Port Dependent"),
    "sym-seq": ("Address and Port Dependent", "Address and Port Dependent"),
    "udp-blocked": (None, None),
}


@pytest.mark.parametrize("nat", NAT_TYPES)
def test_coturn_natdiscovery_agrees(
    nat: str, natdiscovery_results: dict[str, coturn.NatDiscovery]
) -> None:
    found = natdiscovery_results[nat]
    assert (found.mapping, found.filtering) == NATDISCOVERY_EXPECTED[nat], found.output
    if nat == "udp-blocked":
        assert found.timeouts >= 2, found.output


def _listen_in(lab: NatLab, host: str, port: int, seconds: float) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "p2plab.probe", "listen", "--port", str(port)]
    proc = lab.popen(host, [*argv, "--timeout", str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert wait_for_line(proc.stdout, "ready", 10) is not None
    return proc


def _listen_result(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    line = wait_for_line(proc.stdout, "received", 10)
    proc.wait(timeout=10)
    assert line is not None
    result: dict[str, Any] = json.loads(line)
    return result


def test_flush_forgets_cone_mapping_and_rebinds_symmetric(natlab: LabFactory) -> None:
    lab = natlab(["cone", "sym", "prc"])
    a, b = lab.server_addrs
    lab.start_reflector("server", _reflector_eps(lab))
    server = f"{a}:{REFLECT_PORT}"

    # cone: a mapping admits anyone until the NAT is flushed
    first = lab.probe("site1", "ask", "--server", server, "--local-port", "40000")
    mapped = first["reply"]["seen"]
    listener = _listen_in(lab, "site1", 40000, 1.0)
    lab.probe("server", "send", "--to", mapped, "--bind", f"{b}:4002")
    assert _listen_result(listener)["received"] > 0
    lab.flush_nat("site1")
    listener = _listen_in(lab, "site1", 40000, 1.0)
    lab.probe("server", "send", "--to", mapped, "--bind", f"{b}:4003")
    assert _listen_result(listener)["received"] == 0

    # sym: the same 5-tuple keeps its mapping until a flush, then gets a new random port
    def sym_mapped() -> str:
        r = lab.probe("site2", "ask", "--server", server, "--local-port", "40001")
        return str(r["reply"]["seen"])

    m1 = sym_mapped()
    assert sym_mapped() == m1
    lab.flush_nat("site2")
    assert sym_mapped() != m1

    # prc: port-preserving, so a flush gives the same mapping back (see LAB-NOTES)
    p1 = lab.probe("site3", "ask", "--server", server, "--local-port", "40002")["reply"]["seen"]
    lab.flush_nat("site3")
    p2 = lab.probe("site3", "ask", "--server", server, "--local-port", "40002")["reply"]["seen"]
    assert p1 == p2


def test_renumber_nat_changes_mapped_address(natlab: LabFactory) -> None:
    lab = natlab(["prc", "cone"])
    a, _ = lab.server_addrs
    lab.start_reflector("server", _reflector_eps(lab))
    server = f"{a}:{REFLECT_PORT}"
    for site in ("site1", "site2"):
        before = lab.probe(site, "ask", "--server", server)["reply"]["seen"].rpartition(":")[0]
        assert before == lab.site(site).wan_addr
        new = lab.renumber_nat(site)
        assert new != before
        after = lab.probe(site, "ask", "--server", server)["reply"]["seen"].rpartition(":")[0]
        assert after == new
        # the state file follows, so another process sees the new address
        assert NatLab.load(lab.prefix).site(site).wan_addr == new
    # the full cone forwards only to the NAT's current address
    assert _classify(lab, "site2")["filtering"] == "endpoint-independent"


def test_host_address_change(natlab: LabFactory) -> None:
    lab = natlab(["none", "cone"])
    a, _ = lab.server_addrs
    lab.start_reflector("server", _reflector_eps(lab))
    server = f"{a}:{REFLECT_PORT}"
    old = lab.site(1).host_addr
    new = lab.set_host_address("site1")
    assert new != old
    seen = lab.probe("site1", "ask", "--server", server)["reply"]["seen"]
    assert seen.rpartition(":")[0] == new
    new2 = lab.set_host_address("site2", "10.0.2.77")
    assert new2 == "10.0.2.77"
    addrs = lab.exec("site2", "ip", "-4", "-o", "addr", "show", check=True).stdout
    assert "10.0.2.77/24" in addrs and f"{old}/" not in addrs
    assert lab.probe("site2", "ask", "--server", server)["reply"] is not None


def test_second_uplink_with_source_routing(natlab: LabFactory) -> None:
    lab = natlab(["prc", "cone"])
    a, _ = lab.server_addrs
    lab.start_reflector("server", _reflector_eps(lab))
    server = f"{a}:{REFLECT_PORT}"
    up = lab.add_uplink("site1", "sym")
    first, second = lab.site(1), lab.uplink(1)
    assert lab.ns("nat1b") == up.ns and "nat1b" in lab.hosts() and up.ns in lab.namespaces

    def seen(local_ip: str = "0.0.0.0") -> str:
        reply = lab.probe("site1", "ask", "--server", server, "--local-ip", local_ip)["reply"]
        assert reply is not None, local_ip
        return str(reply["seen"]).rpartition(":")[0]

    # Each address leaves through its own uplink; the default route picks for the wildcard.
    assert (seen(first.host_addr), seen(second.host_addr)) == (first.wan_addr, second.wan_addr)
    assert seen() == first.wan_addr
    lab.set_uplink("site1", 2)
    assert seen() == second.wan_addr and seen(first.host_addr) == first.wan_addr
    before = lab.uplink_bytes("site1", 2)
    lab.set_uplink("site1", 1)
    lab.set_uplink_link("site1", 1, up=False)  # the default route's link goes away
    assert seen() == second.wan_addr
    assert lab.uplink_bytes("site1", 2) > before
    lab.set_uplink_link("site1", 1, up=True)
    lab.set_uplink("site1", 1)
    assert seen() == first.wan_addr and seen(second.host_addr) == second.wan_addr
    lab.flush_nat("site1", uplink=2)
    # Another process sees the uplink in the state file.
    again = NatLab.load(lab.prefix)
    assert again.uplink(1) == up and again.default_uplink[1] == 1


def test_counters_and_block(natlab: LabFactory) -> None:
    lab = natlab(["none", "none"])
    a, _ = lab.server_addrs
    lab.start_reflector("server", _reflector_eps(lab))
    peer = lab.site(2).host_addr
    lab.start_reflector("site2", [(peer, 5000)])

    lab.reset_counters()
    direct = lab.probe("site1", "count", "--server", f"{peer}:5000", "-n", "20")
    assert direct["received"] == 20
    assert lab.counter_bytes("site1", "site2") > 0
    assert lab.counter_bytes(2, 1) > 0
    assert lab.server_bytes("site1") == 0

    lab.reset_counters()
    via_server = lab.probe("site1", "count", "--server", f"{a}:{REFLECT_PORT}", "-n", "20")
    assert via_server["received"] == 20
    assert lab.server_bytes("site1") > 0
    assert lab.direct_bytes("site1", "site2") == 0

    lab.block("site1", "site2")
    assert lab.blocked_pairs() == [(1, 2), (2, 1)]
    blocked = lab.probe(
        "site1", "count", "--server", f"{peer}:5000", "-n", "10", "--timeout", "0.5"
    )
    assert blocked["received"] == 0
    assert (
        lab.probe("site1", "count", "--server", f"{a}:{REFLECT_PORT}", "-n", "5")["received"] == 5
    )
    lab.unblock("site1", "site2")
    assert lab.blocked_pairs() == []
    assert lab.probe("site1", "count", "--server", f"{peer}:5000", "-n", "10")["received"] == 10


def test_netem_loss_and_delay(natlab: LabFactory) -> None:
    lab = natlab(["cone"])
    a, _ = lab.server_addrs
    lab.start_reflector("server", _reflector_eps(lab))
    server = f"{a}:{REFLECT_PORT}"

    lab.set_netem("site1", loss=30)  # each way: about 49 % of round trips survive
    lossy = lab.probe("site1", "count", "--server", server, "-n", "200", "--timeout", "0.5")
    assert 0.2 * 200 < lossy["received"] < 0.8 * 200, lossy

    lab.set_netem("site1", delay_ms=40)  # each way
    slow = lab.probe("site1", "count", "--server", server, "-n", "10", "--timeout", "0.5")
    assert slow["received"] == 10
    assert slow["rtt_min_ms"] >= 80, slow

    lab.clear_netem("site1")
    assert lab.netem == {}
    clean = lab.probe("site1", "count", "--server", server, "-n", "20", "--timeout", "0.5")
    assert clean["received"] == 20
    assert clean["rtt_min_ms"] < 40, clean


def _lab_namespaces(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in out.stdout.splitlines() if line.startswith(prefix + "-")]


@pytest.mark.usefixtures("natlab_required")
def test_teardown_removes_everything(tmp_path: Path) -> None:
    lab = NatLab.create(["cone", "sym"], state_dir=tmp_path)
    try:
        assert len(_lab_namespaces(lab.prefix)) == 6
        assert (tmp_path / f"{lab.prefix}.json").exists()
        sleeper = lab.popen("site1", ["sleep", "60"])
        # `ip netns exec` execs the program: the PID is sleep's own
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            argv0 = Path(f"/proc/{sleeper.pid}/cmdline").read_bytes().split(b"\0")[0]
            if argv0 == b"sleep":
                break
            time.sleep(0.01)
        assert argv0 == b"sleep"
        lab.set_netem("site2", delay_ms=5)
        delay_pids = list(lab.netem[2]["pids"])
    finally:
        lab.close()
    assert _lab_namespaces(lab.prefix) == []
    assert not (tmp_path / f"{lab.prefix}.json").exists()
    assert sleeper.poll() is not None
    for pid in delay_pids:
        assert (
            not Path(f"/proc/{pid}/cmdline").exists()
            or b"delay" not in Path(f"/proc/{pid}/cmdline").read_bytes()
        )


@pytest.mark.usefixtures("natlab_required")
def test_failed_build_is_torn_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(NatLab, "_nat_ruleset", lambda *_: "table ip lab { bogus }\n")
    with pytest.raises(LabError):
        NatLab.create(["cone"], prefix="plfail" + os.urandom(2).hex(), state_dir=tmp_path)
    assert not any(p.name.startswith("plfail") for p in Path("/run/netns").iterdir())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.usefixtures("natlab_required")
def test_existing_names_are_refused_and_left_alone(tmp_path: Path) -> None:
    prefix = "pltaken" + os.urandom(2).hex()
    foreign = f"{prefix}-site1"  # a namespace this lab would have used, made by someone else
    subprocess.run(["ip", "netns", "add", foreign], check=True, timeout=10)
    try:
        with pytest.raises(LabError, match="exists already"):
            NatLab.create(["cone"], prefix=prefix, state_dir=tmp_path)
        assert _lab_namespaces(prefix) == [foreign]
    finally:
        subprocess.run(["ip", "netns", "del", foreign], check=False, timeout=10)


@pytest.mark.usefixtures("natlab_required")
def test_cli_up_exec_status_down(tmp_path: Path) -> None:
    name = "plcli" + os.urandom(2).hex()
    cli = [str(REPO / "scripts" / "natlab"), "--state-dir", str(tmp_path)]
    env = {**os.environ, "PYTHON": sys.executable}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*cli, *args], capture_output=True, text=True, env=env, timeout=60, check=False
        )

    try:
        up = run("up", "--sites", "cone,sym", "--name", name)
        assert up.returncode == 0, up.stderr
        assert f"{name}-site2" in up.stdout
        ex = run("exec", "--name", name, "site1", "ip", "-4", "-o", "addr", "show")
        assert "10.0.1.2/24" in ex.stdout, ex.stderr
        ping = run("exec", "site2", "ping", "-c1", "-W2", "203.0.113.11")  # the only lab here
        assert ping.returncode == 0, ping.stdout + ping.stderr
        st = run("status", "--json")
        assert json.loads(st.stdout)[0]["prefix"] == name
        assert run("renumber", "nat1").stdout.strip() == "198.51.100.19"
        assert run("block", "site1", "site2").returncode == 0
        down = run("down", "--name", name)
        assert down.returncode == 0, down.stderr
    finally:
        if _lab_namespaces(name):
            run("down", "--name", name)
    assert _lab_namespaces(name) == []
    assert list(tmp_path.iterdir()) == []

"""The NAT lab's IPv6 (p2plab/natlab6.py): dual-stack sites route 2001:db8::/32 without NAT, each
site router's firewall filters like a home router's (replies only from the exact address and
port a LAN host sent to, nothing unsolicited), IPv4 keeps its NAT, and a lab that did not ask for
IPv6 has none."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from p2plab.natlab import LabError, NatLab, wait_for_line

pytestmark = pytest.mark.lab

LabFactory = Callable[..., NatLab]
REPO = Path(__file__).resolve().parents[2]
PORT, ALT = 4000, 4001


@pytest.fixture(scope="module")
def lab6(natlab_module: LabFactory) -> Iterator[NatLab]:
    """sym (IPv6), prc (IPv6), none (IPv6), cone (IPv4 only); reflector on the server's
    IPv6 addresses."""
    lab = natlab_module(["sym", "prc", "none", "cone"], ipv6=[1, 2, 3])
    a, b = lab.server6_addrs
    lab.start_reflector("server", [(a, PORT), (a, ALT), (b, PORT), (b, ALT)])
    yield lab


@pytest.mark.parametrize("site", [1, 2])
def test_firewall_filters_like_a_port_restricted_cone(lab6: NatLab, site: int) -> None:
    """RFC 5780 classification over IPv6 (no NAT: the host's own address is what the server
    sees, from every destination), whatever the site's IPv4 NAT is."""
    a, b = lab6.server6_addrs
    result = lab6.probe(
        f"site{site}",
        "nat",
        *("--primary", f"{a}:{PORT}", "--alt-addr", f"{b}:{PORT}"),
        *("--alt-port", f"{a}:{ALT}", "--alt-both", f"{b}:{ALT}"),
    )
    host = lab6.site6(site).host_addr
    assert result["mapping"] == "endpoint-independent", result
    assert all(m.rpartition(":")[0] == host for m in result["mapped"]), result
    assert result["filtering"] == "address-and-port-dependent", result


def _listen(lab: NatLab, site: str, ip: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "p2plab.probe", "listen", "--ip", ip, "--port", "5000"]
    proc = lab.popen(site, [*argv, "--timeout", "1.5"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert wait_for_line(proc.stdout, "ready", 10.0) is not None
    return proc


def test_unsolicited_inbound_dropped_open_site_reachable(lab6: NatLab) -> None:
    """Unsolicited UDP from the server reaches the host of the open (``none``) site only."""
    received = {}
    for site in (1, 3):
        host = lab6.site6(site).host_addr
        listener = _listen(lab6, f"site{site}", host)
        lab6.probe("server", "send", "--to", f"{host}:5000", "--count", "3")
        out, _ = listener.communicate(timeout=10)
        received[site] = json.loads(out.strip().splitlines()[-1])["received"]
    assert received == {1: 0, 3: 3}, received


def test_sites_reach_each_other_and_count(lab6: NatLab) -> None:
    lab6.reset_counters()
    t0 = time.monotonic()
    ping = lab6.exec("site1", "ping", "-c", "3", "-i", "0.2", "-W", "2", lab6.site6(2).host_addr)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert time.monotonic() - t0 < 5  # no duplicate address detection to wait for
    assert lab6.direct_bytes6(1, 2) > 0, lab6.counters6()
    assert lab6.direct_bytes(1, 2) == 0, lab6.counters()
    # IPv4 is unchanged: the symmetric NAT still drops what nobody asked for.
    assert lab6.exec("site2", "ping", "-c", "1", "-W", "1", lab6.site(1).wan_addr).returncode
    # The IPv4-only site has no global IPv6 address and no route there.
    assert "2001:db8" not in lab6.exec("site4", "ip", "-6", "addr").stdout
    with pytest.raises(LabError):
        lab6.site6(4)


def test_ipv4_only_lab_has_no_ipv6(natlab: LabFactory) -> None:
    lab = natlab(["prc"])
    assert lab.ipv6_sites == []
    with pytest.raises(LabError):
        lab.counters6()
    assert "2001:db8" not in lab.exec("site1", "ip", "-6", "addr").stdout
    assert "lab6" not in lab.exec("inet", "nft", "list", "tables").stdout


def test_cli_up_with_ipv6(tmp_path: Path) -> None:
    """``scripts/natlab up --ipv6`` builds a dual-stack lab and says so."""
    name = "p2p6c" + os.urandom(2).hex()
    cli = [str(REPO / "scripts" / "natlab"), "--state-dir", str(tmp_path)]
    env = {**os.environ, "PYTHON": sys.executable}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*cli, *args], capture_output=True, text=True, env=env, timeout=60, check=False
        )

    try:
        up = run("up", "--sites", "sym,sym", "--ipv6", "--name", name)
        assert up.returncode == 0, up.stderr
        assert "2001:db8::10" in up.stdout and "2001:db8:2::2 (IPv6, firewalled)" in up.stdout
        ping = run("exec", "--name", name, "site1", "ping", "-c1", "-W2", "2001:db8:2::2")
        assert ping.returncode == 0, ping.stdout + ping.stderr
    finally:
        down = run("down", "--name", name)
    assert down.returncode == 0, down.stderr
    assert not [p for p in Path("/run/netns").iterdir() if p.name.startswith(f"{name}-")]

"""Seeing what the network does, with real daemons in the NAT lab.

- The Prometheus endpoints of a node and of the rendezvous, scraped with curl while traffic
  crosses the tunnel.
- ``p2ptun netcheck`` from a site of every NAT type against the rendezvous' RFC 5780 server
  (``[stun] alternate``), checked against coturn's ``turnutils_natdiscovery`` run from the same
  site against coturn — and coturn's client run against our server, which must agree too.

One lab for the module (a site of each NAT type, the rendezvous on the server, coturn beside
it on other ports); every process is started with ``lab.popen`` and stopped by PID.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from nodelab import RV, RV_ALT, Deployment
from prometheus_client.parser import text_string_to_metric_families

from p2plab import coturn
from p2plab.natlab import NAT_TYPES, NatLab, wait_until

pytestmark = [pytest.mark.lab, pytest.mark.slow]

LabFactory = Callable[..., NatLab]
NODE_METRICS = "127.0.0.1:9560"
RV_METRICS = f"{RV}:9560"
RV_WEB = f"{RV}:8080"
WEB_TOKEN = "lab-admin-token-0123456789"
RV6 = "2001:db8::10"
"""The server's IPv6 address (STUN/TURN there too)."""
COTURN_PORT = 3490
"""coturn listens on both server addresses at 3490 and 3491 (RFC 5780), beside ours."""
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def dep(
    natlab_module: LabFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    """A site of every NAT type (site i has NAT_TYPES[i-1]; site 3 has IPv6 too), one node
    identity per site, the rendezvous with metrics, the map page and RFC 5780's alternate
    address and port, STUN/TURN on IPv6 as well."""
    lab = natlab_module(list(NAT_TYPES), ipv6=[3])  # the port-restricted site is dual-stack
    d = Deployment(lab, tmp_path_factory.mktemp("observe"))
    for site in lab.sites:
        i = site.index
        d.add_node(f"n{i}", f"site{i}", f"10.77.0.{i}/24", ifname=f"p2p{d.tag}n{i}")
    d.rendezvous_extra = (
        f'[metrics]\nlisten = "{RV_METRICS}"\n'
        f'[web]\nlisten = "{RV_WEB}"\nadmin_token = "{WEB_TOKEN}"\n'
    )
    d.stun_extra = f'alternate = "{RV_ALT}:3479"\n'
    d.start_rendezvous(stun_listen=[f"[{RV6}]:3478"])
    yield d
    d.stop_all()


def scrape(dep: Deployment, host: str, address: str) -> Samples:
    """GET /metrics with curl in ``host``'s namespace; every sample by name and labels."""
    result = dep.lab.exec(host, "curl", "-sS", "--max-time", "5", f"http://{address}/metrics")
    assert result.returncode == 0, result.stderr
    out = {}
    for family in text_string_to_metric_families(result.stdout):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_of_node_and_rendezvous_move_with_traffic(dep: Deployment) -> None:
    n1, n2 = dep.nodes[:2]  # public and full cone: direct
    metrics = f'[metrics]\nlisten = "{NODE_METRICS}"\n'
    for node in (n1, n2):
        dep.start_node(node, peers=[n2 if node is n1 else n1], extra=metrics)
    dep.wait_connected([n1, n2])
    peer = (("peer", n2.name),)
    before = scrape(dep, n1.site, NODE_METRICS)
    dep.assert_ping(n1, n2, count=10)
    after = scrape(dep, n1.site, NODE_METRICS)

    def moved(name: str) -> float:
        return after[(name, peer)] - before[(name, peer)]

    assert moved("p2ptun_peer_tx_packets_total") >= 10
    assert moved("p2ptun_peer_rx_packets_total") >= 10
    assert moved("p2ptun_peer_tx_bytes_total") >= 10 * 96  # ping + WireGuard's 32 bytes
    assert after[("p2ptun_peer_path", (("path", "direct"), *peer))] == 1
    assert after[("p2ptun_peer_connected", peer)] == 1
    assert after[("p2ptun_rendezvous_connected", ())] == 1
    rv = scrape(dep, "server", RV_METRICS)
    assert rv[("p2ptun_rendezvous_nodes_online", ())] == 2
    assert rv[("p2ptun_rendezvous_nodes_registered", ())] == len(dep.nodes)
    assert rv[("p2ptun_rendezvous_signaling_messages_total", ())] >= 2
    assert rv[("p2ptun_rendezvous_stun_binding_requests_total", ())] >= 2
    # A node that stops leaves the online gauge.
    dep.stop_nodes()
    wait_until(
        lambda: scrape(dep, "server", RV_METRICS)[("p2ptun_rendezvous_nodes_online", ())] == 0,
        timeout=15,
        interval=0.5,
    )


def netcheck(dep: Deployment, i: int) -> dict[str, Any]:
    node = dep.nodes[i - 1]
    path = dep.node_config(
        node,
        stun=[f"{RV}:3478", f"[{RV6}]:3478"],
        turn_servers=[
            f'{{ url = "turn:{RV}:3478?transport=udp" }}',
            f'{{ url = "turn:{RV}:3478?transport=tcp" }}',
        ],
    )
    argv = [sys.executable, "-m", "p2ptun", "netcheck", "-c", str(path)]
    start = time.monotonic()
    text = dep.lab.exec(node.site, *argv, timeout=60, env=dep.env())
    took = time.monotonic() - start
    assert text.returncode == 0, text.stderr
    as_json = dep.lab.exec(node.site, *argv, "--json", timeout=60, env=dep.env())
    assert as_json.returncode == 0, as_json.stderr
    report: dict[str, Any] = json.loads(as_json.stdout)
    report["text"] = text.stdout
    report["took"] = took
    return report


@pytest.fixture(scope="module")
def netchecks(dep: Deployment) -> dict[str, dict[str, Any]]:
    """``p2ptun netcheck`` (text and JSON) from every site, concurrently."""
    with ThreadPoolExecutor(len(dep.lab.sites)) as pool:
        futures = {s.nat: pool.submit(netcheck, dep, s.index) for s in dep.lab.sites}
        return {nat: f.result() for nat, f in futures.items()}


@pytest.fixture(scope="module")
def discoveries(dep: Deployment) -> dict[str, dict[str, coturn.NatDiscovery]]:
    """turnutils_natdiscovery from every site, against coturn and against our rendezvous."""
    lab = dep.lab
    server = coturn.start_coturn(lab, port=COTURN_PORT)
    try:
        with ThreadPoolExecutor(2 * len(lab.sites)) as pool:
            futures = {
                (s.nat, target): pool.submit(coturn.natdiscovery, lab, f"site{s.index}", RV, port)
                for s in lab.sites
                for target, port in (("coturn", COTURN_PORT), ("p2ptun", 3478))
            }
            out: dict[str, dict[str, coturn.NatDiscovery]] = {}
            for (nat, target), future in futures.items():
                out.setdefault(nat, {})[target] = future.result()
            return out
    finally:
        server.stop()


#: Our names for coturn's verdicts ("no-nat" is coturn's "Endpoint Independent" twice).
COTURN_WORDS = {
    "Endpoint Independent": "endpoint-independent",
    "Address Dependent": "address-dependent",
    "Address and Port Dependent": "address-and-port-dependent",
    None: "unknown",
}


@pytest.mark.parametrize("nat", NAT_TYPES)
def test_netcheck_agrees_with_coturn_natdiscovery(
    nat: str,
    netchecks: dict[str, dict[str, Any]],
    discoveries: dict[str, dict[str, coturn.NatDiscovery]],
    request: pytest.FixtureRequest,
) -> None:
    ours = netchecks[nat]
    theirs = discoveries[nat]["coturn"]
    mapping = "endpoint-independent" if ours["mapping"] == "no-nat" else ours["mapping"]
    filtering = "endpoint-independent" if ours["filtering"] == "no-nat" else ours["filtering"]
    assert (mapping, filtering) == (
        COTURN_WORDS[theirs.mapping],
        COTURN_WORDS[theirs.filtering],
    ), ours["text"] + theirs.output
    # coturn's client against our rendezvous finds the same: our RFC 5780 server interoperates.
    against_us = discoveries[nat]["p2ptun"]
    assert (against_us.mapping, against_us.filtering) == (theirs.mapping, theirs.filtering), (
        against_us.output
    )
    turn = {t["transport"]: t["reachable"] for t in ours["turn"]}
    assert turn == {"udp": nat != "udp-blocked", "tcp": True}, ours["turn"]
    assert ours["port_mapping"]["checked"] is False
    print(
        f"\n--- {nat}: coturn says mapping {theirs.mapping}, filtering {theirs.filtering}\n"
        f"$ p2ptun netcheck -c n.toml\n{ours['text']}FIGURE netcheck took {ours['took']:.2f} s"
    )


def test_netcheck_verdicts(netchecks: dict[str, dict[str, Any]]) -> None:
    verdicts = {nat: r["verdict"] for nat, r in netchecks.items()}
    assert verdicts["none"].startswith("no NAT")
    assert verdicts["cone"].startswith("easy NAT (full cone)")
    assert verdicts["prc"].startswith("easy NAT: direct with most peers")
    assert verdicts["sym"].startswith("hard NAT")
    assert verdicts["udp-blocked"].startswith("UDP blocked")


def test_netcheck_with_a_server_and_json(dep: Deployment) -> None:
    """The README's second form: one STUN server named on the command line, JSON out."""
    argv = [sys.executable, "-m", "p2ptun", "netcheck", "--server", RV, "--json"]
    result = dep.lab.exec("site3", *argv, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["mapping"], report["filtering"]) == (
        "endpoint-independent",
        "address-and-port-dependent",
    )
    assert report["turn"] == []


def test_bugreport_of_a_live_node_has_its_status_and_no_secret(
    dep: Deployment, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A running node behind the port-restricted NAT (its peer public): the archive has the
    live status and a netcheck; the node's key, its pre-shared key and a password planted in
    its log are nowhere in it."""
    import gzip
    import tarfile

    from p2ptun.keys import encode_key, generate_private_key

    n1, n3 = dep.nodes[0], dep.nodes[2]
    dep.start_node(n1, peers=[n3])
    dep.start_node(n3, peers=[n1])
    dep.wait_connected([n1, n3])
    dep.assert_ping(n3, n1)
    psk = encode_key(generate_private_key())
    path = n3.config_path
    assert path is not None
    with path.open("a") as f:
        f.write(f'# a pre-shared key someone kept as a comment\n# preshared_key = "{psk}"\n')
    assert n3.log_path is not None
    with n3.log_path.open("a") as f:
        f.write(f"debug: planted {n3.key} and password=Hunter2-Hunter2\n")
    out = tmp_path_factory.mktemp("bugreport") / "n3.tar.gz"
    argv = [sys.executable, "-m", "p2ptun", "bugreport", "-c", str(path), "-o", str(out)]
    result = dep.lab.exec(n3.site, *argv, "--log", str(n3.log_path), timeout=90, env=dep.env())
    assert result.returncode == 0, result.stderr
    with tarfile.open(out, "r:gz") as tar:
        files = {
            m.name.split("/", 1)[1]: tar.extractfile(m).read().decode()  # type: ignore[union-attr]
            for m in tar.getmembers()
        }
    status = json.loads(files["status.json"])
    assert status["peers"][0]["name"] == n1.name and status["peers"][0]["state"] == "connected"
    assert status["peers"][0]["path_history"][0]["reason"] == "selected"
    assert json.loads(files["netcheck.json"])["filtering"] == "address-and-port-dependent"
    assert n3.ifname in files["network.txt"]
    everything = "\n".join(files.values()) + gzip.decompress(out.read_bytes()).decode("latin-1")
    for secret in (n3.key, psk, "Hunter2-Hunter2"):
        assert secret not in everything
    assert "planted <redacted>" in files["logs.txt"]
    dep.stop_nodes()


def browser(dep: Deployment, host: str, url: str, *extra: str) -> str:
    """Load ``url`` in headless Chromium in ``host``'s namespace; the DOM it rendered."""
    profile = dep.workdir / f"chromium-{host}"
    argv = [
        "chromium-headless-shell",
        "--no-sandbox",  # root in a namespace
        "--disable-gpu",
        f"--user-data-dir={profile}",
        *extra,
        url,
    ]
    result = dep.lab.exec(host, *argv, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_map_page_in_a_headless_browser(
    dep: Deployment, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Two nodes relayed through the rendezvous (port-restricted and symmetric NATs): the
    map page, loaded by Chromium with the token, lists both with their public addresses and
    relayed bytes; without the token it is 401 (the browser shows the refusal)."""
    n3, n4 = dep.nodes[2], dep.nodes[3]
    dep.start_node(n3, peers=[n4])
    dep.start_node(n4, peers=[n3])
    dep.wait_connected([n3, n4])
    dep.assert_ping(n3, n4, count=20)
    url = f"http://{RV_WEB}/"
    dom = browser(dep, "site1", "--dump-dom", f"{url}?token={WEB_TOKEN}")
    for node in (n3, n4):
        assert f'<td class="name">{node.name}</td>' in dom, dom
    assert '<span id="online">2 online</span>' in dom
    for i in (2, 3):  # the public address of each node's NAT
        assert f">{dep.lab.sites[i].wan_addr.split('/')[0]}:" in dom, dom
    api = dep.lab.exec(
        "site1",
        *("curl", "-sS", "--max-time", "5", "-H", f"Authorization: Bearer {WEB_TOKEN}"),
        f"http://{RV_WEB}/api/nodes",
    )
    nodes = {n["name"]: n for n in json.loads(api.stdout)["nodes"]}
    assert sum(n["relayed_bytes_to_peers"] + n["relayed_bytes_to_node"] for n in nodes.values()) > 0
    refused = browser(dep, "site1", "--dump-dom", url)
    assert "401 Unauthorized" in refused and n3.name not in refused
    code = dep.lab.exec(
        "site1", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", url
    )
    assert code.stdout == "401"
    shot = tmp_path_factory.mktemp("map") / "map.png"
    browser(
        dep, "site1", f"--screenshot={shot}", "--window-size=1100,420", f"{url}?token={WEB_TOKEN}"
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"FIGURE map page screenshot {shot}")
    dep.stop_nodes()


def test_netcheck_sees_ipv6_where_the_site_has_it(netchecks: dict[str, dict[str, Any]]) -> None:
    """Site 3 is dual-stack behind a home router's IPv6 firewall (no NAT on IPv6): its IPv6
    Binding is answered with its own address; the IPv4-only sites say they have none."""
    v6 = netchecks["prc"]["ipv6"]
    assert v6["udp"] is True and v6["addresses"], v6
    assert v6["mapped"].startswith(f"[{v6['addresses'][0]}]:"), v6
    assert "IPv6:         2001:db8:" in netchecks["prc"]["text"]
    for nat in ("none", "cone", "sym"):
        assert netchecks[nat]["ipv6"] == {
            "addresses": [],
            "udp": None,
            "mapped": None,
            "note": "no global IPv6 address",
        }

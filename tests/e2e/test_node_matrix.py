"""The NAT matrix with real daemons: which path two ``p2ptun up`` nodes choose behind each pair
of NAT types, and that ping and TCP go through it (docs/ARCHITECTURE.md §4).

One lab for the module (seven sites: cone, cone, prc, prc, sym, sym, udp-blocked), one
rendezvous on its server (signaling, STUN, TURN with ephemeral credentials), one node identity
per site; each case starts the two nodes it needs (each knowing only the other), forgets the
NAT mappings earlier cases left at those sites first, and stops its nodes at the end.

Per case: ``path`` in ``p2ptun status --json`` on both sides (direct where hole punching can
work: cone/cone, prc/prc, cone/sym; relayed otherwise: prc/sym, sym/sym; over TURN/TCP when one
site blocks UDP), ping both ways, 4 MiB and 1 MiB over TCP inside the tunnel with length and
SHA-256 checked at both ends, and the lab's forward counters agreeing with the path (site to
site, or through the server). Two more sym/sym cases relay through coturn on the server's second
address instead of the embedded TURN: with a static long-term user, and with coturn's
``use-auth-secret`` sharing the rendezvous' ``[turn] auth_secret`` (the nodes name no
credentials, so they use the ones the rendezvous issues). The rendezvous issues credentials
only when it has a ``[turn]`` section, and that section also makes it serve TURN itself (on its
``[stun]`` listeners; there is no credentials-only mode), so here it keeps its own TURN on
203.0.113.10 and coturn listens on 203.0.113.11; the case checks that the relay in use is
coturn's and that the embedded TURN allocated nothing.

For the record, each case prints the path chosen and the time from the second ``p2ptun up`` to
the first ping reply through the tunnel; nothing asserts on time.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from nodelab import MB, RV, RV_ALT, Deployment, report

from p2plab.coturn import Coturn, start_coturn
from p2plab.natlab import NatLab

pytestmark = [pytest.mark.lab, pytest.mark.slow]

LabFactory = Callable[..., NatLab]

SITES = ("cone", "cone", "prc", "prc", "sym", "sym", "udp-blocked")
DIRECT_TYPES = {"host", "srflx", "prflx"}
COTURN_USER = ("p2ptun", "lab-password")


@dataclass(frozen=True)
class Case:
    """Nodes at sites ``a`` and ``b`` (``a`` starts first and pings); the path both must
    report; the embedded TURN's transport, or coturn (``static`` or ``secret``)."""

    id: str
    a: int
    b: int
    path: str
    turn: str = "udp"
    coturn: str | None = None


CASES = [
    Case("cone-cone", 1, 2, "direct"),
    Case("prc-prc", 3, 4, "direct"),
    Case("cone-sym", 1, 5, "direct"),
    Case("prc-sym", 3, 5, "relay"),
    Case("sym-sym", 5, 6, "relay"),
    Case("udpblocked-cone", 7, 1, "relay", turn="tcp"),
    Case("sym-sym-coturn-static", 5, 6, "relay", coturn="static"),
    Case("sym-sym-coturn-secret", 5, 6, "relay", coturn="secret"),
]

RESULTS: dict[str, str] = {}


@pytest.fixture(scope="module")
def matrix(
    natlab_module: LabFactory, tmp_path_factory: pytest.TempPathFactory, request: Any
) -> Iterator[Deployment]:
    """The module's lab, rendezvous and node identities (``n<i>`` at ``site<i>``, overlay
    address 10.77.0.i)."""
    dep = Deployment.per_site(natlab_module(list(SITES)), tmp_path_factory.mktemp("matrix"))
    try:
        yield dep
    finally:
        dep.stop_all()
        if RESULTS:
            report(request, "\n[node-matrix] path chosen, second `p2ptun up` -> first ping reply")
            for line in RESULTS.values():
                report(request, f"[node-matrix]   {line}")


@pytest.fixture
def matrix_case(matrix: Deployment) -> Iterator[Deployment]:
    """The module's deployment; the nodes a case started are stopped after it."""
    try:
        yield matrix
    finally:
        matrix.stop_nodes()


def _coturn(dep: Deployment, mode: str) -> tuple[Coturn, dict[str, Any]]:
    """coturn on :data:`RV_ALT`:3478 and the node config pointing STUN and TURN at it."""
    if shutil.which("turnserver") is None:
        pytest.skip("coturn (turnserver) is not installed")
    url = f"turn:{RV_ALT}:3478?transport=udp"
    if mode == "static":
        user, password = COTURN_USER
        args = ["-v", "--lt-cred-mech", f"--user={user}:{password}", "--realm=lab"]
        turn = f'{{ url = "{url}", username = "{user}", password = "{password}" }}'
    else:
        # The REST-API secret the rendezvous issues credentials with (its [turn] auth_secret).
        # Its own realm, not the rendezvous' "lab": the client takes the server's REALM.
        args = ["-v", "--use-auth-secret", f"--static-auth-secret={dep.turn_secret}"]
        args.append("--realm=coturn")
        turn = f'{{ url = "{url}" }}'
    server = start_coturn(dep.lab, addresses=[RV_ALT], extra_args=args)
    return server, {"stun": [f"{RV_ALT}:3478"], "turn_servers": [turn]}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_nat_pair(matrix_case: Deployment, case: Case) -> None:
    dep = matrix_case
    lab = dep.lab
    a, b = dep.nodes[case.a - 1], dep.nodes[case.b - 1]
    dep.fresh_sites(a, b)
    rv_mark = dep.rendezvous_log_size()
    config: dict[str, Any] = {"turn": case.turn}
    coturn = None
    if case.coturn is not None:
        coturn, config = _coturn(dep, case.coturn)
    try:
        dep.start_node(a, peers=[b], **config)
        dep.wait_ready(a)
        t_up = time.monotonic()
        dep.start_node(b, peers=[a], **config)
        first_ping = dep.first_ping(a, b) - t_up
        dep.wait_connected([a, b])
        entry = dep.wait_path(a, b, case.path)
        back = dep.peer_status(b, a)
        local = (entry["local_candidate"], back["local_candidate"])
        RESULTS[case.id] = (
            f"{case.id:<22} path={entry['path']:<6} first ping {first_ping:5.2f} s   "
            f"{a.name}: {local[0]['type']} {local[0]['address']}  "
            f"{b.name}: {local[1]['type']} {local[1]['address']}"
        )
        print(f"[node-matrix] {RESULTS[case.id]}")

        types = {local[0]["type"], local[1]["type"]}
        if case.path == "direct":
            assert types <= DIRECT_TYPES, (entry, back)
        else:
            assert "relay" in types, (entry, back)
        if case.turn == "tcp":
            # UDP is blocked at a's site: its end of the path is its TURN/TCP allocation.
            assert local[0]["type"] == "relay" and local[0]["address"].startswith(RV), entry
            assert "transport=tcp" in a.log() and "relay allocated" in a.log()

        dep.assert_ping(a, b)
        dep.assert_ping(b, a)
        lab.reset_counters()
        dep.tcp_transfer(a, b, 4 * MB)
        dep.tcp_transfer(b, a, 1 * MB, port=5002)
        direct = lab.direct_bytes(a.site, b.site)
        if case.path == "direct":  # straight between the NATs, not through the server
            assert direct > 5 * MB, lab.counters()
            assert lab.server_bytes(a.site) < MB and lab.server_bytes(b.site) < MB
        else:
            # Only ICE checks (it keeps trying direct pairs while relayed), no data.
            assert direct < 64 * 1024, lab.counters()
            assert lab.server_bytes(a.site) > 5 * MB and lab.server_bytes(b.site) > 5 * MB
        after = dep.peer_status(a, b)
        assert after["tx_bytes"] > 4 * MB and after["rx_bytes"] > MB, after
        assert after["consent_age"] is not None and after["last_handshake"] is not None

        if coturn is not None:
            # The relay is coturn's, not the rendezvous' embedded TURN.
            relayed = [c["address"] for c in local if c["type"] == "relay"]
            assert relayed and all(r.startswith(f"{RV_ALT}:") for r in relayed), local
            assert "allocation created" not in dep.rendezvous_log(rv_mark)
            allocations = coturn.log_text.count("ALLOCATE processed, success")
            assert allocations >= 2, coturn.log_text[-3000:]
            if case.coturn == "secret":
                for node in (a, b):  # REST-API user names: "<expiry>:<node name>"
                    assert f":{node.name}>" in coturn.log_text, coturn.log_text[-3000:]
    finally:
        codes = dep.stop_nodes()
        if coturn is not None:
            coturn.stop()
    assert codes == {a.name: 0, b.name: 0}, codes
    for node in (a, b):
        assert lab.exec(node.site, "ip", "link", "show", node.ifname).returncode != 0

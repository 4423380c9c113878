"""ICE across real NATs: two of our ICE transports (``python -m p2plab.ice_probe``), one in
each site host of the lab, with our embedded STUN/TURN server (``p2ptun rendezvous``) on the
public server host. For each NAT pair the selected pair must be direct where hole punching can
work and relayed where it cannot (docs/ARCHITECTURE.md §4), relayed over TCP when one site blocks
UDP; data must flow both ways, and the lab's forwarding counters must show it went the way the
pair says (site to site, or through the server).

Time to nomination (from the remote description being applied to the first selected pair) is
printed per case for the record; nothing asserts on it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.lab, pytest.mark.slow]

_spec = importlib.util.spec_from_file_location(
    "ice_lab", Path(__file__).resolve().parents[1] / "interop" / "ice_lab.py"
)
assert _spec is not None and _spec.loader is not None
ice_lab: Any = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ice_lab)

COUNT = 200
SIZE = 1000
PAYLOAD = COUNT * SIZE  # bytes each side sends after the pair is selected
DIRECT_TYPES = {"host", "srflx", "prflx"}

#: (site1 NAT, site2 NAT, expected path)
CASES = [
    ("cone", "cone", "direct"),
    ("prc", "prc", "direct"),
    ("cone", "sym", "direct"),
    ("prc", "sym", "relay"),
    ("sym", "sym", "relay"),
    ("udp-blocked", "cone", "relay-tcp"),
]

TIMINGS: dict[str, dict[str, Any]] = {}


@pytest.mark.parametrize(("nat1", "nat2", "expected"), CASES, ids=[f"{a}-{b}" for a, b, _ in CASES])
def test_ice_nat_pair(natlab: Any, nat1: str, nat2: str, expected: str) -> None:
    lab = natlab([nat1, nat2])
    ice_lab.Rendezvous(lab)
    run = ice_lab.PeerRun(lab)
    turn = [ice_lab.TURN_UDP, ice_lab.TURN_TCP]
    for name, host, peer, controlling in (
        ("a", "site1", "b", True),
        ("b", "site2", "a", False),
    ):
        argv = ice_lab.probe_argv(
            name, peer, run.dir, controlling=controlling, turn=turn, count=COUNT, size=SIZE
        )
        run.start(name, host, argv)
    connected = run.wait_connected()
    lab.reset_counters()
    run.go()
    results = run.results()
    direct = lab.direct_bytes("site1", "site2")
    via_server = lab.server_bytes("site1") + lab.server_bytes("site2")
    a, b = results["a"], results["b"]
    case = f"{nat1}/{nat2}"
    TIMINGS[case] = {
        "a": (a["connected"]["local_type"], a["connected"]["remote_type"]),
        "b": (b["connected"]["local_type"], b["connected"]["remote_type"]),
        "nomination_s": (round(a["time_to_nomination"], 3), round(b["time_to_nomination"], 3)),
        "gather_s": (a["gather_time"], b["gather_time"]),
    }
    print(
        f"\n[ice-natmatrix] {case}: a={TIMINGS[case]['a']} b={TIMINGS[case]['b']} "
        f"time to nomination a={TIMINGS[case]['nomination_s'][0]} s "
        f"b={TIMINGS[case]['nomination_s'][1]} s gather={TIMINGS[case]['gather_s']} "
        f"direct={direct} B via_server={via_server} B"
    )
    for name, result in results.items():
        assert result["ok"], result
        assert result["received"] >= COUNT * 0.9, result
        # The pair stayed the same through the data phase.
        assert result["selected"] == connected[name]
    pa, pb = connected["a"], connected["b"]
    if expected == "direct":
        for pair in (pa, pb):
            assert not pair["relayed"], (pa, pb)
            assert {pair["local_type"], pair["remote_type"]} <= DIRECT_TYPES
        assert direct >= 2 * PAYLOAD * 0.9
        assert via_server < PAYLOAD / 10
    else:
        assert pa["relayed"] and pb["relayed"], (pa, pb)
        assert via_server >= 2 * PAYLOAD * 0.9
        assert direct < PAYLOAD / 10
        if expected == "relay-tcp":
            # The UDP-blocked side relays through its TCP allocation.
            assert pa["local_type"] == "relay" and pa["via_relay"]
            assert a.get("relay_transport") == "tcp", a
            assert pb["remote_type"] == "relay"

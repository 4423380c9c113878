"""Our ICE agent (through :mod:`p2ptun.net.ice_transport`, in trio) against aioice's
(asyncio), each in its own site namespace of the NAT lab, in both roles.

Direct cases: site 1 (ours) sits behind a full-cone NAT, site 2 (aioice) behind a
port-restricted one, so only the server-reflexive addresses connect (the host candidates are
private addresses of different LANs). STUN is our embedded server (``p2ptun rendezvous`` on the
public server host) or coturn. Relayed case: a port-restricted NAT facing a symmetric one,
both sides allocating on coturn, so only a pair through a relay works.

Descriptions (ufrag, pwd, candidates, end-of-candidates) go through files; once both selected a
pair, each side sends datagrams and counts the other's. aioice nominates aggressively when it
controls (USE-CANDIDATE on its checks); our controlled agent must accept that.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("aioice")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ice_lab

pytestmark = [pytest.mark.lab, pytest.mark.slow]

PEER = Path(__file__).resolve().parent / "ice_aioice_peer.py"
COUNT = 100
SIZE = 500
DIRECT = {"host", "srflx", "prflx"}

#: (server, site1 NAT (ours), site2 NAT (aioice), expected path)
CASES = [
    ("ours", "cone", "prc", "direct"),
    ("coturn", "cone", "prc", "direct"),
    ("coturn", "prc", "sym", "relay"),
]


def start_coturn(lab: Any) -> None:
    if shutil.which("turnserver") is None:
        pytest.skip("coturn (turnserver) is not installed")
    from p2plab.coturn import start_coturn as start

    start(
        lab,
        addresses=[ice_lab.SERVER_IP],
        extra_args=[
            "--lt-cred-mech",
            f"--user={ice_lab.USER}:{ice_lab.PASSWORD}",
            f"--realm={ice_lab.REALM}",
            "--relay-ip",
            ice_lab.SERVER_IP,
            "--min-port",
            "49152",
            "--max-port",
            "49999",
            "--fingerprint",
        ],
    )


@pytest.mark.parametrize("we_control", [True, False], ids=["we-control", "aioice-controls"])
@pytest.mark.parametrize(
    ("server", "nat1", "nat2", "expected"),
    CASES,
    ids=[f"{s}-{a}-{b}" for s, a, b, _ in CASES],
)
def test_connect_with_aioice(
    natlab: Any, server: str, nat1: str, nat2: str, expected: str, we_control: bool
) -> None:
    lab = natlab([nat1, nat2])
    if server == "ours":
        ice_lab.Rendezvous(lab)
    else:
        start_coturn(lab)
    relay = expected == "relay"
    run = ice_lab.PeerRun(lab)
    ours = ice_lab.probe_argv(
        "ours",
        "aioice",
        run.dir,
        controlling=we_control,
        turn=[ice_lab.TURN_UDP] if relay else [],
        count=COUNT,
        size=SIZE,
    )
    theirs_cfg: dict[str, Any] = {
        "name": "aioice",
        "peer": "ours",
        "dir": str(run.dir),
        "controlling": not we_control,
        "stun": [ice_lab.SERVER_IP, ice_lab.STUN_PORT],
        "count": COUNT,
        "size": SIZE,
        "timeout": 40,
    }
    if relay:
        theirs_cfg["turn"] = [ice_lab.SERVER_IP, ice_lab.STUN_PORT, ice_lab.USER, ice_lab.PASSWORD]
    run.start("ours", "site1", ours)
    run.start("aioice", "site2", [sys.executable, str(PEER), json.dumps(theirs_cfg)])
    connected = run.wait_connected()
    lab.reset_counters()
    run.go()
    results = run.results()
    mine, theirs = results["ours"], results["aioice"]
    print(
        f"\n[ice-aioice] {server} {nat1}/{nat2} we_control={we_control}: "
        f"ours={connected['ours']} aioice={connected['aioice']} time to nomination "
        f"ours={mine['time_to_nomination']:.3f} s aioice={theirs['time_to_nomination']:.3f} s"
    )
    assert mine["ok"] and theirs["ok"], results
    po, pa = connected["ours"], connected["aioice"]
    # Data both ways.
    assert mine["received"] >= COUNT * 0.9, mine
    assert theirs["received"] >= COUNT * 0.9, theirs
    payload = 2 * COUNT * SIZE
    if not relay:
        # A direct path on both sides (aioice reports its pair's local *base*, the host
        # address; the lab's NATs keep source ports, so the ports match across the NAT).
        assert not po["relayed"] and not pa["relayed"]
        assert {po["local_type"], po["remote_type"], pa["local_type"], pa["remote_type"]} <= DIRECT
        assert po["remote"].rsplit(":", 1)[1] == pa["local"].rsplit(":", 1)[1]
        assert pa["remote"] == po["local"]
        assert lab.direct_bytes("site1", "site2") >= payload * 0.9
    else:
        assert po["relayed"] and pa["relayed"], (po, pa)
        assert lab.server_bytes("site1") + lab.server_bytes("site2") >= payload * 0.9
        assert lab.direct_bytes("site1", "site2") < payload / 10

"""Our ICE agent (through :mod:`p2ptun.net.ice_transport`, in trio) against aioice's
(asyncio), each in its own site namespace of the NAT lab, in both roles.

Site 1 sits behind a full-cone NAT, site 2 behind a port-restricted one, so only the
server-reflexive addresses (learnt from our embedded STUN server, ``p2ptun rendezvous`` on the
public server host) connect: the host candidates are private addresses of different LANs.
Descriptions (ufrag, pwd, candidates, end-of-candidates) go through files; once both selected a
pair, each side sends datagrams and counts the other's. aioice nominates aggressively when it
controls (USE-CANDIDATE on its checks); our controlled agent must accept that.
"""

from __future__ import annotations

import json
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


@pytest.mark.parametrize("we_control", [True, False], ids=["we-control", "aioice-controls"])
def test_connect_with_aioice(natlab: Any, we_control: bool) -> None:
    lab = natlab(["cone", "prc"])
    ice_lab.Rendezvous(lab)
    run = ice_lab.PeerRun(lab)
    ours = ice_lab.probe_argv(
        "ours", "aioice", run.dir, controlling=we_control, count=COUNT, size=SIZE
    )
    theirs_cfg = {
        "name": "aioice",
        "peer": "ours",
        "dir": str(run.dir),
        "controlling": not we_control,
        "stun": [ice_lab.SERVER_IP, ice_lab.STUN_PORT],
        "count": COUNT,
        "size": SIZE,
        "timeout": 40,
    }
    run.start("ours", "site1", ours)
    run.start("aioice", "site2", [sys.executable, str(PEER), json.dumps(theirs_cfg)])
    connected = run.wait_connected()
    lab.reset_counters()
    run.go()
    results = run.results()
    mine, theirs = results["ours"], results["aioice"]
    print(
        f"\n[ice-aioice] we_control={we_control}: ours={connected['ours']} "
        f"aioice={connected['aioice']} time to nomination ours="
        f"{mine['time_to_nomination']:.3f} s aioice={theirs['time_to_nomination']:.3f} s"
    )
    assert mine["ok"] and theirs["ok"], results
    # A direct path on both sides (aioice reports its pair's local *base*, the host address).
    po, pa = connected["ours"], connected["aioice"]
    assert not po["relayed"] and not pa["relayed"]
    assert {po["local_type"], po["remote_type"], pa["local_type"], pa["remote_type"]} <= DIRECT
    # The lab's NATs keep source ports: the address we send to is aioice's base behind its NAT.
    assert po["remote"].rsplit(":", 1)[1] == pa["local"].rsplit(":", 1)[1]
    assert pa["remote"] == po["local"]
    # Data both ways, straight between the sites.
    assert mine["received"] >= COUNT * 0.9, mine
    assert theirs["received"] >= COUNT * 0.9, theirs
    assert lab.direct_bytes("site1", "site2") >= 2 * COUNT * SIZE * 0.9

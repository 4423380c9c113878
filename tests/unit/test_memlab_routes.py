"""Subnet routes and the exit node in whole daemons, in memory under virtual time
(p2plab.memlab): what the node asks of its host (forwarding, the nftables table, the exit
node's policy routing, the underlay mark) as the exit node is chosen, refused
and left. The kernel's side runs in tests/e2e/test_routes_lab.py."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest
import trio
import trio.testing

from p2plab.memlab import MemoryLab, MemoryNode
from p2plab.memnet import EPOCH
from p2ptun.keys import public_key
from p2ptun.membership import Certificate, Details, ed25519_public
from p2ptun.membership.cert import sign_certificate

pytestmark = pytest.mark.filterwarnings("ignore::trio.TrioDeprecationWarning")

net = ipaddress.ip_network
LAN = net("192.168.1.0/24")
DEFAULT = net("0.0.0.0/0")


def certificate(lab: MemoryLab, node: MemoryNode, *routes: ipaddress.IPv4Network) -> Certificate:
    """``node``'s certificate from the lab's authority, with ``routes``."""
    assert lab.network_name is not None
    details = Details(
        network=lab.network_name,
        name=node.name,
        serial=lab.rng.randbytes(16),
        addresses=node.config.interface.addresses,
        routes=routes,
        groups=(),
        not_before=int(EPOCH),
        not_after=int(EPOCH + 86400),
        authority=ed25519_public(lab.authority),
    )
    return sign_certificate(details, public_key(node.config.private_key), lab.authority)


async def test_routes_and_exit_node_as_the_daemon_applies_them(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lab = MemoryLab(network="home", seed=12)
    home = lab.node("home", "cone")
    laptop = lab.node("laptop", "prc")
    home.certificate = certificate(lab, home, LAN, DEFAULT)
    home.config = dataclasses.replace(
        home.config,
        interface=dataclasses.replace(
            home.config.interface, advertise_routes=(LAN, net("192.168.2.0/24"), DEFAULT)
        ),
    )
    home_if, laptop_if = home.config.interface.name, laptop.config.interface.name
    async with trio.open_nursery() as nursery:
        await lab.start(nursery)
        await lab.wait_until(lambda: "home" in laptop.daemon.peers, 15)
        # home forwards what its certificate carries, refuses the rest; every node marks.
        status = home.daemon.status()["node"]
        assert status["routes"]["advertised"] == [str(LAN), str(DEFAULT)]
        assert status["routes"]["refused"][0]["route"] == "192.168.2.0/24"
        assert home.host.forwarding == {4}
        assert 'oifname != "' in home.host.nftables[home_if]
        assert home.host.fwmark == laptop.host.fwmark == 0x7074
        # laptop routes the LAN through home, never the default route it is not using.
        session = laptop.daemon.peers["home"]
        assert LAN in session.routes and DEFAULT not in session.config.allowed_ips
        assert laptop.host.routes[laptop_if] == {LAN}
        assert laptop.host.exit_routing == {} and laptop_if not in laptop.host.nftables

        # Refused at run time: no such peer; a peer without a signed default route.
        with pytest.raises(ValueError, match="no peer named 'nas'"):
            await laptop.daemon.select_exit_node("nas")
        with pytest.raises(ValueError, match=r"laptop may not route 0\.0\.0\.0/0"):
            await home.daemon.select_exit_node("laptop")
        assert home.host.exit_routing == {}

        # Through the control socket's handler: malformed requests are refused in one line.
        with pytest.raises(ValueError, match="nothing to set"):
            await laptop.daemon._handle_control({"cmd": "set"})
        with pytest.raises(ValueError, match="a peer name or null"):
            await laptop.daemon._handle_control({"cmd": "set", "exit_node": 5})
        reply = await laptop.daemon._handle_control({"cmd": "set", "exit_node": "home"})
        assert reply["ok"] and reply["exit_node"]["state"] == "active"
        decision = laptop.daemon.exit
        assert decision.state == "active"
        assert laptop.host.exit_routing == {0x7074: (laptop_if, (DEFAULT,), ())}
        assert DEFAULT in laptop.daemon.peers["home"].config.allowed_ips
        assert DEFAULT not in laptop.host.routes[laptop_if]  # never in the main table
        assert "ct mark set meta mark" in laptop.host.nftables[laptop_if]
        assert laptop.daemon.status()["node"]["exit_node"]["state"] == "active"

        await laptop.daemon.select_exit_node(None)
        assert laptop.host.exit_routing == {} and laptop_if not in laptop.host.nftables
        assert DEFAULT not in laptop.daemon.peers["home"].config.allowed_ips
        assert laptop.daemon.status()["node"]["exit_node"] is None

        # Chosen again, then home goes offline: its member stays a peer and laptop keeps
        # the exit routing (its traffic waits for home rather than leaking past it).
        await laptop.daemon.select_exit_node("home")
        home.daemon.stop()
        await lab.wait_until(lambda: not home.host.tuns, 10)
        assert home.host.nftables == {}
        await trio.sleep(10)
        assert laptop.host.exit_routing == {0x7074: (laptop_if, (DEFAULT,), ())}
        laptop.daemon.stop()
        await lab.wait_until(lambda: not laptop.host.tuns, 10)
        nursery.cancel_scope.cancel()

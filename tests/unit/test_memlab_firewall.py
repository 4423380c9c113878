"""The firewall in whole daemons on the in-memory network (virtual time): a UDP packet a peer
opens towards a node is dropped and counted there; the node's own UDP flow gets its reply."""

from __future__ import annotations

import dataclasses
import ipaddress
import struct

import pytest
import trio
import trio.testing

from p2plab.memlab import MemoryLab
from p2ptun.config.schema import MetricsSettings
from p2ptun.firewall import ALLOW_ICMP, Policy, Rule
from tests.unit.test_metrics import http_get, samples


def udp_packet(src: str, dst: str, sport: int, dport: int) -> bytes:
    payload = struct.pack("!HHHH", sport, dport, 12, 0) + b"data"
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45, 0, 20 + len(payload), 0, 0, 64, 17, 0,
        ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed,
    )  # fmt: skip
    return header + payload


async def test_inbound_udp_dropped_and_replies_pass(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lab = MemoryLab()
    alice = lab.node("alice", "cone")
    bob = lab.node("bob", "cone")
    bob.config = dataclasses.replace(bob.config, metrics=MetricsSettings((bob.host.ip, 9560)))
    async with trio.open_nursery() as nursery:
        await lab.start(nursery)
        pinger = lab.pinger(alice, bob)
        await nursery.start(pinger.run)
        await lab.wait_until(lambda: pinger.replies, 15)
        a, b = alice.overlay_ip, bob.overlay_ip
        before = (alice.tun.other_packets, bob.tun.other_packets)

        alice.tun.inject(udp_packet(a, b, 5000, 9999))  # alice opens a UDP flow to bob
        fw_b = bob.daemon.status()["firewall"]
        await lab.wait_until(
            lambda: bob.daemon.status()["firewall"]["dropped"]["inbound"]["default_deny"] == 1,
            5,
        )
        assert bob.tun.other_packets == before[1]  # never reached bob's kernel
        bob_peer = bob.daemon.status()["peers"][0]
        assert bob_peer["firewall_dropped"] == 1

        bob.tun.inject(udp_packet(b, a, 9999, 5000))  # bob's own flow: out, and alice's reply
        await lab.wait_until(lambda: alice.tun.other_packets == before[0] + 1, 5)
        fw_a = alice.daemon.status()["firewall"]
        assert fw_a["dropped"]["inbound"]["default_deny"] == 0
        assert fw_a["outbound"][0]["flows"] >= 1 and fw_b["max_flows"] == 16384
        # ... and in bob's metrics
        code, body = await http_get(bob.host, bob.host.ip, 9560, "/metrics")
        assert code == 200
        metrics = samples(body)
        assert (
            metrics[("p2ptun_dropped_total", (("reason", "firewall_inbound_default_deny"),))] == 1
        )
        assert metrics[("p2ptun_firewall_flows", ())] >= 1
        icmp = (("direction", "inbound"), ("rule", "0: icmp any peer"))
        assert metrics[("p2ptun_firewall_rule_flows_total", icmp)] >= 1
        nursery.cancel_scope.cancel()


def tcp_syn(src: str, dst: str, sport: int, dport: int) -> bytes:
    segment = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 65535, 0, 0)
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45, 0, 20 + len(segment), 0, 0, 64, 6, 0,
        ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed,
    )  # fmt: skip
    return header + segment


async def test_certificate_groups_open_a_port(autojump_clock: trio.testing.MockClock) -> None:
    """Network members: the group in alice's certificate lets her reach bob's port 22;
    carol, without it, is dropped."""
    lab = MemoryLab(network="home", seed=3)
    alice = lab.node("alice", "cone", groups=("admin",))
    bob = lab.node("bob", "cone")
    carol = lab.node("carol", "cone")
    ssh = Rule("tcp", (22, 22), groups=frozenset({"admin"}))
    bob.config = dataclasses.replace(bob.config, firewall=Policy(inbound=(ssh, ALLOW_ICMP)))
    async with trio.open_nursery() as nursery:
        await lab.start(nursery)
        for src in (alice, carol):
            pinger = lab.pinger(src, bob)
            await nursery.start(pinger.run)
            await lab.wait_until(lambda p=pinger: p.replies, 30)  # type: ignore[misc]
        before = bob.tun.other_packets
        alice.tun.inject(tcp_syn(alice.overlay_ip, bob.overlay_ip, 40000, 22))
        await lab.wait_until(lambda: bob.tun.other_packets == before + 1, 5)
        carol.tun.inject(tcp_syn(carol.overlay_ip, bob.overlay_ip, 40000, 22))
        await lab.wait_until(
            lambda: bob.daemon.status()["firewall"]["dropped"]["inbound"]["default_deny"] == 1,
            5,
        )
        assert bob.tun.other_packets == before + 1
        fw = bob.daemon.status()["firewall"]
        assert fw["inbound"][0] == {"rule": "tcp/22 groups=admin", "flows": 1}
        nursery.cancel_scope.cancel()


async def test_firewall_off_lets_everything_in(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``P2PTUN_FIREWALL=off``: no filtering, no firewall in the status."""
    monkeypatch.setenv("P2PTUN_FIREWALL", "off")
    lab = MemoryLab()
    alice = lab.node("alice", "cone")
    bob = lab.node("bob", "cone")
    async with trio.open_nursery() as nursery:
        await lab.start(nursery)
        pinger = lab.pinger(alice, bob)
        await nursery.start(pinger.run)
        await lab.wait_until(lambda: pinger.replies, 15)
        before = bob.tun.other_packets
        alice.tun.inject(udp_packet(alice.overlay_ip, bob.overlay_ip, 5000, 9999))
        await lab.wait_until(lambda: bob.tun.other_packets == before + 1, 5)
        assert "firewall" not in bob.daemon.status()
        nursery.cancel_scope.cancel()

"""The in-memory network (p2plab.memnet) and its NAT model behave like the lab's NATs.

Everything runs under trio's MockClock: the checks are on virtual time, exactly.
"""

from __future__ import annotations

import ipaddress
import random

import pytest
import trio
import trio.testing

from p2plab.memnet import MemoryHost, MemoryNetwork, Pinger, icmp_echo
from p2plab.natmodel import (
    NAT_TYPES,
    Filtering,
    Mapping,
    NatBehaviour,
    NatTable,
    PortAllocation,
)
from p2ptun.addr import Address

SERVER = "203.0.113.10"
OTHER = "203.0.113.20"


class Recorder:
    """A DatagramReceiver that keeps what it got."""

    def __init__(self) -> None:
        self.got: list[tuple[bytes, Address, float]] = []
        self.locals: list[str | None] = []
        self.batches = 0

    def datagram(self, data: memoryview, source: Address, local: str | None) -> None:
        self.got.append((bytes(data), source, trio.current_time()))
        self.locals.append(local)

    def drained(self) -> None:
        self.batches += 1


# -- the NAT model, without I/O ---------------------------------------------------------------


def test_port_restricted_cone_maps_independently_and_filters_by_address_and_port() -> None:
    nat = NatTable("198.51.100.1", NAT_TYPES["prc"])  # type: ignore[arg-type]
    inside = ("10.0.1.2", 5000)
    a = nat.outbound(inside, (SERVER, 3478), 0.0)
    b = nat.outbound(inside, (OTHER, 3478), 0.0)
    assert a == b == ("198.51.100.1", 5000)  # endpoint-independent, port preserved
    assert nat.inbound((SERVER, 3478), 5000, 1.0) == inside
    assert nat.inbound((SERVER, 3479), 5000, 1.0) is None  # another port of the same host
    assert nat.inbound(("192.0.2.9", 3478), 5000, 1.0) is None


def test_symmetric_nat_maps_each_destination_to_its_own_port() -> None:
    nat = NatTable("198.51.100.1", NAT_TYPES["sym"], rng=random.Random(1))  # type: ignore[arg-type]
    inside = ("10.0.1.2", 5000)
    a = nat.outbound(inside, (SERVER, 3478), 0.0)
    b = nat.outbound(inside, (OTHER, 3478), 0.0)
    assert a[1] != b[1]
    assert nat.outbound(inside, (SERVER, 3478), 0.0) == a  # the same flow keeps its port
    assert nat.inbound((OTHER, 3478), a[1], 0.0) is None


def test_sequential_allocation_is_predictable() -> None:
    behaviour = NatBehaviour(Mapping.APDM, Filtering.APDF, PortAllocation.SEQUENTIAL)
    nat = NatTable("198.51.100.1", behaviour)
    ports = [nat.outbound(("10.0.1.2", 5000), (SERVER, 1000 + i), 0.0)[1] for i in range(5)]
    assert ports == [20000, 20001, 20002, 20003, 20004]


def test_full_cone_lets_anyone_in_once_mapped() -> None:
    nat = NatTable("198.51.100.1", NAT_TYPES["cone"])  # type: ignore[arg-type]
    nat.outbound(("10.0.1.2", 5000), (SERVER, 3478), 0.0)
    assert nat.inbound(("192.0.2.77", 999), 5000, 0.5) == ("10.0.1.2", 5000)


def test_idle_mappings_expire_like_conntrack() -> None:
    nat = NatTable("198.51.100.1", NAT_TYPES["prc"])  # type: ignore[arg-type]
    inside = ("10.0.1.2", 5000)
    nat.outbound(inside, (SERVER, 3478), 0.0)
    assert nat.inbound((SERVER, 3478), 5000, 29.9) == inside  # now two-way: 120 s
    assert nat.inbound((SERVER, 3478), 5000, 149.8) == inside
    assert nat.inbound((SERVER, 3478), 5000, 269.9) is None
    assert nat.expired == 1
    nat.outbound(inside, (OTHER, 1), 300.0)  # one way only: 30 s
    assert nat.inbound((OTHER, 1), 5000, 330.1) is None


def test_renumber_forgets_every_mapping() -> None:
    nat = NatTable("198.51.100.1", NAT_TYPES["cone"])  # type: ignore[arg-type]
    nat.outbound(("10.0.1.2", 5000), (SERVER, 3478), 0.0)
    nat.renumber("198.51.100.99")
    assert nat.bindings == 0
    assert nat.inbound((SERVER, 3478), 5000, 0.0) is None
    assert nat.outbound(("10.0.1.2", 5000), (SERVER, 3478), 0.0) == ("198.51.100.99", 5000)


# -- the network under virtual time --------------------------------------------------------------


def build(nat: str = "prc") -> tuple[MemoryNetwork, MemoryHost, MemoryHost]:
    net = MemoryNetwork(latency=0.01)
    server = net.public_host("server", SERVER)
    site = net.site("site1", nat, "198.51.100.11", "10.0.1.0/24")
    node = site.host("node")
    return net, server, node


async def test_datagram_crosses_the_nat_and_the_reply_comes_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net, server, node = build("prc")
    srv_port = server.bind_datagram(SERVER, 3478)
    node_port = node.open_datagram_ports(5000)[0]
    srv_rx, node_rx = Recorder(), Recorder()
    async with trio.open_nursery() as nursery:
        await nursery.start(net.run)
        nursery.start_soon(srv_port.receive_loop, srv_rx)
        nursery.start_soon(node_port.receive_loop, node_rx)
        t0 = trio.current_time()
        assert node_port.send(b"hello", (SERVER, 3478))
        await trio.sleep(1)
        [(data, seen_from, at)] = srv_rx.got
        assert data == b"hello"
        assert seen_from == ("198.51.100.11", 5000)  # the NAT's public address, port kept
        assert at == pytest.approx(t0 + net.lan_latency + net.latency)
        srv_port.send(b"back", seen_from)
        # a stranger cannot use the mapping (port-restricted)
        stranger = net.public_host("stranger", OTHER).bind_datagram(OTHER, 3478)
        stranger.send(b"intrusion", seen_from)
        await trio.sleep(1)
        assert [d for d, _, _ in node_rx.got] == [b"back"]
        assert node_rx.got[0][1] == (SERVER, 3478)
        # Each port says which of its host's addresses a datagram came to.
        assert srv_rx.locals == [SERVER] and node_rx.locals == [node.ip]
        nursery.cancel_scope.cancel()


async def test_a_host_with_two_addresses_answers_from_each(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net, server, node = build("prc")
    second = "203.0.113.11"
    server.add_address(second)
    assert server.addresses == [SERVER, second]
    srv_port = server.bind_datagram("0.0.0.0", 3478)
    node_port = node.open_datagram_ports(5000)[0]
    srv_rx, node_rx = Recorder(), Recorder()
    async with trio.open_nursery() as nursery:
        await nursery.start(net.run)
        nursery.start_soon(srv_port.receive_loop, srv_rx)
        nursery.start_soon(node_port.receive_loop, node_rx)
        node_port.send(b"to the second", (second, 3478))
        await trio.sleep(1)
        assert srv_rx.locals == [second]
        (data, client, _), local = srv_rx.got[0], srv_rx.locals[0]
        # An answer from the route's source (the first address) does not pass the
        # port-restricted NAT: the node only ever sent to the second. One from the address the
        # request came to does.
        assert srv_port.send(b"unasked", client)
        assert srv_port.send(data.upper(), client, local)
        # An address the host does not have: the datagram goes from the route's, counted.
        assert srv_port.send(b"gone", client, "203.0.113.99")
        await trio.sleep(1)
        assert [(d, s) for d, s, _ in node_rx.got] == [(b"TO THE SECOND", (second, 3478))]
        assert srv_port.counters.tx_source_fallbacks == 1
        # The second address goes away: nothing reaches it any more.
        server.remove_address(second)
        node_port.send(b"late", (second, 3478))
        await trio.sleep(1)
        assert len(srv_rx.got) == 1
        nursery.cancel_scope.cancel()


async def test_renumbered_router_loses_its_mappings_and_tcp_connections(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net, server, node = build("cone")
    site = node.router
    assert site is not None
    srv_port = server.bind_datagram(SERVER, 3478)
    node_port = node.open_datagram_ports(5000)[0]
    listener = await server.listen_tcp(SERVER, 7070)
    srv_rx = Recorder()
    async with trio.open_nursery() as nursery:
        await nursery.start(net.run)
        nursery.start_soon(srv_port.receive_loop, srv_rx)
        client = await node.connect_tcp(SERVER, 7070)
        accepted = await listener.accept()
        assert accepted.remote[0] == "198.51.100.11"
        await client.stream.send_all(b"ping")
        assert await accepted.stream.receive_some() == b"ping"
        node_port.send(b"one", (SERVER, 3478))
        await trio.sleep(1)
        site.renumber("198.51.100.111")
        with pytest.raises(trio.BrokenResourceError):
            await client.stream.receive_some()
        srv_port.send(b"to the old mapping", ("198.51.100.11", 5000))
        node_port.send(b"two", (SERVER, 3478))
        await trio.sleep(1)
        assert [(d, s[0]) for d, s, _ in srv_rx.got] == [
            (b"one", "198.51.100.11"),
            (b"two", "198.51.100.111"),
        ]
        nursery.cancel_scope.cancel()


async def test_blocked_flows_are_dropped(autojump_clock: trio.testing.MockClock) -> None:
    net, server, node = build("cone")
    srv_port = server.bind_datagram(SERVER, 3478)
    node_port = node.open_datagram_ports(5000)[0]
    rx = Recorder()
    net.blocked = lambda src, dst: dst[0] == SERVER
    async with trio.open_nursery() as nursery:
        await nursery.start(net.run)
        nursery.start_soon(srv_port.receive_loop, rx)
        node_port.send(b"lost", (SERVER, 3478))
        await trio.sleep(1)
        net.blocked = None
        node_port.send(b"kept", (SERVER, 3478))
        await trio.sleep(1)
        assert [d for d, _, _ in rx.got] == [b"kept"]
        nursery.cancel_scope.cancel()


async def test_tun_kernel_answers_echo_and_pinger_measures_gaps(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork()
    host = net.public_host("h", SERVER)
    tun = host.open_tun("p2p0")
    await host.configure_interface("p2p0", [ipaddress.ip_interface("10.77.0.1/24")], 1400)
    # The kernel answers an echo request the node writes to the interface's own address.
    tun.write(icmp_echo("10.77.0.2", "10.77.0.1", 7, 1))
    buffers = [bytearray(2000)]
    lengths = [0]
    assert tun.read_batch(buffers, lengths) == 1
    reply = bytes(buffers[0][: lengths[0]])
    assert reply[20] == 0 and reply[12:16] == bytes([10, 77, 0, 1])
    # A pinger on a second "node": requests leave through its TUN; we echo them back with a
    # 1 s hole in the middle.
    pinger = Pinger(tun, "10.77.0.1", "10.77.0.9", interval=0.05)
    async with trio.open_nursery() as nursery:
        await nursery.start(pinger.run)
        t0 = trio.current_time()
        for i in range(60):
            await tun.wait_readable()
            n = tun.read_batch(buffers, lengths)
            for k in range(n):
                packet = bytes(buffers[k][: lengths[k]])
                seq = int.from_bytes(packet[26:28], "big")
                if not 20 <= i < 40:
                    tun.write(icmp_echo("10.77.0.9", "10.77.0.1", 0x7070, seq, reply=True))
        t1 = trio.current_time()
        nursery.cancel_scope.cancel()
    assert pinger.longest_gap(t0, t1) == pytest.approx(1.05)

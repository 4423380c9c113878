"""Tests for p2ptun.net.udp and p2ptun.net.dispatch: the first-bytes demux, the dispatcher that
owns a socket's dispatch, and the UDP endpoint over loopback."""

from __future__ import annotations

import socket
import struct

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from p2ptun.addr import Address
from p2ptun.errors import DecodeError, RuntimeFailure
from p2ptun.net.dispatch import STUN_MAGIC_COOKIE, Dispatcher, PacketKind, classify
from p2ptun.net.udp import UdpEndpoint, family_supported, open_endpoints

COOKIE = STUN_MAGIC_COOKIE
IPV6 = family_supported(socket.AF_INET6)


def stun(msg_type: int = 0x0001, body: bytes = b"") -> bytes:
    """A syntactically plausible STUN message: header plus body."""
    return struct.pack("!HH", msg_type, len(body)) + COOKIE + bytes(12) + body


def reference_classify(data: bytes) -> PacketKind:
    """The rule of docs/ARCHITECTURE.md §2, written independently of the implementation."""
    if len(data) >= 20 and data[0] in (0, 1, 2, 3) and data[4:8] == b"\x21\x12\xa4\x42":
        return PacketKind.STUN
    if len(data) >= 4 and data[0] >> 4 == 4:
        return PacketKind.CHANNEL_DATA
    if len(data) >= 4 and data[0] in (1, 2, 3, 4) and data[1:4] == b"\0\0\0":
        return PacketKind.WIREGUARD
    return PacketKind.OTHER


# -- classify ---------------------------------------------------------------------------------


class TestClassify:
    def test_stun_binding_request(self) -> None:
        assert classify(stun(0x0001)) is PacketKind.STUN

    def test_stun_success_response_with_attributes(self) -> None:
        assert classify(stun(0x0101, b"\x00\x20\x00\x08" + bytes(8))) is PacketKind.STUN

    def test_stun_all_first_bytes(self) -> None:
        for first in range(4):
            data = bytes([first, 0x01]) + b"\x00\x00" + COOKIE + bytes(12)
            assert classify(data) is PacketKind.STUN, first

    def test_stun_first_byte_4_is_not_stun(self) -> None:
        data = b"\x04\x01\x00\x00" + COOKIE + bytes(12)
        assert classify(data) is PacketKind.OTHER

    def test_stun_lookalike_with_zero_bytes_is_stun_not_wireguard(self) -> None:
        # Type 0x0100, length 0: also matches the WireGuard rule; the cookie wins.
        data = b"\x01\x00\x00\x00" + COOKIE + bytes(12)
        assert classify(data) is PacketKind.STUN

    def test_stun_wrong_cookie(self) -> None:
        data = b"\x00\x01\x00\x00" + b"\x21\x12\xa4\x43" + bytes(12)
        assert classify(data) is PacketKind.OTHER

    def test_stun_shorter_than_header(self) -> None:
        data = b"\x00\x01\x00\x00" + COOKIE + bytes(11)
        assert classify(data) is PacketKind.OTHER

    def test_channel_data_range(self) -> None:
        for first in range(0x40, 0x50):
            assert classify(bytes([first, 0x00, 0x00, 0x00])) is PacketKind.CHANNEL_DATA
        assert classify(b"\x3f\x00\x00\x00") is PacketKind.OTHER
        assert classify(b"\x50\x00\x00\x00") is PacketKind.OTHER

    def test_channel_data_with_payload(self) -> None:
        assert classify(b"\x40\x00\x00\x05hello") is PacketKind.CHANNEL_DATA

    def test_channel_data_too_short(self) -> None:
        assert classify(b"\x40\x00\x00") is PacketKind.OTHER

    def test_wireguard_types(self) -> None:
        for first in (1, 2, 3, 4):
            data = bytes([first, 0, 0, 0]) + bytes(range(28))
            assert classify(data) is PacketKind.WIREGUARD, first

    def test_wireguard_bare_header(self) -> None:
        assert classify(b"\x04\x00\x00\x00") is PacketKind.WIREGUARD

    def test_wireguard_reserved_not_zero(self) -> None:
        for i in (1, 2, 3):
            data = bytearray(b"\x04\x00\x00\x00" + bytes(28))
            data[i] = 1
            assert classify(bytes(data)) is PacketKind.OTHER

    def test_wireguard_type_out_of_range(self) -> None:
        assert classify(b"\x00\x00\x00\x00" + bytes(28)) is PacketKind.OTHER
        assert classify(b"\x05\x00\x00\x00" + bytes(28)) is PacketKind.OTHER

    def test_empty_and_tiny(self) -> None:
        for data in (b"", b"\x01", b"\x40", b"\x01\x00", b"\x01\x00\x00"):
            assert classify(data) is PacketKind.OTHER, data

    def test_accepts_bytearray_and_memoryview(self) -> None:
        data = stun()
        assert classify(bytearray(data)) is PacketKind.STUN
        assert classify(memoryview(data)) is PacketKind.STUN
        assert classify(memoryview(bytearray(b"\x04\0\0\0xx"))[:4]) is PacketKind.WIREGUARD

    def test_exhaustive_first_four_bytes_prefix(self) -> None:
        """Every first byte, with and without zero reserved bytes and a cookie."""
        tails = [
            b"\x00\x00\x00" + COOKIE + bytes(12),
            b"\x00\x00\x00" + bytes(16),
            b"\x01\x00\x00" + COOKIE + bytes(12),
            b"\x00\x00\x01" + bytes(16),
            b"\x00\x00\x00",
            b"\x00",
        ]
        for first in range(256):
            for tail in tails:
                data = bytes([first]) + tail
                assert classify(data) is reference_classify(data), data.hex()

    @given(st.binary(max_size=64))
    def test_matches_reference_random(self, data: bytes) -> None:
        assert classify(data) is reference_classify(data)

    @given(
        st.integers(0, 255),
        st.binary(min_size=3, max_size=3),
        st.booleans(),
        st.binary(max_size=40),
    )
    def test_matches_reference_structured(
        self, first: int, rest: bytes, cookie: bool, tail: bytes
    ) -> None:
        data = bytes([first]) + rest + (COOKIE if cookie else b"") + tail
        assert classify(data) is reference_classify(data)

    @given(st.binary(max_size=64))
    def test_total(self, data: bytes) -> None:
        assert classify(data) in set(PacketKind)


# -- endpoint over loopback ------------------------------------------------------------------


class Collector:
    """Records what handlers received (copies: the views are only valid for the batch)."""

    def __init__(self) -> None:
        self.got: list[tuple[PacketKind, bytes, Address]] = []
        self.drains = 0
        self.event = trio.Event()
        self.want = 0

    def handler(self, kind: PacketKind) -> object:
        def handle(data: memoryview, addr: Address) -> None:
            assert isinstance(data, memoryview)
            self.got.append((kind, bytes(data), addr))
            if len(self.got) >= self.want:
                self.event.set()

        return handle

    def drained(self) -> None:
        self.drains += 1


def make_endpoint(family: socket.AddressFamily = socket.AF_INET, **kwargs: object) -> UdpEndpoint:
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    return UdpEndpoint.bind(family, host, 0, **kwargs)  # type: ignore[arg-type]


def make_dispatcher(collector: Collector) -> Dispatcher:
    return Dispatcher(
        stun=collector.handler(PacketKind.STUN),  # type: ignore[arg-type]
        channel_data=collector.handler(PacketKind.CHANNEL_DATA),  # type: ignore[arg-type]
        wireguard=collector.handler(PacketKind.WIREGUARD),  # type: ignore[arg-type]
        drained=collector.drained,
    )


def client_socket(family: socket.AddressFamily = socket.AF_INET) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
    return sock


async def test_bind_any_port_and_buffers() -> None:
    with UdpEndpoint.bind(socket.AF_INET, "127.0.0.1", 0) as ep:
        host, port = ep.local_address
        assert host == "127.0.0.1"
        assert port > 0
        assert ep.family == socket.AF_INET
        # Raised above the 212992-byte default (or at least not lowered).
        assert ep.rcvbuf >= 212992
        assert ep.sndbuf >= 212992
    assert ep.fileno() == -1


async def test_bind_small_buffer_request_is_fine() -> None:
    with UdpEndpoint.bind(socket.AF_INET, "127.0.0.1", 0, buffer_size=4096) as ep:
        assert ep.rcvbuf > 0


async def test_bind_in_use_is_runtime_failure() -> None:
    with UdpEndpoint.bind(socket.AF_INET, "127.0.0.1", 0) as ep:
        port = ep.local_address[1]
        with pytest.raises(RuntimeFailure, match="already in use"):
            UdpEndpoint.bind(socket.AF_INET, "127.0.0.1", port)


async def test_bind_foreign_address_is_runtime_failure() -> None:
    with pytest.raises(RuntimeFailure, match="no such local address"):
        UdpEndpoint.bind(socket.AF_INET, "192.0.2.77", 0)


@pytest.mark.skipif(not IPV6, reason="IPv6 is not available on this host")
async def test_ipv6_socket_is_v6only() -> None:
    with UdpEndpoint.bind(socket.AF_INET6) as ep:
        assert ep.socket.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        assert ep.local_address[0] == "::"


async def test_dispatch_each_kind_and_drop_other() -> None:
    col = Collector()
    col.want = 3
    dispatcher = make_dispatcher(col)
    with make_endpoint() as ep, client_socket() as client:
        dest = ep.local_address
        payloads = {
            PacketKind.STUN: stun(0x0001, b"\x80\x22\x00\x04test"),
            PacketKind.CHANNEL_DATA: b"\x40\x01\x00\x03abc",
            PacketKind.WIREGUARD: b"\x04\x00\x00\x00" + bytes(28),
        }
        client.sendto(b"\xff garbage", dest)
        client.sendto(b"", dest)
        for data in payloads.values():
            client.sendto(data, dest)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ep.receive_loop, dispatcher)
            with trio.fail_after(5):
                await col.event.wait()
            nursery.cancel_scope.cancel()
        src = client.getsockname()
        assert sorted(col.got) == sorted((k, v, (src[0], src[1])) for k, v in payloads.items())
        c = dispatcher.counters
        assert (c.rx_stun, c.rx_channel_data, c.rx_wireguard, c.rx_other) == (1, 1, 1, 2)
        assert c.rx_malformed == 0
        assert c.as_dict()["rx_other"] == 2
        assert col.drains >= 1


async def test_drain_batches_and_views_valid_until_drained() -> None:
    """A burst larger than the batch is drained in several batches, each ended by on_drained;
    the memoryviews handed out stay intact until then."""
    views: list[memoryview] = []
    snapshots: list[list[bytes]] = []

    def on_wg(data: memoryview, addr: Address) -> None:
        views.append(data)

    def drained() -> None:
        snapshots.append([bytes(v) for v in views])
        views.clear()

    dispatcher = Dispatcher(wireguard=on_wg, drained=drained)
    with (
        UdpEndpoint.bind(socket.AF_INET, "127.0.0.1", 0, batch=8) as ep,
        client_socket() as client,
    ):
        sent = [b"\x04\x00\x00\x00" + struct.pack("!I", i) + bytes(24) for i in range(20)]
        for data in sent:
            client.sendto(data, ep.local_address)
        counts = []
        for _ in range(10):  # bounded
            n = ep.drain(dispatcher)
            counts.append(n)
            if n < 8:
                break
        assert counts == [8, 8, 4]
        assert [len(s) for s in snapshots] == [8, 8, 4]
        assert [d for s in snapshots for d in s] == sent
        assert ep.drain(dispatcher) == 0
        assert len(snapshots) == 3  # no drained() call for an empty drain


async def test_decode_error_is_counted_and_dropped() -> None:
    seen: list[bytes] = []

    def on_stun(data: memoryview, addr: Address) -> None:
        if data[1] == 0xFF:
            raise DecodeError("bad STUN")
        seen.append(bytes(data))

    dispatcher = Dispatcher(stun=on_stun)
    with (
        UdpEndpoint.bind(socket.AF_INET, "127.0.0.1", 0) as ep,
        client_socket() as client,
    ):
        client.sendto(stun(0x00FF), ep.local_address)
        client.sendto(stun(0x0001), ep.local_address)
        with trio.fail_after(5):
            while len(seen) + dispatcher.counters.rx_malformed < 2:
                await trio.lowlevel.wait_readable(ep.socket)
                ep.drain(dispatcher)
        assert dispatcher.counters.rx_malformed == 1
        assert seen == [stun(0x0001)]


async def test_unhandled_kind_is_dropped() -> None:
    got: list[bytes] = []
    dispatcher = Dispatcher(channel_data=lambda d, a: got.append(bytes(d)))
    with UdpEndpoint.bind(socket.AF_INET, "127.0.0.1", 0) as ep, client_socket() as client:
        client.sendto(b"\x01\x00\x00\x00" + bytes(144), ep.local_address)
        client.sendto(b"\x4f\xff\x00\x00", ep.local_address)
        with trio.fail_after(5):
            while dispatcher.counters.rx_wireguard + len(got) < 2:
                await trio.lowlevel.wait_readable(ep.socket)
                ep.drain(dispatcher)
        assert dispatcher.counters.rx_wireguard == 1
        assert dispatcher.counters.rx_unhandled == 1
        assert got == [b"\x4f\xff\x00\x00"]


async def test_send() -> None:
    with UdpEndpoint.bind(socket.AF_INET, "127.0.0.1", 0) as ep, client_socket() as client:
        client.setblocking(False)
        dest = client.getsockname()
        assert ep.send(b"one", dest)
        assert ep.send(bytearray(b"two"), dest)
        assert ep.send(memoryview(b"three"), dest)
        assert ep.send_batch([b"four", b"five"], dest) == 2
        got: list[bytes] = []
        with trio.fail_after(5):
            while len(got) < 5:
                await trio.lowlevel.wait_readable(client)
                data, addr = client.recvfrom(100)
                assert addr == ep.local_address
                got.append(data)
        assert got == [b"one", b"two", b"three", b"four", b"five"]
        assert ep.counters.tx_packets == 5
        assert ep.counters.tx_bytes == 3 + 3 + 5 + 4 + 4


async def test_send_failure_is_counted_not_raised() -> None:
    with UdpEndpoint.bind(socket.AF_INET, "127.0.0.1", 0) as ep:
        # An IPv6 destination on an IPv4 socket: the kernel refuses, the datagram is dropped.
        assert not ep.send(b"x", ("::1", 9))
        assert ep.counters.tx_dropped == 1
        assert ep.counters.tx_packets == 0


async def test_close_wakes_receive_loop() -> None:
    ep = UdpEndpoint.bind(socket.AF_INET, "127.0.0.1", 0)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ep.receive_loop, Dispatcher())
            await trio.testing.wait_all_tasks_blocked()
            ep.close()
    # The loop returned on its own; closing again is harmless.
    ep.close()
    assert ep.fileno() == -1


@pytest.mark.skipif(not IPV6, reason="IPv6 is not available on this host")
async def test_ipv6_loopback_roundtrip() -> None:
    col = Collector()
    col.want = 1
    with make_endpoint(socket.AF_INET6) as ep, client_socket(socket.AF_INET6) as client:
        client.sendto(b"\x02\x00\x00\x00" + bytes(88), ep.local_address)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ep.receive_loop, make_dispatcher(col))
            with trio.fail_after(5):
                await col.event.wait()
            nursery.cancel_scope.cancel()
        kind, data, addr = col.got[0]
        assert len(data) == 92
        assert kind is PacketKind.WIREGUARD
        assert addr == ("::1", client.getsockname()[1])


async def test_open_endpoints() -> None:
    eps = open_endpoints()
    try:
        families = [ep.family for ep in eps]
        assert families[0] == socket.AF_INET
        if IPV6:
            assert families == [socket.AF_INET, socket.AF_INET6]
        assert all(ep.local_address[1] > 0 for ep in eps)
    finally:
        for ep in eps:
            ep.close()


async def test_open_endpoints_ipv4_only() -> None:
    eps = open_endpoints(families=(socket.AF_INET,))
    try:
        assert [ep.family for ep in eps] == [socket.AF_INET]
    finally:
        for ep in eps:
            ep.close()


async def test_open_endpoints_port_in_use_closes_everything() -> None:
    with UdpEndpoint.bind(socket.AF_INET, "0.0.0.0", 0) as taken:
        port = taken.local_address[1]
        with pytest.raises(RuntimeFailure, match="already in use"):
            open_endpoints(port, families=(socket.AF_INET6, socket.AF_INET))
        # The IPv6 socket opened first was closed again: the port is free on IPv6.
        if IPV6:
            with UdpEndpoint.bind(socket.AF_INET6, "::", port):
                pass

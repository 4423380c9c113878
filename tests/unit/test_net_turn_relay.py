"""TURN over the shared UDP socket and over TCP, on loopback against our embedded server; the
mux's routing rules; relayed WireGuard's one way to the data path. Every wait is bounded."""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from loopback_turn import HOST, free_port, serve_turn

from p2ptun.addr import Address
from p2ptun.errors import RuntimeFailure
from p2ptun.net.dispatch import Dispatcher
from p2ptun.net.mux import UdpMux
from p2ptun.net.system import SystemHost, route_source
from p2ptun.net.turn_relay import TurnRelay
from p2ptun.net.udp import UdpEndpoint
from p2ptun.stun import Message, Method, encode_channel_data
from p2ptun.turn.client import (
    AllocationLost,
    AllocationState,
    PermissionFailed,
    PermissionState,
    TurnEvent,
)


@pytest.fixture
async def server(nursery: trio.Nursery) -> AsyncIterator[int]:
    port, scope = await serve_turn(nursery)
    yield port
    scope.cancel()


def serve_mux(nursery: trio.Nursery, ep: UdpEndpoint) -> UdpMux:
    """A mux on ``ep``, whose dispatcher hands it STUN and ChannelData (as the node's does)."""
    mux = UdpMux([ep])
    dispatcher = Dispatcher(stun=mux.on_stun, channel_data=mux.on_channel_data)
    nursery.start_soon(ep.receive_loop, dispatcher)
    return mux


@pytest.fixture
async def mux(nursery: trio.Nursery) -> AsyncIterator[UdpMux]:
    ep = UdpEndpoint.bind(socket.AF_INET, HOST)
    yield serve_mux(nursery, ep)
    ep.close()


def udp_relay(mux: UdpMux, server: Address, user: str, password: str, **kw: Any) -> TurnRelay:
    return TurnRelay.udp(mux, server, user, password, random=os.urandom, **kw)


def stream_relay(server: Address, user: str, password: str, **kw: Any) -> TurnRelay:
    return TurnRelay.stream(SystemHost(), server, user, password, random=os.urandom, **kw)


async def peer_socket() -> trio.socket.SocketType:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind((HOST, 0))
    return sock


async def test_udp_relay_round_trip_through_the_shared_socket(
    nursery: trio.Nursery, server: int, mux: UdpMux
) -> None:
    got: list[tuple[Address, bytes]] = []
    relay = udp_relay(
        mux, (HOST, server), "alice", "pw", on_data=lambda r, p, d: got.append((p, d))
    )
    assert await nursery.start(relay.run) is relay
    assert relay.allocated and relay.relayed[0] == HOST
    assert relay.local_ip == HOST
    assert mux.relay_for((HOST, server)) is relay
    peer = await peer_socket()
    target = peer.getsockname()
    relay.create_permission(HOST)
    with trio.fail_after(5):
        # Send indications until the permission is in place and one arrives.
        while True:
            relay.send(target, b"hello")
            with trio.move_on_after(0.2):
                data, src = await peer.recvfrom(2048)
                break
    assert data == b"hello" and src == relay.relayed
    await peer.sendto(b"back", relay.relayed)
    with trio.fail_after(5):
        while not got:
            await trio.sleep(0.01)
    assert got[0] == (target, b"back")
    # Channel: later data goes as ChannelData (4-byte header) both ways.
    relay.bind_channel(target)
    with trio.fail_after(5):
        while not relay.channel_bound(target):
            await trio.sleep(0.01)
    relay.send(target, b"chan")
    with trio.fail_after(5):
        data, _ = await peer.recvfrom(2048)
    assert data == b"chan"
    assert relay.client.counters.tx_channel_data == 1
    relay.close()
    with trio.fail_after(5):
        while relay.client.state is not AllocationState.CLOSED:
            await trio.sleep(0.01)
    assert mux.relay_for((HOST, server)) is None
    peer.close()


async def test_abandoned_relay_detaches_at_once_without_deallocating(
    nursery: trio.Nursery, server: int, mux: UdpMux
) -> None:
    relay = udp_relay(mux, (HOST, server), "alice", "pw")
    ended = trio.Event()

    async def run(task_status: trio.TaskStatus[TurnRelay] = trio.TASK_STATUS_IGNORED) -> None:
        await relay.run(task_status=task_status)
        ended.set()

    await nursery.start(run)
    sent = mux.endpoints[0].counters.tx_packets
    relay.abandon()  # the path to the server changed: nothing can reach the allocation now
    assert mux.relay_for((HOST, server)) is None and not relay.allocated
    assert not relay.send((HOST, 9), b"x")
    with trio.fail_after(5):
        await ended.wait()
    # Nothing was sent, no deallocation either (the client still believes in its allocation).
    assert relay.client.state is AllocationState.ALLOCATED and relay.failure is None
    assert mux.endpoints[0].counters.tx_packets == sent


async def test_forbidden_peer_is_remembered(nursery: trio.Nursery, mux: UdpMux) -> None:
    port, scope = await serve_turn(nursery, allow_loopback=False)  # loopback peers: 403
    events: list[TurnEvent] = []
    relay = udp_relay(mux, (HOST, port), "alice", "pw", on_event=lambda r, e: events.append(e))
    await nursery.start(relay.run)
    assert relay.send((HOST, 9), b"x")  # asks for the permission
    with trio.fail_after(5):
        while not relay.is_forbidden(HOST):
            await trio.sleep(0.01)
    assert any(isinstance(e, PermissionFailed) and e.code == 403 for e in events)
    assert not relay.send((HOST, 9), b"y")
    assert relay.counters.tx_dropped == 1
    relay.close()
    scope.cancel()


async def test_tcp_relay_and_connection_loss(nursery: trio.Nursery, mux: UdpMux) -> None:
    port, scope = await serve_turn(nursery)
    got: list[bytes] = []
    batches: list[int] = []
    events: list[TurnEvent] = []
    relay = stream_relay(
        (HOST, port),
        "alice",
        "pw",
        on_data=lambda r, p, d: got.append(d),
        on_event=lambda r, e: events.append(e),
        after_batch=lambda: batches.append(1),
    )
    ended = trio.Event()

    async def run(task_status: trio.TaskStatus[TurnRelay] = trio.TASK_STATUS_IGNORED) -> None:
        await relay.run(task_status=task_status)
        ended.set()

    await nursery.start(run)
    assert relay.transport == "tcp" and relay.local_ip == HOST
    peer = await peer_socket()
    relay.bind_channel(peer.getsockname())
    with trio.fail_after(5):
        while not relay.channel_bound(peer.getsockname()):
            await trio.sleep(0.01)
    assert relay.send(peer.getsockname(), b"odd")  # 3 bytes: padded on the stream
    with trio.fail_after(5):
        data, _ = await peer.recvfrom(2048)
    assert data == b"odd"
    await peer.sendto(b"reply", relay.relayed)
    with trio.fail_after(5):
        while not got:
            await trio.sleep(0.01)
    assert got == [b"reply"] and batches
    # The server goes away: the allocation is lost and run() returns.
    scope.cancel()
    with trio.fail_after(10):
        await ended.wait()
    assert relay.failure is not None
    assert any(isinstance(e, AllocationLost) for e in events)
    assert not relay.send(peer.getsockname(), b"late")
    peer.close()


async def test_bad_password_and_silent_server_fail_in_bounded_time(
    nursery: trio.Nursery, server: int, mux: UdpMux
) -> None:
    relay = udp_relay(mux, (HOST, server), "alice", "wrong")
    with pytest.raises(RuntimeFailure, match="alice"):
        await nursery.start(partial(relay.run, timeout=5))
    assert mux.relay_for((HOST, server)) is None
    silent = await peer_socket()
    start = trio.current_time()
    relay = udp_relay(mux, silent.getsockname(), "alice", "pw")
    with pytest.raises(RuntimeFailure, match="no Allocate answer"):
        await nursery.start(partial(relay.run, timeout=0.8))
    assert trio.current_time() - start < 3
    with pytest.raises(RuntimeFailure, match="cannot"):
        await nursery.start(partial(stream_relay((HOST, free_port()), "a", "b").run, timeout=2))
    silent.close()


async def test_mux_routing(nursery: trio.Nursery, server: int, mux: UdpMux) -> None:
    seen: list[tuple[str, Address, Address]] = []
    mux.on_ice = lambda data, local, remote: seen.append(("ice", local, remote))
    ep = mux.endpoints[0]
    me = ep.local_address
    sock = await peer_socket()
    src = sock.getsockname()
    # Unclaimed STUN goes to ICE with the local base the route lookup gives.
    await sock.sendto(Message.request(Method.BINDING, b"a" * 12).encode(), me)
    # A registered transaction id wins.
    mux.register_transaction(b"b" * 12, lambda d, loc, r: seen.append(("tx", loc, r)))
    await sock.sendto(Message.request(Method.BINDING, b"b" * 12).success([]).encode(), me)
    # ChannelData from an address that is not our TURN server is dropped.
    await sock.sendto(encode_channel_data(0x4000, b"x"), me)
    with trio.fail_after(5):
        while len(seen) < 2 or mux.counters.rx_dropped < 1:
            await trio.sleep(0.01)
    assert seen == [("ice", (HOST, me[1]), src), ("tx", (HOST, me[1]), src)]
    mux.unregister_transaction(b"b" * 12)
    assert mux.counters.rx_transactions == 1 and mux.counters.rx_ice == 1
    sock.close()


def wireguard(n: int, size: int) -> bytes:
    """Something that looks like a WireGuard transport message (type 4) of ``size`` bytes."""
    return (b"\x04\x00\x00\x00" + n.to_bytes(4, "little") + b"w" * size)[:size]


async def bound_udp_relay(
    nursery: trio.Nursery, mux: UdpMux, server: int, peer: trio.socket.SocketType, **kw: Any
) -> TurnRelay:
    relay = udp_relay(mux, (HOST, server), "alice", "pw", **kw)
    await nursery.start(relay.run)
    relay.bind_channel(peer.getsockname())
    with trio.fail_after(5):
        while not relay.channel_bound(peer.getsockname()):
            await trio.sleep(0.01)
    return relay


async def receive_all(peer: trio.socket.SocketType, count: int) -> list[bytes]:
    got = []
    with trio.fail_after(5):
        while len(got) < count:
            data, _ = await peer.recvfrom(65536)
            got.append(data)
    return got


@pytest.mark.parametrize("offload", ["auto", "off"])
async def test_udp_send_batch_is_channel_data_with_gso_and_without(
    nursery: trio.Nursery, server: int, monkeypatch: pytest.MonkeyPatch, offload: str
) -> None:
    """A batch goes as ChannelData, its headers framed apart from the payloads: with GSO in
    one sendmsg per run of equal size, with P2PTUN_OFFLOAD=off one each; either way the peer
    gets every payload, in order."""
    monkeypatch.setenv("P2PTUN_OFFLOAD", offload)
    ep = UdpEndpoint.bind(socket.AF_INET, HOST)
    mux = serve_mux(nursery, ep)
    peer = await peer_socket()
    relay = await bound_udp_relay(nursery, mux, server, peer)
    batch = [wireguard(i, 1200) for i in range(10)] + [wireguard(10, 80)] + [wireguard(11, 1200)]
    gso_before = ep.counters.tx_gso_sends
    assert relay.send_batch(peer.getsockname(), batch) == len(batch)
    assert await receive_all(peer, len(batch)) == batch
    assert relay.client.counters.tx_channel_data == len(batch)
    assert relay.counters.tx_batches == 1
    # 10 equal ones then a shorter one end a run; the last is alone.
    assert ep.counters.tx_gso_sends - gso_before == (1 if ep.gso else 0)
    with trio.fail_after(5):
        await relay.aclose()
    peer.close()
    ep.close()


async def test_udp_send_batch_without_a_channel_uses_send_indications(
    nursery: trio.Nursery, server: int, mux: UdpMux
) -> None:
    relay = udp_relay(mux, (HOST, server), "alice", "pw")
    await nursery.start(relay.run)
    peer = await peer_socket()
    target = peer.getsockname()
    relay.create_permission(HOST)
    with trio.fail_after(5):
        while relay.client.permission_state(HOST) is not PermissionState.INSTALLED:
            await trio.sleep(0.01)
    assert relay.send_batch(target, [b"one", b"two"]) == 2
    assert await receive_all(peer, 2) == [b"one", b"two"]
    assert relay.client.counters.tx_send_indications == 2
    assert relay.counters.tx_batches == 0
    relay.abandon()
    assert relay.send_batch(target, [b"late", b"later"]) == 0
    assert relay.counters.tx_dropped == 2
    peer.close()


async def send_split_by_kind(
    peer: trio.socket.SocketType,
    relay: TurnRelay,
    packets: list[bytes],
    tag: bytes,
    fast: list[bytes],
    slow: list[bytes],
) -> bytes:
    """Send ``packets`` from ``peer`` to the relay with a STUN Binding request (an ICE consent
    check) in the middle; the WireGuard packets must reach the WireGuard receiver (``fast``),
    in order, and only the check (returned) the relay's on_data (``slow``)."""
    check = Message.request(Method.BINDING, tag * 12).encode()
    half = len(packets) // 2
    for packet in [*packets[:half], check, *packets[half:]]:
        await peer.sendto(packet, relay.relayed)
    with trio.fail_after(5):
        while len(fast) < len(packets) or not slow:
            await trio.sleep(0.01)
    assert fast == packets and slow == [check]
    assert relay.counters.rx_wireguard == len(packets)
    return check


async def test_wireguard_receiver_takes_wireguard_of_bound_channels(
    nursery: trio.Nursery, server: int, mux: UdpMux
) -> None:
    """WireGuard on a bound channel goes straight to the WireGuard receiver; STUN on that
    channel (ICE consent), and everything when the relay has no WireGuard receiver, goes to
    on_data; a malformed ChannelData of that channel is dropped and counted."""
    slow: list[bytes] = []
    fast: list[bytes] = []
    peer = await peer_socket()
    relay = await bound_udp_relay(
        nursery,
        mux,
        server,
        peer,
        on_data=lambda r, p, d: slow.append(bytes(d)),
        wireguard=lambda view, src, relay: fast.append(bytes(view)),
    )
    packets = [wireguard(i, 148 if i == 0 else 96) for i in range(20)]
    check = await send_split_by_kind(peer, relay, packets, b"c", fast, slow)
    number = relay.client.channel(peer.getsockname())
    assert number is not None
    head = number[0].to_bytes(2, "big")
    relay.receive_channel_data(memoryview(head + b"\x00\x40" + wireguard(0, 32)))  # too long
    relay.receive_channel_data(memoryview(head + b"\x00\x04" + wireguard(0, 12)))  # trailing
    relay.receive_channel_data(memoryview(head + b"\x00\x02\x04\x00"))  # shorter than a type
    assert relay.counters.rx_malformed == 2 and len(fast) == len(packets)
    assert slow == [check, b"\x04\x00"]
    relay.wireguard = None
    await peer.sendto(packets[0], relay.relayed)
    with trio.fail_after(5):
        while len(slow) < 3:
            await trio.sleep(0.01)
    assert slow[-1] == packets[0] and len(fast) == len(packets)
    relay.close()
    peer.close()


async def test_wireguard_takes_one_way_before_and_after_the_channel(
    nursery: trio.Nursery, server: int, mux: UdpMux
) -> None:
    """WireGuard from a peer reaches the WireGuard receiver, with its source, whether it came
    in a Data indication (no channel yet) or as ChannelData (after ChannelBound)."""
    fast: list[tuple[bytes, Address]] = []
    slow: list[bytes] = []
    relay = udp_relay(
        mux,
        (HOST, server),
        "alice",
        "pw",
        wireguard=lambda view, src, relay: fast.append((bytes(view), src)),
        on_data=lambda r, p, d: slow.append(bytes(d)),
    )
    await nursery.start(relay.run)
    peer = await peer_socket()
    target = peer.getsockname()
    relay.create_permission(HOST)
    with trio.fail_after(5):
        while relay.client.permission_state(HOST) is not PermissionState.INSTALLED:
            await trio.sleep(0.01)
    await peer.sendto(wireguard(1, 64), relay.relayed)  # a Data indication
    with trio.fail_after(5):
        while not fast:
            await trio.sleep(0.01)
    assert relay.client.counters.rx_data_indications >= 1
    relay.bind_channel(target)
    with trio.fail_after(5):
        while not relay.channel_bound(target):
            await trio.sleep(0.01)
    await peer.sendto(wireguard(2, 64), relay.relayed)  # ChannelData now
    with trio.fail_after(5):
        while len(fast) < 2:
            await trio.sleep(0.01)
    assert fast == [(wireguard(1, 64), target), (wireguard(2, 64), target)]
    assert relay.counters.rx_wireguard == 2 and not slow
    relay.close()
    peer.close()


async def test_stream_send_batch_pads_and_wireguard_receiver_takes_frames(
    nursery: trio.Nursery,
) -> None:
    port, scope = await serve_turn(nursery)
    slow: list[bytes] = []
    fast: list[bytes] = []
    relay = stream_relay(
        (HOST, port),
        "alice",
        "pw",
        on_data=lambda r, p, d: slow.append(bytes(d)),
        wireguard=lambda view, src, relay: fast.append(bytes(view)),
    )
    await nursery.start(relay.run)
    peer = await peer_socket()
    relay.bind_channel(peer.getsockname())
    with trio.fail_after(5):
        while not relay.channel_bound(peer.getsockname()):
            await trio.sleep(0.01)
    batch = [b"odd", b"four", b"x" * 1001, b"y" * 1002]  # every padding length
    assert relay.send_batch(peer.getsockname(), batch) == len(batch)
    assert await receive_all(peer, len(batch)) == batch
    # Back over the stream: padded frames cut from it, WireGuard to the WireGuard receiver.
    packets = [wireguard(i, 93 + i) for i in range(8)]
    await send_split_by_kind(peer, relay, packets, b"s", fast, slow)
    relay.close()
    peer.close()
    scope.cancel()


def test_route_source_and_cache() -> None:
    assert route_source(HOST) == HOST
    ep = UdpEndpoint.bind(socket.AF_INET)  # wildcard: the route lookup decides
    calls: list[str] = []

    def lookup(ip: str) -> str | None:
        calls.append(ip)
        return None if ip == "192.0.2.99" else "192.0.2.1"

    mux = UdpMux([ep], route_lookup=lookup)
    assert mux.local_base_for(("198.51.100.1", 1)) == ("192.0.2.1", ep.local_address[1])
    assert mux.local_ip_for("198.51.100.1") == "192.0.2.1"
    assert calls == ["198.51.100.1"]  # cached
    assert mux.local_base_for(("192.0.2.99", 1)) is None
    assert mux.endpoint_for("2001:db8::1") is None
    assert not mux.send(b"x", ("2001:db8::1", 1))
    mux.invalidate_routes()
    mux.local_ip_for("198.51.100.1")
    assert calls.count("198.51.100.1") == 2
    ep.close()


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a certificate for 127.0.0.1 it signed: (ca, cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    span = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(hours=1))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(span[0])
        .not_valid_after(span[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(span[0])
        .not_valid_after(span[1])
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


async def test_tls_relay(nursery: trio.Nursery, tmp_path: Path) -> None:
    ca, cert, key = _certificates(tmp_path)
    tls_port = free_port()
    _port, scope = await serve_turn(nursery, tls=(tls_port, str(cert), str(key)))
    got: list[bytes] = []
    relay = stream_relay(
        (HOST, tls_port),
        "alice",
        "pw",
        transport="tls",
        ca_file=str(ca),
        on_data=lambda r, p, d: got.append(d),
    )
    await nursery.start(relay.run)
    assert relay.transport == "tls" and relay.allocated
    peer = await peer_socket()
    relay.create_permission(HOST)
    with trio.fail_after(5):
        while True:
            relay.send(peer.getsockname(), b"over tls")
            with trio.move_on_after(0.2):
                data, _ = await peer.recvfrom(2048)
                break
    assert data == b"over tls"
    await peer.sendto(b"back", relay.relayed)
    with trio.fail_after(5):
        while not got:
            await trio.sleep(0.01)
    relay.close()
    peer.close()
    # A CA that did not sign the server's certificate: the handshake fails, one line.
    (tmp_path / "other").mkdir()
    other_ca, _, _ = _certificates(tmp_path / "other")
    bad = stream_relay((HOST, tls_port), "alice", "pw", transport="tls", ca_file=str(other_ca))
    with pytest.raises(RuntimeFailure, match="TLS handshake"):
        await nursery.start(partial(bad.run, timeout=5))
    scope.cancel()

"""WgTunnel's path handling: an initiation dropped for want of a path does not hold back the
first handshake once ICE sets one (the 5 s wait between "path selected" and "handshake
complete")."""

from __future__ import annotations

import contextlib
import os
import socket
import time

import trio
import trio.testing

from p2ptun.keys import generate_private_key, public_key
from p2ptun.net.udp import UdpEndpoint
from p2ptun.node.wgtunnel import WgTunnel
from p2ptun.wireguard import Device


class FakeTun:
    """Just enough of TunDevice for a tunnel that is never run."""

    name = "fake0"
    vnet_hdr = False

    def enable_offload(self) -> int:
        return 0

    def write(self, packet: bytes) -> bool:
        return True

    def close(self) -> None:
        pass


def ping_packet() -> bytes:
    return bytes([0x45, 0, 0, 28, 0, 1, 0, 0, 64, 1, 0, 0, 10, 9, 0, 1, 10, 9, 0, 2]) + bytes(8)


def test_first_initiation_after_path_is_set() -> None:
    device = Device(generate_private_key(), rng=os.urandom, wall_clock=time.time)
    peer = device.add_peer(public_key(generate_private_key()), allowed_ips=["10.9.0.2/32"])
    rx = UdpEndpoint.bind(socket.AF_INET, "127.0.0.1")
    rx.socket.setblocking(False)
    tx = UdpEndpoint.bind(socket.AF_INET, "127.0.0.1")
    tunnel = WgTunnel(device, FakeTun(), [tx], learn_endpoints=False)  # type: ignore[arg-type]
    with tunnel, rx:
        # Traffic before there is a path: the initiation it starts goes nowhere.
        assert device.send_packet(ping_packet(), 100.0) is peer
        tunnel.flush(peer)
        assert tunnel.peer_stats[peer].datagrams_without_endpoint == 1
        # ICE selects a pair a moment later; the controlling side starts the handshake.
        tunnel.set_endpoint(peer, rx.local_address)
        peer.initiate_handshake(100.5)
        tunnel.flush(peer)
        data = rx.socket.recv(2048)
        assert data[0] == 1 and len(data) == 148  # a handshake initiation, sent at once
        # Still one per REKEY_TIMEOUT once initiations do leave.
        peer.initiate_handshake(101.0)
        tunnel.flush(peer)
        try:
            more = rx.socket.recv(2048)
        except BlockingIOError:
            more = b""
        assert more == b""


async def test_a_response_made_before_the_path_goes_out_when_the_path_is_set(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The initiator selected the pair first and its initiation reached us through our relay
    before our side selected it: the response waits for the path instead of being lost, so
    the handshake completes when the path is set, not after the initiator's 5 s retry."""
    a_key, b_key = generate_private_key(), generate_private_key()
    a = Device(a_key, rng=os.urandom, wall_clock=time.time)
    b = Device(b_key, rng=os.urandom, wall_clock=time.time)
    b_at_a = a.add_peer(public_key(b_key), allowed_ips=["10.9.0.2/32"])
    a_at_b = b.add_peer(public_key(a_key), allowed_ips=["10.9.0.1/32"])
    rx = UdpEndpoint.bind(socket.AF_INET, "127.0.0.1")
    rx.socket.setblocking(False)
    tx = UdpEndpoint.bind(socket.AF_INET, "127.0.0.1")
    tunnel = WgTunnel(b, FakeTun(), [tx], learn_endpoints=False)  # type: ignore[arg-type]
    with tunnel, rx:
        now = trio.current_time()
        b_at_a.initiate_handshake(now)
        (initiation,) = b_at_a.pop_datagrams()
        tunnel.receive_datagram(initiation, b"relay:198.51.100.7:4000")
        tunnel.udp_drained()
        assert tunnel.peer_stats[a_at_b].datagrams_without_endpoint == 1
        with contextlib.suppress(BlockingIOError):
            assert rx.socket.recv(2048) == b""  # nothing left yet
        tunnel.set_endpoint(a_at_b, rx.local_address)
        response, source = rx.socket.recvfrom(2048)
        assert response[0] == 2 and len(response) == 92
        assert tunnel.counters.responses_held == 1
        assert a.receive_datagram(response, now, source) is b_at_a
        assert b_at_a.has_session(now)
        # Held once: a second path change sends nothing more.
        tunnel.set_endpoint(a_at_b, None)
        tunnel.set_endpoint(a_at_b, rx.local_address)
        with contextlib.suppress(BlockingIOError):
            assert rx.socket.recv(2048) == b""

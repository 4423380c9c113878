"""WgTunnel's path handling: an initiation dropped for want of a path does not hold back the
first handshake once ICE sets one (the 5 s wait between "path selected" and "handshake
complete")."""

from __future__ import annotations

import os
import socket
import time

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

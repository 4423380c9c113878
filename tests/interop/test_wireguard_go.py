"""Our sans-I/O WireGuard against wireguard-go, byte for byte, in a private network namespace.

wireguard-go runs in userspace (``WG_PROCESS_FOREGROUND=1``) inside a namespace with a unique
name, configured with ``wg set``; its interface carries 10.77.0.2/24 and the kernel answers
pings on it. Our side is a :class:`p2ptun.wireguard.Device` driven by a thin trio loop over a
UDP socket opened inside the same namespace (no TUN device is needed: the test itself plays the
IP stack, sending ICMP echo requests and answering the ones it receives).

Covered: we initiate; wireguard-go initiates (we respond); a preshared key; and our cookie reply
under load, which wireguard-go must decrypt (XChaCha20Poly1305) and answer with a valid MAC2.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from p2ptun.keys import encode_key, generate_private_key, public_key
from p2ptun.wireguard import Device, HandshakeCompleted

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("wireguard-go", "wg", "ip")),
        reason="wireguard-go, wg and ip are needed",
    ),
]

OUR_IP = "10.77.0.1"
THEIR_IP = "10.77.0.2"
THEIR_PORT = 51820
CLONE_NEWNET = 0x40000000


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def icmp_echo(src: str, dst: str, ident: int, seq: int, reply: bool = False) -> bytes:
    body = struct.pack("!BBHHH", 0 if reply else 8, 0, 0, ident, seq) + b"p2ptun-interop" * 3
    body = body[:2] + struct.pack("!H", _checksum(body)) + body[4:]
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45, 0, 20 + len(body), seq, 0, 64, 1, 0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )  # fmt: skip
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return header + body


@dataclass
class WireGuardGo:
    """wireguard-go in its own namespace; stopped by PID and the namespace removed."""

    netns: str
    ifname: str
    private_key: bytes
    proc: subprocess.Popen[bytes]
    workdir: Path

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.netns, *args],
            check=check,
            capture_output=True,
            text=True,
            timeout=30,
        )

    def set_peer(self, peer_public: bytes, our_port: int, psk: bytes | None = None) -> None:
        args = ["wg", "set", self.ifname, "peer", encode_key(peer_public)]
        args += ["allowed-ips", f"{OUR_IP}/32", "endpoint", f"127.0.0.1:{our_port}"]
        if psk is not None:
            psk_file = self.workdir / "psk"
            psk_file.write_text(encode_key(psk) + "\n")
            args += ["preshared-key", str(psk_file)]
        self.run(*args)

    def latest_handshakes(self) -> str:
        return self.run("wg", "show", self.ifname, "latest-handshakes").stdout


@contextlib.contextmanager
def _in_netns(name: str) -> Iterator[None]:
    """Switch this thread into namespace ``name`` and back (for creating sockets)."""
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns failed")
        try:
            yield
        finally:
            if libc.setns(home, CLONE_NEWNET) != 0:  # pragma: no cover
                raise OSError(ctypes.get_errno(), "setns back failed")
    finally:
        os.close(home)
        os.close(target)


@pytest.fixture
def wggo(tmp_path: Path) -> Iterator[WireGuardGo]:
    suffix = secrets.token_hex(3)
    netns, ifname = f"p2pwgi{suffix}", f"wgi{suffix}"
    subprocess.run(["ip", "netns", "add", netns], check=True, timeout=30)
    proc: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run(
            ["ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up"],
            check=True,
            timeout=30,
        )
        log = (tmp_path / "wireguard-go.log").open("wb")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, "wireguard-go", ifname],
            env={**os.environ, "WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": "debug"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        key = generate_private_key()
        wg = WireGuardGo(netns, ifname, key, proc, tmp_path)
        deadline = time.monotonic() + 10
        while wg.run("wg", "show", ifname, check=False).returncode != 0:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("wireguard-go did not come up")
            time.sleep(0.05)
        key_file = tmp_path / "wg.key"
        key_file.write_text(encode_key(key) + "\n")
        wg.run("wg", "set", ifname, "listen-port", str(THEIR_PORT), "private-key", str(key_file))
        wg.run("ip", "addr", "add", f"{THEIR_IP}/24", "dev", ifname)
        wg.run("ip", "link", "set", ifname, "up")
        yield wg
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        subprocess.run(["ip", "netns", "del", netns], check=False, timeout=30)


@dataclass
class Harness:
    """The thin trio shell around a Device: one UDP socket, timers, an ICMP echo responder."""

    device: Device
    sock: trio.socket.SocketType
    remote: tuple[str, int]
    received: list[bytes] = field(default_factory=list)
    events: list[object] = field(default_factory=list)
    echo_replies_sent: int = 0

    async def flush(self) -> None:
        for peer in self.device.peers.values():
            for datagram in peer.pop_datagrams():
                await self.sock.sendto(datagram, self.remote)
            self.events += peer.pop_events()
            for packet in peer.pop_packets():
                self.received.append(packet)
                await self._answer_ping(packet)
        for source, reply in self.device.pop_replies():
            assert isinstance(source, tuple)
            await self.sock.sendto(reply, source)

    async def _answer_ping(self, packet: bytes) -> None:
        if packet[9] == 1 and packet[20] == 8 and packet[16:20] == socket.inet_aton(OUR_IP):
            ident, seq = struct.unpack("!HH", packet[24:28])
            src = socket.inet_ntoa(packet[12:16])
            self.device.send_packet(
                icmp_echo(OUR_IP, src, ident, seq, reply=True), trio.current_time()
            )
            self.echo_replies_sent += 1
            await self.flush()

    async def send(self, packet: bytes) -> None:
        self.device.send_packet(packet, trio.current_time())
        await self.flush()

    async def run(self) -> None:
        while True:
            wake = self.device.next_wakeup()
            timeout = 0.5 if wake is None else max(0.0, min(0.5, wake - trio.current_time()))
            with trio.move_on_after(timeout):
                data, addr = await self.sock.recvfrom(65535)
                self.device.receive_datagram(data, trio.current_time(), addr)
            self.device.handle_timeout(trio.current_time())
            await self.flush()

    async def wait_for(self, predicate: object, timeout: float) -> bool:
        assert callable(predicate)
        with trio.move_on_after(timeout):
            while not predicate():
                await trio.sleep(0.02)
            return True
        return False


def _open_socket(netns: str) -> trio.socket.SocketType:
    with _in_netns(netns):
        raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    raw.bind(("127.0.0.1", 0))
    return trio.socket.from_stdlib_socket(raw)


def _device(wggo: WireGuardGo, psk: bytes | None = None) -> tuple[Device, bytes]:
    our_key = generate_private_key()
    device = Device(our_key, rng=os.urandom, wall_clock=time.time)
    device.add_peer(public_key(wggo.private_key), preshared_key=psk, allowed_ips=[f"{THEIR_IP}/32"])
    return device, our_key


def _is_echo_reply(packet: bytes) -> bool:
    return packet[9] == 1 and packet[20] == 0 and packet[12:16] == socket.inet_aton(THEIR_IP)


@pytest.mark.parametrize("with_psk", [False, True])
async def test_we_initiate_and_ping_through(wggo: WireGuardGo, with_psk: bool) -> None:
    psk = secrets.token_bytes(32) if with_psk else None
    device, our_key = _device(wggo, psk)
    sock = _open_socket(wggo.netns)
    wggo.set_peer(public_key(our_key), sock.getsockname()[1], psk)
    h = Harness(device, sock, ("127.0.0.1", THEIR_PORT))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(h.run)
        for seq in range(1, 4):
            await h.send(icmp_echo(OUR_IP, THEIR_IP, 0x4242, seq))
        ok = await h.wait_for(lambda: sum(map(_is_echo_reply, h.received)) >= 3, 10)
        nursery.cancel_scope.cancel()
    assert ok, f"echo replies: {h.received!r}, counters: {device.counters}"
    assert [type(e) for e in h.events] == [HandshakeCompleted]
    assert device.counters.handshake_auth_failed == 0
    assert device.counters.transport_auth_failed == 0
    assert "\t0" not in wggo.latest_handshakes()


async def test_wireguard_go_initiates(wggo: WireGuardGo) -> None:
    device, our_key = _device(wggo)
    sock = _open_socket(wggo.netns)
    wggo.set_peer(public_key(our_key), sock.getsockname()[1])
    h = Harness(device, sock, ("127.0.0.1", THEIR_PORT))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(h.run)
        ping = await trio.run_process(
            ["ip", "netns", "exec", wggo.netns, "ping", "-c", "3", "-i", "0.2", "-W", "5", OUR_IP],
            capture_stdout=True,
            check=False,
        )
        nursery.cancel_scope.cancel()
    assert ping.returncode == 0, ping.stdout.decode()
    assert h.echo_replies_sent >= 3
    assert h.events and isinstance(h.events[0], HandshakeCompleted)
    assert not h.events[0].is_initiator
    assert device.counters.responses_sent == 1


async def test_cookie_reply_understood_by_wireguard_go(wggo: WireGuardGo) -> None:
    device, our_key = _device(wggo)
    device.under_load = True
    sock = _open_socket(wggo.netns)
    wggo.set_peer(public_key(our_key), sock.getsockname()[1])
    h = Harness(device, sock, ("127.0.0.1", THEIR_PORT))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(h.run)
        ping = await trio.run_process(
            ["ip", "netns", "exec", wggo.netns, "ping", "-c", "1", "-W", "12", OUR_IP],
            capture_stdout=True,
            check=False,
        )
        nursery.cancel_scope.cancel()
    # The first initiation got a cookie reply; the retransmission ~5 s later carried a
    # valid MAC2 made with wireguard-go's decryption of our cookie, and was accepted.
    assert device.counters.cookie_replies_sent >= 1
    assert device.counters.responses_sent == 1, device.counters
    assert ping.returncode == 0, ping.stdout.decode()

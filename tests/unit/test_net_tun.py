"""Tests for p2ptun.net.tun.

Error mapping is tested everywhere (with the system calls replaced); the real device tests
need root and run inside a network namespace this module creates and always deletes, so no
interface and no packet ever appears outside it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from p2ptun.errors import RuntimeFailure
from p2ptun.net import netlink, tun
from p2ptun.net.dispatch import Dispatcher
from p2ptun.net.tun import MAX_PACKET, TunDevice, validate_ifname
from p2ptun.net.udp import UdpEndpoint

IS_ROOT = os.geteuid() == 0
HAVE_TUN = os.path.exists(tun.TUN_PATH)
needs_root = pytest.mark.skipif(
    not (IS_ROOT and HAVE_TUN), reason="needs root and /dev/net/tun (network namespaces, TUN)"
)


# -- helpers ------------------------------------------------------------------------------------


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4_packet(src: str, dst: str, proto: int, payload: bytes, ttl: int = 64) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(payload),
        0x1234,
        0,
        ttl,
        proto,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + payload


def udp_ipv4_packet(src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> bytes:
    length = 8 + len(payload)
    pseudo = (
        socket.inet_aton(src[0]) + socket.inet_aton(dst[0]) + struct.pack("!BBH", 0, 17, length)
    )
    udp = struct.pack("!HHHH", src[1], dst[1], length, 0) + payload
    csum = checksum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
    return ipv4_packet(src[0], dst[0], 17, udp)


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh network namespace ``nt<4 hex>`` with lo up; always deleted afterwards."""
    name = "nt" + secrets.token_hex(2)
    result = ip("netns", "add", name)
    if result.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {result.stderr.strip()}")
    try:
        ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        ip("netns", "del", name)


def open_tun(ns: str, name: str = "ntun0", *, vnet_hdr: bool = False) -> TunDevice:
    return netlink.in_netns(ns, lambda: TunDevice.open(name, vnet_hdr=vnet_hdr))


def link_exists(ns: str, name: str) -> bool:
    return ip("-n", ns, "link", "show", name).returncode == 0


# -- names and errors (no root needed) ----------------------------------------------------------


@pytest.mark.parametrize("name", ["p2p0", "a", "x" * 15, "tun%d", "wg-home_1"])
def test_valid_names(name: str) -> None:
    validate_ifname(name)


@pytest.mark.parametrize("name", ["", "x" * 16, ".", "..", "a/b", "a b", "a:1", "tab\t"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(RuntimeFailure, match="invalid interface name"):
        validate_ifname(name)


def test_open_invalid_name_fails_before_touching_the_device() -> None:
    with pytest.raises(RuntimeFailure, match="1-15 bytes"):
        TunDevice.open("much-too-long-name", path="/nonexistent/tun")


def test_missing_device_node() -> None:
    with pytest.raises(RuntimeFailure, match=r"^no TUN device at /nonexistent/tun"):
        TunDevice.open("p2p0", path="/nonexistent/tun")


def test_open_permission_denied(monkeypatch: pytest.MonkeyPatch) -> None:
    def deny(*args: object) -> int:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(RuntimeFailure, match="needs CAP_NET_ADMIN"):
        TunDevice.open("p2p0")


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (errno.EPERM, "cannot create TUN interface p2p0: needs CAP_NET_ADMIN"),
        (errno.EBUSY, "cannot create TUN interface p2p0: name busy"),
        (errno.EINVAL, "cannot create TUN interface p2p0: the name belongs to"),
        (errno.ENOMEM, "cannot create TUN interface p2p0: out of resources"),
        (errno.EIO, "cannot create TUN interface p2p0: Input/output error"),
    ],
)
def test_setiff_errors(monkeypatch: pytest.MonkeyPatch, code: int, message: str) -> None:
    real_open = os.open
    opened: list[int] = []

    def fake_open(*args: object) -> int:
        fd = real_open(os.devnull, os.O_RDWR)
        opened.append(fd)
        return fd

    def fake_ioctl(*args: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(fcntl, "ioctl", fake_ioctl)
    with pytest.raises(RuntimeFailure) as info:
        TunDevice.open("p2p0")
    monkeypatch.undo()
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)
    # The descriptor was closed, not leaked.
    assert len(opened) == 1
    with pytest.raises(OSError) as closed:
        os.fstat(opened[0])
    assert closed.value.errno == errno.EBADF


def test_runtime_failure_exit_code() -> None:
    with pytest.raises(RuntimeFailure) as info:
        TunDevice.open("p2p0", path="/nonexistent/tun")
    assert info.value.exit_code == 1


# -- real devices, inside a namespace ----------------------------------------------------------


@needs_root
def test_open_creates_and_close_removes(netns: str) -> None:
    dev = open_tun(netns)
    try:
        assert dev.name == "ntun0"
        assert dev.fileno() >= 0
        assert not os.get_blocking(dev.fileno())
        assert link_exists(netns, "ntun0")
        assert not link_exists(netns, "lo-none")
        assert dev.readinto(bytearray(MAX_PACKET)) is None  # down, nothing queued
    finally:
        dev.close()
    assert dev.closed
    assert dev.fileno() == -1
    assert not link_exists(netns, "ntun0")
    dev.close()  # idempotent


@needs_root
def test_kernel_chooses_name(netns: str) -> None:
    with open_tun(netns, "") as dev:
        assert dev.name.startswith("tun")
        assert link_exists(netns, dev.name)
    with open_tun(netns, "ntq%d") as dev:
        assert dev.name == "ntq0"


@needs_root
def test_name_busy(netns: str) -> None:
    with open_tun(netns) as dev, pytest.raises(RuntimeFailure, match="name busy"):
        open_tun(netns, dev.name)


@needs_root
def test_name_of_another_kind(netns: str) -> None:
    with pytest.raises(RuntimeFailure, match="another kind"):
        open_tun(netns, "lo")


@needs_root
def test_vnet_header_and_offload(netns: str) -> None:
    with open_tun(netns, vnet_hdr=True) as dev:
        assert dev.vnet_hdr
        dev.set_offload(tun.TUN_F_CSUM | tun.TUN_F_TSO4 | tun.TUN_F_TSO6)


@needs_root
def test_without_cap_net_admin(netns: str) -> None:
    """An unprivileged process gets the one-line CAP_NET_ADMIN message (run in the namespace,
    so even a surprise success could not create anything outside it)."""
    code = (
        "import sys\n"
        "from p2ptun.errors import RuntimeFailure\n"
        "from p2ptun.net.tun import TunDevice\n"
        "try:\n"
        "    TunDevice.open('ntun9')\n"
        "except RuntimeFailure as e:\n"
        "    print(e)\n"
        "    sys.exit(0)\n"
        "sys.exit(3)\n"
    )
    unprivileged = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    unprivileged += ["--inh-caps=-all", "--bounding-set=-all"]
    result = subprocess.run(
        ["ip", "netns", "exec", netns, *unprivileged, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
    )
    assert result.returncode == 0, result.stderr
    assert "needs CAP_NET_ADMIN" in result.stdout
    assert result.stdout.count("\n") == 1


@pytest.fixture
def configured(netns: str) -> Iterator[tuple[str, TunDevice]]:
    """ntun0 in the namespace: 10.201.0.1/24 and fd20::1/64, MTU 1400, up, routes to
    10.202.0.0/24 and fd21::/64 through it."""
    dev = open_tun(netns)
    try:
        netlink.configure_interface("ntun0", ["10.201.0.1/24", "fd20::1/64"], 1400, netns=netns)
        netlink.add_route("ntun0", "10.202.0.0/24", netns=netns)
        netlink.add_route("ntun0", "fd21::/64", netns=netns)
        yield netns, dev
    finally:
        dev.close()


def ns_socket(ns: str, family: int, type_: int, proto: int = 0) -> socket.socket:
    sock = netlink.in_netns(ns, lambda: socket.socket(family, type_, proto))
    sock.setblocking(False)
    return sock


async def read_packet(dev: TunDevice, want: object = None) -> bytes:
    """The next packet from the TUN (skipping, e.g., IPv6 router solicitations), bounded."""
    buf = bytearray(MAX_PACKET)
    with trio.fail_after(5):
        for _ in range(100):
            await dev.wait_readable()
            while (n := dev.readinto(buf)) is not None:
                packet = bytes(buf[:n])
                if want is None or (callable(want) and want(packet)):
                    return packet
    raise AssertionError("no matching packet")


@needs_root
async def test_configuration_applied(configured: tuple[str, TunDevice]) -> None:
    ns, dev = configured
    info = netlink.link_info(dev.name, netns=ns)
    assert info is not None
    assert info.mtu == 1400
    assert info.up
    addrs = ip("-n", ns, "-o", "addr", "show", "dev", "ntun0").stdout
    assert "10.201.0.1/24" in addrs
    assert "fd20::1/64" in addrs
    routes = ip("-n", ns, "route", "show", "dev", "ntun0").stdout
    assert "10.202.0.0/24" in routes


@needs_root
async def test_ping_out_and_reply_in(configured: tuple[str, TunDevice]) -> None:
    """An ICMP echo request sent to a routed address comes out of the TUN; the reply we write
    in is delivered to the sender."""
    ns, dev = configured
    icmp = ns_socket(ns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    with icmp:
        ident, seq = 0x4242, 7
        body = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"p2ptun-ping"
        body = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
        icmp.sendto(body, ("10.202.0.5", 0))

        def is_echo(p: bytes) -> bool:
            return p[0] >> 4 == 4 and p[9] == 1 and p[20] == 8

        packet = await read_packet(dev, is_echo)
        assert socket.inet_ntoa(packet[12:16]) == "10.201.0.1"
        assert socket.inet_ntoa(packet[16:20]) == "10.202.0.5"
        ihl = (packet[0] & 0x0F) * 4
        request = packet[ihl:]
        assert struct.unpack("!HH", request[4:8]) == (ident, seq)
        assert request[8:] == b"p2ptun-ping"
        assert dev.counters.rx_packets >= 1

        reply = b"\x00\x00\x00\x00" + request[4:]
        reply = reply[:2] + struct.pack("!H", checksum(reply)) + reply[4:]
        assert dev.write(ipv4_packet("10.202.0.5", "10.201.0.1", 1, reply))
        assert dev.counters.tx_packets == 1
        with trio.fail_after(5):
            while True:
                await trio.lowlevel.wait_readable(icmp)
                data, addr = icmp.recvfrom(2048)
                if data[20] == 0:  # echo reply (the raw socket also sees our request)
                    break
        assert addr[0] == "10.202.0.5"
        assert struct.unpack("!HH", data[24:28]) == (ident, seq)
        assert data[28:] == b"p2ptun-ping"


@needs_root
async def test_ipv6_packet_out(configured: tuple[str, TunDevice]) -> None:
    ns, dev = configured
    with ns_socket(ns, socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"hello-v6", ("fd21::9", 4000))

        def is_udp6(p: bytes) -> bool:
            return p[0] >> 4 == 6 and p[6] == 17

        packet = await read_packet(dev, is_udp6)
        assert socket.inet_ntop(socket.AF_INET6, packet[24:40]) == "fd21::9"
        assert packet[40 + 8 :] == b"hello-v6"


@needs_root
async def test_read_batch_drains_until_eagain(configured: tuple[str, TunDevice]) -> None:
    ns, dev = configured
    with ns_socket(ns, socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for i in range(5):
            sock.sendto(b"batch%d" % i, ("10.202.0.7", 5000 + i))
        buffers = [bytearray(MAX_PACKET) for _ in range(8)]
        lengths = [0] * 8
        got: list[bytes] = []
        with trio.fail_after(5):
            while len(got) < 5:
                await dev.wait_readable()
                n = dev.read_batch(buffers, lengths)
                assert n < 8
                for i in range(n):
                    packet = bytes(buffers[i][: lengths[i]])
                    if packet[0] >> 4 == 4 and packet[9] == 17:
                        got.append(packet[28:])
        assert got == [b"batch%d" % i for i in range(5)]
        assert dev.read_batch(buffers, lengths) == 0


@needs_root
async def test_udp_injected_through_tun_reaches_endpoint(
    configured: tuple[str, TunDevice],
) -> None:
    """A WireGuard-looking datagram written into the TUN reaches a UdpEndpoint bound in the
    namespace and is dispatched to the WireGuard handler."""
    ns, dev = configured
    got: list[tuple[bytes, tuple[str, int]]] = []
    dispatcher = Dispatcher(wireguard=lambda d, a: got.append((bytes(d), a)))
    ep = netlink.in_netns(ns, lambda: UdpEndpoint.bind(socket.AF_INET, "10.201.0.1", 0))
    with ep:
        port = ep.local_address[1]
        payload = b"\x04\x00\x00\x00" + bytes(28)
        assert dev.write(udp_ipv4_packet(("10.202.0.9", 51820), ("10.201.0.1", port), payload))
        with trio.fail_after(5):
            while not got:
                await trio.lowlevel.wait_readable(ep.socket)
                ep.drain(dispatcher)
        assert got == [(payload, ("10.202.0.9", 51820))]
        assert dispatcher.counters.rx_wireguard == 1


@needs_root
def test_write_garbage_is_dropped_not_raised(configured: tuple[str, TunDevice]) -> None:
    _ns, dev = configured
    assert not dev.write(b"\xff" * 40)  # neither IPv4 nor IPv6
    assert dev.counters.tx_dropped == 1
    assert not dev.write(b"\x00" * 20)


@needs_root
async def test_close_wakes_waiter(netns: str) -> None:
    dev = open_tun(netns)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:

            async def waiter() -> None:
                with pytest.raises(trio.ClosedResourceError):
                    await dev.wait_readable()

            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            dev.close()
    with pytest.raises(trio.ClosedResourceError):
        dev.readinto(bytearray(10))


@needs_root
def test_device_removed_underneath(netns: str) -> None:
    with open_tun(netns) as dev:
        assert netlink.delete_link("ntun0", netns=netns)
        with pytest.raises(RuntimeFailure, match="was removed"):
            dev.readinto(bytearray(MAX_PACKET))

"""The real machine behind :class:`p2ptun.net.ports.Host`: sockets, TUN, netlink, clocks.

:class:`SystemHost` is what ``p2ptun up`` and ``p2ptun rendezvous`` run on: UDP endpoints
(:mod:`p2ptun.net.udp`), the TUN device (:mod:`p2ptun.net.tun`), netlink through pyroute2
(:mod:`p2ptun.net.netlink`; blocking calls run on a worker thread), trio's TCP, the system
resolver, ``time.time``, ``CLOCK_BOOTTIME`` and ``os.urandom``. The in-memory network of the
tests implements the same interface (``p2plab.memnet``).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import random
import shutil
import socket
import time
from collections.abc import AsyncIterable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager

import trio

from p2ptun.addr import Address, format_address
from p2ptun.errors import RuntimeFailure
from p2ptun.log import get_logger
from p2ptun.net import forwarding, netlink
from p2ptun.net.keepalive import enable as enable_keepalive
from p2ptun.net.ports import (
    Connection,
    DatagramPort,
    IPInterface,
    IPNetwork,
    Listener,
    LocalAddress,
    NetworkChange,
    TunPort,
)
from p2ptun.net.tun import TunDevice
from p2ptun.net.udp import UdpEndpoint, family_of, open_endpoints, receive_buffers

#: Pending connections a TCP listener queues before the kernel refuses more.
LISTEN_BACKLOG = 128


def default_gateway(table: str = "/proc/net/route") -> str | None:
    """The IPv4 default route's gateway with the lowest metric, from the kernel's route
    table of this network namespace (hex, host byte order as the kernel writes it)."""
    best: tuple[int, str] | None = None
    try:
        with open(table, encoding="ascii") as f:
            lines = f.read(1 << 20).splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) < 8 or fields[1] != "00000000" or fields[7] != "00000000":
            continue
        try:
            flags, metric = int(fields[3], 16), int(fields[6])
            gateway = socket.inet_ntoa(int(fields[2], 16).to_bytes(4, "little"))
        except ValueError:
            continue
        if flags & 0x3 == 0x3 and (best is None or metric < best[0]):  # RTF_UP | RTF_GATEWAY
            best = (metric, gateway)
    return best[1] if best else None


def route_source(remote_ip: str, mark: int | None = None) -> str | None:
    """The local address the kernel sends from towards ``remote_ip`` (no packet is sent), or
    None without a route; ``mark``: as a socket with that mark (``SO_MARK``) would."""
    try:
        family = family_of(remote_ip.split("%", 1)[0])
        with socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as probe:
            if mark is not None:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
            probe.connect((remote_ip, 9))
            return str(ipaddress.ip_address(probe.getsockname()[0].split("%", 1)[0]))
    except (OSError, ValueError):
        return None


def _socket_addresses(stream: trio.SocketStream) -> tuple[Address, Address]:
    local = stream.socket.getsockname()
    remote = stream.socket.getpeername()
    return (
        (str(local[0]).split("%", 1)[0], int(local[1])),
        (str(remote[0]).split("%", 1)[0], int(remote[1])),
    )


class MarkingSockets(trio.abc.SocketFactory):
    """trio's sockets of this run, IPv4 and IPv6 ones with our mark (``SO_MARK``) from birth."""

    def __init__(self, mark: int) -> None:
        self.mark = mark

    def socket(
        self,
        family: socket.AddressFamily | int = socket.AF_INET,
        type: socket.SocketKind | int = socket.SOCK_STREAM,
        proto: int = 0,
    ) -> trio.socket.SocketType:
        sock = socket.socket(family, type, proto)
        if family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.mark)
            except OSError:
                sock.close()
                raise
        return trio.socket.from_stdlib_socket(sock)


class SystemListener:
    """A listening TCP socket (a :class:`~p2ptun.net.ports.Listener`)."""

    def __init__(self, listener: trio.SocketListener, local: Address) -> None:
        self._listener = listener
        self.local_address = local

    async def accept(self) -> Connection:
        """The next connection; OSError for a failed accept (e.g. out of descriptors)."""
        while True:
            stream = await self._listener.accept()
            try:
                local, remote = _socket_addresses(stream)
            except OSError:  # reset before we looked at it
                await trio.aclose_forcefully(stream)
                continue
            return Connection(stream, local, remote)

    async def aclose(self) -> None:
        await self._listener.aclose()


class SystemHost:
    """This machine (see the module docstring). ``netns``: make the netlink queries and
    changes in that network namespace instead of the caller's (the lab's tests; sockets and
    the TUN device are opened where the process is)."""

    def __init__(self, *, netns: str | None = None) -> None:
        self.netns = netns
        self._shared: list[memoryview] | None = None
        self._rng = random.SystemRandom()
        self.fwmark: int | None = None

    # -- sockets ----------------------------------------------------------------------------

    def _mark(self, sock: socket.socket) -> None:
        if self.fwmark is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.fwmark)

    def open_datagram_ports(self, port: int = 0) -> list[DatagramPort]:
        endpoints = open_endpoints(port)
        try:
            for endpoint in endpoints:
                self._mark(endpoint.socket)
        except OSError as exc:
            for endpoint in endpoints:
                endpoint.close()
            raise RuntimeFailure(f"cannot mark the UDP sockets (SO_MARK): {exc.strerror}") from None
        return list(endpoints)

    def bind_datagram(self, ip: str, port: int, *, shared_buffers: bool = False) -> DatagramPort:
        buffers = None
        if shared_buffers:
            if self._shared is None:
                self._shared = receive_buffers()
            buffers = self._shared
        endpoint = UdpEndpoint.bind(family_of(ip), ip, port, buffers=buffers)
        try:
            self._mark(endpoint.socket)
        except OSError as exc:
            endpoint.close()
            raise RuntimeFailure(f"cannot mark a UDP socket (SO_MARK): {exc.strerror}") from None
        return endpoint

    async def connect_tcp(
        self,
        host: str,
        port: int,
        *,
        local_ip: str | None = None,
        keepalive: tuple[int, int, int] | None = None,
    ) -> Connection:
        stream = await trio.open_tcp_stream(host, port, local_address=local_ip)
        try:
            if keepalive is not None:
                enable_keepalive(stream, keepalive)
            local, remote = _socket_addresses(stream)
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return Connection(stream, local, remote)

    async def listen_tcp(self, ip: str, port: int) -> Listener:
        shown = format_address((ip, port))
        family = family_of(ip)
        sock = trio.socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            await sock.bind((ip, port))
            sock.listen(LISTEN_BACKLOG)
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise RuntimeFailure(f"cannot bind TCP {shown}: address already in use") from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise RuntimeFailure(
                    f"cannot bind TCP {shown}: no such local address on this host"
                ) from None
            raise RuntimeFailure(f"cannot bind TCP {shown}: {exc.strerror}") from None
        name = sock.getsockname()
        return SystemListener(trio.SocketListener(sock), (str(name[0]), int(name[1])))

    async def resolve(self, host: str, port: int) -> list[Address]:
        try:
            infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except socket.gaierror as exc:
            raise RuntimeFailure(f"cannot resolve {host!r}: {exc.strerror}") from None
        infos.sort(key=lambda info: 0 if info[0] == socket.AF_INET else 1)
        found: list[Address] = []
        for family, _type, _proto, _name, sockaddr in infos:
            if family in (socket.AF_INET, socket.AF_INET6):
                addr = (str(sockaddr[0]), int(sockaddr[1]))
                if addr not in found:
                    found.append(addr)
        return found

    async def default_gateway(self) -> str | None:
        return await trio.to_thread.run_sync(default_gateway)

    def route_source(self, remote_ip: str) -> str | None:
        # Asked for the underlay's sockets: with our mark, as they would be routed (an exit
        # node's policy routing must not answer with the tunnel's address).
        return route_source(remote_ip, self.fwmark)

    async def local_addresses(
        self, *, exclude: Iterable[str] = (), include_link_local: bool = False
    ) -> list[LocalAddress]:
        return await netlink.run(
            netlink.list_local_addresses,
            exclude=list(exclude),
            include_link_local=include_link_local,
            netns=self.netns,
        )

    # -- the interface ----------------------------------------------------------------------

    def open_tun(self, name: str) -> TunPort:
        return TunDevice.open(name)

    async def interface_exists(self, name: str) -> bool:
        return await netlink.run(netlink.link_info, name, netns=self.netns) is not None

    async def configure_interface(
        self, name: str, addresses: Sequence[IPInterface], mtu: int
    ) -> None:
        await netlink.run(netlink.configure_interface, name, list(addresses), mtu, netns=self.netns)

    async def remove_addresses(self, name: str, addresses: Sequence[IPInterface]) -> None:
        await netlink.run(netlink.remove_addresses, name, list(addresses), netns=self.netns)

    async def add_route(self, name: str, prefix: IPNetwork) -> None:
        await netlink.run(netlink.add_route, name, prefix, netns=self.netns)

    async def remove_route(self, name: str, prefix: IPNetwork) -> None:
        await netlink.run(netlink.remove_route, name, prefix, netns=self.netns)

    def network_changes(
        self, *, exclude: Iterable[str] = ()
    ) -> AbstractAsyncContextManager[AsyncIterable[list[NetworkChange]]]:
        return netlink.NetworkMonitor(exclude=exclude, netns=self.netns)

    # -- forwarding and policy routing (p2ptun.net.forwarding) -------------------------------

    def set_fwmark(self, mark: int | None) -> None:
        """Also for the TCP sockets trio makes in this run (``open_tcp_stream``, happy
        eyeballs included): through trio's socket factory, so that the SYN carries it."""
        self.fwmark = mark
        trio.socket.set_custom_socket_factory(None if mark is None else MarkingSockets(mark))

    async def enable_forwarding(self, version: int) -> str | None:
        return await forwarding.write_sysctl(
            forwarding.FORWARDING_SYSCTL[version], "1", netns=self.netns
        )

    async def set_nftables(self, interface: str, ruleset: str | None) -> None:
        if ruleset is None and shutil.which("nft") is None:
            return  # without nftables there is no table of ours to delete
        text = forwarding.nft_delete(interface) if ruleset is None else ruleset
        await forwarding.apply_nft(text, netns=self.netns)

    async def set_exit_routing(
        self,
        interface: str,
        mark: int,
        defaults: Sequence[IPNetwork],
        lan: Sequence[IPNetwork] = (),
    ) -> None:
        if any(net.version == 4 for net in defaults):
            # Reverse-path filtering looks the replies up with the mark the conntrack entry
            # gives them back (our nftables table), as wg-quick does.
            await forwarding.write_sysctl(forwarding.SRC_VALID_MARK, "1", netns=self.netns)
        commands = forwarding.exit_rule_commands(interface, mark, defaults, lan)
        await forwarding.run_commands(commands, netns=self.netns)

    async def clear_exit_routing(self, mark: int) -> None:
        rules = await netlink.run(netlink.rule_priorities, netns=self.netns)
        ours = [(v, p) for v, p in rules if p in forwarding.RULE_PREFS]
        if not ours:
            return  # nothing of ours (the common start): no program to run
        # A rule of another program at one of our priorities does not match the deletion's
        # selectors (table, mark): that command fails, and the rule stays.
        for argv in forwarding.exit_clear_commands(mark, ours):
            await forwarding.run_command(argv, netns=self.netns)
        for argv in forwarding.exit_flush_commands(mark, (v for v, _ in ours)):
            await forwarding.run_command(argv, netns=self.netns)

    # -- the system's resolver --------------------------------------------------------------

    async def register_dns(self, interface: str, servers: Sequence[str], domain: str) -> bool:
        """systemd-resolved's per-link settings through ``resolvectl`` (what ``resolvectl
        dns``/``domain`` set: DNS servers of the link and ``~domain`` as its routing-only
        domain, so that only names under it go there), when resolved runs."""
        if not resolved_running():
            return False
        commands = [
            ["dns", interface, *servers],
            ["domain", interface, f"~{domain}"],
            ["default-route", interface, "false"],
        ]
        for args in commands:
            ok = await _resolvectl(args)
            if not ok and args[0] != "default-route":
                return False
        return True

    async def unregister_dns(self, interface: str) -> None:
        if resolved_running():
            await _resolvectl(["revert", interface])

    # -- clocks and randomness --------------------------------------------------------------

    def wall_clock(self) -> float:
        return time.time()

    def suspend_clocks(self) -> tuple[float, float]:
        return time.monotonic(), time.clock_gettime(time.CLOCK_BOOTTIME)

    def random_bytes(self, n: int) -> bytes:
        return os.urandom(n)

    @property
    def rng(self) -> random.Random:
        return self._rng


log = get_logger("net.resolver")
RESOLVED_SOCKET = "/run/systemd/resolve/io.systemd.Resolve"


def resolved_running() -> bool:
    """Does systemd-resolved run here (its socket exists and resolvectl is installed)?"""
    return os.path.exists(RESOLVED_SOCKET) and shutil.which("resolvectl") is not None


async def _resolvectl(args: list[str]) -> bool:
    try:
        result = await trio.run_process(
            ["resolvectl", *args], capture_stdout=True, capture_stderr=True, check=False
        )
    except OSError:
        return False
    if result.returncode != 0:
        error = result.stderr.decode(errors="replace").strip()
        log.warning("resolvectl failed", args=" ".join(args), error=error)
        return False
    return True


__all__ = ["SystemHost", "SystemListener", "resolved_running", "route_source"]

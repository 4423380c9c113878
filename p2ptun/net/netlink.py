"""Netlink (RTNL) through pyroute2: interface configuration, local addresses, change monitor.

Two ways of talking to the kernel live here, on purpose:

**Configuration and queries** (:func:`configure_interface`, :func:`add_route`,
:func:`remove_route`, :func:`delete_link`, :func:`list_local_addresses`) are *blocking*
functions built on pyroute2's synchronous :class:`~pyroute2.IPRoute`. Each call opens its own
RTNL socket, does its work and closes it: pyroute2 0.9's synchronous objects carry per-thread
state (an asyncio loop), so one object is never shared between threads. These calls take
microseconds to milliseconds. Call them directly at setup and teardown (before the trio loop
starts, or in a ``finally`` where blocking briefly is fine); from inside trio, use
``await run(fn, ...)``, which runs the function on a worker thread and waits for it to finish
even when cancelled (a half-applied change is worse than a short delay).

**Watching for changes** (:class:`NetworkMonitor`) is not a thread and not pyroute2's socket
machinery: it owns a plain non-blocking ``AF_NETLINK`` socket subscribed to the link, address
and route multicast groups, sleeps in :func:`trio.lowlevel.wait_readable` on it, drains it
until ``EAGAIN`` and parses the messages with pyroute2's RTNL marshal. So it is an ordinary
trio task that a nursery can cancel, with no thread to stop.

Every function takes ``netns``: the name of a network namespace (``ip netns`` style) to act in
instead of the caller's — for the NAT lab and the tests. The daemon itself runs inside its
namespace and leaves it None.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
import struct
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

import trio
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from p2ptun.errors import RuntimeFailure
from p2ptun.log import get_logger
from p2ptun.net.ports import (
    ChangeKind,
    IPInterface,
    IPNetwork,
    LocalAddress,
    NetworkChange,
)

log = get_logger("net.netlink")

P = ParamSpec("P")
T = TypeVar("T")

# <linux/rtnetlink.h>, <linux/netlink.h>, <linux/if.h>, <linux/if_addr.h>
NETLINK_ROUTE = 0
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_DUMP = 0x300
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_IFADDR = 0x100
RTMGRP_IPV6_ROUTE = 0x400
MONITOR_GROUPS = (
    RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE
)
IFF_UP = 0x1
IFF_LOOPBACK = 0x8
IFF_RUNNING = 0x40
IFA_F_DADFAILED = 0x08
IFA_F_DEPRECATED = 0x20
IFA_F_TENTATIVE = 0x40
RT_TABLE_MAIN = 254
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RTN_UNICAST = 1
RTPROT_STATIC = 4

_NLMSGHDR = struct.Struct("=IHHII")

_NETNS_DIR = "/run/netns"


# -- running blocking calls from trio ----------------------------------------------------------


async def run(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run one of this module's blocking functions on a worker thread and return its result.

    Cancellation waits for the call to finish (netlink operations are short), so the kernel
    state is never left half-changed behind the caller's back.
    """
    return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs))


# -- helpers ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _iproute(netns: str | None) -> Iterator[Any]:
    """A fresh pyroute2 IPRoute for one call (in ``netns`` if given; never creating it)."""
    if netns is not None and not os.path.exists(os.path.join(_NETNS_DIR, netns)):
        raise RuntimeFailure(f"network namespace {netns!r} does not exist")
    try:
        ipr = IPRoute(netns=netns, flags=0) if netns is not None else IPRoute()
    except OSError as exc:
        raise RuntimeFailure(f"cannot open a netlink socket: {exc.strerror or exc}") from None
    try:
        yield ipr
    finally:
        ipr.close()


def _netlink_failure(action: str, exc: Exception) -> RuntimeFailure:
    code = getattr(exc, "code", None) or getattr(exc, "errno", None)
    if code in (errno.EPERM, errno.EACCES):
        return RuntimeFailure(f"cannot {action}: needs CAP_NET_ADMIN")
    reason = os.strerror(code) if isinstance(code, int) and code > 0 else str(exc)
    return RuntimeFailure(f"cannot {action}: {reason}")


def _ifindex(ipr: Any, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise RuntimeFailure(f"no network interface named {name!r}")
    return int(found[0])


def _interface_address(value: str | IPInterface) -> IPInterface:
    """An interface address as :mod:`ipaddress` keeps it (a string is parsed, for the lab)."""
    if not isinstance(value, str):
        return value
    try:
        return ipaddress.ip_interface(value)
    except ValueError:
        raise RuntimeFailure(f"{value!r} is not an address with a prefix length") from None


# -- configuration -----------------------------------------------------------------------------


def configure_interface(
    name: str,
    addresses: Iterable[str | IPInterface] = (),
    mtu: int | None = None,
    *,
    up: bool = True,
    netns: str | None = None,
) -> None:
    """Give interface ``name`` its ``addresses`` (``IPv4Interface("10.77.0.1/24")``, or the
    same as text), MTU,
    and bring it up. Idempotent: addresses already present are kept (``replace``).

    The MTU is set before the addresses, because the kernel drops IPv6 from an interface whose
    MTU is below 1280. Raises :class:`RuntimeFailure` with one line on failure.
    """
    nets = [_interface_address(a) for a in addresses]
    with _iproute(netns) as ipr:
        index = _ifindex(ipr, name)
        if mtu is not None:
            try:
                ipr.link("set", index=index, mtu=mtu)
            except NetlinkError as exc:
                raise _netlink_failure(f"set MTU {mtu} on {name}", exc) from None
        for net in nets:
            try:
                ipr.addr(
                    "replace",
                    index=index,
                    address=str(net.ip),
                    prefixlen=net.network.prefixlen,
                )
            except NetlinkError as exc:
                raise _netlink_failure(f"add address {net} to {name}", exc) from None
        if up:
            try:
                ipr.link("set", index=index, state="up")
            except NetlinkError as exc:
                raise _netlink_failure(f"bring {name} up", exc) from None
    log.info("interface configured", interface=name, addresses=",".join(map(str, nets)), mtu=mtu)


def remove_addresses(
    name: str, addresses: Iterable[str | IPInterface], *, netns: str | None = None
) -> None:
    """Remove ``addresses`` from ``name``; ones already gone are ignored."""
    nets = [_interface_address(a) for a in addresses]
    with _iproute(netns) as ipr:
        index = _ifindex(ipr, name)
        for net in nets:
            try:
                ipr.addr("del", index=index, address=str(net.ip), prefixlen=net.network.prefixlen)
            except NetlinkError as exc:
                if exc.code in (errno.EADDRNOTAVAIL, errno.ENOENT, errno.ESRCH):
                    continue
                raise _netlink_failure(f"remove address {net} from {name}", exc) from None


def _route_args(
    prefix: str | IPNetwork, index: int, metric: int | None, table: int
) -> dict[str, Any]:
    try:
        net = ipaddress.ip_network(prefix, strict=False)
    except ValueError:
        raise RuntimeFailure(f"{prefix!r} is not a network prefix") from None
    args: dict[str, Any] = {
        "dst": f"{net.network_address}/{net.prefixlen}",
        "oif": index,
        "table": table,
        "family": socket.AF_INET6 if net.version == 6 else socket.AF_INET,
        "scope": RT_SCOPE_LINK if net.version == 4 else RT_SCOPE_UNIVERSE,
        "proto": RTPROT_STATIC,
        "type": RTN_UNICAST,
    }
    if metric is not None:
        args["priority"] = metric
    return args


def add_route(
    name: str,
    prefix: str | IPNetwork,
    *,
    metric: int | None = None,
    table: int = RT_TABLE_MAIN,
    netns: str | None = None,
) -> None:
    """Route ``prefix`` (a peer's allowed_ips entry) through interface ``name``.

    Idempotent (``replace``). Host bits in ``prefix`` are ignored, as ``ip route`` would
    refuse them.
    """
    with _iproute(netns) as ipr:
        index = _ifindex(ipr, name)
        args = _route_args(prefix, index, metric, table)
        try:
            ipr.route("replace", **args)
        except NetlinkError as exc:
            raise _netlink_failure(f"add route {args['dst']} via {name}", exc) from None
    log.debug("route added", interface=name, prefix=args["dst"])


def remove_route(
    name: str,
    prefix: str | IPNetwork,
    *,
    metric: int | None = None,
    table: int = RT_TABLE_MAIN,
    netns: str | None = None,
) -> None:
    """Remove the route for ``prefix`` through ``name`` that :func:`add_route` made; a route
    (or interface) already gone is not an error."""
    with _iproute(netns) as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return
        # Same scope and protocol as add_route: the kernel matches them (pyroute2's default
        # scope for a delete would miss a link-scope route), and only our routes go.
        args = _route_args(prefix, int(found[0]), metric, table)
        try:
            ipr.route("del", **args)
        except NetlinkError as exc:
            if exc.code in (errno.ESRCH, errno.ENOENT, errno.ENODEV):
                return
            raise _netlink_failure(f"remove route {args['dst']} via {name}", exc) from None
    log.debug("route removed", interface=name, prefix=args["dst"])


def delete_link(name: str, *, netns: str | None = None) -> bool:
    """Delete interface ``name`` (and with it its addresses and routes).

    Returns False if there was no such interface. A TUN interface also disappears when its
    descriptor is closed; this is for the cases where it was made elsewhere or persists.
    """
    with _iproute(netns) as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return False
        try:
            ipr.link("del", index=found[0])
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return False
            raise _netlink_failure(f"delete interface {name}", exc) from None
    log.info("interface deleted", interface=name)
    return True


def link_info(name: str, *, netns: str | None = None) -> LinkInfo | None:
    """State of interface ``name``, or None if it does not exist."""
    with _iproute(netns) as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return None
        msgs = ipr.get_links(found[0])
        if not msgs:
            return None
        return LinkInfo.from_msg(msgs[0])


# -- local addresses ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LinkInfo:
    """What matters about one interface."""

    index: int
    name: str
    flags: int
    mtu: int

    @property
    def up(self) -> bool:
        """Administratively up and with carrier (``IFF_UP`` and ``IFF_RUNNING``)."""
        return self.flags & (IFF_UP | IFF_RUNNING) == IFF_UP | IFF_RUNNING

    @property
    def loopback(self) -> bool:
        return bool(self.flags & IFF_LOOPBACK)

    @classmethod
    def from_msg(cls, msg: Any) -> LinkInfo:
        """From a pyroute2 ``ifinfmsg``."""
        return cls(
            index=int(msg["index"]),
            name=str(msg.get_attr("IFLA_IFNAME") or ""),
            flags=int(msg["flags"]),
            mtu=int(msg.get_attr("IFLA_MTU") or 0),
        )


def _addr_fields(msg: Any) -> tuple[str, int, int, int, int] | None:
    """``(address, prefixlen, ifindex, flags, family)`` of a pyroute2 ``ifaddrmsg``.

    For IPv4 the local address is IFA_LOCAL (IFA_ADDRESS is the peer on point-to-point
    links); for IPv6 it is IFA_ADDRESS. The 32-bit IFA_FLAGS attribute supersedes the 8-bit
    header field.
    """
    family = int(msg["family"])
    if family == socket.AF_INET:
        address = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
    elif family == socket.AF_INET6:
        address = msg.get_attr("IFA_ADDRESS") or msg.get_attr("IFA_LOCAL")
    else:
        return None
    if not address:
        return None
    flags = msg.get_attr("IFA_FLAGS")
    if flags is None:
        flags = msg["flags"]
    return str(address), int(msg["prefixlen"]), int(msg["index"]), int(flags), family


def _address_usable(
    address: str,
    flags: int,
    link: LinkInfo | None,
    exclude: frozenset[str],
    link_local: bool,
    *,
    require_up: bool = True,
) -> bool:
    """The ICE host-candidate filter, shared by the lister and the monitor.

    The monitor passes ``require_up=False``: it reports link state on its own, and an address
    must not look removed merely because its interface went down for a moment.
    """
    if link is None or link.loopback or link.name in exclude:
        return False
    if require_up and not link.up:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if ip.is_loopback or ip.is_multicast or ip.is_unspecified:
        return False
    if ip.version == 6:
        if flags & (IFA_F_TENTATIVE | IFA_F_DEPRECATED | IFA_F_DADFAILED):
            return False
        if ip.is_link_local and not link_local:
            return False
    return True


def list_local_addresses(
    *,
    exclude: Iterable[str] = (),
    include_link_local: bool = False,
    families: Iterable[int] = (socket.AF_INET, socket.AF_INET6),
    netns: str | None = None,
) -> list[LocalAddress]:
    """Local addresses fit for ICE host candidates, sorted (IPv4 first, then by address).

    Skipped: loopback interfaces and addresses, interfaces that are down or without carrier,
    the interfaces named in ``exclude`` (our own TUN), IPv6 link-local addresses unless
    ``include_link_local``, and IPv6 addresses that are tentative, deprecated or failed DAD.
    """
    excluded = frozenset(exclude)
    wanted = frozenset(families)
    with _iproute(netns) as ipr:
        try:
            links = {info.index: info for info in map(LinkInfo.from_msg, ipr.get_links())}
            addr_msgs = list(ipr.get_addr())
        except NetlinkError as exc:
            raise _netlink_failure("list local addresses", exc) from None
    result: list[LocalAddress] = []
    for msg in addr_msgs:
        fields_ = _addr_fields(msg)
        if fields_ is None:
            continue
        address, prefixlen, index, flags, family = fields_
        if family not in wanted:
            continue
        link = links.get(index)
        if not _address_usable(address, flags, link, excluded, include_link_local):
            continue
        assert link is not None
        result.append(LocalAddress(address, prefixlen, link.name, index))
    result.sort(key=lambda a: (a.version, ipaddress.ip_address(a.address).packed, a.index))
    return result


# -- change monitor ----------------------------------------------------------------------------


@dataclass
class _MonitorState:
    """What the monitor knows, so it reports transitions rather than every notification."""

    links: dict[int, LinkInfo] = field(default_factory=dict)
    addresses: dict[tuple[int, str], int] = field(default_factory=dict)  # usable ones
    default_routes: set[tuple[Any, ...]] = field(default_factory=set)


def _open_in_netns(netns: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` on a short-lived thread that has entered namespace ``netns``.

    Sockets and TUN descriptors belong to the namespace they were created in, for good; the
    thread dies afterwards, so no thread is left behind in another namespace.
    """
    path = os.path.join(_NETNS_DIR, netns)
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            error.append(RuntimeFailure(f"network namespace {netns!r}: {exc.strerror}"))
            return
        try:
            _setns(fd)
            result.append(fn())
        except BaseException as exc:
            error.append(exc)
        finally:
            os.close(fd)

    thread = threading.Thread(target=target, name=f"netns-{netns}", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def _setns(fd: int) -> None:
    setns = getattr(os, "setns", None)  # Python 3.12+
    if setns is not None:
        setns(fd, os.CLONE_NEWNET)  # type: ignore[attr-defined,unused-ignore]
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def in_netns(netns: str | None, fn: Callable[[], T]) -> T:
    """Call ``fn`` inside network namespace ``netns`` (directly when None).

    Use it to create descriptors that must live in a namespace — a TUN device, a socket —
    from a process running outside it: ``in_netns("ns1", lambda: TunDevice.open("p2p0"))``.
    Blocking and meant for setup time (labs and tests).
    """
    if netns is None:
        return fn()
    return _open_in_netns(netns, fn)


class NetworkMonitor:
    """Debounced network-change events from an RTNL multicast socket, as an async iterator.

    ::

        async with NetworkMonitor(exclude=["p2p0"]) as monitor:
            async for changes in monitor:
                ...  # a non-empty list[NetworkChange]: regather, restart ICE

    After the first relevant notification the monitor keeps collecting until ``debounce``
    seconds pass without another one (or ``max_delay`` after the first), then yields them
    together — a DHCP renewal or an interface coming up produces a burst, which should cause
    one ICE restart, not ten.

    Reported: usable addresses (by the rules of :func:`list_local_addresses`) appearing or
    disappearing, the set of default routes changing, interfaces going up or down. Ignored:
    the ``exclude`` interfaces (our TUN: adding peer routes to it must not restart ICE) and
    repeated notifications that change nothing (address lifetime refreshes, for instance).
    The current state is read at start, so the first events are real changes.
    """

    def __init__(
        self,
        *,
        exclude: Iterable[str] = (),
        include_link_local: bool = False,
        debounce: float = 0.5,
        max_delay: float = 3.0,
        netns: str | None = None,
        rcvbuf: int = 1024 * 1024,
    ) -> None:
        self.exclude = frozenset(exclude)
        self.include_link_local = include_link_local
        self.debounce = debounce
        self.max_delay = max_delay
        self.netns = netns
        self._rcvbuf = rcvbuf
        self._sock: socket.socket | None = None
        self._marshal = MarshalRtnl()
        self._state = _MonitorState()
        self._pending: list[NetworkChange] = []
        self._seq = 0
        self._portid = 0
        self._dump_seq: int | None = None
        self._dump_done = False
        self._buf = bytearray(256 * 1024)
        self.malformed = 0
        """Notifications that could not be parsed (dropped)."""

    # -- lifetime ------------------------------------------------------------------------

    def _make_socket(self) -> socket.socket:
        sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE
        )
        try:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._rcvbuf)
            sock.bind((0, MONITOR_GROUPS))
        except BaseException:
            sock.close()
            raise
        return sock

    async def open(self) -> None:
        """Subscribe and read the current state. Called by ``async with``."""
        if self._sock is not None:
            return
        try:
            if self.netns is None:
                sock = self._make_socket()
            else:
                sock = await trio.to_thread.run_sync(in_netns, self.netns, self._make_socket)
        except OSError as exc:
            raise RuntimeFailure(f"cannot open a netlink monitor socket: {exc.strerror}") from None
        sock.setblocking(False)
        self._sock = sock
        self._portid = int(sock.getsockname()[0])
        try:
            for msg_type in (RTM_GETLINK, RTM_GETADDR, RTM_GETROUTE):
                await self._dump(msg_type)
        except BaseException:
            self.close()
            raise
        self._pending.clear()  # changes seen while reading the initial state are stale
        log.debug(
            "network monitor started",
            links=len(self._state.links),
            addresses=len(self._state.addresses),
            default_routes=len(self._state.default_routes),
        )

    def close(self) -> None:
        """Close the socket. Idempotent."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        with contextlib.suppress(RuntimeError):
            trio.lowlevel.notify_closing(sock)
        sock.close()

    async def __aenter__(self) -> NetworkMonitor:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def fileno(self) -> int:
        """The netlink socket's descriptor (``-1`` when not open)."""
        return self._sock.fileno() if self._sock is not None else -1

    # -- the initial dump --------------------------------------------------------------------

    async def _dump(self, msg_type: int) -> None:
        assert self._sock is not None
        self._seq += 1
        self._dump_seq = self._seq
        self._dump_done = False
        if msg_type == RTM_GETLINK:
            body = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, 0, 0, 0)  # ifinfomsg
        elif msg_type == RTM_GETADDR:
            body = struct.pack("=BBBBi", socket.AF_UNSPEC, 0, 0, 0, 0)  # ifaddrmsg
        else:
            body = struct.pack("=BBBBBBBBI", socket.AF_UNSPEC, 0, 0, 0, 0, 0, 0, 0, 0)  # rtmsg
        header = _NLMSGHDR.pack(
            _NLMSGHDR.size + len(body), msg_type, NLM_F_REQUEST | NLM_F_DUMP, self._seq, 0
        )
        self._sock.send(header + body)
        with trio.fail_after(10):
            while not self._dump_done:
                await trio.lowlevel.wait_readable(self._sock)
                self._drain()
        self._dump_seq = None

    # -- reading -----------------------------------------------------------------------------

    def _drain(self) -> None:
        """Read every queued datagram and fold it into the state."""
        assert self._sock is not None
        while True:
            try:
                n = self._sock.recv_into(self._buf)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    # Notifications were lost. Report it; the state will catch up from the
                    # next notifications (a full re-dump would race with new ones).
                    log.warning("network monitor overflow: events lost")
                    self._pending.append(NetworkChange(ChangeKind.RESYNC))
                    continue
                raise RuntimeFailure(
                    f"network monitor: netlink read failed: {exc.strerror}"
                ) from None
            if n == 0:
                continue
            try:
                messages = list(self._marshal.parse(bytes(self._buf[:n])))
            except Exception:
                self.malformed += 1
                continue
            for msg in messages:
                try:
                    self._handle(msg)
                except (KeyError, ValueError, TypeError, struct.error):
                    self.malformed += 1

    def _handle(self, msg: Any) -> None:
        header = msg["header"]
        msg_type = int(header["type"])
        is_dump_reply = (
            self._dump_seq is not None
            and int(header["sequence_number"]) == self._dump_seq
            and int(header["pid"]) == self._portid
        )
        if is_dump_reply and msg_type in (NLMSG_DONE, NLMSG_ERROR):
            self._dump_done = True
            return
        if msg_type in (RTM_NEWLINK, RTM_DELLINK):
            self._on_link(msg, msg_type == RTM_DELLINK)
        elif msg_type in (RTM_NEWADDR, RTM_DELADDR):
            self._on_addr(msg, msg_type == RTM_DELADDR)
        elif msg_type in (RTM_NEWROUTE, RTM_DELROUTE):
            self._on_route(msg, msg_type == RTM_DELROUTE)

    def _emit(self, change: NetworkChange) -> None:
        self._pending.append(change)

    def _on_link(self, msg: Any, deleted: bool) -> None:
        info = LinkInfo.from_msg(msg)
        before = self._state.links.get(info.index)
        if deleted:
            self._state.links.pop(info.index, None)
            for key in [k for k in self._state.addresses if k[0] == info.index]:
                del self._state.addresses[key]
        else:
            if not info.name and before is not None:
                info = LinkInfo(info.index, before.name, info.flags, info.mtu or before.mtu)
            self._state.links[info.index] = info
        name = info.name or (before.name if before else "")
        was_up = before is not None and before.up
        is_up = not deleted and info.up
        if not deleted and (info.loopback or name in self.exclude):
            return
        if before is not None and (before.loopback or before.name in self.exclude):
            return
        if was_up and not is_up:
            self._emit(NetworkChange(ChangeKind.LINK_DOWN, name))
        elif is_up and not was_up:
            self._emit(NetworkChange(ChangeKind.LINK_UP, name))

    def _on_addr(self, msg: Any, deleted: bool) -> None:
        fields_ = _addr_fields(msg)
        if fields_ is None:
            return
        address, _prefixlen, index, flags, _family = fields_
        key = (index, address)
        link = self._state.links.get(index)
        usable = not deleted and _address_usable(
            address, flags, link, self.exclude, self.include_link_local, require_up=False
        )
        known = key in self._state.addresses
        name = link.name if link is not None else None
        if usable and not known:
            self._state.addresses[key] = flags
            self._emit(NetworkChange(ChangeKind.ADDRESS_ADDED, name, address))
        elif known and not usable:
            del self._state.addresses[key]
            self._emit(NetworkChange(ChangeKind.ADDRESS_REMOVED, name, address))

    def _on_route(self, msg: Any, deleted: bool) -> None:
        if int(msg["dst_len"]) != 0 or int(msg["type"]) != RTN_UNICAST:
            return
        table = msg.get_attr("RTA_TABLE") or msg["table"]
        if table != RT_TABLE_MAIN:
            return
        oif = msg.get_attr("RTA_OIF")
        link = self._state.links.get(int(oif)) if oif is not None else None
        if link is not None and link.name in self.exclude:
            return
        key = (
            int(msg["family"]),
            msg.get_attr("RTA_GATEWAY"),
            oif,
            msg.get_attr("RTA_PRIORITY"),
        )
        routes = self._state.default_routes
        if deleted and key in routes:
            routes.discard(key)
        elif not deleted and key not in routes:
            routes.add(key)
        else:
            return
        self._emit(NetworkChange(ChangeKind.DEFAULT_ROUTE, link.name if link else None))

    # -- the iterator --------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[list[NetworkChange]]:
        return self._changes()

    async def _changes(self) -> AsyncIterator[list[NetworkChange]]:
        while True:
            yield await self.next_changes()

    async def next_changes(self) -> list[NetworkChange]:
        """Wait for the next debounced, non-empty list of changes."""
        if self._sock is None:
            raise trio.ClosedResourceError("network monitor is not open")
        sock = self._sock
        while not self._pending:
            await trio.lowlevel.wait_readable(sock)
            self._drain()
        deadline = trio.current_time() + self.max_delay
        while True:
            quiet_until = min(trio.current_time() + self.debounce, deadline)
            count = len(self._pending)
            with trio.move_on_at(quiet_until):
                while len(self._pending) == count:
                    await trio.lowlevel.wait_readable(sock)
                    self._drain()
            if len(self._pending) == count or trio.current_time() >= deadline:
                break
        changes, self._pending = self._pending, []
        log.info("network changed", changes=",".join(c.kind.value for c in changes))
        return changes


def rule_priorities(netns: str | None = None) -> list[tuple[int, int]]:
    """``(IP version, priority)`` of every policy routing rule (blocking): how the node tells,
    without running a program, which of its rules exist (also those a crashed run left)."""
    found: list[tuple[int, int]] = []
    with _iproute(netns) as ipr:
        for version, family in ((4, socket.AF_INET), (6, socket.AF_INET6)):
            try:
                rules = ipr.get_rules(family=family)
            except Exception as exc:  # pyroute2 raises NetlinkError and OSError alike
                raise _netlink_failure("list the routing rules", exc) from None
            for rule in rules:
                priority = rule.get_attr("FRA_PRIORITY")
                if isinstance(priority, int):
                    found.append((version, priority))
    return found

"""The UDP endpoint: one non-blocking socket, drained in batches (a
:class:`~p2ptun.net.ports.DatagramPort`).

docs/ARCHITECTURE.md §2: a single UDP socket per address family carries ICE checks, TURN
client traffic and WireGuard messages. :class:`UdpEndpoint` receives in batches — wake once,
drain until ``EAGAIN`` into preallocated buffers — and hands every datagram to the one
:class:`~p2ptun.net.ports.DatagramReceiver` its owner runs it with (the node's
:class:`~p2ptun.net.dispatch.Dispatcher`, the TURN server's relay shell), then tells the
receiver the batch is over. No trio channel sits between the socket and the protocols.

With UDP GRO (probed in the constructor) one receive may hold several datagrams of a flow;
they are split at the size the kernel reports and handed over one by one.
:meth:`UdpEndpoint.send_batch` sends runs of equal-size datagrams to one address with one
``UDP_SEGMENT`` ``sendmsg`` (GSO), falling back to one ``sendmsg`` each.

Multi-homed hosts: the sockets are bound to the wildcard address, so the endpoint asks the
kernel for each datagram's local address (``IP_PKTINFO``, ``IPV6_RECVPKTINFO``) and hands it to
the receiver as ``local`` — the address the datagram came to, the one an answer must leave from
(RFC 8445 §7.2.5.2.1: a response from another address fails the peer's symmetric check; a STUN
or TURN client drops it). Every send may name its ``source``: the ``sendmsg`` then carries an
``IP_PKTINFO`` (``ipi_spec_dst``) or ``IPV6_PKTINFO`` message, and the kernel routes the datagram
as coming from that address (source policy routing, ``ip rule from ...``, sees it), out of the
interface that address last received a datagram on (``ipi_ifindex``, as wireguard-go's sticky
sockets do): a source whose link went down is refused rather than sent out of another uplink,
where its NAT would map it anew. A source the kernel refuses (``ENETUNREACH``, ``EINVAL``: the
address or its link is gone) is dropped and the datagram sent once more without it, counted in
``tx_source_fallbacks`` — WireGuard's rule: never lose the datagram for its source. WireGuard
(the kernel module, wireguard-go) and coturn (one socket per listening address) answer from the
address a request came to the same way. ``P2PTUN_PKTINFO=off`` in the environment turns this
off (:attr:`UdpEndpoint.pktinfo` False: ``local`` is None, ``source`` ignored), as on a kernel
without it; tests use it to show what it is for.

The data a receiver gets is a :class:`memoryview` into a receive buffer that stays valid until
its ``drained`` returns (the end of the current batch); a receiver that keeps data longer must
copy it. Endpoints whose receivers all finish their batch before yielding may share one set of
buffers (:func:`receive_buffers`), as the TURN server's many relay sockets do.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import socket
import struct
from collections.abc import Iterable, Sequence
from types import TracebackType

import trio

from p2ptun.addr import Address, is_ipv6
from p2ptun.errors import RuntimeFailure
from p2ptun.log import get_logger
from p2ptun.net.offload import (
    MAX_GSO_BYTES,
    SOL_UDP,
    UDP_GRO,
    UDP_MAX_SEGMENTS,
    UDP_SEGMENT,
    offload_wanted,
)
from p2ptun.net.ports import DatagramReceiver, UdpCounters

log = get_logger("net.udp")

DEFAULT_BUFFER_SIZE = 4 * 1024 * 1024
"""Requested SO_RCVBUF / SO_SNDBUF (LAB-NOTES: 4 MiB is worth ~20 % throughput)."""

MAX_DATAGRAM = 65535
DEFAULT_BATCH = 64

# Receive errors that concern one earlier datagram (ICMP reports), not the socket.
_TRANSIENT_RECV_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.EHOSTDOWN,
        errno.ENETDOWN,
        errno.EMSGSIZE,
        errno.ENOBUFS,
        errno.ENOMEM,
    }
)
# Send errors that lose one datagram; the caller (ICE, WireGuard timers) retries on its own.
_SEND_DROP_ERRNOS = frozenset(
    {
        errno.EAGAIN,
        errno.ENOBUFS,
        errno.ENOMEM,
        errno.ENETUNREACH,
        errno.EHOSTUNREACH,
        errno.ENETDOWN,
        errno.EHOSTDOWN,
        errno.ECONNREFUSED,
        errno.EPERM,
        errno.EACCES,
        errno.EINVAL,
        errno.EADDRNOTAVAIL,
        errno.EAFNOSUPPORT,
        errno.EMSGSIZE,
    }
)


def _set_buffer(sock: socket.socket, force_opt: int, opt: int, size: int) -> int:
    """Ask for a ``size``-byte socket buffer, as much as allowed; returns what the kernel set.

    ``SO_*BUFFORCE`` (needs CAP_NET_ADMIN) may exceed ``net.core.[rw]mem_max``; without the
    capability the plain option is capped at that maximum. Either way we carry on.
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, force_opt, size)
    except OSError:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, opt, size)
    # Linux reports twice the requested value (it accounts for bookkeeping overhead).
    return sock.getsockopt(socket.SOL_SOCKET, opt)


_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)


def set_buffers(sock: socket.socket, size: int = DEFAULT_BUFFER_SIZE) -> tuple[int, int]:
    """Raise both socket buffers of ``sock`` towards ``size``; returns (rcvbuf, sndbuf)."""
    return (
        _set_buffer(sock, _SO_RCVBUFFORCE, socket.SO_RCVBUF, size),
        _set_buffer(sock, _SO_SNDBUFFORCE, socket.SO_SNDBUF, size),
    )


_GSO_SIZE = struct.Struct("=H")
_GRO_SIZE = struct.Struct("=i")

# <linux/in.h>, <linux/in6.h>: the ancillary data that names a datagram's local address.
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
_IN_PKTINFO = struct.Struct("=i4s4s")
"""``struct in_pktinfo``: ``ipi_ifindex``, ``ipi_spec_dst`` (the local address the datagram
came to, for unicast the header's destination; what an answer leaves from), ``ipi_addr``."""
_IN6_PKTINFO = struct.Struct("=16sI")
"""``struct in6_pktinfo``: ``ipi6_addr`` (the destination), ``ipi6_ifindex``."""
_RECV_CMSG_SPACE = socket.CMSG_SPACE(_GRO_SIZE.size) + socket.CMSG_SPACE(_IN6_PKTINFO.size)
"""Ancillary space of one receive: the GRO segment size and the (larger, IPv6) pktinfo."""
MAX_SOURCES = 256
"""Source control messages kept built (source address -> cmsg) per endpoint."""
_SOURCE_ERRNOS = frozenset({errno.EINVAL, errno.EADDRNOTAVAIL, errno.ENETUNREACH})
"""What the kernel answers a send whose source address is not (or no longer) ours (IPv4 says
``ENETUNREACH``, IPv6 ``EINVAL``); the same send without the source tells whether it was that."""


def probe_gso(sock: socket.socket) -> bool:
    """True if the kernel knows ``UDP_SEGMENT`` on ``sock`` (and the environment allows it)."""
    if not offload_wanted("udp"):
        return False
    try:
        sock.getsockopt(SOL_UDP, UDP_SEGMENT)
    except OSError:
        return False
    return True


def enable_gro(sock: socket.socket) -> bool:
    """Turn on ``UDP_GRO`` on ``sock``; False if the kernel (or the environment) says no."""
    if not offload_wanted("udp"):
        return False
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True


def pktinfo_wanted() -> bool:
    """Whether the environment allows local addresses per datagram (``P2PTUN_PKTINFO``: unset,
    ``auto`` or ``on``: yes; ``off``: no)."""
    raw = os.environ.get("P2PTUN_PKTINFO", "auto").strip().lower()
    return raw not in ("off", "0", "no", "none")


def enable_pktinfo(sock: socket.socket) -> bool:
    """Ask the kernel for each datagram's local address on ``sock`` (``IP_PKTINFO`` or
    ``IPV6_RECVPKTINFO``); False if it (or the environment) says no."""
    if not pktinfo_wanted():
        return False
    try:
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    except OSError:
        return False
    return True


def source_cmsg(family: int, source: str, ifindex: int = 0) -> tuple[int, int, bytes] | None:
    """The control message that makes a ``sendmsg`` leave from ``source`` (an IP literal of
    ``family``; an IPv6 scope is dropped) through interface ``ifindex`` (0: where the routes
    say), or None if ``source`` is no such literal."""
    try:
        if family == socket.AF_INET6:
            packed = socket.inet_pton(socket.AF_INET6, source.split("%", 1)[0])
            if not any(packed):
                return None
            return socket.IPPROTO_IPV6, IPV6_PKTINFO, _IN6_PKTINFO.pack(packed, ifindex)
        packed = socket.inet_pton(socket.AF_INET, source)
    except (OSError, ValueError):
        return None
    if not any(packed):
        return None
    return socket.IPPROTO_IP, IP_PKTINFO, _IN_PKTINFO.pack(ifindex, packed, bytes(4))


def _pktinfo_address(data: bytes, ipv6: bool) -> tuple[str | None, int]:
    """The local address in a received pktinfo message (None if it is too short) and the
    index of the interface the datagram came in on."""
    if ipv6:
        if len(data) < _IN6_PKTINFO.size:
            return None, 0
        packed, ifindex = _IN6_PKTINFO.unpack_from(data)
        return socket.inet_ntop(socket.AF_INET6, packed), ifindex
    if len(data) < _IN_PKTINFO.size:
        return None, 0
    ifindex, spec_dst, _addr = _IN_PKTINFO.unpack_from(data)
    return socket.inet_ntop(socket.AF_INET, spec_dst), ifindex


def _lazy_buffer(size: int) -> memoryview:
    """A zeroed, writable buffer whose pages only become resident once written to."""
    return memoryview(mmap.mmap(-1, size))


def receive_buffers(count: int = DEFAULT_BATCH, size: int = MAX_DATAGRAM) -> list[memoryview]:
    """``count`` receive buffers of ``size`` bytes, resident only once written to. Endpoints
    may share one set when each batch is handled completely before its receiver yields."""
    return [_lazy_buffer(size) for _ in range(count)]


class UdpEndpoint:
    """One non-blocking UDP socket (a :class:`~p2ptun.net.ports.DatagramPort`).

    Create with :meth:`bind`; run :meth:`receive_loop` with the one receiver that owns its
    dispatch, in a nursery. Send with :meth:`send` and the batch sends.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        batch: int = DEFAULT_BATCH,
        max_datagram: int = MAX_DATAGRAM,
        buffers: Sequence[memoryview] | None = None,
    ) -> None:
        """Wrap a bound UDP socket (made non-blocking); most callers want :meth:`bind`.

        ``batch`` buffers of ``max_datagram`` bytes are allocated once, unless ``buffers``
        (shared with other endpoints, :func:`receive_buffers`) are given.
        """
        if buffers is None:
            if batch < 1:
                raise ValueError("batch must be at least 1")
            buffers = receive_buffers(batch, max_datagram)
        elif not buffers:
            raise ValueError("an endpoint needs at least one receive buffer")
        sock.setblocking(False)
        self._sock = sock
        self.family = socket.AddressFamily(sock.family)
        self.counters = UdpCounters()
        self._views = list(buffers)
        self.gso = probe_gso(sock)
        """Whether :meth:`send_batch` may glue datagrams into one ``UDP_SEGMENT`` send."""
        self.gro = enable_gro(sock)
        """Whether one receive may return several datagrams (``UDP_GRO``)."""
        self.pktinfo = enable_pktinfo(sock)
        """Whether each datagram's local address is known and sends may name their source
        (module docstring)."""
        self._pktinfo_level = (
            socket.IPPROTO_IPV6 if self.family == socket.AF_INET6 else socket.IPPROTO_IP
        )
        self._pktinfo_type = IPV6_PKTINFO if self.family == socket.AF_INET6 else IP_PKTINFO
        # The latest pktinfo received and its address as text: the datagrams of a batch
        # mostly come to one address, so each is converted once.
        self._last_pktinfo = b""
        self._last_local: str | None = None
        self._sources: dict[str, tuple[int, int, bytes] | None] = {}
        #: The interface each local address last received a datagram on: sends from the
        #: address go out through it (module docstring).
        self._interfaces: dict[str, int] = {}
        self.rcvbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        self.sndbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)

    @classmethod
    def bind(
        cls,
        family: socket.AddressFamily = socket.AF_INET,
        host: str | None = None,
        port: int = 0,
        *,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        batch: int = DEFAULT_BATCH,
        max_datagram: int = MAX_DATAGRAM,
        buffers: Sequence[memoryview] | None = None,
    ) -> UdpEndpoint:
        """Open and bind a UDP socket of ``family`` on ``host`` (default: any) and ``port``.

        Port 0 lets the kernel choose. An IPv6 socket is IPv6-only (``IPV6_V6ONLY``), so the
        IPv4 endpoint is always a separate socket. Socket buffers are raised towards
        ``buffer_size``, as far as the system allows. Raises :class:`RuntimeFailure` if the
        address cannot be bound.
        """
        if family not in (socket.AF_INET, socket.AF_INET6):
            raise ValueError(f"unsupported address family {family!r}")
        if host is None:
            host = "0.0.0.0" if family == socket.AF_INET else "::"
        shown = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        try:
            sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        except OSError as exc:
            fam = "IPv6" if family == socket.AF_INET6 else "IPv4"
            raise RuntimeFailure(f"cannot open an {fam} UDP socket: {exc.strerror}") from None
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            set_buffers(sock, buffer_size)
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise RuntimeFailure(f"cannot bind UDP {shown}: address already in use") from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise RuntimeFailure(
                    f"cannot bind UDP {shown}: no such local address on this host"
                ) from None
            if exc.errno == errno.EACCES:
                raise RuntimeFailure(
                    f"cannot bind UDP {shown}: permission denied (privileged port?)"
                ) from None
            raise RuntimeFailure(f"cannot bind UDP {shown}: {exc.strerror}") from None
        endpoint = cls(sock, batch=batch, max_datagram=max_datagram, buffers=buffers)
        log.debug(
            "udp bound",
            address=shown,
            local_port=endpoint.local_address[1],
            rcvbuf=endpoint.rcvbuf,
            sndbuf=endpoint.sndbuf,
        )
        return endpoint

    # -- properties and lifetime -----------------------------------------------------------

    @property
    def local_address(self) -> Address:
        """The bound ``(host, port)``; host is the wildcard when bound to any address."""
        name = self._sock.getsockname()
        return str(name[0]), int(name[1])

    @property
    def socket(self) -> socket.socket:
        """The underlying socket (for socket options; do not read from it directly)."""
        return self._sock

    def fileno(self) -> int:
        """The socket's descriptor (``-1`` once closed)."""
        return self._sock.fileno()

    def close(self) -> None:
        """Close the socket; a :meth:`receive_loop` waiting on it returns. Idempotent."""
        if self._sock.fileno() < 0:
            return
        with contextlib.suppress(RuntimeError):  # outside trio nobody can be waiting
            trio.lowlevel.notify_closing(self._sock)
        self._sock.close()

    def __enter__(self) -> UdpEndpoint:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- receiving -------------------------------------------------------------------------

    async def receive_loop(self, receiver: DatagramReceiver) -> None:
        """Receive and hand datagrams to ``receiver`` until cancelled, or return when the
        endpoint is closed.

        Each wake-up drains the socket until ``EAGAIN``, one batch at a time; between full
        batches it checkpoints so other tasks get their turn under load.
        """
        batch = len(self._views)
        while True:
            try:
                await trio.lowlevel.wait_readable(self._sock)
            except trio.ClosedResourceError:
                return
            if self._sock.fileno() < 0:
                return
            while self.drain(receiver) == batch:
                await trio.lowlevel.checkpoint()

    def drain(self, receiver: DatagramReceiver) -> int:
        """Receive up to one batch without blocking, hand it to ``receiver``, end the batch.

        Returns the number of receive calls that returned (errors and drops included); less
        than the batch size means the socket is empty for now. With GRO one receive may
        return several datagrams, which are split at the size the kernel reports. Each
        datagram goes with its local address (``IP_PKTINFO``; None without it): the text is
        made only when the kernel's pktinfo differs from the previous datagram's.
        """
        counters = self.counters
        deliver = receiver.datagram
        recv = self._sock.recvmsg_into
        level = self._pktinfo_level
        kind_pktinfo = self._pktinfo_type
        ipv6 = level == socket.IPPROTO_IPV6
        last_raw = self._last_pktinfo
        last_local = self._last_local
        received = 0
        for view in self._views:
            try:
                n, ancdata, _flags, src = recv((view,), _RECV_CMSG_SPACE)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno not in _TRANSIENT_RECV_ERRNOS:
                    raise RuntimeFailure(f"UDP receive failed: {exc.strerror}") from None
                counters.rx_errors += 1
                received += 1
                continue
            segment = 0
            local = None
            for cmsg_level, kind, data in ancdata:
                if cmsg_level == level and kind == kind_pktinfo:
                    if data != last_raw:
                        last_raw = data
                        last_local = self._learn_interface(data, ipv6)
                    local = last_local
                elif cmsg_level == SOL_UDP and kind == UDP_GRO and len(data) >= _GRO_SIZE.size:
                    segment = _GRO_SIZE.unpack_from(data)[0]
            received += 1
            counters.rx_reads += 1
            counters.rx_bytes += n
            addr = (src[0], src[1])
            if segment <= 0 or segment >= n:
                deliver(view[:n], addr, local)
                continue
            for off in range(0, n - segment, segment):
                deliver(view[off : off + segment], addr, local)
            last = n - (n - 1) % segment - 1  # the last datagram may be shorter
            deliver(view[last:n], addr, local)
        self._last_pktinfo = last_raw
        self._last_local = last_local
        if received:
            receiver.drained()
        return received

    def _learn_interface(self, data: bytes, ipv6: bool) -> str | None:
        """A pktinfo unlike the previous datagram's: its local address, and the interface
        that address is reached on now (a source's control message follows it)."""
        local, ifindex = _pktinfo_address(data, ipv6)
        if local is not None and self._interfaces.get(local) != ifindex:
            interfaces = self._interfaces
            if len(interfaces) >= MAX_SOURCES:
                interfaces.clear()
            interfaces[local] = ifindex
            self._sources.pop(local, None)
        return local

    # -- sending ---------------------------------------------------------------------------

    def source_cmsg(self, source: str | None) -> tuple[int, int, bytes] | None:
        """The control message that sends from ``source`` (built once per address and
        interface), or None: no source, pktinfo off, or not an address of this family."""
        if source is None or not self.pktinfo:
            return None
        sources = self._sources
        try:
            return sources[source]
        except KeyError:
            pass
        cmsg = source_cmsg(self.family, source, self._interfaces.get(source, 0))
        if len(sources) >= MAX_SOURCES:
            sources.clear()
        sources[source] = cmsg
        return cmsg

    def send(
        self, data: bytes | bytearray | memoryview, addr: Address, source: str | None = None
    ) -> bool:
        """Send one datagram without blocking, from ``source`` if given (the module docstring
        says what happens to a source that is gone); False (and counted) if it was dropped.

        UDP may lose datagrams anyway, so a full buffer or an unreachable destination drops
        this one instead of stalling the data path. The protocols above retransmit.
        """
        counters = self.counters
        cmsg = self.source_cmsg(source)
        try:
            if cmsg is None:
                n = self._sock.sendto(data, addr)
            else:
                try:
                    n = self._sock.sendmsg((data,), (cmsg,), 0, addr)
                except OSError as exc:
                    if exc.errno not in _SOURCE_ERRNOS:
                        raise
                    n = self._sock.sendto(data, addr)
                    counters.tx_source_fallbacks += 1
        except OSError as exc:
            if exc.errno in _SEND_DROP_ERRNOS or isinstance(exc, socket.gaierror):
                counters.tx_dropped += 1
                return False
            raise RuntimeFailure(f"UDP send failed: {exc.strerror}") from None
        counters.tx_packets += 1
        counters.tx_bytes += n
        return True

    def send_batch(
        self,
        datagrams: Sequence[bytes | bytearray | memoryview],
        addr: Address,
        source: str | None = None,
    ) -> int:
        """Send ``datagrams`` (in order) to ``addr``, from ``source`` if given; returns how many
        were sent.

        With GSO, each run of equal-size datagrams goes out in one ``sendmsg``
        (:func:`send_datagrams`); without, one ``sendmsg`` each.
        """
        return send_datagrams(
            self._sock,
            datagrams,
            addr,
            self.counters,
            gso=self.gso,
            source=self.source_cmsg(source),
        )

    def send_batch_prefixed(
        self,
        prefixes: Sequence[bytes],
        datagrams: Sequence[bytes | bytearray | memoryview],
        addr: Address,
        source: str | None = None,
    ) -> int:
        """Send ``prefixes[i] + datagrams[i]`` for each ``i`` (in order) to ``addr`` without
        joining them (a TURN ChannelData header before a payload), from ``source`` if given:
        :func:`send_datagrams` with the parts as the iovec. Returns how many were sent."""
        return send_datagrams(
            self._sock,
            datagrams,
            addr,
            self.counters,
            gso=self.gso,
            prefixes=prefixes,
            source=self.source_cmsg(source),
        )


def send_datagrams(
    sock: socket.socket,
    datagrams: Sequence[bytes | bytearray | memoryview],
    addr: Address,
    counters: UdpCounters,
    *,
    gso: bool,
    prefixes: Sequence[bytes] | None = None,
    source: tuple[int, int, bytes] | None = None,
) -> int:
    """Send ``datagrams`` (in order) to ``addr`` from ``sock``; returns how many were sent.

    With ``prefixes``, datagram ``i`` is ``prefixes[i] + datagrams[i]``, sent without joining
    them (both go into the iovec). With ``gso``, each run of equal-size datagrams (the last of
    a run may be shorter) goes out in one ``sendmsg`` with ``UDP_SEGMENT``, its parts as the
    iovec (no copy). A kernel that refuses a GSO send (``EINVAL``/``EIO``: a datagram above
    the route's MTU, a device without checksum offload) gets that run one datagram at a time.
    ``source``: the control message of the source address (:func:`source_cmsg`); once the
    kernel refused it, the rest of the batch goes without. Drops are counted.
    """
    count = len(datagrams)
    if prefixes is None:
        sizes = [len(d) for d in datagrams]
    else:
        sizes = [len(p) + len(d) for p, d in zip(prefixes, datagrams, strict=True)]
    sent = 0
    i = 0
    while i < count:
        size = sizes[i]
        j = i + 1
        if gso:
            limit = min(UDP_MAX_SEGMENTS, max(1, MAX_GSO_BYTES // max(size, 1)))
            while j < count and j - i < limit:
                n = sizes[j]
                if n > size:
                    break
                j += 1
                if n < size:
                    break
        fallbacks = counters.tx_source_fallbacks
        parts = _iovec(datagrams, prefixes, i, j)
        done = _send_run(sock, parts, size, j - i, addr, counters, source)
        if done is None:  # the kernel refused GSO for this run: one datagram at a time
            for k in range(i, j):
                one = _iovec(datagrams, prefixes, k, k + 1)
                sent += _send_run(sock, one, sizes[k], 1, addr, counters, source) or 0
                if counters.tx_source_fallbacks != fallbacks:
                    source = None
        else:
            sent += done
        if counters.tx_source_fallbacks != fallbacks:
            source = None
        i = j
    return sent


def _iovec(
    datagrams: Sequence[bytes | bytearray | memoryview],
    prefixes: Sequence[bytes] | None,
    start: int,
    end: int,
) -> Sequence[bytes | bytearray | memoryview]:
    """The ``sendmsg`` parts of datagrams ``start`` to ``end`` (prefix, datagram, ...)."""
    if prefixes is None:
        return datagrams[start:end]
    parts: list[bytes | bytearray | memoryview] = []
    for k in range(start, end):
        parts.append(prefixes[k])
        parts.append(datagrams[k])
    return parts


def _send_run(
    sock: socket.socket,
    parts: Sequence[bytes | bytearray | memoryview],
    size: int,
    count: int,
    addr: Address,
    counters: UdpCounters,
    source: tuple[int, int, bytes] | None,
) -> int | None:
    """One ``sendmsg`` of ``count`` datagrams of ``size`` bytes (GSO when more than one), from
    ``source`` if given (refused: once more without it, counted); how many were sent, or None
    when the kernel refused the GSO send."""
    ancillary: tuple[tuple[int, int, bytes], ...] = (
        () if count == 1 else ((SOL_UDP, UDP_SEGMENT, _GSO_SIZE.pack(size)),)
    )
    try:
        if source is None:
            nbytes = sock.sendmsg(parts, ancillary, 0, addr)
        else:
            try:
                nbytes = sock.sendmsg(parts, (*ancillary, source), 0, addr)
            except OSError as exc:
                if exc.errno not in _SOURCE_ERRNOS:
                    raise
                # The source is gone (or the kernel refused GSO: then this fails the same way
                # and the caller sends one datagram at a time, with the source again).
                nbytes = sock.sendmsg(parts, ancillary, 0, addr)
                counters.tx_source_fallbacks += 1
    except OSError as exc:
        if count > 1 and exc.errno in (errno.EINVAL, errno.EIO, errno.EMSGSIZE):
            return None
        if exc.errno in _SEND_DROP_ERRNOS or isinstance(exc, socket.gaierror):
            counters.tx_dropped += count
            return 0
        raise RuntimeFailure(f"UDP send failed: {exc.strerror}") from None
    counters.tx_packets += count
    counters.tx_bytes += nbytes
    if count > 1:
        counters.tx_gso_sends += 1
    return count


def family_of(host: str) -> socket.AddressFamily:
    """The socket family of the IP literal ``host``."""
    return socket.AF_INET6 if is_ipv6(host) else socket.AF_INET


def family_supported(family: socket.AddressFamily) -> bool:
    """True if this host can open and bind a UDP socket of ``family`` (IPv6 may be disabled)."""
    try:
        with socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as probe:
            probe.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
    except OSError:
        return False
    return True


def open_endpoints(
    port: int = 0,
    *,
    families: Iterable[socket.AddressFamily] = (socket.AF_INET, socket.AF_INET6),
    buffer_size: int = DEFAULT_BUFFER_SIZE,
    batch: int = DEFAULT_BATCH,
) -> list[UdpEndpoint]:
    """Bind one endpoint per supported address family on the wildcard address.

    With ``port=0`` the later sockets first try the port the kernel picked for the first, so a
    node uses one port number on both families when it can. A family the host does not
    support (IPv6 disabled) is skipped. Raises :class:`RuntimeFailure` (closing whatever was
    opened) if a supported family cannot be bound, or no family is supported at all.
    """
    endpoints: list[UdpEndpoint] = []
    try:
        for family in families:
            if not family_supported(family):
                log.info("udp family unavailable", family=family.name)
                continue
            if port == 0 and endpoints:
                try:
                    ep = UdpEndpoint.bind(
                        family,
                        port=endpoints[0].local_address[1],
                        buffer_size=buffer_size,
                        batch=batch,
                    )
                except RuntimeFailure:
                    ep = UdpEndpoint.bind(family, port=0, buffer_size=buffer_size, batch=batch)
            else:
                ep = UdpEndpoint.bind(family, port=port, buffer_size=buffer_size, batch=batch)
            endpoints.append(ep)
    except BaseException:
        for opened in endpoints:
            opened.close()
        raise
    if not endpoints:
        raise RuntimeFailure("cannot open a UDP socket: neither IPv4 nor IPv6 is available")
    return endpoints

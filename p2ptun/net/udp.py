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
``UDP_SEGMENT`` ``sendmsg`` (GSO), falling back to one ``sendto`` each.

The data a receiver gets is a :class:`memoryview` into a receive buffer that stays valid until
its ``drained`` returns (the end of the current batch); a receiver that keeps data longer must
copy it. Endpoints whose receivers all finish their batch before yielding may share one set of
buffers (:func:`receive_buffers`), as the TURN server's many relay sockets do.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
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
_GRO_CMSG_SPACE = socket.CMSG_SPACE(_GRO_SIZE.size)


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
        return several datagrams, which are split at the size the kernel reports.
        """
        counters = self.counters
        deliver = receiver.datagram
        gro = self.gro
        recv = self._sock.recvmsg_into if gro else None
        recvfrom = self._sock.recvfrom_into
        received = 0
        for view in self._views:
            try:
                if recv is None:
                    n, src = recvfrom(view)
                    segment = 0
                else:
                    n, ancdata, _flags, src = recv((view,), _GRO_CMSG_SPACE)
                    segment = 0
                    for level, kind, data in ancdata:
                        if level == SOL_UDP and kind == UDP_GRO and len(data) >= _GRO_SIZE.size:
                            segment = _GRO_SIZE.unpack_from(data)[0]
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno not in _TRANSIENT_RECV_ERRNOS:
                    raise RuntimeFailure(f"UDP receive failed: {exc.strerror}") from None
                counters.rx_errors += 1
                received += 1
                continue
            received += 1
            counters.rx_reads += 1
            counters.rx_bytes += n
            addr = (src[0], src[1])
            if segment <= 0 or segment >= n:
                deliver(view[:n], addr)
                continue
            for off in range(0, n - segment, segment):
                deliver(view[off : off + segment], addr)
            last = n - (n - 1) % segment - 1  # the last datagram may be shorter
            deliver(view[last:n], addr)
        if received:
            receiver.drained()
        return received

    # -- sending ---------------------------------------------------------------------------

    def send(self, data: bytes | bytearray | memoryview, addr: Address) -> bool:
        """Send one datagram without blocking; False (and counted) if it was dropped.

        UDP may lose datagrams anyway, so a full buffer or an unreachable destination drops
        this one instead of stalling the data path. The protocols above retransmit.
        """
        try:
            n = self._sock.sendto(data, addr)
        except OSError as exc:
            if exc.errno in _SEND_DROP_ERRNOS or isinstance(exc, socket.gaierror):
                self.counters.tx_dropped += 1
                return False
            raise RuntimeFailure(f"UDP send failed: {exc.strerror}") from None
        self.counters.tx_packets += 1
        self.counters.tx_bytes += n
        return True

    def send_batch(self, datagrams: Sequence[bytes | bytearray | memoryview], addr: Address) -> int:
        """Send ``datagrams`` (in order) to ``addr``; returns how many were sent.

        With GSO, each run of equal-size datagrams goes out in one ``sendmsg``
        (:func:`send_datagrams`); without, one ``sendmsg`` each.
        """
        return send_datagrams(self._sock, datagrams, addr, self.counters, gso=self.gso)

    def send_batch_prefixed(
        self,
        prefixes: Sequence[bytes],
        datagrams: Sequence[bytes | bytearray | memoryview],
        addr: Address,
    ) -> int:
        """Send ``prefixes[i] + datagrams[i]`` for each ``i`` (in order) to ``addr`` without
        joining them (a TURN ChannelData header before a payload): :func:`send_datagrams`
        with the parts as the iovec. Returns how many were sent."""
        return send_datagrams(
            self._sock, datagrams, addr, self.counters, gso=self.gso, prefixes=prefixes
        )


def send_datagrams(
    sock: socket.socket,
    datagrams: Sequence[bytes | bytearray | memoryview],
    addr: Address,
    counters: UdpCounters,
    *,
    gso: bool,
    prefixes: Sequence[bytes] | None = None,
) -> int:
    """Send ``datagrams`` (in order) to ``addr`` from ``sock``; returns how many were sent.

    With ``prefixes``, datagram ``i`` is ``prefixes[i] + datagrams[i]``, sent without joining
    them (both go into the iovec). With ``gso``, each run of equal-size datagrams (the last of
    a run may be shorter) goes out in one ``sendmsg`` with ``UDP_SEGMENT``, its parts as the
    iovec (no copy). A kernel that refuses a GSO send (``EINVAL``/``EIO``: a datagram above
    the route's MTU, a device without checksum offload) gets that run one datagram at a time.
    Drops are counted.
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
        done = _send_run(sock, _iovec(datagrams, prefixes, i, j), size, j - i, addr, counters)
        if done is None:  # the kernel refused GSO for this run: one datagram at a time
            for k in range(i, j):
                one = _iovec(datagrams, prefixes, k, k + 1)
                sent += _send_run(sock, one, sizes[k], 1, addr, counters) or 0
        else:
            sent += done
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
) -> int | None:
    """One ``sendmsg`` of ``count`` datagrams of ``size`` bytes (GSO when more than one);
    how many were sent, or None when the kernel refused the GSO send."""
    try:
        if count == 1:
            nbytes = sock.sendmsg(parts, (), 0, addr)
        else:
            nbytes = sock.sendmsg(parts, [(SOL_UDP, UDP_SEGMENT, _GSO_SIZE.pack(size))], 0, addr)
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

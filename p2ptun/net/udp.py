"""The UDP endpoint: one socket per address family, demultiplexed by first bytes.

ARCHITECTURE.md §2: a single UDP socket per family carries ICE connectivity checks (STUN),
TURN client traffic (STUN-framed TURN messages and ChannelData) and WireGuard messages.
:func:`classify` tells them apart from their first bytes; :class:`UdpEndpoint` receives in
batches — wake once, drain until ``EAGAIN`` into preallocated buffers — and calls the handler
registered for each kind directly, without a trio channel per packet. Datagrams of no known
kind are dropped and counted.

With UDP GRO (probed in the constructor) one receive may hold several datagrams of a flow;
they are split at the size the kernel reports and dispatched one by one.
:meth:`UdpEndpoint.send_batch` sends runs of equal-size datagrams to one address with one
``UDP_SEGMENT`` ``sendmsg`` (GSO), falling back to one ``sendto`` each.

Handlers are plain callables ``handler(data, addr)``. ``data`` is a :class:`memoryview` into a
receive buffer that stays valid until the endpoint's ``on_drained`` callback returns (the end
of the current batch); a handler that keeps data longer must copy it. A handler may raise
:class:`p2ptun.errors.DecodeError` for a malformed datagram: it is counted and dropped.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import mmap
import socket
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from types import TracebackType

import trio

from p2ptun.addr import Address
from p2ptun.errors import DecodeError, RuntimeFailure
from p2ptun.log import get_logger
from p2ptun.net.offload import (
    MAX_GSO_BYTES,
    SOL_UDP,
    UDP_GRO,
    UDP_MAX_SEGMENTS,
    UDP_SEGMENT,
    offload_wanted,
)

log = get_logger("net.udp")

STUN_MAGIC_COOKIE = b"\x21\x12\xa4\x42"
"""RFC 8489 §5: bytes 4–8 of every STUN message."""

STUN_HEADER_LEN = 20
CHANNEL_DATA_HEADER_LEN = 4
WIREGUARD_MIN_LEN = 4

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


class PacketKind(enum.IntEnum):
    """What a datagram on the shared socket is (ARCHITECTURE.md §2)."""

    STUN = 0
    """STUN (RFC 8489): ICE checks, Binding requests to STUN servers, TURN control messages."""
    CHANNEL_DATA = 1
    """TURN ChannelData (RFC 8656 §12.4): relayed data on a bound channel."""
    WIREGUARD = 2
    """A WireGuard message, types 1–4."""
    OTHER = 3
    """Anything else: dropped and counted."""


def classify(data: bytes | bytearray | memoryview) -> PacketKind:
    """Classify one datagram by its first bytes.

    - WireGuard transport data: first byte 4, bytes 1–3 zero. Tested first: it is the bulk of
      the traffic, and no STUN message starts with 4.
    - TURN ChannelData: first byte 0x40–0x4F and at least the 4-byte ChannelData header (the
      bulk of a relayed path; no STUN message starts so either).
    - STUN: first byte 0–3, bytes 4–8 the magic cookie 0x2112A442, and at least the 20-byte
      STUN header. Tested before the other WireGuard types: a type byte 1–3 can look like a
      STUN type, the cookie is the stronger signal.
    - WireGuard handshake: first byte 1–3 and bytes 1–3 zero.
    - OTHER: everything else, including the empty datagram.

    Only the kind is decided here; each protocol's decoder validates the rest.
    """
    n = len(data)
    if n < WIREGUARD_MIN_LEN:  # also the smallest length any kind needs
        return PacketKind.OTHER
    first = data[0]
    if first == 4:
        if data[1] or data[2] or data[3]:
            return PacketKind.OTHER
        return PacketKind.WIREGUARD
    if 0x40 <= first <= 0x4F:
        # n >= 4 == CHANNEL_DATA_HEADER_LEN holds here.
        return PacketKind.CHANNEL_DATA
    if first <= 3 and n >= STUN_HEADER_LEN and data[4:8] == STUN_MAGIC_COOKIE:
        return PacketKind.STUN
    if 1 <= first <= 3 and data[1] == 0 and data[2] == 0 and data[3] == 0:
        return PacketKind.WIREGUARD
    return PacketKind.OTHER


Handler = Callable[[memoryview, Address], None]
"""``handler(data, addr)``: one received datagram of one kind and its source address."""


@dataclass
class UdpCounters:
    """Datagram counters for one endpoint."""

    rx_stun: int = 0
    rx_channel_data: int = 0
    rx_wireguard: int = 0
    rx_other: int = 0
    """Datagrams of no known kind: dropped."""
    rx_unhandled: int = 0
    """Datagrams of a known kind (counted there too) with no handler installed: dropped."""
    rx_malformed: int = 0
    """Datagrams a handler rejected with DecodeError: dropped."""
    rx_bytes: int = 0
    rx_errors: int = 0
    """Receive errors caused by earlier sends (ICMP unreachable and the like)."""
    tx_packets: int = 0
    tx_bytes: int = 0
    tx_dropped: int = 0
    """Datagrams not sent: full socket buffer, no route, refused by a firewall, ..."""
    rx_reads: int = 0
    """Receive system calls that returned data (fewer than datagrams with GRO)."""
    tx_gso_sends: int = 0
    """``sendmsg`` calls that carried more than one datagram (UDP GSO)."""

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict (for ``p2ptun status --json``)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


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


class UdpEndpoint:
    """One non-blocking UDP socket, demultiplexed into per-kind handlers.

    Create with :meth:`bind`, register handlers (constructor arguments or
    :meth:`set_handler`), and run :meth:`receive_loop` in a nursery. Send with :meth:`send`.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        batch: int = DEFAULT_BATCH,
        max_datagram: int = MAX_DATAGRAM,
        on_stun: Handler | None = None,
        on_channel_data: Handler | None = None,
        on_wireguard: Handler | None = None,
        on_drained: Callable[[], None] | None = None,
    ) -> None:
        """Wrap a bound UDP socket (made non-blocking); most callers want :meth:`bind`.

        ``batch`` buffers of ``max_datagram`` bytes are allocated once. ``on_drained`` is
        called after each batch — the place to flush work the handlers queued.
        """
        if batch < 1:
            raise ValueError("batch must be at least 1")
        sock.setblocking(False)
        self._sock = sock
        self.family = socket.AddressFamily(sock.family)
        self.counters = UdpCounters()
        self._views = [_lazy_buffer(max_datagram) for _ in range(batch)]
        self.gso = probe_gso(sock)
        """Whether :meth:`send_batch` may glue datagrams into one ``UDP_SEGMENT`` send."""
        self.gro = enable_gro(sock)
        """Whether one receive may return several datagrams (``UDP_GRO``)."""
        self._handlers: list[Handler | None] = [on_stun, on_channel_data, on_wireguard, None]
        self.on_drained = on_drained
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
        on_stun: Handler | None = None,
        on_channel_data: Handler | None = None,
        on_wireguard: Handler | None = None,
        on_drained: Callable[[], None] | None = None,
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
        endpoint = cls(
            sock,
            batch=batch,
            max_datagram=max_datagram,
            on_stun=on_stun,
            on_channel_data=on_channel_data,
            on_wireguard=on_wireguard,
            on_drained=on_drained,
        )
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

    def set_handler(self, kind: PacketKind, handler: Handler | None) -> None:
        """Install (or, with None, remove) the handler for ``kind``; OTHER cannot have one."""
        if kind == PacketKind.OTHER:
            raise ValueError("datagrams of kind OTHER are always dropped")
        self._handlers[kind] = handler

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

    async def receive_loop(self) -> None:
        """Receive and dispatch until cancelled, or return when the endpoint is closed.

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
            while self.drain() == batch:
                await trio.lowlevel.checkpoint()

    def drain(self) -> int:
        """Receive up to one batch without blocking, dispatch it, call ``on_drained``.

        Returns the number of receive calls that returned (errors and drops included); less
        than the batch size means the socket is empty for now. With GRO one receive may
        return several datagrams, which are split at the size the kernel reports.
        """
        if self.gro:
            return self._drain_gro()
        recv = self._sock.recvfrom_into
        counters = self.counters
        received = 0
        for view in self._views:
            try:
                n, src = recv(view)
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
            self._dispatch(view[:n], (src[0], src[1]))
        if received and self.on_drained is not None:
            self.on_drained()
        return received

    def _drain_gro(self) -> int:
        recv = self._sock.recvmsg_into
        counters = self.counters
        dispatch = self._dispatch
        received = 0
        for view in self._views:
            try:
                n, ancdata, _flags, src = recv((view,), _GRO_CMSG_SPACE)
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
            addr = (src[0], src[1])
            segment = 0
            for level, kind, data in ancdata:
                if level == SOL_UDP and kind == UDP_GRO and len(data) >= _GRO_SIZE.size:
                    segment = _GRO_SIZE.unpack_from(data)[0]
            if segment <= 0 or segment >= n:
                dispatch(view[:n], addr)
                continue
            for off in range(0, n - segment, segment):
                dispatch(view[off : off + segment], addr)
            last = n - (n - 1) % segment - 1  # the last datagram may be shorter
            dispatch(view[last:n], addr)
        if received and self.on_drained is not None:
            self.on_drained()
        return received

    def _dispatch(self, data: memoryview, addr: Address) -> None:
        """Classify one datagram and hand it to its handler (or count the drop)."""
        counters = self.counters
        counters.rx_bytes += len(data)
        kind = classify(data)
        if kind is PacketKind.WIREGUARD:
            counters.rx_wireguard += 1
        elif kind is PacketKind.CHANNEL_DATA:
            counters.rx_channel_data += 1
        elif kind is PacketKind.STUN:
            counters.rx_stun += 1
        else:
            counters.rx_other += 1
            return
        handler = self._handlers[kind]
        if handler is None:
            counters.rx_unhandled += 1
            return
        try:
            handler(data, addr)
        except DecodeError:
            counters.rx_malformed += 1

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

    def send_many(self, datagrams: Iterable[tuple[bytes | bytearray | memoryview, Address]]) -> int:
        """Send each ``(data, addr)``; returns how many were sent."""
        sent = 0
        for data, addr in datagrams:
            sent += self.send(data, addr)
        return sent

    async def send_wait(self, data: bytes | bytearray | memoryview, addr: Address) -> bool:
        """Like :meth:`send`, but when the socket buffer is full wait (once) until it is not.

        For control traffic that should not be dropped lightly; the data path uses
        :meth:`send`.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            n = self._sock.sendto(data, addr)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(self._sock)
            return self.send(data, addr)
        except OSError:
            return self.send(data, addr)  # counts the drop or raises
        self.counters.tx_packets += 1
        self.counters.tx_bytes += n
        return True


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


def recv_segments(sock: socket.socket, view: memoryview, *, gro: bool) -> tuple[int, int, Address]:
    """One non-blocking receive into ``view``: ``(length, segment size, source)``.

    With ``gro`` the read may hold several datagrams of ``segment`` bytes each (the last may
    be shorter); ``segment`` is 0 for a single
    datagram. Raises ``BlockingIOError`` when nothing is waiting, ``OSError`` as recv does.
    """
    if not gro:
        n, src = sock.recvfrom_into(view)
        return n, 0, (str(src[0]), int(src[1]))
    n, ancdata, _flags, src = sock.recvmsg_into((view,), _GRO_CMSG_SPACE)
    segment = 0
    for level, kind, data in ancdata:
        if level == SOL_UDP and kind == UDP_GRO and len(data) >= _GRO_SIZE.size:
            segment = _GRO_SIZE.unpack_from(data)[0]
    return n, (segment if 0 < segment < n else 0), (str(src[0]), int(src[1]))


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

"""The TUN device: a non-blocking file descriptor that carries raw IP packets.

:meth:`TunDevice.open` attaches to (or creates) a Layer-3 TUN interface through
``/dev/net/tun`` with ``IFF_TUN | IFF_NO_PI``: every ``read`` returns exactly one IPv4 or IPv6
packet and every ``write`` injects one, with no packet-information prefix. With
``vnet_hdr=True`` each packet is preceded by a ``struct virtio_net_hdr`` (:data:`VNET_HDR_LEN`
bytes); :meth:`TunDevice.enable_offload` then lets the kernel hand over TCP super-packets
(TSO) and packets with partial checksums, and :meth:`TunDevice.writev` injects super-packets
in pieces (see :mod:`p2ptun.net.offload`).

The data path follows DEVELOPERS.md: wake once with :meth:`TunDevice.wait_readable`, then
drain with :meth:`TunDevice.read_batch` into preallocated buffers until the kernel says
``EAGAIN``. No method here allocates per packet.

Configuring the interface (addresses, MTU, up, routes) is :mod:`p2ptun.net.netlink`'s job.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
from collections.abc import Sequence
from types import TracebackType

import trio

from p2ptun.errors import RuntimeFailure
from p2ptun.log import get_logger
from p2ptun.net.offload import offload_wanted
from p2ptun.net.ports import TunCounters

log = get_logger("net.tun")

TUN_PATH = "/dev/net/tun"

# <linux/if_tun.h>
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000

# Offload flags for :meth:`TunDevice.set_offload`.
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_UFO = 0x10
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40

IFNAMSIZ = 16
"""Kernel buffer size for an interface name, including the terminating NUL."""

VNET_HDR_LEN = 10
"""Size of ``struct virtio_net_hdr`` prefixed to every packet when ``vnet_hdr=True``."""

MAX_PACKET = 65535
"""Largest IP packet a TUN read can return (without the virtio header)."""

_IFREQ = struct.Struct("16sH22x")  # struct ifreq: ifr_name, ifr_flags, rest of the union

# Errors a write can hit for one packet without the device being broken: the packet is dropped.
_WRITE_DROP_ERRNOS = frozenset(
    {errno.EAGAIN, errno.ENOBUFS, errno.EINVAL, errno.EMSGSIZE, errno.EIO}
)


def validate_ifname(name: str) -> None:
    """Raise :class:`RuntimeFailure` unless ``name`` is a valid Linux interface name.

    The kernel's rules (``dev_valid_name``): 1–15 bytes, not ``.`` or ``..``, no ``/``, ``:``
    or whitespace.
    """
    raw = name.encode("utf-8", "replace")
    if not raw or len(raw) >= IFNAMSIZ:
        raise RuntimeFailure(
            f"invalid interface name {name!r}: must be 1-{IFNAMSIZ - 1} bytes long"
        )
    if name in (".", "..") or any(c == "/" or c == ":" or c.isspace() for c in name):
        raise RuntimeFailure(
            f"invalid interface name {name!r}: no '/', ':', whitespace, '.' or '..'"
        )


class TunDevice:
    """An open, non-blocking TUN interface.

    Create with :meth:`open`. The interface exists while the descriptor is open (it is not made
    persistent), so :meth:`close` — or leaving the ``with`` block — removes it.
    """

    def __init__(self, fd: int, name: str, *, vnet_hdr: bool = False) -> None:
        """Wrap an already attached TUN descriptor ``fd`` for interface ``name``.

        Most callers want :meth:`open`. ``fd`` is made non-blocking; the object owns it.
        """
        os.set_blocking(fd, False)
        self._fd = fd
        self.name = name
        self.vnet_hdr = vnet_hdr
        self.counters = TunCounters()

    @classmethod
    def open(
        cls, name: str = "", *, vnet_hdr: bool | None = None, path: str = TUN_PATH
    ) -> TunDevice:
        """Create (or attach to) TUN interface ``name``; the kernel picks ``tunN`` if empty.

        A ``%d`` in ``name`` is replaced by the kernel with the first free number. The
        interface is created down and without addresses.

        ``vnet_hdr`` None (the default) means on unless ``P2PTUN_OFFLOAD`` turns the TUN
        offloads off (:func:`p2ptun.net.offload.offload_wanted`): the data path
        (:class:`~p2ptun.node.wgtunnel.WgTunnel`) handles both framings and turns on TSO with
        :meth:`enable_offload`. Pass False for plain packets.

        Raises :class:`RuntimeFailure` with a one-line message when the TUN driver is missing,
        the process lacks ``CAP_NET_ADMIN``, or the name is taken.
        """
        if name:
            validate_ifname(name)
        shown = name or "tun%d"
        try:
            fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise RuntimeFailure(
                f"no TUN device at {path}: load the 'tun' kernel module "
                "(in a container, pass the device in)"
            ) from None
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.EACCES):
                raise RuntimeFailure(
                    f"cannot open {path}: permission denied (needs CAP_NET_ADMIN)"
                ) from None
            if exc.errno in (errno.ENODEV, errno.ENXIO):
                raise RuntimeFailure(
                    f"no TUN driver behind {path}: load the 'tun' kernel module"
                ) from None
            raise RuntimeFailure(f"cannot open {path}: {exc.strerror}") from None
        if vnet_hdr is None:
            vnet_hdr = offload_wanted("tun")
        flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)
        ifr = bytearray(_IFREQ.pack(name.encode(), flags))
        try:
            fcntl.ioctl(fd, TUNSETIFF, ifr)
        except OSError as exc:
            os.close(fd)
            raise _setiff_error(shown, exc) from None
        actual = bytes(ifr[:IFNAMSIZ]).split(b"\0", 1)[0].decode("utf-8", "replace")
        log.debug("tun opened", interface=actual, vnet_hdr=vnet_hdr)
        return cls(fd, actual, vnet_hdr=vnet_hdr)

    # -- descriptor ------------------------------------------------------------------------

    def fileno(self) -> int:
        """The TUN descriptor (``-1`` once closed)."""
        return self._fd

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._fd < 0

    def close(self) -> None:
        """Close the descriptor, which removes the (non-persistent) interface. Idempotent.

        Tasks blocked in :meth:`wait_readable` are woken with :class:`trio.ClosedResourceError`.
        """
        fd, self._fd = self._fd, -1
        if fd < 0:
            return
        # Outside trio (RuntimeError) nobody can be waiting on the descriptor.
        with contextlib.suppress(RuntimeError):
            trio.lowlevel.notify_closing(fd)
        os.close(fd)
        log.debug("tun closed", interface=self.name)

    def __enter__(self) -> TunDevice:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TunDevice(name={self.name!r}, fd={self._fd})"

    def _check_open(self) -> int:
        if self._fd < 0:
            raise trio.ClosedResourceError(f"TUN device {self.name} is closed")
        return self._fd

    # -- waiting ---------------------------------------------------------------------------

    async def wait_readable(self) -> None:
        """Sleep until at least one packet can be read."""
        await trio.lowlevel.wait_readable(self._check_open())

    async def wait_writable(self) -> None:
        """Sleep until a write would not return EAGAIN (rarely needed: TUN writes seldom block)."""
        await trio.lowlevel.wait_writable(self._check_open())

    # -- reading ---------------------------------------------------------------------------

    def readinto(self, buf: bytearray | memoryview) -> int | None:
        """Read one packet into ``buf``; its length, or ``None`` when no packet is waiting.

        ``buf`` should hold :data:`MAX_PACKET` bytes (plus :data:`VNET_HDR_LEN` with
        ``vnet_hdr``): a longer packet is truncated by the kernel.
        """
        fd = self._check_open()
        try:
            n = os.readv(fd, (buf,))
        except BlockingIOError:
            return None
        except OSError as exc:
            raise self._io_error("read", exc) from None
        self.counters.rx_packets += 1
        self.counters.rx_bytes += n
        return n

    def read_batch(self, buffers: Sequence[bytearray | memoryview], lengths: list[int]) -> int:
        """Drain up to ``len(buffers)`` packets; returns how many were read.

        Packet ``i`` lands in ``buffers[i]`` and its length in ``lengths[i]`` (``lengths``
        must be at least as long as ``buffers``). Stops early at EAGAIN, so a return value
        smaller than ``len(buffers)`` means the queue is empty for now.
        """
        fd = self._check_open()
        counters = self.counters
        count = 0
        total = 0
        readv = os.readv
        try:
            for buf in buffers:
                n = readv(fd, (buf,))
                lengths[count] = n
                count += 1
                total += n
        except BlockingIOError:
            pass
        except OSError as exc:
            if count == 0:
                raise self._io_error("read", exc) from None
        counters.rx_packets += count
        counters.rx_bytes += total
        return count

    # -- writing ---------------------------------------------------------------------------

    def write(self, packet: bytes | bytearray | memoryview) -> bool:
        """Inject one IP packet into the kernel; False if it was dropped.

        A full queue or a packet the kernel rejects (not IPv4/IPv6, bad length) is dropped and
        counted in ``counters.tx_dropped``; a vanished device raises :class:`RuntimeFailure`.
        """
        fd = self._check_open()
        try:
            n = os.write(fd, packet)
        except OSError as exc:
            if exc.errno in _WRITE_DROP_ERRNOS:
                self.counters.tx_dropped += 1
                return False
            raise self._io_error("write", exc) from None
        self.counters.tx_packets += 1
        self.counters.tx_bytes += n
        return True

    def writev(self, parts: Sequence[bytes | bytearray | memoryview]) -> bool:
        """Inject one packet given in pieces (with ``vnet_hdr``: the virtio header first).

        One ``writev`` system call and no copy; drops are counted as in :meth:`write`.
        """
        fd = self._check_open()
        try:
            n = os.writev(fd, parts)
        except OSError as exc:
            if exc.errno in _WRITE_DROP_ERRNOS:
                self.counters.tx_dropped += 1
                return False
            raise self._io_error("write", exc) from None
        self.counters.tx_packets += 1
        self.counters.tx_bytes += n
        return True

    # -- offloads --------------------------------------------------------------------------

    def set_offload(self, flags: int) -> None:
        """``TUNSETOFFLOAD`` with a mask of ``TUN_F_*``; needs ``vnet_hdr=True`` to be useful."""
        fd = self._check_open()
        try:
            fcntl.ioctl(fd, TUNSETOFFLOAD, flags)
        except OSError as exc:
            raise RuntimeFailure(
                f"TUN interface {self.name}: cannot set offloads {flags:#x}: {exc.strerror}"
            ) from None

    def enable_offload(self) -> int:
        """Ask for checksum, TCP segmentation (TSO4/TSO6) and UDP segmentation (USO4/USO6,
        Linux ≥ 6.2) offload; returns the flags set.

        Only meaningful with ``vnet_hdr``: reads may then return TCP and UDP super-packets of
        up to 64 KiB and packets with a partial checksum, and writes may be UDP GSO packets
        (see :mod:`p2ptun.net.offload`). A kernel that refuses USO gets TSO alone, one that
        refuses everything 0 (plain packets, still behind a virtio header).
        """
        if not self.vnet_hdr or not offload_wanted("tso"):
            return 0
        tso = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
        choices = [tso, TUN_F_CSUM | TUN_F_TSO4, 0]
        if offload_wanted("uso"):
            choices.insert(0, tso | TUN_F_USO4 | TUN_F_USO6)
        for flags in choices:
            try:
                self.set_offload(flags)
            except RuntimeFailure:
                continue
            return flags
        return 0  # pragma: no cover - setting 0 cannot fail on an open device

    def _io_error(self, op: str, exc: OSError) -> RuntimeFailure:
        if exc.errno == errno.EBADFD:
            return RuntimeFailure(f"TUN interface {self.name} was removed")
        return RuntimeFailure(f"TUN interface {self.name}: {op} failed: {exc.strerror}")


def _setiff_error(name: str, exc: OSError) -> RuntimeFailure:
    """Map a TUNSETIFF failure to a one-line, actionable message."""
    if exc.errno in (errno.EPERM, errno.EACCES):
        return RuntimeFailure(f"cannot create TUN interface {name}: needs CAP_NET_ADMIN")
    if exc.errno == errno.EBUSY:
        return RuntimeFailure(
            f"cannot create TUN interface {name}: name busy (another process has it open)"
        )
    if exc.errno == errno.EINVAL:
        return RuntimeFailure(
            f"cannot create TUN interface {name}: the name belongs to an interface of another "
            "kind or with other flags"
        )
    if exc.errno == errno.ENFILE or exc.errno == errno.ENOMEM:
        return RuntimeFailure(f"cannot create TUN interface {name}: out of resources")
    return RuntimeFailure(f"cannot create TUN interface {name}: {exc.strerror}")

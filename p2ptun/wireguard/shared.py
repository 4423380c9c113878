"""What the peers of one WireGuard device share (sans-I/O, like the device and its peers).

A :class:`~p2ptun.wireguard.peer.Peer` is made by its
:class:`~p2ptun.wireguard.device.Device` and given the device's :class:`Shared`: our static
private key, the injected randomness and wall clock (TAI64N timestamps, whitepaper §5.4.2),
the counters, the index table (§5.4.1), the allowed-IPs table (cryptokey routing, §2), the MTU
that caps padding (§5.4.6), the scratch buffers every peer seals into and opens into, and the
device's demultiplexer. The peer needs nothing else from the device, so it does not know the
device's class.

The buffers are shared because the core is single-threaded and a packet is copied out of them
before the next one is handled; sharing them keeps memory per device, not per peer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from p2ptun.noise import Rng
from p2ptun.wireguard.cookie import Source
from p2ptun.wireguard.events import Counters
from p2ptun.wireguard.index import IndexTable
from p2ptun.wireguard.routing import AllowedIPs
from p2ptun.wireguard.transport import BUFFER_SIZE

P = TypeVar("P")

_JITTER_POOL = 256
"""Random bytes drawn at once for :meth:`Shared.jitter` (64 draws)."""


class Shared(Generic[P]):
    """The device-wide state its peers use; ``P`` is the peer type.

    ``demux(data, now, source)`` is the device's
    :meth:`~p2ptun.wireguard.device.Device.receive_datagram`: an initiation names its peer only
    by the static key inside it, so a datagram fed to one peer goes through it.
    ``mtu`` may change at run time (the device's ``mtu`` writes it here).
    """

    __slots__ = (
        "_jitter_pool",
        "_jitter_pos",
        "allowed_ips",
        "counters",
        "demux",
        "indices",
        "mtu",
        "private_key",
        "recv_buffer",
        "recv_view",
        "rng",
        "scratch",
        "send_buffer",
        "send_view",
        "wall_clock",
    )

    def __init__(
        self,
        private_key: bytes,
        *,
        rng: Rng,
        wall_clock: Callable[[], float],
        counters: Counters,
        indices: IndexTable[P],
        allowed_ips: AllowedIPs[P],
        mtu: int,
        demux: Callable[[bytes | bytearray | memoryview, float, Source], P | None],
    ) -> None:
        self.private_key = private_key
        self.rng = rng
        self.wall_clock = wall_clock
        self.counters = counters
        self.indices = indices
        self.allowed_ips = allowed_ips
        self.mtu = mtu
        self.demux = demux
        self.send_buffer = bytearray(BUFFER_SIZE)
        """Where a transport message is sealed; the peer copies it out."""
        self.send_view = memoryview(self.send_buffer)
        self.recv_buffer = bytearray(BUFFER_SIZE)
        """Where a transport message is opened; the peer copies the packet out."""
        self.recv_view = memoryview(self.recv_buffer)
        self.scratch = bytearray(BUFFER_SIZE)
        """Room for padding a plaintext before sealing it."""
        self._jitter_pool = b""
        self._jitter_pos = 0

    def jitter(self) -> float:
        """A uniform fraction in [0, 1] for timer jitter (whitepaper §6.1: REKEY_TIMEOUT +
        jitter). Not secret, and drawn on the data path (the first packet after every
        exchange arms "new handshake"), so ``rng`` is asked for 64 at a time instead of one
        system call each."""
        pos = self._jitter_pos
        if pos >= len(self._jitter_pool):
            self._jitter_pool = self.rng(_JITTER_POOL)
            pos = 0
        self._jitter_pos = pos + 4
        return int.from_bytes(self._jitter_pool[pos : pos + 4], "little") / 0xFFFFFFFF

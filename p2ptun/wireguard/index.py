"""Receiver indices: which handshake or keypair a message is for (whitepaper §5.4.1).

Every initiation and response carries the sender's index, a random 32-bit number the sender
picked for this handshake; responses, cookie replies and transport messages carry the receiver's
index, so that the receiver finds the session without trying keys. :class:`IndexTable` is the
receiving side's map: index → (peer, keypair), where the keypair is None while the index names a
handshake in flight and becomes the session derived from that handshake once it completes. One
table per :class:`~p2ptun.wireguard.device.Device`, used by the device to demultiplex and by its
peers to allocate and free their indices.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from p2ptun.noise import Rng
from p2ptun.wireguard.transport import Keypair

P = TypeVar("P")

_MAX_TRIES = 64
"""Random draws before giving up on a free index (the table holds at most a few per peer)."""


class IndexTable(Generic[P]):
    """Index → (peer, keypair or None), with random allocation from the ``rng`` it is given.

    :attr:`lookup` is the map's own ``get``, so that the receive path pays one C call per
    datagram and no Python frame.
    """

    __slots__ = ("_entries", "_rng", "lookup")

    def __init__(self, rng: Rng) -> None:
        self._rng = rng
        self._entries: dict[int, tuple[P, Keypair | None]] = {}
        self.lookup: Callable[[int], tuple[P, Keypair | None] | None] = self._entries.get
        """``lookup(index)``: the (peer, keypair) ``index`` names, or None."""

    def __len__(self) -> int:
        return len(self._entries)

    def new(self, peer: P, keypair: Keypair | None = None) -> int:
        """A fresh random index not in use, now naming ``peer`` (and ``keypair``)."""
        entries = self._entries
        for _ in range(_MAX_TRIES):
            index = int.from_bytes(self._rng(4), "little")
            if index not in entries:
                entries[index] = (peer, keypair)
                return index
        raise RuntimeError("could not find a free session index")  # pragma: no cover

    def set(self, index: int, peer: P, keypair: Keypair | None) -> None:
        """Make ``index`` name ``peer`` and ``keypair`` (a handshake's index passes to the
        keypair derived from it)."""
        self._entries[index] = (peer, keypair)

    def free(self, index: int) -> None:
        """Forget ``index`` (no error if it is not in use)."""
        self._entries.pop(index, None)

    def free_peer(self, peer: P) -> None:
        """Forget every index that names ``peer``."""
        entries = self._entries
        for index in [i for i, (p, _) in entries.items() if p is peer]:
            del entries[index]

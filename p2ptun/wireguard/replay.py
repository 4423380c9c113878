"""Sliding-window replay protection for transport counters (whitepaper §5.4.6, RFC 6479).

The window is a ring of 64-bit blocks (RFC 6479 §2): advancing the highest counter clears only
the blocks that slide into view, so the cost does not depend on how far the window moves. With
128 blocks one block is always the partially filled head, so the guaranteed window is
``127 * 64 = 8128`` counters behind the highest one seen — the same size WireGuard's own
implementations use, well above the 2048 the whitepaper suggests.
"""

from __future__ import annotations

BLOCK_BITS = 64
BLOCK_SHIFT = 6
RING_BLOCKS = 128
RING_MASK = RING_BLOCKS - 1
WINDOW_SIZE = (RING_BLOCKS - 1) * BLOCK_BITS
REJECT_AFTER_MESSAGES = (1 << 64) - (1 << 13) - 1
"""Counters at or above this are never accepted (whitepaper §6.1)."""


class ReplayWindow:
    """Which transport counters have been seen, for one receiving key.

    :meth:`check` is a cheap test made before decryption; :meth:`accept` records a counter
    after the packet authenticated and tells whether it was new.
    """

    __slots__ = ("_blocks", "_greatest", "limit")

    def __init__(self, limit: int = REJECT_AFTER_MESSAGES) -> None:
        self._blocks = [0] * RING_BLOCKS
        self._greatest = 0
        self.limit = limit

    @property
    def greatest(self) -> int:
        """The highest counter accepted so far (0 before any)."""
        return self._greatest

    def check(self, counter: int) -> bool:
        """Would ``counter`` be accepted now? Does not change the window."""
        if counter >= self.limit:
            return False
        greatest = self._greatest
        if counter > greatest:
            return True
        if greatest - counter > WINDOW_SIZE:
            return False
        block = self._blocks[(counter >> BLOCK_SHIFT) & RING_MASK]
        return not (block >> (counter & (BLOCK_BITS - 1))) & 1

    def accept(self, counter: int) -> bool:
        """Record ``counter``; False if it is too old, a duplicate or beyond the limit."""
        if counter >= self.limit:
            return False
        blocks = self._blocks
        greatest = self._greatest
        index = counter >> BLOCK_SHIFT
        if counter > greatest:
            current = greatest >> BLOCK_SHIFT
            diff = index - current
            if diff:
                if diff > RING_BLOCKS:
                    diff = RING_BLOCKS
                for i in range(1, diff + 1):
                    blocks[(current + i) & RING_MASK] = 0
            self._greatest = counter
        elif greatest - counter > WINDOW_SIZE:
            return False
        slot = index & RING_MASK
        bit = 1 << (counter & (BLOCK_BITS - 1))
        if blocks[slot] & bit:
            return False
        blocks[slot] |= bit
        return True

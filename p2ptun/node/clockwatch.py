"""Suspend/resume detection: the wall-clock jump a netlink monitor cannot see.

After a laptop sleeps, its NAT bindings, TURN allocations and consent are all stale, yet no
address or route has changed. Linux's ``CLOCK_MONOTONIC`` stops during suspend while
``CLOCK_BOOTTIME`` keeps counting, so the growth of ``boottime - monotonic`` between two
samples is the time the machine spent suspended. Sans-I/O: the daemon feeds samples.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_THRESHOLD = 3.0  # seconds asleep that count as a resume worth a restart


@dataclass
class SuspendDetector:
    """Reports how long the machine slept between two consecutive samples."""

    threshold: float = DEFAULT_THRESHOLD
    _offset: float | None = None

    def sample(self, monotonic: float, boottime: float) -> float | None:
        """Feed one reading of both clocks; returns the seconds slept if over the threshold."""
        offset = boottime - monotonic
        previous, self._offset = self._offset, offset
        if previous is None:
            return None
        slept = offset - previous
        return slept if slept >= self.threshold else None

"""When the device is under load, and how often one source may make it do handshake work.

WireGuard's answer to a flood of handshake messages (whitepaper §5.3) is the cookie: under
load a handshake message must carry a MAC2 made with a cookie tied to its source address, else
it is answered with a cookie reply instead of the Diffie-Hellman work (≈ 160 µs here). This
module decides "under load", as wireguard-go does, and adds its per-source limit:

- :class:`HandshakeLoad`: under load for :data:`UNDER_LOAD_AFTER` seconds after the caller
  reported a backlog — :data:`UNDER_LOAD_BATCH` handshake messages or more in one drained
  receive batch (wireguard-go: its handshake queue an eighth full) — or after
  :data:`UNDER_LOAD_RATE` handshake messages arrived within one second, which the device
  counts itself (so a steady flood that never builds a backlog is caught too);
- :class:`HandshakeRateLimiter`: under load, once MAC2 has proved the source, each source (an
  IPv4 address, an IPv6 /64, or the opaque name of a relayed path) may have
  :data:`HANDSHAKES_PER_SECOND` handshake messages processed a second, :data:`HANDSHAKE_BURST`
  at once (wireguard-go's ratelimiter: 20 a second, burst 5), the rest dropped and counted.

Sans-I/O: ``now`` is passed in.
"""

from __future__ import annotations

import math

from p2ptun.addr import SourceBudget, source_key

UNDER_LOAD_BATCH = 8
"""Handshake messages in one drained receive batch that put the device under load."""
UNDER_LOAD_RATE = 64
"""Handshake messages within one second that put the device under load."""
UNDER_LOAD_AFTER = 1.0
"""Seconds the device stays under load after the last sign of it (wireguard-go's
UnderLoadAfterTime)."""
HANDSHAKES_PER_SECOND = 20.0
"""Handshake messages one source may have processed per second under load, after MAC2."""
HANDSHAKE_BURST = 5.0
"""...and at once."""
MAX_RATE_SOURCES = 4096
"""Sources whose handshake budget is remembered (the least recent is forgotten first)."""


class HandshakeLoad:
    """Is the device under load? (module docstring)"""

    __slots__ = ("_count", "_until", "_window")

    def __init__(self) -> None:
        self._until = -math.inf
        self._window = -math.inf
        self._count = 0

    def under_load(self, now: float) -> bool:
        return now < self._until

    def report_backlog(self, handshakes: int, now: float) -> None:
        """The caller drained a receive batch that held ``handshakes`` handshake messages."""
        if handshakes >= UNDER_LOAD_BATCH:
            self._until = max(self._until, now + UNDER_LOAD_AFTER)

    def note_handshake(self, now: float) -> None:
        """One handshake message arrived (the device counts them as they come)."""
        if now - self._window >= 1.0:
            self._window = now
            self._count = 0
        self._count += 1
        if self._count >= UNDER_LOAD_RATE:
            self._until = max(self._until, now + UNDER_LOAD_AFTER)


class HandshakeRateLimiter:
    """Per-source budget of handshake messages under load (module docstring)."""

    __slots__ = ("_budget",)

    def __init__(self) -> None:
        self._budget = SourceBudget(HANDSHAKES_PER_SECOND, HANDSHAKE_BURST, MAX_RATE_SOURCES)

    def allow(self, source: tuple[str, int] | bytes | None, now: float) -> bool:
        if isinstance(source, tuple):
            key = source_key(source[0])
        elif isinstance(source, bytes):
            key = "path " + source.hex()
        else:
            key = ""
        return self._budget.allow(key, now)

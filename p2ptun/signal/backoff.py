"""Jittered exponential backoff for reconnecting to the rendezvous (docs/ARCHITECTURE.md §4).

The n-th consecutive failure (n = 0, 1, ...) waits ``d * (1 - jitter + jitter * u)`` seconds,
where ``d = min(cap, base * factor**n)`` and ``u`` in [0, 1) comes from the injected random
source. With the defaults (base 0.5 s, factor 2, cap 30 s, jitter 0.5) the delays lie in
[0.25, 0.5], [0.5, 1], [1, 2], ... and never exceed 30 s: many nodes cut off by the same
rendezvous restart come back spread out rather than all at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

Random = Callable[[], float]
"""``random()`` in [0, 1), e.g. ``random.random``; injected so tests are deterministic."""


@dataclass(frozen=True)
class BackoffPolicy:
    base: float = 0.5
    factor: float = 2.0
    cap: float = 30.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not (0 < self.base <= self.cap and self.factor >= 1 and 0 <= self.jitter <= 1):
            raise ValueError("need 0 < base <= cap, factor >= 1, 0 <= jitter <= 1")

    def ceiling(self, attempt: int) -> float:
        """The un-jittered delay of the ``attempt``-th consecutive failure."""
        # Compare exponents, not powers, so huge attempt counts cannot overflow.
        d = self.base
        for _ in range(min(attempt, 64)):
            d *= self.factor
            if d >= self.cap:
                return self.cap
        return min(d, self.cap)

    def delay(self, attempt: int, random: Random) -> float:
        d = self.ceiling(attempt)
        return d * (1.0 - self.jitter + self.jitter * random())


class Backoff:
    """Counts consecutive failures and hands out delays; :meth:`reset` after a success."""

    def __init__(self, policy: BackoffPolicy, random: Random) -> None:
        self.policy = policy
        self._random = random
        self.attempt = 0

    def next_delay(self) -> float:
        delay = self.policy.delay(self.attempt, self._random)
        self.attempt += 1
        return delay

    def random(self) -> float:
        """A draw from the injected random source (for other jittered delays)."""
        return self._random()

    def longest_delay(self) -> float:
        """A jittered delay at the cap (after a refusal, which a retry will not fix soon)."""
        return self.policy.delay(64, self._random)

    def reset(self) -> None:
        self.attempt = 0

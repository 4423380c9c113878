"""WireGuard's protocol constants and timer settings (whitepaper §6.1, §6.5).

:class:`TimerConfig` holds the constants of §6.1 with their standard values; a test (or an
experiment) can shorten them per :class:`~p2ptun.wireguard.device.Device` or per peer with
``dataclasses.replace``. Nothing else in the protocol layer hard-codes a duration.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

REKEY_AFTER_MESSAGES = 1 << 60
REJECT_AFTER_MESSAGES = (1 << 64) - (1 << 13) - 1
REKEY_AFTER_TIME = 120.0
REJECT_AFTER_TIME = 180.0
REKEY_ATTEMPT_TIME = 90.0
REKEY_TIMEOUT = 5.0
REKEY_TIMEOUT_JITTER_MAX = 0.333
KEEPALIVE_TIMEOUT = 10.0
INITIATIONS_PER_SECOND = 50
"""At most this many initiations per second are consumed from one peer (flood guard)."""
MAX_STAGED_PACKETS = 128
"""Packets held per peer while a handshake is under way; the oldest are dropped beyond it."""


@dataclass(frozen=True)
class TimerConfig:
    """The §6.1 constants, overridable per instance (times in seconds)."""

    rekey_after_messages: int = REKEY_AFTER_MESSAGES
    reject_after_messages: int = REJECT_AFTER_MESSAGES
    rekey_after_time: float = REKEY_AFTER_TIME
    reject_after_time: float = REJECT_AFTER_TIME
    rekey_attempt_time: float = REKEY_ATTEMPT_TIME
    rekey_timeout: float = REKEY_TIMEOUT
    rekey_timeout_jitter_max: float = REKEY_TIMEOUT_JITTER_MAX
    keepalive_timeout: float = KEEPALIVE_TIMEOUT
    initiations_per_second: int = INITIATIONS_PER_SECOND
    max_staged_packets: int = MAX_STAGED_PACKETS

    def shortened(self, rekey_after_time: float) -> TimerConfig:
        """A copy with every duration scaled so that ``REKEY_AFTER_TIME`` is ``rekey_after_time``.

        For tests and experiments that want to see rekeys without waiting minutes: all
        durations keep their standard ratios (``REJECT_AFTER_TIME = 1.5 × REKEY_AFTER_TIME``,
        ``REKEY_TIMEOUT = REKEY_AFTER_TIME / 24``, ...), so every ordering §6 relies on still
        holds. Message counts, the initiation rate limit and the staging limit are unchanged.
        """
        if not rekey_after_time > 0:
            raise ValueError("rekey_after_time must be positive")
        f = rekey_after_time / self.rekey_after_time
        return replace(
            self,
            rekey_after_time=rekey_after_time,
            reject_after_time=self.reject_after_time * f,
            rekey_attempt_time=self.rekey_attempt_time * f,
            rekey_timeout=self.rekey_timeout * f,
            rekey_timeout_jitter_max=self.rekey_timeout_jitter_max * f,
            keepalive_timeout=self.keepalive_timeout * f,
        )

    @property
    def max_handshake_attempts(self) -> int:
        """Retransmissions before giving up: ``REKEY_ATTEMPT_TIME / REKEY_TIMEOUT`` (§6.4)."""
        return int(self.rekey_attempt_time // self.rekey_timeout)

    @property
    def rekey_on_receive_age(self) -> float:
        """``REJECT_AFTER_TIME − KEEPALIVE_TIMEOUT − REKEY_TIMEOUT`` (§6.2)."""
        return self.reject_after_time - self.keepalive_timeout - self.rekey_timeout

    @property
    def new_handshake_timeout(self) -> float:
        """``KEEPALIVE_TIMEOUT + REKEY_TIMEOUT``: data sent, nothing heard back (§6.5)."""
        return self.keepalive_timeout + self.rekey_timeout

    @property
    def zero_keys_after(self) -> float:
        """``REJECT_AFTER_TIME × 3``: erase all key material without a new session (§6.3)."""
        return self.reject_after_time * 3

"""Consent freshness (RFC 7675) for the selected candidate pair, sans-I/O.

:class:`ConsentFreshness` owns the timing; the agent builds the Binding requests (they are
ordinary ICE checks without USE-CANDIDATE, RFC 7675 §5.1) and routes the responses back.

- A consent check is due every ``interval`` seconds, randomised uniformly by ±``jitter``
  (default 5 s ± 20 %, i.e. 4–6 s, RFC 7675 §5.1 asks for 0.8–1.2 × the interval).
- Each check is one STUN transaction retransmitted like any STUN request over UDP
  (RFC 8489 §6.2.1, RTO ``rto`` doubling each time) but never beyond the consent timeout:
  a transaction older than ``timeout`` is dropped (RFC 7675 §5.1).
- Consent expires ``timeout`` (30 s) after the last authenticated success response on the
  pair (RFC 7675 §5.1); then :meth:`poll` reports :attr:`ConsentState.EXPIRED`, the agent
  stops sending on the pair (§5.2), and no more checks are sent.
- The peer's own consent checks on the pair (:meth:`ConsentFreshness.peer_checked`) bring our
  next check forward to that moment once at least ``(1 − jitter) × interval`` (4 s) passed since
  our previous one, so both directions share the same wake-ups (the peer sends its request and
  answers ours in one go) instead of each side waking three times per round. Every gap between
  our checks stays within 0.8–1.2 × the interval, as RFC 7675 §5.1 asks; the randomisation
  still spreads out the checks of different pairs.
- A check counts as unanswered if no response arrived before the next check is due. After
  ``suspect_after`` (2) consecutive unanswered checks the pair is reported
  :attr:`ConsentState.SUSPECT`, so that the node can prepare a failover before the 30 s
  expiry; a response makes it FRESH again.

- A **probe** (:meth:`ConsentFreshness.probe`) is the fast failure detection of p2ptun: the
  data path saw the pair go quiet (data sent and nothing authenticated back, or data stopped
  arriving, for about a second) and asks whether the pair still works. ``probe_checks`` (3)
  consent checks go out spread over the probe window — ``max(probe_window_min,
  probe_window_rtts × RTT)``, 0.3 s or three round trips — and if no response arrived by its
  end the pair is :attr:`ConsentState.LOST`: it no longer carries data, so the node moves to
  another path at once, while consent itself still runs to its RFC 7675 timeout (a late
  response makes the pair FRESH again). RFC 7675 §5.1 lets the check interval be chosen; the
  extra traffic is bounded: one probe at a time, at most ``probe_checks`` small requests each,
  and a probe only follows traffic on the pair (the data path re-arms its trigger only after
  new packets), never idleness. A probe because data *stopped arriving* is optional
  (``urgent=False``): it is skipped within ``probe_holdoff`` (5 s) of the previous probe's
  start, so that a bursty flow (an interactive shell: every answer ends with a quiet second)
  costs at most one probe per holdoff. A probe because data *went unanswered* always runs —
  that is the failure users feel — and at most one per quiet interval (≥ 1 s) of sending.

Also bounded: at most ``max_transactions`` checks in flight (more cannot happen with the
defaults, 30 s / 4 s = 8, plus one probe).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol

from p2ptun.stun.message import Message
from p2ptun.stun.transaction import TransactionManager, Transmit

__all__ = [
    "ConsentConfig",
    "ConsentFreshness",
    "ConsentPoll",
    "ConsentState",
    "RandomSource",
]


class RandomSource(Protocol):
    """What the ICE code needs from a random source (``random.Random`` and
    ``random.SystemRandom`` both fit)."""

    def getrandbits(self, k: int, /) -> int: ...

    def random(self) -> float: ...


class ConsentState(enum.Enum):
    """Consent of the selected pair (RFC 7675)."""

    FRESH = "fresh"
    #: ``suspect_after`` consecutive checks went unanswered; consent still holds.
    SUSPECT = "suspect"
    #: No response for ``timeout`` seconds: the agent must stop sending (RFC 7675 §5.2).
    EXPIRED = "expired"
    #: A probe went unanswered: the pair does not carry data now (consent still holds).
    LOST = "lost"


@dataclass(frozen=True)
class ConsentConfig:
    """Consent freshness parameters (RFC 7675 §5.1 defaults)."""

    interval: float = 5.0
    jitter: float = 0.2
    timeout: float = 30.0
    rto: float = 0.5
    suspect_after: int = 2
    max_transactions: int = 11
    #: A probe's window: this long at least, and this many round trips of the pair.
    probe_window_min: float = 0.3
    probe_window_rtts: float = 3.0
    #: Consent checks a probe sends, spread over its window.
    probe_checks: int = 3
    #: An optional probe (data stopped arriving) is skipped this soon after the previous one.
    probe_holdoff: float = 5.0

    def __post_init__(self) -> None:
        if self.interval <= 0 or self.timeout <= 0 or self.rto <= 0:
            raise ValueError("consent interval, timeout and rto must be positive")
        if not 0 <= self.jitter < 1:
            raise ValueError("consent jitter must be in [0, 1)")
        if self.suspect_after < 1 or self.max_transactions < 1 or self.probe_checks < 1:
            raise ValueError("suspect_after, max_transactions and probe_checks must be >= 1")
        if self.probe_window_min <= 0 or self.probe_window_rtts < 0:
            raise ValueError("the probe window must be positive")
        if self.probe_holdoff < 0:
            raise ValueError("the probe holdoff must not be negative")


@dataclass
class ConsentPoll:
    """What :meth:`ConsentFreshness.poll` found due at ``now``."""

    #: Retransmissions to send as they are.
    retransmits: list[bytes] = field(default_factory=list)
    #: A new consent check is due: build one and pass it to :meth:`~ConsentFreshness.start`.
    check_due: bool = False
    #: The state changed to this (SUSPECT or EXPIRED) during the poll.
    became: ConsentState | None = None


class ConsentFreshness:
    """Consent timers for one selected pair (RFC 7675 §5.1).

    ``last_response`` is when consent was last confirmed (the nominating check's response,
    typically); the first check is due one randomised interval after ``now``.
    """

    def __init__(
        self,
        now: float,
        rng: RandomSource,
        config: ConsentConfig | None = None,
        last_response: float | None = None,
    ) -> None:
        self.config = config or ConsentConfig()
        self._rng = rng
        self.last_response: float = now if last_response is None else last_response
        self.state = ConsentState.FRESH
        #: Consecutive consent checks that were not answered within an interval.
        self.missed = 0
        self.checks_sent = 0
        self.responses = 0
        self._answered = True  # the previous check (if any) has been answered
        #: When the previous check was due (selection time before the first).
        self._last_check = now
        self._next_check: float | None = now + self._interval()
        self._tm: TransactionManager[float] = TransactionManager(rto=self.config.rto)
        #: The probe under way: when it started, when it ends, when its next checks go out.
        self._probe_started: float | None = None
        self._probe_until: float | None = None
        self._probe_checks: list[float] = []
        #: When the latest probe started (None: no probe yet), for ``probe_holdoff``.
        self._last_probe: float | None = None
        self.probes = 0
        #: Optional probes skipped because one ran within ``probe_holdoff``.
        self.probes_held_off = 0

    # -- queries ------------------------------------------------------------------------------

    @property
    def expires_at(self) -> float:
        """When consent expires unless a response arrives first."""
        return self.last_response + self.config.timeout

    @property
    def expired(self) -> bool:
        return self.state is ConsentState.EXPIRED

    def age(self, now: float) -> float:
        """Seconds since the last consent response."""
        return max(0.0, now - self.last_response)

    def next_wakeup(self) -> float | None:
        """When :meth:`poll` has something to do next; None once expired."""
        if self.expired:
            return None
        times = [self.expires_at]
        if self._next_check is not None:
            times.append(self._next_check)
        if self._probe_checks:
            times.append(self._probe_checks[0])
        if self._probe_until is not None:
            times.append(self._probe_until)
        tx = self._tm.next_wakeup()
        if tx is not None:
            times.append(tx)
        return min(times)

    def __contains__(self, transaction_id: bytes) -> bool:
        return transaction_id in self._tm

    # -- inputs -------------------------------------------------------------------------------

    def poll(self, now: float) -> ConsentPoll:
        """Advance timers to ``now``."""
        result = ConsentPoll()
        if self.expired:
            return result
        if now >= self.expires_at:
            self.state = ConsentState.EXPIRED
            self._next_check = None
            self._tm.cancel_all()
            self._end_probe()
            result.became = ConsentState.EXPIRED
            return result
        for event in self._tm.handle_timeout(now):
            if isinstance(event, Transmit):
                started = event.context
                if started is not None and now - started >= self.config.timeout:
                    self._tm.cancel(event.transaction.transaction_id)
                else:
                    result.retransmits.append(event.data)
        if self._probe_until is not None and now >= self._probe_until:
            started = self._probe_started
            self._end_probe()
            unanswered = started is not None and self.last_response < started
            if unanswered and self.state is not ConsentState.LOST:
                self.state = ConsentState.LOST
                result.became = ConsentState.LOST
        if self._probe_checks and now >= self._probe_checks[0]:
            while self._probe_checks and now >= self._probe_checks[0]:
                self._probe_checks.pop(0)
            if len(self._tm) < self.config.max_transactions:
                result.check_due = True
        if self._next_check is not None and now >= self._next_check:
            if not self._answered:
                self.missed += 1
                if self.missed >= self.config.suspect_after and self.state is ConsentState.FRESH:
                    self.state = ConsentState.SUSPECT
                    result.became = ConsentState.SUSPECT
            self._last_check = now
            self._next_check = now + self._interval()
            if len(self._tm) < self.config.max_transactions:
                result.check_due = True
        return result

    def start(self, request: bytes, key: bytes, now: float) -> bytes:
        """Register a consent check built by the agent; returns the bytes to send."""
        self._answered = False
        self.checks_sent += 1
        return self._tm.start(request, now, key=key, context=now).data

    def handle_response(self, response: Message, now: float) -> bool | None:
        """Offer a response. None: not a consent transaction; True: consent confirmed; False:
        ours but an error or invalid (ignored, the transaction goes on or ends)."""
        if response.transaction_id not in self._tm:
            return None
        outcome = self._tm.handle_response(response, now)
        if outcome is None or not outcome.ok:
            return False
        self.refresh(now)
        return True

    def refresh(self, now: float) -> ConsentState | None:
        """Consent confirmed at ``now`` (a consent response, or any authenticated success
        response on the pair, RFC 7675 §5.1). Returns FRESH if this ended a SUSPECT state."""
        if self.expired:
            return None
        self.responses += 1
        self.last_response = max(self.last_response, now)
        self._answered = True
        self.missed = 0
        self._end_probe()
        if self.state in (ConsentState.SUSPECT, ConsentState.LOST):
            self.state = ConsentState.FRESH
            return ConsentState.FRESH
        return None

    def probe(self, now: float, rtt: float | None, *, urgent: bool = True) -> bool:
        """Check now whether the pair still works (module docstring); ``rtt`` is the pair's
        round-trip time if known. An optional probe (``urgent=False``: data stopped arriving)
        is skipped within ``probe_holdoff`` of the previous probe. False if consent expired, a
        probe is under way already or this one was held off; True: the caller polls at once
        (the first check is due)."""
        if self.expired or self._probe_until is not None:
            return False
        cfg = self.config
        last = self._last_probe
        if not urgent and last is not None and now - last < cfg.probe_holdoff:
            self.probes_held_off += 1
            return False
        self._last_probe = now
        window = max(cfg.probe_window_min, cfg.probe_window_rtts * (rtt or 0.0))
        self.probes += 1
        self._probe_started = now
        self._probe_until = now + window
        step = window / cfg.probe_checks
        self._probe_checks = [now + k * step for k in range(cfg.probe_checks)]
        return True

    @property
    def probing(self) -> bool:
        return self._probe_until is not None

    def _end_probe(self) -> None:
        self._probe_started = self._probe_until = None
        self._probe_checks = []

    def peer_checked(self, now: float) -> bool:
        """The peer checked the pair at ``now`` (its consent check, typically). If our next
        check may already go out (the shortest randomised interval since the previous one has
        passed), make it due now and return True: the caller polls at once. Module docstring."""
        if self.expired or self._next_check is None or now >= self._next_check:
            return False
        if now < self._last_check + self.config.interval * (1.0 - self.config.jitter):
            return False
        self._next_check = now
        return True

    def stop(self) -> None:
        """Stop checking (the pair is no longer selected)."""
        self._tm.cancel_all()
        self._next_check = None
        self._end_probe()

    # -- internals ----------------------------------------------------------------------------

    def _interval(self) -> float:
        j = self.config.jitter
        return self.config.interval * (1.0 - j + 2.0 * j * self._rng.random())

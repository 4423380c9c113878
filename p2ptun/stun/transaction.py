"""STUN client transactions under injected time (RFC 8489 §6.2, §6.3.4).

A :class:`ClientTransaction` owns one request: it says when to (re)send it, matches and
validates responses, and ends in exactly one :class:`TransactionOutcome`. Nothing here reads a
clock or touches a socket; the caller passes ``now`` (seconds, monotonic) and sends the bytes.

Over UDP (RFC 8489 §6.2.1) the request is sent at 0, RTO, 3·RTO, 7·RTO, ... — Rc sends in all,
the interval doubling each time — and the transaction times out Rm·RTO after the last send. With
the defaults (RTO 500 ms, Rc 7, Rm 16) that is sends at 0, 0.5, 1.5, 3.5, 7.5, 15.5 and 31.5 s
and a timeout at 39.5 s. Over TCP/TLS (§6.2.2) the request is sent once and the transaction times
out after Ti = 39.5 s.

Typical use, one transaction::

    tx = ClientTransaction(request_bytes, now, key=key)
    # loop:
    result = tx.handle_timeout(now)     # bytes -> send them; TransactionOutcome -> done
    outcome = tx.handle_response(msg, now)   # TransactionOutcome, or None if ignored
    tx.next_wakeup()                    # when to call handle_timeout next (None when done)

Many transactions (ICE checks, TURN requests): :class:`TransactionManager`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from p2ptun.stun.constants import MessageClass
from p2ptun.stun.message import Message

C = TypeVar("C")

#: RFC 8489 §6.2.1 defaults.
DEFAULT_RTO = 0.5
DEFAULT_RC = 7
DEFAULT_RM = 16
#: RFC 8489 §6.2.2: transaction timeout over reliable transports.
RELIABLE_TIMEOUT = 39.5
#: Error codes a response may carry without integrity and still be accepted (RFC 8489 §9.1.4,
#: §9.2.5: 400 and 420 may come before any authentication, 401 and 438 are challenges).
UNAUTHENTICATED_ERRORS: frozenset[int] = frozenset({400, 401, 420, 438})


class TransactionState(enum.Enum):
    """Where a client transaction stands."""

    #: Request sent (or about to be), no acceptable response yet.
    WAITING = "waiting"
    #: A success response arrived.
    SUCCEEDED = "succeeded"
    #: An error response arrived (see ``TransactionOutcome.error``).
    FAILED = "failed"
    #: No response after the last retransmission (§6.2.1) or Ti (§6.2.2).
    TIMED_OUT = "timed_out"
    #: Cancelled by its owner.
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class TransactionOutcome(Generic[C]):
    """How a transaction ended."""

    transaction: ClientTransaction[C]
    state: TransactionState
    response: Message | None = None
    #: Round-trip time, measured only when the request was sent once (Karn's rule).
    rtt: float | None = None

    @property
    def transaction_id(self) -> bytes:
        return self.transaction.transaction_id

    @property
    def context(self) -> C | None:
        """What the owner attached to the transaction (destination, candidate pair, ...)."""
        return self.transaction.context

    @property
    def ok(self) -> bool:
        """A success response arrived."""
        return self.state is TransactionState.SUCCEEDED

    @property
    def error(self) -> tuple[int, str] | None:
        """``(code, reason)`` of an error response (``(0, "")`` if it had no ERROR-CODE)."""
        if self.state is not TransactionState.FAILED or self.response is None:
            return None
        value = self.response.error_code
        return (value.code, value.reason) if value is not None else (0, "")


@dataclass(frozen=True, slots=True)
class Transmit(Generic[C]):
    """Bytes a :class:`TransactionManager` wants sent for one of its transactions."""

    transaction: ClientTransaction[C]
    data: bytes

    @property
    def context(self) -> C | None:
        return self.transaction.context


class ClientTransaction(Generic[C]):
    """One STUN request/response exchange (RFC 8489 §6.2, §6.3.4), sans-I/O.

    ``request`` is the encoded request (or a :class:`Message`, encoded without integrity). The
    first send is due at ``now``: call :meth:`handle_timeout` right away to get it.

    Response validation, applied in :meth:`handle_response` before a response is accepted
    (a response that fails it is ignored, "as if it was never received", RFC 8489 §9.1.4):

    - its transaction id and method match the request (§6.3.4);
    - ``key``: a response carrying MESSAGE-INTEGRITY(-SHA256) must verify with it; a response
      without one is accepted only if it is an error with a code in ``unauthenticated_errors``;
    - a FINGERPRINT, if present, must be right; ``require_fingerprint`` also demands one;
    - ``validate``: any further check of the owner's (returns False to ignore the response).
    """

    __slots__ = (
        "_deadline",
        "_first_sent",
        "_interval",
        "_last_sent",
        "_next",
        "_sends",
        "context",
        "key",
        "max_sends",
        "method",
        "outcome",
        "reliable",
        "request",
        "require_fingerprint",
        "rm",
        "rto",
        "timeout",
        "transaction_id",
        "unauthenticated_errors",
        "validate",
    )

    def __init__(
        self,
        request: bytes | Message,
        now: float,
        *,
        rto: float = DEFAULT_RTO,
        rc: int = DEFAULT_RC,
        rm: int = DEFAULT_RM,
        reliable: bool = False,
        timeout: float = RELIABLE_TIMEOUT,
        key: bytes | None = None,
        unauthenticated_errors: frozenset[int] = UNAUTHENTICATED_ERRORS,
        require_fingerprint: bool = False,
        validate: Callable[[Message], bool] | None = None,
        context: C | None = None,
    ) -> None:
        if isinstance(request, Message):
            self.method: int = request.method
            self.transaction_id: bytes = request.transaction_id
            request = request.encode()
        else:
            if len(request) < 20:
                raise ValueError("request is shorter than a STUN header")
            self.transaction_id = bytes(request[8:20])
            mtype = (request[0] << 8) | request[1]
            self.method = (mtype & 0x000F) | ((mtype & 0x00E0) >> 1) | ((mtype & 0x3E00) >> 2)
        if rto <= 0 or rc < 1 or rm < 1:
            raise ValueError("rto must be positive, rc and rm at least 1")
        self.request: bytes = bytes(request)
        self.rto = rto
        self.max_sends = 1 if reliable else rc
        self.rm = rm
        self.reliable = reliable
        self.timeout = timeout
        self.key = key
        self.unauthenticated_errors = unauthenticated_errors
        self.require_fingerprint = require_fingerprint
        self.validate = validate
        self.context: C | None = context
        self.outcome: TransactionOutcome[C] | None = None
        self._sends = 0
        self._interval = rto
        self._next: float | None = now
        self._deadline: float | None = None
        self._first_sent = now
        self._last_sent = now

    # -- queries -------------------------------------------------------------------------------

    @property
    def state(self) -> TransactionState:
        return TransactionState.WAITING if self.outcome is None else self.outcome.state

    @property
    def done(self) -> bool:
        return self.outcome is not None

    @property
    def sends(self) -> int:
        """How many times the request has been sent so far."""
        return self._sends

    def next_wakeup(self) -> float | None:
        """When :meth:`handle_timeout` next has something to do; None once the transaction is
        over."""
        return None if self.outcome is not None else self._next

    # -- events ----------------------------------------------------------------------------------

    def handle_timeout(self, now: float) -> bytes | TransactionOutcome[C] | None:
        """Advance to ``now``: the request bytes if a (re)transmission is due, the
        TIMED_OUT outcome if the last wait ran out, else None."""
        if self.outcome is not None or self._next is None or now < self._next:
            return None
        if self._sends < self.max_sends:
            if self._sends == 0:
                self._first_sent = now
            self._sends += 1
            self._last_sent = now
            if self.reliable:
                self._next = now + self.timeout
            elif self._sends < self.max_sends:
                self._next = now + self._interval
                self._interval *= 2
            else:
                self._next = now + self.rm * self.rto
            return self.request
        return self._finish(TransactionState.TIMED_OUT, None, None)

    def handle_response(self, response: Message, now: float) -> TransactionOutcome[C] | None:
        """Offer a decoded response. Returns the outcome if it was accepted (SUCCEEDED or
        FAILED), None if it was ignored (not ours, failed validation, or already done)."""
        if self.outcome is not None or not self.matches(response):
            return None
        if not self._acceptable(response):
            return None
        rtt = now - self._first_sent if self._sends == 1 else None
        if response.message_class == MessageClass.SUCCESS:
            return self._finish(TransactionState.SUCCEEDED, response, rtt)
        return self._finish(TransactionState.FAILED, response, rtt)

    def cancel(self) -> TransactionOutcome[C] | None:
        """Stop the transaction: no more sends, later responses are ignored."""
        if self.outcome is not None:
            return None
        return self._finish(TransactionState.CANCELLED, None, None)

    # -- internals -------------------------------------------------------------------------------

    def matches(self, response: Message) -> bool:
        """Transaction id and method match, and it is a response (RFC 8489 §6.3.4)."""
        return (
            response.transaction_id == self.transaction_id
            and response.message_class >= MessageClass.SUCCESS
            and response.method == self.method
        )

    def _acceptable(self, response: Message) -> bool:
        if response.fingerprint is not None:
            if not response.check_fingerprint():
                return False
        elif self.require_fingerprint:
            return False
        if self.key is not None:
            if response.has_integrity:
                if not response.check_integrity(self.key):
                    return False
            else:
                error = response.error_code
                if (
                    response.message_class != MessageClass.ERROR
                    or error is None
                    or error.code not in self.unauthenticated_errors
                ):
                    return False
        return self.validate is None or self.validate(response)

    def _finish(
        self, state: TransactionState, response: Message | None, rtt: float | None
    ) -> TransactionOutcome[C]:
        self.outcome = TransactionOutcome(self, state, response, rtt)
        self._next = None
        return self.outcome

    def __repr__(self) -> str:
        return (
            f"<ClientTransaction {self.transaction_id.hex()} {self.state.value}"
            f" sends={self._sends}>"
        )


@dataclass(slots=True)
class TransactionManager(Generic[C]):
    """Many client transactions keyed by transaction id: what TURN clients and ICE agents keep.

    Defaults given here apply to every transaction :meth:`start` creates unless overridden
    there. Finished transactions are forgotten, so late duplicate responses are ignored.
    """

    rto: float = DEFAULT_RTO
    rc: int = DEFAULT_RC
    rm: int = DEFAULT_RM
    reliable: bool = False
    _transactions: dict[bytes, ClientTransaction[C]] = field(default_factory=dict, repr=False)

    def start(
        self,
        request: bytes | Message,
        now: float,
        *,
        key: bytes | None = None,
        context: C | None = None,
        rto: float | None = None,
        reliable: bool | None = None,
        require_fingerprint: bool = False,
        validate: Callable[[Message], bool] | None = None,
        unauthenticated_errors: frozenset[int] = UNAUTHENTICATED_ERRORS,
    ) -> Transmit[C]:
        """Begin a transaction and return its first transmission (send it now).

        Raises ValueError if a transaction with the same id is already running.
        """
        tx: ClientTransaction[C] = ClientTransaction(
            request,
            now,
            rto=self.rto if rto is None else rto,
            rc=self.rc,
            rm=self.rm,
            reliable=self.reliable if reliable is None else reliable,
            key=key,
            unauthenticated_errors=unauthenticated_errors,
            require_fingerprint=require_fingerprint,
            validate=validate,
            context=context,
        )
        if tx.transaction_id in self._transactions:
            raise ValueError("a transaction with this id is already running")
        self._transactions[tx.transaction_id] = tx
        first = tx.handle_timeout(now)
        assert isinstance(first, bytes)
        return Transmit(tx, first)

    def next_wakeup(self) -> float | None:
        """The earliest time any transaction needs :meth:`handle_timeout`, or None."""
        wakeups = [t for tx in self._transactions.values() if (t := tx.next_wakeup()) is not None]
        return min(wakeups) if wakeups else None

    def handle_timeout(self, now: float) -> list[Transmit[C] | TransactionOutcome[C]]:
        """Retransmissions due and transactions that timed out at ``now``, in that order per
        transaction."""
        events: list[Transmit[C] | TransactionOutcome[C]] = []
        finished: list[bytes] = []
        for tid, tx in self._transactions.items():
            wakeup = tx.next_wakeup()
            if wakeup is None or wakeup > now:
                continue
            result = tx.handle_timeout(now)
            if isinstance(result, bytes):
                events.append(Transmit(tx, result))
            elif result is not None:
                events.append(result)
                finished.append(tid)
        for tid in finished:
            del self._transactions[tid]
        return events

    def handle_response(self, response: Message, now: float) -> TransactionOutcome[C] | None:
        """Route a decoded response to its transaction. The outcome if one accepted it; None if
        no running transaction has its id or the response failed validation."""
        tx = self._transactions.get(response.transaction_id)
        if tx is None:
            return None
        outcome = tx.handle_response(response, now)
        if outcome is not None:
            del self._transactions[response.transaction_id]
        return outcome

    def cancel(self, transaction_id: bytes) -> TransactionOutcome[C] | None:
        """Cancel one transaction; None if it is not running."""
        tx = self._transactions.pop(transaction_id, None)
        return None if tx is None else tx.cancel()

    def cancel_all(self) -> list[TransactionOutcome[C]]:
        """Cancel every running transaction (e.g. on ICE restart or shutdown)."""
        outcomes = [o for tx in self._transactions.values() if (o := tx.cancel()) is not None]
        self._transactions.clear()
        return outcomes

    def get(self, transaction_id: bytes) -> ClientTransaction[C] | None:
        return self._transactions.get(transaction_id)

    def __contains__(self, transaction_id: object) -> bool:
        return transaction_id in self._transactions

    def __len__(self) -> int:
        return len(self._transactions)

    def __iter__(self) -> Iterator[ClientTransaction[C]]:
        return iter(list(self._transactions.values()))

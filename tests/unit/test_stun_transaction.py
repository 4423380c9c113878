"""Client transactions under virtual time (RFC 8489 §6.2.1, §6.2.2, §6.3.4)."""

from __future__ import annotations

import pytest

from p2ptun.addr import Address
from p2ptun.stun import (
    AttrType,
    ClientTransaction,
    Message,
    MessageClass,
    Method,
    TransactionManager,
    TransactionOutcome,
    TransactionState,
    Transmit,
    short_term_key,
)

TID = bytes(range(12))
KEY = short_term_key("pw")


def _request(tid: bytes = TID) -> Message:
    return Message.request(Method.BINDING, tid, [(AttrType.USERNAME, "a:b")])


def _run(tx: ClientTransaction[None]) -> tuple[list[float], float]:
    """Drive a transaction with no responses, jumping from wakeup to wakeup; return the send
    times and the timeout time."""
    sends: list[float] = []
    for _ in range(100):
        now = tx.next_wakeup()
        assert now is not None
        result = tx.handle_timeout(now)
        if isinstance(result, bytes):
            sends.append(now)
        else:
            assert isinstance(result, TransactionOutcome)
            assert result.state is TransactionState.TIMED_OUT
            assert tx.next_wakeup() is None
            return sends, now
    raise AssertionError("transaction never ended")


def test_udp_schedule_rfc8489() -> None:
    tx: ClientTransaction[None] = ClientTransaction(_request().encode(KEY), 0.0)
    sends, timeout = _run(tx)
    assert sends == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert timeout == 39.5
    assert tx.sends == 7


def test_udp_schedule_other_rto_and_start() -> None:
    tx: ClientTransaction[None] = ClientTransaction(_request(), 100.0, rto=0.1, rc=4, rm=8)
    sends, timeout = _run(tx)
    assert sends == pytest.approx([100.0, 100.1, 100.3, 100.7])
    assert timeout == pytest.approx(100.7 + 0.8)


def test_reliable_schedule() -> None:
    tx: ClientTransaction[None] = ClientTransaction(_request(), 5.0, reliable=True)
    sends, timeout = _run(tx)
    assert sends == [5.0]
    assert timeout == 44.5


def test_nothing_before_wakeup_and_late_calls() -> None:
    tx: ClientTransaction[None] = ClientTransaction(_request(), 0.0)
    assert tx.handle_timeout(0.0) == _request().encode()
    assert tx.next_wakeup() == 0.5
    assert tx.handle_timeout(0.49) is None
    # A late caller still gets one retransmission, and the next interval counts from now.
    assert isinstance(tx.handle_timeout(2.0), bytes)
    assert tx.next_wakeup() == 3.0


def _response(
    klass: MessageClass = MessageClass.SUCCESS,
    *,
    tid: bytes = TID,
    key: bytes | None = KEY,
    fingerprint: bool = True,
    code: int | None = None,
    method: int = Method.BINDING,
) -> Message:
    msg = Message(method, klass, tid, [(AttrType.XOR_MAPPED_ADDRESS, ("192.0.2.1", 7))])
    if code is not None:
        msg = _request(tid).error(code)
    return Message.decode(msg.encode(key, fingerprint=fingerprint))


def test_success_with_rtt() -> None:
    tx: ClientTransaction[str] = ClientTransaction(_request(), 0.0, key=KEY, context="srv")
    tx.handle_timeout(0.0)
    outcome = tx.handle_response(_response(), 0.042)
    assert outcome is not None and outcome.ok
    assert outcome.rtt == pytest.approx(0.042)
    assert outcome.context == "srv"
    assert outcome.response is not None
    assert outcome.response.xor_mapped_address == ("192.0.2.1", 7)
    assert tx.state is TransactionState.SUCCEEDED and tx.done
    assert tx.next_wakeup() is None
    assert tx.handle_response(_response(), 0.05) is None  # duplicates are ignored
    assert tx.handle_timeout(100.0) is None


def test_no_rtt_after_retransmission() -> None:
    tx: ClientTransaction[None] = ClientTransaction(_request(), 0.0)
    tx.handle_timeout(0.0)
    tx.handle_timeout(0.5)
    outcome = tx.handle_response(_response(key=None), 0.6)
    assert outcome is not None and outcome.ok and outcome.rtt is None


def test_response_validation() -> None:
    tx: ClientTransaction[None] = ClientTransaction(_request(), 0.0, key=KEY)
    tx.handle_timeout(0.0)
    assert tx.handle_response(_response(tid=bytes(12)), 0.1) is None  # other transaction
    assert tx.handle_response(_response(method=Method.ALLOCATE), 0.1) is None
    assert tx.handle_response(_response(key=b"wrong"), 0.1) is None  # bad integrity
    assert tx.handle_response(_response(key=None), 0.1) is None  # no integrity
    req = _request()
    assert tx.handle_response(Message.decode(req.encode()), 0.1) is None  # a request
    bad_fp = bytearray(_response().encode(KEY, fingerprint=True))
    bad_fp[-1] ^= 1
    assert tx.handle_response(Message.decode(bytes(bad_fp)), 0.1) is None
    assert tx.state is TransactionState.WAITING
    # An unauthenticated 401 challenge is accepted; a 487 without integrity is not.
    assert tx.handle_response(_response(MessageClass.ERROR, key=None, code=487), 0.1) is None
    outcome = tx.handle_response(_response(MessageClass.ERROR, key=None, code=401), 0.2)
    assert outcome is not None and outcome.state is TransactionState.FAILED
    assert outcome.error == (401, "Unauthenticated")


def test_require_fingerprint_and_validate_hook() -> None:
    tx: ClientTransaction[None] = ClientTransaction(
        _request(),
        0.0,
        require_fingerprint=True,
        validate=lambda m: m.xor_mapped_address is not None,
    )
    tx.handle_timeout(0.0)
    assert tx.handle_response(_response(key=None, fingerprint=False), 0.1) is None
    no_address = Message.decode(Message(1, MessageClass.SUCCESS, TID).encode(fingerprint=True))
    assert tx.handle_response(no_address, 0.1) is None
    outcome = tx.handle_response(_response(key=None), 0.1)
    assert outcome is not None and outcome.ok


def test_cancel() -> None:
    tx: ClientTransaction[None] = ClientTransaction(_request(), 0.0)
    tx.handle_timeout(0.0)
    outcome = tx.cancel()
    assert outcome is not None and outcome.state is TransactionState.CANCELLED
    assert tx.cancel() is None
    assert tx.next_wakeup() is None
    assert tx.handle_response(_response(key=None), 0.1) is None


def test_manager() -> None:
    mgr: TransactionManager[Address] = TransactionManager()
    assert mgr.next_wakeup() is None
    tid_a, tid_b = b"A" * 12, b"B" * 12
    first = mgr.start(_request(tid_a).encode(KEY), 0.0, key=KEY, context=("192.0.2.1", 3478))
    assert isinstance(first, Transmit) and first.context == ("192.0.2.1", 3478)
    assert Message.decode(first.data).transaction_id == tid_a
    mgr.start(_request(tid_b), 0.2, context=("192.0.2.2", 3478))
    assert len(mgr) == 2 and tid_a in mgr
    with pytest.raises(ValueError):
        mgr.start(_request(tid_a), 0.3)
    assert mgr.next_wakeup() == 0.5
    events = mgr.handle_timeout(0.5)
    assert [type(e) for e in events] == [Transmit]
    assert events[0].transaction.transaction_id == tid_a
    assert mgr.next_wakeup() == 0.7
    # b answered; a times out.
    outcome = mgr.handle_response(_response(tid=tid_b, key=None), 0.8)
    assert outcome is not None and outcome.ok and outcome.context == ("192.0.2.2", 3478)
    assert tid_b not in mgr
    assert mgr.handle_response(_response(tid=tid_b, key=None), 0.9) is None
    sends = 2  # the first send and the one at 0.5
    while (wake := mgr.next_wakeup()) is not None:
        for event in mgr.handle_timeout(wake):
            if isinstance(event, Transmit):
                sends += 1
            else:
                assert event.state is TransactionState.TIMED_OUT
                assert event.transaction_id == tid_a
                assert wake == 39.5
    assert sends == 7 and len(mgr) == 0


def test_manager_reliable_and_cancel() -> None:
    mgr: TransactionManager[None] = TransactionManager(reliable=True)
    mgr.start(_request(b"A" * 12), 0.0)
    mgr.start(_request(b"B" * 12), 1.0, reliable=False)
    mgr.start(_request(b"C" * 12), 1.0)
    assert mgr.next_wakeup() == 1.5
    cancelled = mgr.cancel(b"B" * 12)
    assert cancelled is not None and cancelled.state is TransactionState.CANCELLED
    assert mgr.cancel(b"B" * 12) is None
    assert mgr.next_wakeup() == 39.5
    assert [e.transaction_id for e in mgr.handle_timeout(39.5)] == [b"A" * 12]  # type: ignore[union-attr]
    assert len(mgr.cancel_all()) == 1
    assert len(mgr) == 0 and mgr.next_wakeup() is None

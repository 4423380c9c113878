"""The transport replay window (RFC 6479 ring bitmap, whitepaper §5.4.6)."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from p2ptun.wireguard.replay import REJECT_AFTER_MESSAGES, WINDOW_SIZE, ReplayWindow


def test_window_is_at_least_2048() -> None:
    assert WINDOW_SIZE >= 2048


def test_in_order_and_duplicates() -> None:
    w = ReplayWindow()
    for i in range(5000):
        assert w.check(i)
        assert w.accept(i)
        assert not w.accept(i)
        assert not w.check(i)
    assert w.greatest == 4999


def test_out_of_order_within_window() -> None:
    w = ReplayWindow()
    order = list(range(3000))
    random.Random(1).shuffle(order)
    # Every counter is within the window of the greatest (3000 < WINDOW_SIZE).
    for i in order:
        assert w.accept(i), i
    for i in order:
        assert not w.accept(i)


def test_too_old_is_rejected() -> None:
    w = ReplayWindow()
    assert w.accept(10_000)
    assert w.accept(10_000 - WINDOW_SIZE)  # exactly at the edge
    assert not w.accept(10_000 - WINDOW_SIZE - 1)
    assert not w.check(0)


def test_big_jump_clears_ring() -> None:
    w = ReplayWindow()
    for i in range(200):
        w.accept(i)
    assert w.accept(1_000_000)
    # Counters near the new head are fresh, even those whose ring slot held old bits.
    for i in range(1_000_000 - WINDOW_SIZE, 1_000_000, 97):
        assert w.accept(i)
    assert not w.accept(150)


def test_across_power_of_two_boundaries() -> None:
    for n in (6, 7, 12, 13, 32, 63):
        w = ReplayWindow()
        base = (1 << n) - 70
        seen = []
        for c in range(base, base + 140, 3):
            assert w.accept(c)
            seen.append(c)
        for c in range(base + 1, base + 140, 3):
            assert w.accept(c)
        for c in seen:
            assert not w.accept(c)


def test_limit() -> None:
    w = ReplayWindow()
    assert not w.accept(REJECT_AFTER_MESSAGES)
    assert w.accept(REJECT_AFTER_MESSAGES - 1)
    small = ReplayWindow(limit=10)
    assert small.accept(9) and not small.accept(10)


def test_zero_first() -> None:
    w = ReplayWindow()
    assert w.accept(0) and not w.accept(0)
    assert w.accept(1)


class _Reference:
    """A plain set-based model of the same window."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.greatest = 0

    def accept(self, c: int) -> bool:
        if c > self.greatest:
            self.greatest = c
        elif self.greatest - c > WINDOW_SIZE:
            return False
        if c in self.seen:
            return False
        self.seen.add(c)
        return True


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=40_000), max_size=300))
def test_matches_reference_model(counters: list[int]) -> None:
    w, ref = ReplayWindow(), _Reference()
    for c in counters:
        assert w.accept(c) == ref.accept(c)

"""Suspend detection from CLOCK_BOOTTIME - CLOCK_MONOTONIC growth."""

from __future__ import annotations

import time

from p2ptun.node.clockwatch import SuspendDetector


def test_no_jump_while_awake() -> None:
    d = SuspendDetector()
    assert d.sample(100.0, 1100.0) is None
    for i in range(1, 50):  # both clocks advance together, with sub-threshold noise
        assert d.sample(100.0 + 5 * i, 1100.0 + 5 * i + (0.01 if i % 2 else 0.0)) is None


def test_suspend_is_reported_once() -> None:
    d = SuspendDetector(threshold=3.0)
    d.sample(10.0, 10.0)
    assert d.sample(15.0, 15.0) is None
    assert d.sample(20.0, 620.0) == 600.0  # slept ten minutes between the samples
    assert d.sample(25.0, 625.0) is None


def test_just_below_threshold_is_ignored() -> None:
    d = SuspendDetector(threshold=3.0)
    d.sample(0.0, 0.0)
    assert d.sample(5.0, 7.9) is None


def test_real_clocks_show_no_suspend() -> None:
    d = SuspendDetector()
    assert d.sample(time.monotonic(), time.clock_gettime(time.CLOCK_BOOTTIME)) is None
    assert d.sample(time.monotonic(), time.clock_gettime(time.CLOCK_BOOTTIME)) is None

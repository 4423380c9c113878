"""The recovery section's arithmetic (p2plab.recovery): the longest gap of a ping stream
around an event, and the replies it reads from ``ping -D``."""

from __future__ import annotations

import pytest

from p2plab.recovery import EVENT_KEYS, longest_gap, main, reply_times


def test_longest_gap_counts_from_the_last_reply_before_the_event() -> None:
    replies = [9.9, 10.0, 11.3, 11.35, 11.4]
    assert longest_gap(replies, 10.02, 12.0) == pytest.approx(1.3)  # 10.0 -> 11.3
    # From the event itself (a wake-up): the replies before it do not count.
    assert longest_gap(replies, 10.02, 12.0, from_start=True) == pytest.approx(1.28)
    # Nothing after the event: dark until the end.
    assert longest_gap([1.0, 2.0], 2.5, 17.5) == pytest.approx(15.5)


def test_reply_times_reads_ping_d_replies_only() -> None:
    text = (
        "PING 10.77.0.2 (10.77.0.2) 56(84) bytes of data.\n"
        "[1780000000.123456] 64 bytes from 10.77.0.2: icmp_seq=1 ttl=64 time=1.23 ms\n"
        "[1780000000.173456] From 10.77.0.1 icmp_seq=2 Destination Host Unreachable\n"
        "[1780000000.223456] 64 bytes from 10.77.0.2: icmp_seq=3 ttl=64 time=1.10 ms\n"
    )
    assert reply_times(text) == [1780000000.123456, 1780000000.223456]


def test_an_unknown_event_is_one_clear_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--events", "sym-flush,meteor"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown events ['meteor']" in err and EVENT_KEYS[0] in err

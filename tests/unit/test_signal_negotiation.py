"""Offer/answer roles and the glare rule (docs/ARCHITECTURE.md §2), on the bare state machine."""

from __future__ import annotations

import pytest

from p2ptun.signal.negotiation import (
    Negotiation,
    NegotiationError,
    NegotiationState,
    Role,
    offer_wins,
)
from p2ptun.signal.seal import Answer, Bye, Candidates, Offer, Restart

SMALL = bytes([0x01] + [0xFF] * 31)
LARGE = bytes([0x02] + [0x00] * 31)


def test_smaller_raw_key_wins() -> None:
    assert offer_wins(SMALL, LARGE) and not offer_wins(LARGE, SMALL)
    # Raw bytes, not base64 text: '/' (63) sorts after 'A' (0) in value but before it in ASCII.
    import base64

    a, b = bytes([0xFC] + [0] * 31), bytes([0x00] * 32)
    assert base64.b64encode(a) < base64.b64encode(b)  # "/A..." < "AA..." in ASCII
    assert offer_wins(b, a)


def test_offerer_is_controlling_answerer_controlled() -> None:
    alice, bob = Negotiation(SMALL, LARGE), Negotiation(LARGE, SMALL)
    offer = Offer(1, "o")
    alice.on_send(offer)
    accepted = bob.on_receive(offer)
    assert accepted is not None and accepted.role is Role.CONTROLLED
    bob.on_send(Answer(1, "a"))
    accepted = alice.on_receive(Answer(1, "a"))
    assert accepted is not None and accepted.role is Role.CONTROLLING
    assert alice.state is bob.state is NegotiationState.ESTABLISHED


@pytest.mark.parametrize("kind", [Offer, Restart])
def test_glare_both_sides_agree(kind: type[Offer] | type[Restart]) -> None:
    small, large = Negotiation(SMALL, LARGE), Negotiation(LARGE, SMALL)
    small_offer, large_offer = kind(10, "s"), kind(20, "l")
    small.on_send(small_offer)
    large.on_send(large_offer)
    # Each receives the other's offer while its own is out.
    assert small.on_receive(large_offer) is None  # the small key's offer wins
    lost = large.on_receive(small_offer)
    assert lost is not None and lost.role is Role.CONTROLLED and lost.superseded == 20
    assert small.counters.glare_won == 1 and large.counters.glare_lost == 1
    large.on_send(Answer(10, "a"))
    won = small.on_receive(Answer(10, "a"))
    assert won is not None and won.role is Role.CONTROLLING
    assert small.session == large.session == 10


def test_stale_answers_and_candidates_are_dropped() -> None:
    n = Negotiation(SMALL, LARGE)
    n.on_send(Offer(5, "o"))
    assert n.on_receive(Answer(4, "old")) is None
    assert n.on_receive(Candidates(4, "old")) is None
    assert n.on_receive(Candidates(5, "c")) is not None
    assert n.counters.stale == 2


def test_duplicate_offer_is_dropped_and_new_offer_supersedes() -> None:
    n = Negotiation(LARGE, SMALL)
    assert n.on_receive(Offer(1, "o")) is not None
    assert n.on_receive(Offer(1, "o")) is None
    again = n.on_receive(Offer(2, "peer restarted"))
    assert again is not None and again.superseded == 1


def test_local_sends_are_checked() -> None:
    n = Negotiation(SMALL, LARGE)
    with pytest.raises(NegotiationError):
        n.on_send(Answer(1, "no offer"))
    with pytest.raises(NegotiationError):
        n.on_send(Candidates(1, "no session"))
    n.on_receive(Offer(3, "o"))
    with pytest.raises(NegotiationError):
        n.on_send(Answer(4, "wrong session"))
    n.on_send(Answer(3, "a"))
    n.on_send(Candidates(3, "c"))


def test_bye() -> None:
    n = Negotiation(SMALL, LARGE)
    n.on_send(Offer(3, "o"))
    assert n.on_receive(Bye(9, "other")) is None
    bye = n.on_receive(Bye(3, "done"))
    assert bye is not None and bye.superseded == 3
    assert n.state is NegotiationState.IDLE
    n.on_send(Offer(4, "o"))
    assert n.on_receive(Bye(0, "all")) is not None

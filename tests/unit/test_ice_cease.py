"""Once a direct pair is selected, the checks in flight on other pairs stop (RFC 8445 §8.1.2,
module docstring of :mod:`p2ptun.ice.agent`); a relayed selection keeps them. Virtual time
over the simulated network of :mod:`icesim`.
"""

from __future__ import annotations

import pytest
from icesim import Peer, make_scenario

from p2ptun.addr import Address
from p2ptun.ice.candidate import CandidateType
from p2ptun.ice.checklist import PairState
from p2ptun.ice.events import PairSelected
from p2ptun.stun import Message, MessageClass


def _watch_wakeups(peer: Peer) -> list[tuple[float, float | None, float | None]]:
    """After every pump of ``peer`` once a pair is selected: (now, the agent's next wake-up,
    the consent schedule's next wake-up)."""
    seen: list[tuple[float, float | None, float | None]] = []
    original = peer.pump

    def pump() -> None:
        original()
        sel = peer.agent._selection
        if sel is not None and sel.consent is not None:
            seen.append((peer.net.now, peer.agent.next_wakeup(), sel.consent.next_wakeup()))

    peer.pump = pump  # type: ignore[method-assign]
    return seen


def _selected_at(peer: Peer) -> float:
    return peer.events_of(PairSelected)[-1][0]


def _sent_elsewhere(peer: Peer, since: float) -> list[tuple[float, Address, Address]]:
    """What ``peer`` sent after ``since`` anywhere but on its selected pair."""
    sel = peer.agent.selected_pair
    assert sel is not None
    return [
        (t, tr.local, tr.remote)
        for t, tr in peer.sent
        if t > since
        and (tr.local, tr.remote, tr.via_relay) != (sel.base, sel.remote.address, sel.via_relay)
    ]


@pytest.mark.parametrize(
    ("nat_a", "nat_b", "same_lan"),
    [
        ("full", "full", False),
        ("port", "port", False),
        ("full", "port", False),
        ("public", "port", False),
        ("port", "port", True),
    ],
)
def test_direct_selection_stops_other_checks(nat_a: str, nat_b: str, same_lan: bool) -> None:
    """After selecting a direct pair neither side sends anything but on that pair (no
    retransmissions towards the other LAN's private address for the next 40 s), and its only
    timer is the consent schedule."""
    s = make_scenario(nat_a, nat_b, seed=7, same_lan=same_lan)
    wakeups = {p.name: _watch_wakeups(p) for p in (s.a, s.b)}
    s.start()
    assert s.net.run_while(s.connected, 20)
    s.net.run_until(s.net.now + 60)
    for peer in (s.a, s.b):
        sel = peer.agent.selected_pair
        assert sel is not None and not sel.relayed
        if same_lan:
            assert (sel.local.type, sel.remote.type) == (CandidateType.HOST, CandidateType.HOST)
        # The selection event is drained in the pump after the input that selected; anything
        # sent later than that input's network delay must be on the selected pair.
        since = _selected_at(peer)
        assert _sent_elsewhere(peer, since) == []
        assert len(peer.agent._checks) == 0
        assert not any(p.state is PairState.IN_PROGRESS for p in peer.agent.checklist.pairs)
        settled = [(t, w, c) for t, w, c in wakeups[peer.name] if t > since]
        assert settled
        assert all(w == c for _, w, c in settled), settled[:5]
        assert peer.agent.can_send()
    assert s.same_path()
    if not same_lan and nat_a != "public":
        # The host pair towards B's LAN was in progress when A nominated, and was abandoned.
        host = s.a.agent.checklist.find(s.a.endpoint.address, s.b.endpoint.address)
        assert host is not None and host.state is PairState.FAILED
        assert s.a.agent.stats.checks_ceased >= 1
        sends = [t for t, tr in s.a.sent if (tr.local, tr.remote) == host.key]
        assert len(sends) >= 2  # the nomination hold still had it sent twice
        assert max(sends) <= _selected_at(s.a)


def test_relayed_selection_keeps_direct_checks_and_retries() -> None:
    """With the sites firewalled from each other a relayed pair is selected; the direct checks
    in flight go on retransmitting after that (until their transactions time out), failed
    ones are retried, and when the firewall opens the move to the direct pair ends every
    other check."""
    s = make_scenario("port", "port", seed=8)
    sites = {"198.51.100.1", "203.0.113.1"}
    s.net.blocked = lambda src, dst: src[0] in sites and dst[0] in sites
    s.start()
    assert s.net.run_while(s.connected, 20)
    sel = s.a.agent.selected_pair
    assert sel is not None and sel.relayed
    sel_at = _selected_at(s.a)
    s.net.run_until(sel_at + 4.0)
    direct_after = [
        t for t, tr in s.a.sent if t > sel_at and not tr.via_relay and tr.remote[0] in sites
    ]
    assert direct_after  # retransmissions of direct checks, before any retry round
    assert s.a.agent.stats.checks_ceased == 0
    s.net.run_until(sel_at + 80.0)  # the checks time out at 39.5 s; retried at +75 s
    assert max(p.retries for p in s.a.agent.checklist.pairs if not p.relayed) >= 1
    s.net.blocked = None
    assert s.net.run_while(
        lambda: all(
            (sp := p.agent.selected_pair) is not None and not sp.relayed for p in (s.a, s.b)
        ),
        60,
    )
    moved = max(_selected_at(p) for p in (s.a, s.b))
    s.net.run_until(s.net.now + 60)
    for peer in (s.a, s.b):
        assert _sent_elsewhere(peer, moved) == []
        assert len(peer.agent._checks) == 0
        assert peer.agent._gen.next_probe is None
    assert s.same_path()


def test_late_answer_after_cessation_is_harmless() -> None:
    """Same LAN, but everything B's host address sends to A is held back until after A
    selected the hairpinned pair: the answers to A's host checks then arrive for abandoned
    transactions and are ignored; B's held checks on the host pair trigger fresh checks that
    succeed, and the selection stays (regular nomination happens once)."""
    s = make_scenario("full", "full", seed=9, same_lan=True)
    a_host, b_host = s.a.endpoint.address, s.b.endpoint.address
    held: list[tuple[Address, object]] = []
    deliver = s.a.endpoint.handler
    assert deliver is not None
    releasing = False

    def handler(src: Address, payload: object) -> None:
        if src == b_host and not releasing:
            held.append((src, payload))
            return
        deliver(src, payload)

    s.a.endpoint.handler = handler
    s.start()
    assert s.net.run_while(s.connected, 20)
    sel = s.a.agent.selected_pair
    assert sel is not None and not sel.relayed
    assert (sel.base, sel.remote.address) != (a_host, b_host)
    s.net.run_until(s.net.now + 1.0)
    late = [
        m
        for _, m in held
        if isinstance(m, bytes) and Message.decode(m).message_class is MessageClass.SUCCESS
    ]
    assert late  # B answered A's host checks; A has not seen it yet
    assert s.a.agent.stats.checks_ceased >= 1
    unknown = s.a.agent.stats.unknown_responses
    releasing = True
    for src, payload in held:
        deliver(src, payload)
    assert s.a.agent.stats.unknown_responses >= unknown + len(late)
    s.net.run_until(s.net.now + 60)
    after = s.a.agent.selected_pair
    assert after is not None and (after.base, after.remote) == (sel.base, sel.remote)
    for peer in (s.a, s.b):
        assert len(peer.events_of(PairSelected)) == 1
        assert peer.agent.can_send()
        assert len(peer.agent._checks) == 0
    assert s.same_path()
    host = s.a.agent.checklist.find(a_host, b_host)
    assert host is not None and host.state is PairState.SUCCEEDED

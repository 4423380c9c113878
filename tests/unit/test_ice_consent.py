"""Consent freshness (RFC 7675), ICE restart (RFC 8445 §9) and the move from a relayed to a
direct pair, under virtual time."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable

import pytest
from icesim import Scenario, make_scenario

from p2ptun.addr import Address
from p2ptun.ice.agent import AgentConfig
from p2ptun.ice.consent import ConsentConfig, ConsentFreshness, ConsentState
from p2ptun.ice.events import (
    AgentState,
    BetterPairAvailable,
    ConsentExpired,
    ConsentLost,
    ConsentRestored,
    ConsentSuspect,
    PairSelected,
    StandbyReady,
)
from p2ptun.stun import AttrType, Message, Method, short_term_key

KEY = short_term_key("consentpasswordconsentpassword")


def _request(tid: bytes) -> bytes:
    msg = Message.request(Method.BINDING, tid, [(AttrType.PRIORITY, 1)])
    return msg.encode(KEY, fingerprint=True)


def _drive(c: ConsentFreshness, until: float, answer: bool) -> tuple[list[float], list[float]]:
    """Run a ConsentFreshness alone; returns (check times, retransmission times)."""
    checks: list[float] = []
    retx: list[float] = []
    n = 0
    now = 0.0
    while True:
        wake = c.next_wakeup()
        if wake is None or wake > until:
            break
        now = wake
        poll = c.poll(now)
        retx += [now] * len(poll.retransmits)
        if poll.check_due:
            n += 1
            tid = n.to_bytes(12, "big")
            c.start(_request(tid), KEY, now)
            checks.append(now)
            if answer:
                resp = Message(Method.BINDING, Message.decode(_request(tid)).message_class, tid)
                reply = Message.decode(_request(tid)).success(
                    [(AttrType.XOR_MAPPED_ADDRESS, ("192.0.2.1", 1))]
                )
                del resp
                assert c.handle_response(Message.decode(reply.encode(KEY)), now + 0.01)
    return checks, retx


# --- ConsentFreshness alone -------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_consent_interval_is_randomised_between_4_and_6_seconds(seed: int) -> None:
    c = ConsentFreshness(0.0, random.Random(seed))
    checks, retx = _drive(c, 300.0, answer=True)
    gaps = [b - a for a, b in itertools.pairwise(checks)]
    assert len(checks) > 50
    assert all(4.0 <= g <= 6.0 for g in gaps)
    assert max(gaps) - min(gaps) > 0.5  # really randomised
    assert retx == []
    assert c.state is ConsentState.FRESH


def test_consent_retransmits_and_expires_30s_after_last_response() -> None:
    c = ConsentFreshness(0.0, random.Random(3), last_response=0.0)
    checks, retx = _drive(c, 100.0, answer=False)
    assert c.state is ConsentState.EXPIRED
    assert c.expires_at == 30.0
    assert all(t < 30.0 for t in checks + retx)
    # Each check is retransmitted (RFC 8489 RTO doubling from 500 ms).
    first = checks[0]
    mine = [t - first for t in retx if first < t < first + 16]
    retx = [t - first for t in retx]
    assert mine[:3] == pytest.approx([0.5, 1.5, 3.5])  # before the second check is due
    assert any(abs(t - 7.5) < 1e-9 for t in mine) and any(abs(t - 15.5) < 1e-9 for t in retx)
    assert c.next_wakeup() is None


def test_consent_suspect_after_two_unanswered_checks_then_restored() -> None:
    c = ConsentFreshness(0.0, random.Random(4), config=ConsentConfig(jitter=0.0))
    became: list[tuple[float, ConsentState | None]] = []
    now = 0.0
    tids: list[bytes] = []
    while now < 16:
        wake = c.next_wakeup()
        assert wake is not None
        now = wake
        poll = c.poll(now)
        if poll.became is not None:
            became.append((now, poll.became))
        if poll.check_due:
            tid = (len(tids) + 1).to_bytes(12, "big")
            tids.append(tid)
            c.start(_request(tid), KEY, now)
    # Checks at 5, 10, 15: the one at 5 is found unanswered at 10, the one at 10 at 15.
    assert became == [(15.0, ConsentState.SUSPECT)]
    reply = Message.decode(_request(tids[-1])).success()
    assert c.handle_response(Message.decode(reply.encode(KEY)), 15.2)
    assert c.state is ConsentState.FRESH and c.missed == 0
    assert c.expires_at == pytest.approx(45.2)


def test_consent_ignores_unauthenticated_responses() -> None:
    c = ConsentFreshness(0.0, random.Random(4))
    wake = c.next_wakeup()
    assert wake is not None
    assert c.poll(wake).check_due
    tid = b"\x01" * 12
    c.start(_request(tid), KEY, wake)
    forged = Message.decode(_request(tid)).success().encode(short_term_key("wrong"))
    assert c.handle_response(Message.decode(forged), wake + 0.1) is False
    assert c.last_response == 0.0
    other = Message.decode(_request(b"\x02" * 12)).success().encode(KEY)
    assert c.handle_response(Message.decode(other), wake + 0.1) is None


# --- consent in the agents ----------------------------------------------------------------------


def _connected(nat_a: str = "port", nat_b: str = "port", **kw: object) -> Scenario:
    s = make_scenario(nat_a, nat_b, **kw)  # type: ignore[arg-type]
    s.start()
    assert s.net.run_while(s.connected, 20)
    return s


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_consent_expires_exactly_30s_after_last_response_when_path_dies(seed: int) -> None:
    s = _connected(seed=seed)
    s.net.run_until(s.net.now + 20)  # consent keeps the pair alive meanwhile
    assert s.a.agent.can_send() and s.b.agent.can_send()
    died = s.net.now
    s.net.blocked = lambda src, dst: True
    s.net.run_until(died + 40)
    for peer in (s.a, s.b):
        (t_exp, expired), *rest = peer.events_of(ConsentExpired)
        assert rest == []
        assert expired.last_response <= died
        assert expired.last_response > died - 6.5
        assert t_exp == pytest.approx(expired.last_response + 30.0, abs=1e-9)
        suspects = peer.events_of(ConsentSuspect)
        assert len(suspects) == 1
        t_sus, sus = suspects[0]
        assert sus.missed == 2
        assert expired.last_response < t_sus < t_exp
        assert not peer.agent.can_send()
        assert not peer.send_data()
        assert peer.agent.state is AgentState.FAILED
        # States went CONNECTED/COMPLETED -> DISCONNECTED -> FAILED.
        states = [e.state for _, e in peer.events if hasattr(e, "state")]
        assert states[-2:] == [AgentState.DISCONNECTED, AgentState.FAILED]
    # No consent checks once consent expired (RFC 7675 §5.2).
    sent_after = [t for t, _ in s.a.sent if t > s.a.events_of(ConsentExpired)[0][0]]
    assert sent_after == []


def test_can_send_turns_false_at_expiry_even_before_the_timer_runs() -> None:
    s = _connected(seed=5)
    s.net.blocked = lambda src, dst: True
    sel = s.a.agent._selection
    assert sel is not None and sel.consent is not None
    expiry = sel.consent.expires_at
    assert s.a.agent.can_send(expiry - 1e-6)
    assert not s.a.agent.can_send(expiry)


def test_consent_suspect_then_restored_when_path_recovers() -> None:
    s = _connected(seed=6)
    t0 = s.net.now
    s.net.blocked = lambda src, dst: True
    assert s.net.run_while(lambda: bool(s.a.events_of(ConsentSuspect)), 25)
    assert s.a.agent.state is AgentState.DISCONNECTED
    assert s.a.agent.can_send()
    s.net.blocked = None
    assert s.net.run_while(lambda: bool(s.a.events_of(ConsentRestored)), 10)
    assert s.a.agent.can_send()
    assert s.a.agent.state in (AgentState.CONNECTED, AgentState.COMPLETED)
    assert s.net.now - t0 < 30
    s.net.run_until(s.net.now + 60)
    assert s.a.events_of(ConsentExpired) == []


# --- ICE restart ----------------------------------------------------------------------------------


def _sample_can_send(s: Scenario, log: list[tuple[float, bool, bool]], until: float) -> None:
    def tick() -> None:
        log.append((s.net.now, s.a.agent.can_send(s.net.now), s.b.agent.can_send(s.net.now)))
        s.a.send_data(b"DATA-a")
        if s.net.now < until:
            s.net.schedule(s.net.now + 0.01, tick)

    tick()


@pytest.mark.parametrize(("nat_a", "nat_b"), [("port", "port"), ("symmetric", "symmetric")])
def test_restart_is_make_before_break(nat_a: str, nat_b: str) -> None:
    s = _connected(nat_a, nat_b, seed=8)
    s.net.run_until(s.net.now + 3)
    old_a = s.a.agent.selected_pair
    assert old_a is not None and old_a.generation == 0
    log: list[tuple[float, bool, bool]] = []
    t0 = s.net.now
    _sample_can_send(s, log, t0 + 15)
    s.a.initiate_restart()
    assert s.net.run_while(
        lambda: all(
            (sp := p.agent.selected_pair) is not None and sp.generation == 1 for p in (s.a, s.b)
        ),
        15,
    )
    s.net.run_until(t0 + 15)
    assert all(a and b for _, a, b in log), "a gap in can_send during the restart"
    for peer in (s.a, s.b):
        selected = peer.events_of(PairSelected)
        _, ev = selected[-1]
        assert ev.previous is not None and ev.previous.generation == 0
        assert ev.pair.generation == 1
    # Data kept arriving all along: no gap longer than a few sampling periods.
    times = [t for t, d in s.b.data_received if t >= t0]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert times and max(gaps) < 0.1
    assert s.a.agent.generation == 1 and s.b.agent.generation == 1
    s.net.run_until(s.net.now + 60)
    assert s.a.agent.can_send() and s.b.agent.can_send()
    assert s.a.violations == [] and s.b.violations == []


def test_restart_after_consent_expiry_reconnects() -> None:
    s = _connected(seed=9)
    s.net.blocked = lambda src, dst: True
    s.net.run_until(s.net.now + 40)
    assert s.a.agent.state is AgentState.FAILED
    s.net.blocked = None
    s.a.initiate_restart()
    assert s.net.run_while(s.connected, 20)
    sel = s.a.agent.selected_pair
    assert sel is not None and sel.generation == 1
    assert s.a.agent.state in (AgentState.CONNECTED, AgentState.COMPLETED)


# --- relayed, then a direct pair becomes possible ----------------------------------------------


def _firewall_between_sites(src: tuple[str, int], dst: tuple[str, int]) -> bool:
    sites = {"198.51.100.1", "203.0.113.1"}
    return src[0] in sites and dst[0] in sites


@pytest.mark.parametrize("seed", [1, 2])
def test_relay_then_firewall_opens_moves_to_direct(seed: int) -> None:
    config = AgentConfig(direct_retry_interval=3.0)
    s = make_scenario("port", "port", seed=seed, config_a=config, config_b=config)
    s.net.blocked = _firewall_between_sites
    s.start()
    assert s.net.run_while(s.connected, 20)
    sel = s.a.agent.selected_pair
    assert sel is not None and sel.relayed
    s.net.run_until(s.net.now + 5)
    log: list[tuple[float, bool, bool]] = []
    t_open = s.net.now
    _sample_can_send(s, log, t_open + 60)
    s.net.blocked = None
    assert s.net.run_while(
        lambda: all(
            (sp := p.agent.selected_pair) is not None and not sp.relayed for p in (s.a, s.b)
        ),
        60,
    )
    assert s.same_path()
    assert s.a.events_of(BetterPairAvailable)
    t_better = s.a.events_of(BetterPairAvailable)[0][0]
    assert t_better > t_open
    for peer in (s.a, s.b):
        _, ev = peer.events_of(PairSelected)[-1]
        assert ev.previous is not None and ev.previous.relayed and not ev.pair.relayed
    s.net.run_until(t_open + 60)
    assert all(a and b for _, a, b in log)
    assert s.a.violations == [] and s.b.violations == []


def test_without_renomination_better_pair_is_only_reported() -> None:
    config = AgentConfig(direct_retry_interval=3.0, renominate=False)
    s = make_scenario("port", "port", seed=3, config_a=config, config_b=config)
    s.net.blocked = _firewall_between_sites
    s.start()
    assert s.net.run_while(s.connected, 20)
    s.net.run_until(s.net.now + 5)
    s.net.blocked = None
    assert s.net.run_while(lambda: bool(s.a.events_of(BetterPairAvailable)), 60)
    s.net.run_until(s.net.now + 5)
    sel = s.a.agent.selected_pair
    assert sel is not None and sel.relayed
    _, ev = s.a.events_of(BetterPairAvailable)[0]
    assert ev.current.relayed
    assert ev.pair.local.type is not ev.pair.local.type.RELAY


def test_direct_retries_are_bounded() -> None:
    config = AgentConfig(direct_retry_interval=2.0, direct_retry_rounds=3, check_rc=2, check_rm=2)
    s = make_scenario("port", "port", seed=4, config_a=config, config_b=config)
    s.net.blocked = _firewall_between_sites
    s.start()
    assert s.net.run_while(s.connected, 20)
    s.net.run_until(s.net.now + 120)
    for peer in (s.a, s.b):
        retries = [p.retries for p in peer.agent.checklist.pairs if not p.relayed]
        assert retries and max(retries) <= 3
        assert peer.agent._gen.next_probe is None
    # Still relayed and fine.
    assert s.a.agent.can_send() and s.b.agent.can_send()


# --- the two directions' consent checks share wake-ups ------------------------------------------


def test_peer_check_brings_our_check_forward_only_within_the_window() -> None:
    c = ConsentFreshness(0.0, random.Random(1))
    assert not c.peer_checked(3.9)  # sooner than 0.8 × 5 s after the last check: no
    assert c.poll(3.9).check_due is False
    assert c.peer_checked(4.0)
    assert c.next_wakeup() == 4.0
    assert c.poll(4.0).check_due
    c.start(_request(b"x" * 12), KEY, 4.0)
    assert not c.peer_checked(4.1)  # the next one is 4 s away again
    assert c._next_check is not None and 8.0 <= c._next_check <= 10.0


def _requests(peer: object, start: float, end: float) -> list[float]:
    times = []
    for t, tx in peer.sent:  # type: ignore[attr-defined]
        if start <= t < end and Message.decode(tx.data).message_class.name == "REQUEST":
            times.append(t)
    return times


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_consent_checks_of_both_sides_go_out_together(seed: int) -> None:
    """Each side answers the other's consent check and sends its own with the answer, so an
    idle node wakes twice per round (its request or the peer's, and the response) instead of
    three times; every gap between one side's checks stays within 4–6 s (RFC 7675 §5.1)."""
    s = make_scenario("port", "port", seed=seed)
    s.b.agent._rng = random.Random(seed + 1000)  # the two sides' jitter differs, as in life
    s.start()
    assert s.net.run_while(s.connected, 20)
    start = s.net.now + 45.0  # after the last retransmissions of the connectivity checks
    s.net.run_until(start + 120.0)
    a, b = _requests(s.a, start, start + 120.0), _requests(s.b, start, start + 120.0)
    assert len(a) > 15 and len(b) > 15
    for own in (a, b):
        assert all(4.0 <= y - x <= 6.0 for x, y in itertools.pairwise(own))
    one_way = s.net.delay + 0.001
    for mine, theirs in ((a, b), (b, a)):
        for t in mine:
            assert any(abs(t - u) <= one_way for u in theirs), t
    assert s.a.agent.can_send() and s.b.agent.can_send()


def test_direct_retries_back_off_while_relayed() -> None:
    """While relayed, failed direct pairs are retried 5 s after selection, then at doubling
    intervals up to 160 s, 8 rounds in all: an idle relayed node soon stops waking for them."""
    s = make_scenario("port", "port", seed=5)
    s.net.blocked = _firewall_between_sites
    s.start()
    assert s.net.run_while(s.connected, 20)
    sel_at = s.a.events_of(PairSelected)[0][0]
    probes: list[float] = []
    while s.net.now < sel_at + 900:
        s.net.run_until(s.net.now + 0.5)
        nxt = s.a.agent._gen.next_probe
        if nxt is not None and (not probes or probes[-1] != nxt - sel_at):
            probes.append(nxt - sel_at)
    expected = [5, 15, 35, 75, 155, 315, 475, 635]
    assert len(probes) == len(expected)
    assert all(abs(p - e) < 0.01 for p, e in zip(probes, expected, strict=True)), probes
    assert max(p.retries for p in s.a.agent.checklist.pairs if not p.relayed) >= 1
    assert s.a.agent._gen.next_probe is None
    assert s.a.agent.can_send() and s.b.agent.can_send()


# --- fast failure detection: the probe ------------------------------------------------------------


def test_probe_sends_a_bounded_burst_and_reports_lost_at_the_end_of_its_window() -> None:
    c = ConsentFreshness(0.0, random.Random(2))
    assert c.next_wakeup() is not None and c.next_wakeup() >= 4.0  # type: ignore[operator]
    assert c.probe(1.0, rtt=0.2)  # window max(0.3, 3 x 0.2) = 0.6 s
    assert not c.probe(1.1, rtt=0.2)  # one probe at a time
    sent: list[float] = []
    became: list[tuple[float, ConsentState | None]] = []
    for _ in range(20):  # bounded
        wake = c.next_wakeup()
        assert wake is not None
        if wake > 2.0:
            break
        poll = c.poll(wake)
        if poll.check_due:
            c.start(_request(len(sent).to_bytes(12, "big")), KEY, wake)
            sent.append(wake)
        if poll.became is not None:
            became.append((wake, poll.became))
    assert sent == pytest.approx([1.0, 1.2, 1.4])  # probe_checks = 3, spread over the window
    assert became == [(pytest.approx(1.6), ConsentState.LOST)]
    assert c.state is ConsentState.LOST and not c.probing and c.probes == 1
    assert c.expires_at == 30.0  # consent itself still runs to its RFC 7675 timeout


def test_an_answered_probe_ends_at_once_and_a_late_answer_restores_a_lost_pair() -> None:
    c = ConsentFreshness(0.0, random.Random(3))
    assert c.probe(1.0, rtt=None)  # window 0.3 s
    poll = c.poll(1.0)
    assert poll.check_due
    c.start(_request(b"p" * 12), KEY, 1.0)
    reply = Message.decode(_request(b"p" * 12)).success(
        [(AttrType.XOR_MAPPED_ADDRESS, ("192.0.2.1", 1))]
    )
    assert c.handle_response(Message.decode(reply.encode(KEY)), 1.05)
    assert not c.probing and c.state is ConsentState.FRESH
    assert c.poll(1.4).became is None  # no LOST after an answer
    # An unanswered probe: LOST; a response later makes the pair FRESH again.
    assert c.probe(2.0, rtt=None)
    for t in (2.0, 2.1, 2.2, 2.3):
        if c.poll(t).check_due:
            c.start(_request(int(t * 10).to_bytes(12, "big")), KEY, t)
    assert c.state is ConsentState.LOST
    late = Message.decode(_request(int(2.2 * 10).to_bytes(12, "big"))).success(
        [(AttrType.XOR_MAPPED_ADDRESS, ("192.0.2.1", 1))]
    )
    assert c.handle_response(Message.decode(late.encode(KEY)), 2.5)
    assert c.state is ConsentState.FRESH


def test_an_optional_probe_is_held_off_after_a_probe_and_an_urgent_one_is_not() -> None:
    c = ConsentFreshness(0.0, random.Random(4))  # probe_holdoff = 5 s
    assert c.probe(1.0, rtt=None, urgent=False)  # the first optional probe runs
    for t in (1.0, 1.1, 1.2, 1.3):
        if c.poll(t).check_due:
            c.start(_request(int(t * 10).to_bytes(12, "big")), KEY, t)
    assert not c.probing
    # Data stopped arriving again 2 s later (a bursty flow): held off, nothing is sent.
    assert not c.probe(3.0, rtt=None, urgent=False)
    assert c.probes_held_off == 1 and not c.probing and c.probes == 1
    # Data left unanswered is never held off.
    assert c.probe(3.5, rtt=None, urgent=True)
    for t in (3.5, 3.6, 3.7, 3.8):
        if c.poll(t).check_due:
            c.start(_request(int(t * 10).to_bytes(12, "big")), KEY, t)
    # The holdoff counts from the latest probe of either kind.
    assert not c.probe(8.4, rtt=None, urgent=False)
    assert c.probe(8.5, rtt=None, urgent=False)
    assert (c.probes, c.probes_held_off) == (3, 2)


def test_agent_probe_reports_consent_lost_within_the_window_and_not_on_a_live_pair() -> None:
    s = _connected("full", "full", seed=7)
    s.net.run_until(s.net.now + 2)
    # A live pair: the probe is answered, nothing is lost.
    assert s.a.agent.probe_consent(s.net.now)
    s.a.pump()
    s.net.run_until(s.net.now + 1)
    assert s.a.events_of(ConsentLost) == []
    # The path dies: the probe's checks go unanswered and ConsentLost follows at the end of
    # the window (0.3 s: the simulated round trip is short), long before suspicion (~10 s).
    s.net.blocked = lambda src, dst: True
    t0 = s.net.now
    assert s.a.agent.probe_consent(t0)
    s.a.pump()
    assert s.net.run_while(lambda: bool(s.a.events_of(ConsentLost)), 2)
    (t_lost, _), *_ = s.a.events_of(ConsentLost)
    assert t_lost - t0 == pytest.approx(0.3, abs=0.02)
    assert s.a.agent.state is AgentState.DISCONNECTED and s.a.agent.can_send()
    assert s.a.events_of(ConsentSuspect) == []


def test_standby_relayed_pair_stays_valid_beside_the_direct_one() -> None:
    config = AgentConfig(standby=True, standby_interval=10.0)
    s = make_scenario("full", "full", seed=8, config_a=config, config_b=config)
    s.start()
    assert s.net.run_while(s.connected, 20)
    sel = s.a.agent.selected_pair
    assert sel is not None and not sel.relayed
    assert s.net.run_while(lambda: s.a.agent.standby_pair(s.net.now) is not None, 10)
    standby = s.a.agent.standby_pair(s.net.now)
    assert standby is not None and standby.relayed
    assert s.a.events_of(StandbyReady)
    # Kept fresh by light checks: still there a minute later, at about one check per 10 s.
    before = s.a.agent.stats.consent_checks_sent
    start = s.net.now
    s.net.run_until(start + 60)
    assert s.a.agent.standby_pair(s.net.now) is not None
    checks = s.a.agent.stats.consent_checks_sent - before
    assert 16 <= checks <= 22  # 12 consent checks (5 s) + 6 standby checks (10 s), roughly
    # The standby's checks ride on the consent checks' wake-ups: they go at the same moments.
    requests = [
        (t, tx.remote)
        for t, tx in s.a.sent
        if t >= start and Message.decode(tx.data).message_class.name == "REQUEST"
    ]
    consent_at = {t for t, remote in requests if remote == sel.remote.address}
    standby_at = [t for t, remote in requests if remote == standby.remote.address]
    assert len(standby_at) >= 5
    assert sum(t in consent_at for t in standby_at) >= len(standby_at) - 1, requests
    # The direct path dies: the standby is unaffected (it goes through the relay).
    s.net.blocked = _firewall_between_direct_addresses(s)
    assert s.a.agent.probe_consent(s.net.now)
    s.a.pump()
    assert s.net.run_while(lambda: bool(s.a.events_of(ConsentLost)), 2)
    assert s.a.agent.standby_pair(s.net.now) is not None


def test_without_standby_no_relayed_pair_is_kept() -> None:
    s = make_scenario("full", "full", seed=8)
    s.start()
    assert s.net.run_while(s.connected, 20)
    s.net.run_until(s.net.now + 15)
    assert s.a.agent.standby_pair(s.net.now) is None
    assert s.a.events_of(StandbyReady) == []


def _firewall_between_direct_addresses(s: Scenario) -> Callable[[Address, Address], bool]:
    sites = {"198.51.100.1", "203.0.113.1"}
    return lambda src, dst: src[0] in sites and dst[0] in sites

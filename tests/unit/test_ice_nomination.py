"""When the controlling agent nominates (RFC 8445 §8.1.1, and the hold described in
:mod:`p2ptun.ice.nomination`), under virtual time over the simulated network of :mod:`icesim`.

A relayed best pair waits ``nomination_delay`` for anything better; a direct one waits for a
higher-priority pair only until that pair's check went out twice (the second time early) and
a few round trips passed: a reachable pair (same LAN, public host) answers by then, and one
towards the other site's private address never does.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from icesim import Nomination, Scenario, make_scenario, watch_nominations

from p2ptun.ice.agent import AgentConfig
from p2ptun.ice.candidate import (
    Candidate,
    CandidateType,
    make_host_candidate,
    make_relay_candidate,
    make_srflx_candidate,
)
from p2ptun.ice.checklist import CheckList, CheckPair, PairState
from p2ptun.ice.events import PairSelected
from p2ptun.ice.nomination import (
    NominationPolicy,
    RoleConflict,
    resolve_role_conflict,
    role_after_conflict_response,
    role_facing,
)

EPS = 1e-9


def assert_hold_kept(noms: list[Nomination], config: AgentConfig) -> None:
    """Every regular nomination waited as long as the rule says: till ``nomination_delay``,
    or until no higher-priority pair could still answer (direct: each was sent at least
    twice, or is done; relayed: none is left)."""
    for n in noms:
        if n.renomination:
            continue
        assert n.first_valid_at is not None
        if n.at >= n.first_valid_at + config.nomination_delay - EPS:
            continue
        for key, state, sends in n.higher:
            if n.relayed:
                assert state in (PairState.FAILED, PairState.SUCCEEDED), (n, key)
            else:
                assert state in (PairState.FAILED, PairState.SUCCEEDED) or (
                    state is PairState.IN_PROGRESS and sends >= 2
                ), (n, key)


def connect(s: Scenario, timeout: float = 20.0) -> tuple[list[Nomination], list[Nomination]]:
    noms = (watch_nominations(s.a), watch_nominations(s.b))
    s.start()
    assert s.net.run_while(s.connected, timeout), (s.a.agent.checklist.pairs,)
    return noms


@pytest.mark.parametrize(
    ("nat_a", "nat_b"),
    [("full", "full"), ("restricted", "restricted"), ("port", "port"), ("full", "port")],
)
def test_cone_nats_nominate_srflx_after_a_short_hold(nat_a: str, nat_b: str) -> None:
    """The host↔host pair towards the other LAN never answers; srflx↔srflx is nominated two
    holds after that pair's first check (its early re-send, then the hold), not
    ``nomination_delay`` after the first valid pair."""
    config = AgentConfig()
    s = make_scenario(nat_a, nat_b, seed=3, config_a=config, config_b=config)
    noms, _ = connect(s)
    sel = s.a.agent.selected_pair
    assert sel is not None
    assert (sel.local.type, sel.remote.type) == (CandidateType.SRFLX, CandidateType.SRFLX)
    (nom,) = noms
    assert nom.higher and all(state is PairState.IN_PROGRESS for _, state, _ in nom.higher)
    host_pair = s.a.agent.checklist.find(s.a.endpoint.address, s.b.endpoint.address)
    # Given up on, then abandoned once the srflx pair was selected (RFC 8445 §8.1.2).
    assert host_pair is not None and host_pair.state is PairState.FAILED
    assert host_pair.sends >= 2
    first_host_check = min(
        t for t, tr in s.a.sent if (tr.local, tr.remote) == host_pair.key and not tr.via_relay
    )
    assert sel.rtt is not None
    hold = max(config.direct_hold_min, config.direct_hold_rtts * sel.rtt)
    assert nom.at <= first_host_check + 2 * hold + config.ta + EPS
    assert nom.first_valid_at is not None
    assert nom.at < nom.first_valid_at + config.nomination_delay / 2
    assert_hold_kept(noms, config)


def test_same_lan_ends_on_host_pair() -> None:
    s = make_scenario("port", "port", seed=4, same_lan=True)
    noms, _ = connect(s)
    sa, sb = s.a.agent.selected_pair, s.b.agent.selected_pair
    assert sa is not None and sb is not None
    assert sa.local.type is CandidateType.HOST and sa.remote.type is CandidateType.HOST
    assert sb.local.type is CandidateType.HOST and sb.remote.type is CandidateType.HOST
    assert s.same_path()
    assert_hold_kept(noms, AgentConfig())


def test_same_lan_host_pair_answering_late_still_wins() -> None:
    """B's traffic on the LAN towards A is lost until 0.2 s (A's first check is answered into
    the void, B's own checks vanish), so the hairpinned srflx pair is valid first. A re-sends
    its host check early, before the RTO, gets the answer within the hold and nominates the
    host pair."""
    s = make_scenario("full", "full", seed=5, same_lan=True)
    a_host, b_host = s.a.endpoint.address, s.b.endpoint.address
    s.net.blocked = lambda src, dst: src == b_host and dst == a_host and s.net.now < 0.2
    noms, _ = connect(s)
    sa = s.a.agent.selected_pair
    assert sa is not None
    assert (sa.local.type, sa.remote.type) == (CandidateType.HOST, CandidateType.HOST)
    assert s.same_path()
    host_pair = s.a.agent.checklist.find(a_host, b_host)
    assert host_pair is not None and host_pair.last_success is not None
    first_valid = s.a.agent._gen.first_valid_at
    assert first_valid is not None and first_valid < host_pair.last_success
    # Answered before its RTO: the early re-send did it.
    first_check = min(t for t, tr in s.a.sent if (tr.local, tr.remote) == host_pair.key)
    assert host_pair.last_success < first_check + AgentConfig().check_rto_min
    (nom,) = noms
    assert nom.key == host_pair.key
    assert_hold_kept(noms, AgentConfig())


@pytest.mark.parametrize(("nat_a", "nat_b"), [("port", "symmetric"), ("symmetric", "symmetric")])
def test_relayed_pair_waits_the_full_delay(nat_a: str, nat_b: str) -> None:
    """A relayed pair is nominated ``nomination_delay`` after the first valid pair while
    direct pairs are still in progress, as before."""
    config = AgentConfig()
    s = make_scenario(nat_a, nat_b, seed=6)
    noms, _ = connect(s)
    sel = s.a.agent.selected_pair
    assert sel is not None and sel.relayed
    first = next(n for n in noms if not n.renomination)
    assert first.relayed
    assert first.first_valid_at is not None
    assert first.at >= first.first_valid_at + config.nomination_delay - EPS
    assert any(state is PairState.IN_PROGRESS for _, state, _ in first.higher)
    assert_hold_kept(noms, config)


@pytest.mark.parametrize(("nat_a", "nat_b"), [("port", "symmetric"), ("symmetric", "symmetric")])
def test_relay_first_nominates_a_relayed_pair_at_its_first_valid_check(
    nat_a: str, nat_b: str
) -> None:
    """With ``relay_first`` (the node's agents) a relayed best pair carries data at once: it
    is nominated the moment it becomes valid, direct pairs still in progress or not."""
    config = AgentConfig(relay_first=True)
    s = make_scenario(nat_a, nat_b, seed=6, config_a=config, config_b=config)
    noms, _ = connect(s)
    sel = s.a.agent.selected_pair
    assert sel is not None and sel.relayed
    first = next(n for n in noms if not n.renomination)
    assert first.relayed and first.first_valid_at is not None
    assert first.at == pytest.approx(first.first_valid_at, abs=EPS)


@pytest.mark.parametrize(("nat_a", "nat_b"), [("port", "port"), ("full", "symmetric")])
def test_direct_first_nominates_a_direct_pair_at_its_first_valid_check(
    nat_a: str, nat_b: str
) -> None:
    """With ``direct_first`` (the node's agents) the first valid direct pair carries data at
    once: no hold for the pairs towards the other site's private address."""
    config = AgentConfig(relay_first=True, direct_first=True)
    s = make_scenario(nat_a, nat_b, seed=6, config_a=config, config_b=config)
    noms, _ = connect(s)
    sel = s.a.agent.selected_pair
    assert sel is not None and not sel.relayed
    first = next(n for n in noms if not n.renomination)
    assert not first.relayed and first.first_valid_at is not None
    assert first.at == pytest.approx(first.first_valid_at, abs=EPS)
    assert any(state is PairState.IN_PROGRESS for _, state, _ in first.higher)


@pytest.mark.parametrize(
    ("nat_a", "nat_b", "relayed"),
    [("port", "port", False), ("full", "symmetric", False), ("symmetric", "symmetric", True)],
)
def test_aggressive_nomination_selects_the_first_pair_to_succeed_without_a_nominating_check(
    nat_a: str, nat_b: str, relayed: bool
) -> None:
    """With ``aggressive`` (the node's agents) every check carries USE-CANDIDATE until a pair
    is nominated: the first to succeed is selected by its own check (no separate nominating
    check, so one Ta and one round trip sooner), and both sides agree on it."""
    config = AgentConfig(relay_first=True, direct_first=True, aggressive=True)
    s = make_scenario(nat_a, nat_b, seed=6, config_a=config, config_b=config)
    noms, _ = connect(s)
    sel = s.a.agent.selected_pair
    assert sel is not None and sel.relayed is relayed
    assert [n for n in noms if not n.renomination] == []  # never needed a nominating check
    first_valid = s.a.agent._gen.first_valid_at
    assert first_valid is not None
    selected_at = s.a.events_of(PairSelected)[0][0]
    assert selected_at == pytest.approx(first_valid, abs=EPS)
    assert s.same_path()


def test_relay_first_then_a_direct_pair_takes_over() -> None:
    """Relayed first while the direct path is closed; when it opens, renomination moves both
    sides to it (the relay carried data meanwhile)."""
    config = AgentConfig(relay_first=True, direct_retry_interval=3.0)
    s = make_scenario("port", "port", seed=2, config_a=config, config_b=config)
    sites = {"198.51.100.1", "203.0.113.1"}
    s.net.blocked = lambda src, dst: src[0] in sites and dst[0] in sites
    s.start()
    assert s.net.run_while(s.connected, 20)
    sel = s.a.agent.selected_pair
    assert sel is not None and sel.relayed
    s.net.blocked = None
    assert s.net.run_while(
        lambda: all((p := x.agent.selected_pair) is not None and not p.relayed for x in (s.a, s.b)),
        60,
    )
    assert s.same_path()


def test_many_unreachable_candidates_each_get_two_sends() -> None:
    """B also signals twelve host addresses nobody answers on: the paced checks reach all of
    them (Ta apart, RTO growing with the list), each is re-sent before A gives up on it, and
    the srflx pair is still nominated well before ``nomination_delay``."""
    config = AgentConfig()
    s = make_scenario("port", "port", seed=8)
    for i in range(12):
        s.b.signal("cand", make_host_candidate((f"10.0.2.{100 + i}", 4000), 65000 - i))
    noms, _ = connect(s)
    sel = s.a.agent.selected_pair
    assert sel is not None and sel.local.type is CandidateType.SRFLX
    (nom,) = noms
    assert len(nom.higher) >= 13
    assert all(state is PairState.IN_PROGRESS and sends >= 2 for _, state, sends in nom.higher)
    assert nom.first_valid_at is not None
    assert nom.at < nom.first_valid_at + config.nomination_delay
    assert_hold_kept(noms, config)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize(
    ("nat_a", "nat_b", "same_lan"),
    [("port", "port", False), ("full", "symmetric", False), ("port", "port", True)],
)
def test_hold_rule_under_loss(nat_a: str, nat_b: str, same_lan: bool, seed: int) -> None:
    s = make_scenario(nat_a, nat_b, seed=seed, loss=0.15, jitter=0.03, same_lan=same_lan)
    noms_a, noms_b = connect(s, timeout=30.0)

    def direct() -> bool:
        sel = s.a.agent.selected_pair
        return sel is not None and not sel.relayed and s.connected()

    # A lossy start may settle on the relay first (as it always could) and move later.
    assert s.net.run_while(direct, 30.0)
    assert_hold_kept(noms_a + noms_b, AgentConfig())


def test_hold_settings_are_validated() -> None:
    with pytest.raises(ValueError):
        AgentConfig(direct_hold_min=-1.0)
    with pytest.raises(ValueError):
        AgentConfig(direct_hold_rtts=-0.5)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
@given(
    seed=st.integers(0, 2**32 - 1),
    loss=st.floats(0.0, 0.2),
    duplicate=st.floats(0.0, 0.1),
    jitter=st.floats(0.0, 0.08),
    nats=st.sampled_from(
        [
            ("full", "full", False),
            ("restricted", "port", False),
            ("port", "port", False),
            ("public", "port", False),
            ("full", "symmetric", False),
            ("port", "symmetric", False),
            ("symmetric", "symmetric", False),
            ("port", "port", True),
            ("full", "full", True),
        ]
    ),
    a_controlling=st.booleans(),
    b_controlling=st.booleans(),
)
def test_nominations_keep_the_hold(
    seed: int,
    loss: float,
    duplicate: float,
    jitter: float,
    nats: tuple[str, str, bool],
    a_controlling: bool,
    b_controlling: bool,
) -> None:
    """Over impairments, NAT types and role conflicts: no nomination comes before the hold
    allows it, both agents agree on the path, and a same-LAN pair ends on host↔host."""
    nat_a, nat_b, same_lan = nats
    s = make_scenario(
        nat_a,
        nat_b,
        seed=seed,
        loss=loss,
        duplicate=duplicate,
        jitter=jitter,
        same_lan=same_lan,
        a_controlling=a_controlling,
        b_controlling=b_controlling,
    )
    noms_a, noms_b = connect(s, timeout=30.0)
    assert_hold_kept(noms_a + noms_b, AgentConfig())
    if same_lan and loss == 0.0:
        sel = s.a.agent.selected_pair
        assert sel is not None
        assert (sel.local.type, sel.remote.type) == (CandidateType.HOST, CandidateType.HOST)


# --- the role rules on their own (RFC 8445 §6.1.1, §7.2.5.1, §7.3.1.1) ----------------------


@pytest.mark.parametrize(
    ("controlling", "lite", "ours", "theirs_controlling", "theirs_controlled", "expected"),
    [
        (True, False, 5, None, 9, RoleConflict.NONE),  # no conflict either way
        (False, False, 5, 9, None, RoleConflict.NONE),
        (True, False, 9, 5, None, RoleConflict.REJECT),  # both control: the larger keeps it
        (True, False, 5, 5, None, RoleConflict.REJECT),  # ties go to us
        (True, False, 5, 9, None, RoleConflict.SWITCH),
        (False, False, 9, None, 5, RoleConflict.SWITCH),  # both controlled: the larger controls
        (False, False, 5, None, 5, RoleConflict.SWITCH),
        (False, False, 5, None, 9, RoleConflict.REJECT),
        (True, True, 9, 5, None, RoleConflict.SWITCH),  # a lite agent always gives way
        (False, True, 9, None, 5, RoleConflict.REJECT),
    ],
)
def test_role_conflicts_are_settled_by_the_tie_breakers(
    controlling: bool,
    lite: bool,
    ours: int,
    theirs_controlling: int | None,
    theirs_controlled: int | None,
    expected: RoleConflict,
) -> None:
    conflict = resolve_role_conflict(
        controlling=controlling,
        lite=lite,
        tie_breaker=ours,
        theirs_controlling=theirs_controlling,
        theirs_controlled=theirs_controlled,
    )
    assert conflict is expected


def test_roles_facing_a_lite_peer_and_after_a_487() -> None:
    for controlling in (True, False):
        assert role_facing(controlling, lite=False, peer_lite=True) is True
        assert role_facing(controlling, lite=True, peer_lite=False) is False
        assert role_facing(controlling, lite=False, peer_lite=False) is controlling
        assert role_facing(controlling, lite=True, peer_lite=True) is controlling
        # A 487 to a check sent in the role we still have switches it; one sent before we
        # switched already leaves the role as it is.
        assert role_after_conflict_response(controlling, controlling) is not controlling
        assert role_after_conflict_response(not controlling, controlling) is controlling


def _succeeded(cl: CheckList, local: Candidate, remote: Candidate, at: float) -> CheckPair:
    pair = cl.add(local, remote)
    assert pair is not None
    pair.state = PairState.SUCCEEDED
    pair.valid_local = local
    pair.last_success = at
    return pair


def test_direct_first_nominates_at_once_and_moves_only_up() -> None:
    """With ``direct_first`` (the node's agents) the first valid direct pair is nominated the
    moment it is valid, a higher pair still in progress or not; a better direct pair that
    succeeds later is renominated, a worse one or a relayed one never is."""
    policy = NominationPolicy(
        nomination_delay=2.0,
        direct_hold_rtts=4.0,
        direct_hold_min=0.1,
        renominate=True,
        relay_first=True,
        direct_first=True,
    )
    cl = CheckList(controlling=True)
    host = make_host_candidate(("10.0.1.2", 4000), 65535)
    peer_host = make_host_candidate(("10.0.1.3", 4000), 65535)
    peer_srflx = make_srflx_candidate(("203.0.113.1", 4000), ("10.0.2.2", 4000), "192.0.2.1", 65535)
    lan = cl.add(host, peer_host)  # the best pair: same LAN, not answered yet
    assert lan is not None
    lan.state, lan.sends, lan.last_sent = PairState.IN_PROGRESS, 1, 0.0
    wan = _succeeded(cl, host, peer_srflx, 0.02)
    assert policy.step(cl, 0.02, gathered=False, now=0.02).nominate is wan
    wan.nominated = True
    assert policy.step(cl, 0.02, gathered=False, now=0.03).nominate is None
    # The LAN pair answers after all: it takes over.
    _succeeded(cl, host, peer_host, 0.05)
    assert policy.step(cl, 0.02, gathered=False, now=0.05).nominate is lan
    lan.nominated = True
    assert NominationPolicy.selected(cl) is lan
    # Nothing moves it down again: a relayed pair that succeeds is no reason.
    relayed = make_relay_candidate(
        ("192.0.2.2", 50000), ("198.51.100.1", 4000), "10.0.1.2", "192.0.2.2", 0
    )
    _succeeded(cl, relayed, peer_srflx, 0.1)
    assert policy.step(cl, 0.02, gathered=True, now=0.1).nominate is None
    # Without direct_first the same first step holds for the LAN pair instead.
    hold = NominationPolicy(2.0, 4.0, 0.1, renominate=True, relay_first=True)
    cl2 = CheckList(controlling=True)
    lan2 = cl2.add(host, peer_host)
    assert lan2 is not None
    lan2.state, lan2.sends, lan2.last_sent = PairState.IN_PROGRESS, 1, 0.0
    _succeeded(cl2, host, peer_srflx, 0.02)
    assert hold.step(cl2, 0.02, gathered=False, now=0.02).nominate is None

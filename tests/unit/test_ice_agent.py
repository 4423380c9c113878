"""The sans-I/O ICE agent (RFC 8445, RFC 8838) under virtual time, over the simulated network
of :mod:`icesim`: NAT combinations, roles, lite, trickle, failure, limits."""

from __future__ import annotations

import itertools
import random

import pytest
from icesim import Peer, Scenario, make_scenario

from p2ptun.ice.agent import AgentConfig, IceAgent
from p2ptun.ice.candidate import CandidateType, make_host_candidate, make_srflx_candidate
from p2ptun.ice.checklist import PairState
from p2ptun.ice.events import AgentState, PairSelected, RoleChanged, StateChanged
from p2ptun.ice.sdp import IceCredentials

DIRECT = (CandidateType.HOST, CandidateType.SRFLX, CandidateType.PRFLX)


def connect(s: Scenario, timeout: float = 20.0) -> float:
    s.start()
    assert s.net.run_while(s.connected, timeout), (
        s.a.agent.state,
        s.b.agent.state,
        s.a.agent.checklist.pairs,
        s.b.agent.checklist.pairs,
    )
    return s.net.now


def assert_clean(*peers: Peer) -> None:
    for p in peers:
        assert p.violations == [], f"{p.name} sent to addresses it never learnt"


def path_kind(s: Scenario) -> str:
    sel = s.a.agent.selected_pair
    assert sel is not None
    return "relay" if sel.relayed else "direct"


# --- NAT matrix -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nat_a", "nat_b", "expected"),
    [
        ("public", "public", "direct"),
        ("public", "symmetric", "direct"),
        ("full", "full", "direct"),
        ("full", "port", "direct"),
        ("restricted", "restricted", "direct"),
        ("port", "port", "direct"),
        ("full", "symmetric", "direct"),
        ("restricted", "symmetric", "direct"),
        ("port", "symmetric", "relay"),
        ("symmetric", "port", "relay"),
        ("symmetric", "symmetric", "relay"),
    ],
)
def test_nat_matrix(nat_a: str, nat_b: str, expected: str) -> None:
    s = make_scenario(nat_a, nat_b, seed=7)
    connect(s)
    assert path_kind(s) == expected
    assert s.same_path()
    # Data flows both ways on the selected pair.
    assert s.a.send_data(b"DATA-a") and s.b.send_data(b"DATA-b")
    s.net.run_until(s.net.now + 1)
    assert [d for _, d in s.b.data_received] == [b"DATA-a"]
    assert [d for _, d in s.a.data_received] == [b"DATA-b"]
    assert_clean(s.a, s.b)
    # Both agents settle (regular checks end) within a minute of virtual time.
    s.net.run_until(s.net.now + 60)
    assert s.a.agent.state is AgentState.COMPLETED
    assert s.b.agent.state is AgentState.COMPLETED
    assert s.a.agent.can_send() and s.b.agent.can_send()


def test_events_and_states_in_order() -> None:
    s = make_scenario("port", "port", seed=2)
    connect(s)
    states = [e.state for _, e in s.a.events_of(StateChanged)]
    # A direct pair is selected: the other checks in flight are abandoned (RFC 8445 §8.1.2),
    # so nothing is left to check and the agent is completed at once.
    assert states[:2] == [AgentState.CHECKING, AgentState.COMPLETED]
    selected = s.a.events_of(PairSelected)
    assert len(selected) == 1 and selected[0][1].previous is None
    assert s.a.agent.controlling and not s.b.agent.controlling


def test_no_relay_and_no_hole_punching_fails() -> None:
    s = make_scenario("symmetric", "symmetric", seed=4, relay=False)
    s.start()
    assert s.net.run_while(
        lambda: s.a.agent.state is AgentState.FAILED and s.b.agent.state is AgentState.FAILED,
        60,
    )
    assert s.a.agent.selected_pair is None and not s.a.agent.can_send()
    # Once failed, nothing more is scheduled but consent-less answering.
    assert s.a.agent.next_wakeup() is None


def test_failure_when_all_pairs_fail_after_end_of_candidates() -> None:
    """Without a connect timeout, failure comes from every pair failing once both sides
    signalled end-of-candidates (RFC 8838 §8)."""
    config = AgentConfig(connect_timeout=None, check_rc=3, check_rm=4)
    s = make_scenario("port", "symmetric", seed=5, relay=False, config_a=config, config_b=config)
    s.start()
    assert s.net.run_while(lambda: s.a.agent.state is AgentState.FAILED, 30)
    assert all(p.state is PairState.FAILED for p in s.a.agent.checklist.pairs)


# --- roles ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("a_ctl", "b_ctl"), [(True, True), (False, False)])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_role_conflict_resolves(a_ctl: bool, b_ctl: bool, seed: int) -> None:
    s = make_scenario("port", "full", seed=seed, a_controlling=a_ctl, b_controlling=b_ctl)
    connect(s)
    assert s.a.agent.controlling != s.b.agent.controlling
    changed = s.a.events_of(RoleChanged) + s.b.events_of(RoleChanged)
    assert len(changed) >= 1
    # The agent with the larger tie-breaker ends up controlling (RFC 8445 §7.3.1.1).
    winner = s.a if s.a.agent.tie_breaker > s.b.agent.tie_breaker else s.b
    assert winner.agent.controlling
    assert s.a.agent.stats.role_conflicts + s.b.agent.stats.role_conflicts >= 1
    assert_clean(s.a, s.b)


def test_role_conflict_487_response_switches_role() -> None:
    """Unit level: a 487 answer to our check makes us switch and retry (RFC 8445 §7.2.5.1)."""
    a = agent("alice", controlling=True, seed=1)
    b = agent("bob", controlling=True, seed=2)
    # Make b win: b's tie-breaker larger.
    a.tie_breaker, b.tie_breaker = 5, 10
    wire_up(a, b)
    run_pair(a, b, 5.0)
    assert not a.controlling and b.controlling
    assert a.selected_pair is not None and b.selected_pair is not None


# --- ICE-lite ---------------------------------------------------------------------------------


@pytest.mark.parametrize("full_controlling", [True, False])
def test_full_against_lite(full_controlling: bool) -> None:
    s = make_scenario(
        "port",
        "public",
        seed=3,
        lite_b=True,
        a_controlling=full_controlling,
        b_controlling=not full_controlling,
    )
    connect(s)
    assert s.a.agent.controlling and not s.b.agent.controlling
    assert s.b.agent.stats.checks_sent == 0
    assert all(not t.via_relay for _, t in s.b.sent)
    assert s.b.agent.selected_pair is not None
    assert s.b.agent.selected_pair.local.type is CandidateType.HOST
    # The lite side stays connected as long as the full side keeps checking (consent).
    s.net.run_until(s.net.now + 65)
    assert s.a.agent.can_send() and s.b.agent.can_send()
    assert s.a.agent.state is AgentState.COMPLETED and s.b.agent.state is AgentState.COMPLETED
    assert_clean(s.a, s.b)


def test_lite_lite_picks_highest_priority_pair_without_checks() -> None:
    s = make_scenario("public", "public", seed=3, lite_a=True, lite_b=True)
    connect(s)
    assert s.a.agent.stats.checks_sent == 0 and s.b.agent.stats.checks_sent == 0
    assert s.a.sent == [] and s.b.sent == []
    sa, sb = s.a.agent.selected_pair, s.b.agent.selected_pair
    assert sa is not None and sb is not None
    assert sa.remote.address == s.b.endpoint.address
    assert sb.remote.address == s.a.endpoint.address
    assert s.b.send_data() and s.a.send_data()
    s.net.run_until(s.net.now + 1)
    assert s.a.data_received and s.b.data_received


def test_lite_agent_rejects_non_host_candidates() -> None:
    lite = agent("alice", controlling=False, seed=1, lite=True)
    srflx = make_srflx_candidate(("198.51.100.7", 9), ("10.0.0.1", 1), "192.0.2.1", 65535)
    with pytest.raises(ValueError):
        lite.add_local_candidate(srflx, 0.0)


# --- trickle ICE ------------------------------------------------------------------------------


def test_trickle_candidates_arrive_after_checks_started() -> None:
    s = make_scenario("port", "port", seed=9)
    s.b.trickle_hold = True  # B's candidates are held back
    s.start()
    s.net.run_until(1.5)
    # A already checks towards B's prflx addresses learnt from B's checks? It has B's creds:
    assert s.a.agent.state is AgentState.CHECKING
    s.b.release_held()
    assert s.net.run_while(s.connected, 20)
    assert path_kind(s) == "direct"
    assert_clean(s.a, s.b)


def test_trickle_candidates_arrive_before_credentials() -> None:
    s = make_scenario("full", "full", seed=10)
    s.a.start(send_credentials=False)
    s.b.start()
    s.net.run_until(1.0)
    # B has A's candidates but no credentials: it has answered A's checks and waits.
    assert s.b.agent.remote_credentials is None
    assert s.b.agent.stats.early_checks_queued >= 1
    assert s.b.agent.stats.checks_sent == 0
    s.a.send_credentials()
    assert s.net.run_while(s.connected, 20)
    assert_clean(s.a, s.b)


def test_late_remote_credentials_and_candidates_only_via_prflx() -> None:
    """B never signals candidates: A learns B from B's checks (peer-reflexive, §7.3.1.3) and
    answers with triggered checks; still connects."""
    s = make_scenario("full", "public", seed=12)
    s.b.trickle_hold = True
    s.a.start()
    s.b.start()
    assert s.net.run_while(s.connected, 20)
    kinds = {c.type for c in s.a.agent.remote_candidates}
    assert kinds == {CandidateType.PRFLX}
    # Signalling them later upgrades the prflx candidate in place (RFC 8838 §11.4).
    s.b.release_held()
    s.net.run_until(s.net.now + 1)
    kinds = {c.type for c in s.a.agent.remote_candidates}
    assert CandidateType.HOST in kinds
    assert s.a.agent.can_send()


def test_different_remote_credentials_are_refused_without_restart() -> None:
    a = agent("alice", controlling=True, seed=1)
    creds = IceCredentials("peer1", "peerpasswordpeerpassword1")
    assert a.set_remote_credentials(creds, 0.0)
    assert a.set_remote_credentials(creds, 0.0)
    assert not a.set_remote_credentials(IceCredentials("peer2", "peerpasswordpeerpassword2"), 0.0)
    assert a.stats.credentials_rejected == 1


# --- limits -----------------------------------------------------------------------------------


def test_remote_candidate_and_pair_limits() -> None:
    config = AgentConfig(max_pairs=10, max_remote_candidates=20)
    a = agent("alice", controlling=True, seed=1, config=config)
    a.add_local_candidate(make_host_candidate(("10.0.0.1", 4000), 65535), 0.0)
    a.add_local_candidate(make_host_candidate(("10.0.0.2", 4000), 65534), 0.0)
    a.set_remote_credentials(IceCredentials("peer1", "peerpasswordpeerpassword1"), 0.0)
    for i in range(50):
        a.add_remote_candidate(make_host_candidate((f"198.51.100.{i + 1}", 5000), 100 + i), 0.0)
    assert len(a.remote_candidates) == 20
    assert a.stats.remote_candidates_dropped == 30
    assert len(a.checklist) <= 10
    # The kept pairs are the highest-priority ones.
    prios = [p.priority for p in a.checklist.pairs]
    assert prios == sorted(prios, reverse=True)


def test_transaction_and_pacing_limits() -> None:
    config = AgentConfig(max_transactions=3, ta=0.05)
    a = agent("alice", controlling=True, seed=1, config=config)
    a.add_local_candidate(make_host_candidate(("10.0.0.1", 4000), 65535), 0.0)
    a.set_remote_credentials(IceCredentials("peer1", "peerpasswordpeerpassword1"), 0.0)
    for i in range(10):
        a.add_remote_candidate(make_host_candidate((f"198.51.100.{i + 1}", 5000), 100 + i), 0.0)
    sent_at: list[float] = []
    now = 0.0
    while now < 2.0:
        a.handle_timeout(now)
        for t in a.pop_transmits():
            sent_at.append(now)
            del t
        assert len(a._checks) <= 3
        wake = a.next_wakeup()
        assert wake is not None
        now = max(wake, now + 1e-6)
    # New checks are paced at Ta; at most 3 in flight means no more than 3 distinct pairs
    # checked before the first one times out.
    in_progress = a.checklist.count(PairState.IN_PROGRESS)
    assert in_progress <= 3
    assert a.stats.transaction_limit_hits > 0


def test_early_check_queue_is_bounded() -> None:
    from test_ice_agent_fuzz import check_request

    config = AgentConfig(max_early_checks=4)
    a = agent("alice", controlling=False, seed=1, config=config)
    a.add_local_candidate(make_host_candidate(("10.0.0.1", 4000), 65535), 0.0)
    for i in range(20):
        wire = check_request(a, "peer1", src_port=i)
        a.handle_datagram(wire, ("10.0.0.1", 4000), ("198.51.100.9", 6000 + i), 0.0)
    responses = a.pop_transmits()
    assert len(responses) == 20  # every check was answered
    assert len(a._gen.early) == 4
    assert a.stats.early_checks_dropped == 16
    # When the credentials arrive, the queued checks become triggered checks.
    a.set_remote_credentials(IceCredentials("peer1", "peerpasswordpeerpassword1"), 0.1)
    assert len(a.checklist) == 4
    assert all(p.remote.type is CandidateType.PRFLX for p in a.checklist.pairs)


# --- helpers for unit-level tests ---------------------------------------------------------------


def agent(
    name: str,
    *,
    controlling: bool,
    seed: int,
    lite: bool = False,
    config: AgentConfig | None = None,
) -> IceAgent:
    creds = IceCredentials(f"{name}u", f"{name}passwordpasswordpassword")
    return IceAgent(
        creds, controlling=controlling, rng=random.Random(seed), lite=lite, config=config
    )


_ADDR = {"alice": ("192.0.2.10", 4000), "bob": ("192.0.2.20", 4000)}


def wire_up(a: IceAgent, b: IceAgent) -> None:
    """Two public hosts that exchange everything at time 0."""
    ca = make_host_candidate(_ADDR["alice"], 65535)
    cb = make_host_candidate(_ADDR["bob"], 65535)
    a.add_local_candidate(ca, 0.0)
    b.add_local_candidate(cb, 0.0)
    a.set_remote_credentials(b.local_credentials, 0.0)
    b.set_remote_credentials(a.local_credentials, 0.0)
    a.add_remote_candidate(cb, 0.0)
    b.add_remote_candidate(ca, 0.0)
    for x in (a, b):
        x.set_local_end_of_candidates(0.0)
        x.set_remote_end_of_candidates(0.0)


def run_pair(a: IceAgent, b: IceAgent, until: float, latency: float = 0.01) -> None:
    """A tiny direct event loop: deliver every transmit after ``latency``."""
    import heapq

    addr = {id(a): _ADDR["alice"], id(b): _ADDR["bob"]}
    heap: list[tuple[float, int, IceAgent, bytes, tuple[str, int], tuple[str, int]]] = []
    seq = 0
    now = 0.0
    while now <= until:
        for x, y in ((a, b), (b, a)):
            for t in x.pop_transmits():
                seq += 1
                heapq.heappush(heap, (now + latency, seq, y, t.data, addr[id(y)], addr[id(x)]))
        wakes = [w for w in (a.next_wakeup(), b.next_wakeup()) if w is not None]
        nxt = min(wakes + ([heap[0][0]] if heap else []), default=None)
        if nxt is None:
            break
        now = max(now, nxt)
        while heap and heap[0][0] <= now:
            _, _, dst, data, local, remote = heapq.heappop(heap)
            dst.handle_datagram(data, local, remote, now)
        for x in (a, b):
            w = x.next_wakeup()
            if w is not None and w <= now:
                x.handle_timeout(now)


# --- wire-level details -------------------------------------------------------------------------


def test_new_checks_are_paced_at_ta() -> None:
    """New checks (not retransmissions) leave at most one per Ta (RFC 8445 §6.1.4.2)."""
    from p2ptun.stun import Message as StunMessage

    config = AgentConfig(ta=0.05)
    s = make_scenario("symmetric", "symmetric", seed=21, config_a=config, config_b=config)
    connect(s)
    t_sel = s.a.events_of(PairSelected)[0][0]
    first_seen: dict[bytes, float] = {}
    for t, tr in s.a.sent:
        msg = StunMessage.decode(tr.data)
        if msg.is_request and t < t_sel:
            first_seen.setdefault(msg.transaction_id, t)
    times = sorted(first_seen.values())
    assert len(times) >= 5
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.05 - 1e-9


def test_checks_carry_the_rfc_8445_attributes() -> None:
    from p2ptun.stun import AttrType, Message, short_term_key

    s = make_scenario("full", "full", seed=22)
    connect(s)
    b_pwd = s.b.agent.local_credentials.pwd
    requests = [Message.decode(t.data) for _, t in s.a.sent]
    requests = [m for m in requests if m.is_request]
    assert requests
    for m in requests:
        assert m.username == f"{s.b.agent.local_credentials.ufrag}:aliceg0x"
        assert m.priority is not None and m.priority >> 24 == 110
        assert m.ice_controlling == s.a.agent.tie_breaker
        assert m.check_fingerprint() and m.check_integrity(short_term_key(b_pwd))
    assert any(m.use_candidate for m in requests)
    # The controlled agent never sends USE-CANDIDATE.
    b_requests = [Message.decode(t.data) for _, t in s.b.sent]
    assert not any(m.use_candidate for m in b_requests if m.is_request)
    assert all(m.ice_controlled == s.b.agent.tie_breaker for m in b_requests if m.is_request)
    assert AttrType.USE_CANDIDATE not in [t for m in b_requests for t in m.types()]


def test_symmetric_side_learns_local_peer_reflexive_candidate() -> None:
    s = make_scenario("full", "symmetric", seed=23)
    connect(s)
    sb = s.b.agent.selected_pair
    assert sb is not None and sb.local.type is CandidateType.PRFLX
    assert sb.local.related == s.b.endpoint.address  # its base
    assert sb.base == s.b.endpoint.address
    sa = s.a.agent.selected_pair
    assert sa is not None and sa.remote.type is CandidateType.PRFLX


def test_error_responses_400_420() -> None:
    from test_ice_agent_fuzz import LOCAL, PEER, make_agent

    from p2ptun.stun import AttrType, Message, Method, short_term_key

    a = make_agent()
    key = short_term_key(a.local_credentials.pwd)
    user = (AttrType.USERNAME, f"{a.local_credentials.ufrag}:peer1")
    no_priority = Message.request(Method.BINDING, b"\x01" * 12, [user, (0x802A, 5)])
    unknown = Message.request(
        Method.BINDING, b"\x02" * 12, [user, (AttrType.PRIORITY, 5), (0x0077, b"x")]
    )
    for msg, code in ((no_priority, 400), (unknown, 420)):
        a.handle_datagram(msg.encode(key, fingerprint=True), LOCAL, PEER, 0.0)
        (reply,) = a.pop_transmits()
        decoded = Message.decode(reply.data)
        assert decoded.error_code is not None and decoded.error_code.code == code
        assert decoded.check_integrity(key)
        if code == 420:
            assert decoded.unknown_attributes == (0x0077,)
    assert a.remote_candidates == []


def test_non_symmetric_response_fails_the_pair() -> None:
    from test_ice_agent_fuzz import LOCAL, PEER, PEER_CREDS, make_agent

    from p2ptun.stun import AttrType, Message, short_term_key

    a = make_agent(controlling=True)
    a.set_remote_credentials(PEER_CREDS, 0.0)
    a.add_remote_candidate(make_host_candidate(PEER, 65535), 0.0)
    a.handle_timeout(0.0)
    (check,) = a.pop_transmits()
    req = Message.decode(check.data)
    resp = req.success([(AttrType.XOR_MAPPED_ADDRESS, LOCAL)]).encode(
        short_term_key(PEER_CREDS.pwd), fingerprint=True
    )
    # The answer comes from another address than the check went to (§7.2.5.2.1).
    assert a.handle_datagram(resp, LOCAL, ("198.51.100.99", 6000), 0.05)
    assert a.stats.non_symmetric == 1
    (pair,) = a.checklist.pairs
    assert pair.state is PairState.FAILED

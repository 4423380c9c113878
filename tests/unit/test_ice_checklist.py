"""The check list (RFC 8445 §6.1.2): which pairs it holds, their order and initial states,
its size limit, unfreezing; and that the agent forms its pairs from bases only (the pruning
of §6.1.2.4 done up front)."""

from __future__ import annotations

import itertools
import random

from p2ptun.ice.agent import IceAgent
from p2ptun.ice.candidate import (
    DEFAULT_MAX_PAIRS,
    Candidate,
    CandidateType,
    Transport,
    assign_local_preferences,
    make_host_candidate,
    make_relay_candidate,
    make_srflx_candidate,
    pair_priority,
)
from p2ptun.ice.checklist import CheckList, PairState
from p2ptun.ice.sdp import IceCredentials

STUN_IP = "198.51.100.1"
TURN_IP = "198.51.100.2"


def remote(
    host: str, port: int, priority: int, typ: CandidateType = CandidateType.HOST, fnd: str = "r"
) -> Candidate:
    return Candidate(fnd, 1, Transport.UDP, priority, host, port, typ)


def test_checklist_initial_states_and_unfreezing() -> None:
    cl = CheckList(controlling=True)
    l1 = make_host_candidate(("10.0.0.1", 1000), 65535)
    r1 = make_host_candidate(("198.51.100.1", 2000), 65535)
    r2 = make_host_candidate(("198.51.100.1", 2001), 65534)  # same foundation as r1
    p1 = cl.add(l1, r1)
    p2 = cl.add(l1, r2)
    assert p1 is not None and p2 is not None
    assert p1.state is PairState.WAITING and p2.state is PairState.FROZEN
    assert cl.add(l1, r1) is p1
    assert cl.next_ordinary() is p1
    p1.state = PairState.IN_PROGRESS
    # Frozen p2 shares the in-progress foundation: nothing to unfreeze yet.
    assert cl.next_ordinary() is None
    p1.state = PairState.SUCCEEDED
    cl.unfreeze_foundation(p1.foundation)
    assert p2.state is PairState.WAITING


def test_checklist_role_change_reorders() -> None:
    cl = CheckList(controlling=True)
    la = make_host_candidate(("10.0.0.1", 1000), 65535)
    lb = make_host_candidate(("10.0.0.2", 1000), 1)
    ra = make_host_candidate(("198.51.100.1", 2000), 65535)
    rb = make_host_candidate(("198.51.100.2", 2000), 1)
    for loc in (la, lb):
        for rem in (ra, rb):
            cl.add(loc, rem)
    before = [p.key for p in cl.pairs]
    cl.set_role(False)
    after = [p.priority for p in cl.pairs]
    assert after == sorted(after, reverse=True)
    # (la, rb) ranked above (lb, ra) while controlling; the G > D bit now favours (lb, ra).
    assert [p.key for p in cl.pairs] != before


def test_pairs_are_in_priority_order_for_either_role_whatever_the_order_added() -> None:
    """RFC 8445 §6.1.2.3: decreasing pair priority, as the agent of each role computes it;
    the order does not depend on the order the candidates arrived in."""
    h = make_host_candidate(("10.0.0.1", 5000), 65535)
    r = make_relay_candidate(("198.51.100.2", 9), ("203.0.113.1", 7), "10.0.0.1", TURN_IP, 65535)
    rh = remote("192.0.2.1", 1, 2130706431)
    rr = remote("198.51.100.3", 1, 16777215, CandidateType.RELAY)
    combos = [(loc, rem) for loc in (r, h) for rem in (rr, rh)]
    for controlling in (True, False):
        orders = []
        for added in (combos, combos[::-1], combos[1::2] + combos[::2]):
            cl = CheckList(controlling)
            for loc, rem in added:
                cl.add(loc, rem)
            prios = [p.priority for p in cl.pairs]
            assert prios == sorted(prios, reverse=True)
            assert prios == [p.candidate_pair.priority(controlling) for p in cl.pairs]
            assert cl.pairs[0].key == (h.address, rh.address)
            assert cl.pairs[-1].key == (r.address, rr.address)
            orders.append([p.key for p in cl.pairs])
        assert orders[0] == orders[1] == orders[2]


def test_a_pair_is_held_once() -> None:
    cl = CheckList(controlling=True)
    host = make_host_candidate(("10.0.0.1", 5000), 65535)
    r1 = remote("192.0.2.10", 7000, 2130706431)
    first = cl.add(host, r1)
    assert cl.add(host, r1) is first and cl.add(host, r1) is first
    assert len(cl) == 1 and cl.dropped == 0


def test_the_agent_pairs_bases_only() -> None:
    """Checks leave from a base (§6.1.2.4): a server-reflexive local candidate names what the
    peer sees but never forms a pair of its own, whether it arrives before or after its base;
    host and relayed candidates pair with every remote candidate they can."""
    host = make_host_candidate(("10.0.0.1", 5000), 65535)
    srflx = make_srflx_candidate(("203.0.113.1", 6000), host.address, STUN_IP, 65535)
    relay = make_relay_candidate(("198.51.100.2", 40000), srflx.address, "10.0.0.1", TURN_IP, 65535)
    r1 = remote("192.0.2.10", 7000, 2130706431, CandidateType.HOST, "a")
    r2 = remote("203.0.113.20", 7001, 1694498815, CandidateType.SRFLX, "b")
    for order in ((host, srflx, relay), (srflx, relay, host)):
        agent = IceAgent(
            IceCredentials("alice", "alicepasswordpasswordpass"),
            controlling=True,
            rng=random.Random(1),
        )
        for cand in order:
            agent.add_local_candidate(cand, 0.0)
        for rem in (r1, r2):
            agent.add_remote_candidate(rem, 0.0)
        assert not agent.add_remote_candidate(r1, 0.0)  # a duplicate adds nothing
        pairs = agent.checklist.pairs
        assert all(p.local.type is not CandidateType.SRFLX for p in pairs)
        assert {p.key for p in pairs} == {
            (host.address, r1.address),
            (host.address, r2.address),
            (relay.address, r1.address),
            (relay.address, r2.address),
        }
        prios = [p.priority for p in pairs]
        assert prios == sorted(prios, reverse=True)


def test_the_list_keeps_the_highest_priority_pairs_up_to_its_limit() -> None:
    """RFC 8445 §6.1.2.4: at most ``max_pairs`` pairs (default 100); lower-priority ones are
    discarded, whatever the order they came in."""
    prefs = assign_local_preferences(f"10.0.{i}.1" for i in range(12))
    local = [make_host_candidate((h, 5000), lp) for h, lp in prefs.items()]
    remotes = [
        remote(f"192.0.2.{i + 1}", 6000, 2130706431 - 256 * i, fnd=str(i)) for i in range(12)
    ]
    combos = list(itertools.product(local, remotes))
    random.Random(5).shuffle(combos)
    ranked = sorted(combos, key=lambda c: -pair_priority(c[0].priority, c[1].priority))
    for limit in (DEFAULT_MAX_PAIRS, 7):
        cl = CheckList(controlling=True) if limit == DEFAULT_MAX_PAIRS else CheckList(True, 7)
        for loc, rem in combos:
            cl.add(loc, rem)
        assert len(cl) == limit
        assert cl.dropped == len(combos) - limit
        kept = {p.key for p in cl.pairs}
        assert kept == {(loc.address, rem.address) for loc, rem in ranked[:limit]}


def test_a_trickled_replacement_is_not_frozen_behind_a_stale_pair_of_its_foundation() -> None:
    """The peer's NAT moved: its new srflx candidate (same base, same STUN server: same
    foundation) arrives while the check towards the stale one is in flight. It goes as soon as
    the stale check went unanswered past its first RTO (sent twice), not after the stale
    pair's whole retransmission schedule; one arriving after that is Waiting at once."""
    cl = CheckList(controlling=True)
    local = make_host_candidate(("10.0.0.1", 1000), 65535)
    stale = remote("198.51.100.1", 2000, 100, CandidateType.SRFLX, fnd="s")
    fresh = remote("198.51.100.9", 2000, 100, CandidateType.SRFLX, fnd="s")
    later = remote("198.51.100.10", 2000, 100, CandidateType.SRFLX, fnd="s")
    old = cl.add(local, stale)
    assert old is not None and old.state is PairState.WAITING
    assert cl.next_ordinary() is old
    old.state, old.sends = PairState.IN_PROGRESS, 1
    new = cl.add(local, fresh)
    assert new is not None and new.state is PairState.FROZEN  # the first answer may come
    assert cl.next_ordinary() is None
    old.sends = 2  # retransmitted: unanswered past its first RTO
    assert cl.next_ordinary() is new and new.state is PairState.WAITING
    new.state, new.sends = PairState.IN_PROGRESS, 2
    third = cl.add(local, later)
    assert third is not None and third.state is PairState.WAITING

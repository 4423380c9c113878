"""Hard-NAT probing (p2ptun.ice.hardnat): the policy's decisions and bounds, and whole daemons
behind a sequentially allocating symmetric NAT and a random one under virtual time."""

from __future__ import annotations

import dataclasses
import random

import pytest
import trio
import trio.testing

from p2plab.memlab import MemoryLab
from p2ptun.ice import Candidate, make_host_candidate, make_relay_candidate, make_srflx_candidate
from p2ptun.ice.checklist import CheckList, PairState
from p2ptun.ice.hardnat import (
    FIRST_DYNAMIC_PORT,
    HardNatConfig,
    HardNatProbing,
    Technique,
    classify,
    ordinary_checks_failed,
    predicted_ports,
    probing_bases,
)

BASE = ("10.0.2.2", 40000)


def _srflx(port: int, host: str = "198.51.100.12", base: tuple[str, int] = BASE) -> Candidate:
    return make_srflx_candidate((host, port), base, "203.0.113.10", 65535)


def _ours(*ports: int) -> list[Candidate]:
    host = make_host_candidate(("10.0.1.2", 5000), 65535)
    return [host] + [_srflx(p, "198.51.100.11", ("10.0.1.2", 5000)) for p in ports]


def test_classify_by_the_ports_of_one_base() -> None:
    assert classify([_srflx(20001), _srflx(20002)], 16)[0].technique is Technique.PREDICTION
    assert classify([_srflx(20001), _srflx(20003), _srflx(20005)], 16)[0].step == 2
    assert classify([_srflx(20001), _srflx(31000)], 16)[0].technique is Technique.BIRTHDAY
    assert classify([_srflx(20001), _srflx(20002), _srflx(20009)], 16)[0].step is None
    assert classify([_srflx(20001)], 16)[0].technique is None  # one server: unknown
    # a port mapping's candidate (another port of the same base) says nothing of the NAT
    pcp = make_srflx_candidate(
        ("198.51.100.12", 40000), BASE, "10.0.2.1", 65535, extensions=(("mapped", "pcp@gw"),)
    )
    assert not classify([_srflx(20001), pcp], 16)[0].symmetric
    top = classify([_srflx(65530), _srflx(65531)], 16)[0]
    assert predicted_ports(top, 8) == [65532, 65533, 65534, 65535]
    # two bases, one port each: not symmetric
    two = classify([_srflx(20001), _srflx(20001, base=("10.0.2.3", 40000))], 16)
    assert [n.symmetric for n in two] == [False, False]


def test_prediction_plan_is_the_window_after_the_highest_port_in_rounds() -> None:
    cfg = HardNatConfig(window=4, prediction_rounds=2, interval=0.01, round_interval=1.0)
    probing = HardNatProbing(cfg, random.Random(0))
    assert probing.start(_ours(5000), [_srflx(20002), _srflx(20001)], False, 10.0)
    assert probing.technique is Technique.PREDICTION
    assert probing.next_wakeup() == 10.0
    first = probing.due(10.035)
    assert first == [("198.51.100.12", p) for p in (20003, 20004, 20005, 20006)]
    assert probing.next_wakeup() == 11.0
    assert probing.due(10.99) == []
    assert [a[1] for a in probing.due(12.0)] == [20003, 20004, 20005, 20006]
    assert probing.pending == 0 and probing.next_wakeup() is None and probing.sent == 8
    assert not probing.start(_ours(5000), [_srflx(20002), _srflx(20001)], False, 13.0)


def test_birthday_plan_is_bounded_rate_limited_and_random() -> None:
    cfg = HardNatConfig(birthday_probes=400, max_probes=300, interval=0.02)
    probing = HardNatProbing(cfg, random.Random(7))
    assert probing.start(_ours(5000), [_srflx(20001), _srflx(47000)], False, 0.0)
    assert probing.technique is Technique.BIRTHDAY
    assert probing.pending == 300
    sent = probing.due(1.0)
    assert len(sent) == 51  # t = 0, 0.02, ..., 1.0: never faster than 1/interval
    rest = probing.due(100.0)
    ports = [p for _h, p in sent + rest]
    assert len(ports) == len(set(ports)) == 300
    assert all(FIRST_DYNAMIC_PORT <= p <= 65535 and p not in (20001, 47000) for p in ports)
    none = HardNatProbing(dataclasses.replace(cfg, birthday_probes=0), random.Random(7))
    assert not none.start(_ours(5000), [_srflx(20001), _srflx(47000)], False, 0.0)


def test_declined_when_our_own_nat_is_symmetric_or_theirs_is_not() -> None:
    cfg = HardNatConfig()
    ours_sym = HardNatProbing(cfg, random.Random(0))
    assert not ours_sym.start(_ours(5000, 5001), [_srflx(20001), _srflx(20002)], False, 0.0)
    assert ours_sym.declined == "our NAT maps per destination"
    theirs_cone = HardNatProbing(cfg, random.Random(0))
    assert not theirs_cone.start(_ours(5000), [_srflx(20001)], False, 0.0)
    assert theirs_cone.decided and theirs_cone.pending == 0
    # the family of the relayed pair decides which candidates count
    assert not HardNatProbing(cfg, random.Random(0)).start(
        _ours(5000), [_srflx(20001), _srflx(20002)], True, 0.0
    )


def test_probes_leave_from_the_bases_of_our_reflexive_candidates() -> None:
    ours = _ours(5000)
    other = make_host_candidate(("10.9.9.9", 5000), 100)
    assert probing_bases([*ours, other], False) == [ours[0]]
    assert probing_bases([other], False) == [other]
    assert probing_bases([other], True) == []


def test_ordinary_checks_failed_needs_every_direct_srflx_pair_tried() -> None:
    host = make_host_candidate(("10.0.1.2", 5000), 65535)
    relay = make_relay_candidate(
        ("203.0.113.10", 50000), ("198.51.100.11", 5000), "10.0.1.2", "203.0.113.10", 1000
    )
    cl = CheckList(True, 100)
    direct = cl.add(host, _srflx(20001))
    theirs = make_relay_candidate(
        ("203.0.113.10", 50002), ("198.51.100.12", 20000), "10.0.2.2", "203.0.113.10", 1000
    )
    relayed = cl.add(relay, theirs)
    assert direct is not None and relayed is not None
    relayed.state = PairState.SUCCEEDED
    direct.state, direct.sends = PairState.IN_PROGRESS, 2
    assert not ordinary_checks_failed(cl.pairs, 3)
    direct.sends = 3
    assert ordinary_checks_failed(cl.pairs, 3)
    direct.state = PairState.SUCCEEDED
    assert not ordinary_checks_failed(cl.pairs, 3)
    assert not ordinary_checks_failed([relayed], 3)  # nothing direct was tried


def test_config_bounds() -> None:
    with pytest.raises(ValueError):
        HardNatConfig(window=0)
    with pytest.raises(ValueError):
        HardNatConfig(interval=0)
    with pytest.raises(ValueError):
        HardNatConfig(birthday_probes=-1)


async def _run(a: str, b: str, seed: int, *, hard_nat: bool = True) -> dict[str, object]:
    lab = MemoryLab(seed=seed, stun_ports=(3478, 3479))
    alice, bob = lab.pair(a, b)
    if not hard_nat:
        for node in (alice, bob):
            ice = dataclasses.replace(node.config.ice, hard_nat=False)
            node.config = dataclasses.replace(node.config, ice=ice)
    async with trio.open_nursery() as nursery:
        await lab.start(nursery)
        pinger = lab.pinger(alice, bob)
        await nursery.start(pinger.run)
        first = await lab.wait_until(lambda: pinger.replies, 20)
        direct_at = None
        with trio.move_on_after(20):
            while alice.daemon.status()["peers"][0]["path"] != "direct":
                await trio.sleep(0.05)
            direct_at = trio.current_time()
        end = trio.current_time()
        probes = {
            n.name: sum(s.agent.stats.hard_nat_probes for s in n.daemon.transport.sessions)
            for n in (alice, bob)
        }
        gap = pinger.longest_gap(first + 0.5, end)
        nursery.cancel_scope.cancel()
    return {"first": first, "direct_at": direct_at, "probes": probes, "gap": gap}


def _virtual(a: str, b: str, seed: int, **kw: bool) -> dict[str, object]:
    return trio.run(
        lambda: _run(a, b, seed, **kw), clock=trio.testing.MockClock(autojump_threshold=0)
    )


@pytest.mark.parametrize(("a", "b"), [("prc", "sym-seq"), ("sym-seq", "prc")])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sequential_symmetric_nat_goes_direct_by_prediction(a: str, b: str, seed: int) -> None:
    """The ping stream starts on the relay at once; once ordinary checks failed (three
    unanswered sends, ~1.5 s), the easy side probes the predicted ports and the path moves
    direct — the ping stream never stops."""
    r = _virtual(a, b, seed)
    assert r["direct_at"] is not None and r["direct_at"] < 3.0, r
    easy, hard = ("alice", "bob") if a == "prc" else ("bob", "alice")
    probes = r["probes"]
    assert isinstance(probes, dict)
    assert 1 <= probes[easy] <= HardNatConfig().window and probes[hard] == 0, r
    assert r["gap"] < 0.2, r


def test_without_hard_nat_the_pair_stays_relayed() -> None:
    r = _virtual("prc", "sym-seq", 1, hard_nat=False)
    assert r["direct_at"] is None and r["probes"] == {"alice": 0, "bob": 0}, r


def test_random_symmetric_nat_birthday_probes_are_bounded_and_the_relay_keeps_going() -> None:
    r = _virtual("prc", "sym", 1)
    probes = r["probes"]
    assert isinstance(probes, dict)
    assert probes["alice"] == HardNatConfig().birthday_probes and probes["bob"] == 0, r
    assert r["gap"] < 0.2, r  # the relayed ping stream was never interrupted

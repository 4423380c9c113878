"""Why a path is what it is (p2ptun.ice.pathreason), from candidate sets as the node has them."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from icesim import make_scenario

from p2ptun.ice import (
    Candidate,
    make_host_candidate,
    make_prflx_candidate,
    make_relay_candidate,
    make_srflx_candidate,
)
from p2ptun.ice.agent import AgentConfig, AgentState
from p2ptun.ice.pathreason import (
    PairOutcome,
    PathFacts,
    classify_nat,
    explain,
    has_ipv6,
    port_mapped,
)

RV = "203.0.113.10"
RV2 = "203.0.113.11"


def host(ip: str, port: int = 5000) -> Candidate:
    return make_host_candidate((ip, port), 65535)


def srflx(mapped: tuple[str, int], base: tuple[str, int], server: str = RV) -> Candidate:
    return make_srflx_candidate(mapped, base, server, 65535)


def relay(port: int, mapped: tuple[str, int], base_ip: str, server: str = RV) -> Candidate:
    return make_relay_candidate((server, port), mapped, base_ip, server, 65535)


def remote_prflx(address: tuple[str, int]) -> Candidate:
    return make_prflx_candidate(address, 1_000_000, foundation="prflx1")


# alice: 10.0.1.2 behind 198.51.100.11; bob: 10.0.2.2 behind 198.51.100.12
A_HOST = host("10.0.1.2")
B_HOST = host("10.0.2.2")


def side(
    private: str, public: str, *, port: int = 5000, relay_port: int = 50000
) -> list[Candidate]:
    """host, srflx and relay candidates of a node behind an endpoint-independent NAT."""
    base = (private, 5000)
    return [
        host(private),
        srflx((public, port), base),
        relay(relay_port, (public, port), private),
    ]


def test_a_cone_pair_reads_as_nat_on_both_sides_and_direct() -> None:
    alice = side("10.0.1.2", "198.51.100.11")
    bob = side("10.0.2.2", "198.51.100.12")
    reason = explain(PathFacts(alice, bob, selected=(alice[0], bob[1])))
    assert reason.text == "direct (host↔srflx)"
    assert reason.path == "direct"
    assert (reason.local_nat, reason.remote_nat) == ("nat", "nat")
    assert reason.relay_server is None


def test_peer_reflexive_candidate_of_the_peer_marks_its_nat_symmetric() -> None:
    """The peer's check reached our relay from a port no server saw: endpoint-dependent."""
    alice = side("10.0.1.2", "198.51.100.11")
    bob = [*side("10.0.2.2", "198.51.100.12", port=40001), remote_prflx(("198.51.100.12", 40777))]
    pairs = [
        PairOutcome(alice[0], bob[1], "failed"),
        PairOutcome(alice[0], bob[0], "failed"),
        PairOutcome(alice[2], bob[1], "succeeded"),
    ]
    reason = explain(PathFacts(alice, bob, pairs, selected=(alice[2], bob[1])))
    assert reason.remote_nat == "symmetric" and reason.local_nat == "nat"
    assert reason.text == (
        "relay: peer behind symmetric NAT, no port mapping on either side, no IPv6, "
        f"through our TURN relay {RV}"
    )
    assert reason.direct_pairs == {"succeeded": 0, "failed": 2, "pending": 0}
    assert reason.relay_server == RV


def test_srflx_candidates_that_differ_per_server_mark_a_symmetric_nat() -> None:
    base = ("10.0.1.2", 5000)
    ours = [
        host("10.0.1.2"),
        srflx(("198.51.100.11", 40001), base, RV),
        srflx(("198.51.100.11", 40002), base, RV2),
    ]
    assert classify_nat(ours) == "symmetric"
    # A relay's mapped address is not compared: over TCP it is a TCP mapping, whose port
    # differs from the UDP one on any NAT.
    ours = [host("10.0.1.2"), srflx(("198.51.100.11", 40001), base, RV)]
    ours.append(relay(50000, ("198.51.100.11", 40009), "10.0.1.2", RV2))
    assert classify_nat(ours) == "nat"


def test_our_own_peer_reflexive_mapping_marks_us_symmetric_and_both_sides_read_so() -> None:
    base = ("10.0.1.2", 5000)
    alice = [*side("10.0.1.2", "198.51.100.11", port=40001)]
    alice.append(make_prflx_candidate(("198.51.100.11", 40555), 1000, base=base))
    bob = [*side("10.0.2.2", "198.51.100.12", port=41001), remote_prflx(("198.51.100.12", 41999))]
    reason = explain(PathFacts(alice, bob, selected=(alice[2], bob[2])))
    assert reason.text.startswith("relay: both sides behind symmetric NATs, ")
    assert reason.text.endswith(f"through our TURN relay {RV}")


def test_two_bases_behind_one_nat_are_not_a_symmetric_nat() -> None:
    ours = [
        host("10.0.1.2"),
        host("10.0.1.3"),
        srflx(("198.51.100.11", 5000), ("10.0.1.2", 5000)),
        srflx(("198.51.100.11", 5001), ("10.0.1.3", 5000)),
    ]
    assert classify_nat(ours) == "nat"


def test_a_public_host_reads_as_no_nat_and_unknown_without_any_mapping() -> None:
    public = [host("192.0.2.5"), relay(50000, ("192.0.2.5", 5000), "192.0.2.5")]
    assert classify_nat(public) == "none"
    assert classify_nat([host("10.0.1.2")]) == "unknown"
    assert classify_nat([]) == "unknown"


def test_relay_through_the_peers_relay_and_direct_checks_failed_without_a_symmetric_sign() -> None:
    alice = side("10.0.1.2", "198.51.100.11")
    bob = side("10.0.2.2", "198.51.100.12")
    pairs = [
        PairOutcome(alice[0], bob[1], "failed", "timeout"),
        PairOutcome(alice[2], bob[2], "succeeded"),
    ]
    reason = explain(PathFacts(alice, bob, pairs, selected=(alice[1], bob[2])))
    assert reason.text == (
        "relay: direct checks failed (1 pair: no answer), no port mapping on either side, "
        f"no IPv6, through the peer's TURN relay {RV}"
    )
    assert reason.direct_failures == {"timeout": 1}
    # Several causes are counted each.
    pairs = [
        PairOutcome(alice[0], bob[1], "failed", "timeout"),
        PairOutcome(alice[0], bob[0], "failed", "timeout"),
        PairOutcome(alice[1], bob[0], "failed", "error 403"),
    ]
    reason = explain(PathFacts(alice, bob, pairs, selected=(alice[2], bob[2])))
    assert reason.text.startswith(
        "relay: direct checks failed (3 pairs: 1 error 403, 2 no answer), no port mapping"
    )


def test_hard_nat_probing_that_was_tried_is_named() -> None:
    alice = side("10.0.1.2", "198.51.100.11")
    bob = side("10.0.2.2", "198.51.100.12")
    pairs = [PairOutcome(alice[0], bob[1], "failed", "timeout")]
    tried = "port prediction tried (72 probes)"
    facts = PathFacts(alice, bob, pairs, selected=(alice[1], bob[2]), hard_nat=tried)
    reason = explain(facts)
    assert reason.text == (
        f"relay: direct checks failed (1 pair: no answer), {tried}, no port mapping on either "
        f"side, no IPv6, through the peer's TURN relay {RV}"
    )
    assert reason.as_json()["hard_nat"] == tried
    assert explain(PathFacts(alice, bob, pairs, selected=(alice[1], bob[2]))).hard_nat is None


def test_relay_first_while_direct_checks_run_says_so() -> None:
    alice = side("10.0.1.2", "198.51.100.11")
    bob = side("10.0.2.2", "198.51.100.12")
    pairs = [
        PairOutcome(alice[0], bob[1], "in-progress"),
        PairOutcome(alice[0], bob[0], "waiting"),
        PairOutcome(alice[2], bob[2], "succeeded"),
    ]
    reason = explain(PathFacts(alice, bob, pairs, selected=(alice[2], bob[2])))
    assert reason.text.startswith("relay: direct checks still running (2 pairs), ")
    assert reason.direct_pairs["pending"] == 2


def test_ipv6_on_both_sides_direct_over_ipv6() -> None:
    a6, b6 = host("2001:db8:1::2"), host("2001:db8:2::2")
    alice = [*side("10.0.1.2", "198.51.100.11"), a6]
    bob = [*side("10.0.2.2", "198.51.100.12"), b6]
    reason = explain(PathFacts(alice, bob, selected=(a6, b6)))
    assert reason.text == "direct (host↔host) over IPv6"
    assert reason.ipv6_local and reason.ipv6_remote
    # Only one side with IPv6 (link-local does not count): said so when relayed.
    alice = [*side("10.0.1.2", "198.51.100.11"), a6, host("fe80::1")]
    bob = [*side("10.0.2.2", "198.51.100.12"), host("fe80::2")]
    reason = explain(PathFacts(alice, bob, selected=(alice[2], bob[2])))
    assert "no IPv6 on the peer" in reason.text
    assert has_ipv6(alice) and not has_ipv6(bob)


def test_no_path_without_any_relay_says_so() -> None:
    alice = [host("10.0.1.2"), srflx(("198.51.100.11", 5000), ("10.0.1.2", 5000))]
    bob = [host("10.0.2.2"), srflx(("198.51.100.12", 5000), ("10.0.2.2", 5000))]
    pairs = [PairOutcome(alice[0], bob[1], "failed")]
    reason = explain(PathFacts(alice, bob, pairs))
    assert reason.path is None
    assert reason.text == (
        "no path: direct checks failed (1 pair: failed), no port mapping on either side, "
        "no IPv6, no TURN relay on either side"
    )
    assert not reason.turn_local and not reason.turn_remote
    # Before anything was checked (the peer's candidates have not come yet).
    reason = explain(PathFacts(alice, []))
    assert reason.text == "no path yet: no candidates from the peer yet"
    # While the checks run.
    pending = [PairOutcome(alice[0], bob[1], "in-progress")]
    reason = explain(PathFacts(alice, bob, pending))
    assert reason.text == (
        "no path yet: direct checks still running (1 pair), no port mapping on either side, no IPv6"
    )
    # Candidates but no pair at all (say, only families that do not pair).
    reason = explain(PathFacts(alice, [host("2001:db8:2::2")]))
    assert reason.text.startswith("no path: no direct pair to check, ")


@dataclasses.dataclass(frozen=True)
class _Mapped(Candidate):
    """A candidate as the port-mapping gatherer will mark it."""

    mapped: bool = True


def test_port_mapping_reads_the_candidates_flag() -> None:
    base = ("10.0.1.2", 5000)
    plain = srflx(("198.51.100.11", 5000), base)
    assert not port_mapped(plain)
    fields = {f.name: getattr(plain, f.name) for f in dataclasses.fields(Candidate)}
    mapped = _Mapped(**fields)
    assert port_mapped(mapped)
    bob = side("10.0.2.2", "198.51.100.12")
    reason = explain(PathFacts([host("10.0.1.2"), mapped], bob, selected=(mapped, bob[1])))
    assert reason.text == "direct (srflx↔srflx) via port mapping here"
    assert reason.port_mapping_local and not reason.port_mapping_remote
    reason = explain(PathFacts([host("10.0.1.2"), mapped], bob, selected=(mapped, bob[2])))
    assert "port mapping here only" in reason.text


def test_json_facts_are_plain_values() -> None:
    alice = side("10.0.1.2", "198.51.100.11")
    bob = side("10.0.2.2", "198.51.100.12")
    facts = explain(PathFacts(alice, bob, selected=(alice[2], bob[1]))).as_json()
    assert facts == {
        "local_nat": "nat",
        "remote_nat": "nat",
        "port_mapping": {"local": False, "remote": False},
        "ipv6": {"local": False, "remote": False},
        "turn": {"local": True, "remote": True},
        "direct_pairs": {"succeeded": 0, "failed": 0, "pending": 0},
        "direct_failures": {},
        "relay_server": RV,
        "relay_owner": None,
        "hard_nat": None,
    }


@pytest.mark.parametrize("state", ["frozen", "waiting", "in-progress"])
def test_pending_states_count_as_pending(state: str) -> None:
    pair = PairOutcome(A_HOST, B_HOST, state)
    assert explain(PathFacts([A_HOST], [B_HOST], [pair])).direct_pairs["pending"] == 1


def test_the_nat_comes_first_and_running_checks_after_it() -> None:
    alice = side("10.0.1.2", "198.51.100.11")
    bob = [*side("10.0.2.2", "198.51.100.12"), remote_prflx(("198.51.100.12", 40777))]
    pairs = [PairOutcome(alice[0], bob[1], "in-progress")]
    reason = explain(PathFacts(alice, bob, pairs, selected=(alice[2], bob[1])))
    assert reason.text.startswith(
        "relay: peer behind symmetric NAT, direct checks still running (1 pair), no port"
    )


def test_the_agent_records_how_each_pair_failed_and_the_reason_reads_it() -> None:
    """A port-restricted NAT against a symmetric one, no relay, in the ICE simulator: every
    pair fails, each with its cause, and the explanation of the agent's own facts says so."""
    config = AgentConfig(connect_timeout=None, check_rc=3, check_rm=4)
    s = make_scenario("port", "symmetric", seed=5, relay=False, config_a=config, config_b=config)
    s.start()
    assert s.net.run_while(lambda: s.a.agent.state is AgentState.FAILED, 30)
    agent = s.a.agent
    causes = {p.failure for p in agent.checklist.pairs}
    assert causes and None not in causes and causes <= {"timeout", "non-symmetric"}, causes
    pairs = [PairOutcome(p.local, p.remote, p.state.value, p.failure) for p in agent.checklist]
    reason = explain(PathFacts(agent.local_candidates, agent.remote_candidates, pairs))
    assert reason.path is None
    assert reason.text.startswith("no path: "), reason.text
    assert reason.text.endswith("no TURN relay on either side"), reason.text
    assert sum(reason.direct_failures.values()) == len(pairs)


def test_udp_blocked_shows_as_no_reflexive_candidate() -> None:
    """Behind a NAT that drops UDP: host and a TURN/TCP relay only, no srflx."""
    alice = [host("10.0.1.2"), relay(50000, ("198.51.100.11", 33000), "10.0.1.2")]
    bob = side("10.0.2.2", "198.51.100.12")
    pairs = [PairOutcome(alice[0], bob[1], "failed", "timeout")]
    reason = explain(PathFacts(alice, bob, pairs, selected=(alice[1], bob[1])))
    assert reason.local_nat == "nat"
    assert reason.text == (
        "relay: no server-reflexive candidate here (UDP blocked?), direct checks failed "
        "(1 pair: no answer), no port mapping on either side, no IPv6, "
        f"through our TURN relay {RV}"
    )
    # Seen from the peer.
    reason = explain(PathFacts(bob, alice, [], selected=(bob[1], alice[1])))
    assert "no server-reflexive candidate on the peer (UDP blocked there?)" in reason.text
    # A public host has no reflexive candidate either, and no NAT: nothing to say.
    public = [host("192.0.2.5"), relay(50000, ("192.0.2.5", 5000), "192.0.2.5")]
    reason = explain(PathFacts(public, bob, [], selected=(public[1], bob[1])))
    assert "server-reflexive" not in reason.text


# -- any candidate set a peer can send ---------------------------------------------------------

_IPS = st.sampled_from(
    ["10.0.1.2", "10.0.2.2", "198.51.100.11", "198.51.100.12", RV, "2001:db8::1", "fe80::1"]
)
_ADDRESSES = st.tuples(_IPS, st.integers(1, 65535))


@st.composite
def _candidates(draw: st.DrawFn) -> Candidate:
    kind = draw(st.sampled_from(["host", "srflx", "relay", "prflx", "prflx-local"]))
    address = draw(_ADDRESSES)
    other = draw(_ADDRESSES)
    if kind == "host":
        return host(*address)
    if kind == "srflx":
        return srflx(address, other, draw(st.sampled_from([RV, RV2])))
    if kind == "relay":
        return relay(address[1], other, other[0])
    if kind == "prflx":
        return remote_prflx(address)
    return make_prflx_candidate(address, 1000, base=other)


_STATES = st.sampled_from(["frozen", "waiting", "in-progress", "succeeded", "failed"])
_FAILURES = st.sampled_from([None, "timeout", "error 403", "non-symmetric", "ceased"])


@given(
    local=st.lists(_candidates(), max_size=12),
    remote=st.lists(_candidates(), max_size=12),
    data=st.data(),
)
def test_any_candidate_sets_give_one_line(
    local: list[Candidate], remote: list[Candidate], data: st.DataObject
) -> None:
    pairs = []
    if local and remote:
        for _ in range(data.draw(st.integers(0, 6))):
            pairs.append(
                PairOutcome(
                    data.draw(st.sampled_from(local)),
                    data.draw(st.sampled_from(remote)),
                    data.draw(_STATES),
                    data.draw(_FAILURES),
                )
            )
    selected = None
    if local and remote and data.draw(st.booleans()):
        selected = (data.draw(st.sampled_from(local)), data.draw(st.sampled_from(remote)))
    reason = explain(PathFacts(local, remote, pairs, selected))
    assert reason.text and "\n" not in reason.text
    assert reason.path in ("direct", "relay", None)
    assert reason.text.startswith(("direct (", "relay: ", "no path"))
    assert (reason.path == "relay") == reason.text.startswith("relay: ")
    assert {reason.local_nat, reason.remote_nat} <= {"none", "nat", "symmetric", "unknown"}
    assert sum(reason.direct_failures.values()) == reason.direct_pairs["failed"]
    json.dumps(reason.as_json())


def test_a_peer_relay_is_named_after_the_peer_that_runs_it() -> None:
    alice = side("10.0.1.2", "198.51.100.11")
    bob = side("10.0.2.2", "198.51.100.12")
    on_carol = relay(50010, ("198.51.100.11", 5000), "10.0.1.2", "192.0.2.18")
    facts = PathFacts(
        [*alice, on_carol], bob, selected=(on_carol, bob[1]), relay_owners={"192.0.2.18": "carol"}
    )
    reason = explain(facts)
    assert reason.text.endswith("through the peer relay of carol 192.0.2.18")
    assert (reason.relay_server, reason.relay_owner) == ("192.0.2.18", "carol")
    assert reason.as_json()["relay_owner"] == "carol"
    # The rendezvous' relay keeps its words.
    reason = explain(dataclasses.replace(facts, selected=(alice[2], bob[1])))
    assert reason.text.endswith(f"through our TURN relay {RV}") and reason.relay_owner is None


def test_the_port_mapping_extension_marks_a_candidate_and_names_the_gateway() -> None:
    """The port-mapping gatherer's srflx carries ``mapped <protocol>@<gateway>``."""
    base = ("10.0.1.2", 5000)
    mapped = make_srflx_candidate(
        ("198.51.100.11", 41000), base, "10.0.1.1", 65535, extensions=(("mapped", "pcp@10.0.1.1"),)
    )
    assert port_mapped(mapped)
    bob = side("10.0.2.2", "198.51.100.12")
    reason = explain(PathFacts([host("10.0.1.2"), mapped], bob, selected=(mapped, bob[1])))
    assert reason.text == "direct (srflx↔srflx) via port mapping here (PCP on 10.0.1.1)"
    # Seen from the peer (the extension travels with the candidate), and without a gateway.
    reason = explain(PathFacts(bob, [host("10.0.1.2"), mapped], selected=(bob[1], mapped)))
    assert reason.text.endswith("via port mapping on the peer (PCP on 10.0.1.1)")
    assert reason.port_mapping_remote and not reason.port_mapping_local
    odd = dataclasses.replace(mapped, extensions=(("mapped", "1"),))
    reason = explain(PathFacts([odd], bob, selected=(odd, bob[1])))
    assert reason.text == "direct (srflx↔srflx) via port mapping here"

"""Property: over random seeds and impairments (loss ≤ 20 %, duplication, reordering), two
agents behind endpoint-independent-mapping NATs always connect directly within a bounded
virtual time, never send to an address they did not learn, and never exceed their limits."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from icesim import make_scenario

from p2ptun.ice.agent import AgentConfig

#: Virtual seconds within which the agents must be connected, loss included.
CONNECT_WITHIN = 30.0


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
@given(
    seed=st.integers(0, 2**32 - 1),
    loss=st.floats(0.0, 0.2),
    duplicate=st.floats(0.0, 0.1),
    jitter=st.floats(0.0, 0.08),
    nat_a=st.sampled_from(["full", "restricted", "port"]),
    nat_b=st.sampled_from(["full", "restricted", "port"]),
    a_controlling=st.booleans(),
    b_controlling=st.booleans(),
)
def test_cone_nats_always_connect(
    seed: int,
    loss: float,
    duplicate: float,
    jitter: float,
    nat_a: str,
    nat_b: str,
    a_controlling: bool,
    b_controlling: bool,
) -> None:
    config = AgentConfig(max_pairs=20, max_transactions=16, max_early_checks=8)
    s = make_scenario(
        nat_a,
        nat_b,
        seed=seed,
        loss=loss,
        duplicate=duplicate,
        jitter=jitter,
        a_controlling=a_controlling,
        b_controlling=b_controlling,
        config_a=config,
        config_b=config,
    )
    s.start()
    assert s.net.run_while(s.connected, CONNECT_WITHIN, step=0.05), (
        s.a.agent.state,
        s.b.agent.state,
    )
    sel = s.a.agent.selected_pair
    assert sel is not None and not sel.relayed
    assert s.a.agent.controlling != s.b.agent.controlling
    # Keep running a while: consent holds despite the loss, limits hold throughout.
    s.net.run_until(s.net.now + 30)
    for peer in (s.a, s.b):
        assert peer.violations == []
        seen = peer.max_seen
        assert seen["pairs"] <= config.max_pairs
        assert seen["transactions"] <= config.max_transactions
        assert seen["remote"] <= config.max_remote_candidates
        assert seen["local"] <= config.max_local_candidates
        assert seen["early"] <= config.max_early_checks


_HOLE_PUNCHING_FAILS = {("port", "symmetric"), ("symmetric", "port"), ("symmetric", "symmetric")}


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
@given(
    seed=st.integers(0, 2**32 - 1),
    loss=st.floats(0.0, 0.2),
    nat_a=st.sampled_from(["public", "full", "restricted", "port", "symmetric"]),
    nat_b=st.sampled_from(["public", "full", "restricted", "port", "symmetric"]),
    restart_a=st.booleans(),
)
def test_any_nats_connect_and_restart_without_a_gap(
    seed: int, loss: float, nat_a: str, nat_b: str, restart_a: bool
) -> None:
    """Every NAT pair connects (relayed exactly where hole punching cannot work), and an ICE
    restart from either side moves both to the new generation with ``can_send`` true all
    along, despite loss, duplication and reordering."""
    s = make_scenario(nat_a, nat_b, seed=seed, loss=loss, duplicate=0.05, jitter=0.05)
    s.start()
    assert s.net.run_while(s.connected, CONNECT_WITHIN, step=0.05)
    sel = s.a.agent.selected_pair
    assert sel is not None
    assert sel.relayed == ((nat_a, nat_b) in _HOLE_PUNCHING_FAILS)
    gaps: list[float] = []
    end = s.net.now + 60

    def tick() -> None:
        now = s.net.now
        if not (s.a.agent.can_send(now) and s.b.agent.can_send(now)):
            gaps.append(now)
        if now < end:
            s.net.schedule(now + 0.05, tick)

    tick()
    (s.a if restart_a else s.b).initiate_restart()

    def restarted() -> bool:
        pa, pb = s.a.agent.selected_pair, s.b.agent.selected_pair
        if pa is None or pb is None:
            return False
        return s.connected() and pa.generation == 1 == pb.generation

    assert s.net.run_while(restarted, 60, step=0.05)
    assert gaps == []
    assert s.a.violations == [] and s.b.violations == []

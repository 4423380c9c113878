"""Property: over random seeds and impairments (loss ≤ 20 %, duplication, reordering), two
agents behind endpoint-independent-mapping NATs always connect directly within a bounded
virtual time, never send to an address they did not learn, and never exceed their limits."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from icesim import make_scenario

from p2ptun.ice.agent import IceConfig

#: Virtual seconds within which the agents must be connected, loss included.
CONNECT_WITHIN = 30.0


@settings(
    max_examples=40,
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
    config = IceConfig(max_pairs=20, max_transactions=16, max_early_checks=8)
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

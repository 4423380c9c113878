"""The cluster shell's bounds that need no Redis: what waits for Redis while it is away."""

from __future__ import annotations

from p2ptun.config.rendezvous import parse_redis_url
from p2ptun.config.schema import ClusterSettings
from p2ptun.keys import generate_private_key
from p2ptun.net.system import SystemHost
from p2ptun.rendezvous.cluster import ClusterLink
from p2ptun.rendezvous.redis_store import RedisStore
from p2ptun.signal.cluster import Forward, NodeDown
from p2ptun.signal.hub import SignalingServerCore


def link(max_outbox: int) -> ClusterLink:
    store = RedisStore(True)
    core = SignalingServerCore(
        generate_private_key(), store, rng=bytes, wall_clock=lambda: 0.0, instance="rv-a"
    )
    settings = ClusterSettings(parse_redis_url("redis://127.0.0.1:1/0"), "rv-a")
    return ClusterLink(
        SystemHost(), settings, core, store, None, lambda: None, max_outbox=max_outbox
    )


def test_the_outbox_is_bounded_while_redis_is_away() -> None:
    cluster = link(max_outbox=3)
    cluster.send([NodeDown("rv-a", f"n{i}") for i in range(5)])  # two commands each
    assert cluster.counters.outbox_dropped == 7
    cluster.send([Forward("rv-b", "a", "b", b"x" * 100)])
    assert cluster.counters.outbox_dropped == 8


def test_a_store_conflict_is_corrected_from_redis() -> None:
    store = RedisStore(True)
    first = store.admit("zed", b"k" * 32, now=0.0, source="s")
    assert first.allowed and first.new_binding
    assert store.take_new() == [("zed", b"k" * 32)]
    store.learn("zed", b"j" * 32)  # another instance's binding won
    assert store.conflicts == 1
    assert not store.admit("zed", b"k" * 32, now=1.0, source="s").allowed
    assert store.admit("zed", b"j" * 32, now=1.0, source="t").allowed
    assert not store.known(b"k" * 32) and store.known(b"j" * 32)

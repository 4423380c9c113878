"""The TURN core's timer under virtual time: ``next_wakeup()`` is the earliest expiry that is
really due (RFC 8656 §6, §9, §12), so an idle server with refreshed allocations never wakes,
and one that stops being refreshed expires each thing at its lifetime."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from test_turn_server import PEER, PEER2, Client, allocated, ft, make_server, ok

from p2ptun.stun import AttrType, Method
from p2ptun.turn.server import (
    CHANNEL_LIFETIME,
    DEFAULT_LIFETIME,
    PERMISSION_LIFETIME,
    CloseRelay,
    TurnServer,
)


def permit(client: Client, peer: Any, now: float) -> None:
    assert ok(client.request(Method.CREATE_PERMISSION, [(AttrType.XOR_PEER_ADDRESS, peer)], now))


def bind(client: Client, number: int, peer: Any, now: float) -> None:
    attrs = [(AttrType.CHANNEL_NUMBER, number), (AttrType.XOR_PEER_ADDRESS, peer)]
    assert ok(client.request(Method.CHANNEL_BIND, attrs, now))


def refresh(client: Client, now: float) -> None:
    assert ok(client.request(Method.REFRESH, [], now))


def earliest_expiry(server: TurnServer) -> float | None:
    """What the next wake-up must be, from the state itself."""
    times: list[float] = []
    for alloc in server.allocations.values():
        times.append(alloc.expires)
        times.extend(alloc.permissions.values())
        times.extend(c.expires for c in alloc.channels.values())
    return min(times, default=None)


def test_next_wakeup_follows_refreshes_exactly() -> None:
    server, client, _ = allocated()
    assert server.next_wakeup() == DEFAULT_LIFETIME
    permit(client, PEER, 10.0)
    assert server.next_wakeup() == 10.0 + PERMISSION_LIFETIME
    permit(client, PEER, 250.0)  # the permission moves later: so does the wake-up
    assert server.next_wakeup() == 250.0 + PERMISSION_LIFETIME
    permit(client, PEER, 400.0)  # now the allocation expires first
    assert server.next_wakeup() == DEFAULT_LIFETIME
    refresh(client, 500.0)
    assert server.next_wakeup() == 400.0 + PERMISSION_LIFETIME


def test_refreshed_idle_allocations_never_wake_the_server() -> None:
    """Two allocations, each with a permission and a channel, refreshed on p2ptun's client
    schedule (allocation 60 s early, permission every 240 s, channel every 480 s) for ten
    virtual minutes: the server's timer is never due; nothing expires."""
    server = make_server()
    clients = [Client(server, ft(40000 + i)) for i in range(2)]
    schedule: list[tuple[float, int, str]] = []
    for i, client in enumerate(clients):
        start = 7.0 * i
        assert ok(client.allocate(start))
        bind(client, 0x4000, (PEER, PEER2)[i], start)
        permit(client, (PEER, PEER2)[i], start)
        schedule += [
            (start + DEFAULT_LIFETIME - 60, i, "refresh"),
            (start + 240.0, i, "permit"),
            (start + 480.0, i, "bind"),
        ]
    timer_runs = 0
    now = 0.0
    while True:
        schedule.sort()
        due, i, what = schedule[0]
        wake = server.next_wakeup()
        assert wake is not None
        if wake <= due:
            now = wake
            timer_runs += 1
            server.handle_timeout(now)
            continue
        now = due
        if now > 600.0 + 3600.0:
            break
        client = clients[i]
        if what == "refresh":
            refresh(client, now)
            schedule[0] = (now + DEFAULT_LIFETIME - 60, i, what)
        elif what == "permit":
            permit(client, (PEER, PEER2)[i], now)
            schedule[0] = (now + 240.0, i, what)
        else:
            bind(client, 0x4000, (PEER, PEER2)[i], now)
            schedule[0] = (now + 480.0, i, what)
    assert timer_runs == 0
    assert server.state_size()["allocations"] == 2
    assert server.counters.permissions_expired == server.counters.channels_expired == 0


def test_without_refreshes_each_expiry_is_one_timer_run_at_its_time() -> None:
    server, client, response = allocated()
    relay = response.xor_relayed_address
    bind(client, 0x4001, PEER, 100.0)  # channel until 700 > allocation (600)
    permit(client, PEER2, 200.0)  # until 500
    runs: list[tuple[float, list[Any]]] = []
    while (wake := server.next_wakeup()) is not None:
        before = server.state_size()
        assert server.handle_timeout(wake - 1e-6) == []
        assert server.state_size() == before  # nothing goes early
        runs.append((wake, server.handle_timeout(wake)))
    assert [t for t, _ in runs] == [100.0 + PERMISSION_LIFETIME, 200.0 + PERMISSION_LIFETIME, 600.0]
    assert runs[-1][1] == [CloseRelay(relay)]  # type: ignore[arg-type]
    assert server.counters.permissions_expired == 2
    assert server.counters.allocations_expired == 1
    assert CHANNEL_LIFETIME + 100.0 > DEFAULT_LIFETIME  # the channel went with the allocation


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 2),  # client
            st.sampled_from(["allocate", "refresh", "permit", "bind", "delete", "wait"]),
            st.floats(0.0, 400.0),  # time step before it
        ),
        max_size=60,
    )
)
def test_next_wakeup_is_always_the_earliest_expiry(steps: list[tuple[int, str, float]]) -> None:
    server = make_server()
    clients = [Client(server, ft(41000 + i)) for i in range(3)]
    now = 0.0
    for i, what, step in steps:
        now += step
        while (wake := server.next_wakeup()) is not None and wake <= now:
            server.handle_timeout(wake)
        assert server.next_wakeup() == earliest_expiry(server)
        client = clients[i]
        if what == "allocate":
            client.allocate(now)
        elif what == "refresh":
            client.request(Method.REFRESH, [], now)
        elif what == "permit":
            client.request(Method.CREATE_PERMISSION, [(AttrType.XOR_PEER_ADDRESS, PEER)], now)
        elif what == "bind":
            attrs = [(AttrType.CHANNEL_NUMBER, 0x4000 + i), (AttrType.XOR_PEER_ADDRESS, PEER2)]
            client.request(Method.CHANNEL_BIND, attrs, now)
        elif what == "delete":
            client.request(Method.REFRESH, [(AttrType.LIFETIME, 0)], now)
        assert server.next_wakeup() == earliest_expiry(server)
        # Stale entries never pile up beyond the rebuild bound.
        assert len(server._schedule) <= 2 * len(server.allocations) + 65
    while (wake := server.next_wakeup()) is not None:
        server.handle_timeout(wake)
    assert server.state_size() == dict.fromkeys(server.state_size(), 0)


def test_frequent_refreshes_do_not_grow_the_schedule() -> None:
    server, client, _ = allocated()
    for k in range(1000):
        permit(client, PEER, k / 4)  # the permission is the earliest expiry each time
    assert len(server._schedule) <= 2 * len(server.allocations) + 65
    assert server.next_wakeup() == 999 / 4 + PERMISSION_LIFETIME

"""M4: open registration cannot be farmed for names, presence, relays or junk.

With ``open_registration = true`` a stranger used to claim names without limit (300 in
0.4 s), watch anyone's presence, get 24 h TURN credentials (an open relay), grow the
rendezvous' memory with watches, and route junk that made its victims log a warning per
message. Now new names are limited per source and in total, presence is shown only to nodes
the watched node lists itself, only listed nodes get TURN credentials, and a route reaches a
node only if it lists the sender.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
from hostile_env import ATTACKER, LEGIT, Refused, register, rendezvous

from p2ptun.keys import generate_private_key, public_key
from p2ptun.signal.client import (
    PresenceChanged,
    SignalClientCore,
    TurnCredentialsReceived,
    TurnUnavailable,
)
from p2ptun.signal.messages import Route

pytestmark = pytest.mark.slow

ATTEMPTS = 60
WATCHERS = 40


def pump(core: SignalClientCore, sock: socket.socket, seconds: float) -> list[object]:
    """Exchange bytes for ``seconds``; the events the client saw."""
    events: list[object] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        out = core.data_to_send()
        if out:
            sock.sendall(out)
        sock.settimeout(max(0.01, min(0.05, deadline - time.monotonic())))
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        if not data:
            break
        core.data_received(data, time.monotonic())
        events.extend(core.events())
    return events


def test_a_stranger_cannot_farm_names(tmp_path: Path) -> None:
    with rendezvous(tmp_path, open_registration=True) as rv:
        claimed = refused = 0
        start = time.monotonic()
        for i in range(ATTEMPTS):
            try:
                register(
                    rv.signal_addr,
                    rv.public,
                    f"squat{i}",
                    generate_private_key(),
                    source=ATTACKER,
                    timeout=5,
                )
                claimed += 1
            except (Refused, ConnectionError):  # refused as busy, or past the connect rate
                refused += 1
        elapsed = time.monotonic() - start
        print(
            f"FIGURE M4 names claimed by one address: {claimed} of {ATTEMPTS} in "
            f"{elapsed:.2f} s ({refused} refused)"
        )
        assert claimed <= 5
        # Another address may still enrol its own node.
        register(rv.signal_addr, rv.public, "newcomer", generate_private_key(), source=LEGIT)


def test_presence_turn_and_routes_need_the_victim_to_list_you(tmp_path: Path) -> None:
    alice_key = generate_private_key()
    bob_key = generate_private_key()
    with rendezvous(
        tmp_path, open_registration=True, nodes={"alice": alice_key, "bob": bob_key}
    ) as rv:
        victim_events: list[object] = []
        refusals: list[int] = []
        ready = threading.Event()

        def victim_holds(core: SignalClientCore, sock: socket.socket) -> None:
            ready.set()
            victim_events.extend(pump(core, sock, 3.0))
            refusals.append(core.counters.refused_signals)

        victim = threading.Thread(
            target=register,
            args=(rv.signal_addr, rv.public, "alice", alice_key),
            kwargs={"peers": {"bob": public_key(bob_key)}, "hold": victim_holds},
        )
        victim.start()
        assert ready.wait(5)
        seen: dict[str, object] = {}

        def stranger(core: SignalClientCore, sock: socket.socket) -> None:
            events = pump(core, sock, 0.5)
            seen["presence"] = [e for e in events if isinstance(e, PresenceChanged)]
            core.request_turn()
            events = pump(core, sock, 0.5)
            seen["turn"] = [
                e for e in events if isinstance(e, TurnCredentialsReceived | TurnUnavailable)
            ]
            for ref in range(50):  # junk "sealed" messages to alice
                core._send(Route(ref, "alice", b"\x01" + bytes(64)))
            pump(core, sock, 0.5)

        register(
            rv.signal_addr,
            rv.public,
            "mallory",
            generate_private_key(),
            source=ATTACKER,
            peers={"alice": public_key(alice_key)},
            hold=stranger,
        )
        victim.join(10)
        presence = seen["presence"]
        turn = seen["turn"]
        print(
            f"FIGURE M4 stranger saw alice online: "
            f"{any(getattr(p, 'online', False) for p in presence)}; TURN: "
            f"{[type(t).__name__ for t in turn]}; junk refused by alice: {refusals}"
        )
        assert not any(getattr(p, "online", False) for p in presence)
        assert len(turn) == 1 and isinstance(turn[0], TurnUnavailable)
        assert refusals == [0]


def test_watches_do_not_grow_memory_without_bound(tmp_path: Path) -> None:
    with rendezvous(tmp_path, open_registration=True) as rv:
        time.sleep(0.5)
        before = rv.stats()
        names = {f"ghost{i:04d}": public_key(generate_private_key()) for i in range(1024)}
        held: list[threading.Thread] = []
        stop = threading.Event()

        def hold(core: SignalClientCore, sock: socket.socket) -> None:
            pump(core, sock, 0.5)
            stop.wait(10)

        for i in range(WATCHERS):
            done = threading.Event()

            def attempt(i: int = i, done: threading.Event = done) -> None:
                try:
                    register(
                        rv.signal_addr,
                        rv.public,
                        f"watcher{i}",
                        generate_private_key(),
                        source=ATTACKER,
                        peers=names,
                        hold=lambda c, s: (done.set(), hold(c, s)),
                    )
                except (Refused, ConnectionError, TimeoutError):
                    pass
                finally:
                    done.set()

            thread = threading.Thread(target=attempt)
            thread.start()
            held.append(thread)
            done.wait(5)
        time.sleep(0.5)
        after = rv.stats()
        stop.set()
        for thread in held:
            thread.join(15)
        growth = after.rss_kib - before.rss_kib
        print(
            f"FIGURE M4 rendezvous RSS growth for {WATCHERS} strangers watching 1024 names each: "
            f"{growth} KiB"
        )
        assert growth < 3 * 1024

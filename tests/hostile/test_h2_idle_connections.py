"""H2: idle TCP connections cannot lock nodes out of the rendezvous.

512 connections that never send a byte, reopened before the 10 s handshake timeout (≈ 51
connects a second from one address), used to fill the table of unregistered connections and
lock every node out, each refusal writing a WARNING line. Now one source (an IPv4 address or an
IPv6 /64) holds at most 16 unregistered connections and opens at most 10 a second (40 at
once); when many sources fill the table together, the oldest entry makes room for the newest;
refusals are logged sparingly.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hostile_env import ATTACKER, LEGIT, Rendezvous, log_lines, register, rendezvous

from p2ptun.keys import generate_private_key

pytestmark = pytest.mark.slow


def flood(
    rv: Rendezvous, sources: Callable[[int], str], total: int, stop: threading.Event
) -> tuple[threading.Thread, list[int]]:
    """Hold up to ``total`` idle connections from ``sources(i)``, reopening any that the
    rendezvous closes, until ``stop``; the count of connects made is in the list."""
    made = [0]

    def run() -> None:
        held: list[socket.socket | None] = [None] * total
        try:
            while not stop.is_set():
                for i in range(total):
                    if stop.is_set():
                        break
                    sock = held[i]
                    if sock is not None:
                        try:
                            sock.setblocking(False)
                            alive = sock.recv(1, socket.MSG_PEEK) != b""
                        except BlockingIOError:
                            alive = True
                        except OSError:
                            alive = False
                        if alive:
                            continue
                        sock.close()
                    try:
                        held[i] = socket.create_connection(
                            rv.signal_addr, timeout=1, source_address=(sources(i), 0)
                        )
                        made[0] += 1
                    except OSError:
                        held[i] = None
                time.sleep(0.05)
        finally:
            for sock in held:
                if sock is not None:
                    sock.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, made


@pytest.mark.parametrize(
    ("label", "sources", "total"),
    [
        ("one address", lambda i: ATTACKER, 600),
        ("64 addresses", lambda i: f"127.0.1.{1 + i % 64}", 1024),
    ],
)
def test_node_registers_while_idle_connections_flood(
    tmp_path: Path, label: str, sources: Callable[[int], str], total: int
) -> None:
    key = generate_private_key()
    with rendezvous(tmp_path, nodes={"alice": key}) as rv:
        base = rv.stats()
        log_before = len(rv.log())
        stop = threading.Event()
        thread, made = flood(rv, sources, total, stop)
        try:
            time.sleep(3.0)  # the flood reaches its steady state
            during = rv.stats()
            took: float | None = None
            outcome = ""
            try:
                took = register(rv.signal_addr, rv.public, "alice", key, source=LEGIT, timeout=5)
                outcome = f"registered in {took * 1e3:.0f} ms"
            except (ConnectionError, TimeoutError, OSError) as exc:
                outcome = f"locked out ({type(exc).__name__})"
            time.sleep(1.0)
        finally:
            stop.set()
            thread.join(30)
        log = rv.log()[log_before:]
        warnings = log_lines(log, "warning")
        print(
            f"FIGURE H2 {label}: {made[0]} connects in 4 s; alice {outcome}; "
            f"rendezvous fds {base.fds} -> {during.fds}, RSS "
            f"{base.rss_kib} -> {during.rss_kib} KiB; {warnings} warning lines"
        )
        assert took is not None and took < 1.0
        assert warnings <= 20
        assert during.fds - base.fds <= 600
        time.sleep(0.5)
        assert rv.stats().fds - base.fds <= 20  # all gone once the flood stops

"""Path history in ``p2ptun status`` (per peer, bounded): the path changes of real node
daemons on the in-memory network under virtual time, each with its time and reason — the
first selection, a black-holed direct path (consent lost, data to the standby relay), the way
back to direct, and a closed path."""

from __future__ import annotations

from collections import deque

import trio
import trio.testing

from p2plab.memlab import MemoryLab
from p2ptun.node import status as status_mod
from p2ptun.node.peer import PATH_HISTORY, PathChange


async def test_status_shows_each_path_change_with_its_reason(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lab = MemoryLab(seed=1)
    alice, bob = lab.pair("cone", "cone")
    async with trio.open_nursery() as nursery:
        await lab.start(nursery)
        await lab.ping_stream(nursery, alice, bob)
        await trio.sleep(10)

        def peer() -> dict:  # type: ignore[type-arg]
            return alice.daemon.status()["peers"][0]

        first = peer()["path_history"]
        assert first[0]["reason"] == "selected"
        assert peer()["path_reason"] == first[-1]["reason"]
        assert first[-1]["path"] == "direct"
        assert first[-1]["remote"] == peer()["remote_candidate"]["address"]
        assert first[-1]["ago"] >= 9

        lab.block_direct(alice, bob)
        await lab.wait_until(lambda: peer()["path"] == "relay", 5)
        lost = peer()["path_history"][-1]
        assert (lost["path"], lost["reason"]) == ("relay", "consent lost: moved to the standby")
        assert lost["ago"] < 1
        lab.network.blocked = None
        await lab.wait_until(lambda: peer()["path"] == "direct", 60)
        back = peer()["path_history"][-1]
        assert back["path"] == "direct"
        assert back["reason"] in ("upgrade to direct", "restart: path lost"), back
        text = status_mod.render(alice.daemon.status())
        assert "path changes of bob (newest first):" in text
        assert "consent lost: moved to the standby" in text

        alice.daemon.stop()
        await lab.wait_until(lambda: not alice.host.tuns, 10)
        closed = alice.daemon.peers["bob"].history[-1]
        assert (closed.path, closed.reason) == (None, "shutting down")
        nursery.cancel_scope.cancel()
    print(status_mod.render(alice.daemon.status()))


def test_the_history_is_bounded_and_the_table_shows_the_newest() -> None:
    history: deque[PathChange] = deque(maxlen=PATH_HISTORY)
    for i in range(3 * PATH_HISTORY):
        history.append(PathChange(float(i), "direct", f"change {i}"))
    assert len(history) == PATH_HISTORY and history[0].reason == f"change {2 * PATH_HISTORY}"
    status = {
        "node": {"name": "a", "interface": "p2p0", "addresses": [], "rendezvous": "connected"},
        "peers": [
            {
                "name": "bob",
                "path_history": [
                    {"ago": 100.0 - c.at, "path": c.path, "reason": c.reason, "remote": None}
                    for c in history
                ],
            }
        ],
    }
    text = status_mod.render(status)
    shown = [line for line in text.splitlines() if "change " in line]
    assert len(shown) == status_mod.HISTORY_SHOWN
    assert shown[0].endswith(f"change {3 * PATH_HISTORY - 1}")

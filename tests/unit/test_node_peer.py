"""PeerSession under virtual time with fake node parts: the offer/retry clocks never spin, an
unanswered offer is made again only while the peer is online, a pending offer of the peer's
suppresses our own, and a selected pair becomes the WireGuard path."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import trio
import trio.testing

from p2ptun.addr import Address
from p2ptun.config import PeerConfig
from p2ptun.ice import Candidate, make_host_candidate
from p2ptun.keys import generate_private_key, public_key
from p2ptun.node import peer as peer_mod
from p2ptun.node.peer import PeerSession
from p2ptun.signal.negotiation import Negotiation, NegotiationState
from p2ptun.signal.seal import PeerMessage


class FakeCore:
    def __init__(self, name: str) -> None:
        self.negotiations = {name: Negotiation(b"\x01" * 32, b"\x02" * 32)}


@dataclass
class FakeSignaling:
    name: str
    offers: list[tuple[str, bool]] = field(default_factory=list)
    sent: list[PeerMessage] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.core = FakeCore(self.name)

    def offer(self, peer: str, description: str, *, restart: bool = False) -> int:
        self.offers.append((description, restart))
        return len(self.offers)

    def send_to(self, peer: str, message: PeerMessage) -> bool:
        self.sent.append(message)
        return True


class FakeGatherer:
    complete = True

    def __init__(self) -> None:
        self.cands: list[Candidate] = [make_host_candidate(("10.0.1.2", 4000), 65535)]

    async def wait_complete(self) -> None:
        return None

    def candidates(self) -> list[Candidate]:
        return list(self.cands)

    def relay_for(self, relayed: Address) -> None:
        return None


class FakeMux:
    def __init__(self) -> None:
        self.sinks: dict[str, Any] = {}
        self.sent: list[tuple[bytes, Address]] = []

    def add_ice(self, ufrag: str, sink: Any) -> None:
        self.sinks[ufrag] = sink

    def remove_ice(self, sink: Any) -> None:
        for k in [k for k, v in self.sinks.items() if v is sink]:
            del self.sinks[k]

    def note_ice_request(self, data: bytes, sink: Any) -> None:
        pass

    def local_for(self, remote: Address) -> Address:
        return ("10.0.1.2", 4000)

    def send(self, data: bytes, remote: Address) -> bool:
        self.sent.append((data, remote))
        return True


class FakeTunnel:
    def __init__(self) -> None:
        self.endpoints: list[Address | None] = []

    def set_endpoint(self, peer: Any, endpoint: Address | None) -> None:
        self.endpoints.append(endpoint)

    def set_sender(self, peer: Any, sender: Any, endpoint: Address | None) -> None:
        self.endpoints.append(endpoint)

    def flush(self, peer: Any = None) -> None:
        pass


class FakeWg:
    rx_bytes = tx_bytes = 0
    last_handshake = None

    def has_session(self, now: float) -> bool:
        return False

    def initiate_handshake(self, now: float) -> None:
        pass

    def send_keepalive(self, now: float) -> None:
        pass


@dataclass
class Ctx:
    signaling: Any
    tunnel: Any = field(default_factory=FakeTunnel)
    mux: Any = field(default_factory=FakeMux)
    gatherer: Any = field(default_factory=FakeGatherer)
    lite: bool = False
    changes: int = 0

    def peer_changed(self) -> None:
        self.changes += 1


def make_session() -> tuple[PeerSession, Ctx, list[int]]:
    ctx = Ctx(FakeSignaling("bob"))
    cfg = PeerConfig("bob", public_key(generate_private_key()), ())
    session = PeerSession(ctx, cfg, FakeWg())  # type: ignore[arg-type]
    loops = [0]
    original = session._next_deadline

    def counting(now: float) -> float:
        loops[0] += 1
        return original(now)

    session._next_deadline = counting  # type: ignore[method-assign]
    return session, ctx, loops


async def test_offline_peer_never_spins_and_is_not_reoffered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    session, ctx, loops = make_session()
    async with trio.open_nursery() as nursery:
        await nursery.start(session.run)
        await trio.sleep(1)
        assert len(ctx.signaling.offers) == 1  # the first offer (waits for presence)
        session.on_presence(True)
        await trio.sleep(1)
        session.on_presence(False)  # gone before it answered
        await trio.sleep(300)
        assert len(ctx.signaling.offers) == 1
        assert session.stale_wakeups == 0
        assert loops[0] < 100, loops[0]  # a few timer wake-ups, no busy loop
        # Online but silent: offered again every OFFER_TIMEOUT, never faster.
        session.on_presence(True)
        await trio.sleep(peer_mod.OFFER_TIMEOUT * 3 + 1)
        assert 4 <= len(ctx.signaling.offers) <= 5
        assert session.stale_wakeups == 0
        nursery.cancel_scope.cancel()


async def test_pending_offer_of_the_peer_suppresses_ours(
    autojump_clock: trio.testing.MockClock,
) -> None:
    session, ctx, loops = make_session()
    negotiation = ctx.signaling.core.negotiations["bob"]
    negotiation.state = NegotiationState.ANSWERING  # the core accepted the peer's offer
    async with trio.open_nursery() as nursery:
        await nursery.start(session.run)
        await trio.sleep(60)
        assert ctx.signaling.offers == []
        assert session.stale_wakeups == 0 and loops[0] < 200
        nursery.cancel_scope.cancel()


async def test_status_shape_without_path(autojump_clock: trio.testing.MockClock) -> None:
    session, _ctx, _ = make_session()
    status = session.status(trio.current_time())
    assert status["state"] == "connecting" and status["path"] is None
    session.on_presence(False)
    assert session.status(trio.current_time())["state"] == "disconnected"
    result = await session.ping(0.5)
    assert result["rtt_ms"] is None and "no path" in result["error"]

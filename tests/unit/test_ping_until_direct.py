"""``p2ptun ping PEER --until-direct`` and the reasons in ``p2ptun status``, against a control
socket that answers as a daemon whose path to bob turns direct (or never does).

The command's clock is a fake one that its waits advance (and the fake daemon reads), so the
figures it prints are exact, however busy the machine."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from p2ptun import cli
from p2ptun.node import status

Answer = Callable[[dict[str, Any]], dict[str, Any]]


class FakeDaemon:
    """A control socket (``<run_dir>/p2p0.sock``) answering one JSON request per connection."""

    def __init__(self, path: str, answer: Answer) -> None:
        self.requests: list[dict[str, Any]] = []
        self._answer = answer
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(path)
        self._sock.listen(8)
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            with conn:
                data = b""
                while b"\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                request = json.loads(data)
                self.requests.append(request)
                conn.sendall(json.dumps(self._answer(request)).encode() + b"\n")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


def peer(path: str | None, since: float | None, reason: str) -> dict[str, Any]:
    return {
        "name": "bob",
        "state": "connected" if path else "connecting",
        "path": path,
        "local_candidate": {"type": "host", "address": "10.0.1.2:5000"},
        "remote_candidate": {"type": "srflx", "address": "198.51.100.12:5000"},
        "rtt_ms": 1.0,
        "rx_bytes": 0,
        "tx_bytes": 0,
        "last_handshake": None,
        "consent_age": None,
        "reason": reason,
        "reason_facts": {},
        "path_since": since,
    }


PING = {
    "peer": "bob",
    "path": "direct",
    "local_candidate": {"type": "host", "address": "10.0.1.2:5000"},
    "remote_candidate": {"type": "srflx", "address": "198.51.100.12:5000"},
    "rtt_ms": 0.42,
}
RELAY_REASON = "relay: direct checks still running (2 pairs), no port mapping on either side"


class FakeClock:
    """Seconds that pass only when the command sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(cli, "UNTIL_DIRECT_CLOCK", fake)
    monkeypatch.setattr(cli, "UNTIL_DIRECT_SLEEP", fake.sleep)
    return fake


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> Iterator[Path]:
    monkeypatch.setenv("P2PTUN_RUN_DIR", str(tmp_path))
    monkeypatch.setattr(cli, "UNTIL_DIRECT_POLL", 0.02)
    yield tmp_path


def serve(run_dir: Path, answer: Answer) -> FakeDaemon:
    return FakeDaemon(str(run_dir / "p2p0.sock"), answer)


def test_waits_for_the_direct_path_and_says_when_it_came(
    run_dir: Path, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    start = clock.now

    def answer(req: dict[str, Any]) -> dict[str, Any]:
        if req["cmd"] == "ping":
            return {"ok": True, "ping": PING}
        # Relayed for 0.3 s from the command's start, then direct since then.
        age = clock.now - start
        if age < 0.3:
            entry = peer("relay", age, RELAY_REASON)
        else:
            entry = peer("direct", age - 0.3, "direct (host↔srflx)")
        return {"ok": True, "status": {"node": {}, "peers": [entry]}}

    daemon = serve(run_dir, answer)
    try:
        code = cli.main(["ping", "bob", "--until-direct", "--timeout", "10"])
    finally:
        daemon.close()
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0] == f"bob: {RELAY_REASON}; waiting up to 10 s for a direct path"
    # The path turned direct 0.3 s after the start; the command saw it at its next question
    # (a poll later at most) and counts from when it came, not from when it saw it.
    assert out[1].startswith("bob: direct after 0.30 s, ")
    assert 0.3 <= clock.slept <= 0.3 + 0.02 + 1e-9
    assert out[1].endswith("direct (host 10.0.1.2:5000 -> srflx 198.51.100.12:5000): rtt 0.42 ms")
    assert [r["cmd"] for r in daemon.requests][-1] == "ping"


def test_a_path_that_was_direct_already_says_so(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def answer(req: dict[str, Any]) -> dict[str, Any]:
        if req["cmd"] == "ping":
            return {"ok": True, "ping": PING}
        return {"ok": True, "status": {"peers": [peer("direct", 42.0, "direct (host↔srflx)")]}}

    daemon = serve(run_dir, answer)
    try:
        code = cli.main(["ping", "bob", "--until-direct"])
    finally:
        daemon.close()
    assert code == 0
    assert capsys.readouterr().out.startswith("bob: direct for 42.0 s already, direct (host ")


def test_no_direct_path_within_the_timeout_exits_1_with_the_reason(
    run_dir: Path, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    reason = "relay: peer behind symmetric NAT, no port mapping on either side, no IPv6"

    def answer(req: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "status": {"peers": [peer("relay", 5.0, reason)]}}

    daemon = serve(run_dir, answer)
    try:
        code = cli.main(["ping", "bob", "--until-direct", "--timeout", "0.3"])
    finally:
        daemon.close()
    captured = capsys.readouterr()
    assert code == 1
    assert captured.err == f"p2ptun ping: no direct path to bob within 0.3 s ({reason})\n"
    assert clock.slept == pytest.approx(0.3)
    assert all(r["cmd"] == "status" for r in daemon.requests)


def test_unknown_peer_and_bad_options(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    daemon = serve(run_dir, lambda req: {"ok": True, "status": {"peers": [peer(None, None, "")]}})
    try:
        assert cli.main(["ping", "carol", "--until-direct"]) == 1
        assert "no peer named 'carol' (configured: bob)" in capsys.readouterr().err
        assert cli.main(["ping", "bob", "--until-direct", "--timeout", "0"]) == 2
        assert cli.main(["ping", "bob", "--until-direct", "--timeout", "4000"]) == 2
        assert cli.main(["ping", "bob", "--until-direct", "--count", "3"]) == 2
        assert cli.main(["ping", "bob", "--timeout", "61"]) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 4 and all(line.startswith("p2ptun ping: ") for line in err)
    finally:
        daemon.close()


def test_status_table_lists_each_peers_reason() -> None:
    text = status.render(
        {
            "node": {"name": "alice", "interface": "p2p0", "addresses": [], "rendezvous": "x"},
            "peers": [peer("relay", 1.0, RELAY_REASON), {"name": "carol"}],
        }
    )
    lines = text.splitlines()
    assert lines[-2:] == ["why:", f"  bob: {RELAY_REASON}"]

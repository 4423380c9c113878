"""Control socket and status rendering."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest
import trio

from p2ptun.errors import RuntimeFailure
from p2ptun.node import control, status

STATUS: dict[str, Any] = {
    "node": {
        "name": "alice",
        "interface": "p2p0",
        "addresses": ["10.77.0.1/24"],
        "rendezvous": "connected",
    },
    "peers": [
        {
            "name": "bob",
            "state": "connected",
            "path": "direct",
            "local_candidate": {"type": "host", "address": "10.0.1.2:40000"},
            "remote_candidate": {"type": "srflx", "address": "198.51.100.34:4000"},
            "rtt_ms": 1.25,
            "rx_bytes": 5 << 20,
            "tx_bytes": 3000,
            "last_handshake": 12.4,
            "consent_age": 2.0,
        },
        {
            "name": "carol",
            "state": "connecting",
            "path": None,
            "local_candidate": None,
            "remote_candidate": None,
            "rtt_ms": None,
            "rx_bytes": 0,
            "tx_bytes": 0,
            "last_handshake": None,
            "consent_age": None,
        },
    ],
}


async def test_control_roundtrip(tmp_path: Path) -> None:
    path = str(tmp_path / "run" / "p2p0.sock")

    async def handler(req: dict[str, Any]) -> dict[str, Any]:
        if req["cmd"] == "status":
            return {"ok": True, "status": STATUS}
        if req["cmd"] == "boom":
            raise RuntimeError("bug")
        raise ValueError(f"unknown command {req['cmd']!r}")

    async with trio.open_nursery() as nursery:
        await nursery.start(control.serve, path, handler)
        mode = os.stat(path).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
        reply = await trio.to_thread.run_sync(control.request, path, {"cmd": "status"})
        assert reply == {"ok": True, "status": STATUS}
        reply = await trio.to_thread.run_sync(control.request, path, {"cmd": "nope"})
        assert reply == {"ok": False, "error": "unknown command 'nope'"}
        reply = await trio.to_thread.run_sync(control.request, path, {"cmd": "boom"})
        assert reply["ok"] is False and "internal error" in reply["error"]
        # garbage and oversized requests get an error reply, the server lives on
        for junk in (b"not json\n", b"[1,2]\n", b"x" * 10000):

            def send_junk(data: bytes = junk) -> bytes:
                with socket.socket(socket.AF_UNIX) as s:
                    s.settimeout(5)
                    s.connect(path)
                    s.sendall(data)
                    return s.recv(4096)

            answer = await trio.to_thread.run_sync(send_junk)
            assert b'"ok": false' in answer
        # a second daemon refuses to steal a live socket
        with pytest.raises(RuntimeFailure, match="another p2ptun daemon"):
            control.prepare_socket_path(path)
        nursery.cancel_scope.cancel()
    assert not os.path.exists(path)


def test_stale_socket_is_replaced(tmp_path: Path) -> None:
    path = str(tmp_path / "p2p0.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.close()  # bound, never listening: a dead daemon's leftover
    control.prepare_socket_path(path)
    assert not os.path.exists(path)


def test_request_without_daemon(tmp_path: Path) -> None:
    with pytest.raises(RuntimeFailure, match="is 'p2ptun up' running"):
        control.request(str(tmp_path / "none.sock"), {"cmd": "status"})


def test_render_table() -> None:
    text = status.render(STATUS)
    lines = text.splitlines()
    assert lines[0] == "node alice: interface p2p0 (10.77.0.1/24), rendezvous connected"
    assert lines[1].split() == [
        "PEER",
        "STATE",
        "PATH",
        "LOCAL",
        "REMOTE",
        "RTT",
        "RX",
        "TX",
        "HANDSHAKE",
        "CONSENT",
    ]
    assert "host 10.0.1.2:40000" in lines[2] and "1.2 ms" in lines[2] and "5.0 MiB" in lines[2]
    assert "12s ago" in lines[2]
    assert lines[3].split()[:3] == ["carol", "connecting", "-"] and "never" in lines[3]
    assert "no peers configured" in status.render({"node": STATUS["node"], "peers": []})


def test_render_port_mapping() -> None:
    """The node's mapping on its own line; a peer's direct path through one says so."""
    node = {
        **STATUS["node"],
        "port_mapping": {
            "via": "PCP on 10.0.1.1",
            "protocol": "pcp",
            "gateway": "10.0.1.1",
            "external": "198.51.100.2:40000",
        },
    }
    peer = {**STATUS["peers"][0], "via": "port mapping (PCP on 10.0.1.1)"}
    lines = status.render({"node": node, "peers": [peer]}).splitlines()
    assert lines[1] == "port mapping: PCP on 10.0.1.1 -> 198.51.100.2:40000"
    assert "direct via port mapping (PCP on 10.0.1.1)" in lines[3]


def test_port_mapping_of_a_pair() -> None:
    from p2ptun.ice.candidate import make_host_candidate, make_srflx_candidate
    from p2ptun.ice.events import SelectedPair
    from p2ptun.node.peer import port_mapping_of

    host = make_host_candidate(("10.0.1.2", 40000), 65535)
    mapped = make_srflx_candidate(
        ("198.51.100.2", 40000),
        ("10.0.1.2", 40000),
        "10.0.1.1",
        65535,
        extensions=(("mapped", "natpmp@10.0.1.1"),),
    )
    plain = make_srflx_candidate(("198.51.100.3", 5000), ("10.0.2.2", 5000), "203.0.113.10", 1)
    ours = SelectedPair(mapped, plain, ("10.0.1.2", 40000), False, 0)
    theirs = SelectedPair(host, mapped, ("10.0.1.2", 40000), False, 0)
    neither = SelectedPair(host, plain, ("10.0.1.2", 40000), False, 0)
    assert port_mapping_of(ours) == "port mapping (NAT-PMP on 10.0.1.1)"
    assert port_mapping_of(theirs) == "port mapping (NAT-PMP on 10.0.1.1, the peer's)"
    assert port_mapping_of(neither) is None

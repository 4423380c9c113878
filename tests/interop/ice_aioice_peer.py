"""aioice's ICE agent as the other peer of :mod:`p2plab.ice_probe` (asyncio, run in a lab
site namespace by ``test_ice_aioice.py``).

It speaks the probe's file protocol (see :mod:`p2plab.ice_probe`) with nothing of p2ptun
on its side: the description is written and read as RFC 8839 attribute lines, candidates are
aioice's own ``Candidate.to_sdp`` / ``from_sdp``::

    python ice_aioice_peer.py '{"name": "b", "peer": "a", "dir": "/tmp/x",
                                "controlling": false, "stun": ["203.0.113.10", 3478],
                                "turn": ["203.0.113.10", 3478, "alice", "secret"],
                                "count": 100, "size": 500, "timeout": 40}'

Prints one JSON line with the result.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import aioice

DATA_HEADER = b"\x04\x00\x00\x00"


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def wait_file(path: Path) -> str:
    while True:
        try:
            return path.read_text()
        except FileNotFoundError:
            await asyncio.sleep(0.02)


def describe(conn: aioice.Connection) -> str:
    lines = [f"a=ice-ufrag:{conn.local_username}", f"a=ice-pwd:{conn.local_password}"]
    lines += [f"a=candidate:{c.to_sdp()}" for c in conn.local_candidates]
    lines.append("a=end-of-candidates")
    return "\n".join(lines) + "\n"


async def apply_remote(conn: aioice.Connection, text: str) -> None:
    for raw in text.splitlines():
        line = raw[2:] if raw.startswith("a=") else raw
        name, _, value = line.partition(":")
        if name == "ice-ufrag":
            conn.remote_username = value
        elif name == "ice-pwd":
            conn.remote_password = value
        elif name == "candidate":
            await conn.add_remote_candidate(aioice.Candidate.from_sdp(value))
    await conn.add_remote_candidate(None)


async def run(cfg: dict[str, Any]) -> dict[str, Any]:
    directory = Path(cfg["dir"])
    name, peer = cfg["name"], cfg["peer"]
    result: dict[str, Any] = {"name": name, "ok": False, "impl": "aioice"}
    stun = tuple(cfg["stun"]) if cfg.get("stun") else None
    turn = cfg.get("turn")  # [host, port, username, password]: a UDP TURN server
    conn = aioice.Connection(
        ice_controlling=cfg["controlling"],
        stun_server=stun,
        turn_server=(turn[0], turn[1]) if turn else None,
        turn_username=turn[2] if turn else None,
        turn_password=turn[3] if turn else None,
        use_ipv6=False,
    )
    received = 0
    enough = asyncio.Event()

    async def receiver() -> None:
        nonlocal received
        while True:
            data = await conn.recv()
            if data[:4] == DATA_HEADER and data[4:6] == b"p:":
                received += 1
                if received >= cfg["count"]:
                    enough.set()

    try:
        await conn.gather_candidates()
        result["candidates"] = [c.to_sdp() for c in conn.local_candidates]
        write_atomic(directory / f"{name}.desc", describe(conn))
        await apply_remote(conn, await wait_file(directory / f"{peer}.desc"))
        start = time.monotonic()
        await conn.connect()
        result["time_to_nomination"] = time.monotonic() - start
        pair = conn._nominated[1]  # aioice keeps the selected pair per component privately
        local, remote = pair.local_candidate, pair.remote_candidate
        connected = {
            "local_type": local.type,
            "remote_type": remote.type,
            "local": f"{local.host}:{local.port}",
            "remote": f"{remote.host}:{remote.port}",
            "relayed": "relay" in (local.type, remote.type),
        }
        result["connected"] = connected
        write_atomic(directory / f"{name}.connected", json.dumps(connected))
        await wait_file(directory / "go")
        task = asyncio.create_task(receiver())
        payload = DATA_HEADER + b"p:" + b"y" * max(0, cfg["size"] - 6)
        for i in range(cfg["count"]):
            await conn.send(payload)
            if i % 10 == 9:
                await asyncio.sleep(0.005)
        result["sent"] = cfg["count"]
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(enough.wait(), 10)
        write_atomic(directory / f"{name}.done", str(received))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(wait_file(directory / f"{peer}.done"), 10)
        task.cancel()
        result["received"] = received
        result["selected"] = connected
        result["ok"] = True
    finally:
        await conn.close()
    return result


def main() -> int:
    cfg = json.loads(sys.argv[1])
    try:
        result = asyncio.run(asyncio.wait_for(run(cfg), cfg.get("timeout", 40)))
    except (asyncio.TimeoutError, ConnectionError) as exc:
        result = {"name": cfg["name"], "ok": False, "error": repr(exc)}
    print(json.dumps(result), flush=True)
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())

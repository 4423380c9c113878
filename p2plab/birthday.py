"""How often the birthday technique gets through a random symmetric NAT, with raw sockets.

``python -m p2plab.birthday [--attempts N] [--sockets M] [--probes K]`` builds a lab with a
port-restricted cone site (the easy side) and a random symmetric one (``sym``, the hard side),
and per attempt, the NATs' mappings flushed first:

- the hard side opens ``M`` sockets, each sending to the easy side's mapped address every
  0.2 s: its NAT gives each a random public port of its own towards that one address;
- the easy side, one socket (its port-restricted NAT keeps the port), sends to ``K`` random
  ports of the hard side's public address, 100 a second: each opens its own NAT's filter for
  one port, and reaches the hard side when that port is one of the ``M`` mappings.

An attempt succeeds when a datagram crossed in either direction within the probing time. This
is the technique with the hard side holding many mappings at once (what p2ptun's daemon does
not do: its data path sends from one socket; with one mapping its 256 random probes hit about
once in 250 attempts, README "Hard NATs"). Prints one JSON line per attempt and a summary.

Every wait is bounded; every process is started by the lab and stopped by PID.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import select
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from p2plab.natlab import NatLab, wait_for_line

PROBE_RATE = 100.0
"""Easy-side probes per second."""
PORT_RANGE = (1024, 65535)
"""Where a random symmetric NAT (``masquerade fully-random``) picks its ports."""


def hard(to: tuple[str, int], sockets: int, duration: float) -> dict[str, Any]:
    """Send from ``sockets`` fresh sockets to ``to`` every 0.2 s; report a datagram back."""
    socks = []
    for _ in range(sockets):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", 0))
        s.setblocking(False)
        socks.append(s)
    print(json.dumps({"ready": True}), flush=True)
    start = time.monotonic()
    deadline = start + duration
    next_send = start
    hit: float | None = None
    while hit is None and time.monotonic() < deadline:
        now = time.monotonic()
        if now >= next_send:
            for s in socks:
                with contextlib.suppress(OSError):
                    s.sendto(b"h", to)
            next_send = now + 0.2
        ready, _, _ = select.select(socks, [], [], max(0.0, min(next_send, deadline) - now))
        for s in ready:
            data, _src = s.recvfrom(64)
            if data == b"e":
                hit = time.monotonic() - start
    for s in socks:
        s.close()
    return {"side": "hard", "hit": hit}


def easy(peer_ip: str, port: int, probes: int, duration: float, seed: int) -> dict[str, Any]:
    """From one socket bound to ``port``, send to ``probes`` random ports of ``peer_ip`` at
    :data:`PROBE_RATE`; report a datagram from the peer."""
    rng = random.Random(seed)
    ports = rng.sample(range(PORT_RANGE[0], PORT_RANGE[1] + 1), probes)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    s.setblocking(False)
    print(json.dumps({"ready": True}), flush=True)
    start = time.monotonic()
    deadline = start + duration
    hit: float | None = None
    sent = 0
    while hit is None and time.monotonic() < deadline:
        now = time.monotonic()
        due = min(probes, int((now - start) * PROBE_RATE) + 1)
        while sent < due:
            with contextlib.suppress(OSError):
                s.sendto(b"e", (peer_ip, ports[sent]))
            sent += 1
        ready, _, _ = select.select([s], [], [], min(0.01, max(0.0, deadline - now)))
        if ready:
            data, src = s.recvfrom(64)
            if data == b"h" and src[0] == peer_ip:
                hit = time.monotonic() - start
    s.close()
    return {"side": "easy", "hit": hit, "sent": sent}


def _result(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    assert proc.stdout is not None
    line = wait_for_line(proc.stdout, '"side"', timeout)
    return json.loads(line) if line else {"hit": None}


def measure(
    lab: NatLab, attempts: int, sockets: int, probes: int, seed: int = 1
) -> list[dict[str, Any]]:
    """Run ``attempts`` attempts in ``lab`` (site1: prc, site2: sym)."""
    easy_site, hard_site = lab.sites[0], lab.sites[1]
    duration = probes / PROBE_RATE + 1.0
    results = []
    for i in range(attempts):
        lab.flush_nat("site1")
        lab.flush_nat("site2")
        port = 40000 + i
        me = [sys.executable, "-m", "p2plab.birthday"]
        h = lab.popen(
            "site2",
            [
                *me,
                *("hard", "--to", f"{easy_site.wan_addr}:{port}", "--sockets", str(sockets)),
                *("--duration", str(duration + 0.5)),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        e = None
        try:
            assert h.stdout is not None
            if wait_for_line(h.stdout, "ready", 10) is None:
                raise RuntimeError("the hard side did not start")
            time.sleep(0.3)  # its mappings exist
            e = lab.popen(
                "site1",
                [
                    *me,
                    *("easy", "--peer-ip", hard_site.wan_addr, "--port", str(port)),
                    *("--probes", str(probes), "--duration", str(duration)),
                    *("--seed", str(seed + i)),
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            er = _result(e, duration + 10)
            hr = _result(h, duration + 10)
        finally:
            for proc in (e, h):
                if proc is not None:
                    lab.stop(proc)
        hits = [t for t in (er.get("hit"), hr.get("hit")) if t is not None]
        result = {"attempt": i + 1, "ok": bool(hits), "time": min(hits) if hits else None}
        print(json.dumps(result), flush=True)
        results.append(result)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m p2plab.birthday")
    sub = parser.add_subparsers(dest="cmd")
    p = sub.add_parser("hard")
    p.add_argument("--to", required=True)
    p.add_argument("--sockets", type=int, default=256)
    p.add_argument("--duration", type=float, default=5.0)
    p = sub.add_parser("easy")
    p.add_argument("--peer-ip", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--probes", type=int, default=256)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=1)
    parser.add_argument("--attempts", type=int, default=20)
    parser.add_argument("--sockets", type=int, default=256)
    parser.add_argument("--probes", type=int, default=256)
    parser.add_argument("--prefix")
    args = parser.parse_args(argv)
    if args.cmd == "hard":
        host, _, port = args.to.rpartition(":")
        print(json.dumps(hard((host, int(port)), args.sockets, args.duration)), flush=True)
        return 0
    if args.cmd == "easy":
        result = easy(args.peer_ip, args.port, args.probes, args.duration, args.seed)
        print(json.dumps(result), flush=True)
        return 0
    with NatLab.create(["prc", "sym"], prefix=args.prefix, state_dir=None) as lab:
        results = measure(lab, args.attempts, args.sockets, args.probes)
    ok = [r for r in results if r["ok"]]
    times = [r["time"] for r in ok]
    summary = {
        "attempts": len(results),
        "sockets": args.sockets,
        "probes": args.probes,
        "success": len(ok),
        "rate": len(ok) / len(results) if results else 0.0,
        "median_time": statistics.median(times) if times else None,
        "expected": 1 - (1 - args.sockets / (PORT_RANGE[1] - PORT_RANGE[0] + 1)) ** args.probes,
    }
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

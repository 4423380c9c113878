"""A userspace delay line for one direction of a lab link (this kernel has no ``sch_netem``).

``python -m p2plab.delay --dev DEV --tap TAP --delay-ms D [--jitter-ms J]``, run inside the
namespace that owns ``DEV``. It creates the TAP device ``TAP``; the lab then redirects ``DEV``'s
egress to it with tc (``clsact`` + ``u32`` + ``mirred``). Each frame read from the tap is held
for D ± J ms and then sent out of ``DEV`` through an ``AF_PACKET`` socket with
``PACKET_QDISC_BYPASS``, which skips the tc egress hook, so it is not redirected again.
netfilter (NAT, counters, blocking) has already seen the packet when it reaches egress, so the
delay line is invisible to everything but the clock. Prints ``ready`` once set up.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import heapq
import os
import random
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
SOL_PACKET = 263
PACKET_QDISC_BYPASS = 20
MAX_QUEUE = 20000
"""Frames held at once; more are dropped (a bounded queue, like netem's limit)."""


def open_tap(name: str) -> int:
    """Create (or attach to) TAP device ``name`` and return its non-blocking fd."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


def _set_sysctl(path: str, value: str) -> None:
    with contextlib.suppress(OSError), open(path, "w") as f:
        f.write(value)


def run(dev: str, tap: str, delay_s: float, jitter_s: float, lifetime: float) -> None:
    """Move frames from ``tap`` to ``dev`` after the delay, until SIGTERM or ``lifetime``."""
    fd = open_tap(tap)
    _set_sysctl(f"/proc/sys/net/ipv6/conf/{tap}/disable_ipv6", "1")
    subprocess.run(["ip", "link", "set", "dev", tap, "up"], check=True, timeout=10)
    out = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    out.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
    out.bind((dev, 0))
    # SIGTERM keeps its default action: the process ends at once and the kernel drops the tap
    print("ready", flush=True)
    queue: list[tuple[float, int, bytes]] = []
    seq = 0
    end = time.monotonic() + lifetime
    while time.monotonic() < end:
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, _, frame = heapq.heappop(queue)
            with contextlib.suppress(OSError):
                out.send(frame)
        timeout = max(0.0, queue[0][0] - now) if queue else 0.5
        try:
            ready, _, _ = select.select([fd], [], [], timeout)
        except InterruptedError:
            continue
        if not ready:
            continue
        while True:  # drain the tap
            try:
                frame = os.read(fd, 65536)
            except BlockingIOError:
                break
            except OSError:
                break
            if len(queue) >= MAX_QUEUE:
                continue
            d = delay_s + (random.uniform(-jitter_s, jitter_s) if jitter_s else 0.0)
            seq += 1
            heapq.heappush(queue, (time.monotonic() + max(0.0, d), seq, frame))
    os.close(fd)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m p2plab.delay")
    parser.add_argument("--dev", required=True)
    parser.add_argument("--tap", required=True)
    parser.add_argument("--delay-ms", type=float, required=True)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--lifetime", type=float, default=24 * 3600.0)
    args = parser.parse_args(argv)
    run(args.dev, args.tap, args.delay_ms / 1000, args.jitter_ms / 1000, args.lifetime)
    return 0


if __name__ == "__main__":
    sys.exit(main())

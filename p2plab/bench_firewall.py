"""The ``firewall`` section of ``scripts/bench``: what the firewall between peers costs.

``python -m p2plab.bench_firewall [--iperf-seconds S] [--runs N] [--rounds R] [--json F]``
prints one table. The tunnel section's topology and direct path
(:class:`p2plab.bench.P2ptunTunnel`: two full-cone sites, ``p2ptun up`` on each, ICE's
direct pair), a fresh lab for each measurement. The two rows are measured in turns, ``--rounds``
times (off, on, off, on, ...; ``--runs`` iperf3 runs each), so that a machine whose load
drifts during the run (other work on it) weighs on both alike:

``firewall off``
    ``P2PTUN_FIREWALL=off``: no filtering in the data path at all.
``firewall on``
    :data:`RULES`: sixteen inbound rules, the one that lets iperf3 in the last of them (the
    worst case for a new flow's first packet), ICMP, default outbound.

Before the lab rows, :func:`micro` times the sans-I/O :class:`~p2ptun.firewall.Firewall` on
its own (best of several rounds, nanoseconds per packet): a run of one flow's segments (the
fast path), packets of 64 interleaved tracked flows (one table lookup each), outbound packets
of one flow, and new flows into a full table (parse, 16 rules, eviction).

Columns: iperf3 TCP throughput from site1 to site2 (median of all the row's runs with
min–max), the CPU seconds per GB of both daemons (see p2plab/bench.py; median of the rounds),
and the receiving node's firewall counters after the last round (flows tracked, packets
dropped).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import statistics
import struct
import subprocess
import sys
import timeit
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from p2plab.bench import (
    IPERF_PORT,
    Bench,
    BenchError,
    Options,
    P2ptunTunnel,
    Result,
    _fresh_lab,
    _received_bytes,
    machine_note,
)
from p2ptun.firewall import ALLOW_ICMP, Firewall, Policy, Rule

RULES = (
    "".join(
        f'[[firewall.inbound]]\nproto = "tcp"\nport = {7000 + i}\ngroups = ["g{i}"]\n'
        for i in range(14)
    )
    + '[[firewall.inbound]]\nproto = "icmp"\n'
    + f'[[firewall.inbound]]\nproto = "tcp"\nport = {IPERF_PORT}\npeers = ["alice"]\n'
)
"""The "on" row's rules: 14 that do not apply, ICMP, then iperf3's port for alice."""

ROW_OFF = "firewall off"
ROW_ON = "firewall on (16 rules)"


@dataclass
class FirewallResult:
    name: str
    result: Result
    firewall: dict[str, Any] = field(default_factory=dict)


class _Tunnel(P2ptunTunnel):
    def __init__(self, bench: Bench, on: bool) -> None:
        if on:
            self.firewall = RULES
        else:
            self.extra_env = (("P2PTUN_FIREWALL", "off"),)
        super().__init__(bench, relayed=False)


def measure(on: bool, opts: Options) -> FirewallResult:
    name = ROW_ON if on else ROW_OFF
    print(f"== {name}", file=sys.stderr, flush=True)
    try:
        with _fresh_lab(name, opts) as bench:
            tunnel = _Tunnel(bench, on)
            try:
                tunnel.start_first()
                tunnel.start_second()
                tunnel.wait_established()
                result = Result(name)
                bench.lab.reset_counters()
                bench.throughput("site2", tunnel.peer_ip, tunnel.peer_ip, tunnel.cpu_pids(), result)
                bench.check_path(_received_bytes(result, opts), relayed=False)
                status = tunnel.status(tunnel.nodes[1])
                return FirewallResult(name, result, status.get("firewall", {}))
            finally:
                tunnel.stop()
    except (BenchError, subprocess.SubprocessError, OSError, RuntimeError) as exc:
        message = str(exc)
        print(f"   {name} FAILED: {message}", file=sys.stderr, flush=True)
        return FirewallResult(name, Result(name, error=message.splitlines()[0]))


def combine(rounds: Sequence[FirewallResult]) -> FirewallResult:
    """One row from its rounds: every iperf3 run, the median CPU per GB, the last counters."""
    first = rounds[0]
    result = Result(first.name)
    failed = [r.result.error for r in rounds if r.result.error is not None]
    if failed:
        result.error = failed[0]
        return FirewallResult(first.name, result)
    for r in rounds:
        result.throughput_mbps += r.result.throughput_mbps
    cpu = [r.result.cpu_s_per_gb for r in rounds if r.result.cpu_s_per_gb is not None]
    result.cpu_s_per_gb = statistics.median(cpu) if cpu else None
    return FirewallResult(first.name, result, rounds[-1].firewall)


def render(rows: Sequence[FirewallResult]) -> str:
    header = ("p2ptun direct", "TCP Mbit/s (min–max)", "CPU s/GB", "flows", "dropped")
    lines = [header]
    for row in rows:
        r = row.result
        if r.error is not None:
            lines.append((row.name, f"FAILED: {r.error}", "", "", ""))
            continue
        rates = r.throughput_mbps
        median = statistics.median(rates)
        fw = row.firewall
        dropped = sum(
            sum(v.values()) for v in fw.get("dropped", {}).values() if isinstance(v, dict)
        )
        lines.append(
            (
                row.name,
                f"{median:.0f} ({min(rates):.0f}–{max(rates):.0f})",
                "–" if r.cpu_s_per_gb is None else f"{r.cpu_s_per_gb:.2f}",
                str(fw.get("flows", "–")),
                str(dropped) if fw else "–",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |"
        for line in lines
    ]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out) + "\n\n" + machine_note()


def _ip4(src: str, dst: str, proto: int, l4: bytes) -> bytes:
    addresses = ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed
    return struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(l4), 0, 0, 64, proto, 0) + addresses + l4


def _tcp(sport: int, dport: int, flags: int, size: int) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0) + bytes(size)


def _udp(i: int) -> bytes:
    return struct.pack("!HHHH", 1000 + i % 60000, 2000 + i // 60000, 12, 0) + b"data"


def micro(rounds: int = 7) -> list[tuple[str, float]]:
    """Nanoseconds per packet of the firewall core alone (module docstring)."""
    us, them, peer = "10.9.0.1", "10.9.0.3", object()
    fw = Firewall()
    fw.add_peer(peer, "bob", ())

    def best(fn: Any, packets: int, repeat: int = rounds) -> float:
        return min(timeit.repeat(fn, number=1, repeat=repeat)) / packets * 1e9

    for i in range(64):
        fw.allow_outbound(peer, _ip4(us, them, 6, _tcp(50000 + i, 9000, 0x02, 0)), 0.0)
    run = [_ip4(them, us, 6, _tcp(9000, 50000, 0x10, 1300))] * 64
    mixed = [_ip4(them, us, 6, _tcp(9000, 50000 + i, 0x10, 100)) for i in range(64)]
    out = memoryview(bytearray(_ip4(us, them, 6, _tcp(50000, 9000, 0x10, 1300))))
    rules = (
        *(Rule("tcp", (7000 + i, 7000 + i), groups=frozenset({f"g{i}"})) for i in range(14)),
        ALLOW_ICMP,
        Rule("udp"),
    )
    full = Firewall(Policy(inbound=rules, max_flows=4096, max_flows_per_peer=4096))
    full.add_peer(peer, "bob", ())
    count = 20000
    news = iter([[_ip4(them, us, 17, _udp(i))] for i in range(count * 4)])

    def outbound() -> None:
        for _ in range(64):
            fw.allow_outbound(peer, out, 1.0)

    def new_flows() -> None:
        for _ in range(count):
            full.filter_inbound(peer, next(news), 1.0)

    return [
        (
            "inbound, segments of one flow (fast path)",
            best(lambda: fw.filter_inbound(peer, run, 1.0), 64),
        ),
        (
            "inbound, 64 interleaved tracked flows",
            best(lambda: fw.filter_inbound(peer, mixed, 1.0), 64),
        ),
        ("outbound, packets of one flow", best(outbound, 64)),
        ("inbound, a new flow each packet, table full", best(new_flows, count, 3)),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m p2plab.bench_firewall", description=__doc__)
    parser.add_argument("--iperf-seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=2, help="iperf3 runs per round (2)")
    parser.add_argument("--rounds", type=int, default=3, help="turns of off and on (3)")
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args(argv)
    opts = Options(iperf_seconds=args.iperf_seconds, runs=args.runs)
    print("firewall core alone, ns per packet (best of several rounds):")
    for what, ns in micro():
        print(f"  {what:<45} {ns:6.0f}")
    print()
    turns: dict[bool, list[FirewallResult]] = {False: [], True: []}
    for _ in range(args.rounds):
        for on in (False, True):
            turns[on].append(measure(on, opts))
    rows = [combine(turns[False]), combine(turns[True])]
    print(render(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                [
                    {
                        "row": r.name,
                        "mbps": r.result.throughput_mbps,
                        "cpu_s_per_gb": r.result.cpu_s_per_gb,
                        "firewall": r.firewall,
                    }
                    for r in rows
                ],
                f,
                indent=1,
            )
    return 1 if any(r.result.error for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

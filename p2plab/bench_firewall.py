"""The ``firewall`` section of ``scripts/bench``: what the firewall between peers costs.

``python -m p2plab.bench_firewall [--iperf-seconds S] [--runs N] [--json F]`` prints one
table. The tunnel section's topology and direct path (:class:`p2plab.bench.P2ptunTunnel`:
two full-cone sites, ``p2ptun up`` on each, ICE's direct pair), one fresh lab per row, rows
measured one after the other in the same run:

``firewall off``
    ``P2PTUN_FIREWALL=off``: no filtering in the data path at all.
``firewall on``
    :data:`RULES`: sixteen inbound rules, the one that lets iperf3 in the last of them (the
    worst case for a new flow's first packet), ICMP, default outbound.

Columns: iperf3 TCP throughput from site1 to site2 (median of ``--runs`` with min–max) and the
CPU seconds per GB of both daemons over those runs (see p2plab/bench.py), and the receiving
node's firewall counters afterwards (flows tracked, packets dropped).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m p2plab.bench_firewall", description=__doc__)
    parser.add_argument("--iperf-seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args(argv)
    opts = Options(iperf_seconds=args.iperf_seconds, runs=args.runs)
    rows = [measure(False, opts), measure(True, opts)]
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

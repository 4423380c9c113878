"""The ``recovery`` section of ``scripts/bench``: how long the tunnel goes dark after each
network event, in the NAT lab.

``python -m p2plab.recovery [--events a,b] [--json F] [--keep-logs DIR]`` prints one table.
Not a test (``tests/e2e/test_recovery.py`` runs the same events with a TCP transfer across
them and loose bounds; ``tests/unit/test_memlab.py`` asserts exact timings in virtual time):
the numbers depend on the machine, so every event is measured in the same run.

Each event gets a fresh :class:`~p2plab.natlab.NatLab` with two sites of the event's NAT
types, ``p2ptun rendezvous`` on the server and ``p2ptun up`` on both sites (the same setup as
the ``tunnel`` section's p2ptun rows, :class:`p2plab.bench.P2ptunTunnel`). Once the tunnel
is up on the expected path, site1 pings site2's tunnel address every 50 ms (``ping -D``, its
output to a file), the event happens, and 15 s later the stream stops. The column:

- longest gap: the longest time without a ping reply, from the last reply before the event
  (from the wake-up for the frozen node) to the end — what a user of the tunnel saw;
- path: the path after the event (``direct`` or ``relay``).

Events (sites in brackets): the NAT's public address changes [prc/prc]; a symmetric NAT
forgets its mappings, direct [cone/sym] and relayed [sym/sym]; a port-restricted NAT forgets
its mappings [prc/prc]; the host's LAN address is renumbered [prc/prc]; the direct path drops
everything while the relay works [cone/cone]; a node frozen 40 s (SIGSTOP) while its symmetric
NAT forgets every mapping [cone/sym].
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from p2plab.bench import (
    BenchError,
    Options,
    P2ptunTunnel,
    _fresh_lab,
    machine_note,
)
from p2plab.natlab import lab_unavailable_reason

PING_INTERVAL = 0.05
SETTLE = 3.0
"""Seconds of steady pings before the event."""
AFTER = 15.0
"""Seconds the stream runs after the event (or the wake-up)."""
_REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from ")


def longest_gap(
    replies: Sequence[float], start: float, end: float, *, from_start: bool = False
) -> float:
    """The longest time without a ping reply from the last reply before ``start`` (or from
    ``start`` itself with ``from_start``, e.g. a wake-up) to ``end``: what a user of the
    tunnel saw of an event at ``start``."""
    before = [r for r in replies if r <= start]
    first = start if from_start or not before else before[-1]
    times = [first, *(r for r in replies if start < r <= end), end]
    return max(b - a for a, b in itertools.pairwise(times))


def reply_times(text: str) -> list[float]:
    """Receive times (Unix s) of the replies in ``ping -D`` output."""
    return [float(m.group(1)) for line in text.splitlines() if (m := _REPLY.match(line))]


Happen = Callable[[P2ptunTunnel], "float | None"]
"""Makes the event happen; returns the time the gap counts from when it is not the start."""


def _renumber_nat(tunnel: P2ptunTunnel) -> None:
    tunnel.nat_lab.renumber_nat("site2")


def _renumber_host(tunnel: P2ptunTunnel) -> None:
    tunnel.nat_lab.set_host_address("site2")


def _freeze(tunnel: P2ptunTunnel) -> float:
    """SIGSTOP bob for 40 s; his symmetric NAT forgets him after 2 s. Returns the wake-up."""
    proc = tunnel.nodes[1].proc
    assert proc is not None
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        time.sleep(2)
        tunnel.nat_lab.flush_nat("site2")
        time.sleep(38)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    return time.time()


@dataclasses.dataclass(frozen=True)
class Event:
    key: str
    title: str
    sites: tuple[str, str]
    path: str
    happen: Happen


EVENTS: tuple[Event, ...] = (
    Event(
        "nat-renumbered",
        "NAT public address changes",
        ("prc", "prc"),
        "direct",
        _renumber_nat,
    ),
    Event(
        "sym-flush",
        "symmetric NAT forgets its mappings",
        ("cone", "sym"),
        "direct",
        lambda t: t.nat_lab.flush_nat("site2"),
    ),
    Event(
        "sym-flush-relayed",
        "symmetric NAT forgets its mappings (relayed)",
        ("sym", "sym"),
        "relay",
        lambda t: t.nat_lab.flush_nat("site2"),
    ),
    Event(
        "prc-flush",
        "port-restricted NAT forgets its mappings",
        ("prc", "prc"),
        "direct",
        lambda t: t.nat_lab.flush_nat("site2"),
    ),
    Event(
        "host-renumbered",
        "host's LAN address renumbered",
        ("prc", "prc"),
        "direct",
        _renumber_host,
    ),
    Event(
        "black-hole",
        "direct path drops everything, relay available",
        ("cone", "cone"),
        "direct",
        lambda t: t.lab.block("site1", "site2"),
    ),
    Event(
        "frozen",
        "node frozen 40 s while its symmetric NAT forgets it",
        ("cone", "sym"),
        "direct",
        _freeze,
    ),
)
EVENT_KEYS = tuple(e.key for e in EVENTS)


@dataclasses.dataclass
class EventResult:
    key: str
    title: str
    sites: str
    gap_s: float | None = None
    path: str | None = None
    error: str | None = None


def measure(event: Event, opts: Options) -> EventResult:
    """One event in a lab of its own; a failure is recorded in the result."""
    result = EventResult(event.key, event.title, "/".join(event.sites))
    if opts.verbose:
        print(f"== {event.title} [{result.sites}]", file=sys.stderr, flush=True)
    try:
        with _fresh_lab(f"recovery-{event.key}", opts, sites=event.sites) as bench:
            tunnel = P2ptunTunnel(bench, relayed=event.path == "relay", block=False)
            try:
                _measure(bench.workdir, tunnel, event, result)
            finally:
                tunnel.stop()
            bench.say(f"longest gap {result.gap_s:.2f} s, path {result.path}")
    except (BenchError, OSError, RuntimeError) as exc:
        message = str(exc)
        print(f"   {event.key} FAILED: {message}", file=sys.stderr, flush=True)
        result.error = message.splitlines()[0] if message else repr(exc)
    return result


def _measure(workdir: Path, tunnel: P2ptunTunnel, event: Event, result: EventResult) -> None:
    tunnel.start_first()
    tunnel.start_second()
    tunnel.wait_established()
    out_path = workdir / "ping.out"
    budget = SETTLE + AFTER + 60
    argv = ["ping", "-D", "-n", "-i", str(PING_INTERVAL), "-W", "1", "-w", str(int(budget))]
    with out_path.open("w") as out:
        pinger = tunnel.lab.popen("site1", [*argv, tunnel.peer_ip], stdout=out)
    try:
        time.sleep(SETTLE)
        if not reply_times(out_path.read_text()):
            raise BenchError("no ping reply before the event")
        start = time.time()
        woke = event.happen(tunnel)
        counted_from = woke if woke is not None else start
        time.sleep(AFTER)
        end = time.time()
    finally:
        tunnel.lab.stop(pinger)
    replies = reply_times(out_path.read_text())
    result.gap_s = longest_gap(replies, counted_from, end, from_start=woke is not None)
    paths = tunnel.paths()
    result.path = paths[0]


def render(results: Sequence[EventResult]) -> str:
    """The markdown table."""
    lines = [
        "| event | NATs | longest gap s | path after |",
        "|-------|------|--------------:|------------|",
    ]
    for r in results:
        gap = "FAILED" if r.error is not None else f"{r.gap_s:.2f}"
        lines.append(f"| {r.title} | {r.sites} | {gap} | {r.path or '-'} |")
    lines.append("")
    lines.append(
        f"- 50 ms ping stream site1 -> site2 through the tunnel; gap from the last reply "
        f"before the event (the wake-up for the frozen node) to {AFTER:g} s after it"
    )
    lines += [f"- {r.key}: {r.error}" for r in results if r.error is not None]
    lines.append(f"- machine: {machine_note()}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure the events and print the table; exit 1 if one failed, 2 on bad usage."""
    parser = argparse.ArgumentParser(
        prog="python -m p2plab.recovery",
        description="p2ptun's longest outage per network event in the NAT lab (see the module).",
    )
    parser.add_argument("--events", help=f"comma-separated subset of: {', '.join(EVENT_KEYS)}")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--keep-logs", metavar="DIR", help="keep each event's logs in DIR")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)
    chosen = EVENTS
    if args.events:
        keys = [k.strip() for k in args.events.split(",")]
        unknown = [k for k in keys if k not in EVENT_KEYS]
        if unknown:
            parser.error(f"unknown events {unknown} (known: {', '.join(EVENT_KEYS)})")
        chosen = tuple(e for e in EVENTS if e.key in keys)
    reason = lab_unavailable_reason()
    if reason is not None:
        print(f"recovery: {reason}", file=sys.stderr)
        return 1
    opts = Options()
    opts.verbose = not args.quiet
    opts.keep_logs = Path(args.keep_logs) if args.keep_logs else None
    results = [measure(event, opts) for event in chosen]
    print(render(results))
    if args.json:
        Path(args.json).write_text(
            json.dumps([dataclasses.asdict(r) for r in results], indent=2) + "\n"
        )
    return 1 if any(r.error is not None for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())

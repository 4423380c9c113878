"""The soak (not a test; ``scripts/soak``): a rendezvous and two nodes in the NAT lab under mixed
hostile load, with a ping stream and a TCP transfer through the tunnel, for a given time.

Topology: the lab's server runs ``p2ptun rendezvous`` (signaling, STUN, TURN); ``alice`` and
``bob`` run ``p2ptun up`` on two public sites (so that their UDP ports can be attacked
directly); a third public site hosts the attackers (:mod:`p2plab.hostile`), each restarted
every minute at a bounded rate:

- a WireGuard initiation flood at alice (valid MAC1), and junk datagrams at bob;
- at the rendezvous: STUN messages stuffed with unknown attributes (UDP and TCP),
  unauthenticated Allocates, replayed signaling handshakes, and idle TCP connections.

Meanwhile bob pings alice every 50 ms through the tunnel and sends her a paced TCP transfer
(random bytes, length and SHA-256 compared at the end). Every minute it prints, for each
daemon, its resident memory, open descriptors and CPU (that minute and in all), the ping loss,
and what the attackers sent and got back. It fails (exit 1) when a daemon's memory or
descriptors grow past the first minute's by more than :data:`RSS_SLACK_MIB` MiB (and
:data:`RSS_SLACK_FRACTION`) or :data:`FD_SLACK` descriptors, when more than 1 % of the pings
are lost, or when the transfer fails. Everything it starts is stopped by PID and the lab is
removed on exit, also on failure, Ctrl-C or SIGTERM.

It reuses the end-to-end tests' deployment helpers (``tests/e2e/nodelab.py``) from the
checkout, as the tests do.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from p2plab.bench import parse_reply
from p2plab.natlab import NatLab, lab_unavailable_reason

ROOT = Path(__file__).resolve().parents[1]
RV = "203.0.113.10"
PING_INTERVAL = 0.05
TRANSFER_RATE = 256 * 1024
"""Bytes a second of the TCP transfer through the tunnel."""
RSS_SLACK_MIB = 8
RSS_SLACK_FRACTION = 0.15
FD_SLACK = 10
MAX_LOSS = 0.01

ATTACKS: list[tuple[str, str, list[str]]] = [
    # (name, target, extra arguments)
    ("wg-flood", "alice", ["--rate", "500"]),
    ("junk", "bob", ["--rate", "300"]),
    ("stun-stuffed", "rv-stun", ["--rate", "3"]),
    ("allocate", "rv-stun", ["--rate", "100"]),
    ("replay-msg1", "rv-signal", ["--rate", "20"]),
    ("idle-tcp", "rv-signal", ["--connections", "64"]),
]


@dataclass
class Sample:
    rss_kib: int
    fds: int
    cpu: float


@dataclass
class Daemon:
    name: str
    pid: int
    samples: list[Sample] = field(default_factory=list)

    def sample(self) -> Sample:
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        rss = 0
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
        sample = Sample(rss, len(os.listdir(f"/proc/{self.pid}/fd")), cpu)
        self.samples.append(sample)
        return sample


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through every `finally`: the lab is removed


def ping_counts(path: Path) -> tuple[int, int]:
    """(replies, requests sent so far as the highest icmp_seq answered) of a ``ping -D``
    output file."""
    seqs = set()
    for line in path.read_text(errors="replace").splitlines():
        reply = parse_reply(line)
        if reply is not None:
            seqs.add(reply[1])
    return len(seqs), max(seqs, default=0)


def run(minutes: float, prefix: str | None, workdir: Path) -> int:
    sys.path.insert(0, str(ROOT / "tests" / "e2e"))
    nodelab: Any = importlib.import_module("nodelab")
    from p2ptun.node import control

    lab = NatLab.create(["none", "none", "none"], prefix=prefix)
    dep = nodelab.Deployment(lab, workdir)
    failures: list[str] = []
    try:
        alice = dep.add_node("alice", "site1", "10.77.0.1/24")
        bob = dep.add_node("bob", "site2", "10.77.0.2/24")
        dep.start_rendezvous()
        for node in (alice, bob):
            dep.start_node(node, peers=[n for n in (alice, bob) if n is not node])
        dep.wait_connected([alice, bob], timeout=60)
        ports = {}
        for node in (alice, bob):
            reply = control.request(
                str(dep.run_dir / f"{node.ifname}.sock"), {"cmd": "debug"}, timeout=10
            )
            ports[node.name] = reply["debug"]["tunnel"]["listen_port"]
        targets = {
            "alice": f"{lab.site('site1').host_addr}:{ports['alice']}",
            "bob": f"{lab.site('site2').host_addr}:{ports['bob']}",
            "rv-stun": f"{RV}:3478",
            "rv-signal": f"{RV}:7070",
        }
        keys = {"wg-flood": alice.pub, "replay-msg1": dep.rv_key[1]}  # whose key they need
        assert dep.rendezvous is not None and alice.proc is not None and bob.proc is not None
        daemons = [
            Daemon("rendezvous", dep.rendezvous.pid),
            Daemon("alice", alice.proc.pid),
            Daemon("bob", bob.proc.pid),
        ]
        total = minutes * 60.0
        pings = nodelab.PingStream(dep, bob, alice, interval=PING_INTERVAL, duration=int(total) + 5)
        size = int(TRANSFER_RATE * max(10.0, total - 20.0))
        transfer = dep.start_transfer(bob, alice, size, rate=TRANSFER_RATE)
        print(
            f"soak: {minutes:g} min; ping bob -> alice every {PING_INTERVAL * 1000:.0f} ms; "
            f"TCP bob -> alice {size / 2**20:.0f} MiB at {TRANSFER_RATE // 1024} KiB/s; "
            f"attacks from site3: " + ", ".join(f"{a}->{t}" for a, t, _ in ATTACKS),
            flush=True,
        )
        for daemon in daemons:
            daemon.sample()
        start = time.monotonic()
        minute = 0
        while time.monotonic() - start < total - 1.0:
            minute += 1
            span = min(60.0, total - (time.monotonic() - start))
            procs = []
            for attack, target, extra in ATTACKS:
                argv = [sys.executable, "-m", "p2plab.hostile", attack, targets[target]]
                if attack in keys:
                    argv.append(keys[attack])
                argv += [*extra, "--seconds", f"{max(1.0, span - 3.0):.1f}"]
                procs.append(
                    lab.popen(
                        "site3", argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
                    )
                )
            time.sleep(max(0.0, start + min(total, minute * 60.0) - time.monotonic()))
            results = []
            for (attack, _, _), proc in zip(ATTACKS, procs, strict=True):
                try:
                    out, err = proc.communicate(timeout=15)
                    results.append(json.loads(out.strip().splitlines()[-1]))
                except subprocess.TimeoutExpired:
                    results.append({"attack": attack, "error": "did not finish"})
                except (ValueError, IndexError):
                    tail = err.strip().splitlines()[-1:] if err else []
                    results.append({"attack": attack, "error": " ".join(tail) or "no output"})
                lab.stop(proc)
            replies, sent = ping_counts(pings.path)
            loss = 1 - replies / sent if sent else 1.0
            elapsed = time.monotonic() - start
            print(
                f"-- minute {minute} ({elapsed:.0f} s): ping {replies}/{sent} "
                f"(loss {loss * 100:.2f} %)",
                flush=True,
            )
            for daemon in daemons:
                before = daemon.samples[-1]
                now = daemon.sample()
                cpu_pct = (now.cpu - before.cpu) / max(1.0, span) * 100
                print(
                    f"   {daemon.name:<10} RSS {now.rss_kib / 1024:7.1f} MiB  fds {now.fds:4d}  "
                    f"CPU {cpu_pct:5.1f} % this minute, {now.cpu:7.1f} s in all",
                    flush=True,
                )
            print(
                "   attacks: "
                + "; ".join(
                    f"{r.get('attack')}: "
                    + ", ".join(f"{k}={v}" for k, v in r.items() if k != "attack")
                    for r in results
                ),
                flush=True,
            )
        pings.stop()
        replies, sent = ping_counts(pings.path)
        loss = 1 - replies / sent if sent else 1.0
        if loss > MAX_LOSS:
            failures.append(f"ping loss {loss * 100:.2f} % > {MAX_LOSS * 100:.0f} %")
        try:
            got = transfer.finish(timeout=120)
            print(f"-- transfer: {got['bytes']} bytes, SHA-256 matches", flush=True)
        except AssertionError as exc:
            failures.append(f"transfer failed: {str(exc).splitlines()[0]}")
        for daemon in daemons:
            if len(daemon.samples) < 3:
                continue
            base, last = daemon.samples[1], daemon.samples[-1]
            slack = max(RSS_SLACK_MIB * 1024, base.rss_kib * RSS_SLACK_FRACTION)
            if last.rss_kib - base.rss_kib > slack:
                failures.append(
                    f"{daemon.name}: RSS grew {base.rss_kib / 1024:.1f} -> "
                    f"{last.rss_kib / 1024:.1f} MiB"
                )
            if last.fds - base.fds > FD_SLACK:
                failures.append(f"{daemon.name}: descriptors grew {base.fds} -> {last.fds}")
        procs_by_daemon = (dep.rendezvous, alice.proc, bob.proc)
        exited = [
            d.name for d, p in zip(daemons, procs_by_daemon, strict=True) if p.poll() is not None
        ]
        if exited:
            failures.append(f"daemons exited: {', '.join(exited)}")
    finally:
        dep.stop_all()
        lab.close()
    if failures:
        print("soak: FAILED: " + "; ".join(failures), flush=True)
        return 1
    print(f"soak: passed ({minutes:g} min: no growth, ping loss <= 1 %, transfer intact)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long (default 10)")
    parser.add_argument("--prefix", help="the lab's namespace prefix (default: random)")
    parser.add_argument("--keep", metavar="DIR", help="keep the daemons' logs in DIR")
    args = parser.parse_args(argv)
    if not 0.5 <= args.minutes <= 24 * 60:
        print("soak: --minutes must be between 0.5 and 1440", file=sys.stderr)
        return 2
    reason = lab_unavailable_reason()
    if reason is not None:
        print(f"soak: {reason}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _on_sigterm)
    # A background job of a non-interactive shell (scripts/soak) starts with SIGINT ignored:
    # take it back, so that the Ctrl-C the script forwards tears the lab down.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    workdir = Path(tempfile.mkdtemp(prefix="p2ptun-soak-"))
    try:
        return run(args.minutes, args.prefix, workdir)
    except KeyboardInterrupt:
        print("soak: interrupted", file=sys.stderr)
        return 130
    finally:
        if args.keep:
            shutil.copytree(workdir, args.keep, dirs_exist_ok=True)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())

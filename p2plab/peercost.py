"""What an idle peer costs a node: wake-ups per second and RSS of one node with N peers.

``python -m p2plab.peercost [--peers 100] [--idle 60] [--window 30] [--prefix pc]`` builds a
star of network namespaces and runs real daemons only (no simulated peer): the measured node
``hub`` with N configured peers, and N ``p2ptun up`` processes, one per leaf namespace, each with
the hub as its only peer. All of them connect through a ``p2ptun rendezvous`` that runs in the
hub's namespace; once every peer is ``connected`` at both ends, the traffic stops and, after
``--idle`` seconds, the hub's voluntary context switches (all threads, ``/proc/PID/task/*/
status``) are counted over ``--window`` seconds, then its ``VmRSS`` is read. The leaves' mean
and the rendezvous' wake-ups are printed beside it. With ``--profile`` the hub runs under
``cProfile`` (its wake-ups then include the profiler's own, which are none while idle) and the
top functions by call count in the window are printed.

With ``--on-demand`` every node has ``[ice] on_demand = true``: nobody connects at start. Once
every peer is online at the hub (idle, "connects on demand"), the same idle count runs with no
tunnel up; then ``--samples`` peers are reached one after another with a ping stream from the
hub (20 ms apart): the time from the stream's start to its first reply is the first-packet
latency (rendezvous signaling, ICE, the WireGuard handshake, the echo), and its median is
printed.

Topology (``P`` the instance prefix)::

    P-hub (10.98.0.1/16, bridge P-br)
      ├── veth ── P-l1   (10.98.1.1/16)   p2ptun up: leaf1
      ├── ...
      └── veth ── P-lN   (10.98.1.N/16)   p2ptun up: leafN

The leaves' daemons share the machine with the hub: on 2 cores their own idle work (and
anything else running) delays the hub's packets but does not add to its count. Everything is
started by PID and stopped by PID; the namespaces and the working directory are removed on exit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from p2plab.bench import rss_mib, wakeups_per_second
from p2plab.natlab import LabError, _netns_exists, _run, _stop_process
from p2ptun.errors import RuntimeFailure
from p2ptun.keys import encode_key, generate_private_key, public_key
from p2ptun.node import control

HUB_ADDR = "10.98.0.1"
RV_PORT = 7070
STUN_PORT = 3478


class StarLab:
    """A hub namespace with a bridge and ``n`` leaf namespaces on it (one veth each)."""

    def __init__(self, prefix: str, n: int) -> None:
        self.prefix = prefix
        self.n = n
        self.procs: list[subprocess.Popen[Any]] = []

    @property
    def hub(self) -> str:
        return f"{self.prefix}-hub"

    def leaf(self, i: int) -> str:
        return f"{self.prefix}-l{i}"

    def leaf_addr(self, i: int) -> str:
        return f"10.98.{1 + (i - 1) // 250}.{1 + (i - 1) % 250}"

    @property
    def namespaces(self) -> list[str]:
        return [self.hub] + [self.leaf(i) for i in range(1, self.n + 1)]

    def build(self) -> None:
        if any(_netns_exists(ns) for ns in self.namespaces):
            raise LabError(f"a lab named {self.prefix!r} exists already")
        _run(["ip", "-batch", "-"], input="".join(f"netns add {ns}\n" for ns in self.namespaces))
        br = f"{self.prefix}-br"
        hub = [
            "link set lo up",
            f"link add {br} type bridge",
            f"link set {br} up",
            f"addr add {HUB_ADDR}/16 dev {br}",
        ]
        links = []
        for i in range(1, self.n + 1):
            outer, inner = f"{self.prefix}-e{i}", f"{self.prefix}-v{i}"
            links.append(f"link add {outer} type veth peer {inner} netns {self.leaf(i)}")
            hub += [f"link set {outer} master {br}", f"link set {outer} up"]
        _run(["ip", "-n", self.hub, "-batch", "-"], input="\n".join(links) + "\n")
        _run(["ip", "-n", self.hub, "-batch", "-"], input="\n".join(hub) + "\n")
        for i in range(1, self.n + 1):
            inner = f"{self.prefix}-v{i}"
            batch = f"link set lo up\nlink set {inner} up\n"
            batch += f"addr add {self.leaf_addr(i)}/16 dev {inner}\n"
            _run(["ip", "-n", self.leaf(i), "-batch", "-"], input=batch)

    def popen(self, ns: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        proc: subprocess.Popen[Any] = subprocess.Popen(["ip", "netns", "exec", ns, *argv], **kwargs)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in reversed(self.procs):
            _stop_process(proc)
        self.procs.clear()
        existing = [ns for ns in self.namespaces if _netns_exists(ns)]
        if existing:
            with contextlib.suppress(LabError):
                _run(
                    ["ip", "-force", "-batch", "-"],
                    input="".join(f"netns del {ns}\n" for ns in existing),
                )


def _status(sock: Path) -> dict[str, Any]:
    try:
        reply = control.request(str(sock), {"cmd": "status"}, 5.0)
    except RuntimeFailure:
        return {}
    status: dict[str, Any] = reply.get("status", {}) if reply.get("ok") else {}
    return status


def _flat_counters(sock: Path) -> dict[str, float]:
    """The node's ``debug`` counters (data path, ICE transport, mux) as ``section.name``."""
    try:
        reply = control.request(str(sock), {"cmd": "debug"}, 10.0)
    except RuntimeFailure:
        return {}
    debug = reply.get("debug", {}) if reply.get("ok") else {}
    flat: dict[str, float] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[prefix] = float(value)

    for section in ("tunnel", "ice", "mux"):
        walk(section, debug.get(section, {}))
    return flat


def _connected(status: dict[str, Any]) -> int:
    return sum(1 for p in status.get("peers", []) if p.get("state") == "connected")


def _idle_online(status: dict[str, Any]) -> int:
    """Peers online but idle on demand (no tunnel, none being made)."""
    return sum(1 for p in status.get("peers", []) if p.get("reason") == "idle: connects on demand")


def _first_reply_s(lab: StarLab, ns: str, dst: str, timeout: float) -> float | None:
    """Seconds from starting a 20 ms ping stream in ``ns`` to its first reply (None: none)."""
    argv = ["ping", "-n", "-i", "0.02", "-W", "1", "-w", str(int(timeout)), dst]
    t0 = time.monotonic()
    proc = lab.popen(ns, argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "bytes from" in line:
                return time.monotonic() - t0
        return None
    finally:
        _stop_process(proc)


@contextlib.contextmanager
def _star(prefix: str, n: int) -> Iterator[StarLab]:
    lab = StarLab(prefix + secrets.token_hex(2), n)
    try:
        lab.build()
        yield lab
    finally:
        lab.close()


def measure(
    n: int,
    idle: float,
    window: float,
    prefix: str,
    *,
    profile: Path | None = None,
    say: bool = True,
    on_demand: bool = False,
    samples: int = 10,
) -> dict[str, Any]:
    """Start the star, wait until every peer is connected (on demand: online and idle), idle,
    count; on demand, then time the first packet to ``samples`` peers. Returns the figures."""
    work = Path(tempfile.mkdtemp(prefix="p2ptun-peercost-"))
    env = {
        **os.environ,
        "P2PTUN_RUN_DIR": str(work / "run"),
        "P2PTUN_STATE_DIR": str(work / "state"),
    }

    def log(text: str) -> None:
        if say:
            print(f"   {text}", file=sys.stderr, flush=True)

    try:
        with _star(prefix, n) as lab:
            tag = lab.prefix[-4:]
            keys = [generate_private_key() for _ in range(n + 1)]
            pubs = [encode_key(public_key(k)) for k in keys]
            names = ["hub"] + [f"leaf{i}" for i in range(1, n + 1)]
            ips = ["10.77.0.1"] + [
                f"10.77.{1 + (i - 1) // 250}.{1 + (i - 1) % 250}" for i in range(1, n + 1)
            ]
            rv_priv = generate_private_key()
            rv_pub = encode_key(public_key(rv_priv))
            rv = work / "rendezvous.toml"
            rv.write_text(
                f'listen = "{HUB_ADDR}:{RV_PORT}"\nprivate_key = "{encode_key(rv_priv)}"\n'
                f'database = "{work}/rendezvous.sqlite"\n'
                f'[stun]\nlisten = ["{HUB_ADDR}:{STUN_PORT}"]\n'
                + "".join(
                    f'[[node]]\nname = "{a}"\npublic_key = "{b}"\n'
                    for a, b in zip(names, pubs, strict=True)
                )
            )
            rv.chmod(0o600)

            def node_config(i: int, peers: Sequence[int]) -> Path:
                path = work / f"{names[i]}.toml"
                path.write_text(
                    f'name = "{names[i]}"\nprivate_key = "{encode_key(keys[i])}"\n'
                    f'[interface]\nname = "pc{tag}n{i}"\naddress = ["{ips[i]}/16"]\n'
                    f'[rendezvous]\naddress = "{HUB_ADDR}:{RV_PORT}"\npublic_key = "{rv_pub}"\n'
                    f'[ice]\nstun = ["{HUB_ADDR}:{STUN_PORT}"]\n'
                    + ("on_demand = true\n" if on_demand else "")
                    + "".join(
                        f'[[peer]]\nname = "{names[j]}"\npublic_key = "{pubs[j]}"\n'
                        f'allowed_ips = ["{ips[j]}/32"]\n'
                        for j in peers
                    )
                )
                path.chmod(0o600)
                return path

            def start(ns: str, name: str, argv: list[str]) -> subprocess.Popen[Any]:
                out = (work / f"{name}.log").open("ab")
                with out:
                    return lab.popen(ns, argv, stdout=out, stderr=subprocess.STDOUT, env=env)

            py = [sys.executable]
            rendezvous = start(
                lab.hub, "rendezvous", [*py, "-m", "p2ptun", "rendezvous", "-c", str(rv)]
            )
            hub_argv = [*py, "-m", "p2ptun", "up", "-c", str(node_config(0, range(1, n + 1)))]
            if profile is not None:
                hub_argv = [
                    *py,
                    "-m",
                    "p2plab.peercost",
                    "--profiled-hub",
                    str(profile),
                    "--",
                    *hub_argv[1:],
                ]
            hub = start(lab.hub, "hub", hub_argv)
            leaves = []
            t0 = time.monotonic()
            for i in range(1, n + 1):
                leaves.append(
                    start(
                        lab.leaf(i),
                        names[i],
                        [*py, "-m", "p2ptun", "up", "-c", str(node_config(i, [0]))],
                    )
                )
                if i % 10 == 0:  # let a batch import before the next (2 cores, shared)
                    time.sleep(1.0)
            hub_sock = work / "run" / f"pc{tag}n0.sock"
            deadline = time.monotonic() + 120 + 2 * n
            connected = 0
            while time.monotonic() < deadline:
                if hub.poll() is not None or rendezvous.poll() is not None:
                    raise RuntimeError("the hub or the rendezvous exited: see " + str(work))
                status = _status(hub_sock)
                connected = _idle_online(status) if on_demand else _connected(status)
                if connected == n:
                    break
                time.sleep(1.0)
            connect_s = time.monotonic() - t0
            what = "online, idle on demand," if on_demand else "connected"
            log(f"{connected}/{n} peers {what} at the hub after {connect_s:.0f} s")
            if connected != n:
                raise RuntimeError(f"only {connected}/{n} peers {what}")
            time.sleep(max(0.0, idle - window))
            pids = [hub.pid, rendezvous.pid, *(p.pid for p in leaves)]
            before_cpu = _cpu(hub.pid)
            before_counters = _flat_counters(hub_sock)
            rates = wakeups_per_second(pids, window)
            hub_cpu = _cpu(hub.pid) - before_cpu
            after_counters = _flat_counters(hub_sock)
            deltas = {
                k: (v - before_counters.get(k, 0.0)) / window
                for k, v in after_counters.items()
                if v != before_counters.get(k, 0.0) and not k.endswith("bytes")
            }
            still = _connected(_status(hub_sock))
            first: list[float | None] = []
            if on_demand:
                step = max(1, n // max(1, samples))
                for i in range(1, n + 1, step)[:samples]:
                    took = _first_reply_s(lab, lab.hub, ips[i], 15.0)
                    log(
                        f"first packet to {names[i]}: "
                        + ("none" if took is None else f"{took:.3f} s")
                    )
                    first.append(took)
            reached = [f for f in first if f is not None]
            result = {
                "on_demand": on_demand,
                "first_packet_s": first,
                "first_packet_s_median": statistics.median(reached) if reached else None,
                "peers": n,
                "connected_before": connected,
                "connected_after": still,
                "hub_wakeups_per_s": rates[0],
                "hub_rss_mib": rss_mib(hub.pid),
                "hub_cpu_ms_per_s": 1000 * hub_cpu / window,
                "rendezvous_wakeups_per_s": rates[1],
                "leaf_wakeups_per_s_mean": statistics.mean(rates[2:]),
                "leaf_rss_mib_mean": statistics.mean(rss_mib(p.pid) for p in leaves[:10]),
                "idle_s": idle,
                "window_s": window,
                "connect_all_s": connect_s,
                "hub_counters_per_s": dict(sorted(deltas.items(), key=lambda kv: -abs(kv[1]))),
            }
            log(json.dumps(result))
            if profile is not None:
                hub.send_signal(signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    hub.wait(10)
            return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _first_cell(result: dict[str, Any]) -> str:
    """The first-packet column: the median and how many samples were answered."""
    median, samples = result["first_packet_s_median"], result["first_packet_s"]
    if median is None:
        return "–"
    return f"{median:.3f} ({sum(1 for f in samples if f is not None)}/{len(samples)})"


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _profiled_hub(out: Path, argv: list[str]) -> int:
    """Run ``python -m p2ptun ARGV`` under cProfile; dump the stats to ``out`` on SIGINT."""
    import cProfile
    import runpy

    prof = cProfile.Profile()
    sys.argv = ["p2ptun", *argv]
    prof.enable()
    try:
        runpy.run_module("p2ptun", run_name="__main__")
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        prof.disable()
        prof.dump_stats(str(out))
    return 0


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["--profiled-hub"]:
        return _profiled_hub(Path(args_list[1]), args_list[3:])
    parser = argparse.ArgumentParser(
        prog="python -m p2plab.peercost", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--peers", type=int, action="append", help="peers of the hub (100); repeatable"
    )
    parser.add_argument(
        "--idle", type=float, default=60.0, help="idle seconds before the count ends (60)"
    )
    parser.add_argument(
        "--window", type=float, default=30.0, help="seconds the wake-ups are counted (30)"
    )
    parser.add_argument("--prefix", default="pc", help="start of the lab's names (pc)")
    parser.add_argument(
        "--profile", metavar="FILE", help="run the hub under cProfile, stats to FILE"
    )
    parser.add_argument(
        "--on-demand",
        action="store_true",
        help="every node connects on demand; also time the first packet to --samples peers",
    )
    parser.add_argument(
        "--samples", type=int, default=10, help="peers whose first packet is timed (10)"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(args_list)
    if os.geteuid() != 0:
        print("peercost: needs root (network namespaces, TUN devices)", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _on_sigterm)
    results = []
    for n in args.peers or [100]:
        print(f"== {n} peers", file=sys.stderr, flush=True)
        profile = Path(args.profile) if args.profile else None
        results.append(
            measure(
                n,
                args.idle,
                min(args.window, args.idle),
                args.prefix,
                profile=profile,
                on_demand=args.on_demand,
                samples=args.samples,
            )
        )
    head = ["peers", "hub wake-ups/s", "per peer", "hub RSS MiB", "hub CPU ms/s"]
    head += ["leaf wake-ups/s", "rendezvous wake-ups/s", "first packet s (median)"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---:|" * len(head))
    for r in results:
        cells = [
            f"{r['peers']}",
            f"{r['hub_wakeups_per_s']:.1f}",
            f"{r['hub_wakeups_per_s'] / r['peers']:.2f}",
            f"{r['hub_rss_mib']:.1f}",
            f"{r['hub_cpu_ms_per_s']:.1f}",
            f"{r['leaf_wakeups_per_s_mean']:.2f}",
            f"{r['rendezvous_wakeups_per_s']:.1f}",
            _first_cell(r),
        ]
        print("| " + " | ".join(cells) + " |")
    for r in results:
        top = list(r["hub_counters_per_s"].items())[:15]
        print(f"- {r['peers']} peers, the hub's counters per second in the window:")
        print("  " + ", ".join(f"{k} {v:.2f}" for k, v in top))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

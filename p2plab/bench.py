"""The ``tunnel`` section of ``scripts/bench``: p2ptun against the raw link and wireguard-go.

``python -m p2plab.bench [--quick] [--runs N] [--connects N] [--json F] [...]``
prints one table. Not a test: the numbers depend on the machine and drift between runs, so
every row is measured in the same run, one measurement at a time, over the same topology.

Topology: a :class:`~p2plab.natlab.NatLab` with two full-cone sites (``cone,cone``), a fresh
lab for each row so that no row inherits NAT state, a renumbered host or a block from another::

    site1 (10.0.1.2) ── nat1 (198.51.100.18) ── inet ── nat2 (198.51.100.34) ── site2 (10.0.2.2)
                                                  │
                                                server (203.0.113.10: rendezvous, STUN, TURN)

Rows:

``raw link``
    No tunnel: site1 talks to nat2's public address, and nat2 forwards TCP and UDP port 5201
    and ICMP echo to site2 (a port forward added for the benchmark). The packets cross the same
    namespaces, veths, NATs and conntrack as the tunnels' direct path, so the row is the ceiling
    a tunnel over that path can reach. Kernel forwarding has no process to charge CPU to.
``p2ptun direct``
    ``p2ptun rendezvous`` on the server, ``p2ptun up`` on both sites; ICE finds the direct pair
    through the cone NATs (checked: status path ``direct``, and the internet's counters show the
    bytes went straight between the sites).
``p2ptun relayed``
    The same, but the internet drops everything between the two sites (:meth:`NatLab.block`),
    so ICE settles on the embedded TURN server (checked: status path ``relay``, no direct bytes,
    the bytes go through the server). The rendezvous process counts towards CPU.
``wireguard-go``
    wireguard-go on both site hosts, each peer's endpoint the other's NAT address and port
    51820, ``persistent-keepalive 25`` (what a NATed WireGuard peer needs). The full-cone NATs
    keep the source port and let the peer in once the local side has sent. Default MTU (1420;
    p2ptun's default is smaller, 1416, as it leaves room for IPv6 and TURN framing).

Columns (each tunnel row):

- TCP throughput: ``iperf3`` from site1 to site2's tunnel address, one flow, ``--iperf-seconds``
  (10) each, median of ``--runs`` (3) with min–max, receiver's rate.
- ping RTT: median of ``--pings`` (50) pings at 0.2 s from site1 to site2's tunnel address.
- CPU s/GB: utime+stime (``/proc/PID/stat``) of the tunnel processes at both ends (plus the
  rendezvous when relayed) over all iperf3 runs, divided by the GB (10^9 bytes) received.
- connect: from starting the second node (``p2ptun up``, or wireguard-go and its ``wg set``
  configuration) to the first reply of a ``ping -i 0.02`` stream started at the same moment
  from the first site. The first node is already up (and registered at the rendezvous).
  Median of ``--connects`` (5) starts: between two, the second end is stopped (SIGTERM) and
  the first has noticed it.
- recovery: site1's host gets a new LAN address (:meth:`NatLab.set_host_address`) during a
  ``ping -i 0.1`` stream; time from the renumbering to the first reply to an echo request sent
  after it (reply time minus its RTT is the request's send time). Resolution: the ping
  interval; a path that never breaks shows 0–0.1 s plus one RTT.
- wake-ups/s: voluntary context switches (``/proc/PID/task/*/status``) of each tunnel daemon,
  summed over its threads, in the last ``--wake-window`` (10) s of ``--idle`` (60) s with no
  traffic after connecting; mean of the two daemons, each with one peer (so per peer, too).
- RSS: ``VmRSS`` of each daemon at the end of that idle period (before any bulk traffic);
  mean of the two. The rendezvous' wake-ups in the same window go to the notes.

Ratios against wireguard-go and the raw link follow in extra rows. Everything runs inside the
lab's namespaces; every process is started with :meth:`NatLab.popen` and stopped by PID; the lab
and the working directory are removed on exit, also on failure, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, Any

from p2plab.natlab import NatLab, iter_lines, lab_unavailable_reason
from p2plab.plainlab import PlainLab
from p2plab.wireguard_go import uapi_accepts, uapi_socket
from p2ptun.errors import RuntimeFailure
from p2ptun.keys import encode_key, generate_private_key, public_key
from p2ptun.node import control

RV = "203.0.113.10"
"""The rendezvous (signaling, STUN, TURN) on the lab's server."""
IPERF_PORT = 5201
WG_PORT = 51820
CONNECT_TIMEOUT = 30.0
RECOVERY_TIMEOUT = 30.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
LAB_SITES = ("cone", "cone")

ROW_RAW = "raw link"
ROW_DIRECT = "p2ptun direct"
ROW_RELAY = "p2ptun relayed"
ROW_WG = "wireguard-go"
ROW_OVPN = "OpenVPN"
ROW_NEBULA = "Nebula"
ROWS = (ROW_RAW, ROW_DIRECT, ROW_RELAY, ROW_WG, ROW_OVPN, ROW_NEBULA)
"""The rows of the NAT lab's table, in order."""
PLAIN_ROWS = (ROW_RAW, ROW_DIRECT, ROW_WG, ROW_OVPN, ROW_NEBULA)
"""The rows of the plain link's table (nothing to relay through: no server, no NAT)."""
PEERS = (ROW_WG, ROW_OVPN, ROW_NEBULA)
"""Other programs' tunnels: the references p2ptun's rows are divided by."""
TOPOLOGIES = ("nat", "plain")
OVPN_PORT = 1194
NEBULA_PORT = 4242
UDP_START_MAX = 3000.0
"""Mbit/s: the UDP search's first rate is 1.2× the TCP median, at most this."""
LOSS_TARGET = 1.0
"""The UDP column's rate is the highest found with at most this much loss (percent)."""


Lab = NatLab | PlainLab
"""Either topology: the drivers use only what both offer."""


class BenchError(RuntimeError):
    """A measurement could not be made (a tunnel did not come up, a tool failed)."""


@dataclasses.dataclass
class Options:
    """How long and how often to measure."""

    iperf_seconds: float = 10.0
    runs: int = 3
    pings: int = 50
    ping_interval: float = 0.2
    idle: float = 60.0
    wake_window: float = 10.0
    connects: int = 5
    rows: tuple[str, ...] = ROWS
    topology: str = "nat"
    parallel: int = 4
    """Flows of the parallel TCP column (``iperf3 -P``)."""
    udp_steps: int = 7
    """iperf3 ``-u`` runs of the search for the highest rate with at most 1 % loss."""
    udp_seconds: float = 3.0
    verbose: bool = True
    keep_logs: Path | None = None
    """Copy each row's logs and configs here (a directory per row) before removing them."""
    prefix: str | None = None
    """Start of every lab's name (then random hex); default ``bn`` (NAT lab), ``bp`` (plain)."""

    @classmethod
    def quick(cls) -> Options:
        """A smoke run: 3 s iperf3, one run, 5 pings, 5 s idle, one connect."""
        return cls(
            iperf_seconds=3.0,
            runs=1,
            pings=5,
            idle=5.0,
            wake_window=5.0,
            connects=1,
            udp_steps=3,
            udp_seconds=1.0,
        )


@dataclasses.dataclass
class Result:
    """One row of the table; ``None`` where a metric does not apply or was not measured."""

    name: str
    throughput_mbps: list[float] = dataclasses.field(default_factory=list)
    parallel_mbps: list[float] = dataclasses.field(default_factory=list)
    """TCP with ``Options.parallel`` flows, each run's sum."""
    udp_mbps: float | None = None
    """Receiver's rate at the highest offered rate found with at most 1 % loss."""
    udp_loss: float | None = None
    rtt_ms: float | None = None
    cpu_s_per_gb: float | None = None
    connect_s: float | None = None
    recovery_s: float | None = None
    recovery_measured: bool = True
    """False where the topology has no renumbering to recover from (the plain link)."""
    wakeups_per_s: float | None = None
    rss_mib: float | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    error: str | None = None

    @property
    def throughput_median(self) -> float | None:
        """The median of the iperf3 runs in Mbit/s (None before any run)."""
        return statistics.median(self.throughput_mbps) if self.throughput_mbps else None

    @property
    def parallel_median(self) -> float | None:
        """The median of the parallel-flow runs in Mbit/s (None before any run)."""
        return statistics.median(self.parallel_mbps) if self.parallel_mbps else None


# ---------------------------------------------------------------------------- /proc readings


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads, live and exited), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    # After the command name: state is field 3 of stat(5); utime and stime are 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def voluntary_switches(pid: int) -> dict[int, int]:
    """Voluntary context switches of each thread of a process: tid -> count."""
    counts: dict[int, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    counts[int(task.name)] = int(line.split()[1])
    return counts


def rss_mib(pid: int) -> float:
    """Resident set size (``VmRSS``) of a process in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmRSS for PID {pid}")


def wakeups_per_second(pids: Sequence[int], window: float) -> list[float]:
    """Voluntary context switches per second of each process over ``window`` seconds."""
    before = [voluntary_switches(pid) for pid in pids]
    start = time.monotonic()
    time.sleep(window)
    after = [voluntary_switches(pid) for pid in pids]
    elapsed = time.monotonic() - start
    rates = []
    for b, a in zip(before, after, strict=True):
        switches = sum(count - b.get(tid, 0) for tid, count in a.items())
        rates.append(switches / elapsed)
    return rates


# ---------------------------------------------------------------------------- ping

_REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from .*icmp_seq=(\d+) .*time=([\d.]+) ms")


def parse_reply(line: str) -> tuple[float, int, float] | None:
    """``ping -D`` reply line -> (receive time (Unix s), icmp_seq, RTT in s), or None."""
    m = _REPLY.match(line)
    if m is None:
        return None
    return float(m.group(1)), int(m.group(2)), float(m.group(3)) / 1000


def ping_stream(
    lab: Lab, host: str, dst: str, interval: float, deadline_s: float
) -> subprocess.Popen[str]:
    """Start ``ping -D`` (timestamped replies) from ``host`` to ``dst``, at most ``deadline_s``."""
    argv = ["ping", "-D", "-n", "-i", str(interval), "-W", "1", "-w", str(int(deadline_s)), dst]
    return lab.popen(host, argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def first_reply(stream: IO[str], deadline: float, sent_after: float = 0.0) -> float | None:
    """Receive time of the first reply to a request sent at or after ``sent_after`` (Unix
    time), reading ``stream`` until ``deadline`` (monotonic); None if there is none by then."""
    for line in iter_lines(stream, deadline):
        reply = parse_reply(line)
        if reply is not None and reply[0] - reply[2] >= sent_after:
            return reply[0]
    return None


_RTT = re.compile(r"time=([\d.]+) ms")


def median_rtt_ms(lab: Lab, host: str, dst: str, count: int, interval: float) -> float:
    """Median RTT in ms of ``count`` pings at ``interval`` from ``host`` to ``dst``.

    The median, not ping's mean: on a shared VM one echo in twenty or so takes a few ms
    longer (a descheduled vCPU), which moves a mean of 20 by 0.2 ms and says nothing about
    the tunnel. Every row is measured the same way."""
    argv = ["ping", "-n", "-c", str(count), "-i", str(interval), "-W", "2", dst]
    proc = lab.exec(host, *argv, timeout=count * interval + 30)
    rtts = [float(m.group(1)) for m in _RTT.finditer(proc.stdout)]
    if not rtts:
        raise BenchError(f"ping {dst} from {host} failed: {proc.stdout.strip()[-200:]}")
    return statistics.median(rtts)


# ---------------------------------------------------------------------------- a lab per row


class Bench:
    """One lab, its working directory and the processes of one row."""

    def __init__(self, lab: Lab, workdir: Path, opts: Options) -> None:
        self.lab = lab
        self.workdir = workdir
        self.opts = opts
        self.tag = secrets.token_hex(2)
        self.plain = isinstance(lab, PlainLab)
        self.rv = lab.site("site1").addr if isinstance(lab, PlainLab) else RV
        """Where a p2ptun row's rendezvous listens (the server, or beside site1)."""

    def say(self, text: str) -> None:
        """A progress line on stderr (unless quiet)."""
        if self.opts.verbose:
            print(f"   {text}", file=sys.stderr, flush=True)

    def log_file(self, name: str) -> IO[bytes]:
        """``<name>.log`` in the working directory, for appending."""
        return (self.workdir / f"{name}.log").open("ab")

    def daemon(
        self, host: str, name: str, argv: Sequence[str], **env: str
    ) -> subprocess.Popen[Any]:
        """Start a long-running program in ``host``, output to ``<name>.log``."""
        with self.log_file(name) as out:
            return self.lab.popen(
                host,
                list(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
            )

    def tail_logs(self, lines: int = 20) -> str:
        """The last ``lines`` lines of every log, for error messages."""
        parts = []
        for path in sorted(self.workdir.glob("*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(parts)

    # ------------------------------------------------------------------ iperf3

    def throughput(
        self,
        server_host: str,
        bind: str,
        dst: str,
        tunnel_pids: Sequence[int],
        result: Result,
        mtu: int = 1500,
    ) -> None:
        """iperf3 from site1 to ``dst`` (served in ``server_host`` on ``bind``): ``runs``
        single-flow TCP runs (their CPU per GB, with ``tunnel_pids``, at both ends), as many
        with ``parallel`` flows, then the UDP rate search (datagrams that fit ``mtu``)."""
        server = self.lab.popen(
            server_host,
            ["iperf3", "-s", "-B", bind, "-p", str(IPERF_PORT)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(0.3)  # iperf3 binds at once; a refused first connect would waste a run
            cpu = [0.0] * len(tunnel_pids)
            received = 0
            for run in range(self.opts.runs):
                before = [cpu_seconds(pid) for pid in tunnel_pids]
                rate, nbytes, _ = self._iperf_client(dst)
                cpu = [
                    c + cpu_seconds(p) - b for c, p, b in zip(cpu, tunnel_pids, before, strict=True)
                ]
                received += nbytes
                result.throughput_mbps.append(rate / 1e6)
                self.say(f"iperf3 run {run + 1}/{self.opts.runs}: {rate / 1e6:.0f} Mbit/s")
            for run in range(self.opts.runs):
                rate, _, _ = self._iperf_client(dst, ["-P", str(self.opts.parallel)])
                result.parallel_mbps.append(rate / 1e6)
                self.say(
                    f"iperf3 -P {self.opts.parallel} run {run + 1}/{self.opts.runs}: "
                    f"{rate / 1e6:.0f} Mbit/s"
                )
            self._udp_search(dst, mtu, result)
        finally:
            self.lab.stop(server)
        if tunnel_pids and received:
            result.cpu_s_per_gb = sum(cpu) / (received / 1e9)
            ends = ", ".join(f"{c / (received / 1e9):.1f}" for c in cpu)
            result.notes.append(f"CPU s/GB per process (site1, site2[, relay]): {ends}")

    def _udp_search(self, dst: str, mtu: int, result: Result) -> None:
        """The highest offered UDP rate with at most :data:`LOSS_TARGET` % loss, in
        ``udp_steps`` runs: from 1.2× the TCP median (at most :data:`UDP_START_MAX`), ×1.5
        while the loss stays low, halving while it is high, then
        halving the interval between the best good and the lowest bad rate."""
        length = mtu - 28  # IPv4 and UDP headers: one datagram per tunnel packet
        tcp = result.throughput_median or 100.0
        good: tuple[float, float, float] | None = None  # offered, received Mbit/s, loss %
        bad: float | None = None
        # One iperf3 sender tops out at a few Gbit/s of datagrams: no start above UDP_START_MAX.
        offered = min(UDP_START_MAX, max(50.0, tcp * 1.2))
        for _ in range(self.opts.udp_steps):
            extra = ["-u", "-b", f"{offered:.0f}M", "-l", str(length)]
            try:
                rate, _, loss = self._iperf_client(dst, extra, self.opts.udp_seconds)
            except BenchError as exc:  # the UDP column only: the row's other figures stand
                result.notes.append(f"UDP search stopped: {exc}")
                break
            self.say(
                f"UDP {offered:.0f} Mbit/s offered: {rate / 1e6:.0f} received, {loss:.2f} % lost"
            )
            if loss <= LOSS_TARGET:
                if good is None or offered > good[0]:
                    good = (offered, rate / 1e6, loss)
            elif bad is None or offered < bad:
                bad = offered
            if bad is None:
                offered *= 1.5
            elif good is None:
                offered /= 2
            else:
                offered = (good[0] + bad) / 2
        if good is not None:
            result.udp_mbps, result.udp_loss = good[1], good[2]
        result.notes.append(
            f"UDP: {length}-byte datagrams, {self.opts.udp_steps} runs of "
            f"{self.opts.udp_seconds:g} s searching for <= {LOSS_TARGET:g} % loss"
            + ("" if good is not None else " (none found)")
        )

    def _iperf_client(
        self, dst: str, extra: Sequence[str] = (), seconds: float | None = None
    ) -> tuple[float, int, float]:
        """One iperf3 run from site1 (up to 3 attempts): (bits/s, bytes) received and the
        percentage of datagrams lost (0 for TCP)."""
        seconds = self.opts.iperf_seconds if seconds is None else seconds
        argv = ["iperf3", "-c", dst, "-p", str(IPERF_PORT), "-t", f"{seconds:g}", "-J"]
        argv += ["--connect-timeout", "5000", *extra]
        for attempt in range(3):
            proc = self.lab.exec("site1", *argv, timeout=seconds + 30)
            try:
                report = json.loads(proc.stdout)
            except json.JSONDecodeError:
                report = {"error": proc.stderr.strip() or proc.stdout.strip()[-200:]}
            if "error" not in report:
                received = report["end"]["sum_received"]
                loss = float(received.get("lost_percent", 0.0))
                return float(received["bits_per_second"]), int(received["bytes"]), loss
            if attempt < 2:
                time.sleep(0.5)
        raise BenchError(f"iperf3 to {dst} failed: {report['error']}")

    def check_path(self, received: int, relayed: bool) -> None:
        """The lab's counters show the bulk of ``received`` bytes went the expected way."""
        direct = self.lab.direct_bytes("site1", "site2")
        via_server = self.lab.server_bytes("site1")
        if relayed and (direct > 0 or via_server < received // 2):
            raise BenchError(f"not relayed: {direct} B direct, {via_server} B via the server")
        if not relayed and direct < received // 2:
            raise BenchError(f"not direct: {direct} B direct, {via_server} B via the server")


# ---------------------------------------------------------------------------- raw link


def bench_raw(bench: Bench) -> Result:
    """Row ``raw link``: iperf3 and ping from site1 to nat2's public address, forwarded
    (on the plain link: to site2's address across the veth)."""
    lab, result = bench.lab, Result(ROW_RAW)
    if isinstance(lab, PlainLab):
        dst = lab.site("site2").addr
        lab.reset_counters()
        bench.throughput("site2", dst, dst, [], result)
        result.rtt_ms = median_rtt_ms(lab, "site1", dst, bench.opts.pings, bench.opts.ping_interval)
        result.notes.append(f"site1 -> {dst} across the veth")
        return result
    assert isinstance(lab, NatLab)
    site2 = lab.site("site2")
    wan = lab.if_wan("site2")
    rules = (
        "table ip bench {\n"
        "  chain prerouting {\n"
        "    type nat hook prerouting priority dstnat - 5; policy accept;\n"
        f'    iifname "{wan}" tcp dport {IPERF_PORT} dnat to {site2.host_addr}\n'
        f'    iifname "{wan}" udp dport {IPERF_PORT} dnat to {site2.host_addr}\n'
        f'    iifname "{wan}" icmp type echo-request dnat to {site2.host_addr}\n'
        "  }\n"
        "}\n"
        # the router's own forward chain lets in only what it knows: add the port forward
        f'insert rule ip lab forward iifname "{wan}" ct status dnat accept\n'
    )
    lab.exec("nat2", "nft", "-f", "-", input=rules, check=True, timeout=10)
    dst = site2.wan_addr
    lab.reset_counters()
    bench.throughput("site2", site2.host_addr, dst, [], result)
    bench.check_path(_received_bytes(result, bench.opts), relayed=False)
    result.rtt_ms = median_rtt_ms(lab, "site1", dst, bench.opts.pings, bench.opts.ping_interval)
    result.notes.append(f"site1 -> {dst} (nat2, forwarded to site2)")
    return result


def _received_bytes(result: Result, opts: Options) -> int:
    """A lower bound of what the iperf3 runs moved (for the path check): bits -> bytes."""
    return int(sum(result.throughput_mbps) * 1e6 / 8 * opts.iperf_seconds * 0.9)


# ---------------------------------------------------------------------------- tunnels


class Tunnel:
    """A tunnel between site1 and site2 that the common measurements drive."""

    name = ""
    peer_ip = ""
    """site2's tunnel address."""
    ifname = ""
    """site1's tunnel interface."""
    relayed = False

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.lab = bench.lab

    @property
    def nat_lab(self) -> NatLab:
        """The lab, where a measurement needs the NAT lab (renumbering, flushing a NAT)."""
        if not isinstance(self.lab, NatLab):
            raise BenchError("this measurement needs the NAT lab")
        return self.lab

    def start_first(self) -> None:
        """Start site1's end and wait until it is ready for the peer."""
        raise NotImplementedError

    def start_second(self) -> None:
        """Start site2's end (timed from the call: return as soon as it is started)."""
        raise NotImplementedError

    def wait_established(self) -> None:
        """Wait until the tunnel is up as expected (direct or relayed); raise otherwise."""
        raise NotImplementedError

    def stop_second(self) -> None:
        """Stop site2's end (by PID) and return once site1's end has noticed, so that the next
        :meth:`start_second` connects afresh."""
        raise NotImplementedError

    def daemon_pids(self) -> list[int]:
        """The two tunnel daemons (site1's, site2's)."""
        raise NotImplementedError

    def server_pids(self) -> list[int]:
        """Servers the tunnel needs while idle (a rendezvous), for the notes' wake-ups."""
        return []

    def cpu_pids(self) -> list[int]:
        """Every process that carries the data: the daemons, and a relay if there is one."""
        return self.daemon_pids()

    def extra_notes(self) -> list[str]:
        """Remarks for the table's notes (MTU and the like), while the tunnel runs."""
        return []

    def stop(self) -> None:
        """Stop the tunnel's processes by PID, the daemons before what they depend on."""
        raise NotImplementedError

    def mtu(self) -> int:
        """site1's tunnel interface MTU (1420 if it cannot be read)."""
        text = _mtu(self.lab, "site1", self.ifname)
        return int(text) if text.isdigit() else 1420


def measure_tunnel(tunnel: Tunnel, opts: Options) -> Result:
    """The common measurements, in order: connect, idle, throughput, RTT, recovery."""
    try:
        return _measure(tunnel, opts)
    finally:
        tunnel.stop()


def _connect_once(tunnel: Tunnel) -> float:
    """Start site2's end with a ``ping -i 0.02`` stream from site1; seconds to its first reply."""
    budget = CONNECT_TIMEOUT
    pinger = ping_stream(tunnel.lab, "site1", tunnel.peer_ip, 0.02, budget + 5)
    assert pinger.stdout is not None
    t0 = time.time()
    tunnel.start_second()
    got = first_reply(pinger.stdout, time.monotonic() + budget)
    tunnel.lab.stop(pinger)
    if got is None:
        raise BenchError(f"no ping reply within {budget:.0f} s of starting the second end")
    return got - t0


def _measure(tunnel: Tunnel, opts: Options) -> Result:
    """The body of :func:`measure_tunnel` (which stops the tunnel afterwards)."""
    bench, lab = tunnel.bench, tunnel.lab
    result = Result(tunnel.name)
    tunnel.start_first()

    # connect: ping from site1 started together with the second end, median of the starts
    connects = []
    for i in range(opts.connects):
        if i:
            tunnel.stop_second()
        connects.append(_connect_once(tunnel))
        bench.say(f"connect {i + 1}/{opts.connects}: first reply after {connects[-1]:.2f} s")
        tunnel.wait_established()
    result.connect_s = statistics.median(connects)
    if len(connects) > 1:
        result.notes.append(
            f"connect: median of {len(connects)} starts, {min(connects):.2f}–{max(connects):.2f} s"
        )

    # idle: wake-ups in the last window, then RSS
    pids = tunnel.daemon_pids()
    window = min(opts.wake_window, opts.idle)
    bench.say(f"idle {opts.idle:g} s (wake-ups counted over the last {window:g} s)")
    time.sleep(max(0.0, opts.idle - window))
    servers = tunnel.server_pids()
    rates = wakeups_per_second(pids + servers, window)
    rates, server_rates = rates[: len(pids)], rates[len(pids) :]
    result.wakeups_per_s = statistics.mean(rates)
    result.notes.extend(f"rendezvous at idle: {r:.1f} wake-ups/s" for r in server_rates)
    result.rss_mib = statistics.mean(rss_mib(pid) for pid in pids)
    bench.say(
        "wake-ups/s " + ", ".join(f"{r:.1f}" for r in rates) + f"; RSS {result.rss_mib:.1f} MiB"
    )

    # throughput and CPU
    lab.reset_counters()
    bench.throughput(
        "site2", tunnel.peer_ip, tunnel.peer_ip, tunnel.cpu_pids(), result, tunnel.mtu()
    )
    bench.check_path(_received_bytes(result, opts), relayed=tunnel.relayed)

    result.rtt_ms = median_rtt_ms(lab, "site1", tunnel.peer_ip, opts.pings, opts.ping_interval)
    bench.say(f"ping: {result.rtt_ms:.3f} ms")

    result.notes += tunnel.extra_notes()
    if bench.plain:  # nothing to renumber behind a plain link
        result.recovery_measured = False
        return result
    assert isinstance(lab, NatLab)

    # recovery after site1's host is renumbered
    pinger = ping_stream(lab, "site1", tunnel.peer_ip, 0.1, RECOVERY_TIMEOUT + 10)
    assert pinger.stdout is not None
    if first_reply(pinger.stdout, time.monotonic() + 5) is None:
        lab.stop(pinger)
        raise BenchError("no ping reply before the renumbering")
    time.sleep(1.0)
    t_renumber = time.time()
    new_addr = lab.set_host_address("site1")
    got = first_reply(pinger.stdout, time.monotonic() + RECOVERY_TIMEOUT, sent_after=t_renumber)
    lab.stop(pinger)
    if got is None:
        result.notes.append(f"no reply within {RECOVERY_TIMEOUT:.0f} s of the renumbering")
    else:
        result.recovery_s = got - t_renumber
        bench.say(f"recovery after site1 -> {new_addr}: {result.recovery_s:.2f} s")
    return result


# ------------------------------------------------------------------ p2ptun


def _control_request(path: str, request: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """One request on a node's control socket; {} if the daemon does not answer."""
    try:
        return control.request(path, request, timeout)
    except RuntimeFailure:
        return {}


@dataclasses.dataclass
class _Node:
    """One ``p2ptun up`` node: its site, interface, tunnel address and keys."""

    name: str
    site: str
    ifname: str
    ip: str
    key: str
    pub: str
    proc: subprocess.Popen[Any] | None = None


class P2ptunTunnel(Tunnel):
    """``p2ptun rendezvous`` on the server, ``p2ptun up`` on site1 (alice) and site2 (bob)."""

    firewall = (
        f'[[firewall.inbound]]\nproto = "tcp"\nport = {IPERF_PORT}\n'
        f'[[firewall.inbound]]\nproto = "udp"\nport = {IPERF_PORT}\n'
        '[[firewall.inbound]]\nproto = "icmp"\n'
    )
    """The nodes' ``[firewall]``: iperf3's port (TCP, and UDP for the rate search) and ping
    come in."""
    extra_env: tuple[tuple[str, str], ...] = ()
    """More environment for the daemons."""

    def __init__(self, bench: Bench, relayed: bool, *, block: bool | None = None) -> None:
        """``relayed``: the path expected; ``block`` (default: ``relayed``) makes it so by
        blocking the sites from each other (NAT types that leave no direct path need not)."""
        super().__init__(bench)
        self.relayed = relayed
        self.name = ROW_RELAY if relayed else ROW_DIRECT
        self.peer_ip = "10.77.0.2"
        self.ifname = f"p2p{bench.tag}a"
        self.run_dir = bench.workdir / "run"
        rv_priv = generate_private_key()
        self.rv_key, self.rv_pub = encode_key(rv_priv), encode_key(public_key(rv_priv))
        self.nodes = []
        for i, name in enumerate(("alice", "bob"), start=1):
            priv = generate_private_key()
            self.nodes.append(
                _Node(
                    name,
                    f"site{i}",
                    f"p2p{bench.tag}{name[0]}",
                    f"10.77.0.{i}",
                    encode_key(priv),
                    encode_key(public_key(priv)),
                )
            )
        self.rendezvous: subprocess.Popen[Any] | None = None
        if relayed if block is None else block:
            self.lab.block("site1", "site2")
        self._start_rendezvous()

    def _env(self) -> dict[str, str]:
        """Environment for every p2ptun process: its own run directory."""
        return {
            "P2PTUN_RUN_DIR": str(self.run_dir),
            "P2PTUN_STATE_DIR": str(self.run_dir.parent / "state"),
            **dict(self.extra_env),
        }

    def _start_rendezvous(self) -> None:
        """``p2ptun rendezvous`` on the server: signaling, STUN and TURN."""
        work, rv = self.bench.workdir, self.bench.rv
        nodes = "".join(
            f'[[node]]\nname = "{n.name}"\npublic_key = "{n.pub}"\n' for n in self.nodes
        )
        path = work / "rendezvous.toml"
        path.write_text(
            f'listen = "{rv}:7070"\nprivate_key = "{self.rv_key}"\n'
            f'database = "{work}/rendezvous.sqlite"\n'
            f'[stun]\nlisten = ["{rv}:3478"]\n'
            f'[turn]\nrealm = "bench"\nrelay_address = "{rv}"\nrelay_ports = "49152-49999"\n'
            f'auth_secret = "{secrets.token_hex(16)}"\n'
            # The lab's public addresses are documentation blocks, denied by default.
            'allow_peers = ["192.0.2.0/24", "198.51.100.0/24"]\n' + nodes
        )
        path.chmod(0o600)
        argv = [sys.executable, "-m", "p2ptun", "rendezvous", "-c", str(path)]
        self.rendezvous = self.bench.daemon("server", "rendezvous", argv, **self._env())

    def _start_node(self, node: _Node) -> None:
        """Write the node config and start ``p2ptun up`` in its site."""
        peers = "".join(
            f'[[peer]]\nname = "{p.name}"\npublic_key = "{p.pub}"\nallowed_ips = ["{p.ip}/32"]\n'
            for p in self.nodes
            if p is not node
        )
        path, rv = self.bench.workdir / f"{node.name}.toml", self.bench.rv
        path.write_text(
            f'name = "{node.name}"\nprivate_key = "{node.key}"\n'
            f'[interface]\nname = "{node.ifname}"\naddress = ["{node.ip}/24"]\n'
            f'[rendezvous]\naddress = "{rv}:7070"\npublic_key = "{self.rv_pub}"\n'
            f'[ice]\nstun = ["{rv}:3478"]\n'
            f'turn = [{{ url = "turn:{rv}:3478?transport=udp" }}]\n' + peers + self.firewall
        )
        path.chmod(0o600)
        argv = [sys.executable, "-m", "p2ptun", "up", "-c", str(path)]
        node.proc = self.bench.daemon(node.site, node.name, argv, **self._env())

    def status(self, node: _Node) -> dict[str, Any]:
        """A node's ``p2ptun status`` over its control socket ({} if it does not answer)."""
        sock = str(self.run_dir / f"{node.ifname}.sock")
        reply = _control_request(sock, {"cmd": "status"})
        status: dict[str, Any] = reply.get("status", {}) if reply.get("ok") else {}
        return status

    def _alive(self, node: _Node) -> None:
        """Raise if the node or the rendezvous has exited."""
        if node.proc is None or node.proc.poll() is not None:
            raise BenchError(f"p2ptun up ({node.name}) exited:\n{self.bench.tail_logs()}")
        if self.rendezvous is None or self.rendezvous.poll() is not None:
            raise BenchError(f"p2ptun rendezvous exited:\n{self.bench.tail_logs()}")

    def _wait(self, what: str, check: Callable[[], bool], timeout: float) -> None:
        """Poll ``check`` every 0.1 s for at most ``timeout`` s; raise if a daemon dies."""
        deadline = time.monotonic() + timeout
        while not check():
            for node in self.nodes:
                if node.proc is not None:
                    self._alive(node)
            if time.monotonic() > deadline:
                raise BenchError(f"{what}: not within {timeout:.0f} s\n{self.bench.tail_logs()}")
            time.sleep(0.1)

    def start_first(self) -> None:
        alice = self.nodes[0]
        self._start_node(alice)
        self._wait(
            "alice registered at the rendezvous",
            lambda: self.status(alice).get("node", {}).get("rendezvous") == "connected",
            CONNECT_TIMEOUT,
        )

    def start_second(self) -> None:
        self._start_node(self.nodes[1])

    def stop_second(self) -> None:
        bob = self.nodes[1]
        if bob.proc is not None:
            self.lab.stop(bob.proc)
            bob.proc = None
        self._wait(
            "alice noticed that bob left",
            lambda: self.paths()[0] is None,
            CONNECT_TIMEOUT,
        )

    def paths(self) -> list[str | None]:
        """Each node's path to its peer once connected (None while not connected)."""
        paths = []
        for node in self.nodes:
            peers = self.status(node).get("peers", [])
            ok = peers and peers[0].get("state") == "connected"
            paths.append(peers[0].get("path") if ok else None)
        return paths

    def wait_established(self) -> None:
        want = "relay" if self.relayed else "direct"
        self._wait(
            f"both nodes connected, path {want}",
            lambda: self.paths() == [want, want],
            CONNECT_TIMEOUT,
        )

    def daemon_pids(self) -> list[int]:
        return [n.proc.pid for n in self.nodes if n.proc is not None]

    def server_pids(self) -> list[int]:
        return [] if self.rendezvous is None else [self.rendezvous.pid]

    def cpu_pids(self) -> list[int]:
        pids = self.daemon_pids()
        if self.relayed and self.rendezvous is not None:
            pids.append(self.rendezvous.pid)
        return pids

    def extra_notes(self) -> list[str]:
        mtu = _mtu(self.lab, "site1", self.nodes[0].ifname)
        notes = [f"MTU {mtu}"]
        if self.relayed and self.rendezvous is not None:
            rss = rss_mib(self.rendezvous.pid)
            notes.append(f"rendezvous RSS {rss:.1f} MiB (after the transfers)")
        return notes

    def stop(self) -> None:
        for node in reversed(self.nodes):
            if node.proc is not None:
                self.lab.stop(node.proc)
        if self.rendezvous is not None:
            self.lab.stop(self.rendezvous)


def _mtu(lab: Lab, host: str, ifname: str) -> str:
    """An interface's MTU inside a lab host, as text."""
    out = lab.exec(host, "cat", f"/sys/class/net/{ifname}/mtu", timeout=10).stdout.strip()
    return out or "?"


# ------------------------------------------------------------------ wireguard-go


class WireguardGoTunnel(Tunnel):
    """wireguard-go on both site hosts, endpoints each other's NAT address, port 51820."""

    name = ROW_WG

    def __init__(self, bench: Bench) -> None:
        super().__init__(bench)
        self.peer_ip = "10.78.0.2"
        self.ifnames = [f"wg{bench.tag}a", f"wg{bench.tag}b"]
        self.ifname = self.ifnames[0]
        self.keys = [generate_private_key(), generate_private_key()]
        self.procs: list[subprocess.Popen[Any]] = []
        for ifname in self.ifnames:
            sock = uapi_socket(ifname)
            # wireguard-go removes its UAPI socket on SIGTERM, not when it had to be killed
            bench.lab.add_cleanup(functools.partial(sock.unlink, missing_ok=True))

    def _start(self, i: int) -> None:
        """Start wireguard-go on site ``i + 1`` and configure it with ``wg`` and ``ip``."""
        site, ifname = f"site{i + 1}", self.ifnames[i]
        other = self.lab.site(f"site{2 - i}")
        proc = self.bench.daemon(site, ifname, ["wireguard-go", ifname], WG_PROCESS_FOREGROUND="1")
        self.procs.append(proc)
        deadline = time.monotonic() + 10
        # Not by polling ``wg show``: see p2plab.wireguard_go for the race that would start.
        while not uapi_accepts(ifname):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"wireguard-go did not come up:\n{self.bench.tail_logs()}")
            time.sleep(0.02)
        key_file = self.bench.workdir / f"{ifname}.key"
        key_file.write_text(encode_key(self.keys[i]) + "\n")
        key_file.chmod(0o600)
        peer = encode_key(public_key(self.keys[1 - i]))
        wg_set = ["wg", "set", ifname, "listen-port", str(WG_PORT), "private-key", str(key_file)]
        wg_set += ["peer", peer, "allowed-ips", f"10.78.0.{2 - i}/32"]
        wg_set += ["endpoint", f"{other.mapped_addr}:{WG_PORT}", "persistent-keepalive", "25"]
        setup = [
            wg_set,
            ["ip", "addr", "add", f"10.78.0.{i + 1}/24", "dev", ifname],
            ["ip", "link", "set", ifname, "up"],
        ]
        for argv in setup:
            done = self.lab.exec(site, *argv, timeout=10)
            if done.returncode != 0:
                raise BenchError(f"{' '.join(argv)} in {site}: {done.stderr.strip()}")

    def start_first(self) -> None:
        self._start(0)

    def start_second(self) -> None:
        self._start(1)

    def stop_second(self) -> None:
        # The interface goes with the process; site1 keeps its session until the new
        # process's first handshake (its persistent keepalive starts one at once).
        if len(self.procs) > 1:
            self.lab.stop(self.procs.pop(1))

    def wait_established(self) -> None:
        pass  # a ping reply came back: the handshake is done, the path is checked by counters

    def daemon_pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def extra_notes(self) -> list[str]:
        return [f"MTU {_mtu(self.lab, 'site1', self.ifnames[0])}, persistent-keepalive 25"]

    def stop(self) -> None:
        for proc in reversed(self.procs):
            self.lab.stop(proc)


# ------------------------------------------------------------------ OpenVPN


def _self_signed(name: str, directory: Path) -> tuple[Path, Path, str]:
    """A P-256 key and a self-signed certificate for ``name`` (``cryptography``): the two
    files and the certificate's SHA-256 fingerprint as OpenVPN's ``--peer-fingerprint``
    wants it (colon-separated hex)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .sign(key, hashes.SHA256())
    )
    crt_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    crt_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    fingerprint = cert.fingerprint(hashes.SHA256()).hex(":").upper()
    return crt_path, key_path, fingerprint


class OpenVpnTunnel(Tunnel):
    """OpenVPN 2.6 in peer-to-peer TLS mode on both site hosts: AES-256-GCM, userspace
    (``--disable-dco``), self-signed certificates pinned by ``--peer-fingerprint``; site1
    the TLS server, site2 the client (so a start of site2 begins the handshake at once);
    each end's remote the other's (NAT) address, UDP port 1194, ``--ping 25`` (what a NATed
    peer needs, like WireGuard's persistent keepalive). Default tun MTU (1500: OpenVPN then
    fragments its own UDP datagrams on a 1500-byte path)."""

    name = ROW_OVPN

    def __init__(self, bench: Bench) -> None:
        super().__init__(bench)
        self.peer_ip = "10.79.0.2"
        self.ifnames = [f"ov{bench.tag}a", f"ov{bench.tag}b"]
        self.ifname = self.ifnames[0]
        self.creds = [_self_signed(f"ovpn{i + 1}", bench.workdir) for i in range(2)]
        self.procs: list[subprocess.Popen[Any]] = []

    def _start(self, i: int) -> None:
        site, other = f"site{i + 1}", self.lab.site(f"site{2 - i}")
        crt, key, _ = self.creds[i]
        peer_fp = self.creds[1 - i][2]
        argv = ["openvpn", "--dev", self.ifnames[i], "--dev-type", "tun", "--disable-dco"]
        argv += ["--proto", "udp", "--lport", str(OVPN_PORT)]
        argv += ["--remote", other.mapped_addr, str(OVPN_PORT), "--float"]
        argv += ["--ifconfig", f"10.79.0.{i + 1}", f"10.79.0.{2 - i}"]
        argv += ["--cert", str(crt), "--key", str(key), "--peer-fingerprint", peer_fp]
        argv += ["--data-ciphers", "AES-256-GCM", "--ping", "25", "--verb", "3"]
        argv += ["--tls-server", "--dh", "none"] if i == 0 else ["--tls-client"]
        proc = self.bench.daemon(site, self.ifnames[i], argv)
        self.procs.append(proc)
        deadline = time.monotonic() + 10
        path = Path(f"/sys/class/net/{self.ifnames[i]}")
        while self.lab.exec(site, "test", "-e", str(path), timeout=10).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"openvpn did not come up:\n{self.bench.tail_logs()}")
            time.sleep(0.05)

    def start_first(self) -> None:
        self._start(0)

    def start_second(self) -> None:
        self._start(1)

    def stop_second(self) -> None:
        # site1 takes the new client's hard reset as a new session (p2p TLS mode)
        if len(self.procs) > 1:
            self.lab.stop(self.procs.pop(1))

    def wait_established(self) -> None:
        pass  # a ping reply came back: the TLS handshake is done

    def daemon_pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def extra_notes(self) -> list[str]:
        return [f"MTU {_mtu(self.lab, 'site1', self.ifname)}, AES-256-GCM, no DCO, ping 25"]

    def stop(self) -> None:
        for proc in reversed(self.procs):
            self.lab.stop(proc)


# ------------------------------------------------------------------ Nebula


class NebulaTunnel(Tunnel):
    """Nebula on both site hosts: a CA and two host certificates from ``nebula-cert``, no
    lighthouse, each end's ``static_host_map`` the other's (NAT) address and UDP port 4242,
    every packet allowed by its firewall, ``punchy`` on (keeps a NAT binding open), default
    tun MTU (1300). In the NAT lab site2 pings site1 once as it starts (see :meth:`_start`)."""

    name = ROW_NEBULA

    def __init__(self, bench: Bench) -> None:
        super().__init__(bench)
        self.peer_ip = "10.80.0.2"
        self.ifnames = [f"nb{bench.tag}a", f"nb{bench.tag}b"]
        self.ifname = self.ifnames[0]
        self.procs: list[subprocess.Popen[Any]] = []
        work = bench.workdir
        ca = ["-out-crt", str(work / "ca.crt"), "-out-key", str(work / "ca.key")]
        self._cert_tool("ca", "-name", "bench", *ca)
        for i in range(2):
            self._cert_tool(
                "sign",
                *("-name", f"nebula{i + 1}", "-ip", f"10.80.0.{i + 1}/24"),
                *("-ca-crt", str(work / "ca.crt"), "-ca-key", str(work / "ca.key")),
                *("-out-crt", str(work / f"nebula{i + 1}.crt")),
                *("-out-key", str(work / f"nebula{i + 1}.key")),
            )

    @staticmethod
    def _cert_tool(*argv: str) -> None:
        done = subprocess.run(
            ["nebula-cert", *argv], capture_output=True, text=True, timeout=30, check=False
        )
        if done.returncode != 0:
            raise BenchError(f"nebula-cert {argv[0]}: {done.stderr.strip()}")

    def _start(self, i: int) -> None:
        site, other = f"site{i + 1}", self.lab.site(f"site{2 - i}")
        work = self.bench.workdir
        anything = [{"port": "any", "proto": "any", "host": "any"}]
        config = {
            "pki": {
                "ca": str(work / "ca.crt"),
                "cert": str(work / f"nebula{i + 1}.crt"),
                "key": str(work / f"nebula{i + 1}.key"),
            },
            "static_host_map": {f"10.80.0.{2 - i}": [f"{other.mapped_addr}:{NEBULA_PORT}"]},
            "lighthouse": {"am_lighthouse": False, "hosts": []},
            "listen": {"host": "0.0.0.0", "port": NEBULA_PORT},
            "punchy": {"punch": True},
            "tun": {"dev": self.ifnames[i]},
            "logging": {"level": "info"},
            "firewall": {"outbound": anything, "inbound": anything},
        }
        path = work / f"nebula{i + 1}.yml"
        path.write_text(json.dumps(config, indent=1) + "\n")  # JSON is YAML
        proc = self.bench.daemon(site, self.ifnames[i], ["nebula", "-config", str(path)])
        self.procs.append(proc)
        deadline = time.monotonic() + 10
        dev = f"/sys/class/net/{self.ifnames[i]}"
        while self.lab.exec(site, "test", "-e", dev, timeout=10).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"nebula did not come up:\n{self.bench.tail_logs()}")
            time.sleep(0.05)
        if i == 1 and not self.bench.plain:
            # Without a lighthouse a NATed Nebula that has nothing to send opens no binding,
            # and site1's handshakes die at nat2: site2 pings once, as a lighthouse's punch
            # would make it send.
            argv = ["ping", "-n", "-c", "5", "-i", "0.2", "-W", "1", "10.80.0.1"]
            self.lab.popen(site, argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start_first(self) -> None:
        self._start(0)

    def start_second(self) -> None:
        self._start(1)

    def stop_second(self) -> None:
        if len(self.procs) > 1:
            self.lab.stop(self.procs.pop(1))

    def wait_established(self) -> None:
        pass  # a ping reply came back: the handshake is done

    def daemon_pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def extra_notes(self) -> list[str]:
        return [f"MTU {_mtu(self.lab, 'site1', self.ifname)}, no lighthouse, punchy"]

    def stop(self) -> None:
        for proc in reversed(self.procs):
            self.lab.stop(proc)


# ---------------------------------------------------------------------------- running


@contextlib.contextmanager
def _fresh_lab(name: str, opts: Options, sites: Sequence[str] = LAB_SITES) -> Iterator[Bench]:
    """A new lab (cone/cone unless ``sites`` says otherwise, or the plain link) and working
    directory, removed afterwards whatever happens."""
    workdir = Path(tempfile.mkdtemp(prefix="p2ptun-bench-"))
    lab: Lab | None = None
    try:
        if opts.topology == "plain":
            lab = PlainLab.create((opts.prefix or "bp") + secrets.token_hex(3))
        else:
            lab = NatLab.create(list(sites), prefix=(opts.prefix or "bn") + secrets.token_hex(3))
        yield Bench(lab, workdir, opts)
    finally:
        if lab is not None:
            lab.close()
        if opts.keep_logs is not None:
            dest = opts.keep_logs / f"{name.replace(' ', '-')}"
            shutil.copytree(workdir, dest, dirs_exist_ok=True, ignore=_no_sockets)
        shutil.rmtree(workdir, ignore_errors=True)


def _no_sockets(directory: str, names: list[str]) -> list[str]:
    """``shutil.copytree`` ignore function: no sockets, no run directory."""
    return [n for n in names if n.endswith(".sock") or n == "run"]


def run_row(name: str, opts: Options) -> Result:
    """Measure one row in a lab of its own; a failure is recorded in the result."""
    if opts.verbose:
        print(f"== {name}", file=sys.stderr, flush=True)
    try:
        with _fresh_lab(name, opts) as bench:
            if name == ROW_RAW:
                return bench_raw(bench)
            if name == ROW_WG:
                return measure_tunnel(WireguardGoTunnel(bench), opts)
            if name == ROW_OVPN:
                return measure_tunnel(OpenVpnTunnel(bench), opts)
            if name == ROW_NEBULA:
                return measure_tunnel(NebulaTunnel(bench), opts)
            return measure_tunnel(P2ptunTunnel(bench, relayed=name == ROW_RELAY), opts)
    except (BenchError, subprocess.SubprocessError, OSError, RuntimeError) as exc:
        message = str(exc)
        print(f"   {name} FAILED: {message}", file=sys.stderr, flush=True)
        return Result(name, error=message.splitlines()[0] if message else repr(exc))


def run(opts: Options) -> list[Result]:
    """Every requested row, one after the other."""
    return [run_row(name, opts) for name in opts.rows]


# ---------------------------------------------------------------------------- the table

COLUMNS = (
    "tunnel",
    "TCP Mbit/s (min–max)",
    "TCP ×4 Mbit/s",
    "UDP Mbit/s",
    "ping ms",
    "CPU s/GB",
    "connect s",
    "recovery s",
    "wake-ups/s",
    "RSS MiB",
)
RAW_RATIO_COLUMNS = 4
"""Ratios to the raw link are shown for the throughputs and the ping (the rest has no
process to compare with)."""


def _num(value: float | None, digits: int = 2) -> str:
    """A number for the table: fewer decimals as it grows; ``–`` for None."""
    if value is None:
        return "–"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.{digits}f}"


def _throughput_cell(values: Sequence[float]) -> str:
    """``median (min–max)`` in Mbit/s, or just the value after one run."""
    if not values:
        return "–"
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:.0f}"
    return f"{med:.0f} ({min(values):.0f}–{max(values):.0f})"


def _ratio(a: float | None, b: float | None) -> str:
    """``a / b`` as ``0.71×`` (three decimals below 0.1, ``<0.001×`` below that)."""
    if a is None or b is None or b == 0:
        return "–"
    x = a / b
    if x >= 100:
        return f"{x:.0f}×"
    if x >= 0.1:
        return f"{x:.2f}×"
    return f"{x:.3f}×" if x >= 0.001 else "<0.001×"


def _metrics(r: Result) -> list[float | None]:
    """A row's values in column order (for the ratios)."""
    return [
        r.throughput_median,
        r.parallel_median,
        r.udp_mbps,
        r.rtt_ms,
        r.cpu_s_per_gb,
        r.connect_s,
        r.recovery_s,
        r.wakeups_per_s,
        r.rss_mib,
    ]


def _recovery_cell(r: Result) -> str:
    if r.recovery_s is not None or r.name == ROW_RAW or not r.recovery_measured:
        return _num(r.recovery_s)
    return "timeout"


def table_rows(results: Sequence[Result]) -> list[list[str]]:
    """The table's body: one row per result, then the ratio rows: each p2ptun row divided
    by each other program's tunnel, then every tunnel by the raw link."""
    rows: list[list[str]] = []
    for r in results:
        if r.error is not None:
            rows.append([r.name, "FAILED", *["–"] * (len(COLUMNS) - 2)])
            continue
        rows.append(
            [
                r.name,
                _throughput_cell(r.throughput_mbps),
                _throughput_cell(r.parallel_mbps),
                _num(r.udp_mbps),
                _num(r.rtt_ms, 3),
                _num(r.cpu_s_per_gb),
                _num(r.connect_s),
                _recovery_cell(r),
                _num(r.wakeups_per_s, 1),
                _num(r.rss_mib, 1),
            ]
        )
    ok = [r for r in results if r.error is None]
    by_name = {r.name: r for r in ok}
    ours = [r for r in ok if r.name in (ROW_DIRECT, ROW_RELAY)]
    for ref_name in PEERS:
        ref = by_name.get(ref_name)
        if ref is None:
            continue
        for r in ours:
            cells = [_ratio(a, b) for a, b in zip(_metrics(r), _metrics(ref), strict=True)]
            rows.append([f"{r.name} ÷ {ref_name}", *cells])
    raw = by_name.get(ROW_RAW)
    if raw is not None:
        for r in ok:
            if r.name == ROW_RAW:
                continue
            cells = [_ratio(a, b) for a, b in zip(_metrics(r), _metrics(raw), strict=True)]
            cells = [c if i < RAW_RATIO_COLUMNS else "" for i, c in enumerate(cells)]
            rows.append([f"{r.name} ÷ {ROW_RAW}", *cells])
    return rows


def machine_note() -> str:
    """CPU count and load average: the context every number here depends on."""
    load = Path("/proc/loadavg").read_text().split()[:3]
    return f"machine: {os.cpu_count()} CPUs, load average {' '.join(load)} (1, 5, 15 min)"


def render(results: Sequence[Result], context: Sequence[str] = ()) -> str:
    """The table as aligned text (a Markdown table, readable as is), then notes: each row's
    remarks and failures, and ``context`` lines."""
    rows = [list(COLUMNS), *table_rows(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]

    def line(cells: Sequence[str]) -> str:
        padded = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    out = [line(rows[0]), "|" + "|".join(("-" * (w + 1) + ":") for w in widths) + "|"]
    out[1] = "|" + "-" * (widths[0] + 2) + out[1][widths[0] + 3 :]
    out += [line(row) for row in rows[1:]]
    notes = [f"{r.name}: {'; '.join(r.notes)}" for r in results if r.notes and r.error is None]
    notes += [f"{r.name}: FAILED: {r.error}" for r in results if r.error is not None]
    notes += context
    return "\n".join(out + [""] + [f"- {n}" for n in notes])


# ---------------------------------------------------------------------------- command line


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through every `finally`: the lab is removed


def parse_args(argv: Sequence[str] | None = None) -> tuple[Options, argparse.Namespace]:
    """The command line -> :class:`Options` (and the raw namespace)."""
    parser = argparse.ArgumentParser(
        prog="python -m p2plab.bench",
        description="p2ptun against the raw link, wireguard-go, OpenVPN and Nebula in a NAT "
        "lab or on a plain link (see the module).",
    )
    parser.add_argument(
        "--topology",
        choices=TOPOLOGIES,
        default="nat",
        help="nat: the NAT lab (default); plain: two namespaces on one veth",
    )
    parser.add_argument("--prefix", help="start of the labs' names (default bn, plain bp)")
    parser.add_argument("--parallel", type=int, help="flows of the parallel TCP column (4)")
    parser.add_argument("--udp-steps", type=int, help="iperf3 -u runs of the rate search (7)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 3 s iperf3, 1 run, 5 s idle"
    )
    parser.add_argument("--iperf-seconds", type=float, help="length of each iperf3 run (10)")
    parser.add_argument("--runs", type=int, help="iperf3 runs per row, median shown (3)")
    parser.add_argument("--pings", type=int, help="pings for the median RTT (50)")
    parser.add_argument("--idle", type=float, help="idle seconds before wake-ups and RSS (60)")
    parser.add_argument("--wake-window", type=float, help="seconds wake-ups are counted (10)")
    parser.add_argument(
        "--connects", type=int, help="starts of the second end, median connect shown (5)"
    )
    parser.add_argument(
        "--rows",
        help=f"comma-separated subset of: {', '.join(ROWS)} (default all the topology has)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--keep-logs", metavar="DIR", help="keep each row's logs in DIR")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)
    opts = Options.quick() if args.quick else Options()
    opts.topology = args.topology
    opts.rows = PLAIN_ROWS if args.topology == "plain" else ROWS
    opts.prefix = args.prefix
    if args.prefix is not None and not re.fullmatch(r"[a-z]{1,4}", args.prefix):
        parser.error("--prefix: 1 to 4 lower-case letters")
    fields = ("iperf_seconds", "runs", "pings", "idle", "wake_window", "connects")
    for field in (*fields, "parallel", "udp_steps"):
        value = getattr(args, field)
        if value is not None:
            if value <= 0:
                parser.error(f"--{field.replace('_', '-')} must be positive")
            setattr(opts, field, value)
    if args.rows:
        rows = tuple(r.strip() for r in args.rows.split(","))
        known = PLAIN_ROWS if args.topology == "plain" else ROWS
        unknown = [r for r in rows if r not in known]
        if unknown:
            parser.error(f"unknown rows {unknown} (known: {', '.join(known)})")
        opts.rows = rows
    opts.verbose = not args.quiet
    opts.keep_logs = Path(args.keep_logs) if args.keep_logs else None
    return opts, args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table; exit 1 if a row failed, 2 on bad usage."""
    opts, args = parse_args(argv)
    reason = lab_unavailable_reason()
    tools = ["iperf3", "ping", "wireguard-go", "wg", "openvpn", "nebula", "nebula-cert"]
    missing = [t for t in tools if shutil.which(t) is None]
    if reason is None and missing:
        reason = f"missing tools: {', '.join(missing)}"
    if reason is not None:
        print(f"bench: {reason}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _on_sigterm)
    context = [f"{machine_note()} at the start"]
    results = run(opts)
    context.append(f"{machine_note()} at the end")
    print(render(results, context), flush=True)
    if args.json:
        Path(args.json).write_text(
            json.dumps([dataclasses.asdict(r) for r in results], indent=2) + "\n"
        )
    return 1 if any(r.error is not None for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())

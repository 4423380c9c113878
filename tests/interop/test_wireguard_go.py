"""Our WireGuard session layer against wireguard-go, across two network namespaces.

Namespace A runs our tunnel as a process (``python -m p2plab.wgtunnel_tool``: a TUN device
``p2p…`` with 10.99.0.1/24, a UDP socket, the sans-I/O :class:`p2ptun.wireguard.Device`).
Namespace B runs wireguard-go (``WG_PROCESS_FOREGROUND=1``) on an interface with a unique name
(its UAPI socket directory ``/var/run/wireguard`` is shared by all namespaces), configured with
``wg set`` and given 10.99.0.2/24 with ``ip``. A veth pair joins A (10.98.0.1) and B
(10.98.0.2). The kernels of A and B are the IP stacks at both ends: ``ping`` and TCP.

Cases: we initiate; wireguard-go initiates; a TCP transfer each way with a SHA-256 compared at
both ends; rekeys initiated by our side (our timers shortened, wireguard-go's standard) under
continuous ping; a preshared key; a peer whose key we do not have is refused; and our cookie
reply under load, which wireguard-go must decrypt (XChaCha20Poly1305) and answer with a valid
MAC2. Every process is stopped by PID, both namespaces deleted, also when a case fails.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from p2plab.wireguard_go import uapi_accepts, uapi_socket
from p2ptun.keys import encode_key, generate_private_key, public_key

pytestmark = [
    pytest.mark.lab,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("wireguard-go", "wg", "ip", "ping")),
        reason="wireguard-go, wg, ip and ping are needed",
    ),
]

A_UNDERLAY, B_UNDERLAY = "10.98.0.1", "10.98.0.2"
A_TUNNEL, B_TUNNEL = "10.99.0.1", "10.99.0.2"
A_PORT, B_PORT = 51820, 51821
TIMEOUT = 30


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds pass; bounded in time."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop one process we started, by its PID: SIGTERM, then SIGKILL."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@dataclass
class Lab:
    """Namespaces A (us) and B (wireguard-go), their processes, keys and files."""

    tag: str
    workdir: Path
    ns_a: str
    ns_b: str
    tun_a: str
    wg_b: str
    key_a: bytes = field(default_factory=generate_private_key)
    key_b: bytes = field(default_factory=generate_private_key)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    ours: subprocess.Popen[bytes] | None = None

    # -- running things ------------------------------------------------------------------------

    def run(self, ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", ns, *args],
            check=check,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )

    def popen(self, ns: str, args: list[str], log: str, **env: str) -> subprocess.Popen[bytes]:
        out = (self.workdir / log).open("ab")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
        )
        out.close()
        self.procs.append(proc)
        return proc

    # -- wireguard-go in B ---------------------------------------------------------------------

    def start_wireguard_go(self, psk: bytes | None = None, *, our_key: bytes | None = None) -> None:
        """wireguard-go in B with key_b, peer = our public key (``our_key`` or key_a)."""
        proc = self.popen(
            self.ns_b,
            ["wireguard-go", self.wg_b],
            "wireguard-go.log",
            WG_PROCESS_FOREGROUND="1",
            LOG_LEVEL="debug",
        )
        # Not by polling ``wg show``: see p2plab.wireguard_go for the race that would start.
        ok = wait_until(lambda: proc.poll() is not None or uapi_accepts(self.wg_b), 10)
        log = (self.workdir / "wireguard-go.log").read_text(errors="replace")[-2000:]
        assert ok and proc.poll() is None, f"wireguard-go did not come up:\n{log}"
        key_file = self.workdir / "b.key"
        key_file.write_text(encode_key(self.key_b) + "\n")
        peer = public_key(our_key if our_key is not None else self.key_a)
        args = ["wg", "set", self.wg_b, "listen-port", str(B_PORT), "private-key", str(key_file)]
        args += ["peer", encode_key(peer), "allowed-ips", f"{A_TUNNEL}/32"]
        args += ["endpoint", f"{A_UNDERLAY}:{A_PORT}"]
        if psk is not None:
            psk_file = self.workdir / "b.psk"
            psk_file.write_text(encode_key(psk) + "\n")
            args += ["preshared-key", str(psk_file)]
        self.run(self.ns_b, *args)
        self.run(self.ns_b, "ip", "addr", "add", f"{B_TUNNEL}/24", "dev", self.wg_b)
        self.run(self.ns_b, "ip", "link", "set", self.wg_b, "up")

    def latest_handshake(self) -> int:
        """wireguard-go's latest handshake with us, in Unix seconds (0 = never)."""
        out = self.run(self.ns_b, "wg", "show", self.wg_b, "latest-handshakes").stdout
        fields = out.split()
        return int(fields[1]) if len(fields) >= 2 else 0

    # -- our tunnel in A -----------------------------------------------------------------------

    def start_ours(
        self,
        psk: bytes | None = None,
        *,
        peer_key: bytes | None = None,
        rekey_after: float | None = None,
        under_load: bool = False,
    ) -> None:
        """Our tunnel in A with key_a and peer = wireguard-go's public key (or ``peer_key``)."""
        peer: dict[str, Any] = {
            "public_key": encode_key(peer_key if peer_key is not None else public_key(self.key_b)),
            "endpoint": f"{B_UNDERLAY}:{B_PORT}",
            "allowed_ips": [f"{B_TUNNEL}/32"],
        }
        if psk is not None:
            peer["preshared_key"] = encode_key(psk)
        config = {
            "private_key": encode_key(self.key_a),
            "listen_port": A_PORT,
            "interface": self.tun_a,
            "address": [f"{A_TUNNEL}/24"],
            "rekey_after": rekey_after,
            "under_load": under_load,
            "peers": [peer],
        }
        path = self.workdir / "ours.json"
        path.write_text(json.dumps(config))
        args = [sys.executable, "-m", "p2plab.wgtunnel_tool", "--config", str(path)]
        args += ["--status-file", str(self.status_path), "--log-level", "debug"]
        self.ours = proc = self.popen(self.ns_a, args, "ours.log")
        ok = wait_until(lambda: proc.poll() is not None or "tunnel up" in self.our_log(), 15)
        assert ok and proc.poll() is None, f"our tunnel did not come up:\n{self.our_log()}"

    @property
    def status_path(self) -> Path:
        return self.workdir / "ours.status.json"

    def our_log(self) -> str:
        path = self.workdir / "ours.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def our_status(self) -> dict[str, Any]:
        """Ask our tunnel for its status (SIGUSR1 by PID) and read the file it writes."""
        assert self.ours is not None and self.ours.poll() is None
        self.status_path.unlink(missing_ok=True)
        self.ours.send_signal(signal.SIGUSR1)
        assert wait_until(self.status_path.exists, 5), "no status file"
        status: dict[str, Any] = json.loads(self.status_path.read_text())
        return status

    def our_handshakes(self, initiator: bool) -> int:
        return len(re.findall(rf"handshake completed .*initiator={initiator}\b", self.our_log()))

    # -- traffic -------------------------------------------------------------------------------

    def ping(self, ns: str, dst: str, count: int, interval: float = 0.2, wait: float = 2) -> Ping:
        args = ["ping", "-n", "-c", str(count), "-i", str(interval), "-W", str(wait), dst]
        result = self.run(ns, *args, check=False)
        return Ping.parse(result.stdout, result.returncode)

    def tcp_transfer(self, src_ns: str, dst_ns: str, dst: str, size: int) -> None:
        """Push ``size`` random bytes over TCP; both ends report length and SHA-256."""
        port = "5201"
        receiver = self.popen(dst_ns, [sys.executable, "-c", RECEIVER, port], "receiver.log")
        try:
            sent = self.run(src_ns, sys.executable, "-c", SENDER, dst, port, str(size))
            receiver.wait(timeout=TIMEOUT)
        finally:
            stop(receiver)
        got = (self.workdir / "receiver.log").read_text().strip().splitlines()[-1]
        (self.workdir / "receiver.log").unlink()
        sender_report, receiver_report = json.loads(sent.stdout), json.loads(got)
        assert sender_report["bytes"] == size
        assert receiver_report == sender_report

    def udp_transfer(
        self, src_ns: str, dst_ns: str, dst: str, count: int, size: int, gso: int
    ) -> None:
        """``count`` datagrams of ``size`` bytes (``gso`` > 0: sent with UDP_SEGMENT), each
        checked byte for byte at the far end (:mod:`p2plab.udpcheck`)."""
        udpcheck = [sys.executable, "-m", "p2plab.udpcheck"]
        sink = self.popen(dst_ns, [*udpcheck, "sink", dst, "5301"], "sink.log")
        log = self.workdir / "sink.log"
        try:
            assert wait_until(lambda: "ready" in log.read_text(), 10), "the UDP sink did not start"
            self.run(src_ns, *udpcheck, "source", dst, "5301", str(count), str(size), str(gso))
            sink.wait(timeout=TIMEOUT)
        finally:
            stop(sink)
        result = json.loads(log.read_text().strip().splitlines()[-1])
        log.unlink()
        assert result["bad"] == 0, result
        assert result["datagrams"] >= count * 0.98, result  # a loaded machine may drop a few


@dataclass
class Ping:
    transmitted: int
    received: int
    seqs: list[int]
    output: str

    @classmethod
    def parse(cls, output: str, returncode: int) -> Ping:
        m = re.search(r"(\d+) packets transmitted, (\d+) received", output)
        assert m is not None, f"ping printed no summary (exit {returncode}):\n{output}"
        seqs = [int(s) for s in re.findall(r"icmp_seq=(\d+) ", output)]
        return cls(int(m.group(1)), int(m.group(2)), seqs, output)


RECEIVER = """
import hashlib, json, socket, sys
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[1])))
srv.listen(1)
srv.settimeout(25)
conn, _ = srv.accept()
conn.settimeout(25)
h, n = hashlib.sha256(), 0
while chunk := conn.recv(1 << 16):
    h.update(chunk)
    n += len(chunk)
print(json.dumps({"bytes": n, "sha256": h.hexdigest()}), flush=True)
"""

SENDER = """
import hashlib, json, os, socket, sys, time
host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data = os.urandom(size)
for attempt in range(100):  # the receiver may not be listening yet: at most ~5 s
    try:
        sock = socket.create_connection((host, port), timeout=5)
        break
    except ConnectionRefusedError:
        time.sleep(0.05)
else:
    raise SystemExit("receiver never listened")
sock.settimeout(25)
sock.sendall(data)
sock.shutdown(socket.SHUT_WR)
sock.recv(1)
print(json.dumps({"bytes": size, "sha256": hashlib.sha256(data).hexdigest()}))
"""


@pytest.fixture(params=["auto", "off"], ids=["offload", "no-offload"])
def lab(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Lab]:
    # Our tunnel with its offloads (TUN TSO/GRO, UDP GSO/GRO) on where the kernel has them,
    # and forced off: the wire must be WireGuard either way.
    monkeypatch.setenv("P2PTUN_OFFLOAD", request.param)
    tag = secrets.token_hex(3)
    lab = Lab(
        tag=tag,
        workdir=tmp_path,
        ns_a=f"p2wg{tag}a",
        ns_b=f"p2wg{tag}b",
        tun_a=f"p2p{tag}",
        wg_b=f"wgb{tag}",
    )
    made: list[str] = []
    try:
        for ns in (lab.ns_a, lab.ns_b):
            subprocess.run(["ip", "netns", "add", ns], check=True, timeout=TIMEOUT)
            made.append(ns)
            lab.run(ns, "ip", "link", "set", "lo", "up")
        veth = ["link", "add", "veth0", "type", "veth", "peer", "name", "veth0"]
        subprocess.run(
            ["ip", "-n", lab.ns_a, *veth, "netns", lab.ns_b], check=True, timeout=TIMEOUT
        )
        for ns, addr in ((lab.ns_a, A_UNDERLAY), (lab.ns_b, B_UNDERLAY)):
            lab.run(ns, "ip", "addr", "add", f"{addr}/24", "dev", "veth0")
            lab.run(ns, "ip", "link", "set", "veth0", "up")
        yield lab
    finally:
        for proc in reversed(lab.procs):
            stop(proc)
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], check=False, timeout=TIMEOUT)
        # wireguard-go removes its UAPI socket on SIGTERM, not when it had to be killed.
        uapi_socket(lab.wg_b).unlink(missing_ok=True)


# -- the cases ----------------------------------------------------------------------------------


@pytest.mark.parametrize("with_psk", [False, True], ids=["no-psk", "psk"])
def test_we_initiate(lab: Lab, with_psk: bool) -> None:
    """(a), (e): our first packet starts the handshake; ping B's tunnel address through it."""
    psk = secrets.token_bytes(32) if with_psk else None
    lab.start_wireguard_go(psk)
    lab.start_ours(psk)
    ping = lab.ping(lab.ns_a, B_TUNNEL, 3)
    assert ping.received >= 2, ping.output
    status = lab.our_status()
    (peer,) = status["peers"]
    assert (peer["handshakes_initiated"], peer["handshakes_responded"]) == (1, 0), status
    assert status["counters"]["handshake_auth_failed"] == 0
    assert status["counters"]["transport_auth_failed"] == 0
    assert lab.latest_handshake() > 0


def test_wireguard_go_initiates(lab: Lab) -> None:
    """(b): wireguard-go's first packet starts the handshake; it pings our tunnel address."""
    lab.start_wireguard_go()
    lab.start_ours()
    ping = lab.ping(lab.ns_b, A_TUNNEL, 3)
    assert ping.received >= 2, ping.output
    status = lab.our_status()
    (peer,) = status["peers"]
    assert (peer["handshakes_initiated"], peer["handshakes_responded"]) == (0, 1), status
    assert status["counters"]["responses_sent"] == 1
    assert status["counters"]["initiations_sent"] == 0
    assert lab.our_handshakes(initiator=False) == 1


def test_tcp_transfer_both_ways(lab: Lab) -> None:
    """(c): 8 MiB over TCP each way through the tunnel, SHA-256 equal at both ends."""
    lab.start_wireguard_go()
    lab.start_ours()
    size = 8 << 20
    lab.tcp_transfer(lab.ns_a, lab.ns_b, B_TUNNEL, size)
    lab.tcp_transfer(lab.ns_b, lab.ns_a, A_TUNNEL, size)
    status = lab.our_status()
    assert status["counters"]["transport_auth_failed"] == 0
    assert status["peers"][0]["rx_bytes"] > size and status["peers"][0]["tx_bytes"] > size
    if os.environ["P2PTUN_OFFLOAD"] == "off":
        assert status["tunnel"]["tso_segments"] == 0 and status["tunnel"]["gro_segments"] == 0
        assert all(udp["tx_gso_sends"] == 0 for udp in status["udp"])
    else:
        # 8 MiB from our side's TCP went out as TSO super-packets cut into segments, each
        # with its full checksum: wireguard-go never offered to complete partial ones.
        assert status["tunnel"]["tso_segments"] > status["tunnel"]["tso_packets"] > 0
        assert status["tunnel"]["partial_checksums"] == 0


def test_udp_datagrams_both_ways(lab: Lab) -> None:
    """UDP each way, as single datagrams and as UDP_SEGMENT sends, every byte checked: with
    the offloads on, our side cut the super-datagrams its kernel handed over (USO on TUN) and
    wrote wireguard-go's datagrams in runs (UDP GSO); wireguard-go sees plain WireGuard."""
    lab.start_wireguard_go()
    lab.start_ours()
    for gso in (0, 16):
        lab.udp_transfer(lab.ns_a, lab.ns_b, B_TUNNEL, 2048, 1200, gso)
        lab.udp_transfer(lab.ns_b, lab.ns_a, A_TUNNEL, 2048, 1200, gso)
    tunnel = lab.our_status()["tunnel"]
    if os.environ["P2PTUN_OFFLOAD"] == "off":
        assert tunnel["uso_packets"] == 0 and tunnel["gro_segments"] == 0, tunnel
    else:
        assert tunnel["uso_datagrams"] > tunnel["uso_packets"] > 0, tunnel
        assert tunnel["gro_segments"] > 0, tunnel


def test_rekey_initiated_by_us(lab: Lab) -> None:
    """(d): with REKEY_AFTER_TIME = 3 s on our side only, ping every 0.2 s across ≥ 2 rekeys.

    All our timers are scaled together (:meth:`TimerConfig.shortened`); wireguard-go keeps the
    standard ones. Every rekey is our initiation; wireguard-go's handshake time advances; no
    echo is lost beyond one.
    """
    lab.start_wireguard_go()
    lab.start_ours(rekey_after=3.0)
    first = lab.ping(lab.ns_a, B_TUNNEL, 2)
    assert first.received >= 1, first.output
    before = lab.latest_handshake()
    assert before > 0
    ping = lab.ping(lab.ns_a, B_TUNNEL, 40, interval=0.2, wait=1)  # 8 s
    assert ping.received >= ping.transmitted - 1, ping.output
    assert len(set(ping.seqs)) >= ping.transmitted - 1
    assert lab.latest_handshake() > before
    status = lab.our_status()
    (peer,) = status["peers"]
    assert peer["handshakes_initiated"] >= 3, status  # the first handshake + 2 rekeys
    assert peer["handshakes_responded"] == 0
    assert lab.our_handshakes(initiator=True) == peer["handshakes_initiated"]
    assert status["counters"]["transport_auth_failed"] == 0


def test_unknown_peer_refused(lab: Lab) -> None:
    """(f): wireguard-go's key is not configured on our side: its initiations are dropped."""
    lab.start_wireguard_go()
    lab.start_ours(peer_key=public_key(generate_private_key()))  # someone else
    ping = lab.ping(lab.ns_b, A_TUNNEL, 2, interval=0.5, wait=1)
    assert ping.received == 0, ping.output
    status = lab.our_status()
    counters = status["counters"]
    assert counters["unknown_peer"] >= 1, counters
    assert counters["responses_sent"] == counters["handshakes_completed"] == 0
    assert lab.latest_handshake() == 0
    assert lab.our_handshakes(initiator=False) == lab.our_handshakes(initiator=True) == 0


def test_cookie_reply_understood_by_wireguard_go(lab: Lab) -> None:
    """Under load we answer an initiation with a cookie reply; wireguard-go's retransmission
    ~5 s later carries a MAC2 made from its decryption of that cookie, and is accepted."""
    lab.start_wireguard_go()
    lab.start_ours(under_load=True)
    ping = lab.ping(lab.ns_b, A_TUNNEL, 1, wait=12)
    assert ping.received == 1, ping.output
    counters = lab.our_status()["counters"]
    assert counters["cookie_replies_sent"] >= 1
    assert counters["responses_sent"] == 1, counters

"""Our TURN server (``p2ptun rendezvous``) against coturn's client tools, in the NAT lab.

Topology: ``p2ptun rendezvous`` runs on the lab's server host (203.0.113.10); coturn's
``turnutils_uclient`` runs on site 1 behind a port-restricted NAT; ``turnutils_peer`` (a UDP
echo) runs on site 2, a public host. uclient allocates a relay, permits the peer, sends
``-n`` messages through the relay (ChannelData, or Send indications with ``-s``; over UDP, or
TCP with ``-t``) and counts the echoes that come back (ChannelData / Data indications). It
prints ``Total lost packets N (P%)``: the verdict (LAB-NOTES: judge by the loss summary).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from p2plab.natlab import NatLab, wait_for_line
from p2plab.tlscert import self_signed
from p2ptun.keys import encode_key, generate_private_key
from p2ptun.turn.credentials import make_rest_credential

pytestmark = [
    pytest.mark.lab,
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("turnutils_uclient") is None or shutil.which("turnutils_peer") is None,
        reason="coturn's turnutils tools are not installed",
    ),
]

USER = "alice"
PASSWORD = "alice-secret-1"
AUTH_SECRET = "lab-shared-secret-0123456789"
REALM = "p2ptun-lab"
PEER_PORT = 3480
TLS_PORT = 5349
MESSAGES = 20
LOSS = re.compile(r"Total lost packets (\d+) \(([\d.]+)%\)")
SENT = re.compile(r"start_mclient: tot_send_msgs=(\d+), tot_recv_msgs=(\d+)")
REFLEXIVE = re.compile(r"UDP reflexive addr: ([\d.]+):(\d+)")


@dataclass
class Rig:
    lab: NatLab
    server_ip: str
    peer_ip: str
    proc: subprocess.Popen[str]
    config: Path
    log: list[str]


def _config(tmp: Path, server_ip: str) -> Path:
    cert, tls_key = self_signed(tmp)
    key = tmp / "rendezvous.key"
    key.write_text(encode_key(generate_private_key()) + "\n")
    key.chmod(0o600)
    path = tmp / "rendezvous.toml"
    path.write_text(
        f"""
listen = "{server_ip}:7070"
private_key_file = "{key}"
database = "{tmp / "rv.sqlite"}"
open_registration = true

[stun]
listen = ["{server_ip}:3478"]

[turn]
realm = "{REALM}"
relay_address = "{server_ip}"
relay_ports = "49152-49999"
users = {{ {USER} = "{PASSWORD}" }}
auth_secret = "{AUTH_SECRET}"
allow_peers = ["192.0.2.0/24", "198.51.100.0/24"]
user_quota = 100
tls_listen = ["{server_ip}:{TLS_PORT}"]
tls_cert = "{cert}"
tls_key = "{tls_key}"
"""
    )
    return path


def _start_rendezvous(lab: NatLab, config: Path) -> subprocess.Popen[str]:
    proc: subprocess.Popen[str] = lab.popen(
        "server",
        [sys.executable, "-m", "p2ptun", "rendezvous", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    if wait_for_line(proc.stderr, "rendezvous ready", 15.0) is None:
        lab.stop(proc)
        raise AssertionError(f"rendezvous did not start: {proc.stderr.read()[-2000:]}")
    return proc


def _wait_udp_bound(lab: NatLab, host: str, addr: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ss = lab.exec(host, "ss", "-Hlun", timeout=5)
        if addr in ss.stdout:
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing bound {addr} in {host}")


@pytest.fixture(scope="module")
def rig(natlab_module: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    lab: NatLab = natlab_module(["prc", "none"])
    server_ip = lab.server_addrs[0]
    peer_ip = lab.site(2).host_addr
    config = _config(tmp_path_factory.mktemp("rendezvous"), server_ip)
    proc = _start_rendezvous(lab, config)
    peer = lab.popen(
        "site2",
        ["turnutils_peer", "-L", peer_ip, "-p", str(PEER_PORT)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    rig = Rig(lab, server_ip, peer_ip, proc, config, [])
    try:
        _wait_udp_bound(lab, "site2", f"{peer_ip}:{PEER_PORT}")
        yield rig
    finally:
        lab.stop(peer)
        if proc.poll() is None:
            lab.stop(proc)
        for line in rig.log:
            print(line)


def _uclient(rig: Rig, *flags: str, user: str = USER, password: str = PASSWORD) -> tuple[int, str]:
    argv = [
        "turnutils_uclient",
        *flags,
        "-c",  # no RTCP allocation pair (EVEN-PORT reservations)
        "-u",
        user,
        "-w",
        password,
        "-e",
        rig.peer_ip,
        "-r",
        str(PEER_PORT),
        "-n",
        str(MESSAGES),
        "-l",
        "120",
        rig.server_ip,
    ]
    proc = rig.lab.exec("site1", *argv, timeout=30)
    output = proc.stdout + proc.stderr
    summary = [line for line in output.splitlines() if LOSS.search(line) or SENT.search(line)]
    rig.log.append("$ " + " ".join(argv) + f"   (exit {proc.returncode})")
    rig.log.extend("  " + line for line in summary or output.splitlines()[-5:])
    return proc.returncode, output


def _assert_no_loss(output: str) -> None:
    losses = LOSS.findall(output)
    assert losses, f"no loss summary in:\n{output[-3000:]}"
    assert all(int(n) == 0 for n, _ in losses), f"loss reported:\n{output[-3000:]}"
    counts = SENT.findall(output)
    assert counts and all(int(sent) == int(recv) == MESSAGES for sent, recv in counts), output[
        -3000:
    ]


@pytest.mark.parametrize(
    "flags",
    [(), ("-s",), ("-t",), ("-t", "-s"), ("-t", "-S", "-p", str(TLS_PORT))],
    ids=["udp-channels", "udp-send-data", "tcp-channels", "tcp-send-data", "tls-channels"],
)
def test_uclient_relays_without_loss(rig: Rig, flags: tuple[str, ...]) -> None:
    rc, output = _uclient(rig, *flags)
    assert rc == 0, output[-3000:]
    _assert_no_loss(output)


def test_uclient_with_rest_api_credentials(rig: Rig) -> None:
    cred = make_rest_credential(AUTH_SECRET, "node7", time.time(), 600)
    rc, output = _uclient(rig, user=cred.username, password=cred.password)
    assert rc == 0, output[-3000:]
    _assert_no_loss(output)


def test_uclient_wrong_password_is_refused(rig: Rig) -> None:
    rc, output = _uclient(rig, password="not-the-password")
    assert rc != 0
    assert not LOSS.search(output)
    assert "Cannot complete Allocation" in output or "401" in output


def test_stunclient_sees_the_nat_public_address(rig: Rig) -> None:
    proc = rig.lab.exec("site1", "turnutils_stunclient", rig.server_ip, timeout=15)
    output = proc.stdout + proc.stderr
    rig.log.append(f"$ turnutils_stunclient {rig.server_ip}   (exit {proc.returncode})")
    rig.log.extend("  " + line for line in output.splitlines() if "reflexive" in line)
    found = REFLEXIVE.findall(output)
    assert found, output
    assert {host for host, _ in found} == {rig.lab.site(1).mapped_addr}


def test_second_instance_cannot_bind_and_says_so(rig: Rig) -> None:
    proc = rig.lab.exec(
        "server", sys.executable, "-m", "p2ptun", "rendezvous", "-c", str(rig.config), timeout=20
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("cannot bind UDP") and "address already in use" in lines[-1]
    assert "Traceback" not in proc.stderr


def test_sigterm_exits_cleanly(rig: Rig) -> None:
    """Runs last: stops the module's server with SIGTERM and expects exit 0."""
    assert rig.proc.poll() is None
    assert rig.lab.stop(rig.proc, timeout=10) == 0

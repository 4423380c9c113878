"""Helpers for the ICE tests in the NAT lab: our rendezvous (embedded STUN/TURN) on the server
host, and ICE peers run as processes in site hosts that exchange descriptions through files.

Not a test module: ``tests/interop/test_ice_aioice.py`` and ``tests/e2e/test_ice_natmatrix.py``
load it. Every process is started with ``lab.popen`` (stopped by PID when the lab closes) and
every wait is bounded.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SERVER_IP = "203.0.113.10"
STUN_PORT = 3478
SIGNAL_PORT = 7070
REALM = "lab"
USER, PASSWORD = "alice", "wonderland"
STUN_URL = f"{SERVER_IP}:{STUN_PORT}"
TURN_UDP = f"turn:{SERVER_IP}:{STUN_PORT}?transport=udp"
TURN_TCP = f"turn:{SERVER_IP}:{STUN_PORT}?transport=tcp"


class Rendezvous:
    """``p2ptun rendezvous`` in the lab's server namespace: STUN and TURN on UDP and TCP
    ``SERVER_IP:STUN_PORT`` with the static user ``USER``."""

    def __init__(self, lab: Any) -> None:
        from p2ptun import keys

        self.lab = lab
        self.dir = Path(tempfile.mkdtemp(prefix=f"{lab.prefix}-icerv-"))
        lab.add_cleanup(lambda: shutil.rmtree(self.dir, ignore_errors=True))
        private = keys.encode_key(keys.generate_private_key())
        lines = [
            f'listen = "{SERVER_IP}:{SIGNAL_PORT}"',
            f'private_key = "{private}"',
            f'database = "{self.dir / "rv.sqlite"}"',
            "open_registration = true",
            "[stun]",
            f'listen = ["{SERVER_IP}:{STUN_PORT}"]',
            "[turn]",
            f'realm = "{REALM}"',
            f'relay_address = "{SERVER_IP}"',
            'relay_ports = "49152-49999"',
            f'users = {{ {USER} = "{PASSWORD}" }}',
            # The lab's public addresses are documentation blocks, denied by default.
            'allow_peers = ["192.0.2.0/24", "198.51.100.0/24"]',
        ]
        config = self.dir / "rendezvous.toml"
        config.write_text("\n".join(lines) + "\n")
        argv = [sys.executable, "-m", "p2ptun", "rendezvous", "-c", str(config)]
        self.proc = lab.popen(
            "server", argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + 15
        want = f"{SERVER_IP}:{STUN_PORT}"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"p2ptun rendezvous exited: {self.proc.stderr.read()[-800:]}")
            udp = lab.exec("server", "ss", "-Hlun", timeout=5).stdout
            tcp = lab.exec("server", "ss", "-Hltn", timeout=5).stdout
            bound_udp = {ln.split()[3] for ln in udp.splitlines() if len(ln.split()) > 3}
            bound_tcp = {ln.split()[3] for ln in tcp.splitlines() if len(ln.split()) > 3}
            if want in bound_udp and want in bound_tcp:
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("p2ptun rendezvous did not bind its ports within 15 s")

    def stop(self) -> None:
        self.lab.stop(self.proc)


def probe_argv(
    name: str,
    peer: str,
    directory: Path,
    *,
    controlling: bool,
    stun: bool = True,
    turn: Sequence[str] = (),
    count: int = 200,
    size: int = 1000,
    timeout: float = 40.0,
) -> list[str]:
    """The command line of our ICE probe (:mod:`p2plab.ice_probe`)."""
    argv = [sys.executable, "-m", "p2plab.ice_probe", "--name", name, "--peer", peer]
    argv += ["--dir", str(directory), "--controlling" if controlling else "--controlled"]
    argv += ["--count", str(count), "--size", str(size), "--timeout", str(timeout)]
    if stun:
        argv += ["--stun", STUN_URL]
    for url in turn:
        argv += ["--turn", url]
    if turn:
        argv += ["--turn-user", USER, "--turn-password", PASSWORD]
    return argv


class PeerRun:
    """Two ICE peer processes in two lab hosts, sharing an exchange directory."""

    def __init__(self, lab: Any) -> None:
        self.lab = lab
        self.dir = Path(tempfile.mkdtemp(prefix=f"{lab.prefix}-ice-"))
        lab.add_cleanup(lambda: shutil.rmtree(self.dir, ignore_errors=True))
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self.started = time.monotonic()

    def start(self, name: str, host: str, argv: list[str]) -> None:
        self.procs[name] = self.lab.popen(
            host, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def wait_connected(self, timeout: float = 40.0) -> dict[str, Any]:
        """Both peers' ``<name>.connected`` contents (the selected pair each reported)."""
        deadline = time.monotonic() + timeout
        found: dict[str, Any] = {}
        while time.monotonic() < deadline:
            for name in self.procs:
                path = self.dir / f"{name}.connected"
                if name not in found and path.exists():
                    found[name] = json.loads(path.read_text())
            if len(found) == len(self.procs):
                return found
            for name, proc in self.procs.items():
                if proc.poll() is not None and name not in found:
                    raise AssertionError(f"{name} exited early: {self.output(name)}")
            time.sleep(0.05)
        outputs = {name: self.output(name) for name in self.procs}
        raise AssertionError(f"no selected pair within {timeout} s: {outputs}")

    def go(self) -> None:
        (self.dir / "go").write_text("go\n")

    def results(self, timeout: float = 40.0) -> dict[str, dict[str, Any]]:
        """Wait for both processes to exit; their JSON result lines."""
        out: dict[str, dict[str, Any]] = {}
        for name, proc in self.procs.items():
            try:
                stdout, stderr = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.lab.stop(proc)
                stdout, stderr = proc.communicate()
            lines = [ln for ln in (stdout or "").splitlines() if ln.startswith("{")]
            if not lines:
                raise AssertionError(f"{name} printed no result (rc {proc.returncode}): {stderr}")
            out[name] = json.loads(lines[-1])
            out[name]["stderr"] = (stderr or "")[-2000:]
        return out

    def output(self, name: str) -> str:
        proc = self.procs[name]
        if proc.poll() is None:
            return "(running)"
        stdout, stderr = proc.communicate()
        return f"rc={proc.returncode} stdout={stdout[-1000:]!r} stderr={stderr[-2000:]!r}"

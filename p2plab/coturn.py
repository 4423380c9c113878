"""coturn inside the lab: start ``turnserver`` in a lab host, run RFC 5780 NAT discovery.

coturn gets everything on its command line (``-n``: no config file), its own temporary
directory for pid, log and user database files, and is stopped by PID when the lab closes.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from p2ptun.log import get_logger

if TYPE_CHECKING:
    from p2plab.natlab import NatLab

log = get_logger("lab.coturn")

STUN_PORT = 3478
ALT_PORT = 3479
"""coturn's RFC 5780 alternate port (listening port + 1)."""


@dataclasses.dataclass
class Coturn:
    """A running ``turnserver``; :meth:`stop` (or closing the lab) ends it."""

    lab: NatLab
    proc: subprocess.Popen[str]
    workdir: Path
    addresses: tuple[str, ...]
    port: int

    @property
    def log_text(self) -> str:
        """What coturn logged so far ('' if nothing yet)."""
        for path in sorted(self.workdir.glob("turn*.log")):
            return path.read_text(errors="replace")
        return ""

    def stop(self) -> None:
        """Stop it by PID and remove its directory."""
        self.lab.stop(self.proc)
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_coturn(
    lab: NatLab,
    host: str = "server",
    addresses: Sequence[str] | None = None,
    *,
    port: int = STUN_PORT,
    extra_args: Sequence[str] = (),
    timeout: float = 10.0,
) -> Coturn:
    """Start ``turnserver`` in ``host`` listening on ``addresses`` (default: the server's two,
    which enables RFC 5780 behaviour discovery) and wait until its UDP ports are bound.

    ``extra_args`` go on coturn's command line, e.g. ``["--lt-cred-mech", "--user=u:p",
    "--realm=lab"]`` or ``["--use-auth-secret", "--static-auth-secret=S", "--realm=lab"]``.
    """
    if shutil.which("turnserver") is None:
        raise FileNotFoundError("turnserver (coturn) is not installed")
    addrs = tuple(addresses) if addresses is not None else lab.server_addrs
    workdir = Path(tempfile.mkdtemp(prefix=f"{lab.prefix}-coturn-"))
    argv = ["turnserver", "-n", "--no-cli", "--no-tls", "--no-dtls", "--listening-port", str(port)]
    for a in addrs:
        argv += ["--listening-ip", a]
    argv += [
        "--pidfile",
        str(workdir / "turn.pid"),
        "--log-file",
        str(workdir / "turn.log"),
        "--simple-log",
        "--no-stdout-log",
        "--userdb",
        str(workdir / "turndb"),
        *extra_args,
    ]
    proc: subprocess.Popen[str] = lab.popen(
        host, argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    lab.add_cleanup(lambda: shutil.rmtree(workdir, ignore_errors=True))
    server = Coturn(lab, proc, workdir, addrs, port)
    ports = (port, port + 1) if len(addrs) > 1 else (port,)
    wanted = {f"[{a}]:{p}" if ":" in a else f"{a}:{p}" for a in addrs for p in ports}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            server.stop()
            raise RuntimeError(f"turnserver exited ({proc.returncode}): {err.strip()[-500:]}")
        ss = lab.exec(host, "ss", "-Hlun", timeout=5)
        bound = {line.split()[3] for line in ss.stdout.splitlines() if len(line.split()) > 3}
        if wanted <= bound:
            log.info("coturn up", prefix=lab.prefix, host=host, pid=proc.pid)
            return server
        time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"turnserver did not bind {sorted(wanted)} within {timeout}s")


@dataclasses.dataclass
class NatDiscovery:
    """Verdicts of ``turnutils_natdiscovery -m -f``: e.g. ``"Endpoint Independent"``,
    ``"Address Dependent"``, ``"Address and Port Dependent"``, or None if it got no answer."""

    mapping: str | None
    filtering: str | None
    timeouts: int
    output: str


_VERDICT = re.compile(r"NAT with (.+?) (Mapping|Filtering)!")


def parse_natdiscovery(output: str) -> NatDiscovery:
    """Extract the mapping and filtering verdicts from ``turnutils_natdiscovery`` output."""
    found: dict[str, str] = {}
    for m in _VERDICT.finditer(output):
        found[m.group(2)] = m.group(1)
    return NatDiscovery(
        mapping=found.get("Mapping"),
        filtering=found.get("Filtering"),
        timeouts=output.count("STUN receive timeout"),
        output=output,
    )


def natdiscovery(
    lab: NatLab, host: str, server: str, port: int = STUN_PORT, timeout: float = 60.0
) -> NatDiscovery:
    """Run ``turnutils_natdiscovery -m -f`` in ``host`` against ``server`` and parse it."""
    proc = lab.exec(
        host, "turnutils_natdiscovery", "-m", "-f", "-p", str(port), server, timeout=timeout
    )
    log.debug("natdiscovery", host=host, rc=proc.returncode)
    return parse_natdiscovery(proc.stdout + proc.stderr)

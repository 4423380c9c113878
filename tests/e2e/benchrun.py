"""Shared by the benchmark tests: run a ``python -m p2plab...`` tool the way ``scripts/bench``
does, read its Markdown table, and check that it left nothing behind.

Each run gets its own temporary directory (``TMPDIR`` = the ``short_tmp_path`` fixture's: the
nodes' control sockets live in the working directories, and a socket's path is at most 107
bytes): every working directory the tool makes is inside it, so a daemon the tool failed to
stop still names it in its command line, and the leftover check finds this run's processes
only, not those of another benchmark running on the same machine.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

NUMBER = re.compile(r"^\d+(\.\d+)?$")
THROUGHPUT = re.compile(r"^\d+( \(\d+–\d+\))?$")
RATIO = re.compile(r"^<?\d+(\.\d+)?×$")
BENCH_TOOLS = ("iperf3", "wireguard-go", "wg", "ping", "openvpn", "nebula", "nebula-cert")


def bench_tools_missing() -> bool:
    return not all(shutil.which(t) for t in BENCH_TOOLS)


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def table(stdout: str) -> dict[str, list[str]]:
    """Rows of the printed Markdown table by their first cell (header and rule left out)."""
    rows = {}
    for line in stdout.splitlines():
        if line.startswith("| ") and not line.startswith("|-"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def run_tool(work: Path, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """``python ARGV`` with its temporary files under ``work``; exit 0 required."""
    proc = subprocess.run(
        [sys.executable, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "TMPDIR": str(work)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def assert_nothing_left(work: Path, before: set[str], prefix: str) -> None:
    """No namespace of ``prefix`` that was not there ``before``, no process of the run that
    had ``work`` as its temporary directory."""
    assert not {ns for ns in namespaces() - before if ns.startswith(prefix)}
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, timeout=10)
    assert not [line for line in out.stdout.splitlines() if str(work) in line]

"""Shared by the benchmark tests: run a ``python -m p2plab...`` tool the way ``scripts/bench``
does, read its Markdown table, and check that it left nothing behind.

Each run gets its own temporary directory (``TMPDIR`` = the test's ``tmp_path``): every working
directory the tool makes is inside it, so a daemon the tool failed to stop still names it in
its command line, and the leftover check finds this run's processes only, not those of another
benchmark running on the same machine.
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


def run_tool(tmp_path: Path, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """``python ARGV`` with its temporary files under ``tmp_path``; exit 0 required."""
    work = tmp_path / "tmp"
    work.mkdir(exist_ok=True)
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


def assert_nothing_left(tmp_path: Path, before: set[str], prefix: str) -> None:
    """No namespace of ``prefix`` that was not there ``before``, no process of this run."""
    assert not {ns for ns in namespaces() - before if ns.startswith(prefix)}
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, timeout=10)
    mine = str(tmp_path / "tmp")
    assert not [line for line in out.stdout.splitlines() if mine in line]

"""The README's first command on a fresh checkout: ``scripts/demo`` in a clone of HEAD with no
``.venv``, a minimal environment and this project's venv nowhere on ``PATH``. It must install
what it needs itself, ping across the tunnel, exit 0 and leave none of its namespaces behind.

Slow: the clone's venv is created and installed from the package index (a minute or more).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.lab, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
MINIMAL_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEMO_TIMEOUT = 1200.0
"""Seconds for the whole demo, first install included."""


def _namespaces() -> set[str]:
    out = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=True, timeout=10
    )
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def _run_demo(clone: Path, home: Path, log: Path) -> int:
    """Run the clone's demo in a minimal environment; on timeout stop it by PID with SIGTERM
    (its own teardown removes the lab), then its whole session."""
    env = ["env", "-i", f"PATH={MINIMAL_PATH}", f"HOME={home}"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*env, str(clone / "scripts" / "demo")],
            cwd=clone,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            return proc.wait(timeout=DEMO_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            pytest.fail(f"scripts/demo did not finish within {DEMO_TIMEOUT:.0f} s")


@pytest.mark.usefixtures("natlab_required")
def test_demo_from_a_fresh_clone(tmp_path: Path) -> None:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs git and a git checkout to clone")
    clone = tmp_path / "p2ptun"
    subprocess.run(
        ["git", "clone", "--quiet", "--no-local", str(REPO), str(clone)],
        check=True,
        timeout=120,
        capture_output=True,
    )
    assert not (clone / ".venv").exists()
    home = tmp_path / "home"
    home.mkdir()
    log = tmp_path / "demo.log"

    before = _namespaces()
    try:
        status = _run_demo(clone, home, log)
    finally:
        after = _namespaces()
        shutil.rmtree(clone, ignore_errors=True)  # its venv is large; the log stays

    output = log.read_text(errors="replace")
    tail = "\n".join(output.splitlines()[-40:])
    assert status == 0, f"scripts/demo exited {status}:\n{tail}"
    lab = re.search(r"^demo: OK \(lab (\S+) removed\)$", output, re.MULTILINE)
    assert lab is not None, tail
    assert "ping from alice (site1) to bob (site2) across the tunnel" in output
    assert re.search(r"3 packets transmitted, [1-3] received", output), tail
    assert re.search(r"bytes from 10\.77\.0\.2: icmp_seq=\d+", output), tail
    assert "== creating .venv" in output  # the demo made its own venv
    # other labs may come and go meanwhile: only the demo's own namespaces count
    leftover = sorted(ns for ns in after - before if ns.startswith(lab.group(1) + "-"))
    assert leftover == []

"""The systemd units in config/: the contract of docs/ARCHITECTURE.md §4, and systemd's own
verdict."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONFIG = Path(__file__).parents[2] / "config"


def read_unit(name: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(CONFIG / name)
    return parser


def test_node_unit_contract() -> None:
    unit = read_unit("p2ptun@.service")
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["ExecStart"] == "p2ptun up -c /etc/p2ptun/%i.toml"
    assert service["Restart"] == "on-failure"
    assert "network-online.target" in unit["Unit"]["After"]
    # The TUN interface, and port 53 on the overlay address (a network's names): no more.
    assert service["CapabilityBoundingSet"] == "CAP_NET_ADMIN CAP_NET_BIND_SERVICE"
    assert service["AmbientCapabilities"] == service["CapabilityBoundingSet"]
    assert service["ExecReload"].endswith("-HUP $MAINPID")
    assert service["DeviceAllow"] == "/dev/net/tun rw"


def test_rendezvous_unit_contract() -> None:
    unit = read_unit("p2ptun-rendezvous.service")
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["ExecStart"] == "p2ptun rendezvous -c /etc/p2ptun/rendezvous.toml"
    assert service["Restart"] == "on-failure"
    assert service["CapabilityBoundingSet"] == ""
    assert service["ExecReload"].endswith("-HUP $MAINPID")
    assert "network-online.target" in unit["Unit"]["After"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # The units name the command as plain `p2ptun` (systemd finds it in /usr/bin or /usr/local/bin);
    # point them at this environment's entry point so verify can check that it is executable.
    entry = Path(sys.executable).parent / "p2ptun"
    assert entry.exists(), "the package must be installed (pip install -e .)"
    for src, dst in (
        ("p2ptun@.service", "p2ptun@alice.service"),
        ("p2ptun-rendezvous.service", "p2ptun-rendezvous.service"),
    ):
        text = (CONFIG / src).read_text().replace("=p2ptun ", f"={entry} ")
        (tmp_path / dst).write_text(text)
    proc = subprocess.run(
        [
            "systemd-analyze",
            "verify",
            str(tmp_path / "p2ptun@alice.service"),
            str(tmp_path / "p2ptun-rendezvous.service"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "p2ptun" not in proc.stderr, proc.stderr

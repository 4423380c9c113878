"""``p2ptun stun`` in the NAT lab against coturn: a host behind a NAT learns the NAT's public
address; a server that does not answer is a one-line failure with exit code 1."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from p2plab.coturn import start_coturn

pytestmark = pytest.mark.lab

SERVER_IP = "203.0.113.10"


def stun(lab: Any, host: str, *args: str) -> Any:
    return lab.exec(host, sys.executable, "-m", "p2ptun", "stun", *args, timeout=30)


def test_stun_prints_the_nat_public_address(natlab: Any) -> None:
    lab = natlab(["prc", "sym"])
    start_coturn(lab, addresses=[SERVER_IP])
    for site in (1, 2):
        for extra in ((), ("--tcp",)):
            proc = stun(lab, f"site{site}", f"{SERVER_IP}:3478", *extra)
            assert proc.returncode == 0, proc.stderr
            ip, port = proc.stdout.strip().rsplit(":", 1)
            assert ip == lab.site(site).mapped_addr != lab.site(site).host_addr
            assert 0 < int(port) < 65536
    # The default port is 3478.
    proc = stun(lab, "site1", SERVER_IP)
    assert proc.returncode == 0 and proc.stdout.startswith(lab.site(1).mapped_addr + ":")


def test_stun_timeout_and_usage_errors(natlab: Any) -> None:
    lab = natlab(["prc"])
    proc = stun(lab, "site1", f"{SERVER_IP}:3478", "--timeout", "1")  # nothing listens
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"no response from STUN server {SERVER_IP}:3478 over UDP within 1 s"
    ]
    proc = stun(lab, "site1", f"{SERVER_IP}:3478", "--tcp", "--timeout", "1")
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    for bad in (["not a host"], [f"{SERVER_IP}:99999"], [SERVER_IP, "--timeout", "-1"], []):
        proc = stun(lab, "site1", *bad)
        assert proc.returncode == 2, bad
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr

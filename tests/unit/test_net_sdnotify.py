"""systemd's notify protocol (sd_notify(3)) as both daemons send it."""

from __future__ import annotations

import socket
from pathlib import Path

from p2ptun.net.sdnotify import Notifier


def test_sd_notify(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.settimeout(5)
        notifier = Notifier(path)
        assert notifier.ready("interface p2p0 up")
        assert server.recv(4096) == b"READY=1\nSTATUS=interface p2p0 up"
        assert notifier.stopping()
        assert server.recv(4096) == b"STOPPING=1"
        notifier.close()
    assert not Notifier("").enabled and not Notifier("").ready()
    assert Notifier(str(tmp_path / "gone")).ready() is False  # never raises

"""Waiting for a wireguard-go process to be ready for ``wg``.

``wg show IFACE`` on a userspace interface connects to ``/var/run/wireguard/IFACE.sock`` and,
when that connect is refused, unlinks the socket file as the leftover of a dead process. While
wireguard-go starts, the file exists between its ``bind`` and its ``listen``: a ``wg`` run in that
window removes the live socket, and wireguard-go then exits ("Failed to listen on uapi socket: no
such file or directory"). So the wait connects by itself, which never unlinks anything, and runs
``wg`` only once the socket accepts.
"""

from __future__ import annotations

import socket
from pathlib import Path

UAPI_DIR = Path("/var/run/wireguard")


def uapi_socket(ifname: str) -> Path:
    """Where wireguard-go listens for ``wg`` on interface ``ifname``."""
    return UAPI_DIR / f"{ifname}.sock"


def uapi_accepts(ifname: str) -> bool:
    """True once wireguard-go's UAPI socket for ``ifname`` accepts a connection.

    The socket directory is shared by every network namespace, so this runs from anywhere.
    """
    path = uapi_socket(ifname)
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True

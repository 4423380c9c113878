"""The node's control socket: ``/run/p2ptun/<interface>.sock`` (docs/ARCHITECTURE.md §3).

One JSON request per connection, one JSON reply, each a single line::

    {"cmd": "status"}              -> {"ok": true, "status": {"node": {...}, "peers": [...]}}
    {"cmd": "ping", "peer": "bob"} -> {"ok": true, "ping": {...}}
    failures                       -> {"ok": false, "error": "..."}

The socket is created mode 0600 in a directory of mode 0700: only root talks to the daemon.
Requests are bounded (4 KiB, 5 s) so a stuck client cannot hold the daemon.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from p2ptun.errors import RuntimeFailure
from p2ptun.log import get_logger

log = get_logger("node.control")

MAX_REQUEST = 4096
REQUEST_TIMEOUT = 5.0

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def prepare_socket_path(path: str) -> None:
    """Create the socket's directory (0700) and remove a stale socket left by a dead daemon.

    A socket that still answers belongs to a running daemon: refuse to steal it.
    """
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o700, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise RuntimeFailure(f"{path} exists and is not a socket; remove it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens: stale
        return
    finally:
        probe.close()
    raise RuntimeFailure(f"another p2ptun daemon is running with control socket {path}")


async def serve(
    path: str, handler: Handler, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve the control socket until cancelled; removes the socket file on exit."""
    prepare_socket_path(path)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        await sock.bind(path)
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.listen(16)
    listener = trio.SocketListener(sock)
    try:
        task_status.started()
        async with trio.open_nursery() as nursery:
            while True:
                stream = await listener.accept()
                nursery.start_soon(_handle, stream, handler)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        await listener.aclose()


async def _handle(stream: trio.SocketStream, handler: Handler) -> None:
    async with stream:
        with trio.move_on_after(REQUEST_TIMEOUT):
            data = b""
            while b"\n" not in data and len(data) <= MAX_REQUEST:
                chunk = await stream.receive_some(MAX_REQUEST)
                if not chunk:
                    break
                data += chunk
            reply: dict[str, Any]
            try:
                if len(data) > MAX_REQUEST:
                    raise ValueError("request too large")
                request = json.loads(data.split(b"\n", 1)[0] or b"null")
                if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
                    raise ValueError('expected {"cmd": ...}')
                reply = await handler(request)
            except ValueError as exc:
                reply = {"ok": False, "error": str(exc)}
            except Exception as exc:  # one bad request must not take the daemon down
                log.error("control request failed", error=repr(exc))
                reply = {"ok": False, "error": "internal error, see the daemon's log"}
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(json.dumps(reply).encode() + b"\n")


def request(path: str, payload: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Blocking client used by ``p2ptun status`` and ``p2ptun ping``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise RuntimeFailure(
                f"no daemon: {path} does not exist (is 'p2ptun up' running?)"
            ) from None
        except PermissionError:
            raise RuntimeFailure(f"permission denied on {path} (run as root)") from None
        except ConnectionRefusedError:
            raise RuntimeFailure(f"no daemon answers on {path} (stale socket?)") from None
        sock.sendall(json.dumps(payload).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            if len(data) > 16 << 20:
                raise RuntimeFailure("control reply too large")
    except TimeoutError:
        raise RuntimeFailure(f"the daemon on {path} did not answer within {timeout:g} s") from None
    except OSError as exc:
        raise RuntimeFailure(f"control socket {path}: {exc.strerror or exc}") from None
    finally:
        sock.close()
    try:
        reply = json.loads(data)
    except ValueError:
        raise RuntimeFailure(f"the daemon on {path} sent an invalid reply") from None
    if not isinstance(reply, dict):
        raise RuntimeFailure(f"the daemon on {path} sent an invalid reply")
    return reply

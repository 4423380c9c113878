"""The node's record of the sealed-message counters it accepted, kept in a state file.

A sealed message (:mod:`p2ptun.signal.seal`) carries a counter that must exceed the last one
accepted from its sender. Kept in memory only, that record ends with the process, and a
malicious rendezvous could replay what a peer sealed in the last few minutes after the node
restarts. :class:`SealStateFile` is the :class:`~p2ptun.signal.seal.ReplayRecord` the daemon
gives every signaling client it runs (a reload replaces the client, not the record): it keeps
the highest counter per (peer name, peer key) in a small JSON file and rewrites it — to a
temporary file, synced, renamed over the old one, the directory synced — before the message
is acted on. What that guarantees, and what holds without the file, is said in
:mod:`p2ptun.signal.seal`.

Where: :func:`seal_state_path` — ``<state directory>/<interface>.seal-state``, the directory
being ``$P2PTUN_STATE_DIR``, else systemd's ``$STATE_DIRECTORY`` (``StateDirectory=p2ptun`` in
the unit), else ``/var/lib/p2ptun``; it is created (mode 0700) when missing. A file that cannot
be read or parsed, or a directory that cannot be written, is logged (sparingly) and the node
runs on with what it holds in memory.
"""

from __future__ import annotations

import base64
import json
import os
import time

from p2ptun.log import LogLimiter, get_logger

log = get_logger("node.sealstate")

DEFAULT_STATE_DIR = "/var/lib/p2ptun"
"""Where node state lives without ``$P2PTUN_STATE_DIR`` or systemd's ``$STATE_DIRECTORY``."""
STATE_SUFFIX = ".seal-state"
MAX_STATE_BYTES = 1 << 20
"""A state file larger than this is not read (it is a few dozen bytes per peer)."""
MAX_STATE_PEERS = 4096
"""Records kept at most; past it the oldest (smallest counter) go first."""
_VERSION = 1


def state_directory() -> str:
    """``$P2PTUN_STATE_DIR``, else the first of systemd's ``$STATE_DIRECTORY``, else
    :data:`DEFAULT_STATE_DIR`."""
    explicit = os.environ.get("P2PTUN_STATE_DIR")
    if explicit:
        return explicit
    systemd = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return systemd or DEFAULT_STATE_DIR


def seal_state_path(interface: str, directory: str | None = None) -> str:
    """The state file of the node whose interface is ``interface`` (unique on a host)."""
    return os.path.join(directory or state_directory(), f"{interface}{STATE_SUFFIX}")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class SealStateFile:
    """A :class:`~p2ptun.signal.seal.ReplayRecord` persisted in ``path`` (module docstring).
    ``own_public`` is this node's public key: a file written for another key is ignored."""

    def __init__(self, path: str, own_public: bytes) -> None:
        self.path = path
        self.own_public = own_public
        self.counters: dict[tuple[str, bytes], int] = {}
        self.loaded = False
        """True when the file existed and was read."""
        self.write_failures = 0
        self._log = LogLimiter(interval=60.0, burst=3)
        self._load()

    # -- ReplayRecord --------------------------------------------------------------------------

    def last_counter(self, peer: str, key: bytes) -> int | None:
        return self.counters.get((peer, key))

    def record(self, peer: str, key: bytes, counter: int) -> None:
        self.counters[(peer, key)] = counter
        if len(self.counters) > MAX_STATE_PEERS:
            oldest = min(self.counters, key=self.counters.__getitem__)
            del self.counters[oldest]
        self._write()

    # -- the file ------------------------------------------------------------------------------

    def _load(self) -> None:
        try:
            with open(self.path, "rb") as f:
                raw = f.read(MAX_STATE_BYTES + 1)
        except FileNotFoundError:
            return
        except OSError as exc:
            self._problem("cannot read the seal state", exc.strerror or str(exc))
            return
        try:
            if len(raw) > MAX_STATE_BYTES:
                raise ValueError("too large")
            data = json.loads(raw)
            if data.get("version") != _VERSION:
                raise ValueError(f"unknown version {data.get('version')!r}")
            if data.get("public_key") != _b64(self.own_public):
                log.info("seal state is for another key; starting afresh", path=self.path)
                return
            counters: dict[tuple[str, bytes], int] = {}
            for entry in data["peers"]:
                name, key, counter = entry["name"], entry["key"], entry["counter"]
                if not isinstance(name, str) or not isinstance(counter, int) or counter < 0:
                    raise ValueError("bad entry")
                counters[(name, base64.b64decode(key, validate=True))] = counter
        except (ValueError, KeyError, TypeError) as exc:
            self._problem("the seal state file is damaged, ignoring it", str(exc))
            return
        self.counters = counters
        self.loaded = True

    def _write(self) -> None:
        data = {
            "version": _VERSION,
            "public_key": _b64(self.own_public),
            "peers": [
                {"name": name, "key": _b64(key), "counter": counter}
                for (name, key), counter in sorted(self.counters.items())
            ],
        }
        payload = json.dumps(data, separators=(",", ":")).encode()
        directory = os.path.dirname(self.path) or "."
        tmp = f"{self.path}.tmp"
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, payload)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            self.write_failures += 1
            self._problem("cannot write the seal state", exc.strerror or str(exc))

    def _problem(self, what: str, error: str) -> None:
        suppressed = self._log.allow(time.monotonic())
        if suppressed is not None:
            extra = {"suppressed": suppressed} if suppressed else {}
            log.warning(what, path=self.path, error=error, **extra)

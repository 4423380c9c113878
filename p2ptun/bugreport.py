"""``p2ptun bugreport``: one archive with what a maintainer asks for first, secrets removed.

The archive (a ``.tar.gz``, mode 0600) holds:

- ``status.json`` and ``debug.json``: the running node's status and internals (control socket);
- ``netcheck.json``: ``p2ptun netcheck`` against the config's servers;
- ``config.toml``: the config file with every secret replaced by ``<redacted>``;
- ``logs.txt``: the recent log — the files given with ``--log`` and the systemd journal of the
  config's unit where there is one;
- ``network.txt``: addresses, links, routes and policy rules (``ip``);
- ``versions.txt``: p2ptun, Python and library versions, the kernel.

A part that cannot be had (no daemon running, no journal) says why inside its file; the
archive is written regardless.

**Redaction** (:class:`Redactor`) is applied to every file: each secret the config holds —
private keys, pre-shared keys, TURN passwords, the rendezvous' users and REST secret, and the
content of the key files it names — is replaced wherever it appears, and so is the value of
any ``private_key``, ``preshared_key``, ``password``, ``secret`` or ``token`` written as
``name = value`` or ``name: value``, for secrets the config does not know about.
"""

from __future__ import annotations

import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from p2ptun import __version__
from p2ptun.config import Config, NodeConfig, RendezvousConfig
from p2ptun.errors import P2ptunError, RuntimeFailure
from p2ptun.keys import encode_key

REDACTED = "<redacted>"
LOG_BYTES = 2 << 20
"""The tail of each log file or journal kept (bytes)."""
COMMAND_TIMEOUT = 10.0

_SECRET_ASSIGNMENT = re.compile(
    r"""(?ix)
    \b(private_key|preshared_key|password|passwd|auth_secret|static-auth-secret|secret|token)\b
    (\s*[=:]\s*)
    ("[^"\n]*"|'[^'\n]*'|[^\s,}\]]+)
    """
)
_USERS_TABLE = re.compile(r"(?m)^(\s*users\s*=\s*)\{[^}\n]*\}")


@dataclass
class Redactor:
    """Removes secrets from text (module docstring)."""

    secrets: set[str] = field(default_factory=set)

    def add(self, value: str | bytes | None) -> None:
        if value is None:
            return
        text = encode_key(value) if isinstance(value, bytes) else value
        text = text.strip()
        if len(text) >= 4:  # shorter ones would redact half the file (and are no secret)
            self.secrets.add(text)

    def __call__(self, text: str) -> str:
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, REDACTED)
        text = _SECRET_ASSIGNMENT.sub(lambda m: f'{m.group(1)}{m.group(2)}"{REDACTED}"', text)
        return _USERS_TABLE.sub(lambda m: f"{m.group(1)}{{ {REDACTED} }}", text)


def redactor_for(cfg: Config | None, path: str | None) -> Redactor:
    """A redactor that knows every secret of ``cfg`` and of the key files ``path`` names."""
    r = Redactor()
    if isinstance(cfg, NodeConfig):
        r.add(cfg.private_key)
        for peer in cfg.peers:
            r.add(peer.preshared_key)
        for turn in cfg.ice.turn:
            r.add(turn.password)
    elif isinstance(cfg, RendezvousConfig):
        r.add(cfg.private_key)
        if cfg.turn is not None:
            r.add(cfg.turn.auth_secret)
            for password in cfg.turn.users.values():
                r.add(password)
    if path is not None:
        for key_file in _key_files(path):
            try:
                with open(key_file, encoding="utf-8", errors="replace") as f:
                    r.add(f.read(4096))
            except OSError:
                pass
    return r


def _key_files(path: str) -> list[str]:
    """Files a config names with ``*_file`` keys (read as text: no TOML parser needed for a
    config that does not load)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read(1 << 20)
    except OSError:
        return []
    base = os.path.dirname(os.path.abspath(path))
    found = re.findall(r'(?m)^\s*(?:private_key_file|preshared_key_file)\s*=\s*"([^"]+)"', text)
    return [p if os.path.isabs(p) else os.path.join(base, p) for p in found]


def _run(argv: Sequence[str]) -> str:
    """A command's output for the report, or why there is none."""
    if shutil.which(argv[0]) is None:
        return f"$ {' '.join(argv)}\n({argv[0]} is not installed)\n"
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"$ {' '.join(argv)}\n({exc})\n"
    out = proc.stdout + (f"\n(stderr) {proc.stderr}" if proc.stderr.strip() else "")
    return f"$ {' '.join(argv)}\n{out}\n"


def network_state() -> str:
    commands = (
        ("ip", "-d", "link", "show"),
        ("ip", "address", "show"),
        ("ip", "route", "show", "table", "all"),
        ("ip", "-6", "route", "show", "table", "all"),
        ("ip", "rule", "show"),
        ("ip", "-6", "rule", "show"),
    )
    return "".join(_run(c) for c in commands)


def versions() -> str:
    lines = [
        f"p2ptun {__version__}",
        f"python {sys.version.split()[0]} ({sys.executable})",
        f"platform {platform.platform()}",
        f"kernel {platform.release()}",
    ]
    for dist in ("trio", "cryptography", "pyroute2", "dnspython", "prometheus-client", "h11"):
        try:
            lines.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            lines.append(f"{dist} (not installed)")
    return "\n".join(lines) + "\n"


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - LOG_BYTES))
            data = f.read()
    except OSError as exc:
        return f"({path}: {exc.strerror or exc})\n"
    return data.decode("utf-8", "replace")


def logs(log_files: Iterable[str], unit: str | None) -> str:
    parts = [f"--- {path}\n{_tail(path)}" for path in log_files]
    if unit is not None:
        journal = _run(["journalctl", "-u", unit, "-n", "5000", "--no-pager", "-o", "short-iso"])
        parts.append(f"--- journal of {unit}\n{journal[-LOG_BYTES:]}")
    return "\n".join(parts) if parts else "(no log given: use --log FILE, or run under systemd)\n"


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True) + "\n"


@dataclass
class Parts:
    """How the report gets what the daemon and the network say (the CLI passes the real
    ones; tests may pass their own)."""

    status: Callable[[], dict[str, Any]]
    debug: Callable[[], dict[str, Any]]
    netcheck: Callable[[], dict[str, Any]] | None


def _attempt(get: Callable[[], dict[str, Any]] | None, what: str) -> str:
    if get is None:
        return _json({"error": f"no {what}: give a node config (-c FILE)"})
    try:
        return _json(get())
    except P2ptunError as exc:
        return _json({"error": str(exc)})


def build(
    out: str,
    *,
    cfg: Config | None,
    config_path: str | None,
    parts: Parts,
    log_files: Sequence[str] = (),
    unit: str | None = None,
    notes: Sequence[str] = (),
) -> list[str]:
    """Write the archive to ``out`` (mode 0600); the names of the files in it. ``notes``:
    lines for ``notes.txt`` (a config that did not load, say)."""
    redact = redactor_for(cfg, config_path)
    files: dict[str, str] = {
        "status.json": _attempt(parts.status, "status"),
        "debug.json": _attempt(parts.debug, "debug"),
        "netcheck.json": _attempt(parts.netcheck, "netcheck"),
        "logs.txt": logs(log_files, unit),
        "network.txt": network_state(),
        "versions.txt": versions(),
    }
    if notes:
        files["notes.txt"] = "\n".join(notes) + "\n"
    if config_path is not None:
        try:
            with open(config_path, encoding="utf-8", errors="replace") as f:
                files["config.toml"] = f.read(1 << 20)
        except OSError as exc:
            files["config.toml"] = f"# {config_path}: {exc.strerror or exc}\n"
    now = time.time()
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            top = os.path.basename(out).removesuffix(".tar.gz")
            for name, text in files.items():
                data = redact(text).encode()
                info = tarfile.TarInfo(f"{top}/{name}")
                info.size = len(data)
                info.mtime = int(now)
                info.mode = 0o600
                tar.addfile(info, io.BytesIO(data))
    except OSError as exc:
        raise RuntimeFailure(f"cannot write {out}: {exc.strerror or exc}") from None
    return sorted(files)


def default_output() -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return f"p2ptun-bugreport-{platform.node() or 'host'}-{stamp}.tar.gz"


__all__ = [
    "REDACTED",
    "Parts",
    "Redactor",
    "build",
    "default_output",
    "logs",
    "network_state",
    "redactor_for",
    "versions",
]

"""A stand-in for ``systemctl`` on the NAT lab's machines, where no systemd runs as PID 1.

The README's guide ends in ``systemctl enable --now p2ptun@p2p0``; its end-to-end test runs
that very line on a lab machine (:mod:`p2plab.machine`), where this program answers to the
name ``systemctl``. It does what systemd would do with the installed units, as far as the guide
needs it: it reads the unit (``/etc/systemd/system``, templates with ``%i``), creates its
``RuntimeDirectory`` and ``StateDirectory``, runs ``ExecStartPre`` (a failure fails the start),
starts ``ExecStart`` in its own session with ``NOTIFY_SOCKET`` set and, for ``Type=notify``,
waits for ``READY=1`` as ``systemctl start`` does (the start fails if the daemon exits first,
showing the end of its log). ``stop`` sends SIGTERM, ``reload`` runs ``ExecReload``
(``$MAINPID``), ``is-active`` answers. State (PIDs, logs) lives in ``/run/lab-systemctl``.

Sandboxing directives (capabilities, ``ProtectSystem``...) are not applied; ``systemd-analyze
verify`` checks the units themselves (tests/unit/test_service_units.py).
"""

from __future__ import annotations

import configparser
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

UNIT_DIRS = (Path("/etc/systemd/system"), Path("/lib/systemd/system"))
STATE = Path("/run/lab-systemctl")
START_TIMEOUT = 60.0


class UnitError(Exception):
    pass


def _unit(name: str) -> tuple[configparser.RawConfigParser, str]:
    """The parsed unit for ``name`` (``p2ptun@p2p0`` or ``p2ptun@p2p0.service``) and its
    instance ('' for none)."""
    if not name.endswith(".service"):
        name += ".service"
    stem = name.removesuffix(".service")
    instance = ""
    file_name = name
    if "@" in stem:
        prefix, instance = stem.split("@", 1)
        file_name = f"{prefix}@.service"
    for directory in UNIT_DIRS:
        path = directory / file_name
        if path.is_file():
            parser = configparser.RawConfigParser(strict=False, interpolation=None)
            parser.optionxform = str  # type: ignore[assignment,method-assign]
            text = path.read_text().replace("%i", instance).replace("%I", instance)
            parser.read_string(text)
            return parser, instance
    raise UnitError(f"Unit {name} not found.")


def _values(parser: configparser.RawConfigParser, key: str) -> list[str]:
    """The commands of ``key`` (the units set each at most once)."""
    value = parser.get("Service", key, fallback=None)
    return [] if value is None else [value]


def _key(name: str) -> str:
    return name.removesuffix(".service")


def _pid(unit: str) -> int | None:
    path = STATE / f"{_key(unit)}.pid"
    try:
        pid = int(path.read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _argv(command: str) -> tuple[list[str], bool]:
    ignore = command.startswith("-")
    return shlex.split(command.lstrip("-@+!")), ignore


def start(unit: str) -> None:
    if _pid(unit) is not None:
        return
    parser, _instance = _unit(unit)
    service = parser["Service"]
    STATE.mkdir(mode=0o755, parents=True, exist_ok=True)
    for key, base in (("RuntimeDirectory", "/run"), ("StateDirectory", "/var/lib")):
        for name in service.get(key, "").split():
            mode = int(service.get(f"{key}Mode", "0755"), 8)
            path = Path(base) / name
            path.mkdir(mode=mode, parents=True, exist_ok=True)
            path.chmod(mode)
    log_path = STATE / f"{_key(unit)}.log"
    with log_path.open("ab") as log:
        for command in _values(parser, "ExecStartPre"):
            argv, ignore = _argv(command)
            result = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, check=False)
            if result.returncode != 0 and not ignore:
                raise UnitError(
                    f"Job for {unit} failed: {argv[0]} exited {result.returncode}\n"
                    + _tail(log_path)
                )
        notify_path = STATE / f"{_key(unit)}.notify"
        notify_path.unlink(missing_ok=True)
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(notify_path))
        env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
        argv, _ = _argv(service["ExecStart"])
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    (STATE / f"{_key(unit)}.pid").write_text(str(proc.pid))
    if service.get("Type", "simple") != "notify":
        notify.close()
        return
    deadline = time.monotonic() + START_TIMEOUT
    notify.settimeout(0.2)
    try:
        while time.monotonic() < deadline:
            try:
                data = notify.recv(4096)
            except TimeoutError:
                if proc.poll() is not None:
                    raise UnitError(
                        f"Job for {unit} failed: the daemon exited {proc.returncode} before "
                        f"it was ready\n" + _tail(log_path)
                    ) from None
                continue
            if b"READY=1" in data.split(b"\n"):
                return
        raise UnitError(f"Job for {unit} failed: not ready within {START_TIMEOUT:.0f} s")
    finally:
        notify.close()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def stop(unit: str) -> None:
    pid = _pid(unit)
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


def reload(unit: str) -> None:
    pid = _pid(unit)
    if pid is None:
        raise UnitError(f"{unit} is not active, cannot reload.")
    parser, _ = _unit(unit)
    command = parser["Service"].get("ExecReload")
    if command is None:
        raise UnitError(f"{unit} has no ExecReload.")
    argv, _ = _argv(command.replace("$MAINPID", str(pid)))
    subprocess.run(argv, check=True)


def main(argv: list[str]) -> int:
    args = [a for a in argv if not a.startswith("-")]
    flags = {a for a in argv if a.startswith("-")}
    if not args:
        print("usage: systemctl enable|disable|start|stop|restart|reload|is-active UNIT...")
        return 1
    command, units = args[0], args[1:]
    try:
        if command == "daemon-reload":
            return 0
        for unit in units:
            _unit(unit)  # not found: fail like systemctl
            if command in ("start", "restart") or (command == "enable" and "--now" in flags):
                if command == "restart":
                    stop(unit)
                start(unit)
            elif command == "stop" or (command == "disable" and "--now" in flags):
                stop(unit)
            elif command == "reload":
                reload(unit)
            elif command == "is-active":
                active = _pid(unit) is not None
                print("active" if active else "inactive")
                if not active:
                    return 3
            elif command not in ("enable", "disable"):
                raise UnitError(f"Unknown command verb {command}.")
    except UnitError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

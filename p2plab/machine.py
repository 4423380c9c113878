"""A NAT-lab host seen as a machine of its own: its network namespace and its own view of the
file system, so that commands written for a real machine run unchanged in the lab.

Every lab namespace shares the test machine's files; a :class:`Machine` gives its host a
persistent mount namespace (``unshare --mount=FILE``) where ``/etc``, ``/opt``,
``/usr/local``, ``/var/lib`` and ``/run`` are overlays whose writes land in the machine's own
directory: ``scripts/install`` puts p2ptun into this machine's ``/opt/p2ptun``, ``p2ptun join``
writes this machine's ``/etc/p2ptun``, and nothing outside the directory changes. A
``systemctl`` stand-in (:mod:`p2plab.systemctl`) sits in ``/usr/local/sbin``, since no systemd
runs in the lab. :meth:`Machine.run` runs a shell script there (``nsenter`` into both
namespaces); :meth:`Machine.close` stops what the stand-in started (by PID) and unmounts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from p2plab.natlab import NatLab

OVERLAID = ("/etc", "/opt", "/usr/local", "/var/lib", "/run")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SYSTEMCTL = Path(__file__).with_name("systemctl.py")


class Machine:
    def __init__(self, lab: NatLab, host: str, root: Path) -> None:
        self.lab = lab
        self.host = host
        self.netns = lab.ns(host)
        self.root = root
        self._mounted = False

    def _upper(self, path: str) -> Path:
        return self.root / "fs" / path.strip("/").replace("/", "_") / "upper"

    def file(self, path: str) -> Path:
        """Where a file this machine wrote under one of the overlaid trees is kept."""
        for top in sorted(OVERLAID, key=len, reverse=True):
            if path == top or path.startswith(top + "/"):
                return self._upper(top) / path[len(top) :].lstrip("/")
        raise ValueError(f"{path} is not in an overlaid tree")

    def up(self) -> Machine:
        ns_dir = self.root / "ns"
        ns_dir.mkdir(parents=True)
        subprocess.run(["mount", "--bind", str(ns_dir), str(ns_dir)], check=True)
        subprocess.run(["mount", "--make-private", str(ns_dir)], check=True)
        self._mounted = True
        (ns_dir / "mnt").touch()
        mounts = []
        for top in OVERLAID:
            upper = self._upper(top)
            work = upper.parent / "work"
            upper.mkdir(parents=True)
            work.mkdir()
            mounts.append(
                f"mount -t overlay overlay -o lowerdir={top},upperdir={upper},workdir={work} {top}"
            )
        sbin = self._upper("/usr/local") / "sbin"
        sbin.mkdir(parents=True)
        stand_in = sbin / "systemctl"
        stand_in.write_text(f'#!/bin/sh\nexec {sys.executable} {SYSTEMCTL} "$@"\n')
        stand_in.chmod(0o755)
        # As ``ip netns exec`` does: this network namespace's own /sys.
        mounts.append("mount -t sysfs sysfs /sys")
        subprocess.run(
            [
                # nsenter, not ``ip netns exec``: that one makes a mount namespace of its own,
                # where the new namespace's binding to the file would stay invisible.
                *("nsenter", f"--net=/run/netns/{self.netns}"),
                *("unshare", f"--mount={ns_dir / 'mnt'}", "--propagation", "private"),
                *("sh", "-ec", "; ".join(mounts)),
            ],
            check=True,
            timeout=30,
        )
        return self

    def run(
        self,
        script: str,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        timeout: float = 300.0,
        check: bool = True,
        host_network: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``script`` with bash (``-euo pipefail``) as root on this machine;
        ``host_network``: in the test machine's network namespace instead of the lab host's
        (the lab has no route to the package index that an install downloads from)."""
        environment = {"PATH": PATH, "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}
        environment.update(env or {})
        net = [] if host_network else [f"--net=/run/netns/{self.netns}"]
        result = subprocess.run(
            [
                "nsenter",
                *net,
                f"--mount={self.root / 'ns' / 'mnt'}",
                # Entering a mount namespace moves to its root: the directory goes along.
                f"--wd={cwd or '/'}",
                *("bash", "-euo", "pipefail", "-c", script),
            ],
            env=environment,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"on {self.host}, exit {result.returncode}:\n{script}\n--- stdout\n"
                f"{result.stdout}\n--- stderr\n{result.stderr}\n{self.service_logs()}"
            )
        return result

    def popen(self, argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        """Start ``argv`` on this machine in the background (the caller stops it by PID)."""
        return subprocess.Popen(  # type: ignore[call-overload,no-any-return]
            [
                *("nsenter", f"--net=/run/netns/{self.netns}"),
                f"--mount={self.root / 'ns' / 'mnt'}",
                *argv,
            ],
            env={"PATH": PATH, "LANG": "C.UTF-8"},
            **kwargs,
        )

    def service_logs(self, lines: int = 30) -> str:
        parts = []
        for log in sorted(self.file("/run/lab-systemctl").glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {self.host}: {log.name}\n" + "\n".join(tail))
        return "\n".join(parts)

    def service_pids(self) -> dict[str, int]:
        pids = {}
        for path in self.file("/run/lab-systemctl").glob("*.pid"):
            with contextlib.suppress(ValueError):
                pids[path.stem] = int(path.read_text())
        return pids

    def close(self) -> None:
        """Stop every service the stand-in started here (by PID), then unmount."""
        pids = list(self.service_pids().values()) if self.root.exists() else []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for pid in pids:
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self._mounted:
            ns_dir = self.root / "ns"
            subprocess.run(["umount", str(ns_dir / "mnt")], check=False)
            subprocess.run(["umount", str(ns_dir)], check=False)
            self._mounted = False

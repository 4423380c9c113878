"""``p2ptun up`` as a service: real daemon processes in bare network namespaces.

Each test gets its own namespace (unique prefix), its own run directory (``P2PTUN_RUN_DIR``)
and interface name; every daemon is stopped by PID and the namespace deleted, pass or fail.
The rendezvous address points at a closed port inside the namespace: the daemon must say so
once and keep running.

Covered: READY=1 only once the interface exists, is up and has its address (a NOTIFY_SOCKET
bound by the test); the status JSON has exactly the fields of docs/ARCHITECTURE.md §3; SIGTERM
leaves no interface, route or socket behind and exits 0; SIGHUP adds and removes a peer (its
route appears and goes) and refuses a broken file, keeping the running config; an interface
name that is taken, no privileges (setpriv to nobody) and no /dev/net/tun each end with one
clear line and exit 1.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from p2ptun.keys import encode_key, generate_private_key, public_key

pytestmark = [pytest.mark.lab]

TIMEOUT = 20.0
# The port mapping the default gateway holds for the node (docs/ARCHITECTURE.md §3).
NODE_FIELDS = {"name", "interface", "addresses", "rendezvous", "port_mapping"}
# Advertised routes and the exit node (docs/ARCHITECTURE.md §3).
NODE_FIELDS |= {"routes", "exit_node"}
# The firewall: rules, flow table, drops (README "Firewall").
NODE_FIELDS |= {"firewall"}
PEER_FIELDS = {
    "name",
    "state",
    "path",
    "local_candidate",
    "remote_candidate",
    "rtt_ms",
    "rx_bytes",
    "tx_bytes",
    "last_handshake",
    "consent_age",
    # A direct path through a port mapping, ours or the peer's.
    "via",
    # What last changed the path, and the last changes (docs/ARCHITECTURE.md §3).
    "path_reason",
    "path_history",
    # Why the path is what it is.
    "reason",
    "reason_facts",
    # The peer's routes accepted, and its exit routes not in use.
    "routes",
    # Packets from the peer the firewall dropped.
    "firewall_dropped",
    "path_since",
}


def wait_until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def key_pair() -> tuple[str, str]:
    private = generate_private_key()
    return encode_key(private), encode_key(public_key(private))


@dataclass
class Node:
    """One daemon's files and namespace."""

    ns: str
    ifname: str
    workdir: Path
    run_dir: Path
    private: str = field(default_factory=lambda: key_pair()[0])
    rv_key: str = field(default_factory=lambda: key_pair()[1])
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def config_path(self) -> Path:
        return self.workdir / "node.toml"

    @property
    def log_path(self) -> Path:
        return self.workdir / "node.log"

    @property
    def socket_path(self) -> Path:
        return self.run_dir / f"{self.ifname}.sock"

    def write_config(self, peers: list[dict[str, Any]], address: str = "10.77.0.1/24") -> None:
        # The config is world-readable (the unprivileged test runs as nobody), so the key is
        # in a file of its own, mode 0600, owned by nobody (root reads it anyway): an inline
        # key in a readable config would be warned about, a line more on stderr.
        key_path = self.workdir / "alice.key"
        key_path.write_text(self.private + "\n")
        key_path.chmod(0o600)
        os.chown(key_path, 65534, 65534)
        lines = [
            'name = "alice"',
            f'private_key_file = "{key_path}"',
            "[interface]",
            f'name = "{self.ifname}"',
            f'address = ["{address}"]',
            "[rendezvous]",
            'address = "127.0.0.1:9"',  # nothing listens: unreachable
            f'public_key = "{self.rv_key}"',
        ]
        for peer in peers:
            nets = ", ".join(f'"{n}"' for n in peer["allowed_ips"])
            lines += [
                "[[peer]]",
                f'name = "{peer["name"]}"',
                f'public_key = "{peer["public_key"]}"',
                f"allowed_ips = [{nets}]",
            ]
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.chmod(0o644)
        os.replace(tmp, self.config_path)

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "P2PTUN_RUN_DIR": str(self.run_dir),
            "P2PTUN_STATE_DIR": str(self.run_dir.parent / "state"),
            **extra,
        }

    def start(self, *, prefix: tuple[str, ...] = (), **env: str) -> subprocess.Popen[bytes]:
        out = self.log_path.open("ab")
        proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.ns,
                *prefix,
                sys.executable,
                "-m",
                "p2ptun",
                "up",
                "-c",
                str(self.config_path),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=self.env(**env),
        )
        out.close()
        self.procs.append(proc)
        return proc

    def run_once(self, *, prefix: tuple[str, ...] = (), **env: str) -> tuple[int, str]:
        """Start a daemon that is expected to fail; its exit code and output."""
        proc = self.start(prefix=prefix, **env)
        try:
            code = proc.wait(timeout=TIMEOUT)
        finally:
            stop(proc)
        return code, self.log_path.read_text()

    def ip_json(self, *args: str) -> Any:
        out = subprocess.run(
            ["ip", "-n", self.ns, "-j", *args], capture_output=True, text=True, check=True
        ).stdout
        return json.loads(out or "[]")

    def link(self) -> dict[str, Any] | None:
        links = [x for x in self.ip_json("link", "show") if x.get("ifname") == self.ifname]
        return links[0] if links else None

    def addresses(self) -> list[str]:
        found = []
        for link in self.ip_json("addr", "show"):
            if link.get("ifname") == self.ifname:
                found += [a["local"] for a in link.get("addr_info", []) if a["family"] == "inet"]
        return found

    def routes(self) -> list[str]:
        return [r["dst"] for r in self.ip_json("route", "show") if r.get("dev") == self.ifname]

    def status(self) -> dict[str, Any]:
        out = subprocess.run(
            [sys.executable, "-m", "p2ptun", "status", "--json", "--interface", self.ifname],
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=TIMEOUT,
        )
        assert out.returncode == 0, out.stderr
        status: dict[str, Any] = json.loads(out.stdout)
        return status

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""


def stop(proc: subprocess.Popen[bytes]) -> int | None:
    """Stop a daemon we started, by PID: SIGTERM, then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode


@pytest.fixture
def node(natlab_required: None) -> Iterator[Node]:
    """A fresh namespace, work and run directories, an interface name; all removed after."""
    tag = secrets.token_hex(3)
    ns = f"pns{tag}"
    # World-readable directory: the unprivileged case must get as far as the privilege check.
    workdir = Path(tempfile.mkdtemp(prefix=f"p2ptun-{tag}-"))
    workdir.chmod(0o755)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    n = Node(ns=ns, ifname=f"p2s{tag}", workdir=workdir, run_dir=workdir / "run")
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        yield n
    finally:
        for proc in n.procs:
            stop(proc)
        subprocess.run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(workdir, ignore_errors=True)


def bob() -> dict[str, Any]:
    return {"name": "bob", "public_key": key_pair()[1], "allowed_ips": ["10.77.0.2/32"]}


def one_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got: {output!r}"
    assert "Traceback" not in output
    return lines[0]


# -- tests -------------------------------------------------------------------------------------


def test_ready_status_and_clean_stop(node: Node) -> None:
    notify_path = node.workdir / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(TIMEOUT)
        node.write_config(
            [bob(), {"name": "carol", "public_key": key_pair()[1], "allowed_ips": ["10.88.0.0/16"]}]
        )
        proc = node.start(NOTIFY_SOCKET=str(notify_path))
        messages: list[str] = []
        while not any("READY=1" in m for m in messages):
            data = notify.recv(4096).decode()
            # At READY the interface must exist, be up and carry its address.
            if "READY=1" in data:
                link = node.link()
                assert link is not None and "UP" in link["flags"]
                assert node.addresses() == ["10.77.0.1"]
                assert "10.88.0.0/16" in node.routes()
                assert link["mtu"] == 1416
            messages.append(data)
        assert any(m.startswith("STATUS=") or "\nSTATUS=" in m for m in messages)

        status = node.status()
        assert set(status) == {"node", "peers"}
        assert set(status["node"]) == NODE_FIELDS
        assert status["node"]["interface"] == node.ifname
        assert status["node"]["addresses"] == ["10.77.0.1/24"]
        assert status["node"]["rendezvous"] == "disconnected"
        assert [p["name"] for p in status["peers"]] == ["bob", "carol"]
        for peer in status["peers"]:
            assert set(peer) == PEER_FIELDS
            assert peer["state"] in ("connecting", "connected", "disconnected")
            assert peer["path"] is None and peer["rtt_ms"] is None
            assert peer["reason"].startswith("no path") and peer["path_since"] is None

        # The rendezvous is unreachable: said once, clearly, and the daemon keeps running.
        assert wait_until(lambda: "unreachable" in node.log())
        time.sleep(1.5)
        assert proc.poll() is None
        assert node.log().count("unreachable") == 1

        table = subprocess.run(
            [sys.executable, "-m", "p2ptun", "status"],  # the only socket in the run dir
            capture_output=True,
            text=True,
            env=node.env(),
            timeout=TIMEOUT,
        )
        assert table.returncode == 0 and "bob" in table.stdout and "carol" in table.stdout

        assert stop(proc) == 0
        stopping = notify.recv(4096).decode()
        while "STOPPING=1" not in stopping:
            stopping = notify.recv(4096).decode()
    assert node.link() is None
    assert node.routes() == []
    assert not node.socket_path.exists()
    assert "Traceback" not in node.log()


def test_sighup_adds_and_removes_peers_and_refuses_bad_config(node: Node) -> None:
    first = bob()
    node.write_config([first])
    proc = node.start()
    assert wait_until(node.socket_path.exists)
    assert wait_until(lambda: [p["name"] for p in node.status()["peers"]] == ["bob"])
    assert "10.88.0.0/16" not in node.routes()

    carol = {"name": "carol", "public_key": key_pair()[1], "allowed_ips": ["10.88.0.0/16"]}
    node.write_config([first, carol])
    proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: "10.88.0.0/16" in node.routes())
    assert [p["name"] for p in node.status()["peers"]] == ["bob", "carol"]

    # A broken file: refused with a log line, the running config (and route) stay.
    node.config_path.write_text("name = [this is not toml\n")
    proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: "reload refused" in node.log())
    assert proc.poll() is None
    assert "10.88.0.0/16" in node.routes()
    assert [p["name"] for p in node.status()["peers"]] == ["bob", "carol"]
    refused = [line for line in node.log().splitlines() if "reload refused" in line]
    assert len(refused) == 1 and "node.toml" in refused[0]

    # Carol leaves, bob's allowed IPs grow: routes follow.
    first["allowed_ips"] = ["10.77.0.2/32", "10.99.0.0/24"]
    node.write_config([first])
    proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: "10.88.0.0/16" not in node.routes())
    assert wait_until(lambda: "10.99.0.0/24" in node.routes())
    assert [p["name"] for p in node.status()["peers"]] == ["bob"]

    assert stop(proc) == 0
    assert node.link() is None and node.routes() == []


def test_interface_name_taken(node: Node) -> None:
    subprocess.run(
        ["ip", "-n", node.ns, "link", "add", node.ifname, "type", "veth", "peer", "name",
         f"{node.ifname}x"],
        check=True,
    )  # fmt: skip
    node.write_config([bob()])
    code, output = node.run_once()
    assert code == 1
    line = one_line(output)
    assert node.ifname in line and "already exists" in line
    assert node.link() is not None  # not ours: left alone
    assert not node.socket_path.exists()


def test_unprivileged(node: Node) -> None:
    node.write_config([bob()])
    prefix = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--")
    code, output = node.run_once(prefix=prefix)
    assert code == 1
    line = one_line(output)
    assert "CAP_NET_ADMIN" in line, line

    assert node.link() is None


def test_no_dev_net_tun(node: Node) -> None:
    if not shutil.which("unshare"):
        pytest.skip("unshare is needed to hide /dev/net/tun")
    node.write_config([bob()])
    # A private mount namespace where /dev/net is an empty tmpfs: no TUN device node.
    script = 'mount -t tmpfs none /dev/net && exec "$@"'
    prefix = ("unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh")
    code, output = node.run_once(prefix=prefix)
    assert code == 1
    line = one_line(output)
    assert "/dev/net/tun" in line
    assert node.link() is None

"""Real p2ptun daemons in the NAT lab: the shared setup of the node end-to-end tests.

A :class:`Deployment` is a rendezvous (``p2ptun rendezvous``: signaling, STUN, TURN) on the lab's
public server at :data:`RV` and ``p2ptun up`` nodes in the site hosts. Every process is started
with ``lab.popen`` (so the lab stops it by PID when it closes, pass or fail), every file lives in
the deployment's work directory, control sockets in its own run directory
(``P2PTUN_RUN_DIR``), and every interface name carries the deployment's random tag. Waits are
bounded polls (:func:`p2plab.natlab.wait_until`); helpers that wait take a ``timeout``.

Two ways to use it:

- one deployment per test: :meth:`Deployment.add_node` for each node, then
  :meth:`~Deployment.start_rendezvous` and :meth:`~Deployment.start_node` (each node's peers are
  all the others unless ``peers`` says otherwise);
- one lab and one rendezvous per module (many sites, one node identity per site, all
  registered once), each test starting and stopping the nodes it needs
  (:meth:`~Deployment.stop_nodes`) after :meth:`~Deployment.fresh_sites` forgot the NAT
  mappings the previous test left.

Traffic helpers: :meth:`~Deployment.ping`, :meth:`~Deployment.first_ping` (seconds until the
first echo reply), :meth:`~Deployment.tcp_transfer` (random bytes over TCP inside the tunnel,
length and SHA-256 compared at both ends) and :meth:`~Deployment.start_transfer` (the same,
paced and in the background, for changes made while it runs), :class:`PingStream` (timestamped
replies, to tell how long the tunnel was dark).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from p2plab.bench import parse_reply
from p2plab.natlab import NatLab, wait_for_line, wait_until
from p2ptun.keys import encode_key, generate_private_key, public_key
from p2ptun.node import control

RV = "203.0.113.10"
"""The rendezvous (signaling :7070, STUN/TURN :3478) on the lab's server."""
RV_ALT = "203.0.113.11"
"""The server's second address, free for another STUN/TURN server (coturn)."""
CONNECT_TIMEOUT = 30.0
"""Upper bound for two nodes to connect (every wait in these tests has one)."""
MB = 1 << 20
LOG_LEVEL = (
    ["--log-level", os.environ["P2PTUN_E2E_LOG_LEVEL"]]
    if "P2PTUN_E2E_LOG_LEVEL" in os.environ
    else []
)
"""Daemons log at info; ``P2PTUN_E2E_LOG_LEVEL=debug`` in the environment says more."""

TCP_SERVER = """
import hashlib, json, socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
print("ready", flush=True)
s.settimeout(60)
c, _ = s.accept()
c.settimeout(60)
h = hashlib.sha256()
n = 0
gaps = []
last = None
while True:
    data = c.recv(1 << 16)
    now = time.monotonic()
    if last is not None and now - last > 0.25:
        gaps.append([last, now])
    last = now
    if not data:
        break
    h.update(data)
    n += len(data)
c.close()
print(json.dumps({"bytes": n, "sha256": h.hexdigest(), "gaps": gaps}), flush=True)
"""
"""Receives one connection to EOF: length, SHA-256 and the silences (> 0.25 s, monotonic clock,
which network namespaces share) between reads."""

TCP_CLIENT = """
import hashlib, json, random, socket, sys, time
data = random.Random(int(sys.argv[3])).randbytes(int(sys.argv[4]))
rate = float(sys.argv[5])
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
start = time.monotonic()
chunk = 16384
for off in range(0, len(data), chunk):
    if rate:
        ahead = start + off / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    c.sendall(data[off:off + chunk])
c.shutdown(socket.SHUT_WR)
c.recv(1)
print(json.dumps({"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}), flush=True)
"""
"""Sends ``size`` seeded random bytes (at most ``rate`` bytes/s; 0: as fast as it can), then
waits for the server to close: when it exits, the server has everything."""

ECHO_SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
print("ready", flush=True)
c, _ = s.accept()
f = c.makefile("rwb")
for line in f:
    f.write(line)
    f.flush()
"""

ECHO_CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
f = c.makefile("rwb")
for line in sys.stdin.buffer:
    f.write(line)
    f.flush()
    sys.stdout.buffer.write(f.readline())
    sys.stdout.flush()
"""
"""A line-echo connection over TCP: each line written to the client comes back."""


LAB_FIREWALL = '[[firewall.inbound]]\nproto = "tcp"\n[[firewall.inbound]]\nproto = "icmp"\n'
"""The lab's nodes take TCP from every peer (the tests move data over TCP between them) and
ICMP; a config whose ``extra`` has a ``[firewall]`` of its own gets that instead."""


def _toml_list(items: Sequence[str]) -> str:
    """A TOML array of plain strings."""
    return "[" + ", ".join(f'"{item}"' for item in items) + "]"


def keypair() -> tuple[str, str]:
    """(private, public) WireGuard keys, base64."""
    private = generate_private_key()
    return encode_key(private), encode_key(public_key(private))


def report(request: pytest.FixtureRequest, text: str) -> None:
    """A line for the record (path chosen, timings) on the terminal, whatever the capture."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(text)
    else:  # pragma: no cover - without the terminal reporter plugin
        print(text)


@dataclass
class Node:
    """One ``p2ptun up``: identity, where it runs, its interface and overlay address."""

    name: str
    site: str
    ifname: str
    address: str
    key: str
    pub: str
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    config_path: Path | None = None
    starts: int = 0
    address6: str | None = None
    """An IPv6 overlay address (``fd..::i/64``) beside :attr:`address`, if any."""
    groups: tuple[str, ...] = ()
    """The groups the other nodes' ``[[peer]]`` entries give it (for their firewall rules)."""

    @property
    def tunnel_ip(self) -> str:
        return self.address.split("/")[0]

    @property
    def tunnel_ip6(self) -> str | None:
        return None if self.address6 is None else self.address6.split("/")[0]

    @property
    def addresses(self) -> list[str]:
        """The overlay addresses the node's interface gets."""
        return [self.address] + ([self.address6] if self.address6 else [])

    @property
    def allowed_ips(self) -> list[str]:
        """What a peer routes to this node: its overlay addresses as host routes."""
        ips = [f"{self.tunnel_ip}/32"]
        return ips + ([f"{self.tunnel_ip6}/128"] if self.tunnel_ip6 else [])

    def log(self) -> str:
        """This run's log ('' before the first start)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def handshakes(self) -> int:
        """WireGuard handshakes this run completed."""
        return self.log().count("handshake completed")


@dataclass
class Transfer:
    """A TCP transfer in the tunnel running in the background (see
    :meth:`Deployment.start_transfer`)."""

    dep: Deployment
    size: int
    server: subprocess.Popen[str]
    client: subprocess.Popen[str]

    def finish(self, timeout: float = 90.0) -> dict[str, Any]:
        """Wait (bounded) for both ends; assert length and SHA-256 match; the server's
        result (``bytes``, ``sha256``, ``gaps``: silences between reads, monotonic)."""
        try:
            sent_out, sent_err = self.client.communicate(timeout=timeout)
            got_out, got_err = self.server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"transfer of {self.size} bytes did not finish in {timeout}s\n" + self.dep.logs()
            ) from None
        finally:
            self.dep.lab.stop(self.client)
            self.dep.lab.stop(self.server)
        assert self.client.returncode == 0, sent_err + self.dep.logs()
        sent = json.loads(sent_out.strip().splitlines()[-1])
        lines = got_out.strip().splitlines()
        assert lines, got_err + self.dep.logs()
        got: dict[str, Any] = json.loads(lines[-1])
        assert (got["bytes"], got["sha256"]) == (sent["bytes"], sent["sha256"]), (sent, got)
        assert sent["bytes"] == self.size
        return got


class EchoConnection:
    """One TCP connection inside the tunnel from ``src`` to a line-echo server at ``dst``."""

    def __init__(self, dep: Deployment, src: Node, dst: Node, port: int = 5003) -> None:
        self.server: subprocess.Popen[str] = dep.lab.popen(
            dst.site,
            [sys.executable, "-c", ECHO_SERVER, dst.tunnel_ip, str(port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.server.stdout is not None
        assert wait_for_line(self.server.stdout, "ready", 10.0) is not None, "echo server"
        self.client: subprocess.Popen[str] = dep.lab.popen(
            src.site,
            [sys.executable, "-c", ECHO_CLIENT, dst.tunnel_ip, str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def roundtrip(self, text: str, timeout: float = 30.0) -> str | None:
        """Send one line, return the line that came back (None: nothing within ``timeout``)."""
        assert self.client.stdin is not None and self.client.stdout is not None
        self.client.stdin.write(text + "\n")
        self.client.stdin.flush()
        line = wait_for_line(self.client.stdout, text, timeout)
        return None if line is None else line.strip()


class PingStream:
    """``ping -D`` from ``src`` to ``dst``'s tunnel address every ``interval`` s, at most
    ``duration`` s, its output in a file; :meth:`replies` gives the Unix receive times."""

    def __init__(
        self, dep: Deployment, src: Node, dst: Node, interval: float = 0.1, duration: int = 60
    ) -> None:
        self.dep = dep
        self.path = dep.workdir / f"ping-{src.name}-{dst.name}-{secrets.token_hex(2)}.txt"
        argv = ["ping", "-D", "-n", "-i", str(interval), "-W", "1", "-w", str(duration)]
        with self.path.open("w") as out:
            self.proc: subprocess.Popen[str] = dep.lab.popen(
                src.site, [*argv, dst.tunnel_ip], stdout=out, stderr=subprocess.DEVNULL, text=True
            )

    def stop(self) -> None:
        self.dep.lab.stop(self.proc)

    def replies(self) -> list[float]:
        """Receive times (Unix seconds) of the replies so far."""
        times = []
        for line in self.path.read_text(errors="replace").splitlines():
            reply = parse_reply(line)
            if reply is not None:
                times.append(reply[0])
        return times

    def replies_after(self, t: float) -> int:
        return sum(1 for r in self.replies() if r > t)


@dataclass
class Deployment:
    """A rendezvous on the lab's server and nodes in the site hosts."""

    lab: NatLab
    workdir: Path
    tag: str = field(default_factory=lambda: secrets.token_hex(2))
    rv_key: tuple[str, str] = field(default_factory=keypair)
    turn_secret: str = field(default_factory=lambda: secrets.token_hex(16))
    nodes: list[Node] = field(default_factory=list)
    rendezvous: subprocess.Popen[bytes] | None = None
    rendezvous_extra: str = ""
    """TOML appended to the rendezvous' config (sections such as ``[metrics]``)."""
    stun_extra: str = ""
    """TOML keys added to the rendezvous' ``[stun]`` section (``alternate = ...``)."""
    node_rendezvous: dict[str, str] = field(default_factory=dict)
    """A node's ``[rendezvous] address`` as TOML, by node name (default ``"RV:7070"``;
    a list for a rendezvous cluster)."""

    @classmethod
    def per_site(
        cls, lab: NatLab, workdir: Path, keys: Sequence[tuple[str, str]] | None = None
    ) -> Deployment:
        """One node identity per site of ``lab`` (``n<i>`` at ``site<i>``, overlay address
        10.77.0.i/24, ``keys[i - 1]`` if given), all registered with a rendezvous started on
        the server."""
        dep = cls(lab, workdir)
        for site in lab.sites:
            i = site.index
            dep.add_node(
                f"n{i}",
                f"site{i}",
                f"10.77.0.{i}/24",
                ifname=f"p2p{dep.tag}n{i}",
                keys=keys[i - 1] if keys else None,
            )
        dep.start_rendezvous()
        return dep

    @property
    def run_dir(self) -> Path:
        return self.workdir / "run"

    @property
    def rendezvous_log_path(self) -> Path:
        return self.workdir / "rendezvous.log"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "P2PTUN_RUN_DIR": str(self.run_dir),
            "P2PTUN_STATE_DIR": str(self.workdir / "state"),
        }

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def add_node(
        self,
        name: str,
        site: str,
        address: str,
        ifname: str | None = None,
        keys: tuple[str, str] | None = None,
    ) -> Node:
        """A node identity at ``site`` (``site<i>``); register it before the rendezvous
        starts. The interface name defaults to ``p2p<tag><first letter of name>``, the
        (private, public) keys to new ones."""
        key, pub = keys or keypair()
        node = Node(name, site, ifname or f"p2p{self.tag}{name[0]}", address, key, pub)
        assert all(n.ifname != node.ifname for n in self.nodes), node.ifname
        self.nodes.append(node)
        return node

    # -- rendezvous --------------------------------------------------------------------------

    def start_rendezvous(self, stun_listen: Sequence[str] = ()) -> None:
        """``p2ptun rendezvous`` on the server: signaling on :data:`RV`:7070, STUN and TURN
        on :data:`RV`:3478 (UDP and TCP) and on ``stun_listen`` (more ``ip:port``), ephemeral
        TURN credentials from :attr:`turn_secret`; every node added so far is registered."""
        listens = _toml_list([f"{RV}:3478", *stun_listen])
        nodes = "".join(
            f'[[node]]\nname = "{n.name}"\npublic_key = "{n.pub}"\n' for n in self.nodes
        )
        path = self.workdir / "rendezvous.toml"
        path.write_text(
            f'listen = "{RV}:7070"\nprivate_key = "{self.rv_key[0]}"\n'
            f'database = "{self.workdir}/rv.sqlite"\n'
            f"[stun]\nlisten = {listens}\n{self.stun_extra}"
            f'[turn]\nrealm = "lab"\nrelay_address = "{RV}"\nrelay_ports = "49152-49999"\n'
            f'auth_secret = "{self.turn_secret}"\n'
            # The lab's public addresses are documentation blocks, denied by default.
            'allow_peers = ["192.0.2.0/24", "198.51.100.0/24"]\n' + nodes + self.rendezvous_extra
        )
        path.chmod(0o600)
        with self.rendezvous_log_path.open("ab") as log:
            self.rendezvous = self.lab.popen(
                "server",
                [sys.executable, "-m", "p2ptun", *LOG_LEVEL, "rendezvous", "-c", str(path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env(),
            )

    def rendezvous_log(self, since: int = 0) -> str:
        """The rendezvous' log from byte offset ``since`` (see :meth:`rendezvous_log_size`)."""
        if not self.rendezvous_log_path.exists():
            return ""
        with self.rendezvous_log_path.open("rb") as f:
            f.seek(since)
            return f.read().decode(errors="replace")

    def rendezvous_log_size(self) -> int:
        path = self.rendezvous_log_path
        return path.stat().st_size if path.exists() else 0

    # -- nodes ---------------------------------------------------------------------------------

    def node_config(
        self,
        node: Node,
        *,
        peers: Sequence[Node] | None = None,
        turn: str = "udp",
        turn_servers: Sequence[str] | None = None,
        stun: Sequence[str] | None = None,
        hard_nat: bool | None = None,
        extra: str = "",
        interface_extra: str = "",
        ice_extra: str = "",
    ) -> Path:
        """Write ``node``'s config (atomically, so that a SIGHUP never reads half a file).

        ``peers``: the nodes it knows (default: every other node). ICE: STUN at the
        rendezvous and its TURN with rendezvous-issued credentials over ``turn`` (``udp`` or
        ``tcp``), unless ``stun`` (``host:port`` strings) or ``turn_servers`` (TOML inline
        tables) say otherwise; ``hard_nat`` sets ``[ice] hard_nat`` (default: not written).
        ``extra``: TOML appended (sections such as ``[metrics]`` or ``[relay]``);
        ``interface_extra``: TOML keys added to ``[interface]``; ``ice_extra``: to ``[ice]``."""
        if peers is None:
            peers = [p for p in self.nodes if p is not node]
        if stun is None:
            stun = [f"{RV}:3478"]
        if turn_servers is None:
            turn_servers = [f'{{ url = "turn:{RV}:3478?transport={turn}" }}']
        peer_text = "".join(
            f'[[peer]]\nname = "{p.name}"\npublic_key = "{p.pub}"\n'
            f"allowed_ips = {_toml_list(p.allowed_ips)}\n"
            + (f"groups = {_toml_list(p.groups)}\n" if p.groups else "")
            for p in peers
        )
        stun_text = ", ".join(f'"{s}"' for s in stun)
        rv_address = self.node_rendezvous.get(node.name, f'"{RV}:7070"')
        path = self.workdir / f"{node.name}.toml"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(
            f'name = "{node.name}"\nprivate_key = "{node.key}"\n'
            f'[interface]\nname = "{node.ifname}"\n'
            f"address = {_toml_list(node.addresses)}\n"
            + interface_extra
            + f"[rendezvous]\naddress = {rv_address}\n"
            f'public_key = "{self.rv_key[1]}"\n'
            f"[ice]\nstun = [{stun_text}]\nturn = [{', '.join(turn_servers)}]\n"
            + ("" if hard_nat is None else f"hard_nat = {str(hard_nat).lower()}\n")
            + ice_extra
            + peer_text
            + extra
            + ("" if "firewall" in extra else LAB_FIREWALL)
        )
        tmp.chmod(0o600)
        os.replace(tmp, path)
        node.config_path = path
        return path

    def start_node(self, node: Node, **config: Any) -> None:
        """Write ``node``'s config (``config``: see :meth:`node_config`) and start
        ``p2ptun up``; each start logs to a file of its own."""
        assert node.proc is None or node.proc.poll() is not None, f"{node.name} runs already"
        path = self.node_config(node, **config)
        node.starts += 1
        suffix = "" if node.starts == 1 else f".{node.starts}"
        node.log_path = self.workdir / f"{node.name}{suffix}.log"
        with node.log_path.open("ab") as log:
            node.proc = self.lab.popen(
                node.site,
                [sys.executable, "-m", "p2ptun", *LOG_LEVEL, "up", "-c", str(path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env(),
            )

    def running(self) -> list[Node]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def stop_node(self, node: Node) -> int | None:
        """SIGTERM (SIGKILL after 5 s) by PID; the exit status."""
        if node.proc is None:
            return None
        return self.lab.stop(node.proc)

    def stop_nodes(self) -> dict[str, int | None]:
        """Stop every running node, all at once (SIGTERM to each by PID, then wait; SIGTERM
        again and SIGKILL after 10 s); their exit statuses by name."""
        running = self.running()
        for node in running:
            assert node.proc is not None
            with contextlib.suppress(ProcessLookupError):
                node.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10.0
        codes = {}
        for node in running:
            assert node.proc is not None
            # One SIGTERM only: a second one during the shutdown may find the default handler.
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            codes[node.name] = self.stop_node(node)  # SIGKILL if it is still there
        return codes

    def stop_all(self) -> None:
        """The nodes first (so that they can say goodbye), then the rendezvous."""
        self.stop_nodes()
        if self.rendezvous is not None:
            self.lab.stop(self.rendezvous)

    def fresh_sites(self, *nodes: Node) -> None:
        """Forget the NAT mappings earlier tests left at these nodes' sites."""
        for node in nodes:
            if self.lab.site(node.site).nat != "none":
                self.lab.flush_nat(node.site)

    # -- status --------------------------------------------------------------------------------

    def status(self, node: Node) -> dict[str, Any]:
        """``p2ptun status --json`` of ``node`` ({} if it does not answer)."""
        out = subprocess.run(
            [sys.executable, "-m", "p2ptun", "status", "--json", "--interface", node.ifname],
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=15,
        )
        if out.returncode != 0:
            return {}
        status: dict[str, Any] = json.loads(out.stdout)
        return status

    def debug(self, node: Node) -> dict[str, Any]:
        """The node's internals (its control socket's ``debug``: the data path's counters and
        more, not the status contract)."""
        reply = control.request(str(self.run_dir / f"{node.ifname}.sock"), {"cmd": "debug"}, 10.0)
        assert reply.get("ok"), reply
        debug: dict[str, Any] = reply["debug"]
        return debug

    def peer_status(self, node: Node, peer: Node) -> dict[str, Any]:
        for entry in self.status(node).get("peers", []):
            if entry["name"] == peer.name:
                return dict(entry)
        return {}

    def wait_ready(self, node: Node, timeout: float = 15.0) -> None:
        """Until ``node``'s control socket answers (its interface is up by then)."""
        try:
            wait_until(lambda: self.status(node), timeout, interval=0.1, what=f"{node.name} up")
        except TimeoutError:
            raise AssertionError(f"{node.name} did not come up:\n" + self.logs()) from None

    def wait_connected(
        self, nodes: Sequence[Node] | None = None, timeout: float = CONNECT_TIMEOUT
    ) -> None:
        """Until every pair among ``nodes`` (default: all) is ``connected`` both ways."""
        group = list(self.nodes if nodes is None else nodes)

        def all_connected() -> bool:
            return all(
                self.peer_status(a, b).get("state") == "connected"
                for a in group
                for b in group
                if a is not b
            )

        try:
            wait_until(all_connected, timeout, interval=0.2, what="all peers connected")
        except TimeoutError:
            raise AssertionError("nodes did not connect:\n" + self.logs()) from None

    def wait_path(self, a: Node, b: Node, path: str, timeout: float = 15.0) -> dict[str, Any]:
        """Until both ``a`` and ``b`` report ``path`` for each other; ``a``'s entry for ``b``."""
        found: dict[str, dict[str, Any]] = {}

        def both() -> bool:
            found["a"], found["b"] = self.peer_status(a, b), self.peer_status(b, a)
            return bool(found["a"].get("path") == path and found["b"].get("path") == path)

        try:
            wait_until(both, timeout, interval=0.2, what=f"path {path}")
        except TimeoutError:
            raise AssertionError(
                f"path is not {path!r}: {a.name}: {found.get('a')} {b.name}: {found.get('b')}\n"
                + self.logs()
            ) from None
        return found["a"]

    def logs(self, lines: int = 30) -> str:
        """The last lines of the rendezvous' log and of each node's current log."""
        parts = []
        paths = [self.rendezvous_log_path] + [n.log_path for n in self.nodes if n.log_path]
        for path in paths:
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(parts)

    # -- traffic -------------------------------------------------------------------------------

    def ping(self, src: Node, dst: Node, count: int = 3) -> subprocess.CompletedProcess[str]:
        """``ping -c count`` from ``src``'s host to ``dst``'s tunnel address."""
        return self.lab.exec(
            src.site, "ping", "-c", str(count), "-i", "0.2", "-W", "2", dst.tunnel_ip, timeout=30
        )

    def assert_ping(self, src: Node, dst: Node, count: int = 3) -> None:
        result = self.ping(src, dst, count)
        assert result.returncode == 0, result.stdout + result.stderr + self.logs()

    def first_ping(self, src: Node, dst: Node, timeout: float = CONNECT_TIMEOUT) -> float:
        """Ping every 0.1 s until the first reply (at most ``timeout`` s); the moment it came
        (``time.monotonic()``)."""
        result = self.lab.exec(
            src.site,
            *("ping", "-n", "-c", "1", "-i", "0.1", "-W", "1", "-w", str(int(timeout))),
            dst.tunnel_ip,
            timeout=timeout + 10,
        )
        got = time.monotonic()
        assert result.returncode == 0, (
            f"no ping reply {src.name} -> {dst.name} within {timeout}s\n" + self.logs()
        )
        return got

    def start_transfer(
        self, src: Node, dst: Node, size: int, port: int = 5001, rate: float = 0.0
    ) -> Transfer:
        """Start sending ``size`` random bytes from ``src`` to ``dst`` over TCP inside the
        tunnel (at most ``rate`` bytes/s; 0: full speed); :meth:`Transfer.finish` checks."""
        server: subprocess.Popen[str] = self.lab.popen(
            dst.site,
            [sys.executable, "-c", TCP_SERVER, dst.tunnel_ip, str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None
        if wait_for_line(server.stdout, "ready", 10.0) is None:
            self.lab.stop(server)
            raise AssertionError(f"TCP server in {dst.site} did not start")
        argv = [TCP_CLIENT, dst.tunnel_ip, str(port), str(secrets.randbits(32)), str(size)]
        client: subprocess.Popen[str] = self.lab.popen(
            src.site,
            [sys.executable, "-c", *argv, str(rate)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        return Transfer(self, size, server, client)

    def tcp_transfer(self, src: Node, dst: Node, size: int, port: int = 5001) -> dict[str, Any]:
        """``size`` random bytes from ``src`` to ``dst`` over TCP in the tunnel; SHA-256 and
        length must match at both ends."""
        return self.start_transfer(src, dst, size, port).finish()


WHOAMI_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(8)
print("ready", flush=True)
while True:
    c, peer = s.accept()
    c.sendall(peer[0].encode() + b"\\n")
    c.close()
"""
"""Answers every TCP connection with the address it came from."""

WHOAMI_CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
print(c.makefile().readline().strip())
"""


def routing_snapshot(lab: NatLab, site: str) -> dict[str, str]:
    """What the node may change and must put back: rules, every routing table, nftables.
    (IPv6 link-local and multicast routes of the lab's links come and go with duplicate
    address detection on their own; the node adds none.)"""
    return {
        argv: "".join(
            line
            for line in lab.exec(site, *argv.split(), check=True).stdout.splitlines(True)
            if "fe80::" not in line and "ff00::/8" not in line
        )
        for argv in (
            "ip -4 rule",
            "ip -6 rule",
            "ip -4 route show table all",
            "ip -6 route show table all",
            "nft list ruleset",
        )
    }


def wait_log(node: Node, text: str, timeout: float = 15.0) -> None:
    """Wait until ``node``'s log holds ``text``; fail with the log's tail after ``timeout``."""
    try:
        wait_until(lambda: text in node.log(), timeout, what=f"{text!r} in {node.name}'s log")
    except TimeoutError:
        raise AssertionError(f"no {text!r} in {node.name}'s log:\n{node.log()[-3000:]}") from None

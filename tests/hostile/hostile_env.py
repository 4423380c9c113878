"""What the hostile-client tests share: a real ``p2ptun rendezvous`` on loopback, a legitimate
node that registers through it, and the resource figures of a process.

Every server binds free loopback ports, so tests never collide with other work on the machine.
Attackers send from 127.0.0.1, the legitimate node from 127.0.0.2 (the whole of 127.0.0.0/8
is loopback on Linux), so per-source limits tell them apart as they would on the internet.
Every loop is bounded in count and time; every process started is stopped by its PID.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from p2plab.tlscert import self_signed
from p2ptun.keys import encode_key, generate_private_key, public_key
from p2ptun.signal.client import RegistrationRefused, SignalClientCore

ATTACKER = "127.0.0.1"
LEGIT = "127.0.0.2"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both TCP and UDP on ``host`` (the OS picks it: bind port 0)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
            return int(port)
    raise RuntimeError("no free port")


def free_range(size: int = 64) -> tuple[int, int]:
    """``size`` consecutive UDP ports that were free a moment ago (for relay ports)."""
    for _ in range(50):
        base = free_port()
        if base + size > 65535:
            continue
        ok = True
        for port in range(base, base + size):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base, base + size - 1
    raise RuntimeError("no free port range")


@dataclass(frozen=True)
class ProcStats:
    """CPU seconds (user + system), resident memory and open descriptors of a process."""

    cpu: float
    rss_kib: int
    fds: int


def proc_stats(pid: int) -> ProcStats:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return ProcStats(cpu, rss, fds)


@dataclass
class Rendezvous:
    """A ``p2ptun rendezvous`` subprocess on loopback: signaling, STUN/TURN over UDP and TCP,
    TURN over TLS when asked. ``nodes`` are the ``[[node]]`` entries (name -> private key)."""

    workdir: Path
    open_registration: bool = False
    tls: bool = False
    extra: str = ""
    nodes: dict[str, bytes] = field(default_factory=dict)
    key: bytes = field(default_factory=generate_private_key)
    turn_user: tuple[str, str] = ("hostile", "hostile-password-1")
    turn_secret: str = "a-long-shared-turn-secret-for-tests"
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.signal_addr = ("127.0.0.1", free_port())
        self.stun_addr = ("127.0.0.1", free_port())
        self.tls_addr = ("127.0.0.1", free_port()) if self.tls else None
        self.relay_ports = free_range()
        self.log_path = self.workdir / "rendezvous.log"

    @property
    def public(self) -> bytes:
        return public_key(self.key)

    def add_node(self, name: str) -> bytes:
        key = generate_private_key()
        self.nodes[name] = key
        return key

    def config_text(self) -> str:
        nodes = "".join(
            f'[[node]]\nname = "{n}"\npublic_key = "{encode_key(public_key(k))}"\n'
            for n, k in self.nodes.items()
        )
        tls = ""
        if self.tls_addr is not None:
            cert, key = self_signed(self.workdir)
            tls = (
                f'tls_listen = ["127.0.0.1:{self.tls_addr[1]}"]\n'
                f'tls_cert = "{cert}"\ntls_key = "{key}"\n'
            )
        low, high = self.relay_ports
        user, password = self.turn_user
        return (
            f'listen = "127.0.0.1:{self.signal_addr[1]}"\n'
            f'private_key = "{encode_key(self.key)}"\n'
            f'database = "{self.workdir}/rv.sqlite"\n'
            f"open_registration = {'true' if self.open_registration else 'false'}\n"
            f"{self.extra}"
            f'[stun]\nlisten = ["127.0.0.1:{self.stun_addr[1]}"]\n'
            f'[turn]\nrealm = "hostile"\nrelay_address = "127.0.0.1"\n'
            f'relay_ports = "{low}-{high}"\nusers = {{ {user} = "{password}" }}\n'
            f'auth_secret = "{self.turn_secret}"\nallow_peers = ["127.0.0.0/8"]\n'
            f"{tls}" + nodes
        )

    def start(self, env: dict[str, str] | None = None) -> Rendezvous:
        path = self.workdir / "rendezvous.toml"
        path.write_text(self.config_text())
        path.chmod(0o600)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "p2ptun", "rendezvous", "-c", str(path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + 15
        addresses = [self.signal_addr, self.stun_addr]
        if self.tls_addr is not None:
            addresses.append(self.tls_addr)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rendezvous exited: {self.log()}")
            try:
                for address in addresses:
                    socket.create_connection(address, timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"rendezvous did not come up: {self.log()}")

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        self.proc = None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stats(self) -> ProcStats:
        return proc_stats(self.pid)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextlib.contextmanager
def rendezvous(workdir: Path, **kwargs: object) -> Iterator[Rendezvous]:
    rv = Rendezvous(workdir, **kwargs)  # type: ignore[arg-type]
    try:
        yield rv.start()
    finally:
        rv.stop()


class Refused(Exception):
    """The rendezvous refused the registration (the reason is the message)."""


def register(
    address: tuple[str, int],
    rendezvous_key: bytes,
    name: str,
    key: bytes,
    *,
    source: str = LEGIT,
    timeout: float = 5.0,
    peers: dict[str, bytes] | None = None,
    hold: Callable[[SignalClientCore, socket.socket], None] | None = None,
) -> float:
    """Connect from ``source``, handshake and register as ``name``; the seconds it took.
    ``hold(core, sock)`` runs once registered, before the connection closes. Raises
    TimeoutError, :class:`Refused`, or ConnectionError when the rendezvous hangs up."""
    start = time.monotonic()
    core = SignalClientCore(
        name=name,
        private_key=key,
        rendezvous_key=rendezvous_key,
        peers=peers or {},
        rng=os.urandom,
        random=lambda: 0.5,
        wall_clock=time.time,
        now=start,
    )
    assert core.poll_connect(start)
    sock = socket.create_connection(address, timeout=timeout, source_address=(source, 0))
    try:
        core.connection_made(time.monotonic())
        deadline = start + timeout
        while not core.ready:
            out = core.data_to_send()
            if out:
                sock.sendall(out)
            for event in core.events():
                if isinstance(event, RegistrationRefused):
                    raise Refused(f"{event.reason.name}: {event.text}")
            if not core.connected:
                raise ConnectionError("the rendezvous ended the connection")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"not registered within {timeout} s")
            sock.settimeout(remaining)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                raise TimeoutError(f"not registered within {timeout} s") from None
            if not data:
                raise ConnectionError("the rendezvous closed the connection")
            core.data_received(data, time.monotonic())
        elapsed = time.monotonic() - start
        if hold is not None:
            out = core.data_to_send()
            if out:
                sock.sendall(out)
            hold(core, sock)
        return elapsed
    finally:
        sock.close()


def log_lines(text: str, level: str, needle: str = "") -> int:
    """Lines of ``text`` at ``level`` (``warning``, ``info``...) containing ``needle``."""
    return sum(
        1
        for line in text.splitlines()
        if (f" {level} " in line or line.startswith(f"{level} ")) and needle in line
    )


class TurnProbe:
    """A blocking long-term-credential STUN/TURN client over one UDP or TCP socket (RFC 8656
    §5): :meth:`request` answers a 401/438 with the realm and nonce and signs from then on."""

    def __init__(
        self,
        server: tuple[str, int],
        user: str,
        password: str,
        realm: str = "hostile",
        *,
        tcp: bool = False,
        source: str = LEGIT,
        timeout: float = 5.0,
    ) -> None:
        from p2ptun.stun import long_term_key

        self.server = server
        self.user = user
        self.realm = realm
        self.key = long_term_key(user, realm, password)
        self.nonce: str | None = None
        self.tcp = tcp
        if tcp:
            self.sock = socket.create_connection(
                server, timeout=timeout, source_address=(source, 0)
            )
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind((source, 0))
            self.sock.settimeout(timeout)
        self._buf = b""

    def close(self) -> None:
        self.sock.close()

    def send_raw(self, data: bytes) -> None:
        if self.tcp:
            self.sock.sendall(data)
        else:
            self.sock.sendto(data, self.server)

    def receive(self) -> bytes:
        """One message or ChannelData frame."""
        if not self.tcp:
            data, _ = self.sock.recvfrom(65536)
            return data
        from p2ptun.stun import channel_data_frame_length, message_length

        while True:
            if len(self._buf) >= 4:
                first = self._buf[0]
                size = (
                    channel_data_frame_length(self._buf)
                    if 0x40 <= first <= 0x7F
                    else message_length(self._buf)
                )
                if size is not None and len(self._buf) >= size:
                    frame, self._buf = self._buf[:size], self._buf[size:]
                    return frame
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed the connection")
            self._buf += data

    def request(self, method: int, attrs: list[tuple[int, object]] | None = None) -> object:
        """Send a request (signed once a nonce is known) and return the decoded answer."""
        from p2ptun.stun import AttrType, Message

        for _ in range(3):
            msg = Message.request(method, os.urandom(12), list(attrs or []))
            if self.nonce is None:
                wire = msg.encode()
            else:
                msg.add(AttrType.USERNAME, self.user).add(AttrType.REALM, self.realm)
                msg.add(AttrType.NONCE, self.nonce)
                wire = msg.encode(self.key)
            self.send_raw(wire)
            while True:
                answer = Message.decode(self.receive())
                if answer.transaction_id == msg.transaction_id:
                    break
            code = answer.error_code.code if answer.error_code is not None else None
            if (
                code in (401, 438)
                and answer.nonce is not None
                and (self.nonce is None or code == 438)
            ):
                self.nonce = answer.nonce
                continue
            return answer
        return answer

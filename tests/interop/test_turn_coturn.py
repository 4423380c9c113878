"""Our TURN client against coturn (and against our own TURN server), in the NAT lab.

The client is the node's own relay shell, :class:`p2ptun.net.turn_shared.TurnRelay` over the
sans-I/O :class:`p2ptun.turn.client.TurnClient`: over UDP through a shared-socket mux, over
TCP and TLS on a connection of its own.

Topology: the client runs in ``site1`` behind a port-restricted NAT; coturn runs in the
``server`` namespace on 203.0.113.10; the UDP peer is an echo program in ``site2``, a public
(un-NATed) host. The echo answers each datagram with ``"<source ip>:<port>|"`` + the data, so
the client sees both directions and which address the peer saw (the relayed one).

This file is also the program that runs inside the namespaces (``python test_turn_coturn.py
client|echo JSON``): the test process stays in the root namespace and reads one JSON line back.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from p2plab.tlscert import ca_and_server

SERVER_IP = "203.0.113.10"
TURN_PORT = 3478
TLS_PORT = 5349
REALM = "lab"
USER, PASSWORD = "alice", "wonderland"
ECHO_PORT = 7000

pytestmark = pytest.mark.lab


# ---------------------------------------------------------------- the in-namespace programs


async def _roundtrip(
    relay: Any, inbox: Any, peer: tuple[str, int], payload: bytes
) -> dict[str, Any]:
    """Relay ``payload`` to the echo and wait for its answer; ``channel`` is the channel the
    answer came on (None: a Data indication)."""
    import trio

    counters = relay.client.counters
    channel_data = counters.rx_channel_data
    relay.send(peer, payload)
    with trio.move_on_after(3):
        while True:
            source, data = await inbox.receive()
            if data.endswith(b"|" + payload):
                seen = data.split(b"|", 1)[0].decode()
                state = relay.client.channel(peer)
                by_channel = counters.rx_channel_data > channel_data and state is not None
                channel = state[0] if by_channel else None
                return {"ok": True, "channel": channel, "seen": seen, "from": source}
    return {"ok": False}


async def _allocate(nursery: Any, cfg: dict[str, Any], events: list[str], inbox: Any = None) -> Any:
    """One allocation through the node's own relay shell (:class:`TurnRelay`), run in
    ``nursery``: over UDP from a shared-socket mux of its own, over TCP/TLS on its own
    connection. The names of its events go to ``events``, relayed data to ``inbox``. Raises
    RuntimeFailure if it cannot be made."""
    import socket

    from p2ptun.net.dispatch import Dispatcher
    from p2ptun.net.mux import UdpMux
    from p2ptun.net.system import SystemHost
    from p2ptun.net.turn_relay import TurnRelay
    from p2ptun.net.udp import UdpEndpoint

    def on_event(relay: Any, event: Any) -> None:
        events.append(type(event).__name__)

    def on_data(relay: Any, peer: tuple[str, int], data: bytes) -> None:
        events.append("PeerData")
        if inbox is not None:
            inbox.send_nowait((peer, data))

    server = (cfg["host"], cfg["port"])
    credentials = (cfg["username"], cfg["password"])
    options = {"random": os.urandom, "on_event": on_event, "on_data": on_data}
    options.update(cfg.get("options", {}))
    transport = cfg.get("transport", "udp")
    if transport == "udp":
        endpoint = UdpEndpoint.bind(socket.AF_INET6 if ":" in cfg["host"] else socket.AF_INET)
        mux = UdpMux([endpoint])
        dispatcher = Dispatcher(stun=mux.on_stun, channel_data=mux.on_channel_data)
        nursery.start_soon(endpoint.receive_loop, dispatcher)
        relay = TurnRelay.udp(mux, server, *credentials, **options)
    else:
        relay = TurnRelay.stream(
            SystemHost(),
            server,
            *credentials,
            transport=transport,
            ca_file=cfg.get("ca_file"),
            **options,
        )
    await nursery.start(partial(relay.run, timeout=cfg.get("timeout", 15), close_timeout=5))
    return relay


async def _wait_for(events: list[str], done: str, failed: str, timeout: float = 10.0) -> None:
    """Wait until ``done`` is among the events; RuntimeFailure on ``failed`` or a timeout."""
    import trio

    from p2ptun.errors import RuntimeFailure

    with trio.move_on_after(timeout):
        while done not in events and failed not in events:
            await trio.sleep(0.01)
    if done not in events:
        raise RuntimeFailure(f"no {done} within {timeout:g} s: {events}")


async def _client(cfg: dict[str, Any]) -> dict[str, Any]:
    import trio

    from p2ptun.errors import RuntimeFailure

    result: dict[str, Any] = {"events": [], "rounds": []}
    events: list[str] = result["events"]
    peer = (cfg["peer"][0], cfg["peer"][1]) if cfg.get("peer") else None
    inbox_send, inbox = trio.open_memory_channel[tuple[tuple[str, int], bytes]](256)

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        try:
            relay = await _allocate(nursery, cfg, events, inbox_send)
            result["relayed"] = list(relay.relayed)
            result["mapped"] = list(relay.mapped) if relay.mapped else None
            if cfg.get("second"):
                try:
                    second = await _allocate(nursery, cfg, events)
                    result["second"] = "allocated"
                    await second.aclose()
                except RuntimeFailure as exc:
                    result["second"] = str(exc)
            if peer is not None:
                relay.create_permission(peer[0])
                await _wait_for(events, "PermissionCreated", "PermissionFailed")
                result["rounds"].append(await _roundtrip(relay, inbox, peer, b"send-1"))
                if cfg.get("channel"):
                    relay.bind_channel(peer)
                    await _wait_for(events, "ChannelBound", "ChannelBindFailed")
                    result["channel"] = relay.client.channel(peer)[0]
                    result["rounds"].append(await _roundtrip(relay, inbox, peer, b"chan-1"))
                n = 0
                while trio.current_time() - start < cfg.get("hold", 0):
                    await trio.sleep(1)
                    n += 1
                    result["rounds"].append(await _roundtrip(relay, inbox, peer, b"hold-%d" % n))
            result["refreshes"] = events.count("AllocationRefreshed")
            result["stale_nonces"] = relay.client.counters.stale_nonces
            result["elapsed"] = trio.current_time() - start
            await relay.aclose()  # deallocates: the last event is Deallocated
        except RuntimeFailure as exc:
            result["error"] = str(exc)
        nursery.cancel_scope.cancel()  # the UDP endpoints' receive loops
    return result


def _echo(cfg: dict[str, Any]) -> None:
    import socket

    sock = socket.socket(
        socket.AF_INET6 if ":" in cfg["host"] else socket.AF_INET, socket.SOCK_DGRAM
    )
    sock.bind((cfg["host"], cfg["port"]))
    print('"ready"', flush=True)
    deadline = time.monotonic() + cfg.get("lifetime", 120)
    sock.settimeout(1.0)
    while time.monotonic() < deadline:
        try:
            data, src = sock.recvfrom(65536)
        except TimeoutError:
            continue
        sock.sendto(f"{src[0]}:{src[1]}|".encode() + data, src)


def main(argv: list[str]) -> int:
    mode, cfg = argv[0], json.loads(argv[1])
    if mode == "echo":
        _echo(cfg)
        return 0
    import trio

    print(json.dumps(trio.run(_client, cfg)), flush=True)
    return 0


# ---------------------------------------------------------------- fixtures and helpers


class Coturn:
    """``turnserver`` in the lab's server namespace, stopped by PID."""

    def __init__(self, lab: Any, args: list[str], tls: tuple[Path, Path] | None = None) -> None:
        self.lab = lab
        self.dir = Path(tempfile.mkdtemp(prefix=f"{lab.prefix}-turn-"))
        lab.add_cleanup(lambda: shutil.rmtree(self.dir, ignore_errors=True))
        argv = [
            "turnserver",
            "-n",
            "--no-cli",
            "--no-dtls",
            "--listening-ip",
            SERVER_IP,
            "--relay-ip",
            SERVER_IP,
            "--listening-port",
            str(TURN_PORT),
            "--min-port",
            "49152",
            "--max-port",
            "49999",
            "--realm",
            REALM,
            "--fingerprint",
            "--pidfile",
            str(self.dir / "turn.pid"),
            "--log-file",
            str(self.dir / "turn.log"),
            "--simple-log",
            "--no-stdout-log",
            "--userdb",
            str(self.dir / "turndb"),
        ]
        if tls is None:
            argv.append("--no-tls")
        else:
            argv += ["--tls-listening-port", str(TLS_PORT), "--cert", str(tls[0])]
            argv += ["--pkey", str(tls[1])]
        argv += args
        self.argv = argv
        self.proc = lab.popen(
            "server", argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        want = {f"{SERVER_IP}:{TURN_PORT}"} | ({f"{SERVER_IP}:{TLS_PORT}"} if tls else set())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"turnserver exited: {self.proc.stderr.read()[-500:]}")
            udp = lab.exec("server", "ss", "-Hlun", timeout=5).stdout
            tcp = lab.exec("server", "ss", "-Hltn", timeout=5).stdout
            bound_udp = {ln.split()[3] for ln in udp.splitlines() if len(ln.split()) > 3}
            bound_tcp = {ln.split()[3] for ln in tcp.splitlines() if len(ln.split()) > 3}
            if f"{SERVER_IP}:{TURN_PORT}" in bound_udp and want <= bound_tcp:
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("turnserver did not bind its ports within 10 s")

    @property
    def log(self) -> str:
        for path in sorted(self.dir.glob("turn*.log")):
            return path.read_text(errors="replace")
        return ""

    def stop(self) -> None:
        self.lab.stop(self.proc)


class OurServer:
    """``p2ptun rendezvous`` (its embedded STUN/TURN server) in the server namespace."""

    def __init__(
        self,
        lab: Any,
        *,
        tls: tuple[Path, Path] | None = None,
        quota: int | None = None,
        secret: str | None = None,
    ) -> None:
        from p2ptun import keys

        self.lab = lab
        self.dir = Path(tempfile.mkdtemp(prefix=f"{lab.prefix}-rv-"))
        lab.add_cleanup(lambda: shutil.rmtree(self.dir, ignore_errors=True))
        private = keys.encode_key(keys.generate_private_key())
        lines = [
            f'listen = "{SERVER_IP}:7070"',
            f'private_key = "{private}"',
            f'database = "{self.dir / "rv.sqlite"}"',
            "open_registration = true",
            "[stun]",
            f'listen = ["{SERVER_IP}:{TURN_PORT}"]',
            "[turn]",
            f'realm = "{REALM}"',
            f'relay_address = "{SERVER_IP}"',
            'relay_ports = "49152-49999"',
            'allow_peers = ["192.0.2.0/24"]',
        ]
        if secret is not None:
            lines.append(f'auth_secret = "{secret}"')
        else:
            lines.append(f'users = {{ {USER} = "{PASSWORD}" }}')
        if quota is not None:
            lines.append(f"user_quota = {quota}")
        if tls is not None:
            lines += [
                f'tls_listen = ["{SERVER_IP}:{TLS_PORT}"]',
                f'tls_cert = "{tls[0]}"',
                f'tls_key = "{tls[1]}"',
            ]
        config = self.dir / "rendezvous.toml"
        config.write_text("\n".join(lines) + "\n")
        self.argv = [sys.executable, "-m", "p2ptun", "rendezvous", "-c", str(config)]
        self.proc = lab.popen(
            "server", self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        want = {f"{SERVER_IP}:{TURN_PORT}"} | ({f"{SERVER_IP}:{TLS_PORT}"} if tls else set())
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"p2ptun rendezvous exited: {self.proc.stderr.read()[-800:]}")
            tcp = lab.exec("server", "ss", "-Hltn", timeout=5).stdout
            bound_tcp = {ln.split()[3] for ln in tcp.splitlines() if len(ln.split()) > 3}
            if want <= bound_tcp:
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("p2ptun rendezvous did not bind its ports within 15 s")

    @property
    def log(self) -> str:
        return ""

    def stop(self) -> None:
        self.lab.stop(self.proc)


SERVERS = ["coturn", "ours"]


def start_server(
    kind: str,
    factory: Any,
    lab: Any,
    *,
    tls: tuple[Path, Path] | None = None,
    quota: int | None = None,
    secret: str | None = None,
) -> Any:
    """Start coturn or our server with static user alice (or REST secret ``secret``)."""
    if kind == "ours":
        server = OurServer(lab, tls=tls, quota=quota, secret=secret)
        lab.add_cleanup(server.stop)
        return server
    args = LT_CRED if secret is None else ["--use-auth-secret", f"--static-auth-secret={secret}"]
    if quota is not None:
        args = [*args, "--user-quota", str(quota)]
    return factory(args, tls=tls)


@pytest.fixture
def lab(natlab: Any) -> Any:
    return natlab(["prc", "none"])


@pytest.fixture
def echo(lab: Any) -> tuple[str, int]:
    from p2plab.natlab import wait_for_line

    host = lab.site(2).host_addr
    cfg = json.dumps({"host": host, "port": ECHO_PORT, "lifetime": 120})
    proc = lab.popen(
        "site2",
        [sys.executable, __file__, "echo", cfg],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if wait_for_line(proc.stdout, '"ready"', 10) is None:
        lab.stop(proc)
        pytest.fail(f"echo peer did not start: {proc.stderr.read()}")
    return host, ECHO_PORT


@pytest.fixture
def coturn_factory(lab: Any) -> Iterator[Any]:
    started: list[Coturn] = []

    def start(args: list[str], tls: tuple[Path, Path] | None = None) -> Coturn:
        server = Coturn(lab, args, tls)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def run_client(lab: Any, cfg: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
    cfg.setdefault("host", SERVER_IP)
    cfg.setdefault("port", TURN_PORT)
    cfg.setdefault("username", USER)
    cfg.setdefault("password", PASSWORD)
    proc = lab.exec("site1", sys.executable, __file__, "client", json.dumps(cfg), timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


LT_CRED = ["--lt-cred-mech", f"--user={USER}:{PASSWORD}"]


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_allocate_and_relay_both_ways(
    lab: Any,
    echo: tuple[str, int],
    coturn_factory: Any,
    tmp_path: Path,
    transport: str,
    server: str,
) -> None:
    """Allocate through a NAT; data client -> peer -> client by Send/Data, then a channel."""
    ca, cert, key = ca_and_server(tmp_path, SERVER_IP)
    start_server(server, coturn_factory, lab, tls=(cert, key) if transport == "tls" else None)
    cfg: dict[str, Any] = {"transport": transport, "peer": list(echo), "channel": True}
    if transport == "tls":
        cfg["port"] = TLS_PORT
        cfg["ca_file"] = str(ca)
    result = run_client(lab, cfg)
    assert "error" not in result, result
    relayed = tuple(result["relayed"])
    assert relayed[0] == SERVER_IP
    assert result["mapped"][0] == lab.site(1).mapped_addr  # the NAT's public address
    send_round, chan_round = result["rounds"]
    assert send_round["ok"] and send_round["channel"] is None
    assert chan_round["ok"] and chan_round["channel"] == result["channel"] == 0x4000
    for r in (send_round, chan_round):
        assert r["seen"] == f"{relayed[0]}:{relayed[1]}"  # the peer saw the relayed address
        assert tuple(r["from"]) == echo
    assert result["events"][:4] == [
        "AllocationSucceeded",
        "PermissionCreated",
        "PeerData",
        "ChannelBound",
    ]
    assert result["events"][-1] == "Deallocated"


def test_tls_rejects_an_unknown_certificate(lab: Any, coturn_factory: Any, tmp_path: Path) -> None:
    _ca, cert, key = ca_and_server(tmp_path, SERVER_IP)
    other = tmp_path / "other"
    other.mkdir()
    other_ca, _, _ = ca_and_server(other, SERVER_IP)
    coturn_factory(LT_CRED, tls=(cert, key))
    result = run_client(
        lab, {"transport": "tls", "port": TLS_PORT, "ca_file": str(other_ca), "timeout": 10}
    )
    assert "TLS handshake" in result["error"] and "certificate verify failed" in result["error"]


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_refreshes_keep_allocation_permission_and_channel_alive(
    lab: Any, echo: tuple[str, int], coturn_factory: Any, transport: str
) -> None:
    """coturn with 4 s permissions, 6 s channels and 3 s nonces: over 14 s every round trip
    works, by Send/Data and by channel, because the client refreshes all of them (and retries
    on 438 Stale Nonce). coturn never grants allocations below 600 s, so the allocation refresh
    is exercised with ``refresh_interval`` instead."""
    coturn_factory([*LT_CRED, "--permission-lifetime=4", "--channel-lifetime=6", "--stale-nonce=3"])
    options = {
        "permission_lifetime": 4,
        "permission_refresh": 2,
        "channel_lifetime": 6,
        "channel_refresh": 3,
        "refresh_interval": 2,
    }
    result = run_client(
        lab,
        {
            "transport": transport,
            "peer": list(echo),
            "channel": True,
            "hold": 14,
            "options": options,
        },
    )
    assert "error" not in result, result
    rounds = result["rounds"]
    assert len(rounds) >= 12 and all(r["ok"] for r in rounds), rounds
    assert all(r["channel"] == 0x4000 for r in rounds[1:])
    assert result["elapsed"] > 14
    assert result["refreshes"] >= 5
    assert result["stale_nonces"] >= 1  # the 3 s nonces went stale and were renewed
    assert "PermissionFailed" not in result["events"]
    assert "ChannelBindFailed" not in result["events"]


@pytest.mark.slow
def test_without_permission_refresh_the_relay_stops(
    lab: Any, echo: tuple[str, int], coturn_factory: Any
) -> None:
    """The control for the test above: the same 4 s permissions, refreshed too late."""
    coturn_factory([*LT_CRED, "--permission-lifetime=4"])
    options = {"permission_lifetime": 300, "permission_refresh": 240}
    result = run_client(lab, {"peer": list(echo), "hold": 8, "options": options})
    assert result["rounds"][0]["ok"]
    assert not result["rounds"][-1]["ok"]


@pytest.mark.parametrize("server", SERVERS)
def test_wrong_password_is_a_clear_failure(lab: Any, coturn_factory: Any, server: str) -> None:
    start_server(server, coturn_factory, lab)
    result = run_client(lab, {"password": "not-it", "timeout": 10})
    error = result["error"]
    assert "401" in error and "rejected the username or password" in error
    assert "'alice'" in error and SERVER_IP in error


@pytest.mark.parametrize("server", SERVERS)
def test_quota_exceeded_is_a_clear_486(lab: Any, coturn_factory: Any, server: str) -> None:
    start_server(server, coturn_factory, lab, quota=1)
    result = run_client(lab, {"second": True, "timeout": 10})
    assert "error" not in result, result
    assert "486" in result["second"] and "quota" in result["second"], result


@pytest.mark.parametrize("server", SERVERS)
def test_rest_api_ephemeral_credentials(
    lab: Any, echo: tuple[str, int], coturn_factory: Any, server: str
) -> None:
    from p2ptun.turn.credentials import make_rest_credential

    secret = "lab-shared-secret-0123456789"
    start_server(server, coturn_factory, lab, secret=secret)
    good = make_rest_credential(secret, "alice", time.time(), 3600)
    result = run_client(
        lab, {"username": good.username, "password": good.password, "peer": list(echo)}
    )
    assert "error" not in result, result
    assert result["rounds"][0]["ok"]
    expired = make_rest_credential(secret, "alice", time.time() - 7200, 3600)
    result = run_client(
        lab, {"username": expired.username, "password": expired.password, "timeout": 10}
    )
    assert "401" in result["error"]
    forged = make_rest_credential("wrong-secret", "alice", time.time(), 3600)
    result = run_client(
        lab, {"username": forged.username, "password": forged.password, "timeout": 10}
    )
    assert "401" in result["error"]


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

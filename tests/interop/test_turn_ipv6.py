"""IPv6 TURN (RFC 8656 §7.2, §18.11, §18.12) in a dual-stack NAT lab, with coturn on both sides
of the wire: our TURN client against coturn and against our own server (``p2ptun rendezvous``
with ``relay_address = [IPv4, IPv6]``), and coturn's ``turnutils_uclient`` against our server.

Topology (:meth:`p2plab.natlab.NatLab.enable_ipv6`): the client in ``site1`` behind a
port-restricted IPv4 NAT with IPv6 (firewalled, no NAT); the server host with 203.0.113.10 and
2001:db8::10; echo peers in ``site2`` (a public host) on its IPv4 and IPv6 addresses. Each
answer carries the source the peer saw, so a test knows which relayed address the data left
from. Cases:

- an IPv6 allocation (REQUESTED-ADDRESS-FAMILY IPv6) reached over IPv6: data both ways by
  Send/Data and on a channel; an IPv4 peer gets 443 (Peer Address Family Mismatch);
- a dual allocation (ADDITIONAL-ADDRESS-FAMILY IPv6) reached over IPv4: two relayed addresses,
  the IPv4 peer reached from the IPv4 one and the IPv6 peer from the IPv6 one;
- an IPv6 allocation from a server without an IPv6 relay address: 440, a clear failure;
- ``turnutils_uclient -x`` (IPv6 relay) and ``-Z`` (dual) against our server, no loss.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.lab, pytest.mark.slow]

HERE = Path(__file__).resolve().parent
V4, V6 = "203.0.113.10", "2001:db8::10"
PORT = 3478
REALM = "lab"
USER, PASSWORD = "alice", "wonderland"
ECHO_PORT = 7000
UCLIENT_PEER_PORT = 3480
MESSAGES = 20
LOSS = re.compile(r"Total lost packets (\d+) \(([\d.]+)%\)")
SENT = re.compile(r"start_mclient: tot_send_msgs=(\d+), tot_recv_msgs=(\d+)")
#: Peers are at documentation addresses, which the relay refuses unless allowed: site 2's LANs
#: only (the server's own 2001:db8::/64 stays denied).
ALLOW = '["192.0.2.0/24", "198.51.100.0/24", "2001:db8:2::/64"]'


# ---------------------------------------------------------------- the in-namespace client


async def _client(cfg: dict[str, Any]) -> dict[str, Any]:
    """Allocate (with ``options``: family, dual), then for each peer: permission, a Send/Data
    round trip, a channel and a round trip on it."""
    import trio
    from test_turn_coturn import _allocate, _roundtrip, _wait_for

    from p2ptun.errors import RuntimeFailure

    result: dict[str, Any] = {"events": [], "peers": []}
    events: list[str] = result["events"]
    inbox_send, inbox = trio.open_memory_channel[tuple[tuple[str, int], bytes]](256)
    async with trio.open_nursery() as nursery:
        try:
            relay = await _allocate(nursery, cfg, events, inbox_send)
            result["relayed"] = [list(r) for r in relay.client.relayed_addresses]
            error = relay.client.address_error
            result["address_error"] = None if error is None else [error.family, error.code]
            for host, port in cfg.get("peers", []):
                peer = (host, port)
                entry: dict[str, Any] = {"peer": list(peer)}
                result["peers"].append(entry)
                mark = len(events)
                relay.create_permission(host)
                try:
                    await _wait_for(events, "PermissionCreated", "PermissionFailed", 5.0)
                except RuntimeFailure:
                    entry["permission"] = events[mark:]
                    continue
                del events[mark:]  # the next wait looks at new events only
                entry["send"] = await _roundtrip(relay, inbox, peer, b"send-" + host.encode())
                relay.bind_channel(peer)
                await _wait_for(events, "ChannelBound", "ChannelBindFailed")
                events.remove("ChannelBound")
                entry["channel"] = await _roundtrip(relay, inbox, peer, b"chan-" + host.encode())
            await relay.aclose()
        except RuntimeFailure as exc:
            result["error"] = str(exc)
        nursery.cancel_scope.cancel()
    return result


def main(argv: list[str]) -> int:
    import trio

    print(json.dumps(trio.run(_client, json.loads(argv[1]))), flush=True)
    return 0


# ---------------------------------------------------------------- servers and peers


class OurServer:
    """``p2ptun rendezvous`` on the server, STUN/TURN on both addresses, relaying in the
    families of ``relay``."""

    def __init__(self, lab: Any, relay: list[str]) -> None:
        from p2plab.natlab import wait_for_line
        from p2ptun import keys

        self.lab = lab
        self.dir = Path(tempfile.mkdtemp(prefix=f"{lab.prefix}-rv6-"))
        lab.add_cleanup(lambda: shutil.rmtree(self.dir, ignore_errors=True))
        relay_text = ", ".join(f'"{r}"' for r in relay)
        config = self.dir / "rendezvous.toml"
        config.write_text(
            f'listen = "{V4}:7070"\n'
            f'private_key = "{keys.encode_key(keys.generate_private_key())}"\n'
            f'database = "{self.dir / "rv.sqlite"}"\nopen_registration = true\n'
            f'[stun]\nlisten = ["{V4}:{PORT}", "[{V6}]:{PORT}"]\n'
            f'[turn]\nrealm = "{REALM}"\nrelay_address = [{relay_text}]\n'
            f'relay_ports = "49152-49999"\nusers = {{ {USER} = "{PASSWORD}" }}\n'
            f"allow_peers = {ALLOW}\nuser_quota = 100\n"
        )
        argv = [sys.executable, "-m", "p2ptun", "rendezvous", "-c", str(config)]
        self.proc = lab.popen(
            "server", argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        if wait_for_line(self.proc.stderr, "rendezvous ready", 15.0) is None:
            lab.stop(self.proc)
            raise AssertionError(f"rendezvous did not start: {self.proc.stderr.read()[-2000:]}")

    def stop(self) -> None:
        self.lab.stop(self.proc)


def _coturn(lab: Any, relay: list[str]) -> Any:
    from test_turn_coturn import LT_CRED, Coturn

    args = [*LT_CRED, "--listening-ip", V6]
    for address in relay:
        if address != V4:
            args += ["--relay-ip", address]
    if V4 not in relay:
        # Coturn's fixture relays on its IPv4 address; an IPv6-only relay is not its shape.
        raise ValueError("coturn here always relays on IPv4 too")
    args += ["--allowed-peer-ip=2001:db8:2::-2001:db8:2::ffff:ffff:ffff:ffff"]
    return Coturn(lab, args)


@pytest.fixture(scope="module")
def lab6(natlab_module: Any) -> Iterator[Any]:
    """prc (dual-stack), none (dual-stack); echo peers on site2's two addresses."""
    from p2plab.natlab import wait_for_line

    lab = natlab_module(["prc", "none"], ipv6=True)
    for host in (lab.site(2).host_addr, lab.site6(2).host_addr):
        cfg = json.dumps({"host": host, "port": ECHO_PORT, "lifetime": 600})
        proc = lab.popen(
            "site2",
            [sys.executable, str(HERE / "test_turn_coturn.py"), "echo", cfg],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert wait_for_line(proc.stdout, '"ready"', 10) is not None, proc.stderr.read()
    yield lab


@pytest.fixture
def server_factory(lab6: Any) -> Iterator[Any]:
    started: list[Any] = []

    def start(kind: str, relay: list[str]) -> Any:
        if kind == "coturn" and shutil.which("turnserver") is None:
            pytest.skip("coturn (turnserver) is not installed")
        server = OurServer(lab6, relay) if kind == "ours" else _coturn(lab6, relay)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def _run(lab: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    cfg = {"port": PORT, "username": USER, "password": PASSWORD, **cfg}
    proc = lab.exec(
        "site1", sys.executable, str(Path(__file__)), "client", json.dumps(cfg), timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _peers(lab: Any) -> tuple[tuple[str, int], tuple[str, int]]:
    return (lab.site(2).host_addr, ECHO_PORT), (lab.site6(2).host_addr, ECHO_PORT)


def _seen(relayed: list[Any]) -> str:
    return f"{relayed[0]}:{relayed[1]}"


# ---------------------------------------------------------------- our client, both servers


@pytest.mark.parametrize("server", ["coturn", "ours"])
def test_ipv6_allocation_over_ipv6(lab6: Any, server_factory: Any, server: str) -> None:
    server_factory(server, [V4, V6])
    peer4, peer6 = _peers(lab6)
    result = _run(lab6, {"host": V6, "options": {"family": 2}, "peers": [peer6, peer4]})
    assert "error" not in result, result
    (relayed,) = result["relayed"]
    assert relayed[0] == V6, result
    six, four = result["peers"]
    for kind in ("send", "channel"):
        assert six[kind]["ok"] and six[kind]["seen"] == _seen(relayed), six
    assert six["channel"]["channel"] is not None
    # An IPv4 peer does not fit an IPv6 relayed address: 443, no permission.
    assert four.get("permission") == ["PermissionFailed"], four


@pytest.mark.parametrize("server", ["coturn", "ours"])
def test_dual_allocation_relays_each_family(lab6: Any, server_factory: Any, server: str) -> None:
    server_factory(server, [V4, V6])
    peer4, peer6 = _peers(lab6)
    result = _run(lab6, {"host": V4, "options": {"dual": True}, "peers": [peer4, peer6]})
    assert "error" not in result, result
    relayed4, relayed6 = result["relayed"]
    assert (relayed4[0], relayed6[0]) == (V4, V6), result
    assert result["address_error"] is None
    four, six = result["peers"]
    for entry, relayed in ((four, relayed4), (six, relayed6)):
        for kind in ("send", "channel"):
            assert entry[kind]["ok"] and entry[kind]["seen"] == _seen(relayed), entry


@pytest.mark.parametrize("server", ["coturn", "ours"])
def test_ipv6_allocation_without_an_ipv6_relay_is_440(
    lab6: Any, server_factory: Any, server: str
) -> None:
    server_factory(server, [V4])
    result = _run(lab6, {"host": V4, "options": {"family": 2}})
    assert "440" in result.get("error", ""), result
    dual = _run(lab6, {"host": V4, "options": {"dual": True}})
    assert "error" not in dual, dual
    assert [r[0] for r in dual["relayed"]] == [V4]
    assert dual["address_error"] == [2, 440], dual  # IPv6: Address Family not Supported


# ---------------------------------------------------------------- coturn's client, our server


@pytest.mark.skipif(
    shutil.which("turnutils_uclient") is None or shutil.which("turnutils_peer") is None,
    reason="coturn's turnutils tools are not installed",
)
@pytest.mark.parametrize(
    ("flags", "server_ip", "peer_family"),
    [(("-x",), V6, 6), (("-x",), V4, 6), (("-Z",), V4, 4)],
    ids=["ipv6-relay-over-ipv6", "ipv6-relay-over-ipv4", "dual"],
)
def test_uclient_against_our_server(
    lab6: Any, server_factory: Any, flags: tuple[str, ...], server_ip: str, peer_family: int
) -> None:
    server_factory("ours", [V4, V6])
    peer_ip = lab6.site6(2).host_addr if peer_family == 6 else lab6.site(2).host_addr
    peer = lab6.popen(
        "site2",
        ["turnutils_peer", "-L", peer_ip, "-p", str(UCLIENT_PEER_PORT)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        bound = f"[{peer_ip}]:{UCLIENT_PEER_PORT}" if ":" in peer_ip else f"{peer_ip}:"
        deadline = time.monotonic() + 10
        while bound not in lab6.exec("site2", "ss", "-Hlun").stdout:
            assert time.monotonic() < deadline, "turnutils_peer did not bind"
            time.sleep(0.05)
        argv = ["turnutils_uclient", *flags, "-c", "-u", USER, "-w", PASSWORD]
        argv += ["-e", peer_ip, "-r", str(UCLIENT_PEER_PORT), "-n", str(MESSAGES), "-l", "120"]
        proc = lab6.exec("site1", *argv, server_ip, timeout=30)
    finally:
        lab6.stop(peer)
    output = proc.stdout + proc.stderr
    print(f"$ {' '.join(argv)} {server_ip}: {LOSS.findall(output)} {SENT.findall(output)}")
    assert proc.returncode == 0, output[-3000:]
    losses = LOSS.findall(output)
    assert losses and all(int(n) == 0 for n, _ in losses), output[-3000:]
    counts = SENT.findall(output)
    assert counts and all(int(s) == int(r) == MESSAGES for s, r in counts), output[-3000:]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

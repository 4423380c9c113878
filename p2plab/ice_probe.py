"""A one-peer ICE probe: our ICE transport in a process, for the NAT lab and interop tests.

Two probes (or a probe and another ICE implementation's driver) exchange their descriptions
through files in a shared directory, connect, and push datagrams both ways::

    python -m p2plab.ice_probe --name a --peer b --dir /tmp/x --controlling \\
        --stun 203.0.113.10:3478 --turn "turn:203.0.113.10:3478?transport=udp" \\
        --turn-user alice --turn-password secret --count 200

The file protocol (all writes atomic: written to a temporary name, then renamed):

1. gather, write ``<dir>/<name>.desc``: the local description (RFC 8839 attribute lines,
   :meth:`p2ptun.ice.sdp.IceDescription.to_text`) with end-of-candidates;
2. wait for ``<dir>/<peer>.desc``, apply it; wait for a selected pair;
3. write ``<dir>/<name>.connected`` (JSON: the selected pair), wait for ``<dir>/go`` (the test
   zeroes the lab's counters meanwhile; with ``--no-wait-go`` go on at once);
4. send ``--count`` datagrams of ``--size`` bytes to the peer, each framed like a WireGuard
   transport message (first byte 4, then three zero bytes) so that the shared socket's demux
   delivers it as data; count what arrives from the peer; write ``<dir>/<name>.done`` when
   ``--count`` arrived or sending ended, and wait (bounded) for ``<peer>.done``;
5. print one JSON line with the result and exit 0 (1 if no pair was selected).

Everything is bounded by ``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import trio

from p2ptun import log as logging_setup
from p2ptun.addr import Address, format_address, parse_host_port
from p2ptun.config import TurnServerConfig, parse_turn_url
from p2ptun.ice.agent import AgentConfig
from p2ptun.ice.events import SelectedPair
from p2ptun.ice.sdp import IceDescription, IceParseError
from p2ptun.net.dispatch import Dispatcher
from p2ptun.net.gather import GatherOptions
from p2ptun.net.ice_transport import IceSession, IceTransport
from p2ptun.net.system import SystemHost
from p2ptun.net.udp import open_endpoints

DATA_HEADER = b"\x04\x00\x00\x00"
"""What the probe's datagrams start with: a WireGuard transport-data header."""


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def wait_file(path: Path, interval: float = 0.02) -> str:
    """The contents of ``path`` once it exists (the caller bounds the wait)."""
    while True:
        try:
            return path.read_text()
        except FileNotFoundError:
            await trio.sleep(interval)


def describe_pair(pair: SelectedPair | None) -> dict[str, Any] | None:
    """A selected pair as JSON-able data."""
    if pair is None:
        return None
    return {
        "local_type": pair.local.type.value,
        "remote_type": pair.remote.type.value,
        "local": format_address(pair.local.address),
        "remote": format_address(pair.remote.address),
        "base": format_address(pair.base),
        "via_relay": pair.via_relay,
        "relayed": pair.relayed,
        "generation": pair.generation,
    }


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m p2plab.ice_probe", description=__doc__)
    p.add_argument("--name", required=True)
    p.add_argument("--peer", required=True)
    p.add_argument("--dir", required=True, type=Path)
    role = p.add_mutually_exclusive_group(required=True)
    role.add_argument("--controlling", action="store_true")
    role.add_argument("--controlled", action="store_true")
    p.add_argument("--stun", action="append", default=[], help="HOST:PORT (repeatable)")
    p.add_argument("--turn", action="append", default=[], help="turn: URL (repeatable)")
    p.add_argument("--turn-user", default=None)
    p.add_argument("--turn-password", default=None)
    p.add_argument("--count", type=int, default=50)
    p.add_argument("--size", type=int, default=200)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--stun-timeout", type=float, default=2.0)
    p.add_argument("--turn-timeout", type=float, default=5.0)
    p.add_argument("--no-wait-go", action="store_true")
    p.add_argument("--log-level", default="warning")
    return p.parse_args(argv)


class Probe:
    """One probe run (see the module docstring)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dir: Path = args.dir
        self.received = 0
        self.sent = 0
        self.result: dict[str, Any] = {"name": args.name, "ok": False}
        self.enough = trio.Event()

    def on_data(self, session: IceSession, data: bytes | memoryview, source: Address) -> None:
        if bytes(data[4:6]) == b"p:":
            self.received += 1
            if self.received >= self.args.count:
                self.enough.set()

    def options(self) -> GatherOptions:
        args = self.args
        turn: list[TurnServerConfig] = []
        for url in args.turn:
            host, port, transport = parse_turn_url(url)
            turn.append(
                TurnServerConfig(url, host, port, transport, args.turn_user, args.turn_password)
            )
        return GatherOptions(
            stun=tuple(parse_host_port(s, 3478) for s in args.stun),
            turn=tuple(turn),
            stun_timeout=args.stun_timeout,
            turn_timeout=args.turn_timeout,
        )

    async def run(self) -> dict[str, Any]:
        args = self.args
        endpoints = open_endpoints(0, families=(socket.AF_INET,))
        transport = IceTransport(
            endpoints, self.options(), host=SystemHost(), agent_config=AgentConfig()
        )
        mux = transport.mux
        try:
            async with trio.open_nursery() as nursery:
                for ep in endpoints:
                    # This probe owns its sockets' dispatch: ICE, TURN, and WireGuard-typed
                    # test data to the sessions.
                    dispatcher = Dispatcher(
                        stun=mux.on_stun,
                        channel_data=mux.on_channel_data,
                        wireguard=transport.on_wireguard,
                    )
                    nursery.start_soon(ep.receive_loop, dispatcher)
                await nursery.start(transport.run)
                with trio.move_on_after(args.timeout):
                    await self._session(transport)
                nursery.cancel_scope.cancel()
        finally:
            for ep in endpoints:
                ep.close()
        return self.result

    async def _session(self, transport: IceTransport) -> None:
        args = self.args
        result = self.result
        start = trio.current_time()
        await transport.wait_gathered()
        result["gather_time"] = round(trio.current_time() - start, 3)
        gathered = transport.last_gather
        if gathered is not None:
            result["gather_failures"] = [f.reason for f in gathered.failures]
        session = transport.open_session(args.peer, controlling=args.controlling)
        session.on_data = self.on_data
        local = session.local_description()
        result["candidates"] = [c.to_sdp() for c in local.candidates]
        write_atomic(self.dir / f"{args.name}.desc", local.to_text())
        try:
            remote = IceDescription.parse(await wait_file(self.dir / f"{args.peer}.desc"))
        except IceParseError as exc:
            result["error"] = f"peer description: {exc}"
            return
        session.set_remote_description(remote)
        pair = await session.wait_connected()
        result["time_to_nomination"] = session.time_to_nomination
        result["connected"] = describe_pair(pair)
        write_atomic(self.dir / f"{args.name}.connected", json.dumps(result["connected"]))
        if not args.no_wait_go:
            await wait_file(self.dir / "go")
        payload = b"p:" + b"x" * max(0, args.size - 6)
        for i in range(args.count):
            if session.send(DATA_HEADER + payload):
                self.sent += 1
            if i % 10 == 9:
                await trio.sleep(0.005)
        with trio.move_on_after(10):
            await self.enough.wait()
        write_atomic(self.dir / f"{args.name}.done", str(self.received))
        with trio.move_on_after(10):
            await wait_file(self.dir / f"{args.peer}.done")
        result["selected"] = describe_pair(session.selected_pair)
        selected = session.selected_pair
        if selected is not None and selected.via_relay:
            relay = transport.gatherer.relay_for(selected.base)
            result["relay_transport"] = None if relay is None else relay.transport
        result["sent"] = self.sent
        result["received"] = self.received
        result["ok"] = True


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging_setup.setup(args.log_level, stream=sys.stderr)
    result = trio.run(Probe(args).run)
    print(json.dumps(result), flush=True)
    return 0 if result.get("connected") else 1


if __name__ == "__main__":
    sys.exit(main())

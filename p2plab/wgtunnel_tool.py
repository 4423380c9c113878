"""One WireGuard tunnel as a process: the node's data path with fixed peers (tests, experiments).

:class:`~p2ptun.node.wgtunnel.WgTunnel` (the data path: TUN ↔ WireGuard ↔ UDP) with a TUN
interface, UDP sockets and peers whose endpoints are given, or learnt from their first
authenticated datagram when none is given; no ICE, no rendezvous. The interop tests run it
against wireguard-go (``tests/interop/test_wireguard_go.py``)::

    python -m p2plab.wgtunnel_tool --config tunnel.json [--status-file F] [--log-level L]
    python -m p2plab.wgtunnel_tool --private-key-file K --listen-port 51820 \\
        --interface p2p0 --address 10.99.0.1/24 --peer PUBKEY --endpoint 10.98.0.2:51820 \\
        --allowed-ips 10.99.0.2/32 [--preshared-key-file F] [--rekey-after 4]

The JSON config::

    {"private_key": "<base64>", "listen_port": 51820, "interface": "p2p0",
     "address": ["10.99.0.1/24"], "mtu": 1420, "rekey_after": null, "under_load": false,
     "peers": [{"public_key": "<base64>", "endpoint": "10.98.0.2:51820",
                "allowed_ips": ["10.99.0.2/32"], "preshared_key": null,
                "persistent_keepalive": null}]}

It is read like a TOML table of the node's config, by the same strict reader
(:class:`p2ptun.config.reader.Table`: one-line errors naming the key, unknown keys refused);
``null`` stands for an absent key and a single string for a list of one. Routes are added for
allowed IPs outside the interface's own prefixes (:func:`p2ptun.node.daemon.routes_for`).

SIGTERM or SIGINT stops it (the TUN interface disappears with its descriptor); SIGUSR1 writes
the status (:meth:`WgTunnel.status`) to the status file as JSON, which it also does on exit.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from p2ptun import log as logging_setup
from p2ptun.addr import Address, is_ip, parse_host_port
from p2ptun.config import IPNetwork
from p2ptun.config.reader import ConfigFile, Table
from p2ptun.errors import ConfigError, P2ptunError, UsageError
from p2ptun.log import get_logger
from p2ptun.net.dispatch import Dispatcher
from p2ptun.net.ports import DatagramPort
from p2ptun.net.tun import TunDevice
from p2ptun.net.udp import DEFAULT_BATCH, open_endpoints
from p2ptun.node.daemon import routes_for
from p2ptun.node.wgtunnel import WgTunnel
from p2ptun.wireguard import Device, Peer, TimerConfig

log = get_logger("lab.wgtunnel")

DEFAULT_MTU = 1420
"""WireGuard's usual MTU: 1500 minus the IPv6, UDP and WireGuard transport overheads."""


# -- configuration -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PeerSpec:
    """One peer: its static key, the addresses routed to it, and where to send its datagrams.

    ``endpoint`` None means "learn it from the peer's first authenticated datagram".
    """

    public_key: bytes
    allowed_ips: tuple[str, ...] = ()
    endpoint: Address | None = None
    preshared_key: bytes | None = None
    persistent_keepalive: float | None = None


@dataclass(frozen=True)
class TunnelSpec:
    """Everything :func:`open_tunnel` needs: our key, the interface, the port, the peers.

    ``rekey_after`` shortens every WireGuard timer proportionally
    (:meth:`TimerConfig.shortened`) — for tests that want to watch rekeys; None keeps the
    standard timers.
    """

    private_key: bytes
    interface: str
    addresses: tuple[str, ...] = ()
    listen_port: int = 0
    mtu: int = DEFAULT_MTU
    peers: tuple[PeerSpec, ...] = ()
    rekey_after: float | None = None
    under_load: bool = False
    """Demand cookies from every handshake (:attr:`Device.under_load`) — for tests."""

    def timers(self) -> TimerConfig:
        base = TimerConfig()
        return base if self.rekey_after is None else base.shortened(self.rekey_after)


_LIST_KEYS = ("address", "allowed_ips")


def _as_table(data: dict[str, Any]) -> dict[str, Any]:
    """A JSON object as the reader sees a TOML table: TOML has no null, so a null is an absent
    key; a single string where a list of strings goes is a list of one."""
    table: dict[str, Any] = {}
    for name, value in data.items():
        if value is None:
            continue
        if name in _LIST_KEYS and isinstance(value, str):
            value = [value]
        elif name == "peers" and isinstance(value, list):
            value = [_as_table(p) if isinstance(p, dict) else p for p in value]
        table[name] = value
    return table


def _number(t: Table, name: str, default: float | None, *, low: float, high: float) -> Any:
    value = t.number(name, default)
    if value is not None and not low <= value <= high:
        raise t.error(name, f"must be a number from {low:g} to {high:g}", f"got {value!r}")
    return value


def _checked_strings(
    t: Table, name: str, check: Callable[[str], object], what: str
) -> tuple[str, ...]:
    """The strings at ``name``, each of which ``check`` accepts (kept as written)."""
    values = []
    for key, raw in t.strings(name):
        t.parse(key, raw, check, what)
        values.append(raw)
    return tuple(values)


def _network(text: str) -> object:
    return ipaddress.ip_network(text, strict=False)


def _ip_endpoint(text: str) -> Address:
    host, port = parse_host_port(text)
    if not is_ip(host):
        raise ValueError(f"{host!r} is not an IP address (no DNS names here)")
    return host, port


def _peer(t: Table) -> PeerSpec:
    t.expect("public_key", "preshared_key", "endpoint", "allowed_ips", "persistent_keepalive")
    public = t.key_value("public_key", required=True)
    assert public is not None
    allowed = _checked_strings(t, "allowed_ips", _network, "an IP network like 10.99.0.2/32")
    raw_endpoint = t.string("endpoint")
    endpoint = (
        None
        if raw_endpoint is None
        else t.parse("endpoint", raw_endpoint, _ip_endpoint, "ip:port or [ipv6]:port")
    )
    return PeerSpec(
        public_key=public,
        allowed_ips=allowed,
        endpoint=endpoint,
        preshared_key=t.key_value("preshared_key", required=False),
        persistent_keepalive=_number(t, "persistent_keepalive", None, low=1, high=65535),
    )


def parse_spec(data: object, file: str = "<config>") -> TunnelSpec:
    """Build a :class:`TunnelSpec` from decoded JSON; raises :class:`ConfigError` (one line)."""
    if not isinstance(data, dict):
        raise ConfigError(file, None, "must be a JSON object")
    top = ConfigFile(file).top(_as_table(data))
    top.expect(
        "private_key",
        "listen_port",
        "interface",
        "address",
        "mtu",
        "rekey_after",
        "under_load",
        "peers",
    )
    private_key = top.key_value("private_key", required=True)
    assert private_key is not None
    interface = top.string("interface", required=True)
    if not 0 < len(interface.encode()) < 16:
        raise top.error("interface", "must be an interface name of 1-15 bytes")
    addresses = _checked_strings(
        top, "address", ipaddress.ip_interface, "an IP address/prefix like 10.99.0.1/24"
    )
    peers = [_peer(t) for t in top.tables("peers")]
    if len({p.public_key for p in peers}) != len(peers):
        raise top.error("peers", "the same public key appears twice")
    rekey_after = _number(top, "rekey_after", None, low=0.5, high=3600)
    return TunnelSpec(
        private_key=private_key,
        interface=interface,
        addresses=addresses,
        listen_port=int(_number(top, "listen_port", 0, low=0, high=65535)),
        mtu=int(_number(top, "mtu", DEFAULT_MTU, low=576, high=65535)),
        peers=tuple(peers),
        rekey_after=None if rekey_after is None else float(rekey_after),
        under_load=top.boolean("under_load", False),
    )


# -- the tunnel --------------------------------------------------------------------------------


def tunnel_routes(spec: TunnelSpec) -> list[IPNetwork]:
    """The peers' allowed IPs that the interface's own prefixes do not already route."""
    return routes_for(
        [ipaddress.ip_interface(a) for a in spec.addresses],
        [ipaddress.ip_network(p, strict=False) for peer in spec.peers for p in peer.allowed_ips],
    )


def add_peer(tunnel: WgTunnel, spec: PeerSpec) -> Peer:
    """Add a peer to the tunnel's device and give it its endpoint."""
    peer = tunnel.device.add_peer(
        spec.public_key,
        preshared_key=spec.preshared_key,
        allowed_ips=spec.allowed_ips,
        persistent_keepalive=spec.persistent_keepalive,
    )
    tunnel.set_endpoint(peer, spec.endpoint)
    return peer


def open_tunnel(spec: TunnelSpec, *, batch: int = DEFAULT_BATCH) -> WgTunnel:
    """Create the TUN interface, configure it, bind UDP, and add the peers of ``spec``.

    Blocking (netlink, socket setup): call it before the trio loop or from a worker thread.
    Routes are added for allowed IPs outside the interface's own prefixes. Raises
    :class:`RuntimeFailure` with one line; nothing is left open on failure.
    """
    from p2ptun.net import netlink

    device = Device(
        spec.private_key,
        rng=os.urandom,
        wall_clock=time.time,
        timers=spec.timers(),
        mtu=spec.mtu,
    )
    device.under_load = spec.under_load
    tun = TunDevice.open(spec.interface)
    endpoints: list[DatagramPort] = []
    try:
        netlink.configure_interface(spec.interface, spec.addresses, spec.mtu)
        for prefix in tunnel_routes(spec):
            netlink.add_route(spec.interface, prefix)
        endpoints = list(open_endpoints(spec.listen_port, batch=batch))
        tunnel = WgTunnel(device, tun, endpoints, batch=batch)
    except BaseException:
        for ep in endpoints:
            ep.close()
        tun.close()
        raise
    for peer_spec in spec.peers:
        add_peer(tunnel, peer_spec)
    return tunnel


# -- running as a process ----------------------------------------------------------------------


def write_status(tunnel: WgTunnel, path: Path) -> None:
    """Write :meth:`WgTunnel.status` to ``path`` atomically (a reader never sees half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(tunnel.status(), indent=1) + "\n")
    os.replace(tmp, path)


async def run_tunnel(
    tunnel: WgTunnel, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run ``tunnel`` with its sockets: each endpoint's one dispatcher hands WireGuard to the
    tunnel (this tool has no ICE: STUN and ChannelData are dropped and counted)."""
    async with trio.open_nursery() as nursery:
        for endpoint in tunnel.endpoints:
            dispatcher = Dispatcher(wireguard=tunnel.on_datagram, drained=tunnel.udp_drained)
            nursery.start_soon(endpoint.receive_loop, dispatcher)
        await nursery.start(tunnel.run)
        task_status.started()


async def serve(spec: TunnelSpec, *, status_file: Path | None = None) -> None:
    """Open the tunnel of ``spec`` and run it until SIGTERM or SIGINT."""
    tunnel = open_tunnel(spec)
    try:
        try:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGUSR1) as sigs:
                async with trio.open_nursery() as nursery:
                    await nursery.start(run_tunnel, tunnel)
                    log.info(
                        "tunnel up",
                        interface=tunnel.tun.name,
                        port=tunnel.listen_port,
                        peers=len(spec.peers),
                        rekey_after=tunnel.device.timers.rekey_after_time,
                    )
                    async for signum in sigs:
                        if signum == signal.SIGUSR1:
                            if status_file is not None:
                                write_status(tunnel, status_file)
                            continue
                        log.info("stopping", signal=signal.Signals(signum).name)
                        nursery.cancel_scope.cancel()
                        break
        finally:
            if status_file is not None:
                write_status(tunnel, status_file)
    finally:
        tunnel.close()
        for endpoint in tunnel.endpoints:
            endpoint.close()


def _read_key_file(path: str, what: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise UsageError(f"cannot read {what} file {path}: {exc.strerror}") from None


def _spec_from_args(args: argparse.Namespace) -> TunnelSpec:
    if args.config is not None:
        if args.private_key_file or args.peer or args.interface:
            raise UsageError("--config cannot be combined with key, interface or peer options")
        try:
            text = Path(args.config).read_text()
        except OSError as exc:
            raise UsageError(f"cannot read config file {args.config}: {exc.strerror}") from None
        try:
            decoded = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                args.config, None, f"not valid JSON: {exc.msg} at line {exc.lineno}"
            ) from None
        return parse_spec(decoded, args.config)
    if not args.private_key_file or not args.interface:
        raise UsageError("give --config FILE, or at least --private-key-file and --interface")
    data: dict[str, Any] = {
        "private_key": _read_key_file(args.private_key_file, "private key"),
        "interface": args.interface,
        "address": args.address,
        "listen_port": args.listen_port,
        "mtu": args.mtu,
        "rekey_after": args.rekey_after,
        "under_load": args.under_load,
        "peers": [],
    }
    if args.peer:
        peer: dict[str, Any] = {"public_key": args.peer, "allowed_ips": args.allowed_ips}
        if args.endpoint:
            peer["endpoint"] = args.endpoint
        if args.preshared_key_file:
            peer["preshared_key"] = _read_key_file(args.preshared_key_file, "preshared key")
        if args.persistent_keepalive:
            peer["persistent_keepalive"] = args.persistent_keepalive
        data["peers"].append(peer)
    elif args.endpoint or args.allowed_ips or args.preshared_key_file:
        raise UsageError("--endpoint, --allowed-ips and --preshared-key-file need --peer")
    return parse_spec(data, "<command line>")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m p2plab.wgtunnel_tool",
        description="Run one WireGuard tunnel (TUN + UDP) with fixed peer endpoints.",
    )
    parser.add_argument("--config", metavar="FILE", help="JSON config (see the module doc)")
    parser.add_argument("--private-key-file", metavar="FILE")
    parser.add_argument("--interface", metavar="NAME")
    parser.add_argument("--address", action="append", default=[], metavar="ADDR/LEN")
    parser.add_argument("--listen-port", type=int, default=0, metavar="PORT")
    parser.add_argument("--mtu", type=int, default=DEFAULT_MTU)
    parser.add_argument("--peer", metavar="PUBKEY", help="the peer's base64 public key")
    parser.add_argument("--preshared-key-file", metavar="FILE")
    parser.add_argument("--endpoint", metavar="IP:PORT")
    parser.add_argument(
        "--allowed-ips",
        action="extend",
        default=[],
        metavar="NET[,NET...]",
        type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
    )
    parser.add_argument("--persistent-keepalive", type=float, metavar="SECONDS")
    parser.add_argument(
        "--rekey-after",
        type=float,
        metavar="SECONDS",
        help="shorten all WireGuard timers so that REKEY_AFTER_TIME is this (tests)",
    )
    parser.add_argument(
        "--under-load",
        action="store_true",
        help="demand a cookie (MAC2) from every handshake message (tests)",
    )
    parser.add_argument("--status-file", type=Path, metavar="FILE")
    parser.add_argument("--log-level", default="info", choices=sorted(logging_setup.LEVELS))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m p2plab.wgtunnel_tool``; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging_setup.setup(args.log_level)
    try:
        spec = _spec_from_args(args)
        trio.run(lambda: serve(spec, status_file=args.status_file))
    except P2ptunError as exc:
        print(f"wgtunnel: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())

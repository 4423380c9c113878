"""The ``p2ptun`` command (docs/ARCHITECTURE.md §3).

Exit codes: 0 success, 2 bad usage or bad config (one line on stderr), 1 runtime failure.
Every expected failure is a :class:`~p2ptun.errors.P2ptunError` (one line, its exit code), or a
:class:`~p2ptun.errors.ProtocolError` from a core that no layer below caught (one line, exit 1);
nothing a user can cause ends in a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

if sys.version_info < (3, 11):  # pragma: no cover - Python 3.10 only
    from exceptiongroup import BaseExceptionGroup

from p2ptun import __version__, keys, log
from p2ptun.errors import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    P2ptunError,
    ProtocolError,
    RuntimeFailure,
    UsageError,
)

if TYPE_CHECKING:
    from p2ptun import config

Command = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake as one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see '{self.prog} --help')")


def cmd_genkey(args: argparse.Namespace) -> int:
    """Print a new private key, like ``wg genkey``."""
    sys.stdout.write(keys.encode_key(keys.generate_private_key()) + "\n")
    return EXIT_OK


def cmd_pubkey(args: argparse.Namespace) -> int:
    """Read a private key on stdin, print its public key, like ``wg pubkey``."""
    data = sys.stdin.buffer.read(4096)
    try:
        private = keys.decode_key(data.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise UsageError(
            "p2ptun pubkey: stdin is not a private key "
            "(expected the 44-character base64 output of 'p2ptun genkey' or 'wg genkey')"
        ) from None
    sys.stdout.write(keys.encode_key(keys.public_key(private)) + "\n")
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    """Validate a node or rendezvous config file."""
    from p2ptun import config

    cfg = config.load(args.config)
    for warning in cfg.warnings:
        sys.stderr.write(f"warning: {warning}\n")
    sys.stdout.write(config.describe(cfg) + "\n")
    return EXIT_OK


def cmd_stun(args: argparse.Namespace) -> int:
    """Ask a STUN server for this host's mapped address; print it as ip:port."""
    import functools

    import trio

    from p2ptun.addr import format_address, parse_host_port
    from p2ptun.net.stun_query import DEFAULT_STUN_PORT, query_mapped_address

    try:
        host, port = parse_host_port(args.server, DEFAULT_STUN_PORT)
    except ValueError as exc:
        raise UsageError(f"p2ptun stun: bad server {args.server!r}: {exc}") from None
    if not 0 < args.timeout <= 3600:
        raise UsageError("p2ptun stun: --timeout must be between 0 and 3600 seconds")
    query = functools.partial(query_mapped_address, tcp=args.tcp, timeout=args.timeout)
    mapped = trio.run(query, host, port)
    sys.stdout.write(format_address(mapped) + "\n")
    return EXIT_OK


def _netcheck_report(node: config.NodeConfig | None, server: str | None = None) -> dict[str, Any]:
    """``p2ptun netcheck``'s report against ``node``'s STUN/TURN servers and ``server``."""
    import trio

    from p2ptun.addr import parse_host_port
    from p2ptun.net.netcheck import netcheck
    from p2ptun.net.stun_query import DEFAULT_STUN_PORT
    from p2ptun.net.system import SystemHost

    stun: list[tuple[str, int]] = []
    turn: tuple[config.TurnServerConfig, ...] = ()
    if server is not None:
        try:
            stun.append(parse_host_port(server, DEFAULT_STUN_PORT))
        except ValueError as exc:
            raise UsageError(f"p2ptun netcheck: bad server {server!r}: {exc}") from None
    if node is not None:
        stun += list(node.ice.stun) or [(node.rendezvous.host, DEFAULT_STUN_PORT)]
        turn = node.ice.turn
    if not stun:
        raise UsageError(
            "p2ptun netcheck: give a node config (-c FILE) or a STUN server (--server HOST)"
        )
    report: dict[str, Any] = trio.run(netcheck, SystemHost(), stun, turn)
    return report


def cmd_netcheck(args: argparse.Namespace) -> int:
    """Measure what this host's network does (RFC 5780 NAT behaviour, TURN reachability,
    IPv6) against the STUN and TURN servers of a node config, or one ``--server``."""
    import json

    from p2ptun import config
    from p2ptun.net.netcheck import render

    node = config.load_node(args.config) if args.config is not None else None
    report = _netcheck_report(node, args.server)
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        sys.stdout.write(render(report) + "\n")
    return EXIT_OK


def cmd_bugreport(args: argparse.Namespace) -> int:
    """Write one archive with status, logs, netcheck, config, network state and versions,
    secrets removed (p2ptun/bugreport.py)."""
    from p2ptun import bugreport, config
    from p2ptun.node import control

    cfg: config.Config | None = None
    problem = None
    if args.config is not None:
        try:
            cfg = config.load(args.config)
        except P2ptunError as exc:
            problem = str(exc)  # a broken config is worth a report too
    node = cfg if isinstance(cfg, config.NodeConfig) else None

    def ask(cmd: str) -> Callable[[], dict[str, Any]]:
        def get() -> dict[str, Any]:
            if node is not None:
                path = node.control_socket
            elif isinstance(cfg, config.RendezvousConfig):
                raise RuntimeFailure("a rendezvous has no control socket")
            else:
                path = _control_socket(args)
            reply = control.request(path, {"cmd": cmd}, timeout=10.0)
            if reply.get("ok") is not True or not isinstance(reply.get(cmd), dict):
                raise RuntimeFailure(f"{cmd}: {reply.get('error', 'no answer')}")
            answer: dict[str, Any] = reply[cmd]
            return answer

        return get

    unit = None
    if node is not None:
        unit = f"p2ptun@{node.interface.name}.service"
    elif isinstance(cfg, config.RendezvousConfig):
        unit = "p2ptun-rendezvous.service"
    parts = bugreport.Parts(
        status=ask("status"),
        debug=ask("debug"),
        netcheck=None if node is None else (lambda: _netcheck_report(node)),
    )
    out = args.output or bugreport.default_output()
    names = bugreport.build(
        out,
        cfg=cfg,
        config_path=args.config,
        parts=parts,
        log_files=args.log or (),
        unit=unit,
        notes=[] if problem is None else [f"the config does not load: {problem}"],
    )
    sys.stdout.write(f"{out}: {', '.join(names)} (secrets removed)\n")
    return EXIT_OK


def cmd_rendezvous(args: argparse.Namespace) -> int:
    """Run the rendezvous server (for now its embedded STUN/TURN servers) in the foreground."""
    from p2ptun import config
    from p2ptun.rendezvous.server import run

    cfg = config.load_rendezvous(args.config)
    for warning in cfg.warnings:
        sys.stderr.write(f"warning: {warning}\n")
    return run(cfg)


def cmd_up(args: argparse.Namespace) -> int:
    """Run the node daemon in the foreground."""
    from p2ptun import config
    from p2ptun.node.daemon import run

    cfg = config.load_node(args.config)
    for warning in cfg.warnings:
        sys.stderr.write(f"warning: {warning}\n")
    if cfg.relay is None:
        return run(cfg)
    # A peer relay is the rendezvous' STUN/TURN service, which the node may not import.
    from p2ptun.rendezvous.stun_turn import bind_peer_relay

    return run(cfg, peer_relay=bind_peer_relay)


def _control_socket(args: argparse.Namespace) -> str:
    """The daemon's control socket: from ``-c FILE``, ``--interface NAME``, or the only
    socket in the run directory."""
    import os

    from p2ptun import config

    if args.config is not None:
        return config.load_node(args.config).control_socket
    if args.interface is not None:
        return config.control_socket_path(args.interface)
    run_dir = os.path.dirname(config.control_socket_path("x"))
    try:
        sockets = sorted(n for n in os.listdir(run_dir) if n.endswith(".sock"))
    except FileNotFoundError:
        sockets = []
    except PermissionError:
        raise RuntimeFailure(f"permission denied on {run_dir} (run as root)") from None
    if not sockets:
        raise RuntimeFailure(f"no p2ptun daemon is running (no control socket in {run_dir})")
    if len(sockets) > 1:
        names = ", ".join(n.removesuffix(".sock") for n in sockets)
        raise UsageError(
            f"several p2ptun daemons are running ({names}); pick one with --interface NAME "
            "or -c FILE"
        )
    return os.path.join(run_dir, sockets[0])


def _control(
    args: argparse.Namespace, payload: dict[str, object], timeout: float
) -> dict[str, Any]:
    from p2ptun.node import control

    path = _control_socket(args)
    reply = control.request(path, payload, timeout=timeout)
    if reply.get("ok") is not True:
        raise RuntimeFailure(f"p2ptun {payload['cmd']}: {reply.get('error', 'failed')}")
    return reply


def cmd_status(args: argparse.Namespace) -> int:
    """Show the daemon's peers, states, paths and counters."""
    import json

    from p2ptun.node.status import render

    status = _control(args, {"cmd": "status"}, timeout=10.0).get("status")
    if not isinstance(status, dict):
        raise RuntimeFailure("p2ptun status: the daemon sent no status")
    if args.json:
        sys.stdout.write(json.dumps(status, indent=2) + "\n")
    else:
        sys.stdout.write(render(status) + "\n")
    return EXIT_OK


def cmd_ping(args: argparse.Namespace) -> int:
    """Measure the path to a peer: the daemon sends a probe over the selected pair."""
    from p2ptun.node.status import render_ping

    if args.until_direct:
        return _ping_until_direct(args)
    if args.timeout is None:
        args.timeout = PING_TIMEOUT
    if not 0 < args.timeout <= 60:
        raise UsageError("p2ptun ping: --timeout must be between 0 and 60 seconds")
    if not 1 <= args.count <= 100:
        raise UsageError("p2ptun ping: --count must be between 1 and 100")
    failures = 0
    for i in range(args.count):
        reply = _control(
            args,
            {"cmd": "ping", "peer": args.peer, "timeout": args.timeout},
            timeout=args.timeout + 5.0,
        )
        result = reply.get("ping")
        if not isinstance(result, dict):
            raise RuntimeFailure("p2ptun ping: the daemon sent no result")
        sys.stdout.write(render_ping(result) + "\n")
        sys.stdout.flush()
        if result.get("rtt_ms") is None:
            failures += 1
        if i + 1 < args.count:
            time.sleep(1.0)
    return EXIT_OK if failures < args.count else EXIT_FAILURE


PING_TIMEOUT = 3.0
"""Seconds one probe of ``p2ptun ping`` waits for its answer."""
UNTIL_DIRECT_TIMEOUT = 60.0
"""Seconds ``p2ptun ping --until-direct`` waits for a direct path unless told."""
UNTIL_DIRECT_POLL = 0.2
"""How often ``--until-direct`` asks the daemon (the daemon says when the path changed, so
this only bounds how late the answer comes, not how precise it is)."""
UNTIL_DIRECT_CLOCK: Callable[[], float] = time.monotonic
UNTIL_DIRECT_SLEEP: Callable[[float], None] = time.sleep
"""The clock ``--until-direct`` reads and the way it waits between questions (a test gives
both from one fake clock, so that its figures are exact)."""


def _ping_until_direct(args: argparse.Namespace) -> int:
    """``p2ptun ping PEER --until-direct``: wait until the peer's path is direct, then probe it
    once and say when direct came. Exit 0 on a direct path, 1 when ``--timeout`` (seconds,
    default 60) passed without one."""
    from p2ptun.node.status import render_until_direct

    wait = UNTIL_DIRECT_TIMEOUT if args.timeout is None else args.timeout
    if not 0 < wait <= 3600:
        raise UsageError("p2ptun ping: --timeout with --until-direct must be 0-3600 seconds")
    if args.count != 1:
        raise UsageError("p2ptun ping: --until-direct probes once; leave out --count")
    clock, sleep = UNTIL_DIRECT_CLOCK, UNTIL_DIRECT_SLEEP
    started = clock()
    deadline = started + wait
    told = False
    reason = "no status yet"
    while True:
        elapsed = clock() - started
        peer = _peer_status(args, args.peer)
        reason = str(peer.get("reason") or peer.get("path") or "no path")
        since = peer.get("path_since")
        if peer.get("path") == "direct" and isinstance(since, (int, float)):
            reply = _control(
                args,
                {"cmd": "ping", "peer": args.peer, "timeout": PING_TIMEOUT},
                timeout=PING_TIMEOUT + 5.0,
            )
            result = reply.get("ping")
            if not isinstance(result, dict):
                raise RuntimeFailure("p2ptun ping: the daemon sent no result")
            already = float(since) if not told and since > elapsed else None
            waited = max(0.0, elapsed - float(since))
            sys.stdout.write(render_until_direct(result, waited, already) + "\n")
            return EXIT_OK
        if not told:
            sys.stdout.write(f"{args.peer}: {reason}; waiting up to {wait:g} s for a direct path\n")
            sys.stdout.flush()
            told = True
        now = clock()
        if now >= deadline:
            break
        sleep(min(UNTIL_DIRECT_POLL, deadline - now))
    raise RuntimeFailure(f"p2ptun ping: no direct path to {args.peer} within {wait:g} s ({reason})")


def _peer_status(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """The status entry of peer ``name`` (a runtime failure if the daemon has none)."""
    status = _control(args, {"cmd": "status"}, timeout=10.0).get("status")
    peers = status.get("peers") if isinstance(status, dict) else None
    if not isinstance(peers, list):
        raise RuntimeFailure("p2ptun ping: the daemon sent no status")
    for peer in peers:
        if isinstance(peer, dict) and peer.get("name") == name:
            return peer
    known = ", ".join(sorted(str(p.get("name")) for p in peers if isinstance(p, dict)))
    raise RuntimeFailure(f"p2ptun ping: no peer named {name!r} (configured: {known or 'none'})")


def cmd_set_exit_node(args: argparse.Namespace) -> int:
    """``p2ptun set exit-node NAME|off``: send all traffic through a peer, or stop."""
    name = None if args.name == "off" else args.name
    reply = _control(args, {"cmd": "set", "exit_node": name}, timeout=10.0)
    exit_node = reply.get("exit_node")
    if not isinstance(exit_node, dict):
        sys.stdout.write("exit node off: direct routing\n")
    else:
        sys.stdout.write(
            f"exit node {exit_node.get('name')}: {exit_node.get('state')} "
            f"({exit_node.get('reason')})\n"
        )
    return EXIT_OK


def cmd_ca_init(args: argparse.Namespace) -> int:
    """A new network authority: DIR/ca.key (0600), DIR/ca.pub, DIR/network.toml."""
    from p2ptun import ca

    auth = ca.init(
        args.out,
        args.network,
        args.domain or "",
        rendezvous=args.rendezvous,
        rendezvous_key=args.rendezvous_key,
    )
    sys.stdout.write(
        f"network {auth.network!r}: authority in {auth.path} (keep ca.key offline and private)\n"
        f"public key (ca.pub, for [network] ca and the rendezvous' [[network]] ca): "
        f"{keys.encode_key(auth.public_key)}\n"
    )
    return EXIT_OK


def cmd_ca_sign(args: argparse.Namespace) -> int:
    """Sign a certificate for a node's public key; the certificate goes to stdout."""
    import os

    from p2ptun import ca

    auth = ca.load(args.ca)
    cert = auth.sign(
        args.name,
        ca.parse_addresses(args.ip),
        ca.parse_public_key(args.pubkey),
        groups=ca.parse_groups(args.groups),
        routes=ca.parse_routes(args.routes),
        valid=ca.parse_duration(args.valid, "--valid"),
        now=ca.now(),
        random_bytes=os.urandom,
    )
    sys.stdout.write(cert.to_text())
    return EXIT_OK


def cmd_ca_revoke(args: argparse.Namespace) -> int:
    """Revoke a certificate or every certificate of a name: DIR/revoked.crl, signed."""
    from p2ptun import ca

    auth = ca.load(args.ca)
    crl, revoked = auth.revoke(args.target, now=ca.now())
    for serial, name in revoked:
        sys.stdout.write(f"revoked {name} (serial {serial.hex()})\n")
    path = auth.file("revoked.crl")
    sys.stdout.write(f"{path}: revocation list {crl.number}, {len(crl.entries)} serial(s)\n")
    published = _publish_revocations(args, crl.encode())
    if published:
        sys.stdout.write(f"published through the node on {published}\n")
    else:
        sys.stdout.write(
            "no node of this network runs here to publish it: give the file to one "
            "('[network] revocations' in its config, then reload it)\n"
        )
    return EXIT_OK


def _publish_revocations(args: argparse.Namespace, blob: bytes) -> str | None:
    """Hand a revocation list to the running node daemons on this machine (their control
    sockets); the interface of the first that took it, or None."""
    import base64
    import os

    from p2ptun import config
    from p2ptun.node import control

    run_dir = os.path.dirname(config.control_socket_path("x"))
    try:
        sockets = sorted(n for n in os.listdir(run_dir) if n.endswith(".sock"))
    except OSError:
        return None
    for name in sockets:
        payload = {"cmd": "revocations", "list": base64.b64encode(blob).decode()}
        try:
            reply = control.request(os.path.join(run_dir, name), payload, timeout=5.0)
        except P2ptunError:
            continue
        if reply.get("ok") is True:
            return name.removesuffix(".sock")
    return None


def cmd_ca_show(args: argparse.Namespace) -> int:
    """Print a certificate (or a revocation list, or an invite token's public part)."""
    from p2ptun import ca

    sys.stdout.write(ca.show(args.file) + "\n")
    return EXIT_OK


def cmd_invite(args: argparse.Namespace) -> int:
    """Print a one-line invite token for a new machine."""
    import os

    from p2ptun import ca, keys

    auth = ca.load(args.ca)
    rv_key = None
    if args.rendezvous_key is not None:
        try:
            rv_key = keys.decode_key(args.rendezvous_key)
        except ValueError as exc:
            raise UsageError(f"--rendezvous-key: {exc}") from None
    invite = auth.invite(
        args.name,
        ca.parse_addresses(args.ip),
        groups=ca.parse_groups(args.groups),
        routes=ca.parse_routes(args.routes),
        expires=ca.parse_duration(args.expires, "--expires"),
        valid=ca.parse_duration(args.valid, "--valid"),
        rendezvous=args.rendezvous,
        rendezvous_key=rv_key,
        now=ca.now(),
        random_bytes=os.urandom,
    )
    sys.stdout.write(invite.to_text() + "\n")
    return EXIT_OK


def cmd_join(args: argparse.Namespace) -> int:
    """Join a network with an invite token: key, certificate, config."""
    from p2ptun import join

    return join.main(args.token, args.config, args.interface)


def _add_control_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", metavar="FILE", help="the node's config (finds its socket)")
    p.add_argument("--interface", metavar="NAME", help="the node's interface name")


def _missing_subcommand(parser: argparse.ArgumentParser) -> int:
    raise UsageError(f"{parser.prog}: a command is required (see '{parser.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="p2ptun",
        description="Link machines behind NATs into one private LAN.",
    )
    parser.add_argument("--version", action="version", version=f"p2ptun {__version__}")
    parser.add_argument(
        "--log-level",
        choices=sorted(log.LEVELS, key=log.LEVELS.__getitem__),
        default="info",
        help="log verbosity (default: info)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("genkey", help="print a new private key (same format as 'wg genkey')")
    p.set_defaults(func=cmd_genkey)

    p = sub.add_parser("pubkey", help="private key on stdin -> public key (like 'wg pubkey')")
    p.set_defaults(func=cmd_pubkey)

    p = sub.add_parser("check", help="validate a node or rendezvous config; exit 0 or 2")
    p.add_argument("-c", "--config", required=True, metavar="FILE", help="config file (TOML)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("rendezvous", help="run the rendezvous server (signaling + STUN + TURN)")
    p.add_argument("-c", "--config", required=True, metavar="FILE", help="config file (TOML)")
    p.set_defaults(func=cmd_rendezvous)

    p = sub.add_parser("up", help="run the node daemon in the foreground")
    p.add_argument("-c", "--config", required=True, metavar="FILE", help="config file (TOML)")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("status", help="peers, state, selected path, counters of a running node")
    _add_control_args(p)
    p.add_argument("--json", action="store_true", help="print the status as one JSON object")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("set", help="change a running node: exit-node NAME|off")
    set_sub = p.add_subparsers(dest="set_command", metavar="SETTING", parser_class=_Parser)
    p.set_defaults(func=lambda _args, parser=p: _missing_subcommand(parser))
    q = set_sub.add_parser("exit-node", help="send all traffic through peer NAME, or 'off'")
    q.add_argument("name", metavar="NAME|off", help="a peer allowed to route 0.0.0.0/0, or off")
    _add_control_args(q)
    q.set_defaults(func=cmd_set_exit_node)

    p = sub.add_parser("ping", help="probe the path to a peer: direct or relay, and its RTT")
    p.add_argument("peer", metavar="PEER", help="the peer's name")
    _add_control_args(p)
    p.add_argument("--count", type=int, default=1, metavar="N", help="probes (default 1)")
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="S",
        help="seconds a probe waits (default 3); with --until-direct, "
        "seconds to wait for a direct path (default 60)",
    )
    p.add_argument(
        "--until-direct",
        action="store_true",
        help="wait until the path is direct and say when it came (exit 1 if it did not)",
    )
    p.set_defaults(func=cmd_ping)

    p = sub.add_parser("ca", help="the network authority: init, sign, revoke, show")
    ca_sub = p.add_subparsers(dest="ca_command", metavar="COMMAND", parser_class=_Parser)
    ca_parser = p
    p.set_defaults(func=lambda args: _missing_subcommand(ca_parser))
    q = ca_sub.add_parser("init", help="create a network authority in DIR (ca.key, ca.pub)")
    q.add_argument("--network", required=True, metavar="NAME", help="the network's name")
    q.add_argument("--domain", metavar="D", help="DNS domain of the members' names (e.g. home)")
    q.add_argument("--out", required=True, metavar="DIR", help="directory for the authority")
    q.add_argument("--rendezvous", metavar="HOST:PORT", help="the rendezvous invites name")
    q.add_argument("--rendezvous-key", metavar="KEY", help="the rendezvous' public key")
    q.set_defaults(func=cmd_ca_init)
    q = ca_sub.add_parser("sign", help="certificate for a node's public key, to stdout")
    q.add_argument("--ca", required=True, metavar="DIR", help="the authority's directory")
    q.add_argument("--name", required=True, metavar="N", help="the node's name")
    q.add_argument("--ip", required=True, metavar="CIDR", help="overlay address(es), comma-sep.")
    q.add_argument("--pubkey", required=True, metavar="KEY", help="the node's public key")
    q.add_argument("--groups", metavar="a,b", help="groups the node belongs to")
    q.add_argument("--routes", metavar="CIDR,..", help="networks routed through the node")
    q.add_argument("--valid", default="365d", metavar="D", help="validity (default 365d)")
    q.set_defaults(func=cmd_ca_sign)
    q = ca_sub.add_parser("revoke", help="revoke a certificate or a name (DIR/revoked.crl)")
    q.add_argument("--ca", required=True, metavar="DIR", help="the authority's directory")
    q.add_argument("target", metavar="CERT-or-NAME", help="a certificate file or a node name")
    q.set_defaults(func=cmd_ca_revoke)
    q = ca_sub.add_parser("show", help="print a certificate readable")
    q.add_argument("file", metavar="FILE", help="certificate, revocation list or invite file")
    q.set_defaults(func=cmd_ca_show)

    p = sub.add_parser("invite", help="one-line token that lets a new machine join (run on CA)")
    p.add_argument("--ca", required=True, metavar="DIR", help="the authority's directory")
    p.add_argument("--name", required=True, metavar="N", help="the new node's name")
    p.add_argument("--ip", required=True, metavar="CIDR", help="its overlay address(es)")
    p.add_argument("--groups", metavar="a,b", help="groups it belongs to")
    p.add_argument("--routes", metavar="CIDR,..", help="networks routed through it")
    p.add_argument("--expires", default="24h", metavar="D", help="use it within (default 24h)")
    p.add_argument("--valid", default="365d", metavar="D", help="certificate validity (365d)")
    p.add_argument("--rendezvous", metavar="HOST:PORT", help="default: from DIR/network.toml")
    p.add_argument("--rendezvous-key", metavar="KEY", help="default: from DIR/network.toml")
    p.set_defaults(func=cmd_invite)

    p = sub.add_parser("join", help="join a network with an invite: key, certificate, config")
    p.add_argument("token", metavar="TOKEN", help="the invite ('p2ptun invite' printed it)")
    p.add_argument(
        "--config",
        default="/etc/p2ptun/p2p0.toml",
        metavar="FILE",
        help="config to write (default /etc/p2ptun/p2p0.toml; key and certificate beside it)",
    )
    p.add_argument("--interface", metavar="NAME", help="interface name (default: FILE's name)")
    p.set_defaults(func=cmd_join)

    p = sub.add_parser(
        "netcheck", help="what this host's NAT does (RFC 5780), TURN reachability, IPv6"
    )
    p.add_argument("-c", "--config", metavar="FILE", help="a node config: its STUN/TURN servers")
    p.add_argument("--server", metavar="HOST[:PORT]", help="a STUN server to ask (RFC 5780)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(func=cmd_netcheck)

    p = sub.add_parser("bugreport", help="one archive for a bug report: status, logs, netcheck…")
    p.add_argument("-c", "--config", metavar="FILE", help="the node's (or rendezvous') config")
    p.add_argument("-o", "--output", metavar="FILE", help="archive (default: ./p2ptun-bugreport-…)")
    p.add_argument("--log", action="append", metavar="FILE", help="a log file to include")
    p.add_argument("--interface", metavar="NAME", help="the node's interface name")
    p.set_defaults(func=cmd_bugreport)

    p = sub.add_parser("stun", help="ask a STUN server for this host's mapped address")
    p.add_argument("server", metavar="HOST[:PORT]", help="STUN server (default port 3478)")
    p.add_argument("--tcp", action="store_true", help="use TCP instead of UDP")
    p.add_argument("--timeout", type=float, default=5.0, metavar="S", help="seconds (default 5)")
    p.set_defaults(func=cmd_stun)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        log.setup(args.log_level)
        if args.command is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        func: Command = args.func
        return func(args)
    except BaseException as exc:
        # A daemon's failure reaches us through trio's nurseries, wrapped in exception groups.
        error = only_error(exc)
        if isinstance(error, P2ptunError):
            sys.stderr.write(f"{error}\n")
            return error.exit_code
        if isinstance(error, ProtocolError):
            sys.stderr.write(f"{error}\n")
            return EXIT_FAILURE
        if isinstance(error, KeyboardInterrupt):
            return 130
        if isinstance(error, BrokenPipeError):
            return EXIT_FAILURE
        raise


def only_error(exc: BaseException) -> BaseException:
    """The one exception inside (possibly nested) exception groups of one member each, or
    ``exc`` itself."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

"""``scripts/natlab`` (``python -m p2plab``): build, use and remove NAT labs from a shell.

::

    natlab up [--sites cone,sym] [--ipv6] [--name PREFIX] [--json]
    natlab status [--name PREFIX] [--json]
    natlab exec [--name PREFIX] HOST CMD...
    natlab down [--name PREFIX]
    natlab counters | flush SITE [--uplink 2] | renumber SITE [ADDR] | host-addr SITE [ADDR]
    natlab uplink SITE [--nat NAT] | default-route SITE 1|2 | uplink-link SITE 1|2 up|down
    natlab netem SITE [--loss PCT] [--delay MS] [--jitter MS] [--direction up|down|both]
    natlab netem-clear SITE | block A B | unblock A B

``--name`` may be left out when exactly one lab exists (or set ``P2PTUN_LAB``). Labs are found
through their state files in ``/run/p2ptun-lab/``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from p2plab.natlab import DEFAULT_STATE_DIR, LabError, NatLab, parse_sites
from p2ptun import log as p2plog

USAGE_EXIT = 2


def _pick(name: str | None, state_dir: Path) -> NatLab:
    name = name or os.environ.get("P2PTUN_LAB") or None
    if name is None:
        labs = NatLab.list_saved(state_dir)
        if len(labs) != 1:
            have = ", ".join(labs) if labs else "none"
            raise LabError(f"name the lab with --name (labs: {have})")
        name = labs[0]
    return NatLab.load(name, state_dir)


def _describe(lab: NatLab) -> str:
    lines = [f"lab {lab.prefix}: {len(lab.sites)} site(s)"]
    server = list(lab.server_addrs) + (list(lab.server6_addrs) if lab.ipv6_sites else [])
    lines.append(
        f"  server   ns {lab.ns_server:<16} {', '.join(server)}"
        f"  (internet: {lab.ns_inet}, no default route)"
    )
    for s in lab.sites:
        lines.append(
            f"  site{s.index:<4} ns {lab.ns_host(s.index):<16} {s.host_addr:<15}"
            f" via nat{s.index} ({lab.ns_nat(s.index)}) {s.nat:<11}"
            f" public {s.mapped_addr}"
        )
        if s.index in lab.ipv6_sites:
            lines.append(f"{'':<29} {lab.site6(s.index).host_addr} (IPv6, firewalled)")
    return "\n".join(lines)


def _orphan_namespaces(prefix: str) -> list[str]:
    """Namespaces named like a lab with ``prefix`` (for a lab whose state file is gone)."""
    pattern = re.compile(rf"^{re.escape(prefix)}-(inet|server|nat\d+b?|site\d+)$")
    netns = Path("/run/netns")
    return (
        sorted(p.name for p in netns.iterdir() if pattern.match(p.name)) if netns.is_dir() else []
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="natlab", description="p2ptun NAT lab")
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help=argparse.SUPPRESS)
    parser.add_argument("-v", "--verbose", action="store_true")
    named = argparse.ArgumentParser(add_help=False)
    named.add_argument("--name", help="lab prefix (default: the only lab, or $P2PTUN_LAB)")
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("up", help="build a lab")
    p.add_argument("--sites", default="cone,cone", help="NAT types, comma separated")
    p.add_argument("--ipv6", action="store_true", help="dual-stack server and sites")
    p.add_argument("--name", help="prefix for namespaces and links (default: random)")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("down", parents=[named], help="remove a lab")
    p = sub.add_parser("status", parents=[named], help="show labs")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("exec", parents=[named], help="run a command in a lab host")
    p.add_argument("host")
    p.add_argument("command", nargs=argparse.REMAINDER)
    sub.add_parser("counters", parents=[named], help="internet forward byte counters")
    p = sub.add_parser("flush", parents=[named], help="flush a NAT's mappings")
    p.add_argument("site")
    p.add_argument("--uplink", type=int, default=1, choices=[1, 2])
    p = sub.add_parser("uplink", parents=[named], help="give a site host a second uplink")
    p.add_argument("site")
    p.add_argument("--nat", default="prc")
    p = sub.add_parser("default-route", parents=[named], help="move a host's default route")
    p.add_argument("site")
    p.add_argument("uplink", type=int, choices=[1, 2])
    p = sub.add_parser("uplink-link", parents=[named], help="take an uplink's link down or up")
    p.add_argument("site")
    p.add_argument("uplink", type=int, choices=[1, 2])
    p.add_argument("state", choices=["up", "down"])
    p = sub.add_parser("renumber", parents=[named], help="change a NAT's public address")
    p.add_argument("site")
    p.add_argument("addr", nargs="?")
    p = sub.add_parser("host-addr", parents=[named], help="change a LAN host's address")
    p.add_argument("site")
    p.add_argument("addr", nargs="?")
    p = sub.add_parser("netem", parents=[named], help="loss/delay on a site's WAN link")
    p.add_argument("site")
    p.add_argument("--loss", type=float, default=0.0, help="percent")
    p.add_argument("--delay", type=float, default=0.0, help="milliseconds")
    p.add_argument("--jitter", type=float, default=0.0, help="milliseconds")
    p.add_argument("--direction", default="both", choices=["up", "down", "both"])
    p = sub.add_parser("netem-clear", parents=[named], help="remove netem from a site's link")
    p.add_argument("site")
    for cmd in ("block", "unblock"):
        p = sub.add_parser(cmd, parents=[named], help=f"{cmd} traffic between two sites")
        p.add_argument("a")
        p.add_argument("b")

    args = parser.parse_args(argv)
    p2plog.setup("debug" if args.verbose else "info", with_time=False)
    if os.geteuid() != 0:
        print("natlab: needs root", file=sys.stderr)
        return USAGE_EXIT
    state_dir: Path = args.state_dir
    try:
        return _dispatch(args, state_dir)
    except LabError as exc:
        print(f"natlab: {exc}", file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace, state_dir: Path) -> int:
    cmd: str = args.cmd
    if cmd == "up":
        lab = NatLab.create(
            parse_sites(args.sites), prefix=args.name, state_dir=state_dir, ipv6=args.ipv6
        )
        print(json.dumps(lab.status(), indent=2) if args.json else _describe(lab))
        return 0
    if cmd == "status":
        names = [args.name] if args.name else NatLab.list_saved(state_dir)
        labs = [NatLab.load(n, state_dir) for n in names]
        if args.json:
            print(json.dumps([lab.status() for lab in labs], indent=2))
        elif not labs:
            print("no labs")
        for lab in labs if not args.json else []:
            st = lab.status()
            dead = [ns for ns, ok in st["alive"].items() if not ok]
            print(_describe(lab))
            if dead:
                print(f"  MISSING namespaces: {', '.join(dead)}")
            if st.get("blocked"):
                print(f"  blocked link pairs: {st['blocked']}")
        return 0
    if cmd == "down":
        name = args.name or os.environ.get("P2PTUN_LAB")
        if name and not (state_dir / f"{name}.json").exists():
            orphans = _orphan_namespaces(name)
            if not orphans:
                raise LabError(f"no lab named {name!r}")
            subprocess.run(
                ["ip", "-force", "-batch", "-"],
                input="".join(f"netns del {ns}\n" for ns in orphans),
                text=True,
                timeout=30,
                check=False,
            )
            print(f"removed {len(orphans)} orphan namespace(s) of {name}")
            return 0
        lab = _pick(name, state_dir)
        lab.close()
        print(f"lab {lab.prefix} removed")
        return 0
    lab = _pick(args.name, state_dir)
    if cmd == "exec":
        command = list(args.command)
        if command and command[0] == "--":
            command = command[1:]
        if not command:
            raise LabError("exec needs a command")
        ns = lab.ns(args.host)
        os.execvp("ip", ["ip", "netns", "exec", ns, *command])
    if cmd == "counters":
        for (a, b), n in sorted(lab.counters().items()):
            if n:
                print(f"{_ep(a)} -> {_ep(b)}: {n} bytes")
        return 0
    if cmd == "flush":
        lab.flush_nat(args.site, args.uplink)
    elif cmd == "uplink":
        up = lab.add_uplink(args.site, args.nat)
        print(f"{up.host_addr} via {up.lan_gw} ({up.nat}, public {up.wan_addr})")
    elif cmd == "default-route":
        lab.set_uplink(args.site, args.uplink)
    elif cmd == "uplink-link":
        lab.set_uplink_link(args.site, args.uplink, args.state == "up")
    elif cmd == "renumber":
        print(lab.renumber_nat(args.site, args.addr))
    elif cmd == "host-addr":
        print(lab.set_host_address(args.site, args.addr))
    elif cmd == "netem":
        lab.set_netem(
            args.site,
            loss=args.loss,
            delay_ms=args.delay,
            jitter_ms=args.jitter,
            direction=args.direction,
        )
    elif cmd == "netem-clear":
        lab.clear_netem(args.site)
    elif cmd == "block":
        lab.block(args.a, args.b)
    elif cmd == "unblock":
        lab.unblock(args.a, args.b)
    return 0


def _ep(k: int) -> str:
    return "server" if k == 0 else f"site{k}"

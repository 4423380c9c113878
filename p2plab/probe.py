"""Raw-socket probes run inside lab namespaces: ``python -m p2plab.probe COMMAND ...``.

Commands (each prints one JSON object on stdout, every wait bounded; addresses are IPv4 or
IPv6 literals, ``2001:db8::10:4000`` without brackets):

``reflect --listen A:P [--listen ...] [--tcp A:P ...] [--lifetime S]``
    UDP reflector. A datagram ``{"id": n, "via": "A:P" | null}`` is answered with
    ``{"id": n, "seen": "ip:port", "from": "A:P"}`` sent from the listening socket ``via`` (another
    address or port of the reflector, to test a NAT's filtering) or else from the one it came in
    on. TCP listeners send ``{"seen": ...}`` and close. Prints ``{"ready": true}`` once bound.

``nat --primary A:P --alt-addr B:P --alt-port A:Q --alt-both B:Q``
    Classifies the NAT (over IPv6: the firewall) in front of this host the RFC 5780 way, with
    two fresh sockets: mapping (the same socket to A:P, B:P, B:Q: same external address?) and
    filtering (after sending to A:P only, does a reply from B:Q, or from A:Q, get through?).

``count --server A:P [-n N] [--interval S] [--timeout S]``
    Sends N numbered probes, reports how many came back and the round-trip times.

``tcp --server A:P [--timeout S]``
    Connects over TCP and reports the address the reflector saw.

``ask --server A:P [--local-port N] [--local-ip A] [--via B:Q]``
    One request from a chosen local port (and address: a multi-homed host's uplink); reports
    the reply (``{"reply": null}`` if none).

``sequence --server A:P [--server ...]``
    One socket asks every server in turn; reports the mapped address each saw, in order (the
    port allocation of a symmetric NAT: sequential or random).

``listen --port N [--ip A] [--timeout S]``
    Prints ``{"ready": true}``, then collects datagrams for S seconds and reports their sources.

``send --to A:P [--bind B:Q] [--count N]``
    Sends N small datagrams (unsolicited traffic, e.g. at a NAT mapping).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import select
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

Endpoint = tuple[str, int]

UDP_WAIT_S = 0.4
"""How long a probe waits for a reply before it counts as lost (per try)."""


def parse_endpoint(text: str) -> Endpoint:
    """``"203.0.113.10:4000"`` -> ``("203.0.113.10", 4000)``."""
    host, _, port = text.rpartition(":")
    return host, int(port)


def fmt(ep: Endpoint) -> str:
    return f"{ep[0]}:{ep[1]}"


def _family(host: str) -> socket.AddressFamily:
    """The socket family of a literal address: IPv6 if it has a colon."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _wildcard(host: str) -> str:
    return "::" if ":" in host else "0.0.0.0"


def reflect(listen: Sequence[Endpoint], tcp: Sequence[Endpoint], lifetime: float) -> None:
    """Serve until killed or ``lifetime`` seconds have passed."""
    udp: dict[Endpoint, socket.socket] = {}
    for ep in listen:
        s = socket.socket(_family(ep[0]), socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(ep)
        udp[ep] = s
    listeners: list[socket.socket] = []
    for ep in tcp:
        t = socket.socket(_family(ep[0]), socket.SOCK_STREAM)
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        t.bind(ep)
        t.listen(16)
        listeners.append(t)
    by_fd = {s.fileno(): (ep, s) for ep, s in udp.items()}
    print(json.dumps({"ready": True}), flush=True)
    deadline = time.monotonic() + lifetime
    while (remaining := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([*udp.values(), *listeners], [], [], min(remaining, 1.0))
        for r in ready:
            if r in listeners:
                conn, peer = r.accept()
                with conn:
                    conn.settimeout(1.0)
                    conn.sendall(json.dumps({"seen": fmt(peer)}).encode() + b"\n")
                continue
            ep, s = by_fd[r.fileno()]
            data, peer = s.recvfrom(2048)
            try:
                msg = json.loads(data)
                via = parse_endpoint(msg["via"]) if msg.get("via") else ep
                out = udp.get(via, s)
                reply = {"id": msg.get("id"), "seen": fmt(peer), "from": fmt(via)}
                out.sendto(json.dumps(reply).encode(), peer)
            except (ValueError, KeyError, TypeError, OSError):
                continue


def _ask(
    sock: socket.socket,
    server: Endpoint,
    msg_id: int,
    via: Endpoint | None = None,
    tries: int = 3,
    wait: float = UDP_WAIT_S,
) -> dict[str, Any] | None:
    """Send a request (``tries`` times) and return the matching reply, or None."""
    payload = json.dumps({"id": msg_id, "via": fmt(via) if via else None}).encode()
    for _ in range(tries):
        try:
            sock.sendto(payload, server)
        except OSError:
            return None
        deadline = time.monotonic() + wait
        while (remaining := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([sock], [], [], remaining)
            if not ready:
                break
            try:
                data, _peer = sock.recvfrom(2048)
                reply: dict[str, Any] = json.loads(data)
            except (OSError, ValueError):
                continue
            if reply.get("id") == msg_id:
                return reply
    return None


def classify_nat(
    primary: Endpoint, alt_addr: Endpoint, alt_port: Endpoint, alt_both: Endpoint
) -> dict[str, Any]:
    """Mapping and filtering behaviour of the NAT in front of this host (RFC 5780 terms).

    ``mapping``: ``endpoint-independent``, ``address-dependent``, ``address-and-port-dependent``;
    ``filtering``: same vocabulary; either is ``blocked`` if the reflector never answered.
    """
    family, wildcard = _family(primary[0]), _wildcard(primary[0])
    m = socket.socket(family, socket.SOCK_DGRAM)
    m.bind((wildcard, 0))
    r1 = _ask(m, primary, 1)
    r2 = _ask(m, alt_addr, 2) if r1 else None
    r3 = _ask(m, alt_both, 3) if r1 else None
    mapped = [r["seen"] if r else None for r in (r1, r2, r3)]
    local = fmt(m.getsockname())
    m.close()
    if None in mapped:
        mapping = "blocked"
    elif mapped[0] == mapped[1]:
        mapping = "endpoint-independent"
    elif mapped[1] == mapped[2]:
        mapping = "address-dependent"
    else:
        mapping = "address-and-port-dependent"

    f = socket.socket(family, socket.SOCK_DGRAM)
    f.bind((wildcard, 0))
    f_base = _ask(f, primary, 10)
    from_other_addr = from_other_port = False
    if f_base is not None:
        # a reply that does not come is the expected answer for most NATs: try less hard
        from_other_addr = _ask(f, primary, 11, via=alt_both, tries=2) is not None
        from_other_port = _ask(f, primary, 12, via=alt_port, tries=2) is not None
    f.close()
    if f_base is None:
        filtering = "blocked"
    elif from_other_addr:
        filtering = "endpoint-independent"
    elif from_other_port:
        filtering = "address-dependent"
    else:
        filtering = "address-and-port-dependent"
    return {
        "local_port": int(local.rpartition(":")[2]),
        "mapped": mapped,
        "mapping": mapping,
        "filtering": filtering,
        "from_other_addr": from_other_addr,
        "from_other_port": from_other_port,
    }


def count(server: Endpoint, n: int, interval: float, timeout: float) -> dict[str, Any]:
    """Send ``n`` probes ``interval`` apart; collect replies until all are in or ``timeout``
    has passed after the last one."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 0))
    sent_at: dict[int, float] = {}
    rtts: dict[int, float] = {}

    def drain(until: float, until_all_answered: bool = False) -> None:
        while (remaining := until - time.monotonic()) > 0:
            if until_all_answered and len(rtts) == len(sent_at):
                return
            ready, _, _ = select.select([s], [], [], remaining)
            if not ready:
                continue
            try:
                reply = json.loads(s.recv(2048))
            except (OSError, ValueError):
                continue
            i = reply.get("id")
            if i in sent_at and i not in rtts:
                rtts[i] = time.monotonic() - sent_at[i]

    for i in range(n):
        sent_at[i] = time.monotonic()
        with contextlib.suppress(OSError):
            s.sendto(json.dumps({"id": i, "via": None}).encode(), server)
        drain(time.monotonic() + interval)
    drain(time.monotonic() + timeout, until_all_answered=True)
    s.close()
    times = sorted(rtts.values())
    return {
        "sent": n,
        "received": len(rtts),
        "rtt_min_ms": round(times[0] * 1000, 3) if times else None,
        "rtt_median_ms": round(times[len(times) // 2] * 1000, 3) if times else None,
    }


def tcp_probe(server: Endpoint, timeout: float) -> dict[str, Any]:
    """Connect, read the reflector's line; ``{"ok": bool, "seen": ..., "error": ...}``."""
    try:
        with socket.create_connection(server, timeout=timeout) as c:
            data = b""
            while not data.endswith(b"\n"):
                chunk = c.recv(2048)
                if not chunk:
                    break
                data += chunk
        return {"ok": True, "seen": json.loads(data)["seen"]}
    except (OSError, ValueError, KeyError) as exc:
        return {"ok": False, "error": str(exc) or type(exc).__name__}


def ask(
    server: Endpoint, local_port: int, via: Endpoint | None, local_ip: str = "0.0.0.0"
) -> dict[str, Any]:
    """One request from ``local_ip:local_port`` (0 = any port)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((local_ip, local_port))
    reply = _ask(s, server, 1, via=via)
    port = s.getsockname()[1]
    s.close()
    return {"local_port": port, "reply": reply}


def sequence(servers: Sequence[Endpoint]) -> dict[str, Any]:
    """Ask each server in turn from one socket: the mapped address of each new flow."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 0))
    seen = []
    for i, server in enumerate(servers):
        reply = _ask(s, server, 20 + i)
        seen.append(reply["seen"] if reply else None)
    port = s.getsockname()[1]
    s.close()
    return {"local_port": port, "mapped": seen}


def listen(port: int, timeout: float, ip: str = "0.0.0.0") -> dict[str, Any]:
    """Collect datagrams arriving at ``ip``:``port`` for ``timeout`` seconds."""
    s = socket.socket(_family(ip), socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((ip, port))
    print(json.dumps({"ready": True}), flush=True)
    sources: list[str] = []
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0 and len(sources) < 1000:
        ready, _, _ = select.select([s], [], [], remaining)
        if ready:
            _data, peer = s.recvfrom(2048)
            sources.append(fmt(peer))
    s.close()
    return {"received": len(sources), "sources": sources}


def send(to: Endpoint, bind: Endpoint | None, n: int) -> dict[str, Any]:
    """Send ``n`` datagrams to ``to`` (from ``bind`` if given)."""
    s = socket.socket(_family(to[0]), socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(bind or (_wildcard(to[0]), 0))
    sent = 0
    for i in range(n):
        with contextlib.suppress(OSError):
            s.sendto(json.dumps({"id": i, "via": None}).encode(), to)
            sent += 1
        time.sleep(0.01)
    src = fmt(s.getsockname())
    s.close()
    return {"sent": sent, "from": src}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m p2plab.probe")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("reflect")
    p.add_argument("--listen", action="append", type=parse_endpoint, default=[])
    p.add_argument("--tcp", action="append", type=parse_endpoint, default=[])
    p.add_argument("--lifetime", type=float, default=600.0)
    p = sub.add_parser("nat")
    for name in ("primary", "alt-addr", "alt-port", "alt-both"):
        p.add_argument(f"--{name}", type=parse_endpoint, required=True)
    p = sub.add_parser("count")
    p.add_argument("--server", type=parse_endpoint, required=True)
    p.add_argument("-n", type=int, default=100)
    p.add_argument("--interval", type=float, default=0.005)
    p.add_argument("--timeout", type=float, default=1.0)
    p = sub.add_parser("tcp")
    p.add_argument("--server", type=parse_endpoint, required=True)
    p.add_argument("--timeout", type=float, default=2.0)
    p = sub.add_parser("ask")
    p.add_argument("--server", type=parse_endpoint, required=True)
    p.add_argument("--local-port", type=int, default=0)
    p.add_argument("--local-ip", default="0.0.0.0")
    p.add_argument("--via", type=parse_endpoint)
    p = sub.add_parser("sequence")
    p.add_argument("--server", action="append", type=parse_endpoint, required=True)
    p = sub.add_parser("listen")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--timeout", type=float, default=1.0)
    p.add_argument("--ip", default="0.0.0.0")
    p = sub.add_parser("send")
    p.add_argument("--to", type=parse_endpoint, required=True)
    p.add_argument("--bind", type=parse_endpoint)
    p.add_argument("--count", type=int, default=3)
    args = parser.parse_args(argv)

    if args.cmd == "reflect":
        with contextlib.suppress(KeyboardInterrupt):
            reflect(args.listen, args.tcp, args.lifetime)
        return 0
    if args.cmd == "nat":
        result = classify_nat(args.primary, args.alt_addr, args.alt_port, args.alt_both)
    elif args.cmd == "count":
        result = count(args.server, args.n, args.interval, args.timeout)
    elif args.cmd == "ask":
        result = ask(args.server, args.local_port, args.via, args.local_ip)
    elif args.cmd == "sequence":
        result = sequence(args.server)
    elif args.cmd == "listen":
        result = listen(args.port, args.timeout, args.ip)
    elif args.cmd == "send":
        result = send(args.to, args.bind, args.count)
    else:
        result = tcp_probe(args.server, args.timeout)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Our port mapper (PCP, NAT-PMP, UPnP) against miniupnpd on a NAT lab router, cross-checked with
miniupnpc's ``upnpc`` and libnatpmp's ``natpmpc``.

Topology: site1 behind a symmetric NAT whose router runs miniupnpd (:mod:`p2plab.miniupnpd`;
coturn in the server namespace answers its STUN test), site2 a port-restricted cone. The mapper
is the node's own shell, :class:`p2ptun.net.portmap.PortMapper` on the real host, run in site1 by
this file (``python test_portmap_miniupnpd.py map PORT``): it prints the mapping as one JSON
line, then waits for a line on stdin, deletes the mapping and prints the outcome.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

STUN_PORT = 3490  # coturn for miniupnpd's STUN test (the rendezvous' STUN port stays free)
INTERNAL_PORT = 41641

pytestmark = pytest.mark.lab


# ---------------------------------------------------------------- the in-namespace program


def _map(port: int, lifetime: int) -> None:
    import trio

    from p2ptun.net.portmap import PortMapper
    from p2ptun.net.system import SystemHost

    async def main() -> None:
        host = SystemHost()
        # The socket the mapping is for: what arrives on it proves the forwarding.
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("0.0.0.0", port))
        sock.setblocking(False)
        mapper = PortMapper(host, port, lifetime=lifetime)
        async with trio.open_nursery() as nursery:
            await nursery.start(mapper.run)
            t0 = trio.current_time()
            await mapper.refresh()
            with trio.move_on_after(10):
                await mapper.wait_settled()
            m = mapper.mapping
            out: dict[str, Any] = {
                "ms": round((trio.current_time() - t0) * 1000, 1),
                "failure": mapper.failure,
                "mapping": None
                if m is None
                else {"protocol": m.protocol, "gateway": m.gateway, "external": list(m.external)},
            }
            print(json.dumps(out), flush=True)
            await trio.to_thread.run_sync(sys.stdin.readline)
            got = []
            while True:
                try:
                    data, source = sock.recvfrom(200)
                except BlockingIOError:
                    break
                got.append([data.decode(errors="replace"), list(source)])
            await mapper.aclose()
            print(json.dumps({"received": got, "released": mapper.mapping is None}), flush=True)
            nursery.cancel_scope.cancel()

    trio.run(main)


# ---------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def lab(natlab_module: Any) -> Iterator[Any]:
    from p2plab.coturn import start_coturn

    lab = natlab_module(["sym", "prc"])
    start_coturn(lab, port=STUN_PORT)
    yield lab


def _miniupnpd(lab: Any, **kwargs: Any) -> Any:
    from p2plab.miniupnpd import start_miniupnpd

    return start_miniupnpd(
        lab, 1, stun=(lab.server_addrs[0], STUN_PORT), stun_alt=lab.server_addrs[1:], **kwargs
    )


def _start_mapper(lab: Any, lifetime: int = 7200) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc: subprocess.Popen[str] = lab.popen(
        "site1",
        [sys.executable, __file__, "map", str(INTERNAL_PORT), str(lifetime)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        lab.stop(proc)
        pytest.fail(f"mapper failed: {proc.stderr.read() if proc.stderr else ''}")
    return proc, json.loads(line)


def _finish_mapper(lab: Any, proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write("release\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        proc.wait(timeout=10)
    finally:
        lab.stop(proc)
    result: dict[str, Any] = json.loads(line)
    return result


def _send_from_site2(lab: Any, external: list[Any], text: str) -> None:
    code = (
        "import socket,sys;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
        f"[s.sendto({text!r}.encode(),({external[0]!r},{external[1]})) for _ in range(3)]"
    )
    lab.exec("site2", sys.executable, "-c", code, check=True, timeout=10)


def _upnpc_list(lab: Any, daemon: Any) -> str:
    out: str = lab.exec("site1", "upnpc", "-u", daemon.root_desc_url, "-l", timeout=15).stdout
    return out


def test_pcp_map_forward_and_delete(lab: Any) -> None:
    daemon = _miniupnpd(lab)
    try:
        proc, got = _start_mapper(lab)
        mapping = got["mapping"]
        print("FIGURE pcp mapping", got)
        assert mapping is not None, got
        assert mapping["protocol"] == "pcp" and mapping["gateway"] == "10.0.1.1"
        assert mapping["external"][0] == lab.site(1).wan_addr
        ext_port = mapping["external"][1]
        # miniupnpd's state: the DNAT rule, and what its UPnP side lists (another client).
        rules = daemon.mappings()
        assert any(
            r.external_port == ext_port
            and (r.internal_ip, r.internal_port) == ("10.0.1.2", INTERNAL_PORT)
            for r in rules
        ), rules
        assert f"UDP {ext_port}->10.0.1.2:{INTERNAL_PORT}" in _upnpc_list(lab, daemon)
        # The forwarding works: a datagram from the other site reaches our port.
        _send_from_site2(lab, mapping["external"], "through the mapping")
        time.sleep(0.2)
        done = _finish_mapper(lab, proc)
        assert any(d == "through the mapping" for d, _ in done["received"]), done
        assert done["released"]
        assert daemon.mappings() == []
        assert f"->10.0.1.2:{INTERNAL_PORT}" not in _upnpc_list(lab, daemon)
    finally:
        daemon.stop()


@pytest.mark.slow
def test_pcp_lease_is_renewed_before_it_ends(lab: Any) -> None:
    """A 6 s lease (miniupnpd's min_lifetime lowered to allow it) is renewed at half its
    lifetime: after 14 s miniupnpd has seen the MAP request four times or more and still
    forwards."""
    daemon = _miniupnpd(lab, min_lifetime=6)
    try:
        proc, got = _start_mapper(lab, lifetime=6)
        assert got["mapping"] is not None and got["mapping"]["protocol"] == "pcp", got
        time.sleep(14)
        requests = daemon.log_text().count("PCP request received from 10.0.1.2")
        print("FIGURE pcp requests in 14 s with a 6 s lease:", requests)
        assert requests >= 4, daemon.log_text()[-2000:]
        assert any(r.internal_port == INTERNAL_PORT for r in daemon.mappings())
        _send_from_site2(lab, got["mapping"]["external"], "renewed")
        time.sleep(0.2)
        done = _finish_mapper(lab, proc)
        assert any(d == "renewed" for d, _ in done["received"]), done
    finally:
        daemon.stop()


def test_natpmp_when_the_gateway_drops_pcp(lab: Any) -> None:
    daemon = _miniupnpd(lab, pcp=False)
    try:
        proc, got = _start_mapper(lab)
        mapping = got["mapping"]
        print("FIGURE natpmp mapping", got)
        assert mapping is not None and mapping["protocol"] == "natpmp", got
        # natpmpc (libnatpmp) sees the same external address from the same gateway.
        out = lab.exec("site1", "natpmpc", "-g", "10.0.1.1", timeout=15).stdout
        assert f"Public IP address : {mapping['external'][0]}" in out, out
        assert any(r.external_port == mapping["external"][1] for r in daemon.mappings())
        _send_from_site2(lab, mapping["external"], "natpmp")
        time.sleep(0.2)
        done = _finish_mapper(lab, proc)
        assert any(d == "natpmp" for d, _ in done["received"]), done
        assert done["released"] and daemon.mappings() == []
    finally:
        daemon.stop()


def test_upnp_when_the_gateway_has_neither_pcp_nor_natpmp(lab: Any) -> None:
    daemon = _miniupnpd(lab, natpmp=False)
    try:
        proc, got = _start_mapper(lab)
        mapping = got["mapping"]
        print("FIGURE upnp mapping", got)
        assert mapping is not None and mapping["protocol"] == "upnp", got
        assert mapping["gateway"] == "10.0.1.1"
        assert mapping["external"][0] == lab.site(1).wan_addr
        ext_port = mapping["external"][1]
        # upnpc (miniupnpc's own client) lists it with our description.
        listed = _upnpc_list(lab, daemon)
        assert f"UDP {ext_port}->10.0.1.2:{INTERNAL_PORT}" in listed and "'p2ptun'" in listed, (
            listed
        )
        _send_from_site2(lab, mapping["external"], "upnp")
        time.sleep(0.2)
        done = _finish_mapper(lab, proc)
        assert any(d == "upnp" for d, _ in done["received"]), done
        assert done["released"] and daemon.mappings() == []
        assert f"->10.0.1.2:{INTERNAL_PORT}" not in _upnpc_list(lab, daemon)
    finally:
        daemon.stop()


def test_a_mapping_natpmpc_made_is_seen_by_our_codec_as_taken(lab: Any) -> None:
    """natpmpc maps our port first; our PCP request for the same port then gets a mapping of
    its own (another external port, or the same internal forwarding), never a broken one."""
    daemon = _miniupnpd(lab)
    try:
        out = lab.exec(
            "site1",
            "natpmpc",
            "-g",
            "10.0.1.1",
            "-a",
            "50001",
            str(INTERNAL_PORT),
            "udp",
            "120",
            timeout=15,
        ).stdout
        assert "Mapped public port 50001" in out, out
        proc, got = _start_mapper(lab)
        assert got["mapping"] is not None, got
        assert got["mapping"]["external"][1] != 0
        _finish_mapper(lab, proc)
    finally:
        daemon.stop()


def test_no_mapping_without_a_server(lab: Any) -> None:
    """No miniupnpd: PCP and NAT-PMP end within their 2 s probe, then UPnP's search (miniupnpc
    asks for several device types in turn), each with a reason; no mapping."""
    proc, got = _start_mapper(lab)
    _finish_mapper(lab, proc)
    print("FIGURE no server", got)
    assert got["mapping"] is None and "no PCP or NAT-PMP answer" in got["failure"], got
    assert "no UPnP IGD answered" in got["failure"], got
    assert got["ms"] < 8000


if __name__ == "__main__":
    if sys.argv[1] == "map":
        _map(int(sys.argv[2]), int(sys.argv[3]))

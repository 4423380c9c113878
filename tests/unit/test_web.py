"""The rendezvous' network map page (``[web]``): the real rendezvous and two node daemons on
the in-memory network under virtual time, relayed through the rendezvous' TURN server; the
page and its JSON with the admin token, 401 without it, per-node relayed bytes that move with
traffic, and escaping. The headless-browser check in the NAT lab is tests/e2e/test_observe.py.
"""

from __future__ import annotations

import json

import trio
import trio.testing

from p2plab.memlab import RENDEZVOUS_IP, MemoryLab
from p2plab.memnet import MemoryHost
from p2ptun.config import WebSettings
from p2ptun.rendezvous.web import render_html

TOKEN = "0123456789abcdef-map"
PORT = 8080


async def get(host: MemoryHost, path: str, headers: str = "") -> tuple[int, bytes]:
    conn = await host.connect_tcp(RENDEZVOUS_IP, PORT)
    await conn.stream.send_all(f"GET {path} HTTP/1.1\r\nHost: rv\r\n{headers}\r\n".encode())
    data = b""
    while chunk := await conn.stream.receive_some(65536):
        data += chunk
    await conn.stream.aclose()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def test_the_map_shows_the_online_nodes_and_their_relayed_bytes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lab = MemoryLab(seed=3)
    alice = lab.node("alice", "sym")
    bob = lab.node("bob", "sym")  # two symmetric NATs: relayed
    lab.rendezvous_web = WebSettings((RENDEZVOUS_IP, PORT), TOKEN)
    admin = lab.network.public_host("admin", "192.0.2.50")
    async with trio.open_nursery() as nursery:
        await lab.start(nursery)
        await lab.ping_stream(nursery, alice, bob, replies=20, timeout=30)

        for path, headers in (
            ("/", ""),
            ("/api/nodes", ""),
            ("/?token=wrong-token-wrong", ""),
            ("/api/nodes", "Authorization: Bearer nope\r\n"),
        ):
            status, body = await get(admin, path, headers)
            assert status == 401, (path, headers)
            assert b"alice" not in body
        status, body = await get(admin, f"/?token={TOKEN}")
        assert status == 200
        page = body.decode()
        assert "<td class='name'>alice</td>" in page and "<td class='name'>bob</td>" in page
        assert "2 online" in page
        assert "<script" not in page  # usable without JavaScript

        _, body = await get(admin, "/api/nodes", f"Authorization: Bearer {TOKEN}\r\n")
        first = {n["name"]: n for n in json.loads(body)["nodes"]}
        assert set(first) == {"alice", "bob"}
        assert first["alice"]["address"].startswith(alice.router.public_ip + ":")
        assert first["alice"]["peers_listed"] == 1
        assert first["alice"]["relay_allocations"] >= 1
        await trio.sleep(2)  # 40 more pings each way through the relays
        _, body = await get(admin, f"/api/nodes?token={TOKEN}")
        later = {n["name"]: n for n in json.loads(body)["nodes"]}

        def relayed(nodes: dict[str, dict[str, int]]) -> int:
            return sum(
                n["relayed_bytes_to_peers"] + n["relayed_bytes_to_node"] for n in nodes.values()
            )

        # One node's allocation carries the pair (the other sends to it from its NAT): 40
        # pings and their replies went through it both ways.
        assert relayed(later) - relayed(first) >= 40 * 2 * 32  # WireGuard adds 32 to each
        assert (await get(admin, f"/nowhere?token={TOKEN}"))[0] == 404
        for node in (alice, bob):
            node.daemon.stop()
        await lab.wait_until(lambda: not alice.host.tuns and not bob.host.tuns, 10)
        nursery.cancel_scope.cancel()


def test_names_and_addresses_are_escaped() -> None:
    snap = {
        "time": "t",
        "nodes_online": 1,
        "nodes_registered": 1,
        "relay_allocations": 0,
        "refusals": {"<b>x</b>": 1},
        "nodes": [
            {
                "name": "<script>alert(1)</script>",
                "network": None,
                "address": "1.2.3.4:5&x",
                "online_since": "t",
                "online_seconds": 3.0,
                "peers_listed": 0,
                "relay_allocations": 0,
                "relayed_bytes_to_peers": 0,
                "relayed_bytes_to_node": 0,
            }
        ],
    }
    page = render_html(snap)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "5&amp;x" in page and "&lt;b&gt;x&lt;/b&gt;" in page

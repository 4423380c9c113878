"""L3: names and addresses are matched whole.

``re.match`` with ``$`` lets a trailing newline through, so ``check`` used to accept
``name = "alice\\n"``, an interface ``"p2p0\\n"``, a rendezvous ``"foo\\n:7070"``, and
``"1.2.3:7070"`` (a mistyped address taken for a host name); a peer named ``"bob\\n"`` then
made the signaling client raise ValueError out of ``data_received`` once registered. Now each
is one line and exit 2 from ``check``, and the client refuses such a peer when it is built.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from p2ptun import cli
from p2ptun.keys import encode_key, generate_private_key, public_key
from p2ptun.rendezvous.store import MemoryStore
from p2ptun.signal.client import SignalClientCore
from p2ptun.signal.hub import SignalingServerCore

KEY = encode_key(generate_private_key())
PEER = encode_key(public_key(generate_private_key()))
RV = encode_key(public_key(generate_private_key()))


def node_config(
    name: str = "alice",
    ifname: str = "p2p0",
    rendezvous: str = "rv.example:7070",
    peer: str = "bob",
) -> str:
    q = json.dumps  # a JSON string is a TOML basic string
    return (
        f"name = {q(name)}\nprivate_key = {q(KEY)}\n"
        f'[interface]\nname = {q(ifname)}\naddress = ["10.77.0.1/24"]\n'
        f"[rendezvous]\naddress = {q(rendezvous)}\npublic_key = {q(RV)}\n"
        f"[[peer]]\nname = {q(peer)}\npublic_key = {q(PEER)}\n"
        f'allowed_ips = ["10.77.0.2/32"]\n'
    )


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "node.toml"
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


def test_the_template_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", "-c", write(tmp_path, node_config())]) == 0, capsys.readouterr()


@pytest.mark.parametrize(
    ("field", "value", "key"),
    [
        ("name", "alice\n", "name"),
        ("ifname", "p2p0\n", "interface.name"),
        ("rendezvous", "foo\n:7070", "rendezvous.address"),
        ("rendezvous", "1.2.3:7070", "rendezvous.address"),
        ("peer", "bob\n", "peer[0].name"),
    ],
)
def test_check_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], field: str, value: str, key: str
) -> None:
    text = node_config(**{field: value})
    code = cli.main(["check", "-c", write(tmp_path, text)])
    err = capsys.readouterr().err
    print(f"FIGURE L3 check {field}={value!r}: exit {code}")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and key in err


def test_client_refuses_a_bad_peer_name_before_any_network_input() -> None:
    """Either the client refuses the name when built, or no exception leaves
    ``data_received`` (before: a ValueError escaped once Registered arrived)."""
    rv_key = generate_private_key()
    node_key = generate_private_key()
    now = time.monotonic()
    try:
        client = SignalClientCore(
            name="alice",
            private_key=node_key,
            rendezvous_key=public_key(rv_key),
            peers={"bob\n": public_key(generate_private_key())},
            rng=os.urandom,
            random=lambda: 0.5,
            wall_clock=time.time,
            now=now,
        )
    except ValueError:
        print("FIGURE L3 client: a bad peer name is refused when the client is built")
        return
    hub = SignalingServerCore(rv_key, MemoryStore(True), rng=os.urandom, wall_clock=time.time)
    assert hub.connection_made(1, now, "127.0.0.2:5000")
    assert client.poll_connect(now)
    client.connection_made(now)
    for _ in range(10):
        hub.data_received(1, client.data_to_send(), now)
        client.data_received(hub.data_to_send(1), now)  # must not raise
        if client.ready:
            break

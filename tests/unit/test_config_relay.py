"""``[relay]`` in the node config: a peer relay's listener, address and ports; every mistake
one line and exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_config import NODE, assert_config_error, check, write

from p2ptun import config

RELAY = '\n[relay]\nenable = true\nrelay_address = "192.0.2.10"\n'


def test_a_peer_relay(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    extra = 'listen = "0.0.0.0:3480"\nrelay_ports = "51000-51099"\nallow_peers = ["10.0.0.0/8"]\n'
    path = write(tmp_path, NODE + RELAY + extra)
    code, _, err = check(path, capsys)
    assert code == 0, err
    relay = config.load_node(path).relay
    assert relay is not None
    assert (relay.listen, relay.relay_address, relay.relay_ports) == (
        ("0.0.0.0", 3480),
        "192.0.2.10",
        (51000, 51099),
    )
    assert [str(n) for n in relay.allow_peers] == ["10.0.0.0/8"]
    # Defaults: port 3479 on every address, ports 50000-50999.
    relay = config.load_node(write(tmp_path, NODE + RELAY, "d.toml")).relay
    assert relay is not None
    assert (relay.listen, relay.relay_ports) == (("0.0.0.0", 3479), (50000, 50999))


def test_off_by_default_and_when_disabled(tmp_path: Path) -> None:
    assert config.load_node(write(tmp_path, NODE)).relay is None
    off = NODE + '\n[relay]\nenable = false\nrelay_address = "192.0.2.10"\n'
    assert config.load_node(write(tmp_path, off, "off.toml")).relay is None


@pytest.mark.parametrize(
    ("extra", "key", "words"),
    [
        ("\n[relay]\nenable = true\n", "relay.relay_address", ("missing",)),
        (RELAY.replace("192.0.2.10", "relay.example"), "relay.relay_address", ("IP",)),
        (RELAY.replace("192.0.2.10", "0.0.0.0"), "relay.relay_address", ("public IP",)),
        (RELAY.replace("192.0.2.10", "127.0.0.1"), "relay.relay_address", ("public IP",)),
        (RELAY + 'listen = "relay:3479"\n', "relay.listen", ("IP literals",)),
        (RELAY + 'relay_ports = "60000-50000"\n', "relay.relay_ports", ("LOW <= HIGH",)),
        (RELAY + 'relay_ports = "80-90"\n', "relay.relay_ports", ("1024",)),
        (RELAY + "enabel = true\n", "relay.enabel", ("did you mean 'enable'",)),
        (RELAY + 'allow_peers = ["10.0.0.0/33"]\n', "relay.allow_peers[0]", ("network",)),
        (RELAY.replace("enable = true", 'enable = "yes"'), "relay.enable", ("true or false",)),
    ],
)
def test_mistakes_are_one_line_and_exit_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: str,
    key: str,
    words: tuple[str, ...],
) -> None:
    assert_config_error(tmp_path, capsys, NODE + extra, key, *words)

"""The standalone tunnel process's configuration: JSON and command line to a TunnelSpec, exit
codes.

The data path itself runs against wireguard-go in ``tests/interop/test_wireguard_go.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from p2plab.wgtunnel_tool import (
    TunnelSpec,
    _spec_from_args,
    build_parser,
    main,
    parse_spec,
    tunnel_routes,
)
from p2ptun.errors import ConfigError
from p2ptun.keys import encode_key, generate_private_key, public_key
from p2ptun.wireguard import TimerConfig

KEY = generate_private_key()
PEER = public_key(generate_private_key())
PSK = bytes(range(32))


def config(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "private_key": encode_key(KEY),
        "listen_port": 51820,
        "interface": "p2p0",
        "address": ["10.99.0.1/24"],
        "peers": [
            {
                "public_key": encode_key(PEER),
                "endpoint": "10.98.0.2:51821",
                "allowed_ips": ["10.99.0.2/32", "10.50.0.0/16"],
                "preshared_key": encode_key(PSK),
            }
        ],
    }
    base.update(changes)
    return base


def test_full_config() -> None:
    spec = parse_spec(config(rekey_after=4, under_load=True, mtu=1380), "t.json")
    assert spec.private_key == KEY and spec.interface == "p2p0" and spec.listen_port == 51820
    assert spec.addresses == ("10.99.0.1/24",) and spec.mtu == 1380 and spec.under_load
    (peer,) = spec.peers
    assert peer.public_key == PEER and peer.preshared_key == PSK
    assert peer.endpoint == ("10.98.0.2", 51821)
    assert spec.timers() == TimerConfig().shortened(4.0)
    assert parse_spec(config()).timers() == TimerConfig()


def test_ipv6_endpoint_and_no_endpoint() -> None:
    peers = [
        {"public_key": encode_key(PEER), "endpoint": "[fd00::2]:51820"},
        {"public_key": encode_key(public_key(generate_private_key()))},
    ]
    spec = parse_spec(config(peers=peers))
    assert spec.peers[0].endpoint == ("fd00::2", 51820)
    assert spec.peers[1].endpoint is None and spec.peers[1].allowed_ips == ()


def test_nulls_are_absent_keys_and_a_string_is_a_list_of_one() -> None:
    """The JSON of the module doc: ``null`` for "not set", as TOML would leave the key out."""
    peers = [
        {
            "public_key": encode_key(PEER),
            "endpoint": None,
            "allowed_ips": "10.99.0.2/32",
            "preshared_key": None,
            "persistent_keepalive": None,
        }
    ]
    spec = parse_spec(config(address="10.99.0.1/24", rekey_after=None, mtu=None, peers=peers))
    assert spec.addresses == ("10.99.0.1/24",) and spec.rekey_after is None and spec.mtu == 1420
    (peer,) = spec.peers
    assert peer.allowed_ips == ("10.99.0.2/32",) and peer.endpoint is None
    assert peer.preshared_key is None and peer.persistent_keepalive is None


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"private_key": None}, "private_key"),
        ({"private_key": "not-a-key"}, "private_key"),
        ({"interface": "a-name-that-is-too-long"}, "interface"),
        ({"address": ["banana"]}, "address[0]"),
        ({"listen_port": 70000}, "listen_port"),
        ({"rekey_after": 0}, "rekey_after"),
        ({"under_load": "yes"}, "under_load"),
        ({"colour": "blue"}, "colour"),
        ({"peers": {}}, "peers"),
        ({"peers": [{"public_key": encode_key(PEER), "endpoint": "host.example:1"}]}, "endpoint"),
        ({"peers": [{"public_key": encode_key(PEER), "endpoint": "10.0.0.1"}]}, "endpoint"),
        ({"peers": [{"public_key": encode_key(PEER), "allowed_ips": ["x/33"]}]}, "allowed_ips[0]"),
        ({"peers": [{"public_key": encode_key(PEER)}] * 2}, "peers"),
        ({"peers": [{"endpoint": "10.0.0.1:1"}]}, "public_key"),
    ],
)
def test_bad_config_names_the_key(changes: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_spec(config(**changes), "t.json")
    assert info.value.key is not None and info.value.key.endswith(key)
    assert "\n" not in str(info.value) and str(info.value).startswith("t.json: ")


def test_routes_only_for_prefixes_outside_the_interface() -> None:
    spec = parse_spec(config())
    assert [str(r) for r in tunnel_routes(spec)] == ["10.50.0.0/16"]
    assert tunnel_routes(TunnelSpec(private_key=KEY, interface="p2p0")) == []


def test_main_bad_config_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "t.json"
    path.write_text(json.dumps(config(listen_port="x")))
    assert main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "listen_port" in err and "Traceback" not in err
    path.write_text("{")
    assert main(["--config", str(path)]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_main_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--interface", "p2p0"]) == 2
    assert "--private-key-file" in capsys.readouterr().err
    key = tmp_path / "k"
    key.write_text(encode_key(KEY) + "\n")
    args = ["--private-key-file", str(key), "--interface", "p2p0", "--endpoint", "1.2.3.4:5"]
    assert main(args) == 2
    assert "need --peer" in capsys.readouterr().err
    assert main(["--private-key-file", str(tmp_path / "missing"), "--interface", "p2p0"]) == 2


def test_command_line_spec(tmp_path: Path) -> None:
    key, psk = tmp_path / "k", tmp_path / "psk"
    key.write_text(encode_key(KEY) + "\n")
    psk.write_text(encode_key(PSK) + "\n")
    argv = ["--private-key-file", str(key), "--interface", "p2p1", "--address", "10.99.0.1/24"]
    argv += ["--listen-port", "51820", "--peer", encode_key(PEER), "--endpoint", "10.98.0.2:1"]
    argv += ["--allowed-ips", "10.99.0.2/32,10.50.0.0/16", "--preshared-key-file", str(psk)]
    args = build_parser().parse_args([*argv, "--rekey-after", "3"])
    spec = _spec_from_args(args)
    assert spec.interface == "p2p1" and spec.rekey_after == 3.0 and spec.listen_port == 51820
    (peer,) = spec.peers
    assert peer.allowed_ips == ("10.99.0.2/32", "10.50.0.0/16") and peer.preshared_key == PSK

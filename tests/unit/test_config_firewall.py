"""``[firewall]`` and ``[[peer]] groups`` in the node config: good ones load, bad ones get
one line and exit 2."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from p2ptun import config, keys
from p2ptun.firewall import ALLOW_ANY, ALLOW_ICMP, Policy, Rule
from tests.unit.test_config import NODE, assert_config_error, check, write


def _with_bob_groups(groups: str) -> str:
    return NODE.replace(
        'allowed_ips = ["10.77.0.2/32", "fd77::2/128"]',
        f'allowed_ips = ["10.77.0.2/32", "fd77::2/128"]\ngroups = {groups}',
    )


FIREWALL = """
[firewall]
max_flows = 2048
tcp_timeout = 600

[[firewall.inbound]]
proto = "tcp"
port = 22
groups = ["admin"]

[[firewall.inbound]]
proto = "udp"
port = "8000-8999"
peers = ["carol"]
cidr = ["10.77.0.0/24"]

[[firewall.inbound]]
proto = "icmp"
"""


def test_no_section_is_the_default_policy(tmp_path: Path) -> None:
    cfg = config.load_node(write(tmp_path, NODE))
    assert cfg.firewall == Policy()
    assert cfg.firewall.inbound == (ALLOW_ICMP,) and cfg.firewall.outbound == (ALLOW_ANY,)
    assert all(p.groups == () for p in cfg.peers)


def test_rules_and_peer_groups_load(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, _with_bob_groups('["admin", "ops"]') + FIREWALL)
    code, out, _err = check(path, capsys)
    assert code == 0 and "firewall: 3 inbound, 1 outbound rules" in out
    cfg = config.load_node(path)
    assert cfg.peers[0].groups == ("admin", "ops")
    fw = cfg.firewall
    assert fw.max_flows == 2048 and fw.tcp_timeout == 600.0
    assert fw.inbound == (
        Rule("tcp", (22, 22), groups=frozenset({"admin"})),
        Rule(
            "udp",
            (8000, 8999),
            peers=frozenset({"carol"}),
            cidrs=(ipaddress.ip_network("10.77.0.0/24"),),
        ),
        Rule("icmp"),
    )
    assert fw.outbound == (ALLOW_ANY,)


def test_empty_inbound_list_allows_nothing(tmp_path: Path) -> None:
    cfg = config.load_node(write(tmp_path, NODE + "\n[firewall]\ninbound = []\n"))
    assert cfg.firewall.inbound == ()


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ('[[firewall.inbound]]\nproto = "gre"\n', "firewall.inbound[0].proto", ["one of"]),
        ("[[firewall.inbound]]\nport = 70000\n", "firewall.inbound[0].port", ["0-65535"]),
        ('[[firewall.inbound]]\nport = "9-1"\n', "firewall.inbound[0].port", ["lower one"]),
        ('[[firewall.inbound]]\nport = "ssh"\n', "firewall.inbound[0].port", ["range"]),
        (
            '[[firewall.inbound]]\nproto = "icmp"\nport = 1\n',
            "firewall.inbound[0].port",
            ["no ports"],
        ),
        ('[[firewall.inbound]]\ngroups = ["Admin"]\n', "firewall.inbound[0].groups[0]", ["group"]),
        ('[[firewall.inbound]]\ncidr = ["10.0.0.300/8"]\n', "firewall.inbound[0].cidr[0]", []),
        ('[[firewall.inbound]]\nprot = "tcp"\n', "firewall.inbound[0].prot", ["proto"]),
        ("[firewall]\nmax_flows = 1\n", "firewall.max_flows", ["range"]),
        ("[firewall]\nmax_flows_per_peer = 99999\n", "firewall.max_flows_per_peer", ["range"]),
        ("[firewall]\nudp_timeout = 0\n", "firewall.udp_timeout", ["range"]),
    ],
)
def test_bad_rules_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, key: str, words: list[str]
) -> None:
    assert_config_error(tmp_path, capsys, NODE + "\n" + text, key, *words)


def test_bad_peer_group(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert_config_error(tmp_path, capsys, _with_bob_groups('["has space"]'), "peer[0].groups[0]")


def test_readme_example_passes_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The README's Firewall example, with a real key and an address free in this config,
    passes ``p2ptun check`` and means what the README says."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = readme.split("<!-- firewall-example")[1].split("```toml\n")[1].split("```")[0]
    laptop = keys.encode_key(keys.public_key(keys.generate_private_key()))
    block = block.replace('public_key = "..."', f'public_key = "{laptop}"')
    block = block.replace('"10.77.0.2/32"', '"10.77.0.9/32"')
    path = write(tmp_path, NODE + block)
    code, out, err = check(path, capsys)
    assert code == 0, err
    assert "firewall: 3 inbound, 1 outbound rules" in out
    cfg = config.load_node(path)
    laptop_cfg = next(p for p in cfg.peers if p.name == "laptop")
    assert laptop_cfg.groups == ("admin",)
    assert cfg.firewall.inbound[0] == Rule("tcp", (22, 22), groups=frozenset({"admin"}))
    assert cfg.firewall.inbound[2].peers == frozenset({"laptop"})

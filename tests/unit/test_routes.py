"""Subnet routes and the exit node without a kernel: the config's keys and errors, the node's
decisions (p2ptun.node.routes), the nftables and ``ip`` texts (p2ptun.net.forwarding) and the
status lines. The real thing runs in tests/e2e/test_routes_lab.py."""

from __future__ import annotations

import ipaddress
import os
import time
from pathlib import Path

import pytest
from test_config import NODE, assert_config_error, check, write

from p2ptun import ca, config, keys
from p2ptun.config import PeerConfig
from p2ptun.net import forwarding
from p2ptun.node.routes import (
    decide_exit,
    effective_peer,
    peer_routes_status,
    refused_routes,
    split_advertised,
)
from p2ptun.node.status import render

net = ipaddress.ip_network

EXIT_PEERS = NODE.replace(
    'allowed_ips = ["10.77.0.2/32", "fd77::2/128"]',
    'allowed_ips = ["10.77.0.2/32", "fd77::2/128", "0.0.0.0/0", "::/0"]\nexit_node = true',
)


def with_interface(text: str, keys_text: str) -> str:
    return text.replace('address = ["10.77.0.1/24", "fd77::1/64"]\n',
                        'address = ["10.77.0.1/24", "fd77::1/64"]\n' + keys_text)  # fmt: skip


# -- config ------------------------------------------------------------------------------


def test_advertise_routes_and_an_exit_peer_load(tmp_path: Path) -> None:
    text = with_interface(
        EXIT_PEERS,
        'advertise_routes = ["192.168.1.0/24", "fd00:1::/64"]\nmasquerade = false\n'
        "exit_node_allow_lan = false\nfwmark = 0x1234\n",
    )
    cfg = config.load_node(write(tmp_path, text))
    assert ", advertises 192.168.1.0/24, fd00:1::/64, exit node bob" in config.describe(cfg)
    assert cfg.interface.advertise_routes == (net("192.168.1.0/24"), net("fd00:1::/64"))
    assert not cfg.interface.masquerade and not cfg.interface.exit_node_allow_lan
    assert cfg.interface.fwmark == 0x1234
    assert cfg.exit_node == "bob"
    # Defaults: masquerade on, the LAN outside the tunnel, mark 0x7074, no exit node.
    plain = config.load_node(write(tmp_path, NODE, "plain.toml"))
    assert plain.interface.masquerade and plain.interface.exit_node_allow_lan
    assert plain.interface.fwmark == 0x7074 and plain.exit_node is None


@pytest.mark.parametrize(
    ("keys_text", "key", "words"),
    [
        ('advertise_routes = ["192.168.1.1/24"]\n', "interface.advertise_routes[0]", "host bits"),
        ('advertise_routes = ["192.168.1.0"]\n', "interface.advertise_routes[0]", "prefix"),
        ('advertise_routes = ["10.0.0.0/8", "10.0.0.0/8"]\n', "interface.advertise_routes[1]",
         "twice"),
        ("fwmark = 254\n", "interface.fwmark", "reserved"),
        ("fwmark = 0\n", "interface.fwmark", "out of range"),
    ],
)  # fmt: skip
def test_interface_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], keys_text: str, key: str, words: str
) -> None:
    assert_config_error(tmp_path, capsys, with_interface(NODE, keys_text), key, words)


def test_exit_peer_without_a_default_route(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = NODE.replace(
        'allowed_ips = ["10.77.0.3/32"]', 'allowed_ips = ["10.77.0.3/32"]\nexit_node = true'
    )
    assert_config_error(tmp_path, capsys, text, "peer[1].exit_node", "no 0.0.0.0/0 or ::/0")


def test_two_exit_peers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = EXIT_PEERS.replace(
        'allowed_ips = ["10.77.0.3/32"]',
        'allowed_ips = ["10.77.0.3/32", "192.168.9.0/24"]\nexit_node = true',
    ).replace('"0.0.0.0/0", "::/0"]', '"0.0.0.0/0"]')
    text = text.replace('"192.168.9.0/24"]', '"192.168.9.0/24", "::/0"]')
    assert_config_error(tmp_path, capsys, text, "peer", "exit_node = true on 'bob' and 'carol'")


def test_default_routes_do_not_overlap_but_are_not_shared(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 0.0.0.0/0 at bob does not clash with carol's addresses (it is an exit route) ...
    cfg = config.load_node(write(tmp_path, EXIT_PEERS))
    assert net("0.0.0.0/0") in cfg.peers[0].allowed_ips
    # ... but two peers with the same exit route is a mistake.
    text = EXIT_PEERS.replace('allowed_ips = ["10.77.0.3/32"]', 'allowed_ips = ["0.0.0.0/0"]')
    assert_config_error(tmp_path, capsys, text, "peer[1].allowed_ips[0]", "also in peer 'bob'")


def _network_node(tmp_path: Path, routes: str, network_extra: str, peers: bool = False) -> str:
    auth = ca.init(str(tmp_path / "ca"), "home")
    private = keys.generate_private_key()
    cert = auth.sign(
        "alice",
        (ipaddress.ip_interface("10.77.0.1/24"),),
        keys.public_key(private),
        routes=tuple(net(r) for r in routes.split(",") if r),
        now=int(time.time()) - 60,
        random_bytes=os.urandom,
    )
    (tmp_path / "alice.crt").write_text(cert.to_text())
    text = NODE.replace(NODE.split("\n")[2], f'private_key = "{keys.encode_key(private)}"')
    if not peers:
        text = text.split("[[peer]]")[0]
    return text + (
        f'[network]\nca = "{keys.encode_key(auth.public_key)}"\n'
        f'cert_file = "{tmp_path / "alice.crt"}"\n' + network_extra
    )


def test_unsigned_advertised_route_is_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = with_interface(
        _network_node(tmp_path, "192.168.1.0/24", ""),
        'advertise_routes = ["192.168.1.0/24", "192.168.2.0/24"]\n',
    )
    cfg = config.load_node(write(tmp_path, text))
    assert any("192.168.2.0/24 is not in this node's certificate" in w for w in cfg.warnings)
    assert not any("192.168.1.0/24" in w for w in cfg.warnings)


@pytest.mark.parametrize(
    ("network_extra", "words"),
    [
        ('exit_node = "alice"\n', "this node itself"),
        ('exit_node = "Bad Name"\n', "not a valid name"),
        ('exit_node = "bob"\n', "peer 'bob' has no 0.0.0.0/0 or ::/0"),
    ],
)
def test_network_exit_node_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], network_extra: str, words: str
) -> None:
    text = _network_node(tmp_path, "", network_extra, peers=True)
    assert_config_error(tmp_path, capsys, text, "network.exit_node", words)


def test_network_exit_node_may_name_a_member(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A member not in the config: checked against its certificate when it comes online.
    path = write(tmp_path, _network_node(tmp_path, "", 'exit_node = "home"\n'))
    code, _, err = check(path, capsys)
    assert code == 0, err
    assert config.load_node(path).exit_node == "home"


# -- decisions ---------------------------------------------------------------------------


def _peer(name: str, *nets: str) -> PeerConfig:
    return PeerConfig(name, bytes(32), tuple(net(n) for n in nets))


def test_split_advertised() -> None:
    routes = (net("192.168.1.0/24"), net("0.0.0.0/0"), net("192.168.2.0/24"))
    signed = (net("192.168.1.0/24"), net("0.0.0.0/0"))
    assert split_advertised(routes, signed) == (routes[:2], routes[2:])
    assert split_advertised(routes, None) == (routes, ())


def test_decide_exit() -> None:
    peers = {
        "home": _peer("home", "10.77.0.1/32", "192.168.1.0/24", "0.0.0.0/0", "::/0"),
        "nas": _peer("nas", "10.77.0.3/32"),
        "v6": _peer("v6", "10.77.0.4/32", "::/0"),
    }
    assert decide_exit(None, peers, {4}).state == "off"
    active = decide_exit("home", peers, {4})
    assert (active.state, active.defaults) == ("active", (net("0.0.0.0/0"),))
    both = decide_exit("home", peers, {4, 6})
    assert both.defaults == (net("0.0.0.0/0"), net("::/0"))
    waiting = decide_exit("laptop", peers, {4})
    assert waiting.state == "waiting" and "not a peer" in waiting.reason
    refused = decide_exit("nas", peers, {4})
    assert refused.state == "refused" and "nas may not route 0.0.0.0/0" in refused.reason
    family = decide_exit("v6", peers, {4})
    assert family.state == "refused" and "no address of that family" in family.reason


def test_effective_peer_keeps_exit_routes_for_the_active_exit_node_only() -> None:
    home = _peer("home", "10.77.0.1/32", "192.168.1.0/24", "0.0.0.0/0", "::/0")
    other = _peer("other", "10.77.0.2/32", "0.0.0.0/0")
    decision = decide_exit("home", {"home": home, "other": other}, {4})
    assert effective_peer(home, decision).allowed_ips == (
        net("10.77.0.1/32"),
        net("192.168.1.0/24"),
        net("0.0.0.0/0"),
    )
    assert effective_peer(other, decision).allowed_ips == (net("10.77.0.2/32"),)
    plain = _peer("plain", "10.77.0.5/32")
    assert effective_peer(plain, decision) is plain
    status = peer_routes_status(home, effective_peer(home, decision))
    assert status == {
        "accepted": ["192.168.1.0/24", "0.0.0.0/0"],
        "refused": [],
        "unused": ["::/0"],
    }


def test_a_peer_route_inside_our_own_lan_is_refused() -> None:
    home = _peer("home", "10.77.0.1/32", "192.168.1.0/24", "192.168.1.128/25", "10.0.0.0/8")
    lans = [net("192.168.1.0/24"), net("fd00::/64")]
    assert refused_routes(home, lans) == [
        (net("192.168.1.0/24"), "inside our own LAN 192.168.1.0/24"),
        (net("192.168.1.128/25"), "inside our own LAN 192.168.1.0/24"),
    ]
    used = effective_peer(home, decide_exit(None, {}, {4}), lans)
    # A wider route stays: the kernel's route to our LAN is more specific.
    assert used.allowed_ips == (net("10.77.0.1/32"), net("10.0.0.0/8"))
    status = peer_routes_status(home, used, lans)
    assert status["accepted"] == ["10.0.0.0/8"] and len(status["refused"]) == 2


# -- kernel texts ------------------------------------------------------------------------


def test_nft_ruleset() -> None:
    assert forwarding.nft_ruleset("p2p0", forward=False, masquerade=True, mark=None) is None
    text = forwarding.nft_ruleset("p2p0", forward=True, masquerade=True, mark=None)
    assert text is not None
    # One transaction that replaces any table of ours (a crashed run's).
    assert text.startswith("table inet p2ptun-p2p0\ndelete table inet p2ptun-p2p0\n")
    assert 'iifname "p2p0" oifname != "p2p0" masquerade' in text
    assert "maxseg size set rt mtu" in text and "ct mark" not in text
    plain = forwarding.nft_ruleset("p2p0", forward=True, masquerade=False, mark=0x7074)
    assert plain is not None and "masquerade" not in plain
    assert "meta mark 0x7074 ct mark set meta mark" in plain
    assert forwarding.nft_delete("p2p0").endswith("delete table inet p2ptun-p2p0\n")


def test_exit_rule_commands() -> None:
    cmds = forwarding.exit_rule_commands(
        "p2p0", 0x7074, [net("0.0.0.0/0")], [net("10.0.2.0/24"), net("fd00::/64")]
    )
    assert [" ".join(c) for c in cmds] == [
        "ip -4 route replace 0.0.0.0/0 dev p2p0 table 28788",
        "ip -4 rule add to 10.0.2.0/24 fwmark 0x7074 lookup main priority 32760",
        "ip -4 rule add to 10.0.2.0/24 lookup 28788 priority 32761",
        "ip -4 rule add lookup main suppress_prefixlength 0 priority 32762",
        "ip -4 rule add not fwmark 0x7074 lookup 28788 priority 32763",
    ]
    present = [(4, 0), (4, 32762), (4, 32763), (6, 32763), (4, 32766)]
    clear = [" ".join(c) for c in forwarding.exit_clear_commands(0x7074, present)]
    assert clear == [
        "ip -4 rule del priority 32762 lookup main suppress_prefixlength 0",
        "ip -4 rule del priority 32763 lookup 28788",
        "ip -6 rule del priority 32763 lookup 28788",
    ]


def test_lan_prefixes() -> None:
    found = forwarding.lan_prefixes(
        [("10.0.2.2", 24), ("10.0.2.3", 24), ("fe80::1", 64), ("2001:db8::2", 64), ("1.2.3.4", 0)]
    )
    assert found == [net("10.0.2.0/24"), net("2001:db8::/64")]


# -- status ------------------------------------------------------------------------------


def test_status_lines() -> None:
    status = {
        "node": {
            "name": "laptop",
            "interface": "p2p0",
            "addresses": ["10.77.0.2/24"],
            "rendezvous": "connected",
            "routes": {
                "advertised": ["192.168.1.0/24"],
                "refused": [{"route": "192.168.2.0/24", "reason": "not signed"}],
                "masquerade": True,
                "forwarding": {"ipv4": "on", "ipv6": "/proc/sys/...: Read-only file system"},
            },
            "exit_node": {"name": "home", "state": "active", "reason": "all traffic through home",
                          "routes": ["0.0.0.0/0"], "allow_lan": False},
        },
        "peers": [{"name": "home", "state": "connected",
                   "routes": {"accepted": ["192.168.1.0/24", "0.0.0.0/0"], "unused": []}}],
    }  # fmt: skip
    text = render(status)
    assert "advertised routes: 192.168.1.0/24 (masquerade)" in text
    assert "refused route: 192.168.2.0/24: not signed" in text
    assert "ipv6 forwarding: /proc/sys/...: Read-only file system" in text
    assert "exit node: home active: all traffic through home, LAN through it too" in text
    assert "routes via home: 192.168.1.0/24, 0.0.0.0/0" in text


# -- the command line -------------------------------------------------------------------------


def test_set_exit_node_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from p2ptun import cli

    assert cli.main(["set"]) == 2
    assert "a command is required" in capsys.readouterr().err
    assert cli.main(["set", "exit-node"]) == 2
    capsys.readouterr()
    monkeypatch.setenv("P2PTUN_RUN_DIR", str(tmp_path))
    assert cli.main(["set", "exit-node", "home", "--interface", "p2p9"]) == 1
    err = capsys.readouterr().err
    assert "p2p9.sock does not exist" in err and "Traceback" not in err


async def test_a_command_that_fails_or_is_missing_says_so_in_one_line() -> None:
    assert await forwarding.run_command(["true"]) is None
    error = await forwarding.run_command(["sh", "-c", "echo 'bad  thing\nhere' >&2; exit 3"])
    assert error == "bad thing here"
    missing = await forwarding.run_command(["p2ptun-no-such-program"])
    assert missing is not None and missing.startswith("p2ptun-no-such-program:")

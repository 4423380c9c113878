"""Config validation: every bad config gets one line naming file, key, problem and fix; exit 2."""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from p2ptun import cli, config, keys
from p2ptun.errors import ConfigError
from p2ptun.keys import encode_key, generate_private_key

ALICE_PRIV = keys.generate_private_key()
BOB_PUB = keys.encode_key(keys.public_key(keys.generate_private_key()))
CAROL_PUB = keys.encode_key(keys.public_key(keys.generate_private_key()))
RV_PUB = keys.encode_key(keys.public_key(keys.generate_private_key()))
ALICE_PUB = keys.encode_key(keys.public_key(ALICE_PRIV))

NODE = f"""
name = "alice"
private_key = "{keys.encode_key(ALICE_PRIV)}"

[interface]
name = "p2p0"
address = ["10.77.0.1/24", "fd77::1/64"]

[rendezvous]
address = "rv.example.net:7070"
public_key = "{RV_PUB}"

[ice]
stun = ["rv.example.net:3478", "stun:[2001:db8::1]:3479"]
turn = [
  {{ url = "turn:rv.example.net:3478?transport=udp", username = "u", password = "p" }},
  {{ url = "turns:rv.example.net", username = "u", password = "p" }},
  {{ url = "turn:rv.example.net?transport=tcp" }},
]

[[peer]]
name = "bob"
public_key = "{BOB_PUB}"
allowed_ips = ["10.77.0.2/32", "fd77::2/128"]

[[peer]]
name = "carol"
public_key = "{CAROL_PUB}"
allowed_ips = ["10.77.0.3/32"]
"""

RENDEZVOUS = f"""
listen = "0.0.0.0:7070"
private_key = "{keys.encode_key(keys.generate_private_key())}"
database = "/var/lib/p2ptun/rendezvous.sqlite"

[stun]
listen = ["0.0.0.0:3478", "[::]:3478"]

[turn]
realm = "p2ptun"
relay_address = "203.0.113.10"
relay_ports = "49152-65535"
users = {{ alice = "secret123" }}
auth_secret = "0123456789abcdef0123"

[[node]]
name = "alice"
public_key = "{ALICE_PUB}"
"""


def write(tmp_path: Path, text: str, name: str = "cfg.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def check(path: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(["check", "-c", path])
    out, err = capsys.readouterr()
    return code, out, err


def assert_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, key: str | None, *words: str
) -> str:
    path = write(tmp_path, text)
    code, out, err = check(path, capsys)
    assert code == 2, (out, err)
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith(path + ":"), line
    if key is not None:
        assert f": {key}: " in line, line
    for word in words:
        assert word in line, line
    assert "Traceback" not in err
    return line


def test_valid_node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, NODE)
    code, out, err = check(path, capsys)
    assert code == 0, err
    assert "valid node config" in out and "bob, carol" in out
    cfg = config.load_node(path)
    assert cfg.name == "alice"
    assert cfg.private_key == ALICE_PRIV
    assert cfg.interface.addresses[1] == ipaddress.ip_interface("fd77::1/64")
    assert cfg.rendezvous.address == ("rv.example.net", 7070)
    assert cfg.ice.stun == (("rv.example.net", 3478), ("2001:db8::1", 3479))
    assert [(t.transport, t.port) for t in cfg.ice.turn] == [
        ("udp", 3478),
        ("tls", 5349),
        ("tcp", 3478),
    ]
    assert cfg.ice.turn[2].username is None
    assert cfg.peers[0].allowed_ips == (
        ipaddress.ip_network("10.77.0.2/32"),
        ipaddress.ip_network("fd77::2/128"),
    )
    assert cfg.control_socket.endswith("/p2p0.sock")
    with pytest.raises(AttributeError):
        cfg.name = "x"  # type: ignore[misc]


def test_valid_rendezvous(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, RENDEZVOUS)
    code, out, err = check(path, capsys)
    assert code == 0, err
    assert "valid rendezvous config" in out
    cfg = config.load_rendezvous(path)
    assert cfg.stun is not None and cfg.stun.listen == (("0.0.0.0", 3478), ("::", 3478))
    assert cfg.turn is not None and cfg.turn.relay_ports == (49152, 65535)
    assert cfg.turn.users == {"alice": "secret123"}
    assert cfg.nodes[0].name == "alice"


EXAMPLE_VALUES = re.compile(r'"([A-Za-z0-9+/]{43}=|change-me|replace-with-32-random-characters)"')


@pytest.mark.parametrize("name", ["node.example.toml", "rendezvous.example.toml"])
def test_examples_pass_once_their_keys_and_secrets_are_replaced(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (Path(__file__).parents[2] / "config" / name).read_text()

    def fresh(match: re.Match[str]) -> str:
        value = match.group(1)
        if value.endswith("="):
            return f'"{encode_key(generate_private_key())}"'
        return f'"{encode_key(generate_private_key())[:32]}"'

    code, out, err = check(write(tmp_path, EXAMPLE_VALUES.sub(fresh, text), name), capsys)
    assert code == 0, err
    assert "valid" in out


@pytest.mark.parametrize("name", ["node.example.toml", "rendezvous.example.toml"])
def test_examples_as_published_are_refused(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(Path(__file__).parents[2] / "config" / name)
    code, _, err = check(path, capsys)
    assert code == 2
    assert err.strip() == (
        f"{path}: private_key: is the example private key published with p2ptun "
        "(generate your own with 'p2ptun genkey'; 'p2ptun pubkey' prints its public key)"
    )


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "nope.toml")
    code, _, err = check(path, capsys)
    assert code == 2
    assert err.strip() == f"{path}: no such file"


def test_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, NODE)
    os.chmod(path, 0)
    if os.geteuid() != 0:
        code, _, err = check(path, capsys)
        assert code == 2 and err.strip() == f"{path}: permission denied"
        return
    # Root reads any file: run the check as an unprivileged user instead.
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to drop root for this test")
    os.chmod(tmp_path, 0o755)
    proc = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-m",
            "p2ptun",
            "check",
            "-c",
            path,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == f"{path}: permission denied"


def test_directory_is_not_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = check(str(tmp_path), capsys)
    assert code == 2 and "is a directory" in err


def test_syntax_error_names_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = 'name = "alice"\n\n[interface\nname = "p2p0"\n'
    line = assert_config_error(tmp_path, capsys, text, None, "TOML syntax error")
    assert "line 3" in line


def test_unknown_key_did_you_mean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = NODE.replace('name = "p2p0"', 'name = "p2p0"\nadress = ["10.0.0.1/24"]')
    assert_config_error(tmp_path, capsys, text, "interface.adress", "unknown key", "'address'")


def test_unknown_key_in_peer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = NODE.replace('name = "carol"', 'name = "carol"\nallowed_ip = []')
    assert_config_error(tmp_path, capsys, text, "peer[1].allowed_ip", "did you mean 'allowed_ips'")


def test_unknown_top_level_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = "nmae = 1\n" + NODE
    assert_config_error(tmp_path, capsys, text, "nmae", "did you mean 'name'")


def test_wrong_type(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = NODE.replace('address = ["10.77.0.1/24", "fd77::1/64"]', 'address = "10.77.0.1/24"')
    assert_config_error(
        tmp_path, capsys, text, "interface.address", "expected an array", "got a string"
    )


def test_wrong_type_bool_for_int(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = NODE.replace("[ice]\n", "[ice]\nport = true\n")
    assert_config_error(tmp_path, capsys, text, "ice.port", "expected an integer", "got a boolean")


def test_port_mapping_on_by_default_off_by_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert config.load_node(write(tmp_path, NODE)).ice.port_mapping is True
    off = NODE.replace("[ice]\n", "[ice]\nport_mapping = false\n")
    assert config.load_node(write(tmp_path, off)).ice.port_mapping is False
    bad = NODE.replace("[ice]\n", '[ice]\nport_mapping = "yes"\n')
    assert_config_error(
        tmp_path, capsys, bad, "ice.port_mapping", "expected true or false", "got a string"
    )


def test_wrong_type_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    head, _, rest = NODE.partition("[ice]")
    text = (
        head.replace('name = "alice"', 'name = "alice"\nice = "fast"')
        + "[[peer]]"
        + rest.partition("[[peer]]")[2]
    )
    assert_config_error(tmp_path, capsys, text, "ice", "expected a table", "got a string")


def test_misspelt_section(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = NODE.replace("[rendezvous]", "[rendezvouz]")
    assert_config_error(tmp_path, capsys, text, "rendezvouz", "did you mean 'rendezvous'")


@pytest.mark.parametrize(
    ("old", "new", "key", "word"),
    [
        ('"10.77.0.1/24"', '"10.77.0.1/33"', "interface.address[0]", "not an address/prefix"),
        ('"10.77.0.1/24"', '"10.77.0.1"', "interface.address[0]", "prefix length is required"),
        ('"10.77.0.1/24"', '"10.777.0.1/24"', "interface.address[0]", "not an address/prefix"),
        ('"10.77.0.2/32"', '"10.77.0.2/24"', "peer[0].allowed_ips[0]", "did you mean 10.77.0.0/24"),
        ('"fd77::2/128"', '"fd77::2/129"', "peer[0].allowed_ips[1]", "not a network/prefix"),
    ],
)
def test_bad_cidr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], old: str, new: str, key: str, word: str
) -> None:
    assert_config_error(tmp_path, capsys, NODE.replace(old, new, 1), key, word)


@pytest.mark.parametrize(
    "bad",
    [
        "AAAA",
        "not base64 at all!!!!!!!!!!!!!!!!!!!!!!!!!!",
        keys.encode_key(b"\x00" * 31),
        keys.encode_key(b"\x00" * 33),
        "A" * 44,
    ],
)
def test_key_not_32_bytes(tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: str) -> None:
    text = NODE.replace(BOB_PUB, bad)
    assert_config_error(tmp_path, capsys, text, "peer[0].public_key", "not a key", "p2ptun genkey")


def test_bad_rendezvous_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert_config_error(
        tmp_path, capsys, NODE.replace(RV_PUB, "xyz"), "rendezvous.public_key", "not a key"
    )


def test_both_private_key_and_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key_file = tmp_path / "a.key"
    key_file.write_text(keys.encode_key(ALICE_PRIV) + "\n")
    key_file.chmod(0o600)
    text = NODE.replace('name = "alice"\n', f'name = "alice"\nprivate_key_file = "{key_file}"\n', 1)
    assert_config_error(
        tmp_path, capsys, text, "private_key", "both private_key and private_key_file"
    )


def test_neither_private_key_nor_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = NODE.replace(f'private_key = "{keys.encode_key(ALICE_PRIV)}"\n', "")
    assert_config_error(tmp_path, capsys, text, "private_key_file", "missing")


def _with_key_file(path: Path) -> str:
    return NODE.replace(
        f'private_key = "{keys.encode_key(ALICE_PRIV)}"', f'private_key_file = "{path}"'
    )


def test_key_file_ok_relative_and_absolute(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "alice.key"
    key_file.write_text(keys.encode_key(ALICE_PRIV) + "\n")
    key_file.chmod(0o600)
    for ref in (key_file, Path("alice.key")):
        code, _, err = check(write(tmp_path, _with_key_file(ref)), capsys)
        assert code == 0, err
        assert err == ""
    assert config.load_node(str(tmp_path / "cfg.toml")).private_key == ALICE_PRIV


def test_key_file_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = _with_key_file(tmp_path / "missing.key")
    assert_config_error(tmp_path, capsys, text, "private_key_file", "no such file")


def test_key_file_unreadable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A directory in place of the file cannot be read, even by root.
    (tmp_path / "dir.key").mkdir()
    text = _with_key_file(tmp_path / "dir.key")
    assert_config_error(tmp_path, capsys, text, "private_key_file", "cannot read")


def test_key_file_garbage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key_file = tmp_path / "bad.key"
    key_file.write_text("hello\n")
    key_file.chmod(0o600)
    assert_config_error(tmp_path, capsys, _with_key_file(key_file), "private_key_file", "not a key")


def test_key_file_readable_by_others_warns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "alice.key"
    key_file.write_text(keys.encode_key(ALICE_PRIV) + "\n")
    key_file.chmod(0o644)
    code, out, err = check(write(tmp_path, _with_key_file(key_file)), capsys)
    assert code == 0
    assert "valid node config" in out
    assert err.startswith("warning: ") and "chmod 600" in err and "0644" in err
    assert len(err.strip().splitlines()) == 1


def test_duplicate_peer_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = NODE.replace('name = "carol"', 'name = "bob"')
    assert_config_error(
        tmp_path, capsys, text, "peer[1].name", "duplicate peer name 'bob'", "peer[0]"
    )


def test_duplicate_peer_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = NODE.replace(CAROL_PUB, BOB_PUB)
    assert_config_error(tmp_path, capsys, text, "peer[1].public_key", "duplicate peer key")


def test_peer_with_own_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = NODE.replace(CAROL_PUB, ALICE_PUB)
    assert_config_error(tmp_path, capsys, text, "peer[1].public_key", "own public key")


def test_peer_with_own_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = NODE.replace('name = "carol"', 'name = "alice"')
    assert_config_error(tmp_path, capsys, text, "peer[1].name", "own name")


def test_overlapping_allowed_ips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = NODE.replace('allowed_ips = ["10.77.0.3/32"]', 'allowed_ips = ["10.77.0.0/24"]')
    assert_config_error(
        tmp_path,
        capsys,
        text,
        "peer[1].allowed_ips[0]",
        "10.77.0.0/24 overlaps 10.77.0.2/32",
        "'bob'",
    )


def test_v4_and_v6_never_overlap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = NODE.replace('allowed_ips = ["10.77.0.3/32"]', 'allowed_ips = ["0.0.0.0/0"]').replace(
        '"10.77.0.2/32", "fd77::2/128"', '"::/0"'
    )
    code, _, err = check(write(tmp_path, text), capsys)
    assert code == 0, err


@pytest.mark.parametrize(
    ("old", "new", "key", "word"),
    [
        ("rv.example.net:7070", "rv.example.net:70700", "rendezvous.address", "out of range"),
        ("rv.example.net:7070", "rv.example.net:http", "rendezvous.address", "not a number"),
        ("rv.example.net:7070", "rv_example!:7070", "rendezvous.address", "not a host name"),
        ("rv.example.net:7070", "[2001:db8::1]7070", "rendezvous.address", "expected ':port'"),
        ('"rv.example.net:3478"', '"rv.example.net:"', "ice.stun[0]", "not a number"),
        ('"rv.example.net:3478"', '"[2001:db8::1:3478"', "ice.stun[0]", "missing ']'"),
    ],
)
def test_bad_host_port(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], old: str, new: str, key: str, word: str
) -> None:
    assert_config_error(tmp_path, capsys, NODE.replace(old, new, 1), key, word)


@pytest.mark.parametrize(
    ("url", "word"),
    [
        ("http://rv.example.net", "scheme must be 'turn:' or 'turns:'"),
        ("stun:rv.example.net", "scheme must be 'turn:' or 'turns:'"),
        ("turn:rv.example.net?transport=sctp", "transport 'sctp' is unknown; use udp or tcp"),
        ("turn:rv.example.net?proto=udp", "only query parameter"),
        ("turns:rv.example.net?transport=udp", "DTLS is not supported"),
        ("turn://rv.example.net", "without '//'"),
    ],
)
def test_bad_turn_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str, word: str
) -> None:
    text = NODE.replace("turns:rv.example.net", url)
    assert_config_error(tmp_path, capsys, text, "ice.turn[1].url", word)


def test_turn_username_without_password(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = NODE.replace(
        '{ url = "turns:rv.example.net", username = "u", password = "p" }',
        '{ url = "turns:rv.example.net", username = "u" }',
    )
    assert_config_error(tmp_path, capsys, text, "ice.turn[1].password", "missing")


@pytest.mark.parametrize(
    ("ifname", "word"),
    [
        ("averyveryverylongname", "Linux allows at most 15"),
        ("p2p0/x", "not a valid interface name"),
        ("p2p 0", "not a valid interface name"),
    ],
)
def test_bad_interface_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], ifname: str, word: str
) -> None:
    text = NODE.replace('name = "p2p0"', f'name = "{ifname}"')
    assert_config_error(tmp_path, capsys, text, "interface.name", word)


def test_fifteen_char_interface_name_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = check(
        write(tmp_path, NODE.replace('name = "p2p0"', 'name = "abcdefghijklmno"')), capsys
    )
    assert code == 0, err


def test_bad_mtu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = NODE.replace(
        'address = ["10.77.0.1/24", "fd77::1/64"]',
        'address = ["10.77.0.1/24", "fd77::1/64"]\nmtu = 1000',
    )
    assert_config_error(tmp_path, capsys, text, "interface.mtu", "expected 1280-65535")


def test_bad_node_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert_config_error(
        tmp_path,
        capsys,
        NODE.replace('name = "alice"', 'name = "Alice Smith"'),
        "name",
        "not a valid name",
    )


def test_missing_section(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    head, _, rest = NODE.partition("[rendezvous]")
    text = head + rest.partition("[ice]")[1] + rest.partition("[ice]")[2]
    assert_config_error(
        tmp_path, capsys, text, None, "rendezvous: missing table", "add a [rendezvous]"
    )


def test_unknown_kind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert_config_error(tmp_path, capsys, 'foo = "bar"\n', None, "node or a rendezvous config")


def test_mixed_kind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert_config_error(
        tmp_path, capsys, 'listen = "0.0.0.0:1"\n' + NODE, None, "node or a rendezvous"
    )


def test_wrong_kind_for_command(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="this is a rendezvous config, expected a node config"):
        config.load_node(write(tmp_path, RENDEZVOUS))


@pytest.mark.parametrize(
    ("old", "new", "key", "word"),
    [
        ('listen = "0.0.0.0:7070"', 'listen = "rv.example.net:7070"', "listen", "IP literals"),
        (
            'relay_address = "203.0.113.10"',
            'relay_address = "relay"',
            "turn.relay_address",
            "not an IP",
        ),
        ('"49152-65535"', '"65535-49152"', "turn.relay_ports", "LOW <= HIGH"),
        (
            'users = { alice = "secret123" }',
            "users = { alice = 5 }",
            "turn.users.alice",
            "password string",
        ),
        (
            'auth_secret = "0123456789abcdef0123"',
            'auth_secret = "short"',
            "turn.auth_secret",
            "too short",
        ),
        ('name = "alice"', 'name = "al ice"', "node[0].name", "not a valid name"),
        ("[stun]", "[stunn]", "stunn", "did you mean 'stun'"),
    ],
)
def test_bad_rendezvous(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], old: str, new: str, key: str, word: str
) -> None:
    assert old in RENDEZVOUS
    assert_config_error(tmp_path, capsys, RENDEZVOUS.replace(old, new, 1), key, word)


def test_turn_without_credentials(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = RENDEZVOUS.replace('users = { alice = "secret123" }\n', "").replace(
        'auth_secret = "0123456789abcdef0123"\n', ""
    )
    assert_config_error(tmp_path, capsys, text, "turn", "no credentials")


def test_duplicate_rendezvous_nodes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = RENDEZVOUS + f'\n[[node]]\nname = "alice"\npublic_key = "{BOB_PUB}"\n'
    assert_config_error(tmp_path, capsys, text, "node[1].name", "duplicate node name")


def test_check_subprocess_one_line_no_traceback(tmp_path: Path) -> None:
    """The installed entry point, as a user runs it."""
    path = write(tmp_path, NODE.replace('"10.77.0.1/24"', '"10.77.0.1/99"'))
    proc = subprocess.run(
        [sys.executable, "-m", "p2ptun", "check", "-c", path],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"{path}: interface.address[0]: ")


def test_hard_nat_is_on_by_default_and_can_be_turned_off(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert config.load_node(write(tmp_path, NODE)).ice.hard_nat is True
    off = NODE.replace("[ice]\n", "[ice]\nhard_nat = false\n", 1)
    assert config.load_node(write(tmp_path, off, "off.toml")).ice.hard_nat is False
    bad = NODE.replace("[ice]\n", '[ice]\nhard_nat = "yes"\n', 1)
    assert_config_error(tmp_path, capsys, bad, "ice.hard_nat", "expected true or false")


def test_on_demand_is_off_by_default_with_a_bounded_idle_timeout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ice = config.load_node(write(tmp_path, NODE)).ice
    assert (ice.on_demand, ice.idle_timeout) == (False, 300)
    on = NODE.replace("[ice]\n", "[ice]\non_demand = true\nidle_timeout = 60\n", 1)
    ice = config.load_node(write(tmp_path, on, "on.toml")).ice
    assert (ice.on_demand, ice.idle_timeout) == (True, 60)
    for value in ("5", "100000"):
        bad = NODE.replace("[ice]\n", f"[ice]\nidle_timeout = {value}\n", 1)
        assert_config_error(tmp_path, capsys, bad, "ice.idle_timeout", "10-86400")

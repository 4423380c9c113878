"""L4: the keys and secrets published in the example configs are refused.

``check`` used to pass the examples as they are, with their published private keys and
placeholder secrets: a deployment copied from them could be impersonated by anyone who read
the README. Now ``check``, ``up`` and ``rendezvous`` (all through the config loader) refuse a
published key anywhere (inline or in a key file, as a private key or as a peer's or the
rendezvous' public key) and the placeholder secrets, with one line and exit 2. An inline
private key in a config file other users can read is a warning, like such a key file.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from p2ptun import cli, config
from p2ptun.errors import ConfigError
from p2ptun.keys import encode_key, generate_private_key, public_key

EXAMPLES = Path(__file__).parents[2] / "config"
KEY = re.compile(r'"([A-Za-z0-9+/]{43}=)"')


def fresh_key() -> str:
    return encode_key(generate_private_key())


@pytest.mark.parametrize(
    ("name", "load"),
    [("node.example.toml", config.load_node), ("rendezvous.example.toml", config.load_rendezvous)],
)
def test_published_examples_are_refused(
    name: str, load: object, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(EXAMPLES / name)
    code = cli.main(["check", "-c", path])
    err = capsys.readouterr().err
    print(f"FIGURE L4 check {name} as published: exit {code}")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "published" in err
    with pytest.raises(ConfigError):  # what 'up' and 'rendezvous' load it with
        load(path)  # type: ignore[operator]


def replace_all_but(text: str, keep: str) -> str:
    """The example with every published key replaced, except ``keep``."""
    return KEY.sub(lambda m: m.group(0) if m.group(1) == keep else f'"{fresh_key()}"', text)


@pytest.mark.parametrize("published", KEY.findall((EXAMPLES / "node.example.toml").read_text()))
def test_each_published_key_of_the_node_example_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], published: str
) -> None:
    text = replace_all_but((EXAMPLES / "node.example.toml").read_text(), published)
    text = text.replace('"change-me"', '"a-real-password-1"')
    path = tmp_path / "node.toml"
    path.write_text(text)
    path.chmod(0o600)
    code = cli.main(["check", "-c", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and "published" in err, err


def test_a_published_key_in_a_key_file_is_refused(tmp_path: Path) -> None:
    text = replace_all_but((EXAMPLES / "node.example.toml").read_text(), "")
    text = text.replace('"change-me"', '"a-real-password-1"')
    text = re.sub(r"^private_key = .*$", 'private_key_file = "alice.key"', text, flags=re.M)
    (tmp_path / "alice.key").write_text("KERrni5dM7zSQ2QNF/x21Oro8PaNCT1Pm470n2uhl0w=\n")
    (tmp_path / "alice.key").chmod(0o600)
    path = tmp_path / "node.toml"
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="published"):
        config.load_node(str(path))


@pytest.mark.parametrize("placeholder", ["change-me", "replace-with-32-random-characters"])
def test_placeholder_secrets_are_refused(tmp_path: Path, placeholder: str) -> None:
    text = replace_all_but((EXAMPLES / "rendezvous.example.toml").read_text(), "")
    other = "change-me" if placeholder != "change-me" else "replace-with-32-random-characters"
    text = text.replace(f'"{other}"', '"a-real-secret-of-enough-length-1"')
    path = tmp_path / "rv.toml"
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="placeholder"):
        config.load_rendezvous(str(path))


def test_inline_private_key_in_a_readable_file_is_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = replace_all_but((EXAMPLES / "node.example.toml").read_text(), "")
    text = text.replace('"change-me"', '"a-real-password-1"')
    path = tmp_path / "node.toml"
    path.write_text(text)
    path.chmod(0o644)
    code = cli.main(["check", "-c", str(path)])
    err = capsys.readouterr().err
    print(f"FIGURE L4 inline key in a 0644 config: exit {code}, stderr {err.strip()!r}")
    assert code == 0
    assert "warning:" in err and "private_key" in err and "other users" in err
    path.chmod(0o600)
    assert cli.main(["check", "-c", str(path)]) == 0
    assert "warning" not in capsys.readouterr().err


def test_a_fresh_config_is_fine() -> None:
    assert public_key(generate_private_key())  # keys from 'p2ptun genkey' are never refused

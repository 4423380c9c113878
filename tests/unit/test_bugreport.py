"""``p2ptun bugreport`` without a daemon: the archive's files, and no secret in it — keys and
passwords are planted in the config, a key file and the logs, and the whole archive is
searched for them (raw and unpacked). The run against a live node in the NAT lab is
``tests/e2e/test_observe.py``."""

from __future__ import annotations

import gzip
import os
import tarfile
from pathlib import Path

import pytest

from p2ptun import cli, keys
from p2ptun.bugreport import REDACTED, Redactor

RV_PUB = keys.encode_key(keys.public_key(keys.generate_private_key()))
BOB_PUB = keys.encode_key(keys.public_key(keys.generate_private_key()))


def plant(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """A node config with every kind of secret (one key in a key file), a log that leaks
    them, and the secrets."""
    private = keys.encode_key(keys.generate_private_key())
    psk = keys.encode_key(keys.generate_private_key())
    turn_password = "turn-Pa55word-7f3a"
    other_secret = "leaked-token-9c1d2e"
    key_file = tmp_path / "alice.key"
    key_file.write_text(private + "\n")
    key_file.chmod(0o600)
    config = tmp_path / "alice.toml"
    config.write_text(
        f'name = "alice"\nprivate_key_file = "{key_file}"\n'
        '[interface]\nname = "p2pbr0"\naddress = ["10.77.0.1/24"]\n'
        f'[rendezvous]\naddress = "127.0.0.1:7070"\npublic_key = "{RV_PUB}"\n'
        '[ice]\nstun = ["127.0.0.1:9"]\n'
        f'turn = [{{ url = "turn:127.0.0.1:9?transport=tcp", username = "u", '
        f'password = "{turn_password}" }}]\n'
        f'[[peer]]\nname = "bob"\npublic_key = "{BOB_PUB}"\nallowed_ips = ["10.77.0.2/32"]\n'
        f'preshared_key = "{psk}"\n'
    )
    config.chmod(0o600)
    log = tmp_path / "p2ptun.log"
    log.write_text(
        f"12:00:01 info node up name=alice\n"
        f"12:00:02 debug oops key {private} in a log line\n"
        f"12:00:03 debug turn auth user=u password={turn_password}\n"
        f"12:00:04 debug psk: {psk}\n"
        f'12:00:05 debug somebody logged token = "{other_secret}"\n'
        f"12:00:06 info peer public key {BOB_PUB}\n"
    )
    return config, log, [private, psk, turn_password, other_secret]


def unpack(archive: Path) -> dict[str, str]:
    with tarfile.open(archive, "r:gz") as tar:
        out = {}
        for member in tar.getmembers():
            f = tar.extractfile(member)
            assert f is not None
            out[member.name.split("/", 1)[1]] = f.read().decode()
        return out


def test_the_archive_holds_every_part_and_no_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("P2PTUN_RUN_DIR", str(tmp_path / "run"))  # no daemon runs there
    config, log, secrets = plant(tmp_path)
    out = tmp_path / "report.tar.gz"
    code = cli.main(["bugreport", "-c", str(config), "-o", str(out), "--log", str(log)])
    assert code == 0, capsys.readouterr().err
    assert str(out) in capsys.readouterr().out
    assert os.stat(out).st_mode & 0o777 == 0o600
    files = unpack(out)
    assert set(files) >= {
        "status.json",
        "debug.json",
        "netcheck.json",
        "config.toml",
        "logs.txt",
        "network.txt",
        "versions.txt",
    }
    everything = "\n".join(files.values())
    raw = gzip.decompress(out.read_bytes()).decode(errors="replace")
    for secret in secrets:
        assert secret not in everything and secret not in raw, secret
    # What is not secret stays: the peer's public key, the log's events, the config's shape.
    assert BOB_PUB in files["config.toml"] and BOB_PUB in files["logs.txt"]
    assert "node up name=alice" in files["logs.txt"]
    assert f'preshared_key = "{REDACTED}"' in files["config.toml"]
    assert "no daemon" in files["status.json"]  # said inside, not a failure
    assert "p2ptun " in files["versions.txt"]
    assert "ip address show" in files["network.txt"]
    assert '"verdict"' in files["netcheck.json"]  # the STUN server does not answer: a verdict


def test_a_config_that_does_not_load_is_reported_redacted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("P2PTUN_RUN_DIR", str(tmp_path / "run"))
    secret_key = keys.encode_key(keys.generate_private_key())
    config = tmp_path / "bad.toml"
    config.write_text(
        f'name = "alice"\nprivate_key = "{secret_key}"\n[ice]\n'
        'turn = [{ url = "turn:x", password = "pw-12345" }]\nbogus = 1\n'
    )
    out = tmp_path / "r.tar.gz"
    assert cli.main(["bugreport", "-c", str(config), "-o", str(out)]) == 0
    files = unpack(out)
    assert "the config does not load" in files["notes.txt"]
    assert secret_key not in "\n".join(files.values())
    assert "pw-12345" not in files["config.toml"]


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ('password = "x1y2z3"', 'password = "<redacted>"'),
        ("password: hunter22", 'password: "<redacted>"'),
        ("static-auth-secret=abcdef123", 'static-auth-secret="<redacted>"'),
        ('users = { alice = "secret123" }', "users = { <redacted> }"),
        ('private_key_file = "/etc/p2ptun/a.key"', 'private_key_file = "/etc/p2ptun/a.key"'),
        ("public_key = abc", "public_key = abc"),
    ],
)
def test_the_redactor_removes_values_of_secret_names(text: str, kept: str) -> None:
    assert Redactor()(text) == kept


def test_usage_mistakes_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bugreport", "--bogus"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_an_archive_that_cannot_be_written_is_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("P2PTUN_RUN_DIR", str(tmp_path / "run"))
    out = tmp_path / "no-such-dir" / "r.tar.gz"
    assert cli.main(["bugreport", "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"cannot write {out}") and len(err.strip().splitlines()) == 1

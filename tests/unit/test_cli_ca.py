"""``p2ptun ca init|sign|revoke|show`` and ``p2ptun invite``: files, output, and every mistake
as one line with exit 2."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from p2ptun import cli
from p2ptun.keys import encode_key, generate_private_key, public_key
from p2ptun.membership import (
    ed25519_public,
    read_certificate_text,
    read_invite_text,
    read_revocations_text,
    verify_certificate,
)

RV_KEY = encode_key(public_key(generate_private_key()))


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def ca_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    out = tmp_path / "ca"
    code, stdout, _ = run(
        capsys,
        *("ca", "init", "--network", "home", "--domain", "home", "--out", str(out)),
        *("--rendezvous", "rv.example.net:7070", "--rendezvous-key", RV_KEY),
    )
    assert code == 0 and "public key" in stdout
    return out


def test_init_writes_a_private_key_only_root_reads(ca_dir: Path) -> None:
    assert stat.S_IMODE(os.stat(ca_dir / "ca.key").st_mode) == 0o600
    assert (ca_dir / "ca.pub").read_text().strip()
    assert 'name = "home"' in (ca_dir / "network.toml").read_text()


def test_init_refuses_to_replace_an_authority(
    ca_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "ca", "init", "--network", "home", "--out", str(ca_dir))
    assert code == 2 and "refusing to replace" in err and err.count("\n") == 1


def test_sign_show_revoke(ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = encode_key(public_key(generate_private_key()))
    code, cert_text, _ = run(
        capsys,
        *("ca", "sign", "--ca", str(ca_dir), "--name", "bob", "--ip", "10.77.0.2/24"),
        *("--pubkey", key, "--groups", "servers,home", "--valid", "30d"),
    )
    assert code == 0
    cert = read_certificate_text(cert_text)
    authority = ed25519_public(__import__("base64").b64decode((ca_dir / "ca.key").read_text()))
    verify_certificate(cert, authority, cert.details.not_before, network="home")
    assert cert.details.groups == ("home", "servers")
    assert cert.details.not_after - cert.details.not_before == 30 * 86400
    path = tmp_path / "bob.cert"
    path.write_text(cert_text)
    code, shown, _ = run(capsys, "ca", "show", str(path))
    assert code == 0 and "certificate of 'bob' in network 'home' (valid)" in shown
    assert key in shown
    code, out, _ = run(capsys, "ca", "revoke", "--ca", str(ca_dir), "bob")
    assert code == 0 and "revoked bob" in out
    crl = read_revocations_text((ca_dir / "revoked.crl").read_text())
    assert crl.number == 1 and cert.serial in crl.serials
    code, out, _ = run(capsys, "ca", "revoke", "--ca", str(ca_dir), str(path))
    assert code == 0
    assert read_revocations_text((ca_dir / "revoked.crl").read_text()).number == 2


def test_invite_is_one_line_token(ca_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        *("invite", "--ca", str(ca_dir), "--name", "nas", "--ip", "10.77.0.3/24"),
        *("--expires", "2h"),
    )
    assert code == 0 and out.count("\n") == 1
    invite = read_invite_text(out)
    assert invite.name == "nas" and invite.domain == "home"
    assert invite.rendezvous == "rv.example.net:7070"
    assert invite.grant.redeem_by - invite.grant.details.not_before == 7200


SIGN = "ca sign --ca {ca} --name bob --ip 10.77.0.2/24 --pubkey {key}"


@pytest.mark.parametrize(
    ("command", "word"),
    [
        (SIGN.replace("bob", "Bob"), "not a valid node name"),
        (SIGN.replace("10.77.0.2/24", "10.77.0.300/24"), "--ip"),
        (SIGN.replace("{key}", "abc"), "--pubkey"),
        (SIGN + " --valid 1y", "--valid"),
        (SIGN.replace("{ca}", "/nonexistent"), "not a directory"),
        ("invite --ca {ca} --name bob --ip 10.77.0.2/24 --groups A", "--groups"),
        ("ca revoke --ca {ca} nobody", "nothing unexpired"),
        ("ca show {ca}/ca.pub", "not a valid certificate"),
        ("ca show {ca}/missing", "no such file"),
        ("ca", "a command is required"),
    ],
)
def test_mistakes_are_one_line_and_exit_2(
    ca_dir: Path, capsys: pytest.CaptureFixture[str], command: str, word: str
) -> None:
    args = command.format(ca=ca_dir, key=RV_KEY).split()
    code, _, err = run(capsys, *args)
    assert code == 2, err
    assert word in err and err.count("\n") == 1 and "Traceback" not in err


def test_a_damaged_certificate_is_refused_in_one_line(
    ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = encode_key(public_key(generate_private_key()))
    _, cert_text, _ = run(
        capsys,
        *("ca", "sign", "--ca", str(ca_dir), "--name", "bob", "--ip", "10.77.0.2/24"),
        *("--pubkey", key),
    )
    lines = cert_text.splitlines()
    lines[1] = lines[1][:10] + ("A" if lines[1][10] != "A" else "B") + lines[1][11:]
    damaged = tmp_path / "damaged.cert"
    damaged.write_text("\n".join(lines[:2] + lines[3:]) + "\n")  # a line lost in copying
    code, _, err = run(capsys, "ca", "show", str(damaged))
    assert code == 2 and err.count("\n") == 1 and "not a valid certificate" in err


def test_join_writes_key_certificate_and_a_config_that_loads(
    ca_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from p2ptun import config, join

    redeemed = []

    async def fake_redeem(host: object, invite: object, key: bytes, cert: bytes) -> None:
        redeemed.append(cert)

    monkeypatch.setattr(join, "redeem", fake_redeem)
    _, token, _ = run(
        capsys, "invite", "--ca", str(ca_dir), "--name", "nas", "--ip", "10.77.0.3/24"
    )
    target = tmp_path / "etc" / "p2p0.toml"
    code, out, err = run(capsys, "join", token.strip(), "--config", str(target))
    assert code == 0, err
    assert "systemctl enable --now p2ptun@p2p0" in out and redeemed
    assert stat.S_IMODE(os.stat(tmp_path / "etc" / "p2p0.key").st_mode) == 0o600
    cfg = config.load_node(str(target))
    assert cfg.name == "nas" and cfg.peers == () and cfg.interface.name == "p2p0"
    assert cfg.network is not None and cfg.network.domain == "home"
    assert cfg.network.certificate.encode() == redeemed[0]
    assert cfg.rendezvous.address == ("rv.example.net", 7070)
    # A second join onto the same files is refused, nothing overwritten.
    code, _, err = run(capsys, "join", token.strip(), "--config", str(target))
    assert code == 2 and "exists" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("mangle", "word"),
    [
        (lambda t: t[:-30], "not a valid invite"),
        (lambda t: "p2ptun-invite:" + "A" * 10, "not a valid invite"),
        (lambda t: t.replace("p2ptun-invite:", "p2ptun-invlte:"), "does not start with"),
    ],
)
def test_join_refuses_a_damaged_token_in_one_line(
    ca_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    mangle: object,
    word: str,
) -> None:
    _, token, _ = run(
        capsys, "invite", "--ca", str(ca_dir), "--name", "nas", "--ip", "10.77.0.3/24"
    )
    bad = mangle(token.strip())  # type: ignore[operator]
    code, _, err = run(capsys, "join", bad, "--config", str(tmp_path / "p2p0.toml"))
    assert code == 2 and word in err and err.count("\n") == 1, err
    assert not (tmp_path / "p2p0.toml").exists()


def test_join_refuses_an_expired_invite(
    ca_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from p2ptun import ca
    from p2ptun.errors import UsageError
    from p2ptun.join import parse_token

    auth = ca.load(str(ca_dir))
    invite = auth.invite(
        "nas", ca.parse_addresses("10.77.0.3/24"), expires=60, now=1000, random_bytes=os.urandom
    )
    with pytest.raises(UsageError, match="has expired"):
        parse_token(invite.to_text(), 1060)


@pytest.mark.parametrize(
    ("edit", "word"),
    [
        (lambda c: c.replace('name = "nas"', 'name = "tv"'), "issued for 'nas', but this node"),
        (lambda c: c.replace('"10.77.0.3/24"', '"10.77.0.9/24"'), "which [interface] address"),
        (lambda c: c.replace("ca = ", 'ca = "x" #'), "network.ca"),
        (lambda c: c.replace('cert_file = "p2p0.cert"', 'cert_file = "none.cert"'), "no such"),
        (lambda c: c + 'dns = true\ndomain = ""\n', "network.dns"),
        (lambda c: c + "bogus = 1\n", "network.bogus: unknown key"),
    ],
)
def test_a_node_config_with_a_bad_network_is_one_line_and_exit_2(
    ca_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    edit: object,
    word: str,
) -> None:
    from p2ptun import join

    async def fake_redeem(*args: object) -> None:
        pass

    monkeypatch.setattr(join, "redeem", fake_redeem)
    _, token, _ = run(
        capsys, "invite", "--ca", str(ca_dir), "--name", "nas", "--ip", "10.77.0.3/24"
    )
    target = tmp_path / "p2p0.toml"
    assert run(capsys, "join", token.strip(), "--config", str(target))[0] == 0
    text = target.read_text().replace('domain = "home"\n', "")
    target.write_text(edit(text))  # type: ignore[operator]
    code, _, err = run(capsys, "check", "-c", str(target))
    assert code == 2 and word in err and err.count("\n") == 1, err

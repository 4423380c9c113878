"""``[cluster]`` of the rendezvous and several ``[rendezvous] address`` of a node."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2ptun import config
from tests.unit.test_config import NODE, RENDEZVOUS, assert_config_error, write


def test_cluster_section(tmp_path: Path) -> None:
    text = RENDEZVOUS.replace(
        "[stun]",
        '[cluster]\nredis = "rediss://:s3cret@10.0.0.5:6380/2"\ninstance = "rv-a"\n'
        "presence_ttl = 9\n\n[stun]",
    )
    cfg = config.load_rendezvous(write(tmp_path, text))
    assert cfg.cluster is not None
    url = cfg.cluster.redis
    assert (url.host, url.port, url.db, url.password, url.tls) == (
        "10.0.0.5",
        6380,
        2,
        "s3cret",
        True,
    )
    assert "s3cret" not in repr(cfg.cluster) and url.where == "10.0.0.5:6380"
    assert cfg.cluster.instance == "rv-a" and cfg.cluster.presence_ttl == 9
    assert config.load_rendezvous(write(tmp_path, RENDEZVOUS, "plain.toml")).cluster is None


@pytest.mark.parametrize(
    ("body", "key", "word"),
    [
        ('redis = "http://x:6379"', "cluster.redis", "redis://"),
        ('redis = "redis://x:6379/zero"', "cluster.redis", "number"),
        ('redis = "redis://x:6379"\npresence_ttl = 1', "cluster.presence_ttl", "between"),
        ('redis = "redis://x"\ninstance = "a b"', "cluster.instance", "printable"),
        ('redis = "redis://x"\nsentinel = 1', None, "sentinel"),
        ('redis = "redis://x"\ntls_ca = "ca.pem"', "cluster.tls_ca", "rediss://"),
        ('redis = "rediss://x"\ntls_ca = "nowhere.pem"', "cluster.tls_ca", "no such file"),
    ],
)
def test_bad_cluster_values_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, key: str | None, word: str
) -> None:
    text = RENDEZVOUS.replace("[stun]", f"[cluster]\n{body}\n\n[stun]")
    assert_config_error(tmp_path, capsys, text, key, word)


def test_several_rendezvous_addresses(tmp_path: Path) -> None:
    text = NODE.replace(
        'address = "rv.example.net:7070"', 'address = ["rv-a.example.net:7070", "192.0.2.7"]'
    )
    cfg = config.load_node(write(tmp_path, text))
    assert cfg.rendezvous.address == ("rv-a.example.net", 7070)
    assert cfg.rendezvous.addresses == (("rv-a.example.net", 7070), ("192.0.2.7", 7070))
    one = config.load_node(write(tmp_path, NODE, "one.toml"))
    assert one.rendezvous.addresses == (("rv.example.net", 7070),)


def test_an_empty_address_list_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = NODE.replace('address = "rv.example.net:7070"', "address = []")
    assert_config_error(tmp_path, capsys, text, "rendezvous.address", "empty")


def test_tls_ca_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "redis-ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    text = RENDEZVOUS.replace(
        "[stun]", '[cluster]\nredis = "rediss://10.0.0.5"\ntls_ca = "redis-ca.pem"\n\n[stun]'
    )
    cfg = config.load_rendezvous(write(tmp_path, text))
    assert cfg.cluster is not None and cfg.cluster.tls_ca == str(tmp_path / "redis-ca.pem")

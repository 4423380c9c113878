"""``[metrics]`` in both configs: read, and one clear line for a bad value."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_config import NODE, RENDEZVOUS, assert_config_error, write

from p2ptun import config


@pytest.mark.parametrize("text", [NODE, RENDEZVOUS], ids=["node", "rendezvous"])
def test_metrics_listen_is_read_and_off_by_default(tmp_path: Path, text: str) -> None:
    assert config.load(write(tmp_path, text)).metrics is None
    loaded = config.load(write(tmp_path, text + '\n[metrics]\nlisten = "127.0.0.1:9560"\n'))
    assert loaded.metrics is not None and loaded.metrics.listen == ("127.0.0.1", 9560)
    loaded = config.load(write(tmp_path, text + '\n[metrics]\nlisten = "[::1]"\n'))
    assert loaded.metrics is not None and loaded.metrics.listen == ("::1", 9560)


@pytest.mark.parametrize("text", [NODE, RENDEZVOUS], ids=["node", "rendezvous"])
@pytest.mark.parametrize(
    ("section", "key", "words"),
    [
        ('listen = "localhost:9560"', "metrics.listen", ("IP literal",)),
        ('listen = "127.0.0.1:99999"', "metrics.listen", ("ip:port",)),
        ("", "metrics.listen", ("missing",)),
        ('listen = "127.0.0.1:9560"\nport = 1', "metrics.port", ("unknown",)),
    ],
)
def test_bad_metrics_section_is_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    text: str,
    section: str,
    key: str,
    words: tuple[str, ...],
) -> None:
    assert_config_error(tmp_path, capsys, text + f"\n[metrics]\n{section}\n", key, *words)


STUN_LISTEN = 'listen = ["203.0.113.10:3478"]'


def _rv_with_stun(section: str) -> str:
    head, _, rest = RENDEZVOUS.partition("[stun]")
    assert rest, "the test rendezvous config has a [stun] section"
    body = rest.split("\n[", 1)
    tail = "\n[" + body[1] if len(body) > 1 else ""
    return f"{head}[stun]\n{section}\n{tail}"


def test_stun_alternate_pairs_with_the_primary(tmp_path: Path) -> None:
    cfg = config.load_rendezvous(
        write(tmp_path, _rv_with_stun(f'{STUN_LISTEN}\nalternate = "203.0.113.11:3479"'))
    )
    assert cfg.stun is not None and cfg.stun.alternate == ("203.0.113.11", 3479)
    assert cfg.stun.behavior_primary() == ("203.0.113.10", 3478)


@pytest.mark.parametrize(
    ("section", "words"),
    [
        ('listen = ["0.0.0.0:3478"]\nalternate = "203.0.113.11:3479"', ("specific IP",)),
        (f'{STUN_LISTEN}\nalternate = "203.0.113.10:3479"', ("shares its IP or port",)),
        (f'{STUN_LISTEN}\nalternate = "203.0.113.11:3478"', ("shares its IP or port",)),
        (f'{STUN_LISTEN}\nalternate = "0.0.0.0:3479"', ("wildcard",)),
        (f'{STUN_LISTEN}\nalternate = "[2001:db8::1]:3479"', ("IPv6",)),
        (f'{STUN_LISTEN}\nalternate = "rv.example.net:3479"', ("IP literal",)),
        (
            'listen = ["203.0.113.10:3478", "203.0.113.11:3479"]\nalternate = "203.0.113.11:3479"',
            ("overlaps",),
        ),
    ],
)
def test_bad_stun_alternate_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], section: str, words: tuple[str, ...]
) -> None:
    assert_config_error(tmp_path, capsys, _rv_with_stun(section), "stun.alternate", *words)


WEB_TOKEN = "0123456789abcdef-web"


def test_web_is_off_by_default_and_reads_a_token_or_its_file(tmp_path: Path) -> None:
    assert config.load_rendezvous(write(tmp_path, RENDEZVOUS)).web is None
    text = RENDEZVOUS + f'\n[web]\nlisten = "127.0.0.1:8080"\nadmin_token = "{WEB_TOKEN}"\n'
    web = config.load_rendezvous(write(tmp_path, text)).web
    assert web is not None and web.listen == ("127.0.0.1", 8080)
    assert web.admin_token == WEB_TOKEN and WEB_TOKEN not in repr(web)
    (tmp_path / "token").write_text(WEB_TOKEN + "\n")
    text = RENDEZVOUS + '\n[web]\nlisten = "127.0.0.1"\nadmin_token_file = "token"\n'
    web = config.load_rendezvous(write(tmp_path, text)).web
    assert web is not None and web.admin_token == WEB_TOKEN and web.listen[1] == 8080


@pytest.mark.parametrize(
    ("section", "key", "words"),
    [
        ('listen = "127.0.0.1:8080"', None, ("exactly one of admin_token",)),
        (
            f'listen = "127.0.0.1:8080"\nadmin_token = "{WEB_TOKEN}"\nadmin_token_file = "t"',
            None,
            ("exactly one",),
        ),
        ('listen = "127.0.0.1:8080"\nadmin_token = "short"', "web.admin_token", ("too short",)),
        (
            'listen = "127.0.0.1:8080"\nadmin_token_file = "/nonexistent/t"',
            "web.admin_token_file",
            ("/nonexistent/t",),
        ),
        (f'admin_token = "{WEB_TOKEN}"', "web.listen", ("missing",)),
        (f'listen = "127.0.0.1:8080"\nadmin_token = "{WEB_TOKEN}"\nport = 1', "web.port", ()),
    ],
)
def test_bad_web_section_is_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    section: str,
    key: str | None,
    words: tuple[str, ...],
) -> None:
    assert_config_error(tmp_path, capsys, RENDEZVOUS + f"\n[web]\n{section}\n", key, *words)


def test_check_names_the_new_listeners(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from p2ptun import cli

    text = _rv_with_stun(f'{STUN_LISTEN}\nalternate = "203.0.113.11:3479"') + (
        f'\n[metrics]\nlisten = "127.0.0.1:9560"\n[web]\nlisten = "127.0.0.1:8080"\n'
        f'admin_token = "{WEB_TOKEN}"\n'
    )
    assert cli.main(["check", "-c", write(tmp_path, text)]) == 0
    out = capsys.readouterr().out
    assert "RFC 5780 alternate 203.0.113.11:3479" in out
    assert "metrics 127.0.0.1:9560" in out and "map page 127.0.0.1:8080" in out
    assert WEB_TOKEN not in out

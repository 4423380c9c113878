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

"""The command line of ``p2ptun netcheck``: listed in ``--help``, usage mistakes in one line
with exit 2. (What it measures: tests/unit/test_netcheck.py, tests/e2e/test_observe.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_config import RENDEZVOUS, write

from p2ptun import cli


def test_help_lists_netcheck(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "netcheck" in out


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["netcheck"], "give a node config (-c FILE) or a STUN server"),
        (["netcheck", "--server", "rv.example.net:99999"], "bad server"),
        (["netcheck", "--bogus"], "unrecognized arguments"),
    ],
)
def test_netcheck_usage_mistakes_are_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], words: str
) -> None:
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and words in err, err


def test_netcheck_refuses_a_rendezvous_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, RENDEZVOUS)
    assert cli.main(["netcheck", "-c", path]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and path in err, err

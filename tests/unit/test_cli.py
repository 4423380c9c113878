"""The command line: help lists working commands, usage mistakes are one line and exit 2."""

from __future__ import annotations

import io
import logging
import subprocess
import sys

import pytest

from p2ptun import cli, log
from p2ptun.errors import DecodeError
from p2ptun.signal.negotiation import NegotiationError


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "p2ptun", *args], capture_output=True, text=True, timeout=60
    )


def test_help_lists_commands() -> None:
    proc = run("--help")
    assert proc.returncode == 0
    for command in ("genkey", "pubkey", "check"):
        assert command in proc.stdout


def test_every_listed_command_has_a_handler() -> None:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, sub_parser in sub.choices.items():  # type: ignore[union-attr]
        assert callable(sub_parser.get_default("func")), name


@pytest.mark.parametrize(
    ("args", "word"),
    [
        (("frobnicate",), "invalid choice"),
        (("check",), "required: -c/--config"),
        (("--log-level", "loud", "genkey"), "invalid choice"),
        (("genkey", "--bogus"), "unrecognized arguments"),
    ],
)
def test_usage_errors_are_one_line(args: tuple[str, ...], word: str) -> None:
    proc = run(*args)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert word in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("error", [DecodeError("bad bytes"), NegotiationError("bad call")])
def test_protocol_error_reaching_the_cli_is_one_line_and_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], error: Exception
) -> None:
    def fail(args: object) -> int:
        raise error

    monkeypatch.setattr(cli, "cmd_genkey", fail)
    assert cli.main(["genkey"]) == 1
    assert capsys.readouterr().err == f"{error}\n"


def test_no_command_shows_usage() -> None:
    proc = run()
    assert proc.returncode == 2 and "usage:" in proc.stderr


def test_version() -> None:
    proc = run("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("p2ptun ")


def test_key_value_log_lines() -> None:
    stream = io.StringIO()
    log.setup("debug", stream=stream, with_time=False)
    logger = log.get_logger("turn.server")
    logger.info("allocation created", peer="203.0.113.5:4000", note="two words", empty="")
    logger.debug("detail", n=3)
    assert stream.getvalue().splitlines() == [
        'info turn.server allocation created peer=203.0.113.5:4000 note="two words" empty=""',
        "debug turn.server detail n=3",
    ]
    log.setup("warning", stream=stream, with_time=False)
    logger.info("hidden")
    assert "hidden" not in stream.getvalue()
    assert logging.getLogger("p2ptun").level == logging.WARNING


def test_log_line_has_utc_timestamp() -> None:
    stream = io.StringIO()
    log.setup("info", stream=stream, with_time=True)
    log.get_logger("x").warning("careful", a=1)
    line = stream.getvalue().strip()
    assert line.endswith("warning x careful a=1")
    assert line[4] == "-" and line[10] == "T" and line.split(" ")[0].endswith("Z")

"""``[turn] relay_address`` of a dual-stack rendezvous: an IPv4 and an IPv6 address (RFC 8656
§7.2), refused with one line for anything else."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_config import RENDEZVOUS, assert_config_error, check, write

from p2ptun import config
from p2ptun.turn.server import TurnServerOptions

ONE = 'relay_address = "203.0.113.10"'


def test_one_address_of_each_family(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert ONE in RENDEZVOUS
    text = RENDEZVOUS.replace(ONE, 'relay_address = ["203.0.113.10", "2001:db8::10"]')
    cfg = config.load_rendezvous(write(tmp_path, text))
    assert cfg.turn is not None
    assert (cfg.turn.relay_address, cfg.turn.extra_relay_address) == (
        "203.0.113.10",
        "2001:db8::10",
    )
    options = TurnServerOptions.from_settings(cfg.turn)
    assert options.extra_relay_address == "2001:db8::10"
    assert "2001:db8::10" in options.own_addresses  # never a peer of its own relay
    code, out, _err = check(write(tmp_path, text), capsys)
    assert code == 0 and "TURN relay 203.0.113.10 and 2001:db8::10" in out
    # A one-element list is the plain form.
    cfg = config.load_rendezvous(
        write(tmp_path, RENDEZVOUS.replace(ONE, f"{ONE[:16]}[{ONE[16:]}]"))
    )
    assert cfg.turn is not None and cfg.turn.extra_relay_address is None


@pytest.mark.parametrize(
    ("value", "key", "word"),
    [
        ('["203.0.113.10", "203.0.113.11"]', "", "two addresses of one family"),
        ('["2001:db8::10", "2001:db8::11"]', "", "two addresses of one family"),
        ('["203.0.113.10", "2001:db8::10", "192.0.2.1"]', "", "3 addresses"),
        ("[]", "", "0 addresses"),
        ('["203.0.113.10", "relay"]', "[1]", "not an IP"),
        ('["203.0.113.10", 5]', "[1]", "expected a string"),
    ],
)
def test_bad_relay_addresses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str, key: str, word: str
) -> None:
    text = RENDEZVOUS.replace(ONE, f"relay_address = {value}")
    assert_config_error(tmp_path, capsys, text, f"turn.relay_address{key}", word)

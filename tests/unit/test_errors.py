"""The error hierarchy: user-facing errors carry exit codes, protocol errors say whose fault
they are (the remote side's or our own code's) and carry none."""

from __future__ import annotations

import pytest

from p2ptun.errors import (
    EXIT_FAILURE,
    EXIT_USAGE,
    ConfigError,
    DecodeError,
    LocalProtocolError,
    P2ptunError,
    ProtocolError,
    RemoteProtocolError,
    RuntimeFailure,
    UsageError,
)
from p2ptun.ice.sdp import IceParseError
from p2ptun.noise import NoiseError
from p2ptun.signal.errors import ChannelError, SealError, SignalDecodeError
from p2ptun.signal.negotiation import NegotiationError
from p2ptun.stun import StunDecodeError
from p2ptun.turn.client import TurnStateError
from p2ptun.wireguard.errors import WireGuardDecodeError


@pytest.mark.parametrize(
    "cls",
    [
        DecodeError,
        StunDecodeError,
        WireGuardDecodeError,
        SignalDecodeError,
        IceParseError,
        NoiseError,
        ChannelError,
        SealError,
    ],
)
def test_remote_errors(cls: type[Exception]) -> None:
    assert issubclass(cls, RemoteProtocolError)
    assert not issubclass(cls, LocalProtocolError | P2ptunError)
    assert not hasattr(cls, "exit_code")


def test_decode_errors_stay_value_errors() -> None:
    assert issubclass(DecodeError, ValueError)


@pytest.mark.parametrize("cls", [NegotiationError, TurnStateError])
def test_local_errors(cls: type[Exception]) -> None:
    assert issubclass(cls, LocalProtocolError)
    assert not issubclass(cls, RemoteProtocolError | P2ptunError)
    assert not hasattr(cls, "exit_code")


def test_turn_state_error_stays_a_runtime_error() -> None:
    assert issubclass(TurnStateError, RuntimeError)


def test_user_facing_errors_carry_exit_codes() -> None:
    assert UsageError.exit_code == EXIT_USAGE
    assert ConfigError.exit_code == EXIT_USAGE
    assert RuntimeFailure.exit_code == EXIT_FAILURE
    for cls in (UsageError, ConfigError, RuntimeFailure):
        assert not issubclass(cls, ProtocolError)

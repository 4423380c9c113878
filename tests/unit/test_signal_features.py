"""Data-plane features in ICE descriptions (p2ptun.signal.features)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2ptun.ice.sdp import IceDescription
from p2ptun.signal.features import (
    MAX_FEATURES,
    ON_DEMAND,
    PARTIAL_CHECKSUMS,
    features_of,
    with_features,
)

DESC = "a=ice-ufrag:Tm9kZQ\na=ice-pwd:c2VjcmV0LXNlY3JldC1zZWNyZXQ\na=ice-options:trickle\n"


def test_round_trip_and_ice_parsers_ignore_the_line() -> None:
    text = with_features(DESC, [PARTIAL_CHECKSUMS])
    assert text == DESC + "a=x-p2ptun-features:partial-csum\n"
    assert features_of(text) == {PARTIAL_CHECKSUMS}
    # The ICE parser (also an older peer's) reads the same description either way.
    assert IceDescription.parse(text) == IceDescription.parse(DESC)
    assert with_features(DESC, []) == DESC and features_of(DESC) == frozenset()


def test_unknown_and_malformed_tags_are_ignored() -> None:
    assert features_of(DESC + "a=x-p2ptun-features:future-thing partial-csum\r\n") == {
        PARTIAL_CHECKSUMS
    }
    assert features_of(DESC + "x-p2ptun-features:partial-csum") == {PARTIAL_CHECKSUMS}
    assert features_of(DESC + "a=x-p2ptun-features\n") == frozenset()
    assert features_of(DESC + "a=x-p2ptun-featuresX:partial-csum\n") == frozenset()
    # Only the first MAX_FEATURES tags of a line are read.
    many = " ".join(["junk"] * MAX_FEATURES + [PARTIAL_CHECKSUMS])
    assert features_of(DESC + f"a=x-p2ptun-features:{many}\n") == frozenset()
    with pytest.raises(ValueError):
        with_features(DESC, ["Bad Tag"])


@given(st.text(max_size=2000))
def test_features_of_never_raises(text: str) -> None:
    assert features_of(text) <= {PARTIAL_CHECKSUMS, ON_DEMAND}

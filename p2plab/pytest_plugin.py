"""pytest fixtures for the NAT lab (enabled by ``pytest_plugins`` in ``tests/conftest.py``).

``natlab`` is a factory: call it with the sites' NAT types, get a built
:class:`~p2plab.natlab.NatLab`; everything it made (namespaces, veths, state file, processes
started with ``lab.popen``) is removed when the test ends, pass or fail::

    @pytest.mark.lab
    def test_direct(natlab):
        lab = natlab(["cone", "prc"])
        lab.exec("site1", "ping", "-c1", lab.server_addrs[0], check=True)

``natlab_module`` is the same with module scope, for several tests sharing one lab. Without root
or usable ``ip netns`` the tests calling the factory are skipped with the reason; tests that
build labs by hand can use the ``natlab_required`` fixture for the same skip.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from p2plab.natlab import NatLab, lab_unavailable_reason

LabFactory = Callable[..., NatLab]


@functools.cache
def _unavailable() -> str | None:
    return lab_unavailable_reason()


def _factory(labs: list[NatLab]) -> LabFactory:
    def make(sites: Sequence[str] = ("cone", "cone"), **kwargs: Any) -> NatLab:
        """Build a lab with one site per NAT type in ``sites`` (see ``NatLab.create``)."""
        reason = _unavailable()
        if reason is not None:
            pytest.skip(reason)
        lab = NatLab.create(sites, **kwargs)
        labs.append(lab)
        return lab

    return make


def _close_all(labs: list[NatLab]) -> None:
    for lab in reversed(labs):
        lab.close()


@pytest.fixture
def natlab_required() -> None:
    """Skip the test (with the reason) if no lab can be built here."""
    reason = _unavailable()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture
def natlab() -> Iterator[LabFactory]:
    """Factory for NAT labs that are torn down at the end of the test."""
    labs: list[NatLab] = []
    try:
        yield _factory(labs)
    finally:
        _close_all(labs)


@pytest.fixture(scope="module")
def natlab_module() -> Iterator[LabFactory]:
    """Factory for NAT labs that are torn down at the end of the test module."""
    labs: list[NatLab] = []
    try:
        yield _factory(labs)
    finally:
        _close_all(labs)


@pytest.fixture
def short_tmp_path() -> Iterator[Path]:
    """A fresh directory with a short name under /tmp, removed afterwards: for a tool whose
    working directories hold Unix sockets (at most 107 bytes of path; pytest's ``tmp_path``
    is too long for them)."""
    path = Path(tempfile.mkdtemp(prefix="p2pt", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)

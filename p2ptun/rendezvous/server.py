"""The rendezvous server process (``p2ptun rendezvous -c FILE``)."""

from __future__ import annotations

from p2ptun.config import RendezvousConfig
from p2ptun.errors import RuntimeFailure


def run(cfg: RendezvousConfig) -> int:
    """Run the rendezvous server in the foreground until SIGTERM/SIGINT; the exit code."""
    raise RuntimeFailure("p2ptun rendezvous: not implemented yet")

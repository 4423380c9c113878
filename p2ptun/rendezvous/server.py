"""The rendezvous server process (``p2ptun rendezvous -c FILE``).

One trio nursery holds the rendezvous' services, side by side: today the embedded STUN/TURN
servers (:mod:`p2ptun.rendezvous.stun_turn`); the signaling server joins the same nursery.
Every service binds its listeners first (:meth:`StunTurnService.bind`), so that a listen
address in use ends the start with one line and exit 1 before anything is served. SIGTERM and
SIGINT cancel the nursery: sockets close and the process exits 0.
"""

from __future__ import annotations

import os
import signal

import trio

from p2ptun.config import RendezvousConfig
from p2ptun.errors import EXIT_OK
from p2ptun.log import get_logger
from p2ptun.rendezvous.stun_turn import StunTurnService

log = get_logger("rendezvous")


async def bind_services(cfg: RendezvousConfig) -> list[StunTurnService]:
    """Bind the listeners of every service in ``cfg``. Raises :class:`RuntimeFailure` (one
    line naming the address) if one cannot be bound; nothing stays open then."""
    services: list[StunTurnService] = []
    if cfg.stun is not None:
        services.append(await StunTurnService.bind(cfg.stun, cfg.turn, config_path=cfg.path))
    else:
        log.info("no [stun] section: STUN and TURN are off")
    # The signaling server (cfg.listen) binds here too, once it exists.
    return services


async def serve(
    services: list[StunTurnService],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve bound services side by side until cancelled; close them on the way out."""
    try:
        async with trio.open_nursery() as nursery:
            for service in services:
                nursery.start_soon(service.serve)
            task_status.started()
            log.info("rendezvous ready", pid=os.getpid())
    finally:
        for service in services:
            service.close()


async def _main(cfg: RendezvousConfig) -> int:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        services = await bind_services(cfg)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, services)
            async for signum in signals:
                log.info("stopping", signal=signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
    log.info("rendezvous stopped")
    return EXIT_OK


def run(cfg: RendezvousConfig) -> int:
    """Run the rendezvous server in the foreground until SIGTERM/SIGINT; the exit code."""
    return trio.run(_main, cfg)

"""The rendezvous server process (``p2ptun rendezvous -c FILE``).

One trio nursery holds the rendezvous' services, side by side: the embedded STUN/TURN servers
(:mod:`p2ptun.rendezvous.stun_turn`) and the signaling server
(:mod:`p2ptun.rendezvous.signaling`). Every service binds its listeners before the rendezvous
reports itself ready, so that a listen address in use ends the start with one line and exit 1.
Under systemd (``Type=notify``) READY=1 is sent once everything listens. SIGTERM and SIGINT
cancel the nursery: nodes are told the rendezvous is going away, sockets close, exit 0.
"""

from __future__ import annotations

import os
import signal
from functools import partial

import trio

from p2ptun.addr import format_address
from p2ptun.config import RendezvousConfig
from p2ptun.errors import EXIT_OK, RuntimeFailure
from p2ptun.log import get_logger
from p2ptun.net.ports import Host
from p2ptun.net.sdnotify import Notifier
from p2ptun.net.system import SystemHost
from p2ptun.rendezvous.signaling import serve_signaling
from p2ptun.rendezvous.stun_turn import StunTurnService

log = get_logger("rendezvous")


async def bind_services(cfg: RendezvousConfig, host: Host) -> list[StunTurnService]:
    """Bind the listeners of every service in ``cfg`` on ``host``. Raises
    :class:`RuntimeFailure` (one line naming the address) if one cannot be bound; nothing
    stays open then."""
    services: list[StunTurnService] = []
    if cfg.stun is not None:
        services.append(await StunTurnService.bind(host, cfg.stun, cfg.turn, config_path=cfg.path))
    else:
        log.info("no [stun] section: STUN and TURN are off")
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


async def run_rendezvous(
    cfg: RendezvousConfig,
    host: Host,
    *,
    notifier: Notifier | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Bind and serve every service of ``cfg`` on ``host`` until cancelled (the composition
    root of the rendezvous; the process entry adds signals)."""
    notifier = notifier if notifier is not None else Notifier()
    services = await bind_services(cfg, host)
    async with trio.open_nursery() as nursery:
        try:
            await nursery.start(partial(serve_signaling, cfg, host=host))
        except (OSError, RuntimeFailure) as exc:
            for service in services:
                service.close()
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise RuntimeFailure(
                f"cannot listen for signaling on {format_address(cfg.listen)}: {reason or exc}"
            ) from None
        await nursery.start(serve, services)
        notifier.ready(f"signaling on {format_address(cfg.listen)}")
        task_status.started()


async def _main(cfg: RendezvousConfig) -> int:
    notifier = Notifier()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(run_rendezvous, cfg, SystemHost(), notifier=notifier))
            async for signum in signals:
                log.info("stopping", signal=signal.Signals(signum).name)
                notifier.stopping()
                nursery.cancel_scope.cancel()
                break
    log.info("rendezvous stopped")
    return EXIT_OK


def run(cfg: RendezvousConfig) -> int:
    """Run the rendezvous server in the foreground until SIGTERM/SIGINT; the exit code."""
    return trio.run(_main, cfg)

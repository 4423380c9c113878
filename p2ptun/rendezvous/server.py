"""The rendezvous server process (``p2ptun rendezvous -c FILE``).

One trio nursery holds the rendezvous' services, side by side: the embedded STUN/TURN servers
(:mod:`p2ptun.rendezvous.stun_turn`) and the signaling server
(:mod:`p2ptun.rendezvous.signaling`). Every service binds its listeners before the rendezvous
reports itself ready, so that a listen address in use ends the start with one line and exit 1.
Under systemd (``Type=notify``) READY=1 is sent once everything listens. SIGTERM and SIGINT
cancel the nursery: nodes are told the rendezvous is going away, sockets close, exit 0. SIGHUP
reads the config again for the ``[[network]] revocations`` files: a newer list is handed to
every member of that network at once (the rest of the config applies at the next start).
"""

from __future__ import annotations

import os
import signal
from functools import partial

import trio

from p2ptun import config as config_mod
from p2ptun.addr import format_address
from p2ptun.config import RendezvousConfig
from p2ptun.errors import EXIT_OK, P2ptunError, RuntimeFailure
from p2ptun.log import get_logger
from p2ptun.net.http import HttpServer
from p2ptun.net.ports import Host
from p2ptun.net.sdnotify import Notifier
from p2ptun.net.system import SystemHost
from p2ptun.rendezvous.signaling import SignalingServer, serve_signaling
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


async def bind_metrics(
    cfg: RendezvousConfig,
    host: Host,
    services: list[StunTurnService],
    signaling: list[SignalingServer],
) -> HttpServer | None:
    """The ``[metrics]`` endpoint's listener (None without the section): the collector reads
    ``services`` and the signaling server once it is in ``signaling``."""
    if cfg.metrics is None:
        return None
    # Imported here: prometheus_client costs start-up time a rendezvous without metrics saves.
    from p2ptun.net.metrics import bind_metrics as bind
    from p2ptun.rendezvous.metrics import RendezvousCollector

    collector = RendezvousCollector(lambda: signaling[0] if signaling else None, services)
    return await bind(host, cfg.metrics.listen, collector)


async def bind_web(
    cfg: RendezvousConfig,
    host: Host,
    services: list[StunTurnService],
    signaling: list[SignalingServer],
) -> HttpServer | None:
    """The ``[web]`` map page's listener (None without the section)."""
    if cfg.web is None:
        return None
    from p2ptun.rendezvous.web import MapPage
    from p2ptun.rendezvous.web import bind_web as bind

    page = MapPage(
        cfg.web.admin_token,
        lambda: signaling[0] if signaling else None,
        services,
        host.wall_clock,
    )
    return await bind(host, cfg.web.listen, page)


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
    task_status: trio.TaskStatus[SignalingServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Bind and serve every service of ``cfg`` on ``host`` until cancelled (the composition
    root of the rendezvous; the process entry adds signals). ``task_status.started`` gets the
    signaling server (for :meth:`~SignalingServer.reload_networks`)."""
    notifier = notifier if notifier is not None else Notifier()
    services = await bind_services(cfg, host)
    signaling_server: list[SignalingServer] = []
    http: list[HttpServer] = []
    try:
        metrics = await bind_metrics(cfg, host, services, signaling_server)
        if metrics is not None:
            http.append(metrics)
        web = await bind_web(cfg, host, services, signaling_server)
        if web is not None:
            http.append(web)
    except BaseException:
        for service in services:
            service.close()
        with trio.CancelScope(shield=True):
            for server in http:
                await server.listener.aclose()
        raise
    async with trio.open_nursery() as nursery:
        for server in http:
            await nursery.start(server.serve)
        try:
            signaling = await nursery.start(partial(serve_signaling, cfg, host=host))
        except (OSError, RuntimeFailure) as exc:
            for service in services:
                service.close()
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise RuntimeFailure(
                f"cannot listen for signaling on {format_address(cfg.listen)}: {reason or exc}"
            ) from None
        signaling_server.append(signaling)
        await nursery.start(serve, services)
        notifier.ready(f"signaling on {format_address(cfg.listen)}")
        task_status.started(signaling)


async def reload(cfg: RendezvousConfig, server: SignalingServer) -> None:
    """SIGHUP: the revocation list files of ``[[network]]`` again (module docstring)."""
    try:
        new = await trio.to_thread.run_sync(config_mod.load_rendezvous, cfg.path)
    except P2ptunError as exc:
        log.error("reload refused", error=str(exc))
        return
    server.reload_networks(new.networks)
    log.info("revocation lists reloaded", networks=len(new.networks))


async def _main(cfg: RendezvousConfig) -> int:
    notifier = Notifier()
    signums = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    with trio.open_signal_receiver(*signums) as signals:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                partial(run_rendezvous, cfg, SystemHost(), notifier=notifier)
            )
            async for signum in signals:
                if signum == signal.SIGHUP:
                    await reload(cfg, server)
                    continue
                log.info("stopping", signal=signal.Signals(signum).name)
                notifier.stopping()
                nursery.cancel_scope.cancel()
                break
    log.info("rendezvous stopped")
    return EXIT_OK


def run(cfg: RendezvousConfig) -> int:
    """Run the rendezvous server in the foreground until SIGTERM/SIGINT; the exit code."""
    return trio.run(_main, cfg)

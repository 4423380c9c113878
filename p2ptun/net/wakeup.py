"""A level-triggered wake-up flag for one trio task (set any number of times, wait clears it).

The signaling shells (the node's client, :mod:`p2ptun.net.signaling`, and the rendezvous'
server, :mod:`p2ptun.rendezvous.signaling`) use it to wake their writer and timer tasks without
a channel hop per message.
"""

from __future__ import annotations

import trio


class Wakeup:
    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = trio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()
        self._event = trio.Event()

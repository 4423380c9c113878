"""The one timer loop of every trio shell: sleep until the core's next wake-up, run it.

Every sans-I/O core says when it next wants to be woken (``next_wakeup() -> float | None``,
trio's clock) and what to do then (``handle_timeout(now)``); its shell runs one
:class:`CoreTimer` for it. Input that changes the core's deadline moves the sleeping task's
deadline instead of waking it: :meth:`CoreTimer.rearm` follows the core's deadline wherever it
went (earlier or later), :meth:`CoreTimer.pull_earlier` only brings it closer (the cheap form
for the data path, which calls it per flushed peer). An idle core therefore costs no wake-ups
at all between its deadlines.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import trio


class CoreTimer:
    """Runs ``on_timeout(now)`` whenever ``next_wakeup()`` is due (module docstring)."""

    __slots__ = ("_next_wakeup", "_on_timeout", "_scope", "runs")

    def __init__(
        self, next_wakeup: Callable[[], float | None], on_timeout: Callable[[float], None]
    ) -> None:
        self._next_wakeup = next_wakeup
        self._on_timeout = on_timeout
        self._scope: trio.CancelScope | None = None
        self.runs = 0
        """Times the timer woke and ran the timeouts (tests and the debug view count them)."""

    def _deadline(self) -> float:
        wake = self._next_wakeup()
        return math.inf if wake is None else wake

    async def run(self) -> None:
        """Sleep until the next wake-up, run the timeouts, again, until cancelled."""
        while True:
            with trio.move_on_at(self._deadline()) as scope:
                self._scope = scope
                await trio.sleep_forever()
            self._scope = None
            self.runs += 1
            self._on_timeout(trio.current_time())

    @property
    def deadline(self) -> float | None:
        """When the sleeping task wakes next (None: it is not sleeping)."""
        scope = self._scope
        return None if scope is None else scope.deadline

    def rearm(self) -> None:
        """The core's deadline may have moved: sleep until the new one."""
        scope = self._scope
        if scope is not None:
            deadline = self._deadline()
            if deadline != scope.deadline:
                scope.deadline = deadline

    def pull_earlier(self, when: float) -> None:
        """Something is due at ``when``: wake no later than that."""
        scope = self._scope
        if scope is not None and when < scope.deadline:
            scope.deadline = when


__all__ = ["CoreTimer"]

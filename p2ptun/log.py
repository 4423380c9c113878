"""Logging with key=value fields.

Lines look like ``2026-11-21T10:40:00.123Z info ice pair succeeded peer=bob pair=host->srflx``:
easy to read, easy to grep, easy for journald. Use :func:`get_logger` and pass fields as keyword
arguments; values are quoted when they contain spaces. Never log key material or sealed payloads.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

_ROOT = "p2ptun"


def _format_value(value: object) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\n\t'):
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class KeyValueFormatter(logging.Formatter):
    """``time level component message k=v ...`` on one line."""

    def __init__(self, with_time: bool = True) -> None:
        super().__init__()
        self.with_time = with_time

    def format(self, record: logging.LogRecord) -> str:
        component = record.name.removeprefix(_ROOT + ".") if record.name != _ROOT else "main"
        parts = []
        if self.with_time:
            t = time.gmtime(record.created)
            parts.append(time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z")
        parts.append(record.levelname.lower())
        parts.append(component)
        parts.append(record.getMessage())
        fields: dict[str, Any] = getattr(record, "fields", {})
        parts.extend(f"{k}={_format_value(v)}" for k, v in fields.items())
        line = " ".join(parts)
        if record.exc_info and record.levelno >= logging.ERROR:
            line += " exc=" + _format_value(repr(record.exc_info[1]))
        return line


class Logger:
    """A thin wrapper over :class:`logging.Logger` that takes fields as keyword arguments."""

    __slots__ = ("_logger",)

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def isEnabledFor(self, level: int) -> bool:
        return self._logger.isEnabledFor(level)

    def _log(self, level: int, message: str, fields: dict[str, Any]) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, message, extra={"fields": fields}, stacklevel=3)

    def debug(self, message: str, **fields: Any) -> None:
        self._log(logging.DEBUG, message, fields)

    def info(self, message: str, **fields: Any) -> None:
        self._log(logging.INFO, message, fields)

    def warning(self, message: str, **fields: Any) -> None:
        self._log(logging.WARNING, message, fields)

    def error(self, message: str, **fields: Any) -> None:
        self._log(logging.ERROR, message, fields)


class LogLimiter:
    """Rate limit for one kind of log line that strangers can provoke at will (a refused
    connection, a refused message): at most ``burst`` lines at once, then one per
    ``interval`` seconds. :meth:`allow` says whether to write the line and how many were
    suppressed since the last one written (log that number with it). ``now`` is passed in,
    so the sans-I/O cores use it with their own clock."""

    __slots__ = ("_at", "_suppressed", "_tokens", "burst", "interval")

    def __init__(self, interval: float = 10.0, burst: int = 5) -> None:
        self.interval = interval
        self.burst = burst
        self._tokens = float(burst)
        self._at: float | None = None
        self._suppressed = 0

    def allow(self, now: float) -> int | None:
        """None: drop this line (it is counted). Else the number of lines suppressed since
        the last one let through (0 mostly): write the line, with that number if not 0."""
        if self._at is not None and now > self._at:
            self._tokens = min(float(self.burst), self._tokens + (now - self._at) / self.interval)
        if self._at is None or now > self._at:
            self._at = now
        if self._tokens < 1.0:
            self._suppressed += 1
            return None
        self._tokens -= 1.0
        suppressed, self._suppressed = self._suppressed, 0
        return suppressed


def get_logger(component: str) -> Logger:
    """Logger for one component, e.g. ``get_logger("turn.server")``."""
    return Logger(logging.getLogger(f"{_ROOT}.{component}"))


def setup(level: str = "info", stream: Any = None, with_time: bool | None = None) -> None:
    """Send p2ptun's logs to ``stream`` (stderr by default) at ``level``.

    Under systemd (JOURNAL_STREAM set) timestamps are left to the journal.
    """
    import os

    if with_time is None:
        with_time = "JOURNAL_STREAM" not in os.environ
    root = logging.getLogger(_ROOT)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(KeyValueFormatter(with_time=with_time))
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
    root.propagate = False

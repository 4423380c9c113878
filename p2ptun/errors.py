"""The project's error types and the exit-code policy.

Two families, as h11 splits them:

- **User-facing errors** (:class:`P2ptunError` and its subclasses) carry an exit code.
  Exit codes (docs/ARCHITECTURE.md §3): 0 success; 2 bad usage or bad configuration, reported as one
  line on stderr; 1 a runtime failure, reported with a clear message. A user mistake never shows
  a Python traceback.
- **Protocol errors** (:class:`ProtocolError`) are raised by the sans-I/O cores and carry no
  exit code: :class:`RemoteProtocolError` when the other side sent something malformed or
  unauthentic (the I/O layer drops it and counts it), :class:`LocalProtocolError` when our own
  code used a core in a way its state does not allow (a bug in the caller).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class P2ptunError(Exception):
    """Base of every error this project raises on purpose."""

    exit_code = EXIT_FAILURE


class UsageError(P2ptunError):
    """A bad command-line argument or bad data on stdin: exit 2."""

    exit_code = EXIT_USAGE


class ConfigError(P2ptunError):
    """A configuration file that cannot be used: exit 2.

    The message names the file, the key path, what is wrong and what would be valid, on one line.
    """

    exit_code = EXIT_USAGE

    def __init__(self, file: str, key: str | None, problem: str, hint: str | None = None) -> None:
        self.file = file
        self.key = key
        self.problem = problem
        self.hint = hint
        super().__init__(self._format())

    def _format(self) -> str:
        where = f"{self.file}: {self.key}" if self.key else self.file
        text = f"{where}: {self.problem}"
        if self.hint:
            text += f" ({self.hint})"
        return text.replace("\n", " ")


class RuntimeFailure(P2ptunError):
    """Something failed while running (network, permissions, peers): exit 1."""

    exit_code = EXIT_FAILURE


class ProtocolError(Exception):
    """Base of the errors a protocol core raises; no exit code (see the module docstring)."""


class RemoteProtocolError(ProtocolError):
    """The other side sent something malformed or unauthentic: a datagram or frame that does
    not parse, a handshake or seal that does not authenticate, a replay. The I/O layer drops it
    (on a stream, with the connection) and counts it; it never ends the program."""


class LocalProtocolError(ProtocolError):
    """Our own code used a core wrongly: a call the core's state does not allow. Not something
    the network can cause; where it can happen in a race (an answer to an offer that was just
    replaced) the caller catches it and moves on."""


class DecodeError(RemoteProtocolError, ValueError):
    """Bytes from the network that do not parse. Callers drop the datagram and count it.

    Every wire decoder raises only a subclass of this, never IndexError, struct.error or the like.
    """

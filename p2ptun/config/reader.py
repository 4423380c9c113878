"""A strict reader for configuration files: one TOML file, its tables, keys and key files.

Loading is strict: every problem raises :class:`~p2ptun.errors.ConfigError`, whose one-line
message names the file, the key path, what is wrong and what would be valid. Things that work
but deserve attention (a key file other users can read) are collected as warnings on the
:class:`ConfigFile`, never silently ignored.

:class:`Table` reads typed keys out of one table (a dict, as TOML or JSON decode it) and reports
the keys nobody asked for as unknown, with a did-you-mean; it is the one reader behind every
config of the project (the node and rendezvous loaders, and the development tools).
"""

from __future__ import annotations

import difflib
import os
import stat
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from p2ptun.config.examples import (
    KEY_HINT,
    SECRET_HINT,
    example_key_problem,
    placeholder_problem,
)
from p2ptun.errors import ConfigError
from p2ptun.keys import decode_key

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

T = TypeVar("T")

MAX_FILE_SIZE = 1 << 20
"""A config file is small; anything larger is refused before it is parsed."""

_TOML_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    bool: "true or false",
    float: "a number",
    list: "an array",
    dict: "a table",
}


def type_name(value: object) -> str:
    """How an error message names the type of ``value`` (TOML's words)."""
    if isinstance(value, bool):
        return "a boolean"
    for typ, name in _TOML_TYPE_NAMES.items():
        if isinstance(value, typ):
            return name
    return type(value).__name__


class ConfigFile:
    """One configuration file being loaded: its path (for messages), its decoded top-level
    table, and the warnings collected while reading it."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.warnings: list[str] = []

    def read_toml(self) -> dict[str, Any]:
        """Read and decode the file; any problem is one ConfigError naming the file."""
        try:
            with open(self.file, "rb") as f:
                raw = f.read(MAX_FILE_SIZE + 1)
        except FileNotFoundError:
            raise ConfigError(self.file, None, "no such file") from None
        except IsADirectoryError:
            raise ConfigError(self.file, None, "is a directory, expected a TOML file") from None
        except PermissionError:
            raise ConfigError(self.file, None, "permission denied") from None
        except OSError as exc:
            raise ConfigError(self.file, None, f"cannot read: {exc.strerror}") from None
        if len(raw) > MAX_FILE_SIZE:
            raise ConfigError(self.file, None, "larger than 1 MiB; is this a config file?")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(self.file, None, f"not UTF-8 text (byte {exc.start})") from None
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(self.file, None, f"TOML syntax error: {exc}") from None

    def top(self, data: dict[str, Any]) -> Table:
        """The reader of the file's top-level table."""
        return Table(self, data, "")


class Table:
    """Reads keys out of one table, remembering which were used so that the rest can be
    reported as unknown, with a did-you-mean."""

    def __init__(self, source: ConfigFile, data: dict[str, Any], path: str) -> None:
        self.source = source
        self.data = data
        self.path = path
        self.known: list[str] = []

    def key(self, name: str) -> str:
        """The full key path of ``name`` in this table, as messages show it."""
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str | None, problem: str, hint: str | None = None) -> ConfigError:
        return ConfigError(self.source.file, self.key(name) if name else self.path, problem, hint)

    def has(self, name: str) -> bool:
        return name in self.data

    def _get(self, name: str, typ: type[T], required: bool, default: T | None) -> T | None:
        self.known.append(name)
        if name not in self.data:
            if required:
                raise self.error(name, "missing", f"expected {_TOML_TYPE_NAMES[typ]}")
            return default
        value = self.data[name]
        ok = isinstance(value, typ) and not (typ is int and isinstance(value, bool))
        if not ok:
            raise self.error(name, f"expected {_TOML_TYPE_NAMES[typ]}, got {type_name(value)}")
        return value  # type: ignore[no-any-return]

    def string(self, name: str, default: str | None = None, *, required: bool = False) -> Any:
        return self._get(name, str, required, default)

    def integer(self, name: str, default: int | None = None, *, required: bool = False) -> Any:
        return self._get(name, int, required, default)

    def number(self, name: str, default: float | None = None, *, required: bool = False) -> Any:
        """An integer or a float (TOML keeps them apart; a number of seconds may be either)."""
        self.known.append(name)
        if name not in self.data:
            if required:
                raise self.error(name, "missing", "expected a number")
            return default
        value = self.data[name]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(name, f"expected a number, got {type_name(value)}")
        return value

    def boolean(self, name: str, default: bool = False) -> bool:
        value = self._get(name, bool, False, default)
        assert value is not None
        return value

    def array(self, name: str, *, required: bool = False) -> list[Any]:
        value = self._get(name, list, required, [])
        assert value is not None
        return value

    def strings(self, name: str, *, required: bool = False) -> list[tuple[str, str]]:
        """An array of strings, each with its key path for error messages."""
        items = []
        for i, item in enumerate(self.array(name, required=required)):
            key = f"{name}[{i}]"
            if not isinstance(item, str):
                raise self.error(key, f"expected a string, got {type_name(item)}")
            items.append((key, item))
        return items

    def table(self, name: str, *, required: bool = False) -> Table | None:
        self.known.append(name)
        if name not in self.data:
            if required:
                raise self.error(name, "missing table", f"add a [{self.key(name)}] section")
            return None
        value = self.data[name]
        if not isinstance(value, dict):
            raise self.error(name, f"expected a table, got {type_name(value)}")
        return Table(self.source, value, self.key(name))

    def tables(self, name: str) -> Iterator[Table]:
        """An array of tables (``[[peer]]``), each as a reader."""
        for i, item in enumerate(self.array(name)):
            if not isinstance(item, dict):
                raise self.error(f"{name}[{i}]", f"expected a table, got {type_name(item)}")
            yield Table(self.source, item, self.key(f"{name}[{i}]"))

    def expect(self, *names: str) -> None:
        """Declare this table's keys up front and report unknown ones at once, so that a
        misspelt section is named as such rather than as the section it failed to provide."""
        self.known += names
        self.check_unknown()

    def check_unknown(self) -> None:
        for name in self.data:
            if name in self.known:
                continue
            close = difflib.get_close_matches(name, self.known, n=1, cutoff=0.6)
            if close:
                hint = f"did you mean '{close[0]}'?"
            else:
                hint = "known keys here: " + ", ".join(sorted(set(self.known)))
            raise self.error(name, "unknown key", hint)

    def parse(self, name: str, raw: str, parser: Callable[[str], T], what: str) -> T:
        """Apply ``parser`` and turn its ValueError into a ConfigError naming the key."""
        try:
            return parser(raw)
        except ValueError as exc:
            raise self.error(name, f"{raw!r} is not {what}: {exc}") from None

    # -- keys ------------------------------------------------------------------------------

    def key_value(self, name: str, *, required: bool = True, private: bool = False) -> bytes | None:
        """A base64 WireGuard key (``wg genkey`` format) at ``name``; a key published in the
        example configs is refused (:mod:`p2ptun.config.examples`)."""
        raw = self.string(name, required=required)
        if raw is None:
            return None
        try:
            key = decode_key(raw)
        except ValueError as exc:
            raise self.error(
                name, str(exc), "generate one with 'p2ptun genkey' or 'wg genkey'"
            ) from None
        self._refuse_example_key(name, key, private=private)
        return key

    def _refuse_example_key(self, name: str, key: bytes, *, private: bool) -> None:
        problem = example_key_problem(key, private=private)
        if problem is not None:
            raise self.error(name, problem, KEY_HINT)

    def secret(self, name: str) -> str | None:
        """A password or shared secret at ``name``; a placeholder of the example configs
        (``change-me``...) is refused."""
        value = self.string(name)
        if value is not None:
            problem = placeholder_problem(value)
            if problem is not None:
                raise self.error(name, problem, SECRET_HINT)
        return value  # type: ignore[no-any-return]

    def private_key(self, prefix: str = "private_key") -> bytes:
        """``private_key`` inline, or ``private_key_file`` — exactly one of them. A relative
        file name is relative to the config file's directory. A key published in the example
        configs is refused; an inline key in a config file other users can read, like such a
        key file, is a warning."""
        file_key = f"{prefix}_file"
        inline = self.has(prefix)
        in_file = self.has(file_key)
        self.known += [prefix, file_key]
        if inline and in_file:
            raise self.error(prefix, f"both {prefix} and {file_key} are set", "keep only one")
        if not inline and not in_file:
            raise self.error(
                file_key, "missing", f'set {file_key} = "/etc/p2ptun/NAME.key" or {prefix}'
            )
        if inline:
            key = self.key_value(prefix, private=True)
            assert key is not None
            self._warn_if_readable(prefix, self.source.file, "the config file holding it")
            return key
        path = self.string(file_key, required=True)
        if not os.path.isabs(path):
            path = os.path.join(os.path.dirname(os.path.abspath(self.source.file)), path)
        key = self.read_key_file(file_key, path)
        self._refuse_example_key(file_key, key, private=True)
        return key

    def _warn_if_readable(self, key: str, path: str, what: str) -> None:
        """Warn when ``path`` (a key file, or the config holding an inline key) can be read
        by other users."""
        try:
            mode = os.stat(path).st_mode
        except OSError:
            return
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            self.source.warnings.append(
                f"{self.source.file}: {self.key(key)}: {path} ({what}) is accessible by "
                f"other users (mode {stat.S_IMODE(mode):04o}); run 'chmod 600 {path}'"
                + ("" if what.startswith("the key") else f" or move the key to {key}_file")
            )

    def read_key_file(self, key: str, path: str) -> bytes:
        """Read a key file named by ``key``; a file other users can read is a warning."""
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                raw = f.read(256)
        except FileNotFoundError:
            raise self.error(
                key, f"{path}: no such file", "create it with 'p2ptun genkey'"
            ) from None
        except PermissionError:
            raise self.error(
                key, f"{path}: permission denied", "run as root or fix its owner"
            ) from None
        except OSError as exc:
            raise self.error(key, f"{path}: cannot read: {exc.strerror}") from None
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            self.source.warnings.append(
                f"{self.source.file}: {self.key(key)}: {path} is accessible by other users "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); run 'chmod 600 {path}'"
            )
        try:
            return decode_key(raw.decode("ascii", errors="replace"))
        except ValueError as exc:
            raise self.error(key, f"{path}: {exc}", "generate one with 'p2ptun genkey'") from None


__all__ = ["ConfigFile", "Table", "type_name"]

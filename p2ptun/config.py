"""Node and rendezvous configuration: TOML files loaded into frozen dataclasses.

The file format is the user contract of ARCHITECTURE.md §3. Loading is strict: every problem
raises :class:`~p2ptun.errors.ConfigError`, whose one-line message names the file, the key path,
what is wrong and what would be valid. Things that work but deserve attention (a key file other
users can read) are returned as warnings, never silently ignored.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from p2ptun.addr import Address, format_address, is_hostname, parse_host_port
from p2ptun.errors import ConfigError
from p2ptun.keys import decode_key, public_key

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_STUN_PORT = 3478
DEFAULT_TURNS_PORT = 5349
DEFAULT_RENDEZVOUS_PORT = 7070
IFNAMSIZ = 16  # Linux: 15 characters and the terminating NUL
NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,62})$")
NAME_RULE = (
    "1-63 characters: lower-case letters, digits, '.', '_', '-', starting with a letter or digit"
)
IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


# --------------------------------------------------------------------------------------------
# The dataclasses


@dataclass(frozen=True)
class InterfaceConfig:
    name: str
    addresses: tuple[IPInterface, ...]
    mtu: int | None = None  # None: computed from the worst path overhead


@dataclass(frozen=True)
class RendezvousRef:
    """Where a node finds the rendezvous server, and the key it must present."""

    host: str
    port: int
    public_key: bytes

    @property
    def address(self) -> Address:
        return (self.host, self.port)


TurnTransport = Literal["udp", "tcp", "tls"]


@dataclass(frozen=True)
class TurnServerConfig:
    """One TURN server a node may allocate relays on (RFC 7065 URI)."""

    url: str
    host: str
    port: int
    transport: TurnTransport
    username: str | None = None  # None: use credentials issued by the rendezvous
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None


@dataclass(frozen=True)
class IceConfig:
    stun: tuple[Address, ...] = ()
    turn: tuple[TurnServerConfig, ...] = ()
    lite: bool = False
    port: int = 0
    ipv6_link_local: bool = False


@dataclass(frozen=True)
class PeerConfig:
    name: str
    public_key: bytes
    allowed_ips: tuple[IPNetwork, ...]
    preshared_key: bytes | None = field(default=None, repr=False)
    persistent_keepalive: int | None = None


@dataclass(frozen=True)
class NodeConfig:
    path: str
    name: str
    private_key: bytes = field(repr=False)
    interface: InterfaceConfig
    rendezvous: RendezvousRef
    ice: IceConfig
    peers: tuple[PeerConfig, ...]
    warnings: tuple[str, ...] = ()

    @property
    def public_key(self) -> bytes:
        return public_key(self.private_key)

    @property
    def control_socket(self) -> str:
        return control_socket_path(self.interface.name)


@dataclass(frozen=True)
class StunServerSettings:
    listen: tuple[Address, ...]


@dataclass(frozen=True)
class TurnServerSettings:
    realm: str
    relay_address: str
    relay_ports: tuple[int, int]
    users: dict[str, str] = field(default_factory=dict, repr=False, hash=False)
    auth_secret: str | None = field(default=None, repr=False)
    tls_listen: tuple[Address, ...] = ()
    tls_cert: str | None = None
    tls_key: str | None = None
    allow_peers: tuple[IPNetwork, ...] = ()
    user_quota: int = 10
    max_lifetime: int = 3600
    credential_lifetime: int = 86400


@dataclass(frozen=True)
class NodeEntry:
    name: str
    public_key: bytes


@dataclass(frozen=True)
class RendezvousConfig:
    path: str
    listen: Address
    private_key: bytes = field(repr=False)
    database: str
    open_registration: bool
    stun: StunServerSettings | None
    turn: TurnServerSettings | None
    nodes: tuple[NodeEntry, ...]
    warnings: tuple[str, ...] = ()

    @property
    def public_key(self) -> bytes:
        return public_key(self.private_key)


Config = NodeConfig | RendezvousConfig


def control_socket_path(interface: str, run_dir: str | None = None) -> str:
    """The node's control socket (ARCHITECTURE.md §3): ``/run/p2ptun/<interface>.sock``."""
    base = run_dir or os.environ.get("P2PTUN_RUN_DIR", "/run/p2ptun")
    return os.path.join(base, f"{interface}.sock")


# --------------------------------------------------------------------------------------------
# A strict reader over one TOML table

T = TypeVar("T")

_TOML_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    bool: "true or false",
    float: "a number",
    list: "an array",
    dict: "a table",
}


def _type_name(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    for typ, name in _TOML_TYPE_NAMES.items():
        if isinstance(value, typ):
            return name
    return type(value).__name__


class _Table:
    """Reads keys out of one TOML table, remembering which were used so that the rest can be
    reported as unknown, with a did-you-mean."""

    def __init__(self, loader: _Loader, data: dict[str, Any], path: str) -> None:
        self.loader = loader
        self.data = data
        self.path = path
        self.known: list[str] = []

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str | None, problem: str, hint: str | None = None) -> ConfigError:
        return ConfigError(self.loader.file, self.key(name) if name else self.path, problem, hint)

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
            raise self.error(
                name, f"expected {_TOML_TYPE_NAMES[typ]}, got {_type_name(value)}", None
            )
        return value  # type: ignore[no-any-return]

    def string(self, name: str, default: str | None = None, *, required: bool = False) -> Any:
        return self._get(name, str, required, default)

    def integer(self, name: str, default: int | None = None, *, required: bool = False) -> Any:
        return self._get(name, int, required, default)

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
                raise self.error(key, f"expected a string, got {_type_name(item)}")
            items.append((key, item))
        return items

    def table(self, name: str, *, required: bool = False) -> _Table | None:
        self.known.append(name)
        if name not in self.data:
            if required:
                raise self.error(name, "missing table", f"add a [{self.key(name)}] section")
            return None
        value = self.data[name]
        if not isinstance(value, dict):
            raise self.error(name, f"expected a table, got {_type_name(value)}")
        return _Table(self.loader, value, self.key(name))

    def tables(self, name: str) -> Iterator[_Table]:
        """An array of tables (``[[peer]]``), each as a reader."""
        for i, item in enumerate(self.array(name)):
            if not isinstance(item, dict):
                raise self.error(f"{name}[{i}]", f"expected a table, got {_type_name(item)}")
            yield _Table(self.loader, item, self.key(f"{name}[{i}]"))

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


# --------------------------------------------------------------------------------------------
# Value parsers (each raises ValueError with a short reason)


def parse_interface_address(text: str) -> IPInterface:
    if "/" not in text:
        raise ValueError("a prefix length is required, e.g. 10.77.0.1/24")
    try:
        return ipaddress.ip_interface(text)
    except ValueError as exc:
        raise ValueError(str(exc).rstrip(".")) from None


def parse_network(text: str) -> IPNetwork:
    if "/" not in text:
        raise ValueError("a prefix length is required, e.g. 10.77.0.2/32")
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(str(exc).rstrip(".")) from None
        raise ValueError(f"host bits are set; did you mean {loose}?") from None


def parse_turn_url(text: str) -> tuple[str, int, TurnTransport]:
    """``turn:host[:port][?transport=udp|tcp]`` or ``turns:host[:port][?transport=tcp]``
    (RFC 7065). Returns host, port and our transport name (``tls`` for ``turns:``)."""
    scheme, sep, rest = text.partition(":")
    if not sep or scheme not in ("turn", "turns"):
        raise ValueError("the scheme must be 'turn:' or 'turns:'")
    if rest.startswith("//"):
        raise ValueError("write turn:host:port, without '//'")
    hostport, _, query = rest.partition("?")
    transport = "udp" if scheme == "turn" else "tcp"
    if query:
        name, eq, value = query.partition("=")
        if name != "transport" or not eq:
            raise ValueError("the only query parameter is ?transport=udp|tcp")
        if value not in ("udp", "tcp"):
            raise ValueError(f"transport {value!r} is unknown; use udp or tcp")
        transport = value
    if scheme == "turns" and transport == "udp":
        raise ValueError("turns: runs over TLS, so its transport is tcp (DTLS is not supported)")
    host, port = parse_host_port(hostport, DEFAULT_TURNS_PORT if scheme == "turns" else 3478)
    return host, port, ("tls" if scheme == "turns" else transport)  # type: ignore[return-value]


def parse_stun_server(text: str) -> Address:
    """``host[:port]`` or ``stun:host[:port]`` (RFC 7064)."""
    if text.startswith("stuns:"):
        raise ValueError("stuns: is not supported; use stun:host:port")
    if text.startswith("stun:"):
        text = text[5:]
    return parse_host_port(text, DEFAULT_STUN_PORT)


def parse_port_range(text: str) -> tuple[int, int]:
    lo_text, sep, hi_text = text.partition("-")
    if not sep or not lo_text.isdigit() or not hi_text.isdigit():
        raise ValueError("expected LOW-HIGH, e.g. 49152-65535")
    lo, hi = int(lo_text), int(hi_text)
    if not 1024 <= lo <= hi <= 65535:
        raise ValueError("expected 1024 <= LOW <= HIGH <= 65535")
    return lo, hi


def _check_name(table: _Table, key: str, value: str) -> str:
    if not NAME_RE.match(value):
        raise table.error(key, f"{value!r} is not a valid name", NAME_RULE)
    return value


# --------------------------------------------------------------------------------------------
# The loader


class _Loader:
    def __init__(self, file: str) -> None:
        self.file = file
        self.warnings: list[str] = []

    def read_toml(self) -> dict[str, Any]:
        try:
            with open(self.file, "rb") as f:
                raw = f.read((1 << 20) + 1)
        except FileNotFoundError:
            raise ConfigError(self.file, None, "no such file") from None
        except IsADirectoryError:
            raise ConfigError(self.file, None, "is a directory, expected a TOML file") from None
        except PermissionError:
            raise ConfigError(self.file, None, "permission denied") from None
        except OSError as exc:
            raise ConfigError(self.file, None, f"cannot read: {exc.strerror}") from None
        if len(raw) > 1 << 20:
            raise ConfigError(self.file, None, "larger than 1 MiB; is this a config file?")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(self.file, None, f"not UTF-8 text (byte {exc.start})") from None
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(self.file, None, f"TOML syntax error: {exc}") from None

    # -- keys --------------------------------------------------------------------------------

    def key_value(self, table: _Table, name: str, *, required: bool = True) -> bytes | None:
        raw = table.string(name, required=required)
        if raw is None:
            return None
        try:
            return decode_key(raw)
        except ValueError as exc:
            raise table.error(
                name, str(exc), "generate one with 'p2ptun genkey' or 'wg genkey'"
            ) from None

    def private_key(self, table: _Table, prefix: str = "private_key") -> bytes:
        """``private_key`` inline, or ``private_key_file`` — exactly one of them."""
        file_key = f"{prefix}_file"
        inline = table.has(prefix)
        in_file = table.has(file_key)
        table.known += [prefix, file_key]
        if inline and in_file:
            raise table.error(prefix, f"both {prefix} and {file_key} are set", "keep only one")
        if not inline and not in_file:
            raise table.error(
                file_key, "missing", f'set {file_key} = "/etc/p2ptun/NAME.key" or {prefix}'
            )
        if inline:
            key = self.key_value(table, prefix)
            assert key is not None
            return key
        path = table.string(file_key, required=True)
        if not os.path.isabs(path):
            path = os.path.join(os.path.dirname(os.path.abspath(self.file)), path)
        return self.read_key_file(table, file_key, path)

    def read_key_file(self, table: _Table, key: str, path: str) -> bytes:
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                raw = f.read(256)
        except FileNotFoundError:
            raise table.error(
                key, f"{path}: no such file", "create it with 'p2ptun genkey'"
            ) from None
        except PermissionError:
            raise table.error(
                key, f"{path}: permission denied", "run as root or fix its owner"
            ) from None
        except OSError as exc:
            raise table.error(key, f"{path}: cannot read: {exc.strerror}") from None
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            self.warnings.append(
                f"{self.file}: {table.key(key)}: {path} is accessible by other users "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); run 'chmod 600 {path}'"
            )
        try:
            return decode_key(raw.decode("ascii", errors="replace"))
        except ValueError as exc:
            raise table.error(key, f"{path}: {exc}", "generate one with 'p2ptun genkey'") from None

    # -- node --------------------------------------------------------------------------------

    def node(self, data: dict[str, Any]) -> NodeConfig:
        top = _Table(self, data, "")
        top.expect(
            "name", "private_key", "private_key_file", "interface", "rendezvous", "ice", "peer"
        )
        name = _check_name(top, "name", top.string("name", required=True))
        private = self.private_key(top)
        own_public = public_key(private)

        iface_t = top.table("interface", required=True)
        assert iface_t is not None
        interface = self.interface(iface_t)

        rv_t = top.table("rendezvous", required=True)
        assert rv_t is not None
        rv_addr_raw = rv_t.string("address", required=True)
        rv_host, rv_port = rv_t.parse(
            "address",
            rv_addr_raw,
            lambda s: parse_host_port(s, DEFAULT_RENDEZVOUS_PORT),
            "a host:port",
        )
        rv_key = self.key_value(rv_t, "public_key")
        assert rv_key is not None
        rv_t.check_unknown()

        ice_t = top.table("ice")
        ice = self.ice(ice_t) if ice_t is not None else IceConfig()

        peers = self.peers(top, own_public, name)
        top.check_unknown()
        return NodeConfig(
            path=self.file,
            name=name,
            private_key=private,
            interface=interface,
            rendezvous=RendezvousRef(rv_host, rv_port, rv_key),
            ice=ice,
            peers=peers,
            warnings=tuple(self.warnings),
        )

    def interface(self, t: _Table) -> InterfaceConfig:
        ifname = t.string("name", required=True)
        if len(ifname) >= IFNAMSIZ:
            raise t.error(
                "name", f"{ifname!r} is {len(ifname)} characters", "Linux allows at most 15"
            )
        if not IFNAME_RE.match(ifname) or ifname in (".", ".."):
            raise t.error(
                "name",
                f"{ifname!r} is not a valid interface name",
                "use letters, digits, '_', '-', '.'",
            )
        addresses = []
        for key, raw in t.strings("address", required=True):
            addresses.append(t.parse(key, raw, parse_interface_address, "an address/prefix"))
        if not addresses:
            raise t.error("address", "empty", 'give at least one, e.g. ["10.77.0.1/24"]')
        if len(set(addresses)) != len(addresses):
            raise t.error("address", "lists the same address twice")
        mtu = t.integer("mtu")
        if mtu is not None:
            has_v6 = any(a.version == 6 for a in addresses)
            low = 1280 if has_v6 else 576
            if not low <= mtu <= 65535:
                raise t.error("mtu", f"{mtu} is out of range", f"expected {low}-65535")
        t.check_unknown()
        return InterfaceConfig(ifname, tuple(addresses), mtu)

    def ice(self, t: _Table) -> IceConfig:
        stun = tuple(
            t.parse(key, raw, parse_stun_server, "a STUN server host[:port]")
            for key, raw in t.strings("stun")
        )
        turn = []
        for i, item in enumerate(t.array("turn")):
            key = f"turn[{i}]"
            if not isinstance(item, dict):
                raise t.error(
                    key,
                    f"expected a table, got {_type_name(item)}",
                    '{ url = "turn:host:3478", username = "u", password = "p" }',
                )
            turn.append(self.turn_server(_Table(self, item, t.key(key))))
        lite = t.boolean("lite")
        port = t.integer("port", 0)
        if not 0 <= port <= 65535:
            raise t.error("port", f"{port} is out of range", "expected 0 (any) or 1-65535")
        link_local = t.boolean("ipv6_link_local")
        t.check_unknown()
        return IceConfig(stun, tuple(turn), lite, port, link_local)

    def turn_server(self, t: _Table) -> TurnServerConfig:
        url = t.string("url", required=True)
        host, port, transport = t.parse("url", url, parse_turn_url, "a TURN URL")
        username = t.string("username")
        password = t.string("password")
        if (username is None) != (password is None):
            missing = "password" if password is None else "username"
            raise t.error(
                missing,
                "missing",
                "give both username and password, or neither to use "
                "credentials issued by the rendezvous",
            )
        ca_file = t.string("ca_file")
        if ca_file is not None and transport != "tls":
            raise t.error("ca_file", "only applies to turns: URLs")
        t.check_unknown()
        return TurnServerConfig(url, host, port, transport, username, password, ca_file)

    def peers(self, top: _Table, own_public: bytes, own_name: str) -> tuple[PeerConfig, ...]:
        peers: list[PeerConfig] = []
        names: dict[str, str] = {}
        keys: dict[bytes, str] = {}
        routes: list[tuple[IPNetwork, str, str]] = []
        for t in top.tables("peer"):
            name = _check_name(t, "name", t.string("name", required=True))
            if name == own_name:
                raise t.error("name", f"{name!r} is this node's own name")
            if name in names:
                raise t.error(
                    "name", f"duplicate peer name {name!r}", f"first used at {names[name]}"
                )
            names[name] = t.path
            key = self.key_value(t, "public_key")
            assert key is not None
            if key == own_public:
                raise t.error(
                    "public_key",
                    "is this node's own public key",
                    "use the peer's key: 'p2ptun pubkey < peer.key'",
                )
            if key in keys:
                raise t.error("public_key", "duplicate peer key", f"already used by {keys[key]}")
            keys[key] = t.path
            nets = []
            for key_name, raw in t.strings("allowed_ips", required=True):
                net = t.parse(key_name, raw, parse_network, "a network/prefix")
                for other, other_key, other_peer in routes:
                    if net.version == other.version and net.overlaps(other):  # type: ignore[arg-type,unused-ignore]
                        raise t.error(
                            key_name,
                            f"{net} overlaps {other} of peer {other_peer!r} ({other_key})",
                            "each address must route to one peer",
                        )
                nets.append(net)
            for net in nets:
                routes.append((net, t.key("allowed_ips"), name))
            psk = None
            if t.has("preshared_key") or t.has("preshared_key_file"):
                psk = self.private_key(t, "preshared_key")
            else:
                t.known += ["preshared_key", "preshared_key_file"]
            keepalive = t.integer("persistent_keepalive")
            if keepalive is not None and not 0 <= keepalive <= 65535:
                raise t.error(
                    "persistent_keepalive",
                    f"{keepalive} is out of range",
                    "seconds, 0 (off) to 65535",
                )
            t.check_unknown()
            peers.append(PeerConfig(name, key, tuple(nets), psk, keepalive or None))
        return tuple(peers)

    # -- rendezvous --------------------------------------------------------------------------

    def rendezvous(self, data: dict[str, Any]) -> RendezvousConfig:
        top = _Table(self, data, "")
        top.expect(
            "listen",
            "private_key",
            "private_key_file",
            "database",
            "open_registration",
            "stun",
            "turn",
            "node",
        )
        listen = top.parse(
            "listen",
            top.string("listen", f"0.0.0.0:{DEFAULT_RENDEZVOUS_PORT}"),
            lambda s: _parse_listen(s, DEFAULT_RENDEZVOUS_PORT),
            "a listen address ip:port",
        )
        private = self.private_key(top)
        database = top.string("database", "/var/lib/p2ptun/rendezvous.sqlite")
        if not database:
            raise top.error("database", "empty", "a path such as /var/lib/p2ptun/rendezvous.sqlite")
        open_reg = top.boolean("open_registration")

        stun = None
        stun_t = top.table("stun")
        if stun_t is not None:
            listens = tuple(
                stun_t.parse(k, raw, lambda s: _parse_listen(s, DEFAULT_STUN_PORT), "an ip:port")
                for k, raw in stun_t.strings("listen", required=True)
            )
            stun_t.check_unknown()
            stun = StunServerSettings(listens)

        turn = None
        turn_t = top.table("turn")
        if turn_t is not None:
            if stun is None or not stun.listen:
                raise turn_t.error(
                    None,
                    "TURN is served on the [stun] listeners",
                    'add [stun] listen = ["0.0.0.0:3478"]',
                )
            turn = self.turn_settings(turn_t)

        nodes: list[NodeEntry] = []
        seen_names: dict[str, str] = {}
        seen_keys: dict[bytes, str] = {}
        for t in top.tables("node"):
            name = _check_name(t, "name", t.string("name", required=True))
            if name in seen_names:
                raise t.error(
                    "name", f"duplicate node name {name!r}", f"first used at {seen_names[name]}"
                )
            seen_names[name] = t.path
            key = self.key_value(t, "public_key")
            assert key is not None
            if key in seen_keys:
                raise t.error(
                    "public_key", "duplicate node key", f"already used by {seen_keys[key]}"
                )
            seen_keys[key] = t.path
            t.check_unknown()
            nodes.append(NodeEntry(name, key))
        if not nodes and not open_reg:
            self.warnings.append(
                f"{self.file}: no [[node]] entries and open_registration = false: "
                "no node can register"
            )
        top.check_unknown()
        return RendezvousConfig(
            path=self.file,
            listen=listen,
            private_key=private,
            database=database,
            open_registration=open_reg,
            stun=stun,
            turn=turn,
            nodes=tuple(nodes),
            warnings=tuple(self.warnings),
        )

    def turn_settings(self, t: _Table) -> TurnServerSettings:
        realm = t.string("realm", "p2ptun")
        if not realm or len(realm) > 127:
            raise t.error("realm", "must be 1-127 characters")
        relay_raw = t.string("relay_address", required=True)
        relay = t.parse("relay_address", relay_raw, _parse_ip_literal, "an IP address")
        ports = t.parse(
            "relay_ports", t.string("relay_ports", "49152-65535"), parse_port_range, "a port range"
        )
        users_t = t.table("users")
        users: dict[str, str] = {}
        if users_t is not None:
            for user, password in users_t.data.items():
                users_t.known.append(user)
                if not isinstance(password, str) or not password:
                    raise users_t.error(user, "expected a non-empty password string")
                if ":" in user or not user:
                    raise users_t.error(user, "user names cannot contain ':'")
                users[user] = password
        secret = t.string("auth_secret")
        if secret is not None and len(secret) < 16:
            raise t.error("auth_secret", "too short", "use at least 16 random characters")
        if not users and secret is None:
            raise t.error(
                None,
                "no credentials: TURN would refuse everyone",
                'set users = { name = "password" } and/or auth_secret',
            )
        tls_listen = tuple(
            t.parse(k, raw, lambda s: _parse_listen(s, DEFAULT_TURNS_PORT), "an ip:port")
            for k, raw in t.strings("tls_listen")
        )
        tls_cert = t.string("tls_cert")
        tls_key = t.string("tls_key")
        if tls_listen and (tls_cert is None or tls_key is None):
            raise t.error("tls_listen", "needs tls_cert and tls_key")
        for key, value in (("tls_cert", tls_cert), ("tls_key", tls_key)):
            if value is not None and not os.access(value, os.R_OK):
                raise t.error(key, f"{value}: cannot be read")
        allow = tuple(
            t.parse(k, raw, parse_network, "a network/prefix")
            for k, raw in t.strings("allow_peers")
        )
        quota = t.integer("user_quota", 10)
        if not 1 <= quota <= 10000:
            raise t.error("user_quota", f"{quota} is out of range", "expected 1-10000")
        max_lifetime = t.integer("max_lifetime", 3600)
        if not 600 <= max_lifetime <= 86400:
            raise t.error("max_lifetime", f"{max_lifetime} is out of range", "seconds, 600-86400")
        cred_lifetime = t.integer("credential_lifetime", 86400)
        if not 60 <= cred_lifetime <= 30 * 86400:
            raise t.error(
                "credential_lifetime", f"{cred_lifetime} is out of range", "seconds, 60-2592000"
            )
        t.check_unknown()
        return TurnServerSettings(
            realm=realm,
            relay_address=relay,
            relay_ports=ports,
            users=users,
            auth_secret=secret,
            tls_listen=tls_listen,
            tls_cert=tls_cert,
            tls_key=tls_key,
            allow_peers=allow,
            user_quota=quota,
            max_lifetime=max_lifetime,
            credential_lifetime=cred_lifetime,
        )


def _parse_ip_literal(text: str) -> str:
    return str(ipaddress.ip_address(text))


def _parse_listen(text: str, default_port: int) -> Address:
    host, port = parse_host_port(text, default_port)
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        raise ValueError("listen addresses must be IP literals such as 0.0.0.0 or [::]") from None
    return host, port


# --------------------------------------------------------------------------------------------
# Public entry points

_NODE_KEYS = {"name", "interface", "peer", "ice", "rendezvous"}
_RENDEZVOUS_KEYS = {"listen", "database", "open_registration", "stun", "turn", "node"}


def detect_kind(data: dict[str, Any]) -> Literal["node", "rendezvous"] | None:
    node = bool(_NODE_KEYS & data.keys())
    rendezvous = bool(_RENDEZVOUS_KEYS & data.keys())
    if node and not rendezvous:
        return "node"
    if rendezvous and not node:
        return "rendezvous"
    return None


def load(path: str, kind: Literal["node", "rendezvous"] | None = None) -> Config:
    """Load and validate a node or rendezvous config; ``kind=None`` tells them apart."""
    loader = _Loader(path)
    data = loader.read_toml()
    found = detect_kind(data)
    if found is None:
        if kind is None:
            raise ConfigError(
                path,
                None,
                "cannot tell whether this is a node or a rendezvous config",
                "a node config has name, [interface], [rendezvous] and [[peer]]; a rendezvous "
                "config has listen, database, [stun], [turn] and [[node]]",
            )
        found = kind
    if kind is not None and found != kind:
        raise ConfigError(path, None, f"this is a {found} config, expected a {kind} config")
    return loader.node(data) if found == "node" else loader.rendezvous(data)


def load_node(path: str) -> NodeConfig:
    cfg = load(path, "node")
    assert isinstance(cfg, NodeConfig)
    return cfg


def load_rendezvous(path: str) -> RendezvousConfig:
    cfg = load(path, "rendezvous")
    assert isinstance(cfg, RendezvousConfig)
    return cfg


def describe(cfg: Config) -> str:
    """A one-line summary for ``p2ptun check``."""
    if isinstance(cfg, NodeConfig):
        peers = ", ".join(p.name for p in cfg.peers) or "none"
        return (
            f"{cfg.path}: valid node config: name {cfg.name}, interface {cfg.interface.name}, "
            f"rendezvous {format_address(cfg.rendezvous.address)}, peers: {peers}"
        )
    parts = [f"signaling {format_address(cfg.listen)}"]
    if cfg.stun:
        parts.append("STUN " + " ".join(format_address(a) for a in cfg.stun.listen))
    if cfg.turn:
        parts.append(f"TURN relay {cfg.turn.relay_address}")
    nodes = "open registration" if cfg.open_registration else f"{len(cfg.nodes)} nodes"
    return f"{cfg.path}: valid rendezvous config: {', '.join(parts)}, {nodes}"


__all__ = [
    "Config",
    "IceConfig",
    "InterfaceConfig",
    "NodeConfig",
    "NodeEntry",
    "PeerConfig",
    "RendezvousConfig",
    "RendezvousRef",
    "StunServerSettings",
    "TurnServerConfig",
    "TurnServerSettings",
    "control_socket_path",
    "describe",
    "detect_kind",
    "is_hostname",
    "load",
    "load_node",
    "load_rendezvous",
]

"""Configuration: YAML text -> validated, frozen config objects (docs/configuration.md).

Owns the file format: ``${VAR}`` expansion, durations, the defaults < listener < database < user
merge of pool settings, cross-checks, and errors that name the key path. Pure Python (no
asyncio), so ``--check``, SIGHUP reload and the tests all go through the same code.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any, Final

import yaml

__all__ = [
    "ADMIN_DATABASES",
    "AUTH_TYPES",
    "AdminConfig",
    "Config",
    "ConfigError",
    "DatabaseConfig",
    "ListenerConfig",
    "LoggingConfig",
    "PoolSettings",
    "SETTING_NAMES",
    "ServerAddress",
    "UserConfig",
    "config_to_dict",
    "config_warnings",
    "default_config_path",
    "expand_env",
    "format_duration",
    "load_config",
    "parse_address",
    "parse_config",
    "parse_duration",
    "parse_fraction",
    "summary",
]

DEFAULT_CONFIG_PATH: Final = "config/poolproxy.yaml"
CONFIG_PATH_ENV: Final = "POOLPROXY_CONFIG"
DEFAULT_ADMIN_LISTEN: Final = "127.0.0.1:9127"
WILDCARD_DATABASE: Final = "*"

PROTOCOLS: Final = ("postgres", "mysql")
POOL_MODES: Final = ("transaction", "session", "statement")
# The first entry of each tuple is the protocol's default.
AUTH_TYPES: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        "postgres": ("scram-sha-256", "md5", "trust"),
        "mysql": ("mysql_native_password", "caching_sha2_password"),
    }
)
DEFAULT_SERVER_PORTS: Final[Mapping[str, int]] = MappingProxyType({"postgres": 5432, "mysql": 3306})
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
LOG_FORMATS: Final = ("text", "json")
# Database names the PostgreSQL admin console answers to; a real database of that name would be
# unreachable through the listener, so configuring one is an error rather than a surprise.
ADMIN_DATABASES: Final = ("poolproxy", "pgbouncer")
# Hosts that bind every interface: they collide with any other address on the same port.
_WILDCARD_HOSTS: Final = frozenset({"0.0.0.0", "::"})


class ConfigError(Exception):
    """A configuration problem; ``str()`` is ``"<key path>: <message>"``."""

    def __init__(self, path: str, message: str) -> None:
        # Both parts go to Exception.args so the error pickles and compares sanely.
        super().__init__(path, message)
        self.path = path
        self.message = message

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


# --------------------------------------------------------------------------------------------
# Config objects
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """Pool behaviour; every field may be overridden per listener, database and user."""

    pool_mode: str = "transaction"  # transaction | session | statement
    pool_size: int = 20
    min_pool_size: int = 0
    reserve_pool_size: int = 0
    reserve_pool_timeout: float = 5.0
    max_client_conn: int = 10000
    max_db_connections: int = 0
    server_idle_timeout: float = 600.0
    server_lifetime: float = 3600.0
    server_lifetime_jitter: float = 0.1  # fraction
    server_check_delay: float = 30.0
    server_connect_timeout: float = 5.0
    server_login_retry: float = 1.0
    query_wait_timeout: float = 30.0
    client_login_timeout: float = 15.0
    client_idle_timeout: float = 0.0
    idle_transaction_timeout: float = 0.0
    shutdown_timeout: float = 30.0


SETTING_NAMES: Final[tuple[str, ...]] = tuple(f.name for f in fields(PoolSettings))
_BUILTIN_SETTINGS: Final = PoolSettings()
_EMPTY: Final[Mapping[str, Any]] = MappingProxyType({})


def _empty_mapping() -> Mapping[str, Any]:
    return _EMPTY


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    name: str  # client-visible name, or "*"
    dbname: str | None  # server-side database name; None = same as the name the client asked for
    overrides: Mapping[str, Any]  # validated PoolSettings overrides given on this database


@dataclass(frozen=True, slots=True)
class UserConfig:
    name: str
    # repr=False: config objects end up in logs and tracebacks; passwords must not.
    password: str = field(repr=False)
    overrides: Mapping[str, Any] = field(default_factory=_empty_mapping)


@dataclass(frozen=True, slots=True)
class ServerAddress:
    host: str
    port: int
    #: A host that starts with "/" names a Unix-domain socket on this machine: for PostgreSQL
    #: the directory holding `.s.PGSQL.<port>` (libpq's and PgBouncer's rule), for MySQL the
    #: socket file itself (MySQL's). None: TCP.
    socket_path: str | None = None

    @property
    def target(self) -> str:
        """What to connect to: the socket path, or the TCP host (with `port`)."""
        return self.socket_path or self.host

    def __str__(self) -> str:
        if self.socket_path:
            return f"unix:{self.socket_path}"
        return format_address(self.host, self.port)


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    name: str
    protocol: str  # postgres | mysql
    listen_host: str
    listen_port: int
    server: ServerAddress
    databases: Mapping[str, DatabaseConfig]
    auth_type: str
    users: Mapping[str, UserConfig]
    settings: PoolSettings  # defaults merged with listener-level overrides
    # Extra (not in the original contract): the overrides given on the listener itself.
    overrides: Mapping[str, Any] = field(default_factory=_empty_mapping)
    #: (worker index, worker count): with `workers: N` each worker process runs its own pools
    #: with its share of the connection limits (see `share_settings`).
    share: tuple[int, int] = (0, 1)

    @property
    def listen_address(self) -> str:
        return format_address(self.listen_host, self.listen_port)

    @property
    def client_limit(self) -> int:
        """max_client_conn for this process (its share of it with `workers`)."""
        index, count = self.share
        total = self.settings.max_client_conn
        return total if count == 1 else worker_share(total, index, count, 1)

    def database(self, requested: str) -> DatabaseConfig | None:
        """The database entry for a client-requested name: exact name first, then "*"."""
        found = self.databases.get(requested)
        if found is None:
            found = self.databases.get(WILDCARD_DATABASE)
        return found

    def user(self, name: str) -> UserConfig | None:
        return self.users.get(name)

    def settings_for(
        self, database: DatabaseConfig | None, user: UserConfig | None
    ) -> PoolSettings:
        """Effective settings: defaults < listener < database < user (later wins)."""
        merged: dict[str, Any] = {}
        if database is not None:
            merged.update(database.overrides)
        if user is not None:
            merged.update(user.overrides)
        settings = replace(self.settings, **merged) if merged else self.settings
        index, count = self.share
        return settings if count == 1 else share_settings(settings, index, count)

    def server_dbname(self, requested: str) -> str | None:
        """The server database for a client-requested name; None if the name is not served."""
        db = self.database(requested)
        if db is None:
            return None
        return requested if db.dbname is None else db.dbname


#: Connection limits a worker process gets a share of (0 = unlimited stays 0).
_SHARED_LIMITS: Final = {"pool_size": 1, "min_pool_size": 0, "reserve_pool_size": 0,
                         "max_db_connections": 1, "max_client_conn": 1}


def worker_share(total: int, index: int, count: int, minimum: int) -> int:
    """Worker `index`'s part of `total` split over `count` workers: the parts add up to
    `total` (the first `total % count` workers get one more), but never below `minimum`."""
    if total <= 0:
        return total
    return max(minimum, total // count + (1 if index < total % count else 0))


def share_settings(settings: PoolSettings, index: int, count: int) -> PoolSettings:
    """The settings one of `count` worker processes applies: its share of every connection
    limit, so that all workers together stay within the configured numbers."""
    shares: dict[str, Any] = {
        name: worker_share(getattr(settings, name), index, count, minimum)
        for name, minimum in _SHARED_LIMITS.items()}
    return replace(settings, **shares)


@dataclass(frozen=True, slots=True)
class AdminConfig:
    listen_host: str | None  # None = HTTP admin server disabled
    listen_port: int  # 0 when disabled
    admin_users: tuple[str, ...]

    @property
    def enabled(self) -> bool:
        return self.listen_host is not None


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str  # debug | info | warning | error
    format: str  # text | json


@dataclass(frozen=True, slots=True)
class Config:
    source: str  # path or "<string>"
    admin: AdminConfig
    logging: LoggingConfig
    defaults: PoolSettings
    listeners: tuple[ListenerConfig, ...]
    #: Worker processes sharing the listen sockets (1 = everything in one process).
    workers: int = 1

    def for_worker(self, index: int, count: int | None = None) -> Config:
        """This config as worker `index` of `count` (default `workers`) applies it: its share
        of the connection limits."""
        share = (index, self.workers if count is None else count)
        return replace(self, listeners=tuple(replace(lst, share=share) for lst in self.listeners))

    def listener(self, name: str) -> ListenerConfig:
        """The listener called ``name``; KeyError if there is none."""
        for listener in self.listeners:
            if listener.name == name:
                return listener
        raise KeyError(name)


# --------------------------------------------------------------------------------------------
# Paths and small validators
# --------------------------------------------------------------------------------------------

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*\Z")


def _key_path(parent: str, key: object) -> str:
    """``parent.key``; keys that are not plain identifiers are quoted: ``databases["*"]``."""
    text = str(key)
    if _PLAIN_KEY.match(text):
        return f"{parent}.{text}" if parent else text
    return f"{parent}[{json.dumps(text)}]"


def _check_keys(mapping: Mapping[Any, Any], allowed: Iterable[str], path: str) -> None:
    allowed = tuple(allowed)
    for key in mapping:
        if isinstance(key, str) and key in allowed:
            continue
        hint = difflib.get_close_matches(str(key), allowed, n=1)
        message = "unknown key" + (f" (did you mean {hint[0]}?)" if hint else "")
        raise ConfigError(_key_path(path, key), message)


def _as_mapping(value: object, path: str, what: str = "a mapping") -> dict[Any, Any]:
    """A mapping value; YAML ``null`` / an empty value counts as an empty mapping."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(path, f"must be {what}")
    return value


def _parse_str(value: object, path: str, *, allow_empty: bool = False) -> str:
    # YAML turns unquoted `no`, `123`, `1e3` into bool/int/float; a name or password that
    # silently became one of those (or lost leading zeros) must be quoted instead.
    if not isinstance(value, str):
        raise ConfigError(path, "must be a string (quote it in YAML)")
    if not allow_empty and not value.strip():
        raise ConfigError(path, "must not be empty")
    return value


def _require(mapping: Mapping[str, Any], key: str, path: str) -> Any:
    if key not in mapping:
        raise ConfigError(_key_path(path, key), "is required")
    return mapping[key]


def _parse_choice(value: object, path: str, choices: Iterable[str], suffix: str = "") -> str:
    choices = tuple(choices)
    if isinstance(value, str) and value.strip().lower() in choices:
        return value.strip().lower()
    raise ConfigError(path, f"must be one of {', '.join(choices)}{suffix}")


_INT_TEXT = re.compile(r"\s*[+-]?\d+\s*\Z")


def _to_int(value: object) -> int | None:
    """An int from an int or a decimal string (``${POOL_SIZE:-20}`` expands to a string)."""
    if isinstance(value, bool):  # bool is an int subclass; `pool_size: yes` is a mistake
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _INT_TEXT.match(value):
        return int(value)
    return None


def _parse_int(value: object, path: str, minimum: int) -> int:
    number = _to_int(value)
    if number is None or number < minimum:
        raise ConfigError(path, f"must be an integer >= {minimum}")
    return number


def _parse_port(value: object, path: str) -> int:
    number = _to_int(value)
    if number is None or not 1 <= number <= 65535:
        raise ConfigError(path, "must be 1..65535")
    return number


# --------------------------------------------------------------------------------------------
# Durations and fractions
# --------------------------------------------------------------------------------------------

_DURATION_UNITS: Final[Mapping[str, float]] = MappingProxyType(
    {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
)
_NUMBER_TEXT = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\Z")
# `ms` must come before `m` so that 250ms is not read as 250 minutes followed by junk.
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)\s*")
_DURATION_TEXT = re.compile(r"(?:(?:\d+(?:\.\d*)?|\.\d+)\s*(?:ms|s|m|h|d)\s*)+\Z")
_DURATION_HELP: Final = "must be a duration like 30s, 5m, 1h, 250ms or a number of seconds"


def parse_duration(value: object, path: str) -> float:
    """``30s``, ``5m``, ``1h``, ``250ms``, ``1.5s``, ``1m30s``, ``0`` or a number -> seconds."""
    seconds: float
    if isinstance(value, bool):
        raise ConfigError(path, _DURATION_HELP)
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if _NUMBER_TEXT.match(text):
            seconds = float(text)
        elif _DURATION_TEXT.match(text):
            seconds = sum(
                float(number) * _DURATION_UNITS[unit]
                for number, unit in _DURATION_PART.findall(text)
            )
        else:
            raise ConfigError(path, _DURATION_HELP)
    else:
        raise ConfigError(path, _DURATION_HELP)
    if not math.isfinite(seconds):
        raise ConfigError(path, _DURATION_HELP)
    if seconds < 0:
        raise ConfigError(path, "must not be negative")
    return seconds


def _parse_positive_duration(value: object, path: str) -> float:
    seconds = parse_duration(value, path)
    if seconds <= 0:
        # Without a connect timeout a black-holed server address hangs every waiting client.
        raise ConfigError(path, "must be a duration > 0")
    return seconds


_FRACTION_HELP: Final = "must be a percentage like 10% or a fraction 0..1"


def parse_fraction(value: object, path: str) -> float:
    """``10%`` or a fraction ``0..1`` (number or numeric string) -> a fraction 0..1."""
    if isinstance(value, bool):
        raise ConfigError(path, _FRACTION_HELP)
    fraction: float
    if isinstance(value, int | float):
        fraction = float(value)
    elif isinstance(value, str):
        text = value.strip()
        percent = text.endswith("%")
        number = text[:-1].strip() if percent else text
        if not _NUMBER_TEXT.match(number):
            raise ConfigError(path, _FRACTION_HELP)
        fraction = float(number) / 100.0 if percent else float(number)
    else:
        raise ConfigError(path, _FRACTION_HELP)
    if not math.isfinite(fraction) or not 0.0 <= fraction <= 1.0:
        raise ConfigError(path, _FRACTION_HELP)
    return fraction


def format_duration(seconds: float) -> str:
    """Inverse of parse_duration for display: 600.0 -> ``10m``, 0.25 -> ``250ms``."""
    if seconds == 0:
        return "0"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and float(seconds / size).is_integer():
            return f"{int(seconds // size)}{unit}"
    millis = seconds * 1000
    if seconds < 1 and abs(millis - round(millis)) < 1e-9:
        return f"{round(millis)}ms"
    return f"{seconds:g}s"


# --------------------------------------------------------------------------------------------
# Pool settings
# --------------------------------------------------------------------------------------------


def _parse_pool_mode(value: object, path: str) -> str:
    return _parse_choice(value, path, POOL_MODES)


def _int_at_least(minimum: int) -> Callable[[object, str], int]:
    def parse(value: object, path: str) -> int:
        return _parse_int(value, path, minimum)

    return parse


_SETTING_PARSERS: Final[Mapping[str, Callable[[object, str], Any]]] = MappingProxyType(
    {
        "pool_mode": _parse_pool_mode,
        "pool_size": _int_at_least(1),
        "min_pool_size": _int_at_least(0),
        "reserve_pool_size": _int_at_least(0),
        "reserve_pool_timeout": parse_duration,
        "max_client_conn": _int_at_least(1),
        "max_db_connections": _int_at_least(0),
        "server_idle_timeout": parse_duration,
        "server_lifetime": parse_duration,
        "server_lifetime_jitter": parse_fraction,
        "server_check_delay": parse_duration,
        "server_connect_timeout": _parse_positive_duration,
        "server_login_retry": parse_duration,
        "query_wait_timeout": parse_duration,
        "client_login_timeout": parse_duration,
        "client_idle_timeout": parse_duration,
        "idle_transaction_timeout": parse_duration,
        "shutdown_timeout": parse_duration,
    }
)
# A new PoolSettings field without a parser would be silently unconfigurable.
assert set(_SETTING_PARSERS) == set(SETTING_NAMES), "every PoolSettings field needs a parser"


def _parse_overrides(mapping: Mapping[str, Any], path: str) -> Mapping[str, Any]:
    """The PoolSettings keys present in ``mapping``, parsed; in PoolSettings field order."""
    parsed = {
        name: _SETTING_PARSERS[name](mapping[name], _key_path(path, name))
        for name in SETTING_NAMES
        if name in mapping
    }
    return MappingProxyType(parsed) if parsed else _EMPTY


def _format_setting(name: str, value: Any) -> str:
    if name == "server_lifetime_jitter":
        return f"{value * 100:g}%"
    if isinstance(value, float):
        return format_duration(value)
    return str(value)


# --------------------------------------------------------------------------------------------
# Environment expansion
# --------------------------------------------------------------------------------------------

# `$${` is a literal `${` (as in docker-compose); a bare `$` or `$$` stays as is so that
# passwords such as `pa$$word` need no escaping.
_ENV_REF = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-)([^}]*))?\}|\$\{")


def expand_env(value: str, env: Mapping[str, str], path: str) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}`` (default when VAR is unset or empty).

    Expansion is a single pass, so a variable's value is never expanded again.
    """
    if "${" not in value:
        return value

    def substitute(match: re.Match[str]) -> str:
        text = match.group(0)
        if text == "$${":
            return "${"
        name = match.group(1)
        if name is None:
            raise ConfigError(
                path, "invalid ${...}: write ${NAME} or ${NAME:-default} (or $${ for a literal ${)"
            )
        current = env.get(name)
        if match.group(2) is not None:
            return current if current else match.group(3)
        if current is None:
            raise ConfigError(
                path,
                f"environment variable {name} is not set (write ${{{name}:-default}} to give "
                "a default)",
            )
        return current

    return _ENV_REF.sub(substitute, value)


def _expand_tree(node: Any, env: Mapping[str, str], path: str) -> Any:
    # Runs on parsed YAML so that an expanded value (say a password with `: #`) is never
    # re-read as YAML syntax; only string values are expanded, never keys.
    if isinstance(node, str):
        return expand_env(node, env, path)
    if isinstance(node, dict):
        return {key: _expand_tree(value, env, _key_path(path, key)) for key, value in node.items()}
    if isinstance(node, list):
        return [_expand_tree(value, env, f"{path}[{i}]") for i, value in enumerate(node)]
    return node


# --------------------------------------------------------------------------------------------
# YAML
# --------------------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (plain PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` merges; keys given next to it legitimately override
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                continue  # unhashable key: the base class reports it
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "syntax error"
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(source, f"invalid YAML{where}: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(source, f"invalid YAML: {exc}") from None


# --------------------------------------------------------------------------------------------
# Addresses
# --------------------------------------------------------------------------------------------

_ADDRESS_HELP: Final = "must be host:port, [ipv6]:port or :port"


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_address(value: object, path: str) -> tuple[str, int]:
    """``host:port``, ``[::1]:6432``, ``:6432`` / ``*:6432`` (all interfaces) or a bare port."""
    if isinstance(value, int) and not isinstance(value, bool):
        return "0.0.0.0", _parse_port(value, path)
    if not isinstance(value, str):
        raise ConfigError(path, _ADDRESS_HELP)
    text = value.strip()
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1 : close + 2] != ":":
            raise ConfigError(path, _ADDRESS_HELP)
        host, port_text = text[1:close], text[close + 2 :]
        if not host:
            raise ConfigError(path, _ADDRESS_HELP)
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ConfigError(path, _ADDRESS_HELP)
        if ":" in host:
            raise ConfigError(path, "IPv6 addresses need brackets, e.g. [::1]:6432")
        if host in ("", "*"):
            host = "0.0.0.0"
    if any(ch.isspace() for ch in host):
        raise ConfigError(path, _ADDRESS_HELP)
    port = _to_int(port_text)
    if port is None or not 1 <= port <= 65535:
        raise ConfigError(path, "port must be 1..65535")
    return host, port


def _addresses_conflict(a: tuple[str, int], b: tuple[str, int]) -> bool:
    if a[1] != b[1]:
        return False
    return a[0] == b[0] or a[0] in _WILDCARD_HOSTS or b[0] in _WILDCARD_HOSTS


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------

_TOP_KEYS: Final = ("admin", "logging", "defaults", "listeners", "workers")
MAX_WORKERS: Final = 64
_ADMIN_KEYS: Final = ("listen", "admin_users")
_LOGGING_KEYS: Final = ("level", "format")
_LISTENER_KEYS: Final = ("name", "protocol", "listen", "server", "databases", "auth", "users")
_SERVER_KEYS: Final = ("host", "port")
_AUTH_KEYS: Final = ("type",)
_DATABASE_KEYS: Final = ("dbname",)
_USER_KEYS: Final = ("name", "password")
_LISTENER_NAME = re.compile(r"[A-Za-z0-9_.\-]+\Z")


def _parse_admin(raw: object) -> AdminConfig:
    path = "admin"
    section = _as_mapping(raw, path)
    _check_keys(section, _ADMIN_KEYS, path)
    listen = section.get("listen", DEFAULT_ADMIN_LISTEN)
    host: str | None
    if listen is None or (isinstance(listen, str) and not listen.strip()):
        host, port = None, 0  # admin HTTP disabled
    else:
        host, port = parse_address(listen, "admin.listen")
    users_raw = section.get("admin_users")
    if users_raw is None:
        users_raw = []
    if not isinstance(users_raw, list):
        raise ConfigError("admin.admin_users", "must be a list of user names")
    users: list[str] = []
    for i, item in enumerate(users_raw):
        item_path = f"admin.admin_users[{i}]"
        name = _parse_str(item, item_path)
        if name in users:
            raise ConfigError(item_path, f"duplicate admin user {name!r}")
        users.append(name)
    return AdminConfig(listen_host=host, listen_port=port, admin_users=tuple(users))


def _parse_logging(raw: object) -> LoggingConfig:
    path = "logging"
    section = _as_mapping(raw, path)
    _check_keys(section, _LOGGING_KEYS, path)
    level = _parse_choice(section.get("level", "info"), "logging.level", LOG_LEVELS)
    fmt = _parse_choice(section.get("format", "text"), "logging.format", LOG_FORMATS)
    return LoggingConfig(level=level, format=fmt)


def _parse_server(raw: object, protocol: str, path: str) -> ServerAddress:
    section = _as_mapping(raw, path, "a mapping {host, port}")
    if not section:
        raise ConfigError(path, "must be a mapping {host, port}")
    _check_keys(section, _SERVER_KEYS, path)
    host = _parse_str(_require(section, "host", path), f"{path}.host").strip()
    port = _parse_port(section.get("port", DEFAULT_SERVER_PORTS[protocol]), f"{path}.port")
    socket_path = None
    if host.startswith("/"):
        socket_path = f"{host.rstrip('/')}/.s.PGSQL.{port}" if protocol == "postgres" else host
    return ServerAddress(host=host, port=port, socket_path=socket_path)


def _parse_auth(raw: object, protocol: str, path: str) -> str:
    section = _as_mapping(raw, path)
    _check_keys(section, _AUTH_KEYS, path)
    choices = AUTH_TYPES[protocol]
    if "type" not in section:
        return choices[0]
    return _parse_choice(section["type"], f"{path}.type", choices, f" for a {protocol} listener")


def _parse_databases(
    raw: object, protocol: str, path: str, present: bool
) -> Mapping[str, DatabaseConfig]:
    if not present or raw is None:
        # Absent: serve any database name as is, like `"*": {}`.
        return MappingProxyType(
            {WILDCARD_DATABASE: DatabaseConfig(WILDCARD_DATABASE, None, _EMPTY)}
        )
    section = _as_mapping(raw, path, "a mapping of client-visible name -> {dbname: ...}")
    if not section:
        raise ConfigError(path, 'must name at least one database (use "*": {} for any name)')
    databases: dict[str, DatabaseConfig] = {}
    for name, value in section.items():
        db_path = _key_path(path, name)
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(db_path, "database names must be non-empty strings (quote them)")
        if protocol == "postgres" and name in ADMIN_DATABASES:
            raise ConfigError(db_path, "is reserved for the poolproxy admin console")
        entry = _as_mapping(value, db_path, "a mapping like {dbname: ..., pool_size: ...} or {}")
        _check_keys(entry, _DATABASE_KEYS + SETTING_NAMES, db_path)
        dbname_raw = entry.get("dbname")
        dbname: str | None
        if dbname_raw is None:
            # "*" without dbname: each client's requested name is used as is.
            dbname = None if name == WILDCARD_DATABASE else name
        else:
            dbname = _parse_str(dbname_raw, f"{db_path}.dbname")
        databases[name] = DatabaseConfig(name, dbname, _parse_overrides(entry, db_path))
    return MappingProxyType(databases)


def _parse_users(raw: object, auth_type: str, protocol: str, path: str) -> Mapping[str, UserConfig]:
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise ConfigError(path, "must be a list of {name, password} entries")
    if not raw:
        raise ConfigError(path, "must list at least one user (nobody could log in)")
    users: dict[str, UserConfig] = {}
    first_index: dict[str, int] = {}
    for i, item in enumerate(raw):
        user_path = f"{path}[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(user_path, "must be a mapping like {name: app, password: ...}")
        _check_keys(item, _USER_KEYS + SETTING_NAMES, user_path)
        name = _parse_str(_require(item, "name", user_path), f"{user_path}.name")
        if name in users:
            raise ConfigError(
                f"{user_path}.name", f"duplicate user {name!r} (also {path}[{first_index[name]}])"
            )
        if "password" in item:
            password = _parse_str(item["password"], f"{user_path}.password", allow_empty=True)
        elif auth_type == "trust":
            password = ""  # clients are not checked; the server may not need one either
        else:
            raise ConfigError(f"{user_path}.password", "is required")
        if not password and protocol == "postgres" and auth_type != "trust":
            # An empty secret would let any client in; PostgreSQL itself refuses empty passwords.
            raise ConfigError(f"{user_path}.password", f"must not be empty ({auth_type} auth)")
        users[name] = UserConfig(name, password, _parse_overrides(item, user_path))
        first_index[name] = i
    return MappingProxyType(users)


# --------------------------------------------------------------------------------------------
# Cross-checks over the merged settings
# --------------------------------------------------------------------------------------------

# A layer is (path of the mapping that holds the overrides, the overrides). Layers are in merge
# order, so a later layer's key wins and is the one to blame for a conflict it creates.
_Layer = tuple[str, Mapping[str, Any]]


def _cross_check(layers: list[_Layer], protocol: str | None, listener_label: str) -> None:
    values: dict[str, Any] = {}
    origin: dict[str, tuple[int, str | None]] = {}
    for name in SETTING_NAMES:
        values[name] = getattr(_BUILTIN_SETTINGS, name)
        origin[name] = (-1, None)  # built-in default
    for rank, (layer_path, overrides) in enumerate(layers):
        for name, value in overrides.items():
            values[name] = value
            origin[name] = (rank, _key_path(layer_path, name))

    def source(name: str) -> str:
        where = origin[name][1]
        return where if where is not None else "the built-in default"

    def blame(a: str, b: str) -> tuple[str, str]:
        """(key to report, the other key): the later-set key is the one that broke the rule."""
        return (a, b) if origin[a][0] >= origin[b][0] else (b, a)

    if protocol == "mysql" and values["pool_mode"] == "statement":
        where = source("pool_mode")
        message = "statement mode is only supported on postgres listeners"
        if origin["pool_mode"][0] == 0 and len(layers) > 1:
            message += f"; mysql listener {listener_label} inherits it, set pool_mode there"
        raise ConfigError(where, message)

    def ordered(low: str, high: str, only_if: bool = True) -> None:
        if not only_if or values[low] <= values[high]:
            return
        reported, other = blame(low, high)
        relation = "<=" if reported == low else ">="
        detail = str(values[other])
        if origin[other][0] != origin[reported][0]:
            detail += f", from {source(other)}"
        raise ConfigError(source(reported), f"must be {relation} {other} ({detail})")

    ordered("min_pool_size", "pool_size")
    # One pool can never hold min_pool_size connections under a smaller per-database cap.
    ordered("min_pool_size", "max_db_connections", only_if=values["max_db_connections"] > 0)


def _check_listener_merges(
    defaults_layer: _Layer,
    listener_path: str,
    listener_overrides: Mapping[str, Any],
    databases: Mapping[str, DatabaseConfig],
    users: Mapping[str, UserConfig],
    protocol: str,
    listener_label: str,
) -> None:
    # settings_for() accepts any (database | None, user | None) pair, so every pair must be valid.
    base = [defaults_layer, (listener_path, listener_overrides)]
    db_layers: list[_Layer | None] = [None]
    db_layers += [
        (_key_path(f"{listener_path}.databases", n), d.overrides) for n, d in databases.items()
    ]
    user_layers: list[_Layer | None] = [None]
    user_layers += [
        (f"{listener_path}.users[{i}]", u.overrides) for i, u in enumerate(users.values())
    ]
    for db_layer in db_layers:
        for user_layer in user_layers:
            layers = base + [layer for layer in (db_layer, user_layer) if layer is not None]
            _cross_check(layers, protocol, listener_label)


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------


def parse_config(
    text: str, env: Mapping[str, str] | None = None, source: str = "<string>"
) -> Config:
    """Parse and validate config text; raises ConfigError naming the key path."""
    if env is None:
        env = os.environ
    data = _load_yaml(text, source)
    if data is None:
        raise ConfigError(source, "is empty (it needs at least a listeners list)")
    if not isinstance(data, dict):
        raise ConfigError(source, "must be a mapping with admin, logging, defaults, listeners")
    _check_keys(data, _TOP_KEYS, "")
    data = _expand_tree(data, env, "")

    admin = _parse_admin(data.get("admin"))
    logging_config = _parse_logging(data.get("logging"))
    workers = 1
    if data.get("workers") is not None:
        workers = _parse_int(data["workers"], "workers", 1)
        if workers > MAX_WORKERS:
            raise ConfigError("workers", f"must be at most {MAX_WORKERS}")

    defaults_raw = _as_mapping(data.get("defaults"), "defaults")
    _check_keys(defaults_raw, SETTING_NAMES, "defaults")
    defaults_overrides = _parse_overrides(defaults_raw, "defaults")
    defaults_layer: _Layer = ("defaults", defaults_overrides)
    _cross_check([defaults_layer], None, "")
    defaults = replace(_BUILTIN_SETTINGS, **defaults_overrides)

    listeners_raw = _require(data, "listeners", "")
    if not isinstance(listeners_raw, list) or not listeners_raw:
        raise ConfigError("listeners", "must be a non-empty list of listeners")

    listeners: list[ListenerConfig] = []
    bound: list[tuple[str, tuple[str, int]]] = []  # (path, address) of every listen socket
    if admin.listen_host is not None:
        bound.append(("admin.listen", (admin.listen_host, admin.listen_port)))
    names: dict[str, str] = {}
    for i, raw in enumerate(listeners_raw):
        path = f"listeners[{i}]"
        listener = _parse_listener(raw, path, defaults, defaults_layer)
        if listener.name in names:
            raise ConfigError(
                f"{path}.name",
                f"duplicate listener name {listener.name!r} (also {names[listener.name]})",
            )
        names[listener.name] = path
        address = (listener.listen_host, listener.listen_port)
        for other_path, other in bound:
            if _addresses_conflict(address, other):
                raise ConfigError(
                    f"{path}.listen",
                    f"{listener.listen_address} conflicts with {other_path} "
                    f"({format_address(*other)})",
                )
        bound.append((f"{path}.listen", address))
        listeners.append(listener)

    return Config(
        source=source,
        admin=admin,
        logging=logging_config,
        defaults=defaults,
        listeners=tuple(listeners),
        workers=workers,
    )


def _parse_listener(
    raw: object, path: str, defaults: PoolSettings, defaults_layer: _Layer
) -> ListenerConfig:
    if not isinstance(raw, dict):
        raise ConfigError(path, "must be a mapping")
    _check_keys(raw, _LISTENER_KEYS + SETTING_NAMES, path)
    name = _parse_str(_require(raw, "name", path), f"{path}.name")
    if not _LISTENER_NAME.match(name):
        # The name is a metrics label and appears in logs; keep it plain.
        raise ConfigError(f"{path}.name", "may only contain letters, digits, '_', '.' and '-'")
    protocol = _parse_choice(_require(raw, "protocol", path), f"{path}.protocol", PROTOCOLS)
    listen_host, listen_port = parse_address(_require(raw, "listen", path), f"{path}.listen")
    server = _parse_server(_require(raw, "server", path), protocol, f"{path}.server")
    auth_type = _parse_auth(raw.get("auth"), protocol, f"{path}.auth")
    overrides = _parse_overrides(raw, path)
    databases = _parse_databases(
        raw.get("databases"), protocol, f"{path}.databases", "databases" in raw
    )
    users = _parse_users(raw.get("users"), auth_type, protocol, f"{path}.users")
    _check_listener_merges(defaults_layer, path, overrides, databases, users, protocol, repr(name))
    return ListenerConfig(
        name=name,
        protocol=protocol,
        listen_host=listen_host,
        listen_port=listen_port,
        server=server,
        databases=databases,
        auth_type=auth_type,
        users=users,
        settings=replace(defaults, **overrides),
        overrides=overrides,
    )


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read and parse a config file; ``env`` defaults to ``os.environ``."""
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as handle:
            text = handle.read()
    except UnicodeDecodeError:
        raise ConfigError(source, "is not valid UTF-8") from None
    except OSError as exc:
        raise ConfigError(source, f"cannot read config file: {exc.strerror or exc}") from None
    return parse_config(text, env=os.environ if env is None else env, source=source)


def default_config_path(env: Mapping[str, str] | None = None) -> str:
    """``$POOLPROXY_CONFIG``, else ``config/poolproxy.yaml``."""
    if env is None:
        env = os.environ
    return env.get(CONFIG_PATH_ENV) or DEFAULT_CONFIG_PATH


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


def _settings_diff(settings: Mapping[str, Any] | PoolSettings, base: PoolSettings) -> str:
    if isinstance(settings, PoolSettings):
        items: Iterator[tuple[str, Any]] = (
            (name, getattr(settings, name))
            for name in SETTING_NAMES
            if getattr(settings, name) != getattr(base, name)
        )
    else:
        items = iter(settings.items())
    return " ".join(f"{name}={_format_setting(name, value)}" for name, value in items)


def config_warnings(config: Config) -> list[str]:
    """Things that are valid but probably not what was meant (printed by ``--check``)."""
    warnings: list[str] = []
    pg_users = {
        name for lst in config.listeners if lst.protocol == "postgres" for name in lst.users
    }
    if any(lst.protocol == "postgres" for lst in config.listeners):
        for i, name in enumerate(config.admin.admin_users):
            if name not in pg_users:
                warnings.append(
                    f"admin.admin_users[{i}]: {name!r} is not a user of any postgres listener, "
                    "so it cannot log in to the admin console"
                )
    for i, lst in enumerate(config.listeners):
        if lst.auth_type == "trust":
            warnings.append(
                f"listeners[{i}].auth.type: trust lets any client log in as any configured user"
            )
    return warnings


def summary(config: Config) -> str:
    """Human summary for ``--check``; names users but never shows a password."""
    lines = [f"config: {config.source}"]
    if config.admin.listen_host is not None:
        admin = (
            f"admin: http on {format_address(config.admin.listen_host, config.admin.listen_port)}"
        )
    else:
        admin = "admin: http disabled"
    admin_users = ", ".join(config.admin.admin_users) or "(none)"
    lines.append(f"{admin}; admin users: {admin_users}")
    lines.append(f"logging: level={config.logging.level} format={config.logging.format}")
    if config.workers > 1:
        lines.append(f"workers: {config.workers} processes, each with its share of the pool limits")
    lines.append(
        "defaults: "
        + " ".join(
            f"{name}={_format_setting(name, getattr(config.defaults, name))}"
            for name in SETTING_NAMES
        )
    )
    for lst in config.listeners:
        lines.append(
            f"listener {lst.name}: {lst.protocol} {lst.listen_address} -> {lst.server}, "
            f"auth {lst.auth_type}"
        )
        diff = _settings_diff(lst.settings, config.defaults)
        if diff:
            lines.append(f"  settings (differ from defaults): {diff}")
        for db in lst.databases.values():
            target = "(name as requested)" if db.dbname is None else db.dbname
            text = f"  database {db.name} -> {target}"
            effective = _settings_diff(lst.settings_for(db, None), lst.settings)
            if effective:
                text += f" [{effective}]"
            lines.append(text)
        for user in lst.users.values():
            text = f"  user {user.name}"
            effective = _settings_diff(lst.settings_for(None, user), lst.settings)
            if effective:
                text += f" [{effective}]"
            lines.append(text)
    lines.extend(f"warning: {w}" for w in config_warnings(config))
    return "\n".join(lines)


def config_to_dict(config: Config, *, include_passwords: bool = False) -> dict[str, Any]:
    """Plain JSON-able dict of a config (``dataclasses.asdict`` can't copy MappingProxyType).

    Passwords are replaced by ``"***"`` unless asked for; for SHOW CONFIG and /pools-style output.
    """

    def settings(s: PoolSettings) -> dict[str, Any]:
        return {name: getattr(s, name) for name in SETTING_NAMES}

    return {
        "source": config.source,
        "admin": {
            "listen_host": config.admin.listen_host,
            "listen_port": config.admin.listen_port,
            "admin_users": list(config.admin.admin_users),
        },
        "logging": {"level": config.logging.level, "format": config.logging.format},
        "workers": config.workers,
        "defaults": settings(config.defaults),
        "listeners": [
            {
                "name": lst.name,
                "protocol": lst.protocol,
                "listen_host": lst.listen_host,
                "listen_port": lst.listen_port,
                "server": {"host": lst.server.host, "port": lst.server.port},
                "auth_type": lst.auth_type,
                "settings": settings(lst.settings),
                "overrides": dict(lst.overrides),
                "databases": {
                    name: {"dbname": db.dbname, "overrides": dict(db.overrides)}
                    for name, db in lst.databases.items()
                },
                "users": {
                    name: {
                        "password": user.password if include_passwords else "***",
                        "overrides": dict(user.overrides),
                    }
                    for name, user in lst.users.items()
                },
            }
            for lst in config.listeners
        ],
    }

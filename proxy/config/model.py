"""The configuration model: frozen dataclasses (listeners, pools, users, admin, logging), the
defaults < listener < database < user merge of pool settings, a worker's share of the limits,
and how values are displayed. No parsing here (parse.py) and no reporting (report.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any, Final

from ..tls import DISABLED, TlsSettings

DISABLED_TLS: Final = DISABLED
DEFAULT_ADMIN_LISTEN: Final = "127.0.0.1:9127"
WILDCARD_DATABASE: Final = "*"

PROTOCOLS: Final = ("postgres", "mysql")
POOL_MODES: Final = ("transaction", "session", "statement")
# The first entry of each tuple is the protocol's default.
AUTH_TYPES: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        "postgres": ("scram-sha-256", "md5", "trust", "passthrough"),
        "mysql": ("mysql_native_password", "caching_sha2_password", "passthrough"),
    }
)
DEFAULT_SERVER_PORTS: Final[Mapping[str, int]] = MappingProxyType({"postgres": 5432, "mysql": 3306})
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
LOG_FORMATS: Final = ("text", "json")
# Database names the PostgreSQL admin console answers to; a real database of that name would be
# unreachable through the listener, so configuring one is an error rather than a surprise.
ADMIN_DATABASES: Final = ("poolproxy", "pgbouncer")
# Hosts that bind every interface: they collide with any other address on the same port.
WILDCARD_HOSTS: Final = frozenset({"0.0.0.0", "::"})


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
    #: Protocol-level prepared statements per server connection (LRU); 0: a client that
    #: prepares one is pinned to its server instead.
    max_prepared_statements: int = 200


SETTING_NAMES: Final[tuple[str, ...]] = tuple(f.name for f in fields(PoolSettings))
BUILTIN_SETTINGS: Final = PoolSettings()
EMPTY_MAPPING: Final[Mapping[str, Any]] = MappingProxyType({})


def _empty_mapping() -> Mapping[str, Any]:
    return EMPTY_MAPPING


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
class AuthQuery:
    """PgBouncer's auth_query/auth_user/auth_dbname: users not listed are looked up in the
    database with `query` (one parameter, the user name) run as the listed user `user`."""

    query: str
    user: str
    dbname: str | None = None  # None: the client's database


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
    #: auth.query (None: only listed users log in).
    auth_query: AuthQuery | None = None
    #: auth.type passthrough: accept the client's cleartext password outside TLS and loopback.
    allow_plaintext_passthrough: bool = False
    client_tls: TlsSettings = DISABLED_TLS
    server_tls: TlsSettings = DISABLED_TLS
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


# Display of values (the inverse of parsing)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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


def format_setting(name: str, value: Any) -> str:
    if name == "server_lifetime_jitter":
        return f"{value * 100:g}%"
    if isinstance(value, float):
        return format_duration(value)
    return str(value)

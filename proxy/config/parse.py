"""Parsing the configuration: YAML text -> validated model objects (model.py).

Owns the file format: `${VAR}` expansion, durations, addresses, the strict YAML loader, the
section parsers and cross-checks, and errors that name the key path. Pure Python (no asyncio),
so `--check`, SIGHUP reload and the tests all go through the same code.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any, Final

from .model import (
    ADMIN_DATABASES,
    AUTH_TYPES,
    BUILTIN_SETTINGS,
    CONFIG_PATH_ENV,
    DEFAULT_ADMIN_LISTEN,
    DEFAULT_CONFIG_PATH,
    DEFAULT_SERVER_PORTS,
    EMPTY_MAPPING,
    LOG_FORMATS,
    LOG_LEVELS,
    PROTOCOLS,
    SETTING_NAMES,
    WILDCARD_DATABASE,
    AdminConfig,
    Config,
    ConfigError,
    DatabaseConfig,
    ListenerConfig,
    LoggingConfig,
    PoolSettings,
    ServerAddress,
    UserConfig,
    format_address,
)
from .values import (
    addresses_conflict,
    as_mapping,
    check_keys,
    expand_tree,
    key_path,
    load_yaml,
    parse_address,
    parse_choice,
    parse_int,
    parse_overrides,
    parse_port,
    parse_str,
    require,
)

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
    section = as_mapping(raw, path)
    check_keys(section, _ADMIN_KEYS, path)
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
        name = parse_str(item, item_path)
        if name in users:
            raise ConfigError(item_path, f"duplicate admin user {name!r}")
        users.append(name)
    return AdminConfig(listen_host=host, listen_port=port, admin_users=tuple(users))


def _parse_logging(raw: object) -> LoggingConfig:
    path = "logging"
    section = as_mapping(raw, path)
    check_keys(section, _LOGGING_KEYS, path)
    level = parse_choice(section.get("level", "info"), "logging.level", LOG_LEVELS)
    fmt = parse_choice(section.get("format", "text"), "logging.format", LOG_FORMATS)
    return LoggingConfig(level=level, format=fmt)


def _parse_server(raw: object, protocol: str, path: str) -> ServerAddress:
    section = as_mapping(raw, path, "a mapping {host, port}")
    if not section:
        raise ConfigError(path, "must be a mapping {host, port}")
    check_keys(section, _SERVER_KEYS, path)
    host = parse_str(require(section, "host", path), f"{path}.host").strip()
    port = parse_port(section.get("port", DEFAULT_SERVER_PORTS[protocol]), f"{path}.port")
    socket_path = None
    if host.startswith("/"):
        socket_path = f"{host.rstrip('/')}/.s.PGSQL.{port}" if protocol == "postgres" else host
    return ServerAddress(host=host, port=port, socket_path=socket_path)


def _parse_auth(raw: object, protocol: str, path: str) -> str:
    section = as_mapping(raw, path)
    check_keys(section, _AUTH_KEYS, path)
    choices = AUTH_TYPES[protocol]
    if "type" not in section:
        return choices[0]
    return parse_choice(section["type"], f"{path}.type", choices, f" for a {protocol} listener")


def _parse_databases(
    raw: object, protocol: str, path: str, present: bool
) -> Mapping[str, DatabaseConfig]:
    if not present or raw is None:
        # Absent: serve any database name as is, like `"*": {}`.
        return MappingProxyType(
            {WILDCARD_DATABASE: DatabaseConfig(WILDCARD_DATABASE, None, EMPTY_MAPPING)}
        )
    section = as_mapping(raw, path, "a mapping of client-visible name -> {dbname: ...}")
    if not section:
        raise ConfigError(path, 'must name at least one database (use "*": {} for any name)')
    databases: dict[str, DatabaseConfig] = {}
    for name, value in section.items():
        db_path = key_path(path, name)
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(db_path, "database names must be non-empty strings (quote them)")
        if protocol == "postgres" and name in ADMIN_DATABASES:
            raise ConfigError(db_path, "is reserved for the poolproxy admin console")
        entry = as_mapping(value, db_path, "a mapping like {dbname: ..., pool_size: ...} or {}")
        check_keys(entry, _DATABASE_KEYS + SETTING_NAMES, db_path)
        dbname_raw = entry.get("dbname")
        dbname: str | None
        if dbname_raw is None:
            # "*" without dbname: each client's requested name is used as is.
            dbname = None if name == WILDCARD_DATABASE else name
        else:
            dbname = parse_str(dbname_raw, f"{db_path}.dbname")
        databases[name] = DatabaseConfig(name, dbname, parse_overrides(entry, db_path))
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
        check_keys(item, _USER_KEYS + SETTING_NAMES, user_path)
        name = parse_str(require(item, "name", user_path), f"{user_path}.name")
        if name in users:
            raise ConfigError(
                f"{user_path}.name", f"duplicate user {name!r} (also {path}[{first_index[name]}])"
            )
        if "password" in item:
            password = parse_str(item["password"], f"{user_path}.password", allow_empty=True)
        elif auth_type == "trust":
            password = ""  # clients are not checked; the server may not need one either
        else:
            raise ConfigError(f"{user_path}.password", "is required")
        if not password and protocol == "postgres" and auth_type != "trust":
            # An empty secret would let any client in; PostgreSQL itself refuses empty passwords.
            raise ConfigError(f"{user_path}.password", f"must not be empty ({auth_type} auth)")
        users[name] = UserConfig(name, password, parse_overrides(item, user_path))
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
        values[name] = getattr(BUILTIN_SETTINGS, name)
        origin[name] = (-1, None)  # built-in default
    for rank, (layer_path, overrides) in enumerate(layers):
        for name, value in overrides.items():
            values[name] = value
            origin[name] = (rank, key_path(layer_path, name))

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
        (key_path(f"{listener_path}.databases", n), d.overrides) for n, d in databases.items()
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
    data = load_yaml(text, source)
    if data is None:
        raise ConfigError(source, "is empty (it needs at least a listeners list)")
    if not isinstance(data, dict):
        raise ConfigError(source, "must be a mapping with admin, logging, defaults, listeners")
    check_keys(data, _TOP_KEYS, "")
    data = expand_tree(data, env, "")

    admin = _parse_admin(data.get("admin"))
    logging_config = _parse_logging(data.get("logging"))
    workers = 1
    if data.get("workers") is not None:
        workers = parse_int(data["workers"], "workers", 1)
        if workers > MAX_WORKERS:
            raise ConfigError("workers", f"must be at most {MAX_WORKERS}")

    defaults_raw = as_mapping(data.get("defaults"), "defaults")
    check_keys(defaults_raw, SETTING_NAMES, "defaults")
    defaults_overrides = parse_overrides(defaults_raw, "defaults")
    defaults_layer: _Layer = ("defaults", defaults_overrides)
    _cross_check([defaults_layer], None, "")
    defaults = replace(BUILTIN_SETTINGS, **defaults_overrides)

    listeners_raw = require(data, "listeners", "")
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
            if addresses_conflict(address, other):
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
    check_keys(raw, _LISTENER_KEYS + SETTING_NAMES, path)
    name = parse_str(require(raw, "name", path), f"{path}.name")
    if not _LISTENER_NAME.match(name):
        # The name is a metrics label and appears in logs; keep it plain.
        raise ConfigError(f"{path}.name", "may only contain letters, digits, '_', '.' and '-'")
    protocol = parse_choice(require(raw, "protocol", path), f"{path}.protocol", PROTOCOLS)
    listen_host, listen_port = parse_address(require(raw, "listen", path), f"{path}.listen")
    server = _parse_server(require(raw, "server", path), protocol, f"{path}.server")
    auth_type = _parse_auth(raw.get("auth"), protocol, f"{path}.auth")
    overrides = parse_overrides(raw, path)
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

"""Parsing one listener: its name, protocol, addresses, server, auth, databases and users,
and the cross-checks over its merged pool settings (defaults < listener < database < user).
Errors are collected as in parse.py: everything wrong with a listener is reported at once."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, Final, cast

from .. import tls
from ..tls import Side, TlsSettings
from .errors import ConfigError, Problems
from .model import (
    ADMIN_DATABASES,
    AUTH_TYPES,
    BUILTIN_SETTINGS,
    DEFAULT_SERVER_PORTS,
    EMPTY_MAPPING,
    PROTOCOLS,
    SETTING_NAMES,
    WILDCARD_DATABASE,
    AuthQuery,
    DatabaseConfig,
    ListenerConfig,
    PoolSettings,
    ServerAddress,
    UserConfig,
)
from .values import (
    as_mapping,
    check_keys,
    key_path,
    parse_address,
    parse_choice,
    parse_overrides,
    parse_port,
    parse_str,
    require,
)

_LISTENER_KEYS: Final = ("name", "protocol", "listen", "server", "databases", "auth", "users",
                         "client_tls", "server_tls")
_SERVER_KEYS: Final = ("host", "port")
_AUTH_KEYS: Final = ("type", "query", "user", "dbname", "allow_plaintext_passthrough")
_DATABASE_KEYS: Final = ("dbname",)
_USER_KEYS: Final = ("name", "password")
_LISTENER_NAME = re.compile(r"[A-Za-z0-9_.\-]+\Z")
_ANY_AUTH_TYPE: Final = tuple(dict.fromkeys(t for types in AUTH_TYPES.values() for t in types))


def _parse_server(raw: object, protocol: str | None, path: str) -> ServerAddress:
    """``protocol`` None: the listener's protocol is invalid; check what does not depend on it."""
    section = as_mapping(raw, path, "a mapping {host, port}")
    if not section:
        raise ConfigError(path, "must be a mapping {host, port}")
    problems = Problems()
    problems.attempt(check_keys, section, _SERVER_KEYS, path)
    host_raw = problems.attempt(require, section, "host", path)
    host = None if host_raw is None else problems.attempt(parse_str, host_raw, f"{path}.host")
    default_port = DEFAULT_SERVER_PORTS.get(protocol or "", 1)
    port = problems.attempt(parse_port, section.get("port", default_port), f"{path}.port")
    problems.raise_any()
    assert host is not None and port is not None
    host = host.strip()
    socket_path = None
    if host.startswith("/"):
        socket_path = f"{host.rstrip('/')}/.s.PGSQL.{port}" if protocol == "postgres" else host
    return ServerAddress(host=host, port=port, socket_path=socket_path)


@dataclass(frozen=True, slots=True)
class _Auth:
    type: str
    query: AuthQuery | None
    allow_plaintext_passthrough: bool


def _parse_auth(raw: object, protocol: str | None, path: str) -> _Auth:
    section = as_mapping(raw, path)
    problems = Problems()
    problems.attempt(check_keys, section, _AUTH_KEYS, path)
    choices = AUTH_TYPES[protocol] if protocol else _ANY_AUTH_TYPE
    auth_type: str | None = choices[0]
    if "type" in section:
        suffix = f" for a {protocol} listener" if protocol else ""
        auth_type = problems.attempt(parse_choice, section["type"], f"{path}.type", choices,
                                     suffix)
    query: AuthQuery | None = None
    if "query" in section or "user" in section:
        text = user = dbname = None
        if "query" not in section:
            problems.add(ConfigError(f"{path}.query", "is required with auth.user (the query "
                                     "that returns a user's name and secret)"))
        else:
            text = problems.attempt(parse_str, section["query"], f"{path}.query")
        if "user" not in section:
            problems.add(ConfigError(f"{path}.user", "is required with auth.query (a listed "
                                     "user whose password runs the query)"))
        else:
            user = problems.attempt(parse_str, section["user"], f"{path}.user")
        if section.get("dbname") is not None:
            dbname = problems.attempt(parse_str, section["dbname"], f"{path}.dbname")
        marker = "?" if protocol == "mysql" else "$1"
        if text is not None and marker not in text:
            problems.add(ConfigError(f"{path}.query", f"must take the user name as {marker}"))
        elif text is not None and user is not None:
            query = AuthQuery(text, user, dbname)
    elif "dbname" in section:
        problems.add(ConfigError(f"{path}.dbname", "only applies with auth.query"))
    plain = section.get("allow_plaintext_passthrough", False)
    if not isinstance(plain, bool):
        problems.add(ConfigError(f"{path}.allow_plaintext_passthrough", "must be true or false"))
        plain = False
    problems.raise_any()
    assert auth_type is not None
    return _Auth(auth_type, query, plain)


def _parse_tls(raw: object, side: Side, path: str) -> TlsSettings:
    try:
        # settings_from_mapping refuses what is not a mapping itself.
        return tls.settings_from_mapping(cast(Mapping[str, Any], raw), side, path)
    except tls.TlsError as exc:
        raise ConfigError(exc.path, exc.message) from None


def _parse_database(name: object, value: object, protocol: str | None,
                    db_path: str) -> DatabaseConfig:
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(db_path, "database names must be non-empty strings (quote them)")
    if protocol == "postgres" and name in ADMIN_DATABASES:
        raise ConfigError(db_path, "is reserved for the poolproxy admin console")
    entry = as_mapping(value, db_path, "a mapping like {dbname: ..., pool_size: ...} or {}")
    problems = Problems()
    problems.attempt(check_keys, entry, _DATABASE_KEYS + SETTING_NAMES, db_path)
    dbname_raw = entry.get("dbname")
    dbname: str | None
    if dbname_raw is None:
        # "*" without dbname: each client's requested name is used as is.
        dbname = None if name == WILDCARD_DATABASE else name
    else:
        dbname = problems.attempt(parse_str, dbname_raw, f"{db_path}.dbname")
    overrides = problems.attempt(parse_overrides, entry, db_path)
    problems.raise_any()
    assert overrides is not None
    return DatabaseConfig(name, dbname, overrides)


def _parse_databases(
    raw: object, protocol: str | None, path: str, present: bool
) -> Mapping[str, DatabaseConfig]:
    if not present or raw is None:
        # Absent: serve any database name as is, like `"*": {}`.
        return MappingProxyType(
            {WILDCARD_DATABASE: DatabaseConfig(WILDCARD_DATABASE, None, EMPTY_MAPPING)}
        )
    section = as_mapping(raw, path, "a mapping of client-visible name -> {dbname: ...}")
    if not section:
        raise ConfigError(path, 'must name at least one database (use "*": {} for any name)')
    problems = Problems()
    databases: dict[str, DatabaseConfig] = {}
    for name, value in section.items():
        db = problems.attempt(_parse_database, name, value, protocol, key_path(path, name))
        if db is not None:
            databases[db.name] = db
    problems.raise_any()
    return MappingProxyType(databases)


def _parse_user(item: object, auth_type: str | None, protocol: str | None,
                user_path: str) -> UserConfig:
    """``auth_type`` None: the listener's auth type is invalid; passwords are not checked."""
    if not isinstance(item, dict):
        raise ConfigError(user_path, "must be a mapping like {name: app, password: ...}")
    problems = Problems()
    problems.attempt(check_keys, item, _USER_KEYS + SETTING_NAMES, user_path)
    name_raw = problems.attempt(require, item, "name", user_path)
    name = None if name_raw is None else problems.attempt(parse_str, name_raw,
                                                          f"{user_path}.name")
    password: str | None = ""
    if "password" in item:
        password = problems.attempt(parse_str, item["password"], f"{user_path}.password",
                                    allow_empty=True)
        if password == "" and protocol == "postgres" and auth_type not in (
                "trust", "passthrough", None):
            # An empty secret would let any client in; PostgreSQL itself refuses empty ones.
            problems.add(ConfigError(f"{user_path}.password",
                                     f"must not be empty ({auth_type} auth)"))
    elif auth_type not in ("trust", "passthrough", None):
        # trust: clients are not checked, and the server may not need a password either;
        # passthrough: the client's own password logs in.
        problems.add(ConfigError(f"{user_path}.password", "is required"))
    overrides = problems.attempt(parse_overrides, item, user_path)
    problems.raise_any()
    assert name is not None and password is not None and overrides is not None
    return UserConfig(name, password, overrides)


def _parse_users(raw: object, auth_type: str | None, protocol: str | None,
                 path: str, optional: bool = False) -> Mapping[str, UserConfig]:
    """``optional``: users may also come from the database (auth.query, passthrough)."""
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise ConfigError(path, "must be a list of {name, password} entries")
    if not raw and not optional:
        raise ConfigError(path, "must list at least one user (nobody could log in; or use "
                          "auth.query or auth.type: passthrough)")
    problems = Problems()
    users: dict[str, UserConfig] = {}
    first_index: dict[str, int] = {}
    for i, item in enumerate(raw):
        user_path = f"{path}[{i}]"
        name = item.get("name") if isinstance(item, dict) else None
        duplicate = False
        if isinstance(name, str) and name.strip():  # checked before the rest, which may fail
            duplicate = name in first_index
            if duplicate:
                problems.add(ConfigError(f"{user_path}.name", f"duplicate user {name!r} "
                                         f"(also {path}[{first_index[name]}])"))
            else:
                first_index[name] = i
        user = problems.attempt(_parse_user, item, auth_type, protocol, user_path)
        if user is not None and not duplicate:
            users[user.name] = user
    problems.raise_any()
    return MappingProxyType(users)


# --------------------------------------------------------------------------------------------
# Cross-checks over the merged settings
# --------------------------------------------------------------------------------------------

# A layer is (path of the mapping that holds the overrides, the overrides). Layers are in merge
# order, so a later layer's key wins and is the one to blame for a conflict it creates.
Layer = tuple[str, Mapping[str, Any]]


def cross_check(
    layers: list[Layer], protocol: str | None, listener_label: str, problems: Problems
) -> None:
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
        problems.add(ConfigError(where, message))

    def ordered(low: str, high: str, only_if: bool = True) -> None:
        if not only_if or values[low] <= values[high]:
            return
        reported, other = blame(low, high)
        relation = "<=" if reported == low else ">="
        detail = str(values[other])
        if origin[other][0] != origin[reported][0]:
            detail += f", from {source(other)}"
        problems.add(ConfigError(source(reported), f"must be {relation} {other} ({detail})"))

    ordered("min_pool_size", "pool_size")
    # One pool can never hold min_pool_size connections under a smaller per-database cap.
    ordered("min_pool_size", "max_db_connections", only_if=values["max_db_connections"] > 0)


def _check_listener_merges(
    defaults_layer: Layer,
    listener_path: str,
    listener_overrides: Mapping[str, Any],
    databases: Mapping[str, DatabaseConfig],
    users: Mapping[str, UserConfig],
    protocol: str,
    listener_label: str,
) -> None:
    # settings_for() accepts any (database | None, user | None) pair, so every pair must be valid.
    base = [defaults_layer, (listener_path, listener_overrides)]
    db_layers: list[Layer | None] = [None]
    db_layers += [
        (key_path(f"{listener_path}.databases", n), d.overrides) for n, d in databases.items()
    ]
    user_layers: list[Layer | None] = [None]
    user_layers += [
        (f"{listener_path}.users[{i}]", u.overrides) for i, u in enumerate(users.values())
    ]
    problems = Problems()
    for db_layer in db_layers:
        for user_layer in user_layers:
            layers = base + [layer for layer in (db_layer, user_layer) if layer is not None]
            cross_check(layers, protocol, listener_label, problems)
    problems.raise_any()


# --------------------------------------------------------------------------------------------
# Listeners
# --------------------------------------------------------------------------------------------


def _parse_listener_name(raw: Mapping[str, Any], path: str) -> str:
    name = parse_str(require(raw, "name", path), f"{path}.name")
    if not _LISTENER_NAME.match(name):
        # The name is a metrics label and appears in logs; keep it plain.
        raise ConfigError(f"{path}.name", "may only contain letters, digits, '_', '.' and '-'")
    return name


def parse_listener(
    raw: object, path: str, defaults: PoolSettings, defaults_layer: Layer | None
) -> ListenerConfig:
    """``defaults_layer`` None: `defaults` is invalid, so the merged settings are not checked."""
    if not isinstance(raw, dict):
        raise ConfigError(path, "must be a mapping")
    problems = Problems()
    attempt = problems.attempt
    attempt(check_keys, raw, _LISTENER_KEYS + SETTING_NAMES, path)
    name = attempt(_parse_listener_name, raw, path)
    protocol = attempt(lambda: parse_choice(require(raw, "protocol", path), f"{path}.protocol",
                                            PROTOCOLS))
    listen = attempt(lambda: parse_address(require(raw, "listen", path), f"{path}.listen"))
    server = attempt(lambda: _parse_server(require(raw, "server", path), protocol,
                                           f"{path}.server"))
    auth = attempt(_parse_auth, raw.get("auth"), protocol, f"{path}.auth")
    # The auth type's choices depend on the protocol.
    auth_type = auth.type if auth is not None and protocol is not None else None
    overrides = attempt(parse_overrides, raw, path)
    databases = attempt(_parse_databases, raw.get("databases"), protocol, f"{path}.databases",
                        "databases" in raw)
    lookup = auth is not None and auth.query is not None
    users = attempt(_parse_users, raw.get("users"), auth_type, protocol, f"{path}.users",
                    optional=lookup or auth_type == "passthrough")
    client_tls = attempt(_parse_tls, raw.get("client_tls"), "client_tls", f"{path}.client_tls")
    server_tls = attempt(_parse_tls, raw.get("server_tls"), "server_tls", f"{path}.server_tls")
    if server is not None and server.socket_path and server_tls is not None \
            and tls.requires_tls(server_tls.mode):
        problems.add(ConfigError(f"{path}.server_tls.mode", f"{server_tls.mode} cannot work: "
                                 "server.host is a Unix socket, where TLS is not used; use "
                                 "disable (or TCP)"))
    if auth is not None and auth.query is not None and users is not None:
        runner = users.get(auth.query.user)
        if runner is None or not runner.password:
            problems.add(ConfigError(f"{path}.auth.user", f"{auth.query.user!r} must be listed "
                                     "under users with a password (it runs auth.query)"))
    problems.raise_any()
    assert name is not None and protocol is not None and listen is not None
    assert server is not None and auth is not None and overrides is not None
    assert auth_type is not None
    assert databases is not None and users is not None
    assert client_tls is not None and server_tls is not None
    if defaults_layer is not None:
        _check_listener_merges(defaults_layer, path, overrides, databases, users, protocol,
                               repr(name))
    return ListenerConfig(
        name=name,
        protocol=protocol,
        listen_host=listen[0],
        listen_port=listen[1],
        server=server,
        databases=databases,
        auth_type=auth_type,
        users=users,
        auth_query=auth.query,
        allow_plaintext_passthrough=auth.allow_plaintext_passthrough,
        client_tls=client_tls,
        server_tls=server_tls,
        settings=replace(defaults, **overrides),
        overrides=overrides,
    )

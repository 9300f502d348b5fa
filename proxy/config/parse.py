"""Parsing the configuration: YAML text -> validated model objects (model.py).

Owns the file as a whole: the top-level sections (admin, logging, workers, defaults, the list
of listeners: one listener is listener.py's), names and addresses that must be unique, and
load_config. Pure Python (no asyncio), so `--check`, SIGHUP reload and the tests all go
through the same code.

Every problem is reported, not just the first: each section and each value is parsed on its
own and its errors are collected (errors.Problems); at the end they are raised together as one
ConfigError (ConfigErrors when there are several). A check that combines several values (the
merged pool settings, duplicate names, clashing addresses) only runs when those values parsed,
so one mistake is reported once, not again through everything that depends on it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Final

from .errors import ConfigError, Problems
from .listener import Layer, cross_check, parse_listener
from .model import (
    BUILTIN_SETTINGS,
    DEFAULT_ADMIN_LISTEN,
    LOG_FORMATS,
    LOG_LEVELS,
    SETTING_NAMES,
    AdminConfig,
    Config,
    ListenerConfig,
    LoggingConfig,
    PoolSettings,
    format_address,
)
from .values import (
    addresses_conflict,
    as_mapping,
    check_keys,
    expand_tree,
    load_yaml,
    parse_address,
    parse_choice,
    parse_int,
    parse_overrides,
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




def _parse_admin(raw: object) -> AdminConfig:
    path = "admin"
    section = as_mapping(raw, path)
    problems = Problems()
    problems.attempt(check_keys, section, _ADMIN_KEYS, path)
    listen = section.get("listen", DEFAULT_ADMIN_LISTEN)
    host: str | None = None
    port = 0
    if not (listen is None or (isinstance(listen, str) and not listen.strip())):
        address = problems.attempt(parse_address, listen, "admin.listen")
        if address is not None:
            host, port = address
    # else: admin HTTP disabled
    users_raw = section.get("admin_users")
    if users_raw is None:
        users_raw = []
    users: list[str] = []
    if not isinstance(users_raw, list):
        problems.add(ConfigError("admin.admin_users", "must be a list of user names"))
        users_raw = []
    for i, item in enumerate(users_raw):
        item_path = f"admin.admin_users[{i}]"
        name = problems.attempt(parse_str, item, item_path)
        if name is None:
            continue
        if name in users:
            problems.add(ConfigError(item_path, f"duplicate admin user {name!r}"))
        users.append(name)
    problems.raise_any()
    return AdminConfig(listen_host=host, listen_port=port, admin_users=tuple(users))


def _parse_logging(raw: object) -> LoggingConfig:
    path = "logging"
    section = as_mapping(raw, path)
    problems = Problems()
    problems.attempt(check_keys, section, _LOGGING_KEYS, path)
    level = problems.attempt(parse_choice, section.get("level", "info"), "logging.level",
                             LOG_LEVELS)
    fmt = problems.attempt(parse_choice, section.get("format", "text"), "logging.format",
                           LOG_FORMATS)
    problems.raise_any()
    assert level is not None and fmt is not None
    return LoggingConfig(level=level, format=fmt)


def _parse_workers(raw: object) -> int:
    if raw is None:
        return 1
    workers = parse_int(raw, "workers", 1)
    if workers > MAX_WORKERS:
        raise ConfigError("workers", f"must be at most {MAX_WORKERS}")
    return workers


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------


def _parse_defaults(raw: object) -> Mapping[str, Any]:
    section = as_mapping(raw, "defaults")
    problems = Problems()
    problems.attempt(check_keys, section, SETTING_NAMES, "defaults")
    overrides = problems.attempt(parse_overrides, section, "defaults")
    problems.raise_any()
    assert overrides is not None
    cross = Problems()
    cross_check([("defaults", overrides)], None, "", cross)
    cross.raise_any()
    return overrides


def _parse_listeners(
    raw: object, admin: AdminConfig | None, defaults: PoolSettings,
    defaults_layer: Layer | None,
) -> tuple[ListenerConfig, ...]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError("listeners", "must be a non-empty list of listeners")
    problems = Problems()
    listeners: list[ListenerConfig] = []
    bound: list[tuple[str, tuple[str, int]]] = []  # (path, address) of every listen socket
    if admin is not None and admin.listen_host is not None:
        bound.append(("admin.listen", (admin.listen_host, admin.listen_port)))
    names: dict[str, str] = {}
    for i, item in enumerate(raw):
        path = f"listeners[{i}]"
        listener = problems.attempt(parse_listener, item, path, defaults, defaults_layer)
        if listener is None:
            continue
        if listener.name in names:
            problems.add(ConfigError(
                f"{path}.name",
                f"duplicate listener name {listener.name!r} (also {names[listener.name]})"))
        names.setdefault(listener.name, path)
        address = (listener.listen_host, listener.listen_port)
        for other_path, other in bound:
            if addresses_conflict(address, other):
                problems.add(ConfigError(
                    f"{path}.listen",
                    f"{listener.listen_address} conflicts with {other_path} "
                    f"({format_address(*other)})"))
                break
        bound.append((f"{path}.listen", address))
        listeners.append(listener)
    problems.raise_any()
    return tuple(listeners)


def parse_config(
    text: str, env: Mapping[str, str] | None = None, source: str = "<string>"
) -> Config:
    """Parse and validate config text. Raises ConfigError naming the key path; when there
    are several problems, a ConfigErrors whose ``errors`` lists every one."""
    if env is None:
        env = os.environ
    data = load_yaml(text, source)
    if data is None:
        raise ConfigError(source, "is empty (it needs at least a listeners list)")
    if not isinstance(data, dict):
        raise ConfigError(source, "must be a mapping with admin, logging, defaults, listeners")
    problems = Problems()
    problems.attempt(check_keys, data, _TOP_KEYS, "")
    data = expand_tree({k: v for k, v in data.items() if k in _TOP_KEYS}, env, "", problems)

    admin = problems.attempt(_parse_admin, data.get("admin"))
    logging_config = problems.attempt(_parse_logging, data.get("logging"))
    workers = problems.attempt(_parse_workers, data.get("workers"))
    defaults_overrides = problems.attempt(_parse_defaults, data.get("defaults"))
    defaults_layer: Layer | None = None
    defaults = BUILTIN_SETTINGS
    if defaults_overrides is not None:
        defaults_layer = ("defaults", defaults_overrides)
        defaults = replace(BUILTIN_SETTINGS, **defaults_overrides)
    listeners_raw = problems.attempt(require, data, "listeners", "")
    listeners = None
    if listeners_raw is not None or "listeners" in data:
        listeners = problems.attempt(_parse_listeners, listeners_raw, admin, defaults,
                                     defaults_layer)
    problems.raise_any()
    assert admin is not None and logging_config is not None and workers is not None
    assert listeners is not None
    return Config(
        source=source,
        admin=admin,
        logging=logging_config,
        defaults=defaults,
        listeners=listeners,
        workers=workers,
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

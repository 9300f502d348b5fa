"""Reporting a configuration: the `--check` summary, warnings about settings that will not do
what they seem to, and the dictionary behind SHOW CONFIG (passwords left out)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from .. import tls
from .model import (
    SETTING_NAMES,
    Config,
    PoolSettings,
    format_address,
    format_setting,
)

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
    return " ".join(f"{name}={format_setting(name, value)}" for name, value in items)


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


def tls_problems(config: Config) -> list[str]:
    """What ``--check`` reports about TLS files: unreadable or broken certificates and keys
    (errors), and certificates that expired or expire soon (warnings, prefixed)."""
    out: list[str] = []
    for lst in config.listeners:
        alpn = (tls.PG_ALPN,) if lst.protocol == "postgres" else None
        sides: tuple[tuple[tls.Side, tls.TlsSettings], ...] = (
            ("client_tls", lst.client_tls), ("server_tls", lst.server_tls))
        for side, settings in sides:
            path = f"listeners[{lst.name}].{side}"
            out.extend(str(e) for e in tls.check(settings, side, path, alpn=alpn))
            out.extend(f"warning: {w}" for w in tls.certificate_warnings(settings, path))
    return out


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
            f"{name}={format_setting(name, getattr(config.defaults, name))}"
            for name in SETTING_NAMES
        )
    )
    for lst in config.listeners:
        lines.append(
            f"listener {lst.name}: {lst.protocol} {lst.listen_address} -> {lst.server}, "
            f"auth {lst.auth_type}"
            + (f" (users not listed: auth.query as {lst.auth_query.user})"
               if lst.auth_query is not None else "")
        )
        if lst.client_tls.enabled or lst.server_tls.enabled:
            lines.append(f"  tls: clients {tls.summary(lst.client_tls)}; "
                         f"server {tls.summary(lst.server_tls)}")
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

"""Which config file to read: ``-c FILE``, else ``$POOLPROXY_CONFIG``, else the first of
``./poolproxy.yaml`` and ``/etc/poolproxy/poolproxy.yaml`` that exists."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Final

CONFIG_PATH_ENV: Final = "POOLPROXY_CONFIG"
#: Looked for, in this order, when neither ``-c`` nor ``$POOLPROXY_CONFIG`` names a file.
CONFIG_SEARCH_PATH: Final = ("./poolproxy.yaml", "/etc/poolproxy/poolproxy.yaml")


class ConfigNotFound(Exception):
    """No config file to read; ``tried`` (and the message) lists every path that was tried."""

    def __init__(self, tried: tuple[str, ...], message: str) -> None:
        super().__init__(message)
        self.tried = tried


def find_config(
    explicit: str | None = None,
    env: Mapping[str, str] | None = None,
    exists: Callable[[str], bool] = os.path.isfile,
) -> str:
    """The config file to read. ``-c`` and ``$POOLPROXY_CONFIG`` are used as given (a missing
    file is an error then, never a silent fall-back to another file); otherwise the first file
    of CONFIG_SEARCH_PATH that exists, else ConfigNotFound."""
    if env is None:
        env = os.environ
    if explicit:
        return explicit  # load_config reports a file it cannot read
    named = env.get(CONFIG_PATH_ENV)
    if named:
        if not exists(named):
            raise ConfigNotFound((named,), f"config file {named} (from ${CONFIG_PATH_ENV}) "
                                 "does not exist")
        return named
    for candidate in CONFIG_SEARCH_PATH:
        if exists(candidate):
            return candidate
    raise ConfigNotFound(CONFIG_SEARCH_PATH, "no config file found; tried "
                         f"{', '.join(CONFIG_SEARCH_PATH)} (give one with -c FILE or "
                         f"${CONFIG_PATH_ENV})")

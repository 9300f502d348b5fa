"""Configuration: YAML text -> validated, frozen config objects (docs/configuration.md).

`model.py` holds the objects, `errors.py` the errors (every problem of a file is reported at
once), `values.py` parses single values, `parse.py` the sections and the whole file,
`locate.py` finds the file (-c, $POOLPROXY_CONFIG, ./poolproxy.yaml,
/etc/poolproxy/poolproxy.yaml), `report.py` describes a config (--check, SHOW CONFIG). The
names other modules use are re-exported here.
"""

from .errors import ConfigError, ConfigErrors
from .locate import CONFIG_PATH_ENV, CONFIG_SEARCH_PATH, ConfigNotFound, find_config
from .model import (
    ADMIN_DATABASES,
    AUTH_TYPES,
    SETTING_NAMES,
    AdminConfig,
    Config,
    DatabaseConfig,
    ListenerConfig,
    LoggingConfig,
    PoolSettings,
    ServerAddress,
    UserConfig,
    format_address,
    format_duration,
    share_settings,
    worker_share,
)
from .parse import load_config, parse_config
from .report import config_to_dict, config_warnings, summary, tls_problems
from .values import expand_env, parse_address, parse_duration, parse_fraction

__all__ = [
    "ADMIN_DATABASES", "AUTH_TYPES", "CONFIG_PATH_ENV", "CONFIG_SEARCH_PATH", "SETTING_NAMES",
    "AdminConfig", "Config", "ConfigError", "ConfigErrors", "ConfigNotFound",
    "DatabaseConfig", "ListenerConfig", "LoggingConfig", "PoolSettings", "ServerAddress",
    "UserConfig", "config_to_dict", "config_warnings", "expand_env", "find_config",
    "format_address", "format_duration", "load_config", "parse_address", "parse_config",
    "parse_duration", "parse_fraction", "share_settings", "summary", "tls_problems",
    "worker_share",
]

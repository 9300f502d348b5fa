"""Configuration: YAML text -> validated, frozen config objects (docs/configuration.md).

`model.py` holds the objects, `values.py` parses single values, `parse.py` the sections and
the whole file, `report.py` describes a config (--check, SHOW CONFIG). The names other
modules use are re-exported here.
"""

from .model import (
    ADMIN_DATABASES,
    AUTH_TYPES,
    SETTING_NAMES,
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
    format_duration,
    share_settings,
    worker_share,
)
from .parse import default_config_path, load_config, parse_config
from .report import config_to_dict, config_warnings, summary
from .values import expand_env, parse_address, parse_duration, parse_fraction

__all__ = [
    "ADMIN_DATABASES", "AUTH_TYPES", "SETTING_NAMES", "AdminConfig", "Config", "ConfigError",
    "DatabaseConfig", "ListenerConfig", "LoggingConfig", "PoolSettings", "ServerAddress",
    "UserConfig", "config_to_dict", "config_warnings", "default_config_path", "expand_env",
    "format_address", "format_duration", "load_config", "parse_address", "parse_config",
    "parse_duration", "parse_fraction", "share_settings", "summary", "worker_share",
]

"""Parsing single configuration values: key paths and small validators, durations and
fractions, the pool settings' parsers, `${VAR}` expansion, the strict YAML loader, addresses.
Every error names its key path (ConfigError)."""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, Final

import yaml

from .errors import ConfigError, Problems
from .model import EMPTY_MAPPING, POOL_MODES, SETTING_NAMES, WILDCARD_HOSTS

# --------------------------------------------------------------------------------------------
# Paths and small validators
# --------------------------------------------------------------------------------------------

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*\Z")


def key_path(parent: str, key: object) -> str:
    """``parent.key``; keys that are not plain identifiers are quoted: ``databases["*"]``."""
    text = str(key)
    if _PLAIN_KEY.match(text):
        return f"{parent}.{text}" if parent else text
    return f"{parent}[{json.dumps(text)}]"


def check_keys(mapping: Mapping[Any, Any], allowed: Iterable[str], path: str) -> None:
    """Raise one error for every key of ``mapping`` that is not ``allowed``."""
    allowed = tuple(allowed)
    problems = Problems()
    for key in mapping:
        if isinstance(key, str) and key in allowed:
            continue
        hint = difflib.get_close_matches(str(key), allowed, n=1)
        message = "unknown key" + (f" (did you mean {hint[0]}?)" if hint else "")
        problems.add(ConfigError(key_path(path, key), message))
    problems.raise_any()


def as_mapping(value: object, path: str, what: str = "a mapping") -> dict[Any, Any]:
    """A mapping value; YAML ``null`` / an empty value counts as an empty mapping."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(path, f"must be {what}")
    return value


def parse_str(value: object, path: str, *, allow_empty: bool = False) -> str:
    # YAML turns unquoted `no`, `123`, `1e3` into bool/int/float; a name or password that
    # silently became one of those (or lost leading zeros) must be quoted instead.
    if not isinstance(value, str):
        raise ConfigError(path, "must be a string (quote it in YAML)")
    if not allow_empty and not value.strip():
        raise ConfigError(path, "must not be empty")
    return value


def require(mapping: Mapping[str, Any], key: str, path: str) -> Any:
    if key not in mapping:
        raise ConfigError(key_path(path, key), "is required")
    return mapping[key]


def parse_choice(value: object, path: str, choices: Iterable[str], suffix: str = "") -> str:
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


def parse_int(value: object, path: str, minimum: int) -> int:
    number = _to_int(value)
    if number is None or number < minimum:
        raise ConfigError(path, f"must be an integer >= {minimum}")
    return number


def parse_port(value: object, path: str) -> int:
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


# --------------------------------------------------------------------------------------------
# Pool settings
# --------------------------------------------------------------------------------------------


def _parse_pool_mode(value: object, path: str) -> str:
    return parse_choice(value, path, POOL_MODES)


def _int_at_least(minimum: int) -> Callable[[object, str], int]:
    def parse(value: object, path: str) -> int:
        return parse_int(value, path, minimum)

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
        "max_prepared_statements": _int_at_least(0),
    }
)
# A new PoolSettings field without a parser would be silently unconfigurable.
assert set(_SETTING_PARSERS) == set(SETTING_NAMES), "every PoolSettings field needs a parser"


def parse_overrides(mapping: Mapping[str, Any], path: str) -> Mapping[str, Any]:
    """The PoolSettings keys present in ``mapping``, parsed; in PoolSettings field order.
    Raises one error for every value that does not parse."""
    problems = Problems()
    parsed = {}
    for name in SETTING_NAMES:
        if name in mapping:
            value = problems.attempt(_SETTING_PARSERS[name], mapping[name], key_path(path, name))
            parsed[name] = value
    problems.raise_any()
    return MappingProxyType(parsed) if parsed else EMPTY_MAPPING


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


def expand_tree(node: Any, env: Mapping[str, str], path: str, problems: Problems) -> Any:
    """``node`` with every string value expanded; a string that fails is recorded in
    ``problems`` and left as it is (Problems keeps one error per key path, so the parser's
    complaint about the unexpanded text is not reported on top)."""
    # Runs on parsed YAML so that an expanded value (say a password with `: #`) is never
    # re-read as YAML syntax; only string values are expanded, never keys.
    if isinstance(node, str):
        expanded = problems.attempt(expand_env, node, env, path)
        return node if expanded is None else expanded
    if isinstance(node, dict):
        return {key: expand_tree(value, env, key_path(path, key), problems)
                for key, value in node.items()}
    if isinstance(node, list):
        return [expand_tree(value, env, f"{path}[{i}]", problems) for i, value in enumerate(node)]
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


def load_yaml(text: str, source: str) -> Any:
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


def parse_address(value: object, path: str) -> tuple[str, int]:
    """``host:port``, ``[::1]:6432``, ``:6432`` / ``*:6432`` (all interfaces) or a bare port."""
    if isinstance(value, int) and not isinstance(value, bool):
        return "0.0.0.0", parse_port(value, path)
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


def addresses_conflict(a: tuple[str, int], b: tuple[str, int]) -> bool:
    if a[1] != b[1]:
        return False
    return a[0] == b[0] or a[0] in WILDCARD_HOSTS or b[0] in WILDCARD_HOSTS

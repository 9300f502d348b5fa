"""Unit tests for proxy/config.py: parsing, validation paths, merge order, examples, summary."""

from __future__ import annotations

import dataclasses
import pickle
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy import config as cfg
from proxy.config import (
    Config,
    ConfigError,
    DatabaseConfig,
    PoolSettings,
    UserConfig,
    config_to_dict,
    config_warnings,
    format_duration,
    load_config,
    parse_address,
    parse_config,
    parse_duration,
    parse_fraction,
    summary,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = [REPO / "config" / "poolproxy.yaml", REPO / "config" / "minimal.yaml"]

PG_LISTENER: dict[str, Any] = {
    "name": "pg",
    "protocol": "postgres",
    "listen": "127.0.0.1:6432",
    "server": {"host": "127.0.0.1", "port": 5432},
    "users": [{"name": "app", "password": "pg-secret-1"}],
}
MY_LISTENER: dict[str, Any] = {
    "name": "my",
    "protocol": "mysql",
    "listen": "127.0.0.1:6033",
    "server": {"host": "127.0.0.1"},
    "users": [{"name": "app", "password": "my-secret-2"}],
}


def pg(**changes: Any) -> dict[str, Any]:
    return {**PG_LISTENER, **changes}


def my(**changes: Any) -> dict[str, Any]:
    return {**MY_LISTENER, **changes}


def build(*listeners: dict[str, Any], **top: Any) -> str:
    """YAML text for a config with the given listeners (PG_LISTENER if none) and top sections."""
    doc: dict[str, Any] = dict(top)
    doc["listeners"] = list(listeners) if listeners else [pg()]
    return yaml.safe_dump(doc, sort_keys=False)


def parse(text: str, env: dict[str, str] | None = None) -> Config:
    return parse_config(text, env={} if env is None else env)


def error_of(text: str, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text, env)
    return info.value


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


# ---------------------------------------------------------------------------------------------
# ConfigError
# ---------------------------------------------------------------------------------------------


def test_config_error_str_path_and_message() -> None:
    err = ConfigError("listeners[1].server.port", "must be 1..65535")
    assert str(err) == "listeners[1].server.port: must be 1..65535"
    assert err.path == "listeners[1].server.port"
    assert err.message == "must be 1..65535"
    assert isinstance(err, Exception)


def test_config_error_pickles() -> None:
    err = pickle.loads(pickle.dumps(ConfigError("a.b", "bad")))
    assert (err.path, err.message, str(err)) == ("a.b", "bad", "a.b: bad")


# ---------------------------------------------------------------------------------------------
# Durations and fractions
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("250ms", 0.25),
        ("1.5s", 1.5),
        ("0", 0.0),
        ("0s", 0.0),
        (0, 0.0),
        (45, 45.0),
        (2.5, 2.5),
        ("12", 12.0),
        ("0.5", 0.5),
        ("1m30s", 90.0),
        ("1h 30m", 5400.0),
        ("2d", 172800.0),
        (" 10s ", 10.0),
        ("10 s", 10.0),
    ],
)
def test_parse_duration_forms(value: object, seconds: float) -> None:
    result = parse_duration(value, "defaults.x")
    assert isinstance(result, float)
    assert result == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    ["", "abc", "10x", "s", "5 minutes", "ms", "1.2.3s", "10s5", True, False, None, [], {}],
)
def test_parse_duration_rejects_garbage(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        parse_duration(value, "defaults.query_wait_timeout")
    assert info.value.path == "defaults.query_wait_timeout"
    assert "duration" in info.value.message


@pytest.mark.parametrize("value", [-1, -0.5, "-5", "-5s"])
def test_parse_duration_rejects_negative(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        parse_duration(value, "p")
    assert info.value.path == "p"


@pytest.mark.parametrize("value", [float("inf"), float("nan"), ".inf"])
def test_parse_duration_rejects_non_finite(value: object) -> None:
    with pytest.raises(ConfigError):
        parse_duration(value, "p")


def test_duration_250ms_is_not_minutes() -> None:
    # `ms` must win over `m`: 250ms is a quarter second, never 250 minutes.
    assert parse_duration("250ms", "p") == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("value", "fraction"),
    [
        ("10%", 0.1),
        ("0%", 0.0),
        ("100%", 1.0),
        ("12.5%", 0.125),
        (0.1, 0.1),
        (0, 0.0),
        (1, 1.0),
        ("0.25", 0.25),
        (" 5 % ", 0.05),
    ],
)
def test_parse_fraction_forms(value: object, fraction: float) -> None:
    assert parse_fraction(value, "p") == pytest.approx(fraction)


@pytest.mark.parametrize("value", ["110%", "-1%", 1.5, -0.1, 10, "abc", "%", True, None])
def test_parse_fraction_rejects(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        parse_fraction(value, "defaults.server_lifetime_jitter")
    assert str(info.value).startswith("defaults.server_lifetime_jitter: must be a percentage")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0"),
        (600.0, "10m"),
        (3600.0, "1h"),
        (30.0, "30s"),
        (0.25, "250ms"),
        (1.5, "1.5s"),
        (90.0, "90s"),
        (86400.0, "1d"),
    ],
)
def test_format_duration_round_trips(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text, "p") == pytest.approx(seconds)


def test_durations_in_config_become_float_seconds() -> None:
    text = build(
        defaults={
            "server_idle_timeout": "5m",
            "server_lifetime": "1h",
            "reserve_pool_timeout": "250ms",
            "query_wait_timeout": 12,
            "client_login_timeout": "1.5s",
            "shutdown_timeout": 0,
            "server_lifetime_jitter": "25%",
        }
    )
    d = parse(text).defaults
    assert d.server_idle_timeout == 300.0
    assert d.server_lifetime == 3600.0
    assert d.reserve_pool_timeout == pytest.approx(0.25)
    assert d.query_wait_timeout == 12.0 and isinstance(d.query_wait_timeout, float)
    assert d.client_login_timeout == 1.5
    assert d.shutdown_timeout == 0.0
    assert d.server_lifetime_jitter == pytest.approx(0.25)


def test_bad_duration_in_config_names_path() -> None:
    err = error_of(build(defaults={"server_lifetime": "forever"}))
    assert err.path == "defaults.server_lifetime"
    assert str(err).startswith("defaults.server_lifetime: must be a duration")


def test_server_connect_timeout_must_be_positive() -> None:
    err = error_of(build(defaults={"server_connect_timeout": 0}))
    assert str(err) == "defaults.server_connect_timeout: must be a duration > 0"


def test_jitter_fraction_in_config() -> None:
    assert parse(
        build(defaults={"server_lifetime_jitter": 0.3})
    ).defaults.server_lifetime_jitter == (pytest.approx(0.3))
    err = error_of(build(defaults={"server_lifetime_jitter": 2}))
    assert err.path == "defaults.server_lifetime_jitter"


# ---------------------------------------------------------------------------------------------
# Environment expansion
# ---------------------------------------------------------------------------------------------


def test_env_var_set_is_expanded() -> None:
    text = build(pg(users=[{"name": "app", "password": "${APP_PW}"}]))
    c = parse(text, {"APP_PW": "from-env"})
    assert c.listener("pg").users["app"].password == "from-env"


def test_env_default_used_when_unset_or_empty() -> None:
    text = build(pg(users=[{"name": "app", "password": "${APP_PW:-fallback}"}]))
    assert parse(text, {}).listener("pg").users["app"].password == "fallback"
    assert parse(text, {"APP_PW": ""}).listener("pg").users["app"].password == "fallback"
    assert parse(text, {"APP_PW": "real"}).listener("pg").users["app"].password == "real"


def test_env_missing_without_default_is_error_with_path() -> None:
    text = build(pg(), my(users=[{"name": "app", "password": "${NOPE_PW}"}]))
    err = error_of(text, {})
    assert err.path == "listeners[1].users[0].password"
    assert "NOPE_PW" in err.message
    assert "not set" in err.message


def test_env_empty_default() -> None:
    text = build(my(users=[{"name": "app", "password": "${X:-}"}]))
    assert parse(text).listener("my").users["app"].password == ""


def test_env_set_but_empty_without_default_is_empty() -> None:
    text = build(my(users=[{"name": "app", "password": "${X}"}]))
    assert parse(text, {"X": ""}).listener("my").users["app"].password == ""


def test_env_value_with_yaml_special_characters_is_literal() -> None:
    # Expansion happens after YAML parsing, so the value is never re-read as YAML.
    nasty = "p: #{a}, [b] & *c 'd\" ${NOT_EXPANDED}\n"
    text = build(pg(users=[{"name": "app", "password": "${PW}"}]))
    assert parse(text, {"PW": nasty}).listener("pg").users["app"].password == nasty


def test_env_partial_and_multiple_references() -> None:
    text = build(pg(server={"host": "${H:-db}.${DOMAIN}", "port": 5432}))
    c = parse(text, {"DOMAIN": "example.com"})
    assert c.listener("pg").server.host == "db.example.com"


def test_env_expands_numbers_and_durations() -> None:
    text = dedent(
        """
        defaults:
          pool_size: ${POOL_SIZE:-7}
          server_lifetime: ${LIFETIME:-2m}
        listeners:
          - name: pg
            protocol: postgres
            listen: ${LISTEN:-:6432}
            server: {host: h, port: "${PGPORT:-5433}"}
            users: [{name: app, password: x}]
        """
    )
    c = parse(text, {"POOL_SIZE": "9"})
    assert c.defaults.pool_size == 9
    assert c.defaults.server_lifetime == 120.0
    lst = c.listener("pg")
    assert (lst.listen_host, lst.listen_port) == ("0.0.0.0", 6432)
    assert lst.server.port == 5433


def test_env_escape_and_plain_dollars() -> None:
    text = build(
        pg(users=[{"name": "app", "password": "pa$$word-$${LITERAL}-$x"}]),
    )
    assert parse(text).listener("pg").users["app"].password == "pa$$word-${LITERAL}-$x"


def test_env_invalid_reference_is_error() -> None:
    err = error_of(build(pg(users=[{"name": "app", "password": "${1BAD}"}])))
    assert err.path == "listeners[0].users[0].password"


def test_env_expansion_in_admin_and_logging() -> None:
    text = build(admin={"listen": "${ADMIN:-127.0.0.1:9999}"}, logging={"level": "${LVL}"})
    c = parse(text, {"LVL": "debug"})
    assert (c.admin.listen_host, c.admin.listen_port) == ("127.0.0.1", 9999)
    assert c.logging.level == "debug"


def test_env_value_is_not_expanded_again() -> None:
    text = build(pg(users=[{"name": "app", "password": "${A}"}]))
    assert parse(text, {"A": "${B}"}).listener("pg").users["app"].password == "${B}"


def test_parse_config_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POOLPROXY_TEST_PW", "from-os-environ")
    text = build(pg(users=[{"name": "app", "password": "${POOLPROXY_TEST_PW}"}]))
    assert parse_config(text).listener("pg").users["app"].password == "from-os-environ"


# ---------------------------------------------------------------------------------------------
# Unknown keys and structural errors
# ---------------------------------------------------------------------------------------------


def test_unknown_top_level_key() -> None:
    err = error_of(build(listners=[]))
    assert err.path == "listners"
    assert err.message.startswith("unknown key")
    assert "listeners" in err.message  # did-you-mean hint


def test_unknown_key_in_defaults() -> None:
    err = error_of(build(defaults={"pool_sise": 3}))
    assert err.path == "defaults.pool_sise"
    assert err.message == "unknown key (did you mean pool_size?)"


def test_unknown_key_in_listener() -> None:
    err = error_of(build(pg(), my(bogus=1)))
    assert err.path == "listeners[1].bogus"
    assert err.message.startswith("unknown key")


def test_unknown_key_in_user() -> None:
    users = [{"name": "a", "password": "x"}, {"name": "b", "pasword": "x"}]
    err = error_of(build(pg(users=users)))
    assert err.path == "listeners[0].users[1].pasword"
    assert "password" in err.message


def test_unknown_key_in_database_server_auth_admin_logging() -> None:
    assert error_of(build(pg(databases={"app": {"db_name": "x"}}))).path == (
        "listeners[0].databases.app.db_name"
    )
    assert error_of(build(pg(databases={"*": {"nope": 1}}))).path == (
        'listeners[0].databases["*"].nope'
    )
    assert error_of(build(pg(server={"host": "h", "prot": 1}))).path == "listeners[0].server.prot"
    assert error_of(build(pg(auth={"type": "md5", "x": 1}))).path == "listeners[0].auth.x"
    assert error_of(build(admin={"listen": None, "users": []})).path == "admin.users"
    assert error_of(build(logging={"lvl": "info"})).path == "logging.lvl"


def test_missing_required_keys() -> None:
    for key in ("name", "protocol", "listen", "server"):
        listener = pg()
        del listener[key]
        err = error_of(build(listener))
        assert str(err) == f"listeners[0].{key}: is required"
    err = error_of(build(pg(server={"port": 5432})))
    assert str(err) == "listeners[0].server.host: is required"
    err = error_of(build(pg(users=[{"password": "x"}])))
    assert str(err) == "listeners[0].users[0].name: is required"
    err = error_of(build(pg(users=[{"name": "app"}])))
    assert str(err) == "listeners[0].users[0].password: is required"


def test_listeners_required_and_non_empty() -> None:
    assert str(error_of("admin: {}\n")) == "listeners: is required"
    assert error_of("listeners: []\n").path == "listeners"
    assert error_of("listeners: {a: 1}\n").path == "listeners"


def test_wrong_types_name_path() -> None:
    assert str(error_of(build(defaults={"pool_size": 0}))) == (
        "defaults.pool_size: must be an integer >= 1"
    )
    assert str(error_of(build(defaults={"pool_size": "many"}))) == (
        "defaults.pool_size: must be an integer >= 1"
    )
    assert str(error_of(build(defaults={"pool_size": True}))) == (
        "defaults.pool_size: must be an integer >= 1"
    )
    assert str(error_of(build(defaults={"pool_size": 2.5}))) == (
        "defaults.pool_size: must be an integer >= 1"
    )
    assert str(error_of(build(defaults={"min_pool_size": -1}))) == (
        "defaults.min_pool_size: must be an integer >= 0"
    )
    assert str(error_of(build(defaults={"max_client_conn": 0}))) == (
        "defaults.max_client_conn: must be an integer >= 1"
    )
    assert str(error_of(build(defaults={"pool_mode": "bogus"}))) == (
        "defaults.pool_mode: must be one of transaction, session, statement"
    )
    assert error_of(build(defaults=[1, 2])).path == "defaults"
    assert error_of(build("not a mapping")).path == "listeners[0]"  # type: ignore[arg-type]
    assert error_of(build(pg(users={"app": "x"}))).path == "listeners[0].users"
    assert error_of(build(pg(users=["app"]))).path == "listeners[0].users[0]"
    assert error_of(build(pg(databases=["app"]))).path == "listeners[0].databases"
    assert error_of(build(pg(databases={"app": "x"}))).path == "listeners[0].databases.app"


def test_protocol_must_be_known() -> None:
    err = error_of(build(pg(protocol="oracle")))
    assert str(err) == "listeners[0].protocol: must be one of postgres, mysql"


def test_unquoted_numeric_password_rejected() -> None:
    # YAML reads `password: 0123` as an int (83 in YAML 1.1): silently using "83" would be bad.
    text = build(pg(users=[{"name": "app", "password": 123}]))
    err = error_of(text)
    assert err.path == "listeners[0].users[0].password"
    assert "string" in err.message


def test_top_level_must_be_mapping_and_non_empty() -> None:
    assert error_of("").path == "<string>"
    assert error_of("- a\n- b\n").path == "<string>"


def test_yaml_syntax_error_names_source_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("listeners:\n  - name: pg\n   protocol: [\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad, env={})
    assert info.value.path == str(bad)
    assert info.value.message.startswith("invalid YAML at line")
    err = error_of("a: [1, 2\n")
    assert err.path == "<string>"
    assert "invalid YAML" in err.message


def test_duplicate_yaml_key_rejected() -> None:
    text = "defaults:\n  pool_size: 5\n  pool_size: 6\nlisteners: []\n"
    err = error_of(text)
    assert err.path == "<string>"
    assert "duplicate key 'pool_size'" in err.message
    assert "line 3" in err.message


def test_yaml_merge_keys_still_work() -> None:
    text = dedent(
        """
        x-common: &common
          protocol: postgres
          server: {host: h}
          users: [{name: app, password: pw}]
        """
    )
    # x-common is an unknown top-level key: anchors must live inside known sections instead.
    assert error_of(text + "listeners: []\n").path == "x-common"
    text = dedent(
        """
        listeners:
          - &pg
            name: a
            protocol: postgres
            listen: :7001
            server: {host: h}
            users: [{name: app, password: pw}]
            pool_size: 3
          - <<: *pg
            name: b
            listen: :7002
        """
    )
    c = parse(text)
    assert c.listener("b").settings.pool_size == 3
    assert c.listener("b").listen_port == 7002


def test_missing_file_error_names_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing, env={})
    assert info.value.path == str(missing)
    assert "cannot read" in info.value.message


def test_load_config_reads_file_and_sets_source(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(build(pg(users=[{"name": "app", "password": "${PW}"}])))
    c = load_config(path, env={"PW": "file-secret"})
    assert c.source == str(path)
    assert c.listener("pg").users["app"].password == "file-secret"
    assert load_config(str(path), env={"PW": "x"}).source == str(path)


def test_load_config_env_defaults_to_os_environ(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(build(pg(users=[{"name": "app", "password": "${POOLPROXY_T_PW}"}])))
    monkeypatch.setenv("POOLPROXY_T_PW", "os-secret")
    assert load_config(path).listener("pg").users["app"].password == "os-secret"


# ---------------------------------------------------------------------------------------------
# Addresses and ports
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:6432", ("127.0.0.1", 6432)),
        ("0.0.0.0:1", ("0.0.0.0", 1)),
        ("[::1]:6432", ("::1", 6432)),
        ("[::]:65535", ("::", 65535)),
        (":6432", ("0.0.0.0", 6432)),
        ("*:6432", ("0.0.0.0", 6432)),
        ("localhost:6432", ("localhost", 6432)),
        (6432, ("0.0.0.0", 6432)),
    ],
)
def test_parse_address(value: object, expected: tuple[str, int]) -> None:
    assert parse_address(value, "p") == expected


@pytest.mark.parametrize(
    "value", ["6432", "host", "::1:6432", "[::1]6432", "[]:6432", "h:0", "h:70000", "h:x", None]
)
def test_parse_address_rejects(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        parse_address(value, "listeners[0].listen")
    assert info.value.path == "listeners[0].listen"


def test_listen_port_out_of_range_message() -> None:
    err = error_of(build(pg(listen="0.0.0.0:99999")))
    assert str(err) == "listeners[0].listen: port must be 1..65535"


def test_server_port_range_error_path() -> None:
    err = error_of(build(pg(), my(server={"host": "db", "port": 70000})))
    assert str(err) == "listeners[1].server.port: must be 1..65535"
    err = error_of(build(pg(), my(server={"host": "db", "port": 0})))
    assert str(err) == "listeners[1].server.port: must be 1..65535"
    err = error_of(build(pg(), my(server={"host": "db", "port": "abc"})))
    assert str(err) == "listeners[1].server.port: must be 1..65535"


def test_server_port_defaults_per_protocol() -> None:
    c = parse(build(pg(server={"host": "pghost"}), my(server={"host": "myhost"})))
    assert c.listener("pg").server == cfg.ServerAddress("pghost", 5432)
    assert c.listener("my").server == cfg.ServerAddress("myhost", 3306)


def test_server_must_be_mapping() -> None:
    assert error_of(build(pg(server="db:5432"))).path == "listeners[0].server"
    assert error_of(build(pg(server=None))).path == "listeners[0].server"


def test_listen_addresses() -> None:
    c = parse(build(pg(listen="[::1]:6432"), my(listen=":6033")))
    pg_l, my_l = c.listeners
    assert (pg_l.listen_host, pg_l.listen_port) == ("::1", 6432)
    assert pg_l.listen_address == "[::1]:6432"
    assert (my_l.listen_host, my_l.listen_port) == ("0.0.0.0", 6033)


# ---------------------------------------------------------------------------------------------
# Listeners: uniqueness, auth, pool mode, databases, users
# ---------------------------------------------------------------------------------------------


def test_duplicate_listener_names() -> None:
    err = error_of(build(pg(), my(name="pg")))
    assert err.path == "listeners[1].name"
    assert "duplicate" in err.message and "listeners[0]" in err.message


def test_duplicate_listen_addresses() -> None:
    err = error_of(build(pg(), my(listen="127.0.0.1:6432")))
    assert err.path == "listeners[1].listen"
    assert "listeners[0].listen" in err.message


def test_wildcard_listen_conflicts_with_specific_host_same_port() -> None:
    err = error_of(build(pg(listen=":6432"), my(listen="10.0.0.1:6432")))
    assert err.path == "listeners[1].listen"
    # Different ports never conflict.
    parse(build(pg(listen=":6432"), my(listen=":6433")))


def test_listener_conflicts_with_admin_listen() -> None:
    err = error_of(build(pg(listen="127.0.0.1:9127")))
    assert err.path == "listeners[0].listen"
    assert "admin.listen" in err.message
    # With the admin server disabled the port is free.
    assert (
        parse(build(pg(listen="127.0.0.1:9127"), admin={"listen": None})).admin.listen_host is None
    )


def test_listener_name_charset() -> None:
    assert error_of(build(pg(name="my listener"))).path == "listeners[0].name"
    assert error_of(build(pg(name=""))).path == "listeners[0].name"
    parse(build(pg(name="pg-main_1.a")))


@pytest.mark.parametrize(
    ("protocol", "auth", "expected"),
    [
        ("postgres", None, "scram-sha-256"),
        ("postgres", {}, "scram-sha-256"),
        ("postgres", {"type": "scram-sha-256"}, "scram-sha-256"),
        ("postgres", {"type": "md5"}, "md5"),
        ("postgres", {"type": "trust"}, "trust"),
        ("mysql", None, "mysql_native_password"),
        ("mysql", {"type": "mysql_native_password"}, "mysql_native_password"),
        ("mysql", {"type": "caching_sha2_password"}, "caching_sha2_password"),
    ],
)
def test_auth_type_per_protocol(protocol: str, auth: Any, expected: str) -> None:
    listener = pg() if protocol == "postgres" else my()
    if auth is not None:
        listener["auth"] = auth
    c = parse(build(listener))
    assert c.listeners[0].auth_type == expected


@pytest.mark.parametrize(
    ("listener", "bad"),
    [
        (PG_LISTENER, "mysql_native_password"),
        (PG_LISTENER, "caching_sha2_password"),
        (MY_LISTENER, "scram-sha-256"),
        (MY_LISTENER, "md5"),
        (MY_LISTENER, "trust"),
        (PG_LISTENER, "password"),
    ],
)
def test_auth_type_wrong_protocol(listener: dict[str, Any], bad: str) -> None:
    err = error_of(build({**listener, "auth": {"type": bad}}))
    assert err.path == "listeners[0].auth.type"
    assert err.message.startswith("must be one of ")
    assert listener["protocol"] in err.message


def test_trust_auth_password_optional() -> None:
    c = parse(build(pg(auth={"type": "trust"}, users=[{"name": "app"}])))
    assert c.listener("pg").users["app"].password == ""
    assert any("trust" in w for w in config_warnings(c))


def test_empty_password_rejected_for_postgres_password_auth() -> None:
    err = error_of(build(pg(users=[{"name": "app", "password": ""}])))
    assert err.path == "listeners[0].users[0].password"
    # MySQL accounts may legitimately have no password.
    assert parse(build(my(users=[{"name": "app", "password": ""}]))).listeners[0].users["app"]


def test_statement_mode_rejected_on_mysql_listener() -> None:
    err = error_of(build(my(pool_mode="statement")))
    assert err.path == "listeners[0].pool_mode"
    assert "postgres" in err.message


def test_statement_mode_rejected_on_mysql_database_and_user() -> None:
    err = error_of(build(my(databases={"app": {"pool_mode": "statement"}})))
    assert err.path == "listeners[0].databases.app.pool_mode"
    users = [
        {"name": "app", "password": "x"},
        {"name": "b", "password": "y", "pool_mode": "statement"},
    ]
    err = error_of(build(my(users=users)))
    assert err.path == "listeners[0].users[1].pool_mode"


def test_statement_mode_in_defaults_inherited_by_mysql_is_rejected() -> None:
    err = error_of(build(pg(), my(), defaults={"pool_mode": "statement"}))
    assert err.path == "defaults.pool_mode"
    assert "'my'" in err.message
    # ...unless the mysql listener overrides it.
    c = parse(build(pg(), my(pool_mode="transaction"), defaults={"pool_mode": "statement"}))
    assert c.listener("pg").settings.pool_mode == "statement"
    assert c.listener("my").settings.pool_mode == "transaction"


def test_statement_mode_allowed_on_postgres() -> None:
    c = parse(build(pg(pool_mode="statement")))
    assert c.listener("pg").settings.pool_mode == "statement"


def test_duplicate_user_names() -> None:
    users = [{"name": "app", "password": "a"}, {"name": "app", "password": "b"}]
    err = error_of(build(pg(users=users)))
    assert err.path == "listeners[0].users[1].name"
    assert "duplicate" in err.message


def test_same_user_on_two_listeners_is_fine() -> None:
    c = parse(build(pg(), my()))
    assert "app" in c.listener("pg").users and "app" in c.listener("my").users


def test_users_required_non_empty() -> None:
    listener = pg()
    del listener["users"]
    assert error_of(build(listener)).path == "listeners[0].users"
    assert error_of(build(pg(users=[]))).path == "listeners[0].users"


def test_databases_default_to_wildcard() -> None:
    lst = parse(build(pg())).listener("pg")
    assert dict(lst.databases) == {"*": DatabaseConfig("*", None, {})}
    lst = parse(build(pg(databases=None))).listener("pg")
    assert list(lst.databases) == ["*"]


def test_databases_null_and_empty_values_and_dbname_default() -> None:
    text = dedent(
        """
        listeners:
          - name: pg
            protocol: postgres
            listen: :6432
            server: {host: h}
            databases:
              app: {dbname: app_prod, pool_size: 40}
              plain:
              other: {}
              "*": {}
            users: [{name: app, password: pw}]
        """
    )
    lst = parse(text).listener("pg")
    assert lst.databases["app"].dbname == "app_prod"
    assert dict(lst.databases["app"].overrides) == {"pool_size": 40}
    assert lst.databases["plain"].dbname == "plain"
    assert lst.databases["other"].dbname == "other"
    assert lst.databases["*"].dbname is None


def test_empty_databases_mapping_rejected() -> None:
    assert error_of(build(pg(databases={}))).path == "listeners[0].databases"


def test_admin_database_names_reserved_on_postgres() -> None:
    err = error_of(build(pg(databases={"pgbouncer": {}})))
    assert err.path == "listeners[0].databases.pgbouncer"
    assert "admin console" in err.message
    parse(build(my(databases={"pgbouncer": {}})))  # mysql has no admin console


def test_database_lookup_exact_then_wildcard() -> None:
    with_star = pg(databases={"app": {"dbname": "app_prod"}, "*": {}})
    lst = parse(build(with_star)).listener("pg")
    assert lst.database("app") is lst.databases["app"]
    assert lst.database("anything") is lst.databases["*"]
    assert lst.server_dbname("app") == "app_prod"
    assert lst.server_dbname("anything") == "anything"

    without_star = pg(databases={"app": {"dbname": "app_prod"}, "logs": None})
    lst = parse(build(without_star)).listener("pg")
    assert lst.database("app") is lst.databases["app"]
    assert lst.database("anything") is None
    assert lst.server_dbname("anything") is None
    assert lst.server_dbname("logs") == "logs"


def test_wildcard_with_dbname_routes_everything_there() -> None:
    lst = parse(build(pg(databases={"*": {"dbname": "shared"}}))).listener("pg")
    assert lst.server_dbname("whatever") == "shared"


# ---------------------------------------------------------------------------------------------
# Overrides and merge order
# ---------------------------------------------------------------------------------------------


def merge_config() -> Config:
    text = dedent(
        """
        defaults:
          pool_size: 10
          min_pool_size: 1
          query_wait_timeout: 10s
          server_lifetime: 30m
          client_idle_timeout: 1m
        listeners:
          - name: pg
            protocol: postgres
            listen: :6432
            server: {host: h}
            pool_size: 20
            query_wait_timeout: 20s
            server_lifetime: 40m
            databases:
              app: {dbname: app_prod, pool_size: 30, query_wait_timeout: 30s}
              "*": {}
            users:
              - {name: app, password: pw-app, pool_size: 40}
              - {name: other, password: pw-other}
        """
    )
    return parse(text)


def test_merge_order_defaults_listener_database_user() -> None:
    c = merge_config()
    lst = c.listener("pg")
    app_db, star_db = lst.databases["app"], lst.databases["*"]
    app_user, other_user = lst.users["app"], lst.users["other"]

    assert c.defaults.pool_size == 10
    assert lst.settings.pool_size == 20  # listener beats defaults
    assert lst.settings.client_idle_timeout == 60.0  # inherited from defaults
    assert lst.settings.server_lifetime == 2400.0

    s = lst.settings_for(app_db, other_user)
    assert s.pool_size == 30  # database beats listener
    assert s.query_wait_timeout == 30.0
    assert s.server_lifetime == 2400.0  # listener value survives
    assert s.min_pool_size == 1  # defaults value survives

    s = lst.settings_for(app_db, app_user)
    assert s.pool_size == 40  # user beats database
    assert s.query_wait_timeout == 30.0  # user did not set it: database value

    s = lst.settings_for(star_db, app_user)
    assert s.pool_size == 40
    assert s.query_wait_timeout == 20.0

    assert lst.settings_for(None, None) == lst.settings
    assert lst.settings_for(star_db, None) == lst.settings
    assert lst.settings_for(None, app_user).pool_size == 40


def test_overrides_mappings_hold_parsed_values() -> None:
    lst = merge_config().listener("pg")
    assert dict(lst.databases["app"].overrides) == {"pool_size": 30, "query_wait_timeout": 30.0}
    assert dict(lst.users["app"].overrides) == {"pool_size": 40}
    assert dict(lst.users["other"].overrides) == {}
    assert dict(lst.overrides) == {
        "pool_size": 20,
        "query_wait_timeout": 20.0,
        "server_lifetime": 2400.0,
    }


def test_every_defaults_key_overridable_at_every_level() -> None:
    values = {
        "pool_mode": "session",
        "pool_size": 3,
        "min_pool_size": 1,
        "reserve_pool_size": 2,
        "reserve_pool_timeout": "2s",
        "max_client_conn": 50,
        "max_db_connections": 9,
        "server_idle_timeout": "1m",
        "server_lifetime": "2m",
        "server_lifetime_jitter": "20%",
        "server_check_delay": "3s",
        "server_connect_timeout": "4s",
        "server_login_retry": "5s",
        "query_wait_timeout": "6s",
        "client_login_timeout": "7s",
        "client_idle_timeout": "8s",
        "idle_transaction_timeout": "9s",
        "shutdown_timeout": "10s",
        "max_prepared_statements": 11,
    }
    assert set(values) == set(cfg.SETTING_NAMES)
    expected = PoolSettings(
        pool_mode="session",
        pool_size=3,
        min_pool_size=1,
        reserve_pool_size=2,
        reserve_pool_timeout=2.0,
        max_client_conn=50,
        max_db_connections=9,
        server_idle_timeout=60.0,
        server_lifetime=120.0,
        server_lifetime_jitter=0.2,
        server_check_delay=3.0,
        server_connect_timeout=4.0,
        server_login_retry=5.0,
        query_wait_timeout=6.0,
        client_login_timeout=7.0,
        client_idle_timeout=8.0,
        idle_transaction_timeout=9.0,
        shutdown_timeout=10.0,
        max_prepared_statements=11,
    )
    for level in ("defaults", "listener", "database", "user"):
        listener = pg()
        top: dict[str, Any] = {}
        if level == "defaults":
            top["defaults"] = values
        elif level == "listener":
            listener.update(values)
        elif level == "database":
            listener["databases"] = {"app": dict(values)}
        else:
            listener["users"] = [{"name": "app", "password": "pw", **values}]
        lst = parse(build(listener, **top)).listener("pg")
        db = lst.database("app")
        effective = lst.settings_for(db, lst.user("app"))
        assert effective == expected, level


@pytest.mark.parametrize(
    ("listener", "path"),
    [
        (pg(pool_size=0), "listeners[0].pool_size"),
        (pg(databases={"app": {"pool_size": -3}}), "listeners[0].databases.app.pool_size"),
        (
            pg(users=[{"name": "a", "password": "x", "pool_size": "x"}]),
            "listeners[0].users[0].pool_size",
        ),
    ],
)
def test_override_validation_uses_right_path(listener: dict[str, Any], path: str) -> None:
    err = error_of(build(listener))
    assert str(err) == f"{path}: must be an integer >= 1"


def test_override_duration_validation_path() -> None:
    users = [{"name": "a", "password": "x", "server_lifetime": "soon"}]
    err = error_of(build(pg(), my(users=users)))
    assert err.path == "listeners[1].users[0].server_lifetime"


def test_min_pool_size_above_pool_size_in_defaults() -> None:
    err = error_of(build(defaults={"pool_size": 5, "min_pool_size": 6}))
    assert str(err) == "defaults.min_pool_size: must be <= pool_size (5)"


def test_min_pool_size_above_builtin_pool_size() -> None:
    err = error_of(build(defaults={"min_pool_size": 21}))
    assert err.path == "defaults.min_pool_size"
    assert "20" in err.message and "built-in default" in err.message


def test_min_pool_size_conflict_blames_the_later_level() -> None:
    # The user lowered pool_size below the database's min_pool_size: the user entry is wrong.
    users = [{"name": "app", "password": "x", "pool_size": 2}]
    err = error_of(build(pg(databases={"app": {"min_pool_size": 5}}, users=users)))
    assert err.path == "listeners[0].users[0].pool_size"
    assert (
        err.message == "must be >= min_pool_size (5, from listeners[0].databases.app.min_pool_size)"
    )
    # The listener raised min_pool_size above the defaults' pool_size.
    err = error_of(build(pg(min_pool_size=8), defaults={"pool_size": 4}))
    assert err.path == "listeners[0].min_pool_size"
    assert "defaults.pool_size" in err.message


def test_min_pool_size_above_max_db_connections() -> None:
    err = error_of(build(pg(databases={"app": {"max_db_connections": 2, "min_pool_size": 3}})))
    assert err.path.startswith("listeners[0].databases.app.")
    assert "max_db_connections" in err.message or "min_pool_size" in err.message
    # 0 means unlimited: no conflict.
    parse(build(defaults={"max_db_connections": 0, "min_pool_size": 3}))


# ---------------------------------------------------------------------------------------------
# Admin and logging
# ---------------------------------------------------------------------------------------------


def test_admin_and_logging_defaults() -> None:
    c = parse(build())
    assert (c.admin.listen_host, c.admin.listen_port) == ("127.0.0.1", 9127)
    assert c.admin.admin_users == ()
    assert c.admin.enabled
    assert (c.logging.level, c.logging.format) == ("info", "text")
    assert c.defaults == PoolSettings()


@pytest.mark.parametrize("listen", [None, ""])
def test_admin_listen_can_be_disabled(listen: str | None) -> None:
    c = parse(build(admin={"listen": listen, "admin_users": ["admin"]}))
    assert c.admin.listen_host is None
    assert not c.admin.enabled
    assert c.admin.admin_users == ("admin",)


def test_admin_listen_and_users() -> None:
    c = parse(build(admin={"listen": "[::1]:9000", "admin_users": ["a", "b"]}))
    assert (c.admin.listen_host, c.admin.listen_port) == ("::1", 9000)
    assert c.admin.admin_users == ("a", "b")
    assert error_of(build(admin={"listen": "nope"})).path == "admin.listen"
    assert error_of(build(admin={"admin_users": "admin"})).path == "admin.admin_users"
    assert error_of(build(admin={"admin_users": ["a", "a"]})).path == "admin.admin_users[1]"


def test_admin_user_not_on_any_postgres_listener_is_a_warning() -> None:
    c = parse(build(admin={"admin_users": ["root"]}))
    assert any("admin.admin_users[0]" in w and "root" in w for w in config_warnings(c))
    c = parse(
        build(pg(users=[{"name": "root", "password": "pw"}]), admin={"admin_users": ["root"]})
    )
    assert config_warnings(c) == []


def test_logging_values() -> None:
    c = parse(build(logging={"level": "DEBUG", "format": "json"}))
    assert (c.logging.level, c.logging.format) == ("debug", "json")
    assert str(error_of(build(logging={"level": "trace"}))) == (
        "logging.level: must be one of debug, info, warning, error"
    )
    assert str(error_of(build(logging={"format": "xml"}))) == (
        "logging.format: must be one of text, json"
    )


# ---------------------------------------------------------------------------------------------
# Immutability and helpers
# ---------------------------------------------------------------------------------------------


def test_config_objects_are_immutable() -> None:
    c = merge_config()
    lst = c.listener("pg")
    with pytest.raises(dataclasses.FrozenInstanceError):
        lst.name = "x"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.defaults.pool_size = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        lst.databases["new"] = DatabaseConfig("new", "new", {})  # type: ignore[index]
    with pytest.raises(TypeError):
        lst.users["new"] = UserConfig("new", "pw", {})  # type: ignore[index]
    with pytest.raises(TypeError):
        lst.databases["app"].overrides["pool_size"] = 1  # type: ignore[index]
    with pytest.raises(TypeError):
        lst.users["app"].overrides["pool_size"] = 1  # type: ignore[index]
    assert isinstance(c.listeners, tuple)


def test_config_equality_for_reload_diffs() -> None:
    assert merge_config() == merge_config()
    a = parse(build(pg(pool_size=5)))
    b = parse(build(pg(pool_size=6)))
    assert a.listener("pg") != b.listener("pg")


def test_listener_lookup() -> None:
    c = parse(build(pg(), my()))
    assert c.listener("my").protocol == "mysql"
    with pytest.raises(KeyError):
        c.listener("nope")


def test_password_not_in_repr() -> None:
    c = parse(build(pg(users=[{"name": "app", "password": "hunter2-repr"}])))
    assert "hunter2-repr" not in repr(c)
    assert c.listener("pg").users["app"].password == "hunter2-repr"


def test_config_to_dict_masks_passwords() -> None:
    import json

    c = merge_config()
    data = config_to_dict(c)
    text = json.dumps(data)
    assert "pw-app" not in text and "pw-other" not in text
    assert data["listeners"][0]["users"]["app"]["overrides"] == {"pool_size": 40}
    assert data["listeners"][0]["databases"]["app"]["dbname"] == "app_prod"
    assert (
        config_to_dict(c, include_passwords=True)["listeners"][0]["users"]["app"]["password"]
        == "pw-app"
    )


# ---------------------------------------------------------------------------------------------
# Example files and summary
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_configs_parse_with_empty_env(path: Path) -> None:
    c = load_config(path, env={})
    protocols = {lst.protocol for lst in c.listeners}
    assert protocols == {"postgres", "mysql"}
    for lst in c.listeners:
        assert lst.users, lst.name
        for user in lst.users.values():
            assert user.password  # a ${VAR:-default} supplied something


def test_example_configs_take_password_from_env() -> None:
    for path in EXAMPLES:
        c = load_config(path, env={"APP_DB_PASSWORD": "env-pw-xyz"})
        assert all(lst.users["app"].password == "env-pw-xyz" for lst in c.listeners), path


def test_minimal_example_targets_local_servers() -> None:
    c = load_config(EXAMPLES[1], env={})
    servers = {lst.protocol: lst.server for lst in c.listeners}
    assert servers["postgres"] == cfg.ServerAddress("127.0.0.1", 5432)
    assert servers["mysql"] == cfg.ServerAddress("127.0.0.1", 3306)
    assert len(c.listeners) == 2


def test_annotated_example_mentions_every_defaults_key() -> None:
    text = EXAMPLES[0].read_text()
    data = yaml.safe_load(text)
    assert set(data["defaults"]) == set(cfg.SETTING_NAMES)
    c = load_config(EXAMPLES[0], env={})
    assert c.defaults == PoolSettings()  # documents the real built-in defaults
    assert config_warnings(c) == []
    # Every non-blank line inside defaults carries a comment.
    in_defaults = False
    for line in text.splitlines():
        if line.startswith("defaults:"):
            in_defaults = True
            continue
        if in_defaults and line and not line.startswith(" "):
            break
        if in_defaults and line.strip() and not line.strip().startswith("#"):
            assert "#" in line, line


def test_summary_lists_everything_but_passwords() -> None:
    text = dedent(
        """
        admin: {listen: "127.0.0.1:9200", admin_users: [boss]}
        defaults: {pool_size: 10}
        listeners:
          - name: pg
            protocol: postgres
            listen: :6432
            server: {host: pghost}
            pool_size: 15
            databases:
              app: {dbname: app_prod, pool_size: 40}
              "*": {}
            auth: {type: md5}
            users:
              - {name: app, password: "S3cr3t-Pass!", pool_size: 5}
              - {name: boss, password: "${BOSS_PW}"}
          - name: my
            protocol: mysql
            listen: :6033
            server: {host: myhost}
            users: [{name: web, password: "My-Pass-99"}]
        """
    )
    c = parse(text, {"BOSS_PW": "Env-Boss-Pw"})
    out = summary(c)
    for secret in ("S3cr3t-Pass!", "Env-Boss-Pw", "My-Pass-99"):
        assert secret not in out
    for expected in (
        "listener pg: postgres 0.0.0.0:6432 -> pghost:5432, auth md5",
        "listener my: mysql 0.0.0.0:6033 -> myhost:3306, auth mysql_native_password",
        "database app -> app_prod [pool_size=40]",
        "user app [pool_size=5]",
        "user boss",
        "user web",
        "pool_size=15",
        "127.0.0.1:9200",
    ):
        assert expected in out, expected
    assert "pool_size=10" in out  # defaults line
    # Settings equal to the defaults are not listed as differing.
    my_block = out.split("listener my:")[1]
    assert "differ" not in my_block


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_summary_of_examples_hides_passwords(path: Path) -> None:
    env = {"APP_DB_PASSWORD": "app-pw-zz9", "ADMIN_DB_PASSWORD": "admin-pw-zz9"}
    c = load_config(path, env=env)
    out = summary(c)
    assert "app-pw-zz9" not in out and "admin-pw-zz9" not in out
    passwords = {u.password for lst in c.listeners for u in lst.users.values()}
    assert passwords & {"app-pw-zz9"}
    assert str(path) in out


def test_server_host_path_is_a_unix_socket() -> None:
    # PostgreSQL: a directory, as in libpq and PgBouncer; the port names the socket file.
    c = parse(build(pg(server={"host": "/var/run/postgresql/", "port": 5433})))
    srv = c.listener("pg").server
    assert srv.socket_path == "/var/run/postgresql/.s.PGSQL.5433"
    assert srv.target == srv.socket_path
    assert str(srv) == "unix:/var/run/postgresql/.s.PGSQL.5433"
    # MySQL: the socket file itself, as in MySQL's own clients.
    c = parse(build(my(server={"host": "/run/mysqld/mysqld.sock"})))
    srv = c.listener(MY_LISTENER["name"]).server
    assert srv.socket_path == srv.target == "/run/mysqld/mysqld.sock"
    # Anything else is TCP.
    c = parse(build(pg(server={"host": "db.example.com", "port": 5432})))
    srv = c.listener("pg").server
    assert srv.socket_path is None and srv.target == "db.example.com"
    assert str(srv) == "db.example.com:5432"
